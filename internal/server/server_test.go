package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/tresorkms/tresor/envelope"
	examplepolicies "github.com/tresorkms/tresor/examples/policies"
	"github.com/tresorkms/tresor/internal/audit"
	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/devpki"
	"github.com/tresorkms/tresor/internal/limits"
	"github.com/tresorkms/tresor/internal/monitor"
	"github.com/tresorkms/tresor/internal/policy"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms/localkek"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testServer struct {
	keys   tresorv1.KeyServiceClient
	crypto tresorv1.CryptoServiceClient
	health healthpb.HealthClient
	conn   *grpc.ClientConn
	http   *http.Client
	base   string // https://127.0.0.1:port
	store  store.Store
	ring   *envelope.Keyring
	logs   *syncBuffer
	ca     *devpki.CA
	srvTLS *tls.Config
	addr   string
	srv    *Server

	// issuer mints the test tokens; client is the payments workload's
	// certificate, token a token for it bound to that certificate.
	issuer    *devissuer.Issuer
	client    tls.Certificate
	token     string
	policy    *policy.Reloading
	policyDir string
	calls     *callLog
}

// Identities of the test server's callers.
const (
	testIssuerURL   = "https://idp.test.example"
	testAudience    = "tresor"
	paymentsID      = "spiffe://bank.example/payments"
	permitPayments  = `permit (principal, action, resource) when { principal.workload == "` + paymentsID + `" };`
	permitPolicyKey = "permit-payments.cedar"
)

// serverConfig varies the test server. The zero value serves with the
// whole perimeter on and a policy that lets the payments workload do
// everything.
type serverConfig struct {
	maxPlaintext int
	// policies are the policy files (name -> Cedar); nil means
	// permitPayments.
	policies map[string]string
	rates    limits.RateConfig
	budgets  []limits.BudgetRule
	// unprotected turns authentication and policy off (baselines).
	unprotected bool
	// store, when set, is used instead of a new SQLite store.
	store store.Store
	// rootKey is the root key file (empty: a new one).
	rootKey string
	// now is the server's clock (nil: time.Now).
	now func() time.Time
	// issuerDir holds the token issuer's keys (empty: a new folder).
	issuerDir string
	// rootKeys, when set, returns the root keys the keyring uses and the
	// AdminService's root-key rotation, given the store, the root key and
	// its file (see admin_test.go).
	rootKeys func(t testing.TB, st store.Store, kek envelope.KEK, rootKeyFile string) (envelope.KEK, RootKeyRotations)
	// metrics, when set, registers the server's collectors.
	metrics *prometheus.Registry
	// quiet logs at Info level to io.Discard and keeps no call log (no
	// CallObserver), as `tresor bench` does: for benchmarks, whose calls
	// would otherwise grow the log buffer and the call log without bound.
	quiet bool
	// audited writes every call to an audit log in the store (the store
	// sink), and monitored scores every call with the anomaly monitor.
	audited, monitored bool
	// ringOptions, when set, changes the keyring's options (its clock,
	// cache ages, logger) before the keyring is made.
	ringOptions func(*envelope.Options)
}

// callLog is a CallObserver that keeps every record.
type callLog struct {
	mu   sync.Mutex
	recs []CallRecord
	err  error // returned by ObserveCall: an audit sink that fails
}

func (l *callLog) ObserveCall(_ context.Context, rec *CallRecord) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, *rec)
	return l.err
}

func (l *callLog) last() CallRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.recs) == 0 {
		return CallRecord{}
	}
	return l.recs[len(l.recs)-1]
}

