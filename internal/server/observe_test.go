package server

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/audit"
	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/monitor"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms/localkek"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// Tests of what the server tells operators: the audit log (one event per
// call, failing closed, verified and queried over the AdminService),
// readiness, and the anomaly responses applied in the chain.

// Workloads of these tests besides payments.
const (
	observeOtherID = "spiffe://bank.example/other"
	observeAdminID = "spiffe://bank.example/key-admin-console"
)

// cloneServer starts a second server on ts's keyring, store,
// authenticator, policy, observer and clock, with its options changed by
// edit, and returns clients of it: the payments workload with its bound
// token, as for ts. startServerWith builds the options; this is how a test
// sets the ones serverConfig does not reach (Audit, Ready, Anomaly).
func (ts *testServer) cloneServer(t *testing.T, edit func(*Options)) *testServer {
	t.Helper()
	opts := ts.srv.opts
	opts.GRPCAddr, opts.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	opts.Metrics = nil
	edit(&opts)
	srv, err := New(ts.ring, opts)
	if err != nil {
		t.Fatalf("server.New() err = %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve() err = %v, want nil after shutdown", err)
		}
	})
	c := *ts
	grpcAddr, httpAddr := srv.Addrs()
	c.srv, c.addr, c.base = srv, grpcAddr, "https://"+httpAddr
	c.conn = c.dial(t, c.client, c.token)
	c.keys, c.crypto, c.health = tresorv1.NewKeyServiceClient(c.conn), tresorv1.NewCryptoServiceClient(c.conn), healthpb.NewHealthClient(c.conn)
	c.http = c.httpClient(c.client, c.token)
	return &c
}

// paymentsAs is the payments workload (its certificate) with a token of
// subject, bound to the certificate or not: callers of one principal with
// either token strength.
func (ts *testServer) paymentsAs(t *testing.T, subject string, bound bool) caller {
	t.Helper()
	req := devissuer.TokenRequest{Subject: subject}
	if bound {
		req.BindTo = ts.client.Leaf
	}
	tok := ts.mint(t, req)
	conn := ts.dial(t, ts.client, tok)
	return caller{keys: tresorv1.NewKeyServiceClient(conn), crypto: tresorv1.NewCryptoServiceClient(conn), http: ts.httpClient(ts.client, tok)}
}

// auditRoots are the root keys of the key file rootKey, as the server
// opened them: they check the audit log's checkpoints.
func auditRoots(t *testing.T, rootKey string) *envelope.RootKeys {
	t.Helper()
	kek, err := localkek.OpenOrCreate(context.Background(), rootKey, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("localkek.OpenOrCreate() err = %v", err)
	}
	t.Cleanup(func() { kek.Close() })
	roots, err := envelope.NewRootKeys(kek)
	if err != nil {
		t.Fatal(err)
	}
	return roots
}

// testPseudonymizer is newTestAuditLog's.
func testPseudonymizer(t *testing.T) *audit.Pseudonymizer {
	t.Helper()
	pz, err := audit.NewPseudonymizer(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return pz
}

// auditEvents reads every event of the log in st, in order.
func auditEvents(t *testing.T, st store.AuditLog) []audit.Event {
	t.Helper()
	var out []audit.Event
	if err := audit.Query(context.Background(), audit.NewStoreSource(st), nil, audit.Filter{}, func(e audit.Event) error {
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatalf("audit.Query() err = %v", err)
	}
	return out
}

// auditLines reads the raw lines of chain in st.
func auditLines(t *testing.T, st store.AuditLog, chain string) []string {
	t.Helper()
	recs, err := st.ListAudit(context.Background(), chain, 0, store.MaxAuditPage)
	if err != nil {
		t.Fatalf("ListAudit() err = %v", err)
	}
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = string(r.Data)
	}
	return out
}

// withReqID sends id as the call's request id.
func withReqID(ctx context.Context, id string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, requestIDHeader, id)
}

