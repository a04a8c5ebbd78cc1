package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/server"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/internal/store/pgtest"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
	"github.com/tresorkms/tresor/rotation"
)

// TestServePostgres serves on a PostgreSQL store, selected by a postgres://
// or postgresql:// store URL, and drives it with the CLI end to end.
func TestServePostgres(t *testing.T) {
	for _, scheme := range []string{"postgres", "postgresql"} {
		t.Run(scheme, func(t *testing.T) {
			cfg := devCfg
			_, rest, _ := strings.Cut(pgtest.NewDatabase(t), "://")
			cfg.Store.URL = scheme + "://" + rest
			conn := startDev(t, cfg)
			with := func(args ...string) []string { return append(args, conn...) }

			mustRun(t, "", with("keys", "create", "payments")...)
			const iban = "DE89370400440532013000"
			ct1 := mustRun(t, iban, with("encrypt", "--key", "payments", "--aad", "customer=42")...)
			if got := mustRun(t, ct1, with("decrypt", "--aad", "customer=42")...); got != iban {
				t.Errorf("decrypt = %q, want %q", got, iban)
			}
			mustRun(t, "", with("keys", "rotate", "payments")...)
			ct2 := mustRun(t, iban, with("encrypt", "--key", "payments", "--aad", "customer=42")...)
			for i, ct := range []string{ct1, ct2} {
				if got := mustRun(t, ct, with("decrypt", "--aad", "customer=42")...); got != iban {
					t.Errorf("decrypt of ciphertext %d after rotation = %q, want %q", i+1, got, iban)
				}
			}
			// The key is in PostgreSQL, not in some SQLite file.
			st, err := store.OpenPostgres(context.Background(), cfg.Store.URL)
			if err != nil {
				t.Fatalf("OpenPostgres() err = %v, want nil", err)
			}
			defer st.Close()
			k, err := st.GetKey(context.Background(), "payments")
			if err != nil || k.PrimaryVersion != 2 || len(k.Versions) != 2 {
				t.Errorf("GetKey(payments) from PostgreSQL = primary %d, %d versions, err %v; want primary 2 of 2 versions", k.PrimaryVersion, len(k.Versions), err)
			}
		})
	}
}

// TestServeRefusesBadPostgres: a PostgreSQL store URL that does not open
// stops the start with a message that says why and never shows the
// password.
func TestServeRefusesBadPostgres(t *testing.T) {
	const password = "s3cret"
	tests := []struct {
		name     string
		url      string
		wantErr  error
		wantText string
	}{
		{"unreachable server", "postgres://user:" + password + "@127.0.0.1:1/db", store.ErrUnavailable, "connection refused"},
		{"bad port", "postgres://user:" + password + "@127.0.0.1:notaport/db", nil, "invalid port"},
		{"bad escape in the password", "postgres://user:" + password + "%zz@127.0.0.1:1/db", nil, "cannot parse"},
		{"password parameter and bad sslmode", "postgresql://user@127.0.0.1:1/db?password=" + password + "&sslmode=bogus", nil, "sslmode is invalid"},
		{"no such database", "postgres://postgres:" + password + "@127.0.0.1:5432/tresor_no_such_db", nil, "tresor_no_such_db"},
		{"unknown scheme", "mysql://user:" + password + "@127.0.0.1/db", nil, "unknown store scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cfg := devCfg
			cfg.Store.URL = tt.url
			var logs lockedBuffer
			err := serve(ctx, cfg, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), func(*server.Server) {
				t.Errorf("serve() started listening, want it to refuse")
			})
			if err == nil {
				t.Fatalf("serve() err = nil, want a refusal")
			}
			t.Logf("serve() err = %v", err)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("serve() err = %v, want %v", err, tt.wantErr)
			}
			for _, want := range []string{"refusing to start", "store.url", tt.wantText} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("serve() err = %q, want it to mention %q", err, want)
				}
			}
			if strings.Contains(err.Error(), password) || strings.Contains(logs.String(), password) {
				t.Errorf("serve() err = %q, logs %q; want neither to contain the password", err, logs.String())
			}
		})
	}
}

