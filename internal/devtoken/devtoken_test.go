package devtoken

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/devpki"
)

func fixture(t *testing.T) (*devissuer.Issuer, *x509.Certificate) {
	t.Helper()
	iss, err := devissuer.Open(filepath.Join(t.TempDir(), "issuer"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := devpki.NewCA("devtoken test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueClient("client", "spiffe://tresor.test/client", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return iss, cert.Leaf
}

// claims verifies an "Bearer <jwt>" value with the issuer's keys and
// returns its claims.
func claims(t *testing.T, iss *devissuer.Issuer, authz string) map[string]any {
	t.Helper()
	tok, ok := strings.CutPrefix(authz, "Bearer ")
	if !ok {
		t.Fatalf("authorization %q is not a bearer token", authz)
	}
	jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	var jwks jose.JSONWebKeySet
	if err := json.Unmarshal(iss.JWKS(), &jwks); err != nil {
		t.Fatal(err)
	}
	payload, err := jws.Verify(jwks.Keys[len(jwks.Keys)-1])
	if err != nil {
		t.Fatalf("Verify() err = %v", err)
	}
	var c map[string]any
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewRefuses(t *testing.T) {
	iss, cert := fixture(t)
	ok := Config{Issuer: iss, Token: devissuer.TokenRequest{Subject: "s", Audience: "tresor", BindTo: cert}}
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string
	}{
		{"no issuer", func(c *Config) { c.Issuer = nil }, "issuer"},
		{"no subject", func(c *Config) { c.Token.Subject = "" }, "subject"},
		{"no audience", func(c *Config) { c.Token.Audience = "" }, "audience"},
		{"not bound", func(c *Config) { c.Token.BindTo = nil }, "certificate"},
		{"lifetime too long", func(c *Config) { c.Token.Lifetime = time.Hour }, "lifetime"},
		{"negative lifetime", func(c *Config) { c.Token.Lifetime = -time.Second }, "lifetime"},
		{"renew after the expiry", func(c *Config) { c.RenewAfter = 1 }, "fraction"},
		{"negative renew fraction", func(c *Config) { c.RenewAfter = -0.5 }, "fraction"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.change(&c)
			if _, err := New(c); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New() err = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
	if _, err := New(ok); err != nil {
		t.Errorf("New(%+v) err = %v, want nil", ok, err)
	}
}

// TestRenewal: one token until the renewal point, then a new one; the
// tokens carry the request's claims and are bound to the certificate.
func TestRenewal(t *testing.T) {
	iss, cert := fixture(t)
	tests := []struct {
		name       string
		lifetime   time.Duration
		renewAfter float64
		wantRenew  time.Duration // when the second token is minted
	}{
		{"defaults: 2/3 of 5m", 0, 0, 200 * time.Second},
		{"half of 10m", 10 * time.Minute, 0.5, 5 * time.Minute},
		{"2/3 of 20s", 20 * time.Second, 2.0 / 3, 20 * time.Second * 2 / 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Now()
			s, err := New(Config{Issuer: iss, Token: devissuer.TokenRequest{Subject: "soak-client-1", Audience: "tresor", Lifetime: tt.lifetime, BindTo: cert},
				RenewAfter: tt.renewAfter, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			start := now
			first, err := s.Authorization()
			if err != nil || s.Minted() != 1 {
				t.Fatalf("Authorization() = %v, %d minted; want a token, 1 minted", err, s.Minted())
			}
			c := claims(t, iss, first)
			sum := sha256.Sum256(cert.Raw)
			cnf, _ := c["cnf"].(map[string]any)
			life := tt.lifetime
			if life == 0 {
				life = devissuer.DefaultLifetime
			}
			if c["sub"] != "soak-client-1" || c["aud"] != "tresor" || cnf["x5t#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]) ||
				c["exp"].(float64)-c["iat"].(float64) != life.Seconds() {
				t.Errorf("claims = %v, want sub soak-client-1, aud tresor, a %v lifetime, bound to the certificate", c, life)
			}
			now = start.Add(tt.wantRenew - time.Millisecond)
			if again, _ := s.Authorization(); again != first || s.Minted() != 1 {
				t.Errorf("Authorization() just before the renewal point: a new token (%d minted), want the first", s.Minted())
			}
			now = start.Add(tt.wantRenew)
			renewed, err := s.Authorization()
			if err != nil || renewed == first || s.Minted() != 2 {
				t.Errorf("Authorization() at the renewal point = same token %v, %v, %d minted; want a new one, 2 minted", renewed == first, err, s.Minted())
			}
			md, err := s.GetRequestMetadata(context.Background())
			if err != nil || md["authorization"] != renewed || !s.RequireTransportSecurity() {
				t.Errorf("GetRequestMetadata() = %v, %v; want the renewed token, over TLS only", md, err)
			}
		})
	}
}

// TestConcurrentMintOnce: callers racing for the first token share one.
func TestConcurrentMintOnce(t *testing.T) {
	iss, cert := fixture(t)
	s, err := New(Config{Issuer: iss, Token: devissuer.TokenRequest{Subject: "s", Audience: "tresor", BindTo: cert}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]string, 16)
	for i := range got {
		wg.Go(func() { got[i], _ = s.Authorization() })
	}
	wg.Wait()
	for i := range got {
		if got[i] == "" || got[i] != got[0] {
			t.Fatalf("concurrent Authorization() gave different or no tokens")
		}
	}
	if s.Minted() != 1 {
		t.Errorf("Minted() = %d, want 1", s.Minted())
	}
}
