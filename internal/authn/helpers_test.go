package authn_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/devpki"
)

const (
	testIssuer   = "https://issuer.test"
	testAudience = "tresor"
)

// clock is a settable clock for TokenConfig.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testKeys are signing keys with known kids, for tokens with any header.
type testKeys struct {
	ec    *ecdsa.PrivateKey // kid "t-ec", ES256
	ec2   *ecdsa.PrivateKey // kid "t-ec2", ES256
	ec384 *ecdsa.PrivateKey // kid "t-ec384", ES384
	rsa   *rsa.PrivateKey   // kid "t-rsa"
	ed    ed25519.PrivateKey
	other *ecdsa.PrivateKey // not in the JWKS
}

var (
	keysOnce sync.Once
	keysVal  *testKeys
)

func loadTestKeys(t testing.TB) *testKeys {
	t.Helper()
	keysOnce.Do(func() {
		k := &testKeys{}
		var err error
		if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if k.ec2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if k.ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
			panic(err)
		}
		if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if _, k.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
		if k.other, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		keysVal = k
	})
	return keysVal
}

// jwks returns the public JWKS of the test keys plus extra (raw JWKS JSON
// documents whose keys are appended).
func (k *testKeys) jwks(t testing.TB, extra ...[]byte) []byte {
	t.Helper()
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &k.ec.PublicKey, KeyID: "t-ec", Use: "sig"},
		{Key: &k.ec2.PublicKey, KeyID: "t-ec2", Use: "sig"},
		{Key: &k.ec384.PublicKey, KeyID: "t-ec384", Use: "sig"},
		{Key: &k.rsa.PublicKey, KeyID: "t-rsa", Use: "sig"},
		{Key: k.ed.Public(), KeyID: "t-ed", Use: "sig"},
	}}
	for _, e := range extra {
		var s jose.JSONWebKeySet
		if err := json.Unmarshal(e, &s); err != nil {
			t.Fatalf("json.Unmarshal(jwks) err = %v", err)
		}
		set.Keys = append(set.Keys, s.Keys...)
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatalf("json.Marshal(jwks) err = %v", err)
	}
	return b
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	if s, ok := v.(string); ok {
		return []byte(s)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("json.Marshal err = %v", err)
	}
	return b
}

// sign builds a compact JWS with the given header and claims (a map, or a
// string used verbatim), signed per header["alg"] with key.
func sign(t testing.TB, hdr map[string]any, claims any, key any) string {
	t.Helper()
	input := b64(mustJSON(t, hdr)) + "." + b64(mustJSON(t, claims))
	alg, _ := hdr["alg"].(string)
	var sig []byte
	var err error
	switch alg {
	case "ES256", "ES384":
		h, size := crypto.SHA256, 32
		if alg == "ES384" {
			h, size = crypto.SHA384, 48
		}
		hh := h.New()
		hh.Write([]byte(input))
		r, s, serr := ecdsa.Sign(rand.Reader, key.(*ecdsa.PrivateKey), hh.Sum(nil))
		if serr != nil {
			t.Fatal(serr)
		}
		sig = make([]byte, 2*size)
		r.FillBytes(sig[:size])
		s.FillBytes(sig[size:])
	case "RS256", "RS512", "PS256":
		h := crypto.SHA256
		if alg == "RS512" {
			h = crypto.SHA512
		}
		hh := h.New()
		hh.Write([]byte(input))
		if alg == "PS256" {
			sig, err = rsa.SignPSS(rand.Reader, key.(*rsa.PrivateKey), h, hh.Sum(nil), &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		} else {
			sig, err = rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), h, hh.Sum(nil))
		}
	case "EdDSA":
		sig = ed25519.Sign(key.(ed25519.PrivateKey), []byte(input))
	case "HS256":
		m := hmac.New(crypto.SHA256.New, key.([]byte))
		m.Write([]byte(input))
		sig = m.Sum(nil)
	default: // "none" and other unsigned forms
	}
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + b64(sig)
}

func hdr(alg, kid string) map[string]any {
	h := map[string]any{"alg": alg, "typ": "at+jwt"}
	if kid != "" {
		h["kid"] = kid
	}
	return h
}

// claims returns valid claims at now, changed by kv pairs (a nil value
// deletes the claim).
func claims(now time.Time, kv ...any) map[string]any {
	c := map[string]any{
		"iss":   testIssuer,
		"sub":   "svc-payments",
		"aud":   testAudience,
		"iat":   now.Unix(),
		"nbf":   now.Unix(),
		"exp":   now.Add(5 * time.Minute).Unix(),
		"jti":   "jti-1",
		"roles": []string{"encrypt", "decrypt", "encrypt"},
		"scope": "kms.write kms.read kms.write",
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(c, kv[i].(string))
		} else {
			c[kv[i].(string)] = kv[i+1]
		}
	}
	return c
}

// pki is a CA with two client certificates and a second CA.
type pki struct {
	ca, ca2          *devpki.CA
	client, client2  *x509.Certificate
	clientPair       devpki.Pair
	client2Pair      devpki.Pair
	otherCAClient    devpki.Pair
	otherCAClientCrt *x509.Certificate
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	p := &pki{}
	var err error
	if p.ca, err = devpki.NewCA("test CA", time.Hour); err != nil {
		t.Fatalf("NewCA err = %v", err)
	}
	if p.ca2, err = devpki.NewCA("other CA", time.Hour); err != nil {
		t.Fatalf("NewCA err = %v", err)
	}
	if p.clientPair, err = p.ca.IssueClient("payments", "spiffe://bank.test/payments", time.Hour); err != nil {
		t.Fatalf("IssueClient err = %v", err)
	}
	if p.client2Pair, err = p.ca.IssueClient("ledger", "spiffe://bank.test/ledger", time.Hour); err != nil {
		t.Fatalf("IssueClient err = %v", err)
	}
	if p.otherCAClient, err = p.ca2.IssueClient("payments", "spiffe://bank.test/payments", time.Hour); err != nil {
		t.Fatalf("IssueClient err = %v", err)
	}
	p.client = leaf(t, p.clientPair)
	p.client2 = leaf(t, p.client2Pair)
	p.otherCAClientCrt = leaf(t, p.otherCAClient)
	return p
}

func leaf(t testing.TB, pair devpki.Pair) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(pair.CertPEM)
	if b == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatalf("ParseCertificate err = %v", err)
	}
	return c
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("WriteFile(%s) err = %v", path, err)
	}
}

// fileAuth returns an Authenticator over a static JWKS file holding jwks;
// mod may change the token config.
func fileAuth(t testing.TB, jwks []byte, require bool, mod func(*authn.TokenConfig)) (*authn.Authenticator, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeFile(t, path, jwks)
	tc := &authn.TokenConfig{Issuer: testIssuer, Audiences: []string{testAudience}, JWKSFile: path}
	if mod != nil {
		mod(tc)
	}
	a, err := authn.New(context.Background(), authn.Config{RequireToken: require, Tokens: tc})
	if err != nil {
		t.Fatalf("New err = %v, want nil", err)
	}
	t.Cleanup(func() { a.Close() })
	return a, path
}

// logBuffer is a slog logger writing into a buffer, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