// writePolicies writes the schema and the given policies into a new folder.
func writePolicies(t testing.TB, files map[string]string) policy.Options {
	t.Helper()
	dir := t.TempDir()
	schema, err := examplepolicies.Files.ReadFile(examplepolicies.SchemaFile)
	if err != nil {
		t.Fatal(err)
	}
	schemaFile := filepath.Join(t.TempDir(), examplepolicies.SchemaFile)
	if err := os.WriteFile(schemaFile, schema, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return policy.Options{SchemaFile: schemaFile, PolicyDir: dir, Location: time.UTC}
}

// examplePolicies returns the shipped example policies, with replace
// applied to their text.
func examplePolicies(t testing.TB, replace ...string) map[string]string {
	t.Helper()
	entries, err := examplepolicies.Files.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".cedar") {
			continue
		}
		b, err := examplepolicies.Files.ReadFile(e.Name())
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = strings.NewReplacer(replace...).Replace(string(b))
	}
	return out
}

func startServer(t testing.TB, maxPlaintext int) *testServer {
	t.Helper()
	return startServerWith(t, serverConfig{maxPlaintext: maxPlaintext})
}

func startServerWith(t testing.TB, sc serverConfig) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := sc.store
	if st == nil {
		var err error
		st, err = store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "keys.db"))
		if err != nil {
			t.Fatalf("OpenSQLite() err = %v", err)
		}
	}
	// The development key file is a real AES-256-GCM root key; kms/pkcs11
	// has its own tests against SoftHSM2, and cmd/tresor serves with it.
	if sc.rootKey == "" {
		sc.rootKey = filepath.Join(t.TempDir(), "root.key")
	}
	kek, err := localkek.OpenOrCreate(ctx, sc.rootKey, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("localkek.OpenOrCreate() err = %v", err)
	}
	var ringKEK envelope.KEK = kek
	var rotations RootKeyRotations
	if sc.rootKeys != nil {
		ringKEK, rotations = sc.rootKeys(t, st, kek, sc.rootKey)
	}
	ringOpts := envelope.Options{MaxPlaintextSize: sc.maxPlaintext}
	if sc.ringOptions != nil {
		sc.ringOptions(&ringOpts)
	}
	ring, err := envelope.New(st, ringKEK, ringOpts)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := devpki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvPair, _ := ca.IssueServer([]string{"127.0.0.1", "localhost"}, time.Hour)
	cliPair, _ := ca.IssueClient("payments", paymentsID, time.Hour)
	srvCert, _ := srvPair.TLSCertificate()
	cliCert, _ := cliPair.TLSCertificate()
	srvTLS := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{srvCert},
		ClientCAs:    ca.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{"h2", "http/1.1"},
	}

	if sc.issuerDir == "" {
		sc.issuerDir = t.TempDir()
	}
	iss, err := devissuer.Open(sc.issuerDir)
	if err != nil {
		t.Fatal(err)
	}
	iss.SetURL(testIssuerURL)
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := iss.WriteJWKS(jwks); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	calls := &callLog{}
	var observer CallObserver = calls
	if sc.quiet {
		logger = slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
		observer = nil
	}
	opts := Options{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: srvTLS,
		MaxRequestBytes: 1 << 20,
		Logger:          logger,
		Observer:        observer,
		Unprotected:     sc.unprotected,
		Now:             sc.now,
		RootKeys:        rotations,
		Schemas:         NewSchemaRegistry(st, KeyTypes(ring), nil),
	}
	if sc.metrics != nil {
		opts.Metrics = sc.metrics
	}
	var pol *policy.Reloading
	var policyDir string
	if !sc.unprotected {
		a, err := authn.New(ctx, authn.Config{RequireToken: true, Logger: logger, Tokens: &authn.TokenConfig{
			Issuer: testIssuerURL, Audiences: []string{testAudience}, JWKSFile: jwks,
		}})
		if err != nil {
			t.Fatalf("authn.New() err = %v", err)
		}
		t.Cleanup(func() { a.Close() })
		files := sc.policies
		if files == nil {
			files = map[string]string{permitPolicyKey: permitPayments}
		}
		popts := writePolicies(t, files)
		policyDir = popts.PolicyDir
		pol, err = policy.NewReloading(popts, logger)
		if err != nil {
			t.Fatalf("policy.NewReloading() err = %v", err)
		}
		opts.Authenticator, opts.Authorizer = a, pol
		if sc.rates.Classes != nil || sc.rates.Global.PerSecond > 0 {
			lim, err := limits.NewLimiter(sc.rates, time.Now)
			if err != nil {
				t.Fatal(err)
			}
			opts.Limiter = lim
		}
		if sc.budgets != nil {
			b, err := limits.NewBudgets(st, sc.budgets, time.Now)
			if err != nil {
				t.Fatal(err)
			}
			opts.Budgets = b
		}
	}
	if sc.audited {
		opts.Observer = newTestAuditLog(t, st, kek)
	}
	if sc.monitored {
		m, err := monitor.New(monitor.Options{PriorRate: 1e6})
		if err != nil {
			t.Fatal(err)
		}
		opts.Anomaly, opts.AnomalyMinRisk = m, 20
	}
	srv, err := New(ring, opts)
	if err != nil {
		t.Fatalf("server.New() err = %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	grpcAddr, httpAddr := srv.Addrs()
	token, err := iss.Mint(devissuer.TokenRequest{Subject: "payments-batch", Audience: testAudience, Lifetime: 10 * time.Minute, BindTo: cliCert.Leaf})
	if err != nil {
		t.Fatalf("Mint() err = %v", err)
	}
	ts := &testServer{
		store: st, ring: ring, logs: logs, ca: ca, srvTLS: srvTLS, addr: grpcAddr, srv: srv,
		base: "https://" + httpAddr, issuer: iss, client: cliCert, token: token, policy: pol, policyDir: policyDir, calls: calls,
	}
	conn := ts.dial(t, cliCert, token)
	ts.conn = conn
	ts.keys, ts.crypto, ts.health = tresorv1.NewKeyServiceClient(conn), tresorv1.NewCryptoServiceClient(conn), healthpb.NewHealthClient(conn)
	ts.http = ts.httpClient(cliCert, token)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve() err = %v, want nil after shutdown", err)
		}
		if sc.store == nil {
			st.Close()
		}
	})
	return ts
}

