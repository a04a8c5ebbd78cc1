package devissuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

func TestOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "issuer")
	i, err := Open(dir)
	if err != nil {
		t.Fatalf("Open(new dir) err = %v, want nil", err)
	}
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{{dir, 0o700}, {filepath.Join(dir, KeyFile), 0o600}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.mode {
			t.Errorf("mode of %s = %v, want %v", c.path, got, c.mode)
		}
	}
	again, err := Open(dir)
	if err != nil {
		t.Fatalf("Open(existing dir) err = %v, want nil", err)
	}
	if again.KeyID() != i.KeyID() {
		t.Errorf("Open(existing dir).KeyID() = %q, want the stored key %q", again.KeyID(), i.KeyID())
	}
	if i.Issuer() != DefaultURL {
		t.Errorf("Issuer() = %q, want %q", i.Issuer(), DefaultURL)
	}
}

func TestOpenRefusesReadableKey(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o604, 0o640} {
		dir := t.TempDir()
		if _, err := Open(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, KeyFile), mode); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(dir); err == nil {
			t.Errorf("Open(key file mode %v) err = nil, want refused", mode)
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err == nil {
		t.Error("Open(garbage key file) err = nil, want an error")
	}
}

func TestRotate(t *testing.T) {
	dir := t.TempDir()
	i, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	first := i.KeyID()
	if err := i.Rotate(); err != nil {
		t.Fatalf("Rotate() err = %v, want nil", err)
	}
	if i.KeyID() == first {
		t.Fatal("KeyID() after Rotate() is unchanged, want a new key")
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(i.JWKS(), &set); err != nil {
		t.Fatalf("JWKS() is not a JWK Set: %v", err)
	}
	if len(set.Keys) != 2 || set.Keys[0].KeyID != first || set.Keys[1].KeyID != i.KeyID() {
		t.Fatalf("JWKS() kids = %v, want [%s %s]", set.Keys, first, i.KeyID())
	}
	for _, k := range set.Keys {
		if !k.IsPublic() || k.Use != "sig" || k.Algorithm != "ES256" {
			t.Errorf("JWKS() key %s: public %v, use %q, alg %q; want public sig ES256", k.KeyID, k.IsPublic(), k.Use, k.Algorithm)
		}
	}
	if strings.Contains(string(i.JWKS()), `"d"`) {
		t.Fatal("JWKS() contains a private key member")
	}
	again, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.KeyID() != i.KeyID() || len(again.keys) != 2 {
		t.Fatalf("Open() after Rotate() has kid %q and %d keys, want %q and 2", again.KeyID(), len(again.keys), i.KeyID())
	}
}

func TestMint(t *testing.T) {
	i, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	i.now = func() time.Time { return now }
	i.SetURL("https://idp.test/")
	cert := testCert(t)
	tests := []struct {
		name    string
		req     TokenRequest
		wantErr bool
		check   func(t *testing.T, c map[string]any)
	}{
		{"defaults", TokenRequest{Subject: "svc", Audience: "tresor"}, false, func(t *testing.T, c map[string]any) {
			want := map[string]any{"iss": "https://idp.test", "sub": "svc", "aud": "tresor",
				"iat": float64(now.Unix()), "nbf": float64(now.Unix()), "exp": float64(now.Add(5 * time.Minute).Unix())}
			for k, v := range want {
				if c[k] != v {
					t.Errorf("claim %s = %v, want %v", k, c[k], v)
				}
			}
			if jti, _ := c["jti"].(string); len(jti) < 16 {
				t.Errorf("claim jti = %v, want a random id", c["jti"])
			}
			for _, k := range []string{"roles", "scope", "cnf"} {
				if _, ok := c[k]; ok {
					t.Errorf("claim %s present, want absent", k)
				}
			}
		}},
		{"roles, scopes, lifetime, binding", TokenRequest{Subject: "svc", Audience: "tresor", Roles: []string{"a", "b"}, Scopes: []string{"x", "y"}, Lifetime: 15 * time.Minute, BindTo: cert}, false, func(t *testing.T, c map[string]any) {
			if r, _ := json.Marshal(c["roles"]); string(r) != `["a","b"]` {
				t.Errorf("claim roles = %s, want [\"a\",\"b\"]", r)
			}
			if c["scope"] != "x y" {
				t.Errorf("claim scope = %v, want \"x y\"", c["scope"])
			}
			if c["exp"] != float64(now.Add(15*time.Minute).Unix()) {
				t.Errorf("claim exp = %v, want now+15m", c["exp"])
			}
			sum := sha256.Sum256(cert.Raw)
			cnf, _ := c["cnf"].(map[string]any)
			if cnf["x5t#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]) {
				t.Errorf("claim cnf = %v, want x5t#S256 of the certificate", c["cnf"])
			}
		}},
		{"lifetime over 15m", TokenRequest{Subject: "svc", Audience: "tresor", Lifetime: 16 * time.Minute}, true, nil},
		{"negative lifetime", TokenRequest{Subject: "svc", Audience: "tresor", Lifetime: -time.Minute}, true, nil},
		{"no subject", TokenRequest{Audience: "tresor"}, true, nil},
		{"no audience", TokenRequest{Subject: "svc"}, true, nil},
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(i.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := i.Mint(tc.req)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Mint(%+v) err = %v, want error %v", tc.req, err, tc.wantErr)
			}
			if err != nil {
				return
			}
			jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.ES256})
			if err != nil {
				t.Fatalf("Mint() token does not parse: %v", err)
			}
			if kid := jws.Signatures[0].Header.KeyID; kid != i.KeyID() {
				t.Errorf("token kid = %q, want %q", kid, i.KeyID())
			}
			payload, err := jws.Verify(&set)
			if err != nil {
				t.Fatalf("token does not verify with JWKS(): %v", err)
			}
			var c map[string]any
			if err := json.Unmarshal(payload, &c); err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestHandler(t *testing.T) {
	i, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(i.Handler())
	defer srv.Close()
	i.SetURL(srv.URL)
	get := func(path string) []byte {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s status = %d, want 200", path, resp.StatusCode)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(get("/.well-known/openid-configuration"), &meta); err != nil {
		t.Fatal(err)
	}
	if meta.Issuer != srv.URL || meta.JWKSURI != srv.URL+"/jwks.json" {
		t.Fatalf("discovery = %+v, want issuer %s and jwks_uri %s/jwks.json", meta, srv.URL, srv.URL)
	}
	if got := get("/jwks.json"); string(got) != string(i.JWKS()) {
		t.Fatalf("GET /jwks.json = %s, want JWKS()", got)
	}
	resp, err := srv.Client().Post(srv.URL+"/jwks.json", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /jwks.json status = %d, want 405", resp.StatusCode)
	}
}

func TestWriteJWKS(t *testing.T) {
	i, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := i.WriteJWKS(path); err != nil {
		t.Fatalf("WriteJWKS err = %v, want nil", err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(i.JWKS()) {
		t.Fatalf("WriteJWKS wrote %s, want JWKS()", got)
	}
	if err := i.WriteJWKS(filepath.Join(t.TempDir(), "no", "such", "dir", "jwks.json")); err == nil {
		t.Fatal("WriteJWKS(missing dir) err = nil, want an error")
	}
}

func testCert(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "c"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
