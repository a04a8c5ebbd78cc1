package loadtest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/devpki"
	"github.com/tresorkms/tresor/internal/store"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

var (
	sharedOnce sync.Once
	shared     *Harness
	sharedErr  error
)

// harness returns the package's one harness, started on first use and
// closed by TestMain.
func harness(tb testing.TB) *Harness {
	tb.Helper()
	sharedOnce.Do(func() { shared, sharedErr = Start(context.Background(), HarnessOptions{}) })
	if sharedErr != nil {
		tb.Fatalf("Start() err = %v", sharedErr)
	}
	return shared
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		if err := shared.Close(); err != nil && code == 0 {
			println("harness Close() err =", err.Error())
			code = 1
		}
	}
	os.Exit(code)
}

func TestHarnessOperations(t *testing.T) {
	h := harness(t)
	ctx := context.Background()
	ops := []struct {
		name string
		op   func(context.Context) error
	}{
		{"gRPC health", h.GRPCHealth()},
		{"gRPC encrypt", h.GRPCEncrypt(1024)},
		{"gRPC encrypt open", h.GRPCEncryptOpen(1024)},
		{"REST encrypt", h.RESTEncrypt(1024)},
		{"REST baseline", h.RESTBaseline(1024)},
	}
	for _, tt := range ops {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(ctx); err != nil {
				t.Fatalf("op err = %v", err)
			}
			r := Run(ctx, Options{Concurrency: 4, Duration: 100 * time.Millisecond}, tt.op)
			if r.Ops == 0 || r.Errors != 0 {
				t.Errorf("Run() = %+v, want ops and no errors", r)
			}
		})
	}
}

// TestUnknownFieldsRefused checks that tresor and the baseline both refuse a
// body with an unknown field, so they do the same work.
func TestUnknownFieldsRefused(t *testing.T) {
	h := harness(t)
	for _, target := range []struct {
		name string
		c    *http.Client
		addr string
	}{{"tresor", h.REST, h.HTTPAddr}, {"baseline", h.Baseline, h.BaselineAddr}} {
		for _, body := range []string{`{"plaintext":"cA==","surprise":1}`, `{"plaintext":`} {
			req, err := http.NewRequest("POST", "https://"+target.addr+"/v1/keys/"+KeyName+":encrypt", bytes.NewReader([]byte(body)))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			// tresor authenticates before it reads the body: send the token.
			auth, err := h.tokens.Authorization()
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", auth)
			resp, err := target.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s: POST %s = %d, want 400", target.name, body, resp.StatusCode)
			}
		}
	}
}

// TestProtectedServerEnforces checks that the protected server runs the
// whole chain (so grpc-encrypt measures it) and the open server none of it:
// a key owned by another workload is refused by the example policies on the
// protected server and served by the open one, and a REST call without the
// token is refused.
func TestProtectedServerEnforces(t *testing.T) {
	h := harness(t)
	ctx := context.Background()
	const other = "bench-other"
	if _, err := h.Ring.CreateKey(ctx, envelope.KeySpec{Name: other, Type: store.KeyTypeAES256GCM, Labels: map[string]string{
		envelope.LabelOwner: "spiffe://tresor.bench/someone-else", envelope.LabelSensitivity: "confidential",
	}}); err != nil {
		t.Fatalf("CreateKey(%s) err = %v", other, err)
	}
	req := &tresorv1.EncryptRequest{Key: other, Plaintext: []byte("p")}
	if _, err := h.crypto.Encrypt(ctx, req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("protected Encrypt(%s) err = %v, want PermissionDenied", other, err)
	}
	if _, err := h.openCrypto.Encrypt(ctx, req); err != nil {
		t.Errorf("open Encrypt(%s) err = %v, want nil", other, err)
	}
	resp, err := h.REST.Post("https://"+h.HTTPAddr+"/v1/keys/"+KeyName+":encrypt", "application/json", strings.NewReader(`{"plaintext":"cA=="}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("REST encrypt without a token = %d %s, want 401", resp.StatusCode, body)
	}
}

// TestTokenRenewal checks that the client presents one token until half its
// lifetime has passed, then a new one.
func TestTokenRenewal(t *testing.T) {
	iss, err := devissuer.Open(filepath.Join(t.TempDir(), "issuer"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := devpki.NewCA("renewal test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueClient("bench", ClientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ts, err := newTokenSource(iss, cert.Leaf, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	first, err := ts.Authorization()
	if err != nil || !strings.HasPrefix(first, "Bearer ") {
		t.Fatalf("Authorization() = %q, %v; want a bearer token", first, err)
	}
	now = now.Add(TokenLifetime/2 - time.Second)
	if again, _ := ts.Authorization(); again != first {
		t.Errorf("Authorization() before renewal changed the token")
	}
	now = now.Add(2 * time.Second)
	renewed, err := ts.Authorization()
	if err != nil || renewed == first {
		t.Errorf("Authorization() after half the lifetime = same token, %v; want a new one", err)
	}
	md, err := ts.GetRequestMetadata(context.Background())
	if err != nil || md["authorization"] != renewed {
		t.Errorf("GetRequestMetadata() = %v, %v; want the renewed token", md, err)
	}
}

// TestBenchChain runs a short `tresor bench --target chain` and checks the
// report: both targets measured without errors, the chain ratio and its
// rounds.
func TestBenchChain(t *testing.T) {
	var out bytes.Buffer
	rep, err := Bench(context.Background(), &out, BenchOptions{Concurrency: 4, Duration: 400 * time.Millisecond, Size: 1024, Target: "chain", Rounds: 2})
	if err != nil {
		t.Fatalf("Bench() err = %v", err)
	}
	if len(rep.Rows) != 2 || rep.Rows[0].Target != TargetGRPCEncryptOpen || rep.Rows[1].Target != TargetGRPCEncrypt {
		t.Fatalf("Bench() rows = %+v, want %s and %s", rep.Rows, TargetGRPCEncryptOpen, TargetGRPCEncrypt)
	}
	for _, r := range rep.Rows {
		if r.Ops == 0 || r.Errors != 0 {
			t.Errorf("%s: %d ops, %d errors (first %v), want ops and no errors", r.Target, r.Ops, r.Errors, r.FirstError)
		}
	}
	if rep.ChainRatio <= 0 || len(rep.ChainRounds) != 2 || rep.ChainCPURatio <= 0 {
		t.Errorf("Bench() chain ratio %v, rounds %v, CPU ratio %v; want a ratio, 2 rounds and a CPU ratio", rep.ChainRatio, rep.ChainRounds, rep.ChainCPURatio)
	}
	if !strings.Contains(out.String(), "ratio gRPC encrypt chain / open:") {
		t.Errorf("Bench() output = %q, want the chain ratio line", out.String())
	}
}