// TestAuditEveryCall: an allowed call, a denied one, an unauthenticated one
// and a REST request the gateway cannot decode each write exactly one event
// with what the call did, subjects pseudonymized, and no payload or token;
// the log verifies with the server's root key.
func TestAuditEveryCall(t *testing.T) {
	ctx := context.Background()
	st := openTestStore(t)
	rootKey := filepath.Join(t.TempDir(), "root.key")
	ts := startServerWith(t, serverConfig{store: st, rootKey: rootKey, audited: true})
	roots, pz := auditRoots(t, rootKey), testPseudonymizer(t)
	const secret = "4111111111111111-TOP-SECRET"
	otherCert := ts.clientCert(t, observeOtherID)
	otherToken := ts.mint(t, devissuer.TokenRequest{Subject: "user-other", BindTo: otherCert.Leaf})
	other := tresorv1.NewCryptoServiceClient(ts.dial(t, otherCert, otherToken))

	if _, err := ts.keys.CreateKey(withReqID(ctx, "create"), &tresorv1.CreateKeyRequest{KeyId: "bench", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatalf("CreateKey(bench) err = %v", err)
	}
	if _, err := ts.crypto.Encrypt(withReqID(ctx, "allowed"), &tresorv1.EncryptRequest{Key: "bench", Plaintext: []byte(secret), AssociatedData: []byte(secret)}); err != nil {
		t.Fatalf("Encrypt(bench) err = %v, want nil", err)
	}
	if _, err := other.Encrypt(withReqID(ctx, "denied"), &tresorv1.EncryptRequest{Key: "bench", Plaintext: []byte(secret)}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Encrypt(bench) by %s err = %v, want PermissionDenied", observeOtherID, err)
	}
	noToken := tresorv1.NewCryptoServiceClient(ts.dial(t, ts.client, ""))
	if _, err := noToken.Encrypt(withReqID(ctx, "no-token"), &tresorv1.EncryptRequest{Key: "bench", Plaintext: []byte(secret)}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Encrypt(bench) without a token err = %v, want Unauthenticated", err)
	}
	req, _ := http.NewRequest("POST", ts.base+"/v1/keys/bench:encrypt", strings.NewReader(`{"plaintext":"`+b64(secret)+`"`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", "rest-bad-body")
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("REST encrypt with a malformed body = %d, want 400", resp.StatusCode)
	}

	paySubject := pz.Subject("payments-batch")
	want := []audit.Event{
		{RequestID: "create", Method: tresorv1.KeyService_CreateKey_FullMethodName, Action: "CreateKey", Workload: paymentsID, Subject: paySubject,
			Auth: audit.AuthBoundToken, Resources: []string{"bench"}, Decision: "allow", Code: "OK"},
		{RequestID: "allowed", Method: tresorv1.CryptoService_Encrypt_FullMethodName, Action: "Encrypt", Workload: paymentsID, Subject: paySubject,
			Auth: audit.AuthBoundToken, Resources: []string{"bench"}, KeyVersions: []string{"bench:1"}, Decision: "allow", Code: "OK"},
		{RequestID: "denied", Method: tresorv1.CryptoService_Encrypt_FullMethodName, Action: "Encrypt", Workload: observeOtherID, Subject: pz.Subject("user-other"),
			Auth: audit.AuthBoundToken, Resources: []string{"bench"}, Decision: "deny", Code: "PermissionDenied"},
		// Refused before authorization: no principal, no action, no decision.
		{RequestID: "no-token", Method: tresorv1.CryptoService_Encrypt_FullMethodName, Action: "Encrypt", Code: "Unauthenticated"},
		// Never reached the chain: the REST handler audits it.
		{RequestID: "rest-bad-body", Method: "REST POST /v1/keys/bench:encrypt", Workload: paymentsID, Subject: paySubject,
			Auth: audit.AuthBoundToken, Code: "InvalidArgument"},
	}
	got := auditEvents(t, st)
	if len(got) != len(want) {
		for _, e := range got {
			t.Logf("event: %s %s %s %s", e.RequestID, e.Method, e.Action, e.Code)
		}
		t.Fatalf("audit log holds %d events, want %d: one per call", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		t.Run(w.RequestID, func(t *testing.T) {
			check := func(field string, got, want any) {
				t.Helper()
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("event of call %q: %s = %v, want %v", w.RequestID, field, got, want)
				}
			}
			check("request_id", g.RequestID, w.RequestID)
			check("method", g.Method, w.Method)
			check("action", g.Action, w.Action)
			check("workload", g.Workload, w.Workload)
			check("subject", g.Subject, w.Subject)
			check("auth", g.Auth, w.Auth)
			check("resources", g.Resources, w.Resources)
			check("key_versions", g.KeyVersions, w.KeyVersions)
			check("decision", g.Decision, w.Decision)
			check("code", g.Code, w.Code)
			check("chain", g.Chain, "test")
			check("seq", g.Seq, i+1)
			if g.Subject != "" && !strings.HasPrefix(g.Subject, "h:") {
				t.Errorf("event of call %q: subject = %q, want a pseudonym h:...", w.RequestID, g.Subject)
			}
			if g.Source == "" || !strings.HasPrefix(g.Source, "h:") {
				t.Errorf("event of call %q: source = %q, want a pseudonym h:...", w.RequestID, g.Source)
			}
			if g.Time.IsZero() {
				t.Errorf("event of call %q: no time", w.RequestID)
			}
		})
	}
	secrets := map[string]string{
		"plaintext":             secret,
		"plaintext, base64":     b64(secret),
		"plaintext, base64 url": base64.RawURLEncoding.EncodeToString([]byte(secret)),
		"payments token":        ts.token,
		"other workload token":  otherToken,
		"raw subject":           "payments-batch",
		"raw other subject":     "user-other",
		"client address":        "127.0.0.1",
	}
	for i, line := range auditLines(t, st, "test") {
		for what, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("event %d holds the %s %q: %s", i+1, what, s, line)
			}
		}
	}
	// A final checkpoint (on Close) covers every event; it verifies with
	// the server's root key.
	obs, ok := ts.srv.opts.Observer.(*AuditObserver)
	if !ok {
		t.Fatalf("server observer is %T, want *AuditObserver", ts.srv.opts.Observer)
	}
	if err := obs.log.Close(ctx); err != nil {
		t.Fatalf("audit log Close() err = %v", err)
	}
	rep, err := audit.Verify(ctx, audit.NewStoreSource(st), roots)
	if err != nil {
		t.Fatalf("audit.Verify() err = %v, want nil", err)
	}
	if rep.Events != int64(len(want)) || rep.Checkpoints < 1 || rep.Uncovered != 0 || len(rep.Chains) != 1 {
		t.Errorf("audit.Verify() = %+v, want %d events in 1 chain, all covered by a checkpoint", rep, len(want))
	}
}

