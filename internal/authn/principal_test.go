package authn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/authn"
)

// selfSigned makes a certificate with the given subject and URI SANs.
func selfSigned(t *testing.T, subject pkix.Name, uris ...string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("CreateCertificate err = %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestWorkloadID(t *testing.T) {
	cn := pkix.Name{CommonName: "payments", Organization: []string{"Bank"}}
	tests := []struct {
		name    string
		cert    *x509.Certificate
		want    string
		wantErr error
	}{
		{"spiffe", selfSigned(t, cn, "spiffe://bank.test/ns/pay/sa/api"), "spiffe://bank.test/ns/pay/sa/api", nil},
		{"spiffe beside https URI", selfSigned(t, cn, "https://bank.test/x", "spiffe://bank.test/pay"), "spiffe://bank.test/pay", nil},
		{"subject DN without spiffe", selfSigned(t, cn, "https://bank.test/x"), "CN=payments,O=Bank", nil},
		{"spiffe without subject", selfSigned(t, pkix.Name{}, "spiffe://bank.test/pay"), "spiffe://bank.test/pay", nil},
		{"two spiffe IDs", selfSigned(t, cn, "spiffe://bank.test/a", "spiffe://bank.test/b"), "", authn.ErrNoIdentity},
		{"spiffe ID with query", selfSigned(t, cn, "spiffe://bank.test/a?x=1"), "", authn.ErrNoIdentity},
		{"spiffe ID without trust domain", selfSigned(t, cn, "spiffe:///a"), "", authn.ErrNoIdentity},
		{"no subject, no spiffe", selfSigned(t, pkix.Name{}), "", authn.ErrNoIdentity},
		{"nil", nil, "", authn.ErrNoCertificate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := authn.WorkloadID(tc.cert)
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Fatalf("WorkloadID(cert) = %q, %v; want %q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestAuthenticateNoIdentity(t *testing.T) {
	a, err := authn.New(context.Background(), authn.Config{})
	if err != nil {
		t.Fatalf("New err = %v", err)
	}
	defer a.Close()
	for _, cert := range []*x509.Certificate{
		selfSigned(t, pkix.Name{}),
		selfSigned(t, pkix.Name{CommonName: "x"}, "spiffe://a.test/1", "spiffe://a.test/2"),
	} {
		if _, err := a.Authenticate(context.Background(), cert, ""); !errors.Is(err, authn.ErrNoIdentity) {
			t.Errorf("Authenticate(cert without identity) err = %v, want ErrNoIdentity", err)
		}
	}
}

func TestThumbprint(t *testing.T) {
	c := selfSigned(t, pkix.Name{CommonName: "x"})
	sum := sha256.Sum256(c.Raw)
	if got, want := authn.Thumbprint(c), base64.RawURLEncoding.EncodeToString(sum[:]); got != want {
		t.Errorf("Thumbprint(cert) = %q, want %q", got, want)
	}
	if got := authn.Thumbprint(nil); got != "" {
		t.Errorf("Thumbprint(nil) = %q, want \"\"", got)
	}
}

func TestStrengthString(t *testing.T) {
	tests := []struct {
		s    authn.Strength
		want string
	}{
		{authn.StrengthMTLS, "mtls"},
		{authn.StrengthToken, "token"},
		{authn.StrengthBoundToken, "bound_token"},
		{0, "Strength(0)"},
	}
	for _, tc := range tests {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("Strength(%d).String() = %q, want %q", int(tc.s), got, tc.want)
		}
	}
}

func TestContext(t *testing.T) {
	ctx := context.Background()
	if p, ok := authn.FromContext(ctx); ok || p != nil {
		t.Fatalf("FromContext(empty) = %v, %v; want nil, false", p, ok)
	}
	want := &authn.Principal{Workload: "w", Strength: authn.StrengthMTLS}
	if p, ok := authn.FromContext(authn.NewContext(ctx, want)); !ok || p != want {
		t.Fatalf("FromContext(NewContext(p)) = %v, %v; want p, true", p, ok)
	}
	if p, ok := authn.FromContext(authn.NewContext(ctx, nil)); ok || p != nil {
		t.Fatalf("FromContext(NewContext(nil)) = %v, %v; want nil, false", p, ok)
	}
}

func TestErrorsWrapInvalidToken(t *testing.T) {
	for _, err := range []error{
		authn.ErrTokenExpired, authn.ErrTokenNotYetValid, authn.ErrTokenIssuer, authn.ErrTokenAudience,
		authn.ErrTokenAlgorithm, authn.ErrTokenUnknownKey, authn.ErrTokenLifetime, authn.ErrTokenBinding,
		authn.ErrTokenMalformed, authn.ErrTokenSignature,
	} {
		if !errors.Is(err, authn.ErrInvalidToken) {
			t.Errorf("errors.Is(%v, ErrInvalidToken) = false, want true", err)
		}
	}
	for _, err := range []error{authn.ErrNoCertificate, authn.ErrNoIdentity, authn.ErrNoToken, authn.ErrInvalidConfig} {
		if errors.Is(err, authn.ErrInvalidToken) {
			t.Errorf("errors.Is(%v, ErrInvalidToken) = true, want false", err)
		}
	}
}
