package loadtest

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
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
			resp, err := target.c.Post("https://"+target.addr+"/v1/keys/"+KeyName+":encrypt", "application/json", bytes.NewReader([]byte(body)))
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
