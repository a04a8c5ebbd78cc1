package authn_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/authn"
)

func TestNewRejectsConfig(t *testing.T) {
	k := loadTestKeys(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "jwks.json")
	writeFile(t, good, k.jwks(t))
	valid := func() *authn.TokenConfig {
		return &authn.TokenConfig{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSFile: good}
	}
	with := func(mod func(*authn.TokenConfig)) *authn.TokenConfig {
		tc := valid()
		mod(tc)
		return tc
	}
	tests := []struct {
		name    string
		cfg     authn.Config
		wantErr error // nil: any error
	}{
		{"HS256 allowed", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.Algorithms = []string{"ES256", "HS256"} })}, authn.ErrInvalidConfig},
		{"HS384 allowed", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.Algorithms = []string{"HS384"} })}, authn.ErrInvalidConfig},
		{"HS512 allowed", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.Algorithms = []string{"HS512"} })}, authn.ErrInvalidConfig},
		{"none allowed", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.Algorithms = []string{"none"} })}, authn.ErrInvalidConfig},
		{"unknown alg", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.Algorithms = []string{"es256"} })}, authn.ErrInvalidConfig},
		{"no issuer", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.Issuer = "" })}, authn.ErrInvalidConfig},
		{"no audiences", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.Audiences = nil })}, authn.ErrInvalidConfig},
		{"empty audience", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.Audiences = []string{""} })}, authn.ErrInvalidConfig},
		{"negative skew", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.ClockSkew = -time.Second })}, authn.ErrInvalidConfig},
		{"huge skew", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.ClockSkew = time.Hour })}, authn.ErrInvalidConfig},
		{"negative lifetime", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.MaxLifetime = -time.Second })}, authn.ErrInvalidConfig},
		{"RequireToken without Tokens", authn.Config{RequireToken: true}, authn.ErrInvalidConfig},
		{"http issuer for discovery", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.JWKSFile = ""; tc.Issuer = "http://idp.test" })}, authn.ErrInvalidConfig},
		{"missing JWKS file", authn.Config{Tokens: with(func(tc *authn.TokenConfig) { tc.JWKSFile = filepath.Join(dir, "nope.json") })}, nil},
		{"JWKS not JSON", authn.Config{Tokens: with(func(tc *authn.TokenConfig) {
			tc.JWKSFile = filepath.Join(dir, "bad.json")
			writeFile(t, tc.JWKSFile, []byte("not json"))
		})}, nil},
		{"JWKS with only a symmetric key", authn.Config{Tokens: with(func(tc *authn.TokenConfig) {
			tc.JWKSFile = filepath.Join(dir, "oct.json")
			writeFile(t, tc.JWKSFile, []byte(`{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`))
		})}, nil},
		{"JWKS with only a private key", authn.Config{Tokens: with(func(tc *authn.TokenConfig) {
			tc.JWKSFile = filepath.Join(dir, "priv.json")
			writeFile(t, tc.JWKSFile, []byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"p","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cLyAOQcqXhcOt1lZEFoBq8"}]}`))
		})}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := authn.New(context.Background(), tc.cfg)
			if err == nil {
				a.Close()
				t.Fatalf("New(cfg) err = nil, want an error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("New(cfg) err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	k := loadTestKeys(t)
	a, _ := fileAuth(t, k.jwks(t), true, nil)
	if err := a.Close(); err != nil {
		t.Fatalf("Close() err = %v, want nil", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close() err = %v, want nil", err)
	}
}