// bearer sends a token with every gRPC call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// dial connects with cert (none when its Certificate is empty) and sends
// token (none when empty).
func (ts *testServer) dial(t testing.TB, cert tls.Certificate, token string) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: ts.ca.Pool(), MinVersion: tls.VersionTLS12}
	if len(cert.Certificate) > 0 {
		cfg.Certificates = []tls.Certificate{cert}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conn, err := grpc.NewClient(ts.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// withToken adds an Authorization header to requests that have none.
type withToken struct {
	token string
	next  http.RoundTripper
}

func (w withToken) RoundTrip(r *http.Request) (*http.Response, error) {
	if w.token != "" && r.Header.Get("Authorization") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+w.token)
	}
	return w.next.RoundTrip(r)
}

// httpClient is a REST client with cert and token.
func (ts *testServer) httpClient(cert tls.Certificate, token string) *http.Client {
	cfg := &tls.Config{RootCAs: ts.ca.Pool(), MinVersion: tls.VersionTLS12}
	if len(cert.Certificate) > 0 {
		cfg.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Transport: withToken{token: token, next: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}, Timeout: 10 * time.Second}
}

// clientCert issues a client certificate of the test CA for a workload.
func (ts *testServer) clientCert(t testing.TB, workload string) tls.Certificate {
	t.Helper()
	pair, err := ts.ca.IssueClient(workload[strings.LastIndex(workload, "/")+1:], workload, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mint mints a token, failing the test on error.
func (ts *testServer) mint(t testing.TB, req devissuer.TokenRequest) string {
	t.Helper()
	if req.Audience == "" {
		req.Audience = testAudience
	}
	if req.Lifetime == 0 {
		req.Lifetime = 10 * time.Minute
	}
	tok, err := ts.issuer.Mint(req)
	if err != nil {
		t.Fatalf("Mint() err = %v", err)
	}
	return tok
}

// rest posts (or sends method) a JSON body and decodes the JSON answer.
func (ts *testServer) rest(t testing.TB, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, ts.base+path, rd)
	req.Header.Set("Content-Type", "application/json")
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s err = %v", method, path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &out)
	if out == nil {
		out = map[string]any{"raw": string(raw)}
	}
	return resp.StatusCode, out
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestGRPCAndRESTInterop(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "payments", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatalf("CreateKey() err = %v", err)
	}
	// gRPC encrypt, REST decrypt.
	enc, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "payments", Plaintext: []byte("IBAN DE89"), AssociatedData: []byte("cust=1")})
	if err != nil {
		t.Fatalf("Encrypt() err = %v", err)
	}
	code, out := ts.rest(t, "POST", "/v1/ciphertext:decrypt", map[string]any{"ciphertext": enc.GetCiphertext(), "associatedData": b64("cust=1")})
	if code != 200 || out["plaintext"] != b64("IBAN DE89") || out["key"] != "payments" {
		t.Fatalf("REST decrypt = %d %v, want 200 with the plaintext", code, out)
	}
	// REST encrypt, gRPC decrypt.
	code, out = ts.rest(t, "POST", "/v1/keys/payments:encrypt", map[string]any{"plaintext": b64("hello"), "associatedData": b64("a")})
	if code != 200 {
		t.Fatalf("REST encrypt = %d %v, want 200", code, out)
	}
	restCT, _ := out["ciphertext"].(string)
	dec, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: restCT, AssociatedData: []byte("a")})
	if err != nil || string(dec.GetPlaintext()) != "hello" {
		t.Fatalf("gRPC Decrypt(REST ciphertext) = %q, %v; want hello", dec.GetPlaintext(), err)
	}
	// Rotate over REST; the old ciphertext still decrypts, new ones use v2.
	code, out = ts.rest(t, "POST", "/v1/keys/payments:rotate", map[string]any{})
	if code != 200 || out["primaryVersion"] != float64(2) {
		t.Fatalf("REST rotate = %d %v, want 200 with primaryVersion 2", code, out)
	}
	if dec, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), AssociatedData: []byte("cust=1")}); err != nil || dec.GetKeyVersion() != 1 {
		t.Errorf("Decrypt(v1 ciphertext) after rotate = %v, %v; want version 1, nil", dec, err)
	}
	enc2, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "payments", Plaintext: []byte("x")})
	if err != nil || enc2.GetKeyVersion() != 2 {
		t.Errorf("Encrypt() after rotate = %v, %v; want key version 2", enc2, err)
	}
	// Key administration over REST.
	code, out = ts.rest(t, "GET", "/v1/keys/payments", nil)
	if code != 200 || out["name"] != "keys/payments" || out["type"] != "KEY_TYPE_AES256_GCM" {
		t.Errorf("REST get key = %d %v, want 200 keys/payments", code, out)
	}
	code, out = ts.rest(t, "PATCH", "/v1/keys/payments", map[string]any{"labels": map[string]string{"owner": "payments"}, "updateMask": "labels"})
	if code != 200 {
		t.Errorf("REST update key = %d %v, want 200", code, out)
	}
	k, err := ts.keys.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "payments"})
	if err != nil || k.GetLabels()["owner"] != "payments" {
		t.Errorf("GetKey() after REST update = %v, %v; want label owner=payments", k, err)
	}
	// Data keys.
	dk, err := ts.crypto.GenerateDataKey(ctx, &tresorv1.GenerateDataKeyRequest{Key: "payments"})
	if err != nil || len(dk.GetPlaintext()) != 32 {
		t.Fatalf("GenerateDataKey() = %v, %v; want a 32-byte key", dk, err)
	}
	back, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: dk.GetCiphertext()})
	if err != nil || !bytes.Equal(back.GetPlaintext(), dk.GetPlaintext()) {
		t.Errorf("Decrypt(data key) = %v; want the data key", err)
	}
	code, out = ts.rest(t, "POST", "/v1/keys/payments:generateDataKeyWithoutPlaintext", map[string]any{})
	if code != 200 || out["plaintext"] != nil || out["ciphertext"] == nil {
		t.Errorf("REST generateDataKeyWithoutPlaintext = %d %v, want a ciphertext only", code, out)
	}
	// Paging.
	for i := range 5 {
		if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: fmt.Sprintf("k%d", i), Type: tresorv1.KeyType_KEY_TYPE_AES256_SIV}); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	token := ""
	for {
		resp, err := ts.keys.ListKeys(ctx, &tresorv1.ListKeysRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatalf("ListKeys() err = %v", err)
		}
		for _, k := range resp.GetKeys() {
			names = append(names, k.GetName())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if got := strings.Join(names, ","); got != "keys/k0,keys/k1,keys/k2,keys/k3,keys/k4,keys/payments" {
		t.Errorf("ListKeys pages = %s, want all six keys in order", got)
	}
}

func TestBatch(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "b", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatal(err)
	}
	enc, err := ts.crypto.BatchEncrypt(ctx, &tresorv1.BatchEncryptRequest{Key: "b", Items: []*tresorv1.BatchEncryptItem{
		{Plaintext: []byte("one")}, {Plaintext: []byte("two"), AssociatedData: []byte("ad")},
	}})
	if err != nil || len(enc.GetResults()) != 2 {
		t.Fatalf("BatchEncrypt() = %v, %v; want 2 results", enc, err)
	}
	ct0 := enc.GetResults()[0].GetEncrypted().GetCiphertext()
	ct1 := enc.GetResults()[1].GetEncrypted().GetCiphertext()
	dec, err := ts.crypto.BatchDecrypt(ctx, &tresorv1.BatchDecryptRequest{Items: []*tresorv1.BatchDecryptItem{
		{Ciphertext: ct0}, {Ciphertext: ct1, AssociatedData: []byte("wrong")}, {Ciphertext: ct1, AssociatedData: []byte("ad")},
	}})
	if err != nil {
		t.Fatalf("BatchDecrypt() err = %v", err)
	}
	r := dec.GetResults()
	if string(r[0].GetDecrypted().GetPlaintext()) != "one" || r[1].GetError().GetCode() != int32(codes.InvalidArgument) || string(r[2].GetDecrypted().GetPlaintext()) != "two" {
		t.Errorf("BatchDecrypt() results = %v; want one, an InvalidArgument error, two", r)
	}
	if _, err := ts.crypto.BatchEncrypt(ctx, &tresorv1.BatchEncryptRequest{Key: "missing", Items: []*tresorv1.BatchEncryptItem{{Plaintext: []byte("x")}}}); status.Code(err) != codes.NotFound {
		t.Errorf("BatchEncrypt(unknown key) err = %v, want NotFound", err)
	}
}

