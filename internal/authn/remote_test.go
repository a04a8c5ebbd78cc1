package authn_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
)

// idp is a devissuer served over https, counting requests.
type idp struct {
	iss      *devissuer.Issuer
	srv      *httptest.Server
	requests atomic.Int64
	jwksHits atomic.Int64
}

func newIDP(t testing.TB) *idp {
	t.Helper()
	iss, err := devissuer.Open(t.TempDir())
	if err != nil {
		t.Fatalf("devissuer.Open err = %v", err)
	}
	d := &idp{iss: iss}
	h := iss.Handler()
	d.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.requests.Add(1)
		if r.URL.Path == "/jwks.json" {
			d.jwksHits.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(d.srv.Close)
	iss.SetURL(d.srv.URL)
	return d
}

func (d *idp) auth(t testing.TB, clk *clock, mod func(*authn.TokenConfig)) *authn.Authenticator {
	t.Helper()
	tc := &authn.TokenConfig{
		Issuer: d.iss.Issuer(), Audiences: []string{testAudience}, HTTPClient: d.srv.Client(), Now: clk.Now,
	}
	if mod != nil {
		mod(tc)
	}
	a, err := authn.New(context.Background(), authn.Config{RequireToken: true, Tokens: tc})
	if err != nil {
		t.Fatalf("New err = %v, want nil", err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func (d *idp) mint(t testing.TB, req devissuer.TokenRequest) string {
	t.Helper()
	if req.Subject == "" {
		req.Subject = "svc-payments"
	}
	if req.Audience == "" {
		req.Audience = testAudience
	}
	tok, err := d.iss.Mint(req)
	if err != nil {
		t.Fatalf("Mint err = %v", err)
	}
	return "Bearer " + tok
}

// TestDiscoveryNoNetworkWhenWarm counts requests to the issuer: New makes
// two (discovery, JWKS); then no Authenticate call, cached or not, makes
// any.
func TestDiscoveryNoNetworkWhenWarm(t *testing.T) {
	d := newIDP(t)
	p := newPKI(t)
	a := d.auth(t, newClock(time.Now()), nil)
	if got := d.requests.Load(); got != 2 {
		t.Fatalf("requests after New = %d, want 2", got)
	}
	ctx := context.Background()
	same := d.mint(t, devissuer.TokenRequest{Roles: []string{"encrypt"}, BindTo: p.client})
	for i := range 1000 {
		tok := same
		if i%20 == 0 { // 50 distinct tokens, each verified once
			tok = d.mint(t, devissuer.TokenRequest{Subject: fmt.Sprintf("svc-%d", i)})
		}
		if _, err := a.Authenticate(ctx, p.client, tok); err != nil {
			t.Fatalf("Authenticate(...) #%d err = %v, want nil", i, err)
		}
	}
	got, err := a.Authenticate(ctx, p.client, same)
	if err != nil || got.Strength != authn.StrengthBoundToken || got.Issuer != d.srv.URL {
		t.Fatalf("Authenticate(bound token) = %+v, %v; want bound_token from %s", got, err, d.srv.URL)
	}
	if got := d.requests.Load(); got != 2 {
		t.Fatalf("requests after 1001 Authenticate calls = %d, want 2", got)
	}
}

// TestKeyRollover: a token signed by a key the issuer publishes later is
// accepted after one refetch; bogus kids cannot make it refetch more than
// once per 30s.
func TestKeyRollover(t *testing.T) {
	d := newIDP(t)
	p := newPKI(t)
	k := loadTestKeys(t)
	clk := newClock(time.Now())
	a := d.auth(t, clk, nil)
	ctx := context.Background()
	old := d.mint(t, devissuer.TokenRequest{})
	if _, err := a.Authenticate(ctx, p.client, old); err != nil {
		t.Fatalf("Authenticate(old key) err = %v, want nil", err)
	}

	if err := d.iss.Rotate(); err != nil {
		t.Fatalf("Rotate err = %v", err)
	}
	rotated := d.mint(t, devissuer.TokenRequest{})
	if _, err := a.Authenticate(ctx, p.client, rotated); err != nil {
		t.Fatalf("Authenticate(new key) err = %v, want nil", err)
	}
	if got := d.jwksHits.Load(); got != 2 {
		t.Fatalf("JWKS fetches after rollover = %d, want 2", got)
	}
	if _, err := a.Authenticate(ctx, p.client, old); err != nil {
		t.Fatalf("Authenticate(old key after rollover) err = %v, want nil", err)
	}

	// A flood of unknown kids, sequential and concurrent, within 30s.
	bogus := func(i int) string {
		return "Bearer " + sign(t, hdr("ES256", fmt.Sprintf("bogus-%d", i)), claims(clk.Now(), "iss", d.iss.Issuer()), k.other)
	}
	for i := range 100 {
		if _, err := a.Authenticate(ctx, p.client, bogus(i)); !errors.Is(err, authn.ErrTokenUnknownKey) {
			t.Fatalf("Authenticate(bogus kid) err = %v, want ErrTokenUnknownKey", err)
		}
	}
	clk.Advance(31 * time.Second)
	toks := make([]string, 50)
	for i := range toks {
		toks[i] = bogus(1000 + i)
	}
	var wg sync.WaitGroup
	for _, tok := range toks {
		wg.Go(func() {
			if _, err := a.Authenticate(ctx, p.client, tok); !errors.Is(err, authn.ErrTokenUnknownKey) {
				t.Errorf("Authenticate(bogus kid) err = %v, want ErrTokenUnknownKey", err)
			}
		})
	}
	wg.Wait()
	if got := d.jwksHits.Load(); got != 3 {
		t.Fatalf("JWKS fetches after bogus kids = %d, want 3 (one per 30s)", got)
	}
	if got := d.requests.Load(); got != 4 {
		t.Fatalf("requests = %d, want 4 (discovery once)", got)
	}
}

func TestDiscoveryFailures(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"not found", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }},
		{"issuer mismatch", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `{"issuer":"https://elsewhere.test","jwks_uri":"https://elsewhere.test/jwks"}`)
		}},
		{"http jwks_uri", nil}, // filled below: needs the server URL
		{"not JSON", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>") }},
		{"JWKS not found", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var url string
			h := tc.handler
			switch tc.name {
			case "http jwks_uri":
				h = func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprintf(w, `{"issuer":%q,"jwks_uri":"http://plain.test/jwks"}`, url)
				}
			case "JWKS not found":
				h = func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/jwks" {
						http.NotFound(w, r)
						return
					}
					fmt.Fprintf(w, `{"issuer":%q,"jwks_uri":%q}`, url, url+"/jwks")
				}
			}
			srv := httptest.NewTLSServer(h)
			defer srv.Close()
			url = srv.URL
			a, err := authn.New(context.Background(), authn.Config{Tokens: &authn.TokenConfig{
				Issuer: srv.URL, Audiences: []string{testAudience}, HTTPClient: srv.Client(),
			}})
			if err == nil {
				a.Close()
				t.Fatalf("New(issuer %s) err = nil, want an error", tc.name)
			}
		})
	}
}

