package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/limits"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/internal/store/pgtest"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// The benchmarks' keys: benchKey is owned by the payments workload (the
// test client), othersKey by another workload.
const (
	benchKey  = "bench"
	othersKey = "others"
	otherID   = "spiffe://bank.example/other"
)

// encryptBenchCallers is how many goroutines call at once in
// BenchmarkEncrypt1KiB (RunParallel runs parallelism x GOMAXPROCS).
const encryptBenchCallers = 64

// highRates limits every action class, and all calls together, at 1e9
// calls a second: the limiter does its work on every call and refuses none.
func highRates() limits.RateConfig {
	high := limits.Rate{PerSecond: 1e9, Burst: 1e9}
	rc := limits.RateConfig{Global: high, Classes: map[string]limits.Rate{}}
	for _, c := range []string{classCrypto, classAdmin, classRead, classHealth} {
		rc.Classes[c] = high
	}
	return rc
}

// chainConfig is the protected server the chain benchmark measures: mutual
// TLS, the payments client's token bound to its certificate, validation,
// the shipped example policies and a rate limiter set too high to refuse.
func chainConfig(tb testing.TB) serverConfig {
	return serverConfig{policies: examplePolicies(tb), rates: highRates(), quiet: true}
}

// createBenchKeys creates benchKey (owner payments) and othersKey (owner
// another workload), both confidential, directly in the keyring: the
// example policies let no test caller create keys from loopback.
func createBenchKeys(tb testing.TB, ts *testServer) {
	tb.Helper()
	for name, owner := range map[string]string{benchKey: paymentsID, othersKey: otherID} {
		if _, err := ts.ring.CreateKey(context.Background(), envelope.KeySpec{Name: name, Type: store.KeyTypeAES256GCM, Labels: map[string]string{
			envelope.LabelOwner: owner, envelope.LabelSensitivity: "confidential",
		}}); err != nil {
			tb.Fatalf("CreateKey(%s) err = %v", name, err)
		}
	}
}

// BenchmarkEncrypt1KiB measures gRPC Encrypt of 1 KiB through the whole
// chain (chain) and on an unprotected server (open), each over one client
// connection shared by encryptBenchCallers goroutines. Their ratio is the
// chain's cost (ChainRatio = open ns/op / chain ns/op, or chain B/s / open
// B/s):
//
//	go test -run '^$' -bench Encrypt1KiB -benchtime 5s -count 10 ./internal/server/ |
//		sed -E 's#Encrypt1KiB/(chain|open)#Encrypt1KiB/server=\1#' > enc.txt
//	benchstat -col '/server@(open chain)' enc.txt
//
// benchstat then shows chain against open: B/s "vs base" -20% is a ratio of
// 0.80. (The sed makes the sub-benchmark a key=value benchstat can group by.)
func BenchmarkEncrypt1KiB(b *testing.B) {
	b.Run("chain", func(b *testing.B) {
		ts := startServerWith(b, chainConfig(b))
		benchEncrypt(b, ts, ts.dial(b, ts.client, ts.token))
	})
	b.Run("open", func(b *testing.B) {
		ts := startServerWith(b, serverConfig{unprotected: true, quiet: true})
		// No token: the open server would ignore it, but sending it would
		// put its cost on the wrong side.
		benchEncrypt(b, ts, ts.dial(b, ts.client, ""))
	})
}

