package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"golang.org/x/oauth2"

	"github.com/tresorkms/tresor/envelope"
	examplepolicies "github.com/tresorkms/tresor/examples/policies"
	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/devpki"
	"github.com/tresorkms/tresor/internal/policy"
	"github.com/tresorkms/tresor/internal/server"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms/localkek"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// The test server's identities.
const (
	testIssuerURL = "https://idp.sdk.test"
	testAudience  = "tresor"
	// TestClientID is the workload the test policy permits everything;
	// TestOtherID is a second workload it permits nothing.
	TestClientID = "spiffe://bank.example/sdk-tests"
	TestOtherID  = "spiffe://bank.example/stranger"
)

// TestServer is a real tresor server for the SDK's tests and examples:
// the whole perimeter (mutual TLS, tokens bound to the client certificate
// from a token endpoint, Cedar policy), a SQLite store and a root key
// file, served on 127.0.0.1; and an OAuth 2.0 token endpoint.
type TestServer struct {
	Addr     string
	TokenURL string
	// TLS is TestClientID's client configuration, OtherTLS TestOtherID's.
	TLS, OtherTLS *tls.Config
	Ring          *envelope.Keyring
	Issuer        *devissuer.Issuer

	// Calls counts the unary calls the server answered, by full method.
	calls *callCounter
	// tokenEndpoint counts the token endpoint's requests.
	tokenEndpoint *countingTokenEndpoint
}

// countingTokenEndpoint is the token endpoint, counting its requests; it
// answers the next bogus ones with a token tresor refuses.
type countingTokenEndpoint struct {
	next     http.Handler
	requests atomic.Int64
	bogus    atomic.Int64
}

