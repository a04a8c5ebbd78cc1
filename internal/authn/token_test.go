package authn_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/authn"
)

// rejectCase is one refused call.
type rejectCase struct {
	name string
	cert *x509.Certificate
	auth string
	want error
}

func rejectCases(t *testing.T, k *testKeys, p *pki, now time.Time) []rejectCase {
	t.Helper()
	valid := sign(t, hdr("ES256", "t-ec"), claims(now), k.ec)
	parts := strings.Split(valid, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sig[len(sig)/2] ^= 0x01
	tamperedSig := parts[0] + "." + parts[1] + "." + b64(sig)
	tamperedPayload := parts[0] + "." + b64(mustJSON(t, claims(now, "sub", "admin"))) + "." + parts[2]

	ecPub, err := x509.MarshalPKIXPublicKey(&k.ec.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ecPubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ecPub})
	rsaPub, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaPubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})

	bearer := func(tok string) string { return "Bearer " + tok }
	es := func(c map[string]any) string { return bearer(sign(t, hdr("ES256", "t-ec"), c, k.ec)) }

	return []rejectCase{
		{"no certificate", nil, es(claims(now)), authn.ErrNoCertificate},
		{"no token when required", p.client, "", authn.ErrNoToken},
		{"expired", p.client, es(claims(now, "iat", now.Add(-10*time.Minute).Unix(), "nbf", nil, "exp", now.Add(-time.Minute).Unix())), authn.ErrTokenExpired},
		{"not yet valid nbf", p.client, es(claims(now, "iat", nil, "nbf", now.Add(5*time.Minute).Unix(), "exp", now.Add(10*time.Minute).Unix())), authn.ErrTokenNotYetValid},
		{"issued in the future", p.client, es(claims(now, "nbf", nil, "iat", now.Add(2*time.Minute).Unix(), "exp", now.Add(5*time.Minute).Unix())), authn.ErrTokenNotYetValid},
		{"wrong issuer", p.client, es(claims(now, "iss", "https://evil.test")), authn.ErrTokenIssuer},
		{"issuer differs by a slash", p.client, es(claims(now, "iss", testIssuer+"/")), authn.ErrTokenIssuer},
		{"no issuer", p.client, es(claims(now, "iss", nil)), authn.ErrTokenIssuer},
		{"wrong audience", p.client, es(claims(now, "aud", "other-service")), authn.ErrTokenAudience},
		{"wrong audience list", p.client, es(claims(now, "aud", []string{"a", "b"})), authn.ErrTokenAudience},
		{"no audience", p.client, es(claims(now, "aud", nil)), authn.ErrTokenAudience},
		{"alg none", p.client, bearer(sign(t, hdr("none", "t-ec"), claims(now), nil)), authn.ErrTokenAlgorithm},
		{"alg none with signature", p.client, bearer(sign(t, hdr("none", "t-ec"), claims(now), nil) + "c2ln"), authn.ErrTokenAlgorithm},
		{"alg None", p.client, bearer(sign(t, map[string]any{"alg": "None"}, claims(now), nil) + "c2ln"), authn.ErrTokenAlgorithm},
		{"HS256 with EC public key PEM as secret", p.client, bearer(sign(t, hdr("HS256", "t-ec"), claims(now), ecPubPEM)), authn.ErrTokenAlgorithm},
		{"HS256 with EC public key DER as secret", p.client, bearer(sign(t, hdr("HS256", "t-ec"), claims(now), ecPub)), authn.ErrTokenAlgorithm},
		{"HS256 with RSA public key PEM as secret", p.client, bearer(sign(t, hdr("HS256", "t-rsa"), claims(now), rsaPubPEM)), authn.ErrTokenAlgorithm},
		{"HS256 with JWKS as secret, no kid", p.client, bearer(sign(t, hdr("HS256", ""), claims(now), k.jwks(t))), authn.ErrTokenAlgorithm},
		{"alg not in allowlist (RS512)", p.client, bearer(sign(t, hdr("RS512", "t-rsa"), claims(now), k.rsa)), authn.ErrTokenAlgorithm},
		{"alg not in allowlist (ES384)", p.client, bearer(sign(t, hdr("ES384", "t-ec384"), claims(now), k.ec384)), authn.ErrTokenAlgorithm},
		{"RS256 header on EC key", p.client, bearer(sign(t, hdr("RS256", "t-ec"), claims(now), k.rsa)), authn.ErrTokenAlgorithm},
		{"ES256 header on RSA key", p.client, bearer(sign(t, hdr("ES256", "t-rsa"), claims(now), k.ec)), authn.ErrTokenAlgorithm},
		{"EdDSA header on EC key", p.client, bearer(sign(t, hdr("EdDSA", "t-ec"), claims(now), k.ed)), authn.ErrTokenAlgorithm},
		{"lifetime over max", p.client, es(claims(now, "exp", now.Add(20*time.Minute).Unix())), authn.ErrTokenLifetime},
		{"lifetime over max from nbf", p.client, es(claims(now, "iat", nil, "exp", now.Add(16*time.Minute).Unix())), authn.ErrTokenLifetime},
		{"no exp", p.client, es(claims(now, "exp", nil)), authn.ErrTokenLifetime},
		{"no iat and no nbf", p.client, es(claims(now, "iat", nil, "nbf", nil)), authn.ErrTokenLifetime},
		{"exp before iat", p.client, es(claims(now, "iat", now.Add(20*time.Second).Unix(), "exp", now.Add(10*time.Second).Unix())), authn.ErrTokenLifetime},
		{"bound to another certificate", p.client, es(claims(now, "cnf", map[string]string{"x5t#S256": authn.Thumbprint(p.client2)})), authn.ErrTokenBinding},
		{"bound to another CA's certificate", p.client, es(claims(now, "cnf", map[string]string{"x5t#S256": authn.Thumbprint(p.otherCAClientCrt)})), authn.ErrTokenBinding},
		{"bound by DPoP jkt only", p.client, es(claims(now, "cnf", map[string]string{"jkt": "abc"})), authn.ErrTokenBinding},
		{"key not in JWKS", p.client, bearer(sign(t, hdr("ES256", "no-such-kid"), claims(now), k.other)), authn.ErrTokenUnknownKey},
		{"no kid, several ES256 keys", p.client, bearer(sign(t, hdr("ES256", ""), claims(now), k.ec)), authn.ErrTokenUnknownKey},
		{"signed by another key with a known kid", p.client, bearer(sign(t, hdr("ES256", "t-ec"), claims(now), k.other)), authn.ErrTokenSignature},
		{"tampered signature", p.client, bearer(tamperedSig), authn.ErrTokenSignature},
		{"tampered payload", p.client, bearer(tamperedPayload), authn.ErrTokenSignature},
		{"truncated signature", p.client, bearer(parts[0] + "." + parts[1] + "." + parts[2][:20]), authn.ErrTokenSignature},
		{"malformed: one part", p.client, "Bearer abcdef", authn.ErrTokenMalformed},
		{"malformed: two parts", p.client, bearer(parts[0] + "." + parts[1]), authn.ErrTokenMalformed},
		{"malformed: four parts", p.client, bearer(valid + ".x"), authn.ErrTokenMalformed},
		{"malformed: empty signature", p.client, bearer(parts[0] + "." + parts[1] + "."), authn.ErrTokenMalformed},
		{"malformed: header not base64", p.client, bearer("!!!." + parts[1] + "." + parts[2]), authn.ErrTokenMalformed},
		{"malformed: header not JSON", p.client, bearer(b64([]byte("not json")) + "." + parts[1] + "." + parts[2]), authn.ErrTokenMalformed},
		{"malformed: no alg", p.client, bearer(b64([]byte(`{"kid":"t-ec"}`)) + "." + parts[1] + "." + parts[2]), authn.ErrTokenMalformed},
		{"malformed: JSON serialization", p.client, bearer(`{"payload":"` + parts[1] + `","protected":"` + parts[0] + `","signature":"` + parts[2] + `"}`), authn.ErrTokenMalformed},
		{"malformed: crit header", p.client, bearer(sign(t, map[string]any{"alg": "ES256", "kid": "t-ec", "crit": []string{"exp"}, "exp": 1}, claims(now), k.ec)), authn.ErrTokenMalformed},
		{"malformed: payload not JSON", p.client, bearer(sign(t, hdr("ES256", "t-ec"), "not json", k.ec)), authn.ErrTokenMalformed},
		{"malformed: payload JSON array", p.client, bearer(sign(t, hdr("ES256", "t-ec"), "[1,2]", k.ec)), authn.ErrTokenMalformed},
		{"malformed: exp a string", p.client, es(claims(now, "exp", "tomorrow")), authn.ErrTokenMalformed},
		{"malformed: no subject", p.client, es(claims(now, "sub", nil)), authn.ErrTokenMalformed},
		{"malformed: roles a number", p.client, es(claims(now, "roles", 7)), authn.ErrTokenMalformed},
		{"malformed: roles mixed array", p.client, es(claims(now, "roles", []any{"a", 1})), authn.ErrTokenMalformed},
		{"malformed: cnf not an object", p.client, es(claims(now, "cnf", "x")), authn.ErrTokenMalformed},
		{"malformed: Basic scheme", p.client, "Basic dXNlcjpwYXNz", authn.ErrTokenMalformed},
		{"malformed: Bearer without token", p.client, "Bearer ", authn.ErrTokenMalformed},
		{"malformed: too large", p.client, bearer(strings.Repeat("a", 20000) + ".b.c"), authn.ErrTokenMalformed},
	}
}