// BenchmarkEncrypt1KiBAudited measures gRPC Encrypt of 1 KiB through the
// whole chain with the audit log (store sink, SQLite, every call waiting
// until its event is committed) and anomaly scoring on (monitored), and
// with both off (chain), in one run:
//
//	go test -run '^$' -bench Encrypt1KiBAudited -benchtime 5s -count 6 ./internal/server/ |
//		sed -E 's#Audited/(monitored|chain)#Audited/server=\1#' > audit.txt
//	benchstat -col '/server@(chain monitored)' audit.txt
//
// The monitor is told to expect a high rate (Options.PriorRate), as a
// principal's learned baseline would after days at this load: otherwise
// the benchmark's own burst is the anomaly and the policy throttles it.
//
// With TRESOR_BENCH_STORE=postgres both servers use a PostgreSQL store
// (so the audit log's store sink is PostgreSQL); TRESOR_BENCH_AUDIT_SINK
// =file or =none replaces the store sink (see newTestAuditLog), to tell
// the sink's cost from the rest; TRESOR_BENCH_CALLERS changes the 64
// concurrent callers.
func BenchmarkEncrypt1KiBAudited(b *testing.B) {
	for _, on := range []bool{true, false} {
		name := "chain"
		if on {
			name = "monitored"
		}
		b.Run(name, func(b *testing.B) {
			sc := chainConfig(b)
			sc.audited, sc.monitored = on, on
			if os.Getenv("TRESOR_BENCH_STORE") == "postgres" {
				st, err := store.OpenPostgres(context.Background(), pgtest.NewDatabase(b))
				if err != nil {
					b.Fatalf("OpenPostgres() err = %v", err)
				}
				b.Cleanup(func() { st.Close() })
				sc.store = st
			}
			ts := startServerWith(b, sc)
			benchEncrypt(b, ts, ts.dial(b, ts.client, ts.token))
		})
	}
}

func benchEncrypt(b *testing.B, ts *testServer, conn *grpc.ClientConn) {
	ctx := context.Background()
	createBenchKeys(b, ts)
	c := tresorv1.NewCryptoServiceClient(conn)
	pt, ad := make([]byte, 1024), make([]byte, 32)
	_, _ = rand.Read(pt)
	_, _ = rand.Read(ad)
	req := &tresorv1.EncryptRequest{Key: benchKey, Plaintext: pt, AssociatedData: ad}
	// The first call connects and fills the token and policy caches.
	if _, err := c.Encrypt(ctx, req); err != nil {
		b.Fatalf("Encrypt() err = %v, want nil", err)
	}
	procs := runtime.GOMAXPROCS(0)
	callers := encryptBenchCallers
	if v, err := strconv.Atoi(os.Getenv("TRESOR_BENCH_CALLERS")); err == nil && v > 0 {
		callers = v
	}
	b.SetParallelism((callers + procs - 1) / procs)
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0, cpuOK := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Encrypt(ctx, req); err != nil {
				b.Errorf("Encrypt() err = %v, want nil", err)
				return
			}
		}
	})
	b.StopTimer()
	if cpu1, ok := processCPU(); cpuOK && ok && b.N > 0 {
		// The process's CPU time (client and server) per call: unlike
		// ns/op, it hardly moves with what else the machine runs.
		b.ReportMetric(float64(cpu1-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
	}
}

// processCPU returns the CPU time (user and system) this process has used,
// from /proc/self/stat; false where there is no such file.
func processCPU() (time.Duration, bool) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, false
	}
	// The fields after the command (in parentheses, which may hold spaces):
	// state is field 3, utime and stime (clock ticks) are fields 14 and 15.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	const clockTicks = 100 // USER_HZ, 100 on every Linux ABI Go supports
	return time.Duration(utime+stime) * time.Second / clockTicks, true
}

// TestChainBenchmarkConfig makes sure BenchmarkEncrypt1KiB/chain measures
// the whole chain and not a permit-all: with its configuration the owner's
// key is allowed, another workload's key is denied by the example
// policies, a call without a token is unauthenticated, and the rate
// limiter is in place.
func TestChainBenchmarkConfig(t *testing.T) {
	ctx := context.Background()
	ts := startServerWith(t, chainConfig(t))
	createBenchKeys(t, ts)
	if ts.srv.chain.authn == nil || ts.srv.chain.authz == nil || ts.srv.chain.limiter == nil {
		t.Fatalf("chain authn %v, authz %v, limiter %v; want all three", ts.srv.chain.authn, ts.srv.chain.authz, ts.srv.chain.limiter)
	}
	enc := func(c tresorv1.CryptoServiceClient, key string) error {
		_, err := c.Encrypt(ctx, &tresorv1.EncryptRequest{Key: key, Plaintext: []byte("p")})
		return err
	}
	crypto := tresorv1.NewCryptoServiceClient(ts.dial(t, ts.client, ts.token))
	if err := enc(crypto, benchKey); err != nil {
		t.Errorf("Encrypt(%s) as its owner err = %v, want nil (owner-protect-reveal)", benchKey, err)
	}
	err := enc(crypto, othersKey)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "keys/"+othersKey) {
		t.Errorf("Encrypt(%s) owned by another workload err = %v, want PermissionDenied", othersKey, err)
	}
	noToken := tresorv1.NewCryptoServiceClient(ts.dial(t, ts.client, ""))
	if err := enc(noToken, benchKey); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Encrypt(%s) without a token err = %v, want Unauthenticated", benchKey, err)
	}
	// The open server of the benchmark serves the other workload's key.
	open := startServerWith(t, serverConfig{unprotected: true, quiet: true})
	createBenchKeys(t, open)
	if err := enc(tresorv1.NewCryptoServiceClient(open.dial(t, open.client, "")), othersKey); err != nil {
		t.Errorf("open server Encrypt(%s) err = %v, want nil", othersKey, err)
	}
}