// flakyAuditStore is a store whose audit writes fail as fail decides for
// the n-th AppendAudit (from 1): before writing (nothing stored) or after
// (stored, but the writer is told it failed).
type flakyAuditStore struct {
	store.Store
	mu   sync.Mutex
	n    int
	fail func(n int) (before, after bool)
}

var errTestSink = errors.New("test: audit sink down")

func (s *flakyAuditStore) setFail(f func(n int) (before, after bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = f
}

func (s *flakyAuditStore) AppendAudit(ctx context.Context, events []store.AuditRecord, cp *store.AuditCheckpointRecord) error {
	s.mu.Lock()
	s.n++
	var before, after bool
	if s.fail != nil {
		before, after = s.fail(s.n)
	}
	s.mu.Unlock()
	if before {
		return errTestSink
	}
	if err := s.Store.AppendAudit(ctx, events, cp); err != nil {
		return err
	}
	if after {
		return errTestSink
	}
	return nil
}

// TestAuditFailsClosed: while the audit sink fails, a call that would
// succeed is answered UNAVAILABLE without its result, over gRPC and REST;
// once the sink works again, so do calls, on the same log. With a sink that
// fails now and then, every call answered OK has its event in the log.
func TestAuditFailsClosed(t *testing.T) {
	ctx := context.Background()
	inner := openTestStore(t)
	flaky := &flakyAuditStore{Store: inner}
	rootKey := filepath.Join(t.TempDir(), "root.key")
	ts := startServerWith(t, serverConfig{store: flaky, rootKey: rootKey, audited: true})
	roots := auditRoots(t, rootKey)
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "k", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatal(err)
	}
	other := ts.as(t, observeOtherID, true)

	flaky.setFail(func(int) (bool, bool) { return true, false })
	t.Run("sink down", func(t *testing.T) {
		resp, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "k", Plaintext: []byte("x")})
		if status.Code(err) != codes.Unavailable || resp != nil {
			t.Errorf("Encrypt() with the audit sink down = %v, %v; want no response and Unavailable", resp, err)
		}
		if _, err := ts.keys.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "k"}); status.Code(err) != codes.Unavailable {
			t.Errorf("GetKey() with the audit sink down err = %v, want Unavailable", err)
		}
		// A refusal stays what it was: the audit log adds no information.
		if _, err := other.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "k", Plaintext: []byte("x")}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("denied Encrypt() with the audit sink down err = %v, want PermissionDenied", err)
		}
		code, out := ts.rest(t, "POST", "/v1/keys/k:encrypt", map[string]any{"plaintext": b64("x")})
		if code != http.StatusServiceUnavailable || out["ciphertext"] != nil {
			t.Errorf("REST encrypt with the audit sink down = %d %v, want 503 without a ciphertext", code, out)
		}
		if n := len(auditLines(t, inner, "test")); n != 1 {
			t.Errorf("audit log holds %d events, want 1 (CreateKey before the outage)", n)
		}
	})

	flaky.setFail(nil)
	t.Run("sink back", func(t *testing.T) {
		if _, err := ts.crypto.Encrypt(withReqID(ctx, "after-outage"), &tresorv1.EncryptRequest{Key: "k", Plaintext: []byte("x")}); err != nil {
			t.Errorf("Encrypt() after the audit sink recovered err = %v, want nil", err)
		}
		code, out := ts.rest(t, "POST", "/v1/keys/k:encrypt", map[string]any{"plaintext": b64("x")})
		if code != http.StatusOK || out["ciphertext"] == nil {
			t.Errorf("REST encrypt after the audit sink recovered = %d %v, want 200 with a ciphertext", code, out)
		}
	})

	t.Run("sink fails now and then", func(t *testing.T) {
		// Every 3rd write fails before it is stored, every 5th after.
		flaky.setFail(func(n int) (bool, bool) { return n%3 == 0, n%5 == 0 })
		const workers, calls = 4, 15
		var mu sync.Mutex
		acked := map[string]bool{}
		failed := 0
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range calls {
					id := fmt.Sprintf("flaky-%d-%d", w, i)
					_, err := ts.crypto.Encrypt(withReqID(ctx, id), &tresorv1.EncryptRequest{Key: "k", Plaintext: []byte("x")})
					mu.Lock()
					switch status.Code(err) {
					case codes.OK:
						acked[id] = true
					case codes.Unavailable:
						failed++
					default:
						t.Errorf("Encrypt(%s) err = %v, want nil or Unavailable", id, err)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		flaky.setFail(nil)
		if failed == 0 || len(acked) == 0 {
			t.Fatalf("%d calls acknowledged, %d failed: want some of each (the sink must fail only sometimes)", len(acked), failed)
		}
		logged := map[string]int{}
		for _, e := range auditEvents(t, inner) {
			logged[e.RequestID]++
		}
		for id := range acked {
			if logged[id] != 1 {
				t.Errorf("call %s was answered OK but the log holds %d events of it, want 1", id, logged[id])
			}
		}
		if logged["after-outage"] != 1 {
			t.Errorf("the log holds %d events of the call after the outage, want 1", logged["after-outage"])
		}
		if _, err := audit.Verify(ctx, audit.NewStoreSource(inner), roots); err != nil {
			t.Errorf("audit.Verify() after the flaky writes err = %v, want nil", err)
		}
	})
}

// TestVerifyAndQueryAuditRPC: the AdminService verifies and queries the
// audit log in the store, and names the event a direct edit of the table
// broke.
func TestVerifyAndQueryAuditRPC(t *testing.T) {
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "keys.db")
	st, err := store.OpenSQLite(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rootKey := filepath.Join(t.TempDir(), "root.key")
	base := startServerWith(t, serverConfig{store: st, rootKey: rootKey, audited: true})
	pz := testPseudonymizer(t)
	ts := base.cloneServer(t, func(o *Options) { o.Audit = NewAuditReader(st, auditRoots(t, rootKey), pz) })
	admin := tresorv1.NewAdminServiceClient(ts.conn)
	start := time.Now()

	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "k", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "k", Plaintext: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	other := ts.as(t, observeOtherID, true)
	if _, err := other.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "k", Plaintext: []byte("x")}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Encrypt() by %s err = %v, want PermissionDenied", observeOtherID, err)
	}

	v, err := admin.VerifyAudit(ctx, &tresorv1.VerifyAuditRequest{})
	if err != nil || !v.GetOk() || v.GetEvents() != 4 || v.GetChains() != 1 || v.GetFirstBadChain() != "" || v.GetProblem() != "" {
		t.Fatalf("VerifyAudit() = %v, %v; want ok with 4 events in 1 chain", v, err)
	}

	tests := []struct {
		name string
		req  *tresorv1.QueryAuditRequest
		want int
	}{
		{"action", &tresorv1.QueryAuditRequest{Action: "Encrypt"}, 3},
		{"subject and action", &tresorv1.QueryAuditRequest{Principal: "payments-batch", Action: "Encrypt"}, 2},
		{"pseudonym and action", &tresorv1.QueryAuditRequest{Principal: pz.Subject("payments-batch"), Action: "Encrypt"}, 2},
		{"workload and action", &tresorv1.QueryAuditRequest{Principal: observeOtherID, Action: "Encrypt"}, 1},
		{"key", &tresorv1.QueryAuditRequest{Key: "k"}, 4},
		{"another key", &tresorv1.QueryAuditRequest{Key: "nope"}, 0},
		{"page size", &tresorv1.QueryAuditRequest{Action: "Encrypt", PageSize: 1}, 1},
		{"time range", &tresorv1.QueryAuditRequest{Action: "Encrypt", StartTime: timestamppb.New(start.Add(-time.Minute)), EndTime: timestamppb.New(time.Now().Add(time.Minute))}, 3},
		{"time range before", &tresorv1.QueryAuditRequest{Action: "Encrypt", EndTime: timestamppb.New(start.Add(-time.Minute))}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := admin.QueryAudit(ctx, tt.req)
			if err != nil || len(resp.GetEvents()) != tt.want {
				t.Fatalf("QueryAudit(%v) = %d events, %v; want %d", tt.req, len(resp.GetEvents()), err, tt.want)
			}
			for _, line := range resp.GetEvents() {
				var e audit.Event
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatalf("QueryAudit(%v) event %q: %v", tt.req, line, err)
				}
				if tt.req.Action != "" && e.Action != tt.req.Action {
					t.Errorf("QueryAudit(%v) event action = %q, want %q", tt.req, e.Action, tt.req.Action)
				}
				if strings.Contains(line, "payments-batch") || strings.Contains(line, "user-other") {
					t.Errorf("QueryAudit(%v) event names a raw subject: %s", tt.req, line)
				}
				// The line as the log holds it, so that its hash can be checked.
				stored, err := st.ListAudit(ctx, e.Chain, e.Seq-1, 1)
				if err != nil || len(stored) != 1 || string(stored[0].Data) != line {
					t.Errorf("QueryAudit(%v) event %s differs from the stored line %v (err %v)", tt.req, line, stored, err)
				}
			}
		})
	}

	// Change one byte of the second event in the table.
	db, err := sql.Open("sqlite", dbPath+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var data []byte
	if err := db.QueryRowContext(ctx, `SELECT data FROM audit_events WHERE chain = 'test' AND seq = 2`).Scan(&data); err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data, []byte(`"code":"OK"`))
	if i < 0 {
		t.Fatalf("event 2 = %s, want an OK call", data)
	}
	data[i+len(`"code":"`)] = 'N'
	if _, err := db.ExecContext(ctx, `UPDATE audit_events SET data = ? WHERE chain = 'test' AND seq = 2`, data); err != nil {
		t.Fatal(err)
	}
	v, err = admin.VerifyAudit(ctx, &tresorv1.VerifyAuditRequest{})
	if err != nil || v.GetOk() || v.GetFirstBadChain() != "test" || v.GetFirstBadSeq() != 2 || v.GetProblem() == "" {
		t.Errorf("VerifyAudit() after an edit of event 2 = %v, %v; want not ok, naming chain test, seq 2 and a problem", v, err)
	}
}