func TestAuthenticateRejects(t *testing.T) {
	k := loadTestKeys(t)
	p := newPKI(t)
	now := time.Now().Truncate(time.Second)
	var logs logBuffer
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeFile(t, path, k.jwks(t))
	a, err := authn.New(context.Background(), authn.Config{
		RequireToken: true,
		Logger:       logs.logger(),
		Tokens: &authn.TokenConfig{
			Issuer: testIssuer, Audiences: []string{testAudience}, JWKSFile: path,
			Now: func() time.Time { return now },
		},
	})
	if err != nil {
		t.Fatalf("New err = %v, want nil", err)
	}
	defer a.Close()

	cases := rejectCases(t, k, p, now)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Twice: the second call must not be let through by any cache.
			for range 2 {
				got, err := a.Authenticate(context.Background(), tc.cert, tc.auth)
				if !errors.Is(err, tc.want) {
					t.Fatalf("Authenticate(...) = %v, err = %v, want %v", got, err, tc.want)
				}
				if got != nil {
					t.Fatalf("Authenticate(...) principal = %+v, want nil", got)
				}
				if strings.HasPrefix(tc.want.Error(), "authn: token") && !errors.Is(err, authn.ErrInvalidToken) {
					t.Fatalf("Authenticate(...) err = %v, want it to wrap ErrInvalidToken", err)
				}
			}
		})
	}
}