func TestBadInputCodes(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 1024)
	mk := func(name string, typ tresorv1.KeyType) {
		if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: name, Type: typ}); err != nil {
			t.Fatal(err)
		}
	}
	mk("good", tresorv1.KeyType_KEY_TYPE_AES256_GCM)
	mk("siv", tresorv1.KeyType_KEY_TYPE_AES256_SIV)
	mk("off", tresorv1.KeyType_KEY_TYPE_AES256_GCM)
	mk("old", tresorv1.KeyType_KEY_TYPE_AES256_GCM)
	good, _ := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "good", Plaintext: []byte("p"), AssociatedData: []byte("ad")})
	off, _ := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "off", Plaintext: []byte("p")})
	old, _ := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "old", Plaintext: []byte("p")})
	if _, err := ts.keys.DisableKey(ctx, &tresorv1.DisableKeyRequest{Key: "off"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.keys.RotateKey(ctx, &tresorv1.RotateKeyRequest{Key: "old"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.keys.UpdateKey(ctx, &tresorv1.UpdateKeyRequest{Key: "old", MinDecryptionVersion: 2, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"min_decryption_version"}}}); err != nil {
		t.Fatal(err)
	}
	ct := good.GetCiphertext()
	raw, err := envelope.DecodeCiphertext(ct)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(raw)
	flipped[len(flipped)/2] ^= 0x04

	type call struct {
		name     string
		grpc     func() error
		method   string
		path     string
		body     any
		wantCode codes.Code
		wantHTTP int
		wantMsg  string // substring of the message, when it matters
	}
	encrypt := func(key string, pt []byte) func() error {
		return func() error {
			_, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: key, Plaintext: pt})
			return err
		}
	}
	decrypt := func(ct string, ad []byte) func() error {
		return func() error {
			_, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: ct, AssociatedData: ad})
			return err
		}
	}
	decBody := func(ct, ad string) map[string]any { return map[string]any{"ciphertext": ct, "associatedData": b64(ad)} }
	tests := []call{
		{"unknown key", encrypt("missing", []byte("p")), "POST", "/v1/keys/missing:encrypt", map[string]any{"plaintext": b64("p")}, codes.NotFound, 404, "key not found"},
		{"key name breaks rule", encrypt("Bad_Name", []byte("p")), "POST", "/v1/keys/Bad_Name:encrypt", map[string]any{"plaintext": b64("p")}, codes.InvalidArgument, 400, "key"},
		{"empty plaintext", encrypt("good", nil), "POST", "/v1/keys/good:encrypt", map[string]any{}, codes.InvalidArgument, 400, "plaintext"},
		{"oversized plaintext", encrypt("good", make([]byte, 1025)), "POST", "/v1/keys/good:encrypt", map[string]any{"plaintext": base64.StdEncoding.EncodeToString(make([]byte, 1025))}, codes.InvalidArgument, 400, "exceeds the limit"},
		{"malformed ciphertext", decrypt("garbage", nil), "POST", "/v1/ciphertext:decrypt", decBody("garbage", ""), codes.InvalidArgument, 400, errDecryptMessage},
		{"truncated ciphertext", decrypt(ct[:len(ct)-10], []byte("ad")), "POST", "/v1/ciphertext:decrypt", decBody(ct[:len(ct)-10], "ad"), codes.InvalidArgument, 400, errDecryptMessage},
		{"base64-broken ciphertext", decrypt(ct[:20]+"*"+ct[21:], []byte("ad")), "POST", "/v1/ciphertext:decrypt", decBody(ct[:20]+"*"+ct[21:], "ad"), codes.InvalidArgument, 400, errDecryptMessage},
		{"flipped byte", decrypt(envelope.FormatCiphertext(flipped), []byte("ad")), "POST", "/v1/ciphertext:decrypt", decBody(envelope.FormatCiphertext(flipped), "ad"), codes.InvalidArgument, 400, errDecryptMessage},
		{"wrong associated data", decrypt(ct, []byte("AD")), "POST", "/v1/ciphertext:decrypt", decBody(ct, "AD"), codes.InvalidArgument, 400, errDecryptMessage},
		{"disabled key", decrypt(off.GetCiphertext(), nil), "POST", "/v1/ciphertext:decrypt", decBody(off.GetCiphertext(), ""), codes.FailedPrecondition, 400, "disabled"},
		{"below min decryption version", decrypt(old.GetCiphertext(), nil), "POST", "/v1/ciphertext:decrypt", decBody(old.GetCiphertext(), ""), codes.FailedPrecondition, 400, "minimum decryption version"},
		{"reencrypt to another key type", func() error {
			_, err := ts.crypto.ReEncrypt(ctx, &tresorv1.ReEncryptRequest{Ciphertext: ct, AssociatedData: []byte("ad"), DestinationKey: "siv"})
			return err
		}, "POST", "/v1/ciphertext:reencrypt", map[string]any{"ciphertext": ct, "associatedData": b64("ad"), "destinationKey": "siv"}, codes.InvalidArgument, 400, "key type mismatch"},
		{"create existing key", func() error {
			_, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "good", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM})
			return err
		}, "POST", "/v1/keys", map[string]any{"keyId": "good", "type": "KEY_TYPE_AES256_GCM"}, codes.AlreadyExists, 409, "exists"},
		{"min version above primary", func() error {
			_, err := ts.keys.UpdateKey(ctx, &tresorv1.UpdateKeyRequest{Key: "good", MinDecryptionVersion: 5, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"min_decryption_version"}}})
			return err
		}, "PATCH", "/v1/keys/good", map[string]any{"minDecryptionVersion": 5, "updateMask": "minDecryptionVersion"}, codes.InvalidArgument, 400, "min_decryption_version"},
	}
	before := keyRevisions(t, ts.store)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.grpc()
			if status.Code(err) != tt.wantCode || !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
				t.Errorf("gRPC %s: err = %v, want %v containing %q", tt.name, err, tt.wantCode, tt.wantMsg)
			}
			code, out := ts.rest(t, tt.method, tt.path, tt.body)
			msg, _ := out["message"].(string)
			if code != tt.wantHTTP || out["code"] != float64(tt.wantCode) || !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("REST %s: %d %v, want HTTP %d with code %d containing %q", tt.name, code, out, tt.wantHTTP, tt.wantCode, tt.wantMsg)
			}
		})
	}
	if after := keyRevisions(t, ts.store); after != before {
		t.Errorf("bad input changed the store: before %s, after %s", before, after)
	}
}

