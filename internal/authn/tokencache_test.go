package authn_test

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/authn"
)

// The token cache is keyed by the hash of a token's signature part: a
// token that shares a cached token's signature part (or its signing input)
// but is not that token must be verified, and refused, and must leave the
// cached token working.
func TestTokenCacheServesOnlyTheSameToken(t *testing.T) {
	k := loadTestKeys(t)
	p := newPKI(t)
	now := time.Now().Truncate(time.Second)
	a, _ := fileAuth(t, k.jwks(t), true, func(tc *authn.TokenConfig) {
		tc.Now = func() time.Time { return now }
		tc.Algorithms = []string{"RS256", "ES256"}
	})
	ctx := context.Background()
	for _, alg := range []string{"ES256", "RS256"} {
		t.Run(alg, func(t *testing.T) {
			key, kid := any(k.ec), "t-ec"
			if alg == "RS256" {
				key, kid = k.rsa, "t-rsa"
			}
			valid := sign(t, hdr(alg, kid), claims(now, "roles", []string{"reader"}), key)
			other := sign(t, hdr(alg, kid), claims(now, "roles", []string{"admin"}), key)
			vp, op := strings.Split(valid, "."), strings.Split(other, ".")
			forgeries := map[string]string{
				"other claims, the cached signature": op[0] + "." + op[1] + "." + vp[2],
				"the cached claims, other signature": vp[0] + "." + vp[1] + "." + op[2],
				"other header, the cached signature": b64([]byte(`{"alg":"`+alg+`","kid":"`+kid+`"}`)) + "." + vp[1] + "." + vp[2],
			}
			check := func() {
				t.Helper()
				got, err := a.Authenticate(ctx, p.client, "Bearer "+valid)
				if err != nil || !slices.Equal(got.Roles, []string{"reader"}) {
					t.Fatalf("Authenticate(valid) = %+v, %v; want roles [reader]", got, err)
				}
			}
			check()
			check() // cached
			for name, forged := range forgeries {
				for range 2 {
					if got, err := a.Authenticate(ctx, p.client, "Bearer "+forged); !errors.Is(err, authn.ErrTokenSignature) {
						t.Errorf("Authenticate(%s) = %+v, %v; want ErrTokenSignature", name, got, err)
					}
				}
				check()
			}
			// The other valid token is its own entry, with its own claims.
			for range 2 {
				got, err := a.Authenticate(ctx, p.client, "Bearer "+other)
				if err != nil || !slices.Equal(got.Roles, []string{"admin"}) {
					t.Fatalf("Authenticate(other) = %+v, %v; want roles [admin]", got, err)
				}
				check()
			}
		})
	}
}

type x509Cert struct {
	c        *x509.Certificate
	workload string
}

// Principals of several certificates over one Authenticator each name
// their own certificate, call after call.
func TestAuthenticateCertificatesCached(t *testing.T) {
	p := newPKI(t)
	a, err := authn.New(context.Background(), authn.Config{})
	if err != nil {
		t.Fatalf("New err = %v", err)
	}
	defer a.Close()
	for range 3 {
		for _, cert := range []*x509Cert{{p.client, "spiffe://bank.test/payments"}, {p.client2, "spiffe://bank.test/ledger"}, {p.otherCAClientCrt, "spiffe://bank.test/payments"}} {
			got, err := a.Authenticate(context.Background(), cert.c, "")
			if err != nil {
				t.Fatalf("Authenticate err = %v", err)
			}
			if got.Workload != cert.workload || got.CertThumbprint != authn.Thumbprint(cert.c) {
				t.Errorf("Authenticate(%s) = %q, %q; want %q, %q", cert.workload, got.Workload, got.CertThumbprint, cert.workload, authn.Thumbprint(cert.c))
			}
		}
	}
}