// TestRejectedTokensNotInErrors checks that no error (nor log line) of a
// refused token contains the token, its signature or its other parts.
func TestRejectedTokensNotInErrors(t *testing.T) {
	k := loadTestKeys(t)
	p := newPKI(t)
	now := time.Now().Truncate(time.Second)
	var logs logBuffer
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeFile(t, path, k.jwks(t))
	a, err := authn.New(context.Background(), authn.Config{
		RequireToken: true,
		Logger:       logs.logger(),
		Tokens: &authn.TokenConfig{
			Issuer: testIssuer, Audiences: []string{testAudience}, JWKSFile: path,
			Now: func() time.Time { return now }, RefreshInterval: 5 * time.Millisecond,
		},
	})
	if err != nil {
		t.Fatalf("New err = %v, want nil", err)
	}
	defer a.Close()
	var secrets []string
	for _, tc := range rejectCases(t, k, p, now) {
		tok, ok := strings.CutPrefix(tc.auth, "Bearer ")
		if !ok || tok == "" {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(context.Background(), tc.cert, tc.auth)
			if err == nil {
				t.Fatalf("Authenticate(...) err = nil, want %v", tc.want)
			}
			msg := err.Error()
			for _, s := range tokenSecrets(tok) {
				secrets = append(secrets, s)
				if strings.Contains(msg, s) {
					t.Errorf("Authenticate(...) err = %q contains part of the token %q", msg, s)
				}
			}
		})
	}
	time.Sleep(20 * time.Millisecond) // let background reloads log, if they would
	out := logs.String()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("log %q contains part of a token %q", out, s)
		}
	}
}