func keyRevisions(t *testing.T, s store.Store) string {
	keys, _, err := s.ListKeys(context.Background(), 1000, "")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s@%d ", k.Name, k.Revision)
	}
	return b.String()
}

func TestRESTRequestLimits(t *testing.T) {
	ts := startServer(t, 0)
	tests := []struct {
		name     string
		body     string
		wantHTTP int
		wantMsg  string
	}{
		{"unknown field", `{"plaintext":"cA==","surprise":1}`, 400, "field this method does not define"},
		{"malformed JSON", `{"plaintext":`, 400, "not valid JSON"},
		{"value that mentions an unknown field", `{"associatedData":"x unknown field"}`, 400, "not valid JSON"},
		{"trailing data", `{"plaintext":"cA=="} {}`, 400, "not valid JSON"},
		{"body over the limit", `{"plaintext":"` + strings.Repeat("A", 2<<20) + `"}`, 413, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := ts.rest(t, "POST", "/v1/keys/any:encrypt", tt.body)
			if code != tt.wantHTTP || !strings.Contains(fmt.Sprint(out), tt.wantMsg) {
				t.Errorf("POST %s = %d %v, want %d mentioning %q", tt.name, code, out, tt.wantHTTP, tt.wantMsg)
			}
		})
	}
}

