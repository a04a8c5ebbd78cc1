package authn_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
)

func benchSetup(b *testing.B, cacheSize int) (*authn.Authenticator, *pki, string) {
	b.Helper()
	iss, err := devissuer.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "jwks.json")
	if err := iss.WriteJWKS(path); err != nil {
		b.Fatal(err)
	}
	a, err := authn.New(context.Background(), authn.Config{RequireToken: true, Tokens: &authn.TokenConfig{
		Issuer: iss.Issuer(), Audiences: []string{testAudience}, JWKSFile: path, CacheSize: cacheSize,
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close() })
	p := newPKI(b)
	tok, err := iss.Mint(devissuer.TokenRequest{
		Subject: "svc-payments", Audience: testAudience, Roles: []string{"encrypt", "decrypt"},
		Scopes: []string{"kms.encrypt"}, BindTo: p.client,
	})
	if err != nil {
		b.Fatal(err)
	}
	return a, p, "Bearer " + tok
}

func benchAuthenticate(b *testing.B, cacheSize int) {
	a, p, tok := benchSetup(b, cacheSize)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(ctx, p.client, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthenticateCached: the same ES256 token again and again, the
// server's usual case.
func BenchmarkAuthenticateCached(b *testing.B) { benchAuthenticate(b, 0) }

// BenchmarkAuthenticateUncached: full verification every call (cache off).
func BenchmarkAuthenticateUncached(b *testing.B) { benchAuthenticate(b, -1) }

// BenchmarkAuthenticateCachedParallel: cached, from all Ps at once.
func BenchmarkAuthenticateCachedParallel(b *testing.B) {
	a, p, tok := benchSetup(b, 0)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Authenticate(ctx, p.client, tok); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