// tokenSecrets returns the whole token and each of its dot-separated parts
// long enough to be meaningful.
func tokenSecrets(tok string) []string {
	out := []string{tok}
	for _, part := range strings.Split(tok, ".") {
		if len(part) >= 8 {
			out = append(out, part)
		}
	}
	return out
}

func TestAuthenticateAccepts(t *testing.T) {
	k := loadTestKeys(t)
	p := newPKI(t)
	now := time.Now().Truncate(time.Second)
	a, _ := fileAuth(t, k.jwks(t), true, func(tc *authn.TokenConfig) {
		tc.Now = func() time.Time { return now }
		tc.Algorithms = []string{"RS256", "PS256", "ES256", "ES384", "EdDSA"}
	})
	exp := now.Add(5 * time.Minute)
	tests := []struct {
		name         string
		auth         string
		want         authn.Strength
		roles, scope []string
	}{
		{"ES256", "Bearer " + sign(t, hdr("ES256", "t-ec"), claims(now), k.ec), authn.StrengthToken, []string{"decrypt", "encrypt"}, []string{"kms.read", "kms.write"}},
		{"ES384", "Bearer " + sign(t, hdr("ES384", "t-ec384"), claims(now), k.ec384), authn.StrengthToken, []string{"decrypt", "encrypt"}, []string{"kms.read", "kms.write"}},
		{"RS256", "Bearer " + sign(t, hdr("RS256", "t-rsa"), claims(now), k.rsa), authn.StrengthToken, []string{"decrypt", "encrypt"}, []string{"kms.read", "kms.write"}},
		{"PS256", "Bearer " + sign(t, hdr("PS256", "t-rsa"), claims(now), k.rsa), authn.StrengthToken, []string{"decrypt", "encrypt"}, []string{"kms.read", "kms.write"}},
		{"EdDSA, no kid, one Ed25519 key", "Bearer " + sign(t, hdr("EdDSA", ""), claims(now), k.ed), authn.StrengthToken, []string{"decrypt", "encrypt"}, []string{"kms.read", "kms.write"}},
		{"scheme lower case", "bearer " + sign(t, hdr("ES256", "t-ec"), claims(now, "jti", "2"), k.ec), authn.StrengthToken, []string{"decrypt", "encrypt"}, []string{"kms.read", "kms.write"}},
		{"scheme upper case", "BEARER " + sign(t, hdr("ES256", "t-ec"), claims(now, "jti", "3"), k.ec), authn.StrengthToken, []string{"decrypt", "encrypt"}, []string{"kms.read", "kms.write"}},
		{"bound to the certificate", "Bearer " + sign(t, hdr("ES256", "t-ec"), claims(now, "cnf", map[string]string{"x5t#S256": authn.Thumbprint(p.client)}), k.ec), authn.StrengthBoundToken, []string{"decrypt", "encrypt"}, []string{"kms.read", "kms.write"}},
		{"audience list", "Bearer " + sign(t, hdr("ES256", "t-ec"), claims(now, "aud", []string{"x", testAudience}), k.ec), authn.StrengthToken, []string{"decrypt", "encrypt"}, []string{"kms.read", "kms.write"}},
		{"roles as string, scope as array", "Bearer " + sign(t, hdr("ES256", "t-ec"), claims(now, "roles", "b a b", "scope", []string{"z", "y"}), k.ec), authn.StrengthToken, []string{"a", "b"}, []string{"y", "z"}},
		{"no roles, no scope", "Bearer " + sign(t, hdr("ES256", "t-ec"), claims(now, "roles", nil, "scope", nil), k.ec), authn.StrengthToken, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 { // uncached, then cached
				got, err := a.Authenticate(context.Background(), p.client, tc.auth)
				if err != nil {
					t.Fatalf("Authenticate(...) err = %v, want nil", err)
				}
				if got.Strength != tc.want {
					t.Errorf("Authenticate(...).Strength = %v, want %v", got.Strength, tc.want)
				}
				if got.Workload != "spiffe://bank.test/payments" || got.CertThumbprint != authn.Thumbprint(p.client) {
					t.Errorf("Authenticate(...) workload, thumbprint = %q, %q; want the certificate's", got.Workload, got.CertThumbprint)
				}
				if got.Subject != "svc-payments" || got.Issuer != testIssuer || !got.TokenExpiry.Equal(exp) || got.TokenID == "" {
					t.Errorf("Authenticate(...) = %+v, want subject, issuer, expiry %v and token id", got, exp)
				}
				if !slices.Equal(got.Roles, tc.roles) || !slices.Equal(got.Scopes, tc.scope) {
					t.Errorf("Authenticate(...) roles, scopes = %q, %q; want %q, %q", got.Roles, got.Scopes, tc.roles, tc.scope)
				}
				if len(got.Roles) > 0 {
					got.Roles[0] = "mutated" // must not reach the cache
				}
			}
		})
	}
}