// The two-replica test's settings: the scheduler's shortest interval (the
// configuration refuses less than 1s), a lease three intervals long so that
// a busy machine does not make a live leader lose it, and a short cache
// sync.
const (
	replicaInterval = time.Second
	replicaLeaseTTL = 3 * time.Second
	replicaSync     = 200 * time.Millisecond
	// replicaPeriod is the rotation period of the scheduled keys. The API
	// takes any positive period, so the test needs no fake clock.
	replicaPeriod = 2 * time.Second
	// replicaSlack absorbs RPCs, store round trips and a loaded machine.
	replicaSlack = time.Second
)

// TestTwoReplicasOnePostgres runs two replicas on one PostgreSQL database
// and one SoftHSM2 root key: A in a server process (so that it can die by
// SIGKILL, without releasing its lease), B in this process. It proves that
//
//   - the scheduler runs on exactly one replica: while A holds the
//     "scheduler" lease, every rotation of the keys with a rotation period
//     is A's, each key rotates once per period (consecutive versions are at
//     least a period and at most a period plus an interval apart), and B's
//     scheduler does nothing;
//   - a rotation made through A is used by B's Encrypt within
//     cache.sync_interval plus one sync round trip and one RPC (asserted:
//     within cache.sync_interval + 1s of the RotateKey call);
//   - when A dies, B takes the lease over within lease TTL + interval (+1s)
//     and performs the next due rotations, still once per period.
func TestTwoReplicasOnePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills a server process")
	}
	ctx := context.Background()
	start := time.Now()
	pgURL := pgtest.NewDatabase(t)
	db, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatalf("pgx.Connect() err = %v, want nil", err)
	}
	defer db.Close(ctx)

	a := startReplicaProcess(t, pgURL)
	holderA := a.waitLog(t, "key scheduler started")["holder"].(string)
	if h := waitLeaseHolder(t, db, func(h string) bool { return h != "" }); h != holderA {
		t.Fatalf("scheduler lease holder = %q, want replica A (%q), which started first", h, holderA)
	}

	cfg := devCfg
	cfg.Store.URL = pgURL
	cfg.Scheduler = config.Scheduler{Interval: replicaInterval, LeaseTTL: replicaLeaseTTL}
	cfg.Cache.SyncInterval = replicaSync
	var logsB lockedBuffer
	addrB := serveInProcess(t, cfg, slog.New(slog.NewJSONHandler(&logsB, nil)))
	holderB := ""
	for _, e := range logEntries(logsB.Bytes()) {
		if e["msg"] == "key scheduler started" {
			holderB, _ = e["holder"].(string)
		}
	}
	if holderB == "" || holderB == holderA {
		t.Fatalf("replica B's scheduler holder = %q, want one of its own (A's is %q)", holderB, holderA)
	}
	keysA, cryptoA := dialReplica(t, a.grpcAddr)
	keysB, cryptoB := dialReplica(t, addrB)
	st, err := store.OpenPostgres(ctx, pgURL)
	if err != nil {
		t.Fatalf("OpenPostgres() err = %v, want nil", err)
	}
	defer st.Close()
	t.Logf("replicas up after %v: A %s (pid %d), B %s", time.Since(start).Round(time.Millisecond), holderA, a.cmd.Process.Pid, holderB)

	names := []string{"sched-0", "sched-1", "sched-2", "sched-3"}
	for i, name := range names {
		keys := keysA
		if i%2 == 1 {
			keys = keysB // the replica that creates a key does not matter
		}
		if _, err := keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: name, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, RotationPeriod: durationpb.New(replicaPeriod)}); err != nil {
			t.Fatalf("CreateKey(%s) err = %v, want nil", name, err)
		}
	}

	t.Run("one scheduler", func(t *testing.T) {
		// Watch the lease while every key rotates twice.
		holders := map[string]int{}
		deadline := time.Now().Add(2*(replicaPeriod+replicaInterval) + replicaSlack)
		for !allRotated(t, st, names, 3, time.Time{}) {
			h, _ := leaseHolder(t, db)
			holders[h]++
			if time.Now().After(deadline) {
				t.Fatalf("keys not rotated twice by %v\n%s", deadline.Sub(start), a.tail())
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(holders) != 1 || holders[holderA] == 0 {
			t.Errorf("scheduler lease holders seen = %v, want only A (%s)", holders, holderA)
		}
		keys := getKeys(t, st, names)
		byA, byB := waitLogged(t, keys, a.logs, logsB.Bytes)
		if len(byB) != 0 {
			t.Errorf("B's scheduler rotated %v while A held the lease, want nothing", byB)
		}
		for _, k := range keys {
			name := k.Name
			for v := uint32(2); v <= k.PrimaryVersion; v++ {
				if n := byA[rotatedTo{name, v}]; n != 1 {
					t.Errorf("%s version %d: A's scheduler logged %d rotations to it, want 1", name, v, n)
				}
			}
			checkOncePerPeriod(t, k, replicaPeriod+replicaInterval+replicaSlack)
		}
	})

	t.Run("rotation on A used by B", func(t *testing.T) {
		const name = "shared"
		if _, err := keysA.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: name, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
			t.Fatalf("CreateKey(%s) err = %v, want nil", name, err)
		}
		encrypt := func(c tresorv1.CryptoServiceClient) (string, uint32) {
			t.Helper()
			r, err := c.Encrypt(ctx, &tresorv1.EncryptRequest{Key: name, Plaintext: []byte("IBAN DE89370400440532013000")})
			if err != nil {
				t.Fatalf("Encrypt(%s) err = %v, want nil", name, err)
			}
			b, err := envelope.DecodeCiphertext(r.GetCiphertext())
			if err != nil {
				t.Fatalf("DecodeCiphertext() err = %v", err)
			}
			c2, err := envelope.ParseCiphertext(b)
			if err != nil || c2.KeyVersion != r.GetKeyVersion() {
				t.Fatalf("ParseCiphertext() = version %d, %v; want the response's %d", c2.KeyVersion, err, r.GetKeyVersion())
			}
			return r.GetCiphertext(), c2.KeyVersion
		}
		// Both replicas cache version 1.
		encrypt(cryptoA)
		encrypt(cryptoB)
		var worst time.Duration
		for range 5 {
			began := time.Now()
			k, err := keysA.RotateKey(ctx, &tresorv1.RotateKeyRequest{Key: name})
			if err != nil {
				t.Fatalf("RotateKey(%s) on A err = %v, want nil", name, err)
			}
			want := uint32(k.GetPrimaryVersion())
			if _, v := encrypt(cryptoA); v != want {
				t.Errorf("Encrypt on A right after its rotation: version %d, want %d", v, want)
			}
			var ct string
			for {
				var v uint32
				if ct, v = encrypt(cryptoB); v == want {
					break
				}
				if time.Since(began) > 5*replicaSync+replicaSlack {
					t.Fatalf("Encrypt on B still uses version %d %v after A rotated to %d (cache.sync_interval %v)", v, time.Since(began), want, replicaSync)
				}
				time.Sleep(5 * time.Millisecond)
			}
			worst = max(worst, time.Since(began))
			// A decrypts what B sealed with the new version.
			if _, err := cryptoA.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: ct}); err != nil {
				t.Errorf("Decrypt on A of B's version-%d ciphertext err = %v, want nil", want, err)
			}
		}
		t.Logf("B used A's rotation within %v at worst over 5 rotations (cache.sync_interval %v)", worst.Round(time.Millisecond), replicaSync)
		if bound := replicaSync + replicaSlack; worst > bound {
			t.Errorf("B used A's rotation after %v, want within cache.sync_interval + %v = %v", worst, replicaSlack, bound)
		}
	})

	t.Run("takeover", func(t *testing.T) {
		killed := a.kill(t)
		if h, expires := leaseHolder(t, db); h != holderA || !expires.After(killed) {
			t.Fatalf("after SIGKILL the lease is held by %q until %v, want A's lease still running (not released)", h, expires)
		}
		waitLeaseHolder(t, db, func(h string) bool { return h == holderB })
		takeover := time.Since(killed)
		t.Logf("B took the scheduler lease over %v after A was killed (lease_ttl %v, interval %v)", takeover.Round(time.Millisecond), replicaLeaseTTL, replicaInterval)
		if bound := replicaLeaseTTL + replicaInterval + replicaSlack; takeover > bound {
			t.Errorf("takeover after %v, want within lease_ttl + interval + %v = %v", takeover, replicaSlack, bound)
		}
		// Every key's next due rotation is B's.
		deadline := time.Now().Add(replicaPeriod + replicaInterval + replicaSlack)
		for !allRotated(t, st, names, 0, killed) {
			if time.Now().After(deadline) {
				t.Fatalf("keys not rotated by B %v after the takeover\n%s", time.Since(killed), logsB.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("every key rotated by B %v after A was killed", time.Since(killed).Round(time.Millisecond))
		keys := getKeys(t, st, names)
		byA, byB := waitLogged(t, keys, a.logs, logsB.Bytes)
		for _, k := range keys {
			for _, v := range k.Versions[1:] {
				r := rotatedTo{k.Name, v.Number}
				switch after := v.CreateTime.After(killed); {
				case after && (byB[r] != 1 || byA[r] != 0):
					t.Errorf("%s version %d (after the kill): rotations logged by A %d, by B %d; want B's alone", k.Name, v.Number, byA[r], byB[r])
				case !after && (byB[r] != 0 || byA[r] > 1):
					// A may have died between a commit and its log line.
					t.Errorf("%s version %d (before the kill): rotations logged by A %d, by B %d; want A's alone", k.Name, v.Number, byA[r], byB[r])
				}
			}
			checkOncePerPeriod(t, k, replicaPeriod+replicaLeaseTTL+replicaInterval+replicaSlack)
		}
	})
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}

// replicaProcess is a tresor server process serving the dev configuration
// on a PostgreSQL store.
type replicaProcess struct {
	grpcAddr string
	logPath  string
	cmd      *exec.Cmd
	exited   chan error
}

// startReplicaProcess starts `tresor serve` (the test binary, see
// TestMain) on the dev configuration file with the store, listeners,
// scheduler and cache sync overridden by environment variables, and waits
// until it listens. The process is killed when the test ends.
func startReplicaProcess(t *testing.T, pgURL string) *replicaProcess {
	t.Helper()
	devDir := filepath.Dir(filepath.Dir(devCfg.TLS.CertFile))
	r := &replicaProcess{grpcAddr: freeAddr(t), logPath: filepath.Join(t.TempDir(), "replica-a.log"), exited: make(chan error, 1)}
	logs, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logs.Close() })
	r.cmd = exec.Command(os.Args[0], "-test.run=^$")
	r.cmd.Env = append(os.Environ(), // SOFTHSM2_CONF included: the same token
		serveChildEnv+"="+filepath.Join(devDir, "tresor.yaml"),
		"TRESOR_STORE_URL="+pgURL,
		"TRESOR_LISTEN_GRPC="+r.grpcAddr,
		"TRESOR_LISTEN_HTTP=127.0.0.1:0",
		"TRESOR_SCHEDULER_INTERVAL="+replicaInterval.String(),
		"TRESOR_SCHEDULER_LEASE_TTL="+replicaLeaseTTL.String(),
		"TRESOR_CACHE_SYNC_INTERVAL="+replicaSync.String(),
		"TRESOR_LOG_LEVEL=info",
		"TRESOR_LOG_FORMAT=json",
	)
	r.cmd.Stdout, r.cmd.Stderr = logs, logs
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start replica A: %v", err)
	}
	go func() { r.exited <- r.cmd.Wait() }()
	t.Cleanup(func() {
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
		<-r.exited
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", r.grpcAddr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return r
		}
		select {
		case err := <-r.exited:
			r.exited <- err
			t.Fatalf("replica A exited before listening: %v\n%s", err, r.tail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica A did not listen within 30s\n%s", r.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill kills the process with SIGKILL, waits for it, and returns when it
// was killed.
func (r *replicaProcess) kill(t *testing.T) time.Time {
	t.Helper()
	at := time.Now()
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL replica A: %v", err)
	}
	err := <-r.exited
	r.exited <- err // for the cleanup
	return at
}

// logs returns what the process logged so far.
func (r *replicaProcess) logs() []byte {
	b, _ := os.ReadFile(r.logPath)
	return b
}

func (r *replicaProcess) tail() string {
	b := r.logs()
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// waitLog waits up to 10s for a log entry with message msg and returns it.
func (r *replicaProcess) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, e := range logEntries(r.logs()) {
			if e["msg"] == msg {
				return e
			}
		}
	}
	t.Fatalf("replica A did not log %q within 10s\n%s", msg, r.tail())
	return nil
}

// serveInProcess serves cfg with logger until the test ends and returns
// the gRPC address.
func serveInProcess(t *testing.T, cfg config.Config, logger *slog.Logger) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, logger, func(s *server.Server) {
			g, _ := s.Addrs()
			ready <- g
		})
	}()
	select {
	case addr := <-ready:
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve() err = %v after shutdown, want nil", err)
			}
		})
		return addr
	case err := <-done:
		cancel()
		t.Fatalf("serve() err = %v before listening", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("serve() did not listen within 30s")
	}
	return ""
}