func (e *countingTokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.requests.Add(1)
	if e.bogus.Add(-1) >= 0 {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"not-a-token","token_type":"Bearer","expires_in":3600}`)
		return
	}
	e.bogus.Store(0)
	e.next.ServeHTTP(w, r)
}

// TokenRequests is the number of requests the token endpoint received.
func (s *TestServer) TokenRequests() int64 { return s.tokenEndpoint.requests.Load() }

// RefuseNextTokens makes the token endpoint answer its next n requests
// with an access token tresor refuses.
func (s *TestServer) RefuseNextTokens(n int64) { s.tokenEndpoint.bogus.Store(n) }

type callCounter struct {
	mu       sync.Mutex
	byMethod map[string]*atomic.Int64
	total    atomic.Int64
}

// ObserveCall implements server.CallObserver.
func (c *callCounter) ObserveCall(_ context.Context, rec *server.CallRecord) error {
	c.total.Add(1)
	c.mu.Lock()
	n, ok := c.byMethod[rec.Method]
	if !ok {
		n = new(atomic.Int64)
		c.byMethod[rec.Method] = n
	}
	c.mu.Unlock()
	n.Add(1)
	return nil
}

// Calls returns how many calls of a full method name
// (tresorv1.CryptoService_Decrypt_FullMethodName, say) the server answered.
func (s *TestServer) Calls(method string) int64 {
	s.calls.mu.Lock()
	n := s.calls.byMethod[method]
	s.calls.mu.Unlock()
	if n == nil {
		return 0
	}
	return n.Load()
}

// TotalCalls is the number of gRPC calls the server answered.
func (s *TestServer) TotalCalls() int64 { return s.calls.total.Load() }

// StartTestServer starts a TestServer, stopped when tb ends.
func StartTestServer(tb testing.TB) *TestServer {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	dir := tb.TempDir()
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "keys.db"))
	if err != nil {
		tb.Fatalf("OpenSQLite() err = %v", err)
	}
	tb.Cleanup(func() { st.Close() })
	kek, err := localkek.OpenOrCreate(ctx, filepath.Join(dir, "root.key"), logger)
	if err != nil {
		tb.Fatalf("localkek.OpenOrCreate() err = %v", err)
	}
	ring, err := envelope.New(st, kek, envelope.Options{})
	if err != nil {
		tb.Fatalf("envelope.New() err = %v", err)
	}

	ca, err := devpki.NewCA("sdk test CA", time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	srvPair, err := ca.IssueServer([]string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	srvCert, err := srvPair.TLSCertificate()
	if err != nil {
		tb.Fatal(err)
	}
	clientTLS := func(id string) *tls.Config {
		pair, err := ca.IssueClient("sdk", id, time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		cert, err := pair.TLSCertificate()
		if err != nil {
			tb.Fatal(err)
		}
		return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert}}
	}
	srvTLS := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{srvCert},
		ClientCAs:    ca.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{"h2", "http/1.1"},
	}

	iss, err := devissuer.Open(filepath.Join(dir, "issuer"))
	if err != nil {
		tb.Fatal(err)
	}
	iss.SetURL(testIssuerURL)
	jwks := filepath.Join(dir, "jwks.json")
	if err := iss.WriteJWKS(jwks); err != nil {
		tb.Fatal(err)
	}
	a, err := authn.New(ctx, authn.Config{RequireToken: true, Logger: logger, Tokens: &authn.TokenConfig{
		Issuer: testIssuerURL, Audiences: []string{testAudience}, JWKSFile: jwks,
	}})
	if err != nil {
		tb.Fatalf("authn.New() err = %v", err)
	}
	tb.Cleanup(func() { a.Close() })
	schema, err := examplepolicies.Files.ReadFile(examplepolicies.SchemaFile)
	if err != nil {
		tb.Fatal(err)
	}
	pol, err := policy.NewReloading(policy.Options{
		FS:         fstest.MapFS{"tresor.cedarschema": {Data: schema}, "policies/permit.cedar": {Data: []byte(`permit (principal, action, resource) when { principal.workload == "` + TestClientID + `" };`)}},
		SchemaFile: "tresor.cedarschema",
		PolicyDir:  "policies",
		Location:   time.UTC,
	}, logger)
	if err != nil {
		tb.Fatalf("policy.NewReloading() err = %v", err)
	}

	s := &TestServer{TLS: clientTLS(TestClientID), OtherTLS: clientTLS(TestOtherID), Ring: ring, Issuer: iss, calls: &callCounter{byMethod: map[string]*atomic.Int64{}}}
	srv, err := server.New(ring, server.Options{
		GRPCAddr: "127.0.0.1:0", TLS: srvTLS, Logger: logger,
		MaxRequestBytes: 4 << 20,
		Authenticator:   a, Authorizer: pol,
		Schemas:  server.NewSchemaRegistry(st, server.KeyTypes(ring), nil),
		Observer: s.calls,
	})
	if err != nil {
		tb.Fatalf("server.New() err = %v", err)
	}
	if err := srv.Listen(); err != nil {
		tb.Fatal(err)
	}
	s.Addr, _ = srv.Addrs()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			tb.Errorf("Serve() err = %v", err)
		}
	})

	// The token endpoint, over TLS that verifies client certificates.
	tokLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tokTLS := srvTLS.Clone()
	tokTLS.ClientAuth = tls.VerifyClientCertIfGiven
	s.tokenEndpoint = &countingTokenEndpoint{next: &devissuer.TokenEndpoint{Issuer: iss, Audience: testAudience}}
	hs := &http.Server{
		Handler:           s.tokenEndpoint,
		TLSConfig:         tokTLS,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go func() { _ = hs.ServeTLS(tokLn, "", "") }()
	tb.Cleanup(func() { hs.Close() })
	s.TokenURL = "https://" + tokLn.Addr().String() + "/token"

	// Wait until the server is ready (its health checks ran once).
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := s.Client(tb, nil)
		_, err := c.ListKeys(ctx, &tresorv1.ListKeysRequest{})
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the test server did not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.calls.total.Store(0)
	return s
}

// Client returns a Client for TestClientID with tokens from the token
// endpoint; edit, when not nil, changes its Config first. It is closed
// when tb ends.
func (s *TestServer) Client(tb testing.TB, edit func(*Config)) *Client {
	tb.Helper()
	cfg := Config{Address: s.Addr, TLS: s.TLS, Tokens: s.tokens(tb, s.TLS, TestClientID)}
	if edit != nil {
		edit(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		tb.Fatalf("New() err = %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func (s *TestServer) tokens(tb testing.TB, cfg *tls.Config, id string) oauth2.TokenSource {
	tb.Helper()
	src, err := ClientCredentials(ClientCredentialsConfig{TokenURL: s.TokenURL, ClientID: id, TLS: cfg})
	if err != nil {
		tb.Fatalf("ClientCredentials() err = %v", err)
	}
	return src
}

// leaf returns the first certificate of cfg, parsed.
func leaf(tb testing.TB, cfg *tls.Config) *x509.Certificate {
	tb.Helper()
	c := cfg.Certificates[0]
	if c.Leaf != nil {
		return c.Leaf
	}
	l, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// createKey is the request for an AES256_GCM key named name.
func createKey(name string) *tresorv1.CreateKeyRequest {
	return &tresorv1.CreateKeyRequest{KeyId: name, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}
}