func TestHealthAndTLS(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	resp, err := ts.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Health.Check() = %v, %v; want SERVING", resp, err)
	}
	code, out := ts.rest(t, "GET", "/healthz", nil)
	if code != 200 {
		t.Errorf("GET /healthz = %d %v, want 200", code, out)
	}
	// Without a client certificate the TLS handshake fails: mTLS is required.
	noCert := &tls.Config{RootCAs: ts.ca.Pool(), MinVersion: tls.VersionTLS12}
	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(credentials.NewTLS(noCert)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("Health.Check() without a client certificate err = %v, want Unavailable (handshake refused)", err)
	}
}

func TestNewRequiresMutualTLS(t *testing.T) {
	ca, err := devpki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	cert, _ := pair.TLSCertificate()
	tests := []struct {
		name string
		tls  *tls.Config
	}{
		{"no TLS", nil},
		{"server TLS only", &tls.Config{Certificates: []tls.Certificate{cert}}},
		{"client certificates optional", &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven}},
		{"no client CAs", &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(nil, Options{GRPCAddr: "127.0.0.1:0", TLS: tt.tls}); err == nil || !strings.Contains(err.Error(), "mutual TLS is required") {
				t.Errorf("New(%s) err = %v, want mutual TLS is required", tt.name, err)
			}
		})
	}
}