func TestAuthenticateOptions(t *testing.T) {
	k := loadTestKeys(t)
	p := newPKI(t)
	now := time.Now().Truncate(time.Second)
	ctx := context.Background()

	t.Run("no token allowed gives mtls", func(t *testing.T) {
		a, _ := fileAuth(t, k.jwks(t), false, nil)
		got, err := a.Authenticate(ctx, p.client, "")
		if err != nil {
			t.Fatalf("Authenticate(cert, \"\") err = %v, want nil", err)
		}
		want := authn.Principal{Workload: "spiffe://bank.test/payments", CertThumbprint: authn.Thumbprint(p.client), Strength: authn.StrengthMTLS}
		if got.Workload != want.Workload || got.CertThumbprint != want.CertThumbprint || got.Strength != want.Strength ||
			got.Subject != "" || got.Roles != nil || got.Scopes != nil || !got.TokenExpiry.IsZero() {
			t.Errorf("Authenticate(cert, \"\") = %+v, want %+v", got, want)
		}
	})
	t.Run("tokens not configured", func(t *testing.T) {
		a, err := authn.New(ctx, authn.Config{})
		if err != nil {
			t.Fatalf("New err = %v, want nil", err)
		}
		defer a.Close()
		if got, err := a.Authenticate(ctx, p.client, ""); err != nil || got.Strength != authn.StrengthMTLS {
			t.Fatalf("Authenticate(cert, \"\") = %v, %v; want mtls", got, err)
		}
		tok := "Bearer " + sign(t, hdr("ES256", "t-ec"), claims(now), k.ec)
		if _, err := a.Authenticate(ctx, p.client, tok); !errors.Is(err, authn.ErrInvalidToken) {
			t.Fatalf("Authenticate(cert, token) err = %v, want ErrInvalidToken", err)
		}
		if _, err := a.Authenticate(ctx, nil, ""); !errors.Is(err, authn.ErrNoCertificate) {
			t.Fatalf("Authenticate(nil, \"\") err = %v, want ErrNoCertificate", err)
		}
	})
	t.Run("clock skew", func(t *testing.T) {
		a, _ := fileAuth(t, k.jwks(t), true, func(tc *authn.TokenConfig) {
			tc.Now = func() time.Time { return now }
			tc.ClockSkew = 30 * time.Second
		})
		tests := []struct {
			name string
			c    map[string]any
			want error
		}{
			{"expired 10s ago, within skew", claims(now, "iat", now.Add(-5*time.Minute).Unix(), "exp", now.Add(-10*time.Second).Unix()), nil},
			{"expired 31s ago", claims(now, "iat", now.Add(-5*time.Minute).Unix(), "exp", now.Add(-31*time.Second).Unix()), authn.ErrTokenExpired},
			{"nbf 20s ahead, within skew", claims(now, "nbf", now.Add(20*time.Second).Unix(), "iat", nil), nil},
			{"nbf 40s ahead", claims(now, "nbf", now.Add(40*time.Second).Unix(), "iat", nil), authn.ErrTokenNotYetValid},
			{"iat 20s ahead, within skew", claims(now, "iat", now.Add(20*time.Second).Unix()), nil},
			{"iat 40s ahead", claims(now, "iat", now.Add(40*time.Second).Unix()), authn.ErrTokenNotYetValid},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, err := a.Authenticate(ctx, p.client, "Bearer "+sign(t, hdr("ES256", "t-ec"), tc.c, k.ec))
				if !errors.Is(err, tc.want) {
					t.Fatalf("Authenticate(...) err = %v, want %v", err, tc.want)
				}
			})
		}
	})
	t.Run("max lifetime", func(t *testing.T) {
		a, _ := fileAuth(t, k.jwks(t), true, func(tc *authn.TokenConfig) {
			tc.Now = func() time.Time { return now }
			tc.MaxLifetime = time.Minute
		})
		for _, tc := range []struct {
			life time.Duration
			want error
		}{{time.Minute, nil}, {61 * time.Second, authn.ErrTokenLifetime}, {5 * time.Minute, authn.ErrTokenLifetime}} {
			_, err := a.Authenticate(ctx, p.client, "Bearer "+sign(t, hdr("ES256", "t-ec"), claims(now, "exp", now.Add(tc.life).Unix()), k.ec))
			if !errors.Is(err, tc.want) {
				t.Errorf("Authenticate(lifetime %v) err = %v, want %v", tc.life, err, tc.want)
			}
		}
	})
	t.Run("nested roles claim", func(t *testing.T) {
		a, _ := fileAuth(t, k.jwks(t), true, func(tc *authn.TokenConfig) {
			tc.Now = func() time.Time { return now }
			tc.RolesClaim = "realm_access.roles"
			tc.ScopesClaim = "https://bank.test/scopes"
		})
		c := claims(now, "realm_access", map[string]any{"roles": []string{"z", "a"}}, "https://bank.test/scopes", "s2 s1", "roles", nil)
		got, err := a.Authenticate(ctx, p.client, "Bearer "+sign(t, hdr("ES256", "t-ec"), c, k.ec))
		if err != nil {
			t.Fatalf("Authenticate(...) err = %v, want nil", err)
		}
		if !slices.Equal(got.Roles, []string{"a", "z"}) || !slices.Equal(got.Scopes, []string{"s1", "s2"}) {
			t.Errorf("Authenticate(...) roles, scopes = %q, %q; want [a z], [s1 s2]", got.Roles, got.Scopes)
		}
		c = claims(now, "realm_access", "not an object")
		got, err = a.Authenticate(ctx, p.client, "Bearer "+sign(t, hdr("ES256", "t-ec"), c, k.ec))
		if err != nil || got.Roles != nil {
			t.Errorf("Authenticate(realm_access a string) = %v, %v; want no roles", got, err)
		}
	})
	t.Run("expiry checked on cache hit", func(t *testing.T) {
		clk := newClock(now)
		a, _ := fileAuth(t, k.jwks(t), true, func(tc *authn.TokenConfig) { tc.Now = clk.Now })
		tok := "Bearer " + sign(t, hdr("ES256", "t-ec"), claims(now, "exp", now.Add(time.Minute).Unix()), k.ec)
		if _, err := a.Authenticate(ctx, p.client, tok); err != nil {
			t.Fatalf("Authenticate(...) err = %v, want nil", err)
		}
		clk.Advance(time.Minute + 10*time.Second) // past exp, within skew
		if _, err := a.Authenticate(ctx, p.client, tok); err != nil {
			t.Fatalf("Authenticate(...) within skew err = %v, want nil", err)
		}
		clk.Advance(time.Minute)
		if _, err := a.Authenticate(ctx, p.client, tok); !errors.Is(err, authn.ErrTokenExpired) {
			t.Fatalf("Authenticate(...) after exp err = %v, want ErrTokenExpired", err)
		}
	})
	t.Run("binding checked on cache hit", func(t *testing.T) {
		a, _ := fileAuth(t, k.jwks(t), true, func(tc *authn.TokenConfig) { tc.Now = func() time.Time { return now } })
		tok := "Bearer " + sign(t, hdr("ES256", "t-ec"), claims(now, "cnf", map[string]string{"x5t#S256": authn.Thumbprint(p.client)}), k.ec)
		for range 3 {
			if got, err := a.Authenticate(ctx, p.client, tok); err != nil || got.Strength != authn.StrengthBoundToken {
				t.Fatalf("Authenticate(right cert) = %v, %v; want bound_token", got, err)
			}
			if _, err := a.Authenticate(ctx, p.client2, tok); !errors.Is(err, authn.ErrTokenBinding) {
				t.Fatalf("Authenticate(other cert) err = %v, want ErrTokenBinding", err)
			}
		}
	})
}