// TestDiscoveryUntrustedCA: the default client does not trust the test
// server's certificate.
func TestDiscoveryUntrustedCA(t *testing.T) {
	d := newIDP(t)
	_, err := authn.New(context.Background(), authn.Config{Tokens: &authn.TokenConfig{
		Issuer: d.iss.Issuer(), Audiences: []string{testAudience},
	}})
	if err == nil {
		t.Fatal("New(untrusted issuer certificate) err = nil, want an error")
	}
}

func TestJWKSFile(t *testing.T) {
	ctx := context.Background()
	p := newPKI(t)
	t.Run("unknown kid rereads the file", func(t *testing.T) {
		iss, err := devissuer.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "jwks.json")
		if err := iss.WriteJWKS(path); err != nil {
			t.Fatal(err)
		}
		a := newFileAuth(t, iss, path, time.Hour)
		if err := iss.Rotate(); err != nil {
			t.Fatal(err)
		}
		if err := iss.WriteJWKS(path); err != nil {
			t.Fatal(err)
		}
		tok := mintFor(t, iss)
		if _, err := a.Authenticate(ctx, p.client, tok); err != nil {
			t.Fatalf("Authenticate(new key in file) err = %v, want nil", err)
		}
	})
	t.Run("polling picks up a new key", func(t *testing.T) {
		iss, err := devissuer.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "jwks.json")
		if err := iss.WriteJWKS(path); err != nil {
			t.Fatal(err)
		}
		a := newFileAuth(t, iss, path, 10*time.Millisecond)
		if err := iss.Rotate(); err != nil {
			t.Fatal(err)
		}
		tok := mintFor(t, iss)
		// The file does not have the key yet; this also uses up the
		// unknown-kid reread for 30s.
		if _, err := a.Authenticate(ctx, p.client, tok); !errors.Is(err, authn.ErrTokenUnknownKey) {
			t.Fatalf("Authenticate(key not yet in file) err = %v, want ErrTokenUnknownKey", err)
		}
		if err := iss.WriteJWKS(path); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the poll to load the new key", func() bool {
			_, err := a.Authenticate(ctx, p.client, tok)
			return err == nil
		})
	})
	t.Run("a broken file keeps the old keys", func(t *testing.T) {
		iss, err := devissuer.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "jwks.json")
		if err := iss.WriteJWKS(path); err != nil {
			t.Fatal(err)
		}
		var logs logBuffer
		a, err := authn.New(ctx, authn.Config{RequireToken: true, Logger: logs.logger(), Tokens: &authn.TokenConfig{
			Issuer: iss.Issuer(), Audiences: []string{testAudience}, JWKSFile: path,
			RefreshInterval: 10 * time.Millisecond, CacheSize: -1,
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		tok := mintFor(t, iss)
		writeFile(t, path, []byte(`{"keys": [`))
		waitFor(t, "the reload failure to be logged", func() bool { return len(logs.String()) > 0 })
		if _, err := a.Authenticate(ctx, p.client, tok); err != nil {
			t.Fatalf("Authenticate(...) after a broken JWKS file err = %v, want nil", err)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if _, err := a.Authenticate(ctx, p.client, tok); err != nil {
			t.Fatalf("Authenticate(...) after the JWKS file went away err = %v, want nil", err)
		}
	})
	t.Run("a withdrawn key stops working, cached or not", func(t *testing.T) {
		old, err := devissuer.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		next, err := devissuer.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "jwks.json")
		if err := old.WriteJWKS(path); err != nil {
			t.Fatal(err)
		}
		a := newFileAuth(t, old, path, 10*time.Millisecond)
		tok := mintFor(t, old)
		if _, err := a.Authenticate(ctx, p.client, tok); err != nil {
			t.Fatalf("Authenticate(...) err = %v, want nil", err)
		}
		if err := next.WriteJWKS(path); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the withdrawn key to be refused", func() bool {
			_, err := a.Authenticate(ctx, p.client, tok)
			return errors.Is(err, authn.ErrTokenUnknownKey)
		})
	})
}

func newFileAuth(t *testing.T, iss *devissuer.Issuer, path string, every time.Duration) *authn.Authenticator {
	t.Helper()
	a, err := authn.New(context.Background(), authn.Config{RequireToken: true, Tokens: &authn.TokenConfig{
		Issuer: iss.Issuer(), Audiences: []string{testAudience}, JWKSFile: path, RefreshInterval: every,
	}})
	if err != nil {
		t.Fatalf("New err = %v, want nil", err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func mintFor(t testing.TB, iss *devissuer.Issuer) string {
	t.Helper()
	tok, err := iss.Mint(devissuer.TokenRequest{Subject: "svc", Audience: testAudience})
	if err != nil {
		t.Fatalf("Mint err = %v", err)
	}
	return "Bearer " + tok
}