func TestNoSecretsInLogsOrErrors(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	const secretText = "4111111111111111-TOP-SECRET"
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "s", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatal(err)
	}
	enc, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "s", Plaintext: []byte(secretText), AssociatedData: []byte(secretText)})
	if err != nil {
		t.Fatal(err)
	}
	_, derr := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), AssociatedData: []byte("wrong")})
	_, perr := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "missing", Plaintext: []byte(secretText)})
	_, restOK := ts.rest(t, "POST", "/v1/keys/s:encrypt", map[string]any{"plaintext": b64(secretText), "associatedData": b64(secretText)})
	// A body protojson rejects: its own error would quote the value.
	badCode, restBad := ts.rest(t, "POST", "/v1/keys/s:encrypt", `{"plaintext":"`+secretText+`@@"}`)
	if badCode != 400 {
		t.Errorf("REST encrypt with a non-base64 plaintext = %d %v, want 400", badCode, restBad)
	}
	restBodies := fmt.Sprint(restOK, restBad)
	dk, err := ts.crypto.GenerateDataKey(ctx, &tresorv1.GenerateDataKeyRequest{Key: "s"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{ts.logs.String(), fmt.Sprint(derr), fmt.Sprint(perr), restBodies} {
		for _, secret := range []string{secretText, b64(secretText), base64.StdEncoding.EncodeToString(dk.GetPlaintext()), fmt.Sprintf("%x", dk.GetPlaintext())} {
			if strings.Contains(s, secret) {
				t.Errorf("logs or errors contain a secret: %q in %.200q", secret, s)
			}
		}
	}
	if !strings.Contains(ts.logs.String(), "CryptoService/Encrypt") {
		t.Errorf("logs = %.300q, want a line per call (the test must see the log)", ts.logs.String())
	}
}

// newTestAuditLog is an audit log in st, checkpoints MACed under kek, as
// tresor serve opens it.
func newTestAuditLog(t testing.TB, st store.Store, kek envelope.KEK) *AuditObserver {
	t.Helper()
	roots, err := envelope.NewRootKeys(kek)
	if err != nil {
		t.Fatal(err)
	}
	pz, err := audit.NewPseudonymizer(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	// TRESOR_BENCH_AUDIT_SINK picks another sink for the benchmarks' cost
	// breakdown: "file" (JSON lines, fsync per batch) or "none" (a sink
	// that stores nothing: the cost of the audit pipeline alone).
	var sink audit.Sink = audit.NewStoreSink(st)
	switch os.Getenv("TRESOR_BENCH_AUDIT_SINK") {
	case "file":
		fs, err := audit.OpenFileSink(context.Background(), filepath.Join(t.TempDir(), "a.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		sink = fs
	case "none":
		sink = discardSink{}
	}
	log, err := audit.New(context.Background(), audit.Options{Chain: "test", RootKeys: roots, Pseudonymizer: pz}, sink)
	if err != nil {
		t.Fatalf("audit.New() err = %v", err)
	}
	t.Cleanup(func() { _ = log.Close(context.Background()) })
	return NewAuditObserver(log)
}

// discardSink stores nothing: benchmarks only, to tell the audit
// pipeline's cost from the sink's.
type discardSink struct{}

func (discardSink) Head(context.Context, string) (uint64, audit.Digest, error) {
	return 0, audit.Digest{}, nil
}
func (discardSink) Append(context.Context, []audit.Entry, *audit.Checkpoint) error { return nil }