// readyState is what /readyz, /healthz and the health service say.
type readyState struct {
	readyz, healthz int
	body            string
	health          healthpb.HealthCheckResponse_ServingStatus
}

func (ts *testServer) readyState(t *testing.T) readyState {
	t.Helper()
	var s readyState
	get := func(path string) (int, string) {
		resp, err := ts.http.Get(ts.base + path)
		if err != nil {
			t.Fatalf("GET %s err = %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	s.readyz, s.body = get("/readyz")
	s.healthz, _ = get("/healthz")
	resp, err := ts.health.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("Health.Check() err = %v", err)
	}
	s.health = resp.GetStatus()
	return s
}

// TestReadiness: /readyz and the health service follow the readiness
// checks, naming the failing ones, and recover with them; /healthz
// (liveness) stays 200 throughout.
func TestReadiness(t *testing.T) {
	base := startServer(t, 0)
	var storeDown, auditDown, kmsHangs atomic.Bool
	check := func(down *atomic.Bool) func(context.Context) error {
		return func(context.Context) error {
			if down.Load() {
				return errors.New("down")
			}
			return nil
		}
	}
	ts := base.cloneServer(t, func(o *Options) {
		o.Ready = []ReadinessCheck{
			{Name: "store", Check: check(&storeDown)},
			{Name: "audit", Check: check(&auditDown)},
			{Name: "kms", Check: func(ctx context.Context) error {
				if kmsHangs.Load() {
					<-ctx.Done() // bounded by the server
					return ctx.Err()
				}
				return nil
			}},
		}
		o.ReadyInterval = 50 * time.Millisecond
	})
	const (
		serving    = healthpb.HealthCheckResponse_SERVING
		notServing = healthpb.HealthCheckResponse_NOT_SERVING
	)
	steps := []struct {
		name              string
		store, audit, kms bool // down
		want              readyState
	}{
		{"all pass", false, false, false, readyState{200, 200, "ready\n", serving}},
		{"audit fails", false, true, false, readyState{503, 200, "not ready: audit\n", notServing}},
		{"store and audit fail", true, true, false, readyState{503, 200, "not ready: store, audit\n", notServing}},
		{"store fails", true, false, false, readyState{503, 200, "not ready: store\n", notServing}},
		{"kms hangs", false, false, true, readyState{503, 200, "not ready: kms\n", notServing}},
		{"all recovered", false, false, false, readyState{200, 200, "ready\n", serving}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			storeDown.Store(s.store)
			auditDown.Store(s.audit)
			kmsHangs.Store(s.kms)
			deadline := time.Now().Add(10 * time.Second)
			for {
				got := ts.readyState(t)
				if got == s.want {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("with store down %v, audit down %v, kms hanging %v: /readyz %d %q, /healthz %d, health %v; want /readyz %d %q, /healthz %d, health %v",
						s.store, s.audit, s.kms, got.readyz, got.body, got.healthz, got.health, s.want.readyz, s.want.body, s.want.healthz, s.want.health)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}

	// A server is not ready before its checks have passed once: while the
	// first round runs, a check that has not answered is not a pass.
	t.Run("not ready before the first round", func(t *testing.T) {
		entered := make(chan struct{})
		var once sync.Once
		slow := base.cloneServer(t, func(o *Options) {
			o.Ready = []ReadinessCheck{{Name: "slow", Check: func(ctx context.Context) error {
				once.Do(func() { close(entered) })
				<-ctx.Done() // never answers: the server's bound ends it
				return ctx.Err()
			}}}
			o.ReadyInterval = time.Hour
		})
		<-entered
		if got := slow.readyState(t); got.readyz == 200 || got.health == serving {
			t.Errorf("while the first readiness check runs (and then fails): /readyz %d %q, health %v; want 503 and NOT_SERVING",
				got.readyz, got.body, got.health)
		}
	})
}

// scriptedRisk is a monitor whose risk for some principals the test sets.
type scriptedRisk struct {
	*monitor.Monitor
	mu   sync.Mutex
	risk map[string]int
}

func (s *scriptedRisk) Score(obs monitor.Observation) monitor.Assessment {
	a := s.Monitor.Score(obs)
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.risk[obs.Principal]; ok {
		a.Risk = r
	}
	return a
}

func (s *scriptedRisk) setRisk(principal string, risk int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.risk[principal] = risk
}

// testClock is a clock the test moves.
type testClock struct{ ns atomic.Int64 }

func newTestClock(t0 time.Time) *testClock {
	c := &testClock{}
	c.ns.Store(t0.UnixNano())
	return c
}

func (c *testClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *testClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// httpStatusOf is the REST status of a gRPC code, as the gateway answers.
var httpStatusOf = map[codes.Code]int{
	codes.OK:                http.StatusOK,
	codes.PermissionDenied:  http.StatusForbidden,
	codes.Unauthenticated:   http.StatusUnauthorized,
	codes.ResourceExhausted: http.StatusTooManyRequests,
}

// TestAnomalyResponsesInTheChain: a response held for a principal applies
// to every call it makes, until it expires: block refuses, step-up wants a
// bound token, throttle limits the rate; and the example policies choose
// the response from the call's risk. The call record carries both.
func TestAnomalyResponsesInTheChain(t *testing.T) {
	ctx := context.Background()
	// A Wednesday in business hours; the test moves the server's clock.
	clk := newTestClock(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC))
	base := startServerWith(t, serverConfig{policies: examplePolicies(t, "10.20.0.0/16", "127.0.0.0/8"), monitored: true, now: clk.Now})
	mo := monitor.Options{PriorRate: 1e6, ThrottleRate: 1, Now: clk.Now}
	mo.Expiry[monitor.Log] = 10 * time.Second
	mo.Expiry[monitor.StepUp] = 20 * time.Second
	mo.Expiry[monitor.Throttle] = 30 * time.Second
	mo.Expiry[monitor.Block] = 40 * time.Second
	m, err := monitor.New(mo)
	if err != nil {
		t.Fatal(err)
	}
	sm := &scriptedRisk{Monitor: m, risk: map[string]int{}}
	ts := base.cloneServer(t, func(o *Options) { o.Anomaly, o.AnomalyMinRisk = sm, 20 })
	admin := ts.as(t, observeAdminID, true, "key-admin")
	for _, k := range []struct{ id, tier string }{{"iban", "confidential"}, {"pan", "restricted"}} {
		if _, err := admin.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: k.id, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM,
			Labels: map[string]string{"owner": paymentsID, "sensitivity": k.tier}}); err != nil {
			t.Fatalf("CreateKey(%s) err = %v", k.id, err)
		}
	}
	principal := func(subject string) string {
		return principalKey(&authn.Principal{Workload: paymentsID, Subject: subject})
	}
	type step struct {
		bound bool
		call  string // "encrypt", "getkey", "listkeys", "rest"
		want  codes.Code
	}
	do := func(c caller, call string) (int, string, error) {
		switch call {
		case "encrypt":
			_, err := c.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "iban", Plaintext: []byte("x")})
			return 0, "", err
		case "getkey":
			_, err := c.keys.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "iban"})
			return 0, "", err
		case "listkeys":
			_, err := c.keys.ListKeys(ctx, &tresorv1.ListKeysRequest{})
			return 0, "", err
		case "rest":
			req, _ := http.NewRequest("POST", ts.base+"/v1/keys/iban:encrypt", strings.NewReader(`{"plaintext":"eA=="}`))
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.http.Do(req)
			if err != nil {
				t.Fatalf("REST encrypt err = %v", err)
			}
			resp.Body.Close()
			return resp.StatusCode, resp.Header.Get("Retry-After"), nil
		}
		panic(call)
	}

	t.Run("applied", func(t *testing.T) {
		tests := []struct {
			response monitor.Response
			steps    []step
		}{
			{monitor.Block, []step{
				{true, "encrypt", codes.PermissionDenied}, {true, "getkey", codes.PermissionDenied},
				{true, "listkeys", codes.PermissionDenied}, {true, "rest", codes.PermissionDenied},
				{false, "encrypt", codes.PermissionDenied},
			}},
			{monitor.StepUp, []step{
				{true, "encrypt", codes.OK}, {true, "rest", codes.OK}, {true, "getkey", codes.OK},
				{false, "encrypt", codes.Unauthenticated}, {false, "getkey", codes.Unauthenticated}, {false, "rest", codes.Unauthenticated},
			}},
			{monitor.Throttle, []step{
				{true, "encrypt", codes.OK}, {true, "encrypt", codes.ResourceExhausted},
				{true, "getkey", codes.ResourceExhausted}, {true, "rest", codes.ResourceExhausted},
				{false, "encrypt", codes.Unauthenticated},
			}},
			{monitor.Log, []step{
				{true, "encrypt", codes.OK}, {false, "encrypt", codes.OK}, {false, "rest", codes.OK},
			}},
		}
		for _, tt := range tests {
			name := tt.response.String()
			t.Run(name, func(t *testing.T) {
				subject := "anomaly-" + name
				callers := map[bool]caller{true: ts.paymentsAs(t, subject, true), false: ts.paymentsAs(t, subject, false)}
				if got := m.Apply(principal(subject), tt.response, clk.Now()); got != tt.response {
					t.Fatalf("Apply(%v) = %v, want it in force", tt.response, got)
				}
				for i, s := range tt.steps {
					code, retryAfter, err := do(callers[s.bound], s.call)
					what := fmt.Sprintf("under %s: call %d, %s with a bound token %v", name, i+1, s.call, s.bound)
					if s.call == "rest" {
						if code != httpStatusOf[s.want] || (s.want == codes.ResourceExhausted && retryAfter == "") {
							t.Errorf("%s = %d (Retry-After %q), want %d", what, code, retryAfter, httpStatusOf[s.want])
						}
					} else if status.Code(err) != s.want {
						t.Errorf("%s err = %v, want %v", what, err, s.want)
					}
					if s.want == codes.ResourceExhausted && s.call != "rest" && retryInfo(err) <= 0 {
						t.Errorf("%s err = %v, want a RetryInfo", what, err)
					}
					rec := ts.calls.last()
					if rec.Response != name || rec.Code != s.want.String() || rec.Principal == nil || rec.Principal.Subject != subject {
						t.Errorf("%s: call record response %q, code %s, principal %+v; want response %q, code %s, subject %s",
							what, rec.Response, rec.Code, rec.Principal, name, s.want, subject)
					}
				}
				clk.Advance(mo.Expiry[tt.response] + time.Second)
				for _, bound := range []bool{true, false} {
					_, _, err := do(callers[bound], "encrypt")
					if err != nil {
						t.Errorf("after %s expired: Encrypt with a bound token %v err = %v, want nil", name, bound, err)
					}
					if rec := ts.calls.last(); rec.Response != "" {
						t.Errorf("after %s expired: call record response %q, want none", name, rec.Response)
					}
				}
			})
		}
	})

	t.Run("chosen by the policy", func(t *testing.T) {
		tests := []struct {
			name       string
			risk       int
			key        string
			want       codes.Code
			response   string
			policy     string
			wantActive monitor.Response
		}{
			{"below every threshold", 25, "iban", codes.OK, "", "", monitor.None},
			{"log", 35, "iban", codes.OK, "log", "anomaly-log", monitor.Log},
			{"step-up", 55, "iban", codes.OK, "step_up", "anomaly-step-up", monitor.StepUp},
			{"throttle starts with a call left", 70, "iban", codes.OK, "throttle", "anomaly-throttle", monitor.Throttle},
			{"throttle on confidential data at 80", 80, "iban", codes.OK, "throttle", "anomaly-throttle", monitor.Throttle},
			{"block on restricted data at 80", 80, "pan", codes.PermissionDenied, "block", "anomaly-block-restricted", monitor.Block},
			{"block", 90, "iban", codes.PermissionDenied, "block", "anomaly-block", monitor.Block},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				subject := fmt.Sprintf("risky-%d", i)
				c := ts.paymentsAs(t, subject, true)
				sm.setRisk(principal(subject), tt.risk)
				_, err := c.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: tt.key, Plaintext: []byte("x")})
				if status.Code(err) != tt.want {
					t.Errorf("Encrypt(%s) at risk %d err = %v, want %v", tt.key, tt.risk, err, tt.want)
				}
				rec := ts.calls.last()
				if rec.Risk != tt.risk || rec.Response != tt.response || (tt.policy != "" && !slices.Contains(rec.Policies, tt.policy)) {
					t.Errorf("Encrypt(%s) at risk %d: call record risk %d, response %q, policies %v; want risk %d, response %q, policies with %q",
						tt.key, tt.risk, rec.Risk, rec.Response, rec.Policies, tt.risk, tt.response, tt.policy)
				}
				if got := m.Active(principal(subject), clk.Now()); got != tt.wantActive {
					t.Errorf("after Encrypt(%s) at risk %d: active response %v, want %v", tt.key, tt.risk, got, tt.wantActive)
				}
			})
		}
	})
}

// TestHealthzIsLiveness: /healthz answers 200 while the server runs, even
// with every readiness check failing, and 503 once it is shutting down.
func TestHealthzIsLiveness(t *testing.T) {
	ts := startServer(t, 0).cloneServer(t, func(o *Options) {
		o.Ready = []ReadinessCheck{{Name: "store", Check: func(context.Context) error { return errors.New("down") }}}
		o.ReadyInterval = 50 * time.Millisecond
	})
	for _, tt := range []struct {
		name     string
		stopping bool
		want     int
	}{{"not ready", false, 200}, {"shutting down", true, 503}} {
		t.Run(tt.name, func(t *testing.T) {
			ts.srv.stopping.Store(tt.stopping)
			rec := httptest.NewRecorder()
			ts.srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
			if rec.Code != tt.want {
				t.Errorf("GET /healthz = %d %q, want %d", rec.Code, rec.Body.String(), tt.want)
			}
		})
	}
	ts.srv.stopping.Store(false)
}