// BenchmarkEncrypt1KiBStore measures gRPC Encrypt of 1 KiB through the
// whole chain with the SQLite store and with the PostgreSQL store, the
// same way as BenchmarkEncrypt1KiB. On a warm cache Encrypt reads no key
// from the store; it writes one usage reservation per block of encryptions
// (keys.usage_block), which is where the stores differ:
//
//	go test -run '^$' -bench Encrypt1KiBStore -benchtime 5s -count 5 ./internal/server/
func BenchmarkEncrypt1KiBStore(b *testing.B) {
	b.Run("store=sqlite", func(b *testing.B) {
		ts := startServerWith(b, chainConfig(b))
		benchEncrypt(b, ts, ts.dial(b, ts.client, ts.token))
	})
	b.Run("store=postgres", func(b *testing.B) {
		st, err := store.OpenPostgres(context.Background(), pgtest.NewDatabase(b))
		if err != nil {
			b.Fatalf("OpenPostgres() err = %v", err)
		}
		b.Cleanup(func() { st.Close() })
		cfg := chainConfig(b)
		cfg.store = st
		ts := startServerWith(b, cfg)
		benchEncrypt(b, ts, ts.dial(b, ts.client, ts.token))
	})
}

// BenchmarkDocumentsGRPC measures ProtectDocument and RevealDocument over
// gRPC through the whole chain (mutual TLS, bound token, validation, the
// owner's policy, the rate limiter), on the 20-field customer record with
// 10 protected fields that package fields benchmarks in process
// (fields/testdata), from encryptBenchCallers goroutines:
//
//	go test -run '^$' -bench DocumentsGRPC -benchtime 5s ./internal/server/
func BenchmarkDocumentsGRPC(b *testing.B) {
	ctx := context.Background()
	schema, err := os.ReadFile("../../fields/testdata/bench-schema.yaml")
	if err != nil {
		b.Fatal(err)
	}
	doc, err := os.ReadFile("../../fields/testdata/bench-document.json")
	if err != nil {
		b.Fatal(err)
	}
	ts := startServerWith(b, serverConfig{rates: highRates(), quiet: true})
	for name, typ := range map[string]store.KeyType{"pii-aead": store.KeyTypeAES256GCM, "pii-siv": store.KeyTypeAES256SIV,
		"pii-hmac": store.KeyTypeHMACSHA256, "acct-ff1": store.KeyTypeFF1AES256} {
		if _, err := ts.ring.CreateKey(ctx, envelope.KeySpec{Name: name, Type: typ, Labels: map[string]string{envelope.LabelOwner: paymentsID}}); err != nil {
			b.Fatal(err)
		}
	}
	fc := tresorv1.NewFieldServiceClient(ts.dial(b, ts.client, ts.token))
	if _, err := fc.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: string(schema)}); err != nil {
		b.Fatalf("PutSchema() err = %v", err)
	}
	protected, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: string(doc), DocumentId: "doc-1"})
	if err != nil {
		b.Fatalf("ProtectDocument() err = %v", err)
	}
	procs := runtime.GOMAXPROCS(0)
	for _, bc := range []struct {
		name string
		call func() error
	}{
		{"protect", func() error {
			_, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: string(doc), DocumentId: "doc-1"})
			return err
		}},
		{"reveal", func() error {
			_, err := fc.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "customer", Document: protected.GetDocument(), DocumentId: "doc-1"})
			return err
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetParallelism((encryptBenchCallers + procs - 1) / procs)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := bc.call(); err != nil {
						b.Errorf("%s err = %v", bc.name, err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "docs/s")
		})
	}
}