// dialReplica dials a replica as the development client.
func dialReplica(t *testing.T, addr string) (tresorv1.KeyServiceClient, tresorv1.CryptoServiceClient) {
	t.Helper()
	conn := devConn(t, devCfg, addr, "replica-test")
	return tresorv1.NewKeyServiceClient(conn), tresorv1.NewCryptoServiceClient(conn)
}

// leaseHolder reads the scheduler lease from the store's table: its
// holder ("" when nobody holds it) and when it expires.
func leaseHolder(t *testing.T, db *pgx.Conn) (string, time.Time) {
	t.Helper()
	var holder string
	var expires time.Time
	err := db.QueryRow(context.Background(), `SELECT holder, expire_time FROM leases WHERE name = $1`, rotation.SchedulerLease).Scan(&holder, &expires)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("read the scheduler lease: %v", err)
	}
	return holder, expires
}

// waitLeaseHolder polls the scheduler lease every 10ms, for up to 10s,
// until ok accepts its holder, and returns the holder.
func waitLeaseHolder(t *testing.T, db *pgx.Conn, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, _ := leaseHolder(t, db)
		if ok(h) {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("scheduler lease holder %q after 10s", h)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// allRotated reports whether every named key has at least minVersions
// versions and, when since is set, a version created after since.
func allRotated(t *testing.T, st store.Store, names []string, minVersions int, since time.Time) bool {
	t.Helper()
	for _, name := range names {
		k, err := st.GetKey(context.Background(), name)
		if err != nil {
			t.Fatalf("GetKey(%s) err = %v", name, err)
		}
		if len(k.Versions) < minVersions || !k.Versions[len(k.Versions)-1].CreateTime.After(since) {
			return false
		}
	}
	return true
}

// checkOncePerPeriod checks that k rotated once per rotation period: each
// version was created at least a period after the one before (two
// rotations of one due key would be closer) and at most maxGap after it.
func checkOncePerPeriod(t *testing.T, k store.Key, maxGap time.Duration) {
	t.Helper()
	for i := 1; i < len(k.Versions); i++ {
		gap := k.Versions[i].CreateTime.Sub(k.Versions[i-1].CreateTime)
		if gap < k.RotationPeriod || gap > maxGap {
			t.Errorf("%s: version %d created %v after version %d, want between the rotation period %v and %v", k.Name, k.Versions[i].Number, gap, k.Versions[i-1].Number, k.RotationPeriod, maxGap)
		}
	}
}

// getKeys reads the named keys from the store.
func getKeys(t *testing.T, st store.Store, names []string) []store.Key {
	t.Helper()
	keys := make([]store.Key, 0, len(names))
	for _, name := range names {
		k, err := st.GetKey(context.Background(), name)
		if err != nil {
			t.Fatalf("GetKey(%s) err = %v", name, err)
		}
		keys = append(keys, k)
	}
	return keys
}

// waitLogged returns the rotations the schedulers of A and B logged, once
// the logs hold every version of keys past the first (a scheduler logs a
// rotation just after its commit), or after 2s.
func waitLogged(t *testing.T, keys []store.Key, logsA, logsB func() []byte) (byA, byB map[rotatedTo]int) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		byA, byB = rotatedBy(logsA()), rotatedBy(logsB())
		missing := false
		for _, k := range keys {
			for _, v := range k.Versions[1:] {
				r := rotatedTo{k.Name, v.Number}
				missing = missing || byA[r]+byB[r] == 0
			}
		}
		if !missing || time.Now().After(deadline) {
			return byA, byB
		}
	}
}

// rotatedTo is one rotation a scheduler logged: a key and the version it
// rotated to.
type rotatedTo struct {
	key     string
	version uint32
}

// rotatedBy counts the rotations a replica's scheduler logged.
func rotatedBy(logs []byte) map[rotatedTo]int {
	n := map[rotatedTo]int{}
	for _, e := range logEntries(logs) {
		if e["msg"] != "scheduler: key rotated" {
			continue
		}
		key, _ := e["key"].(string)
		v, _ := e["primary_version"].(float64)
		n[rotatedTo{key, uint32(v)}]++
	}
	return n
}

// logEntries decodes JSON log lines, skipping any other line (a partly
// written last line, say).
func logEntries(logs []byte) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(logs))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e map[string]any
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// lockedBuffer is a bytes.Buffer that a logger and a test may share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *lockedBuffer) String() string { return string(b.Bytes()) }
