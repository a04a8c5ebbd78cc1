package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms/localkek"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// serveChildEnv, set to a configuration file, makes the test binary run
// `tresor serve --config FILE` instead of the tests (see TestMain): the
// server process the crash test kills. It has no TRESOR_ prefix, which the
// configuration reserves for its own keys.
const serveChildEnv = "CMD_TRESOR_TEST_SERVE_CONFIG"

// serveChild runs the server in this process until SIGTERM (or SIGKILL).
func serveChild(path string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := newRootCmd(os.Stdin, os.Stdout, os.Stderr)
	cmd.SetArgs([]string{"serve", "--config", path})
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "tresor:", err)
		return 1
	}
	return 0
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// crashEnv is the crash test's server: a configuration on disk, the store
// it names, and the child process serving it.
type crashEnv struct {
	dir, config, grpcAddr string
	cfg                   config.Config
	logs                  *os.File
	child                 *exec.Cmd
	exited                chan error
}

// start starts a server process on the configuration.
func (e *crashEnv) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		serveChildEnv+"="+e.config,
		"TRESOR_CACHE_SYNC_INTERVAL=100ms", // the rotation's poll; grace 2*100ms+2s
		"TRESOR_SCHEDULER_LEASE_TTL=1s",    // a killed server's lease lapses after 1s
		"TRESOR_LOG_LEVEL=info",
	)
	cmd.Stdout, cmd.Stderr = e.logs, e.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the server: %v", err)
	}
	e.child, e.exited = cmd, make(chan error, 1)
	go func() { e.exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", e.grpcAddr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-e.exited:
			t.Fatalf("the server exited before listening: %v\n%s", err, e.tail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not listen within 30s\n%s", e.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill kills the server with SIGKILL and waits for it.
func (e *crashEnv) kill(t *testing.T) {
	t.Helper()
	_ = e.child.Process.Signal(syscall.SIGKILL)
	<-e.exited
}

// stop stops the server with SIGTERM, as an operator does.
func (e *crashEnv) stop(t *testing.T) {
	t.Helper()
	_ = e.child.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-e.exited:
		if err != nil {
			t.Errorf("the server exited with %v after SIGTERM\n%s", err, e.tail())
		}
	case <-time.After(30 * time.Second):
		e.kill(t)
		t.Errorf("the server did not stop within 30s of SIGTERM\n%s", e.tail())
	}
}

// tail returns the end of the servers' logs.
func (e *crashEnv) tail() string {
	b, _ := os.ReadFile(e.logs.Name())
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// admin dials the server as the development client.
func (e *crashEnv) admin(t *testing.T) (tresorv1.AdminServiceClient, tresorv1.CryptoServiceClient) {
	t.Helper()
	conn := devConn(t, e.cfg, e.grpcAddr, "crash-test")
	return tresorv1.NewAdminServiceClient(conn), tresorv1.NewCryptoServiceClient(conn)
}

// crashKeys is how many keys the crash test re-wraps: enough for the job
// to span many batches and the kills to land mid-job.
const crashKeys = 6000

// wantKeysets is what the job re-wraps: the test's keys and the audit
// log's pseudonym key, which the server creates when it first starts.
const wantKeysets = crashKeys + 1

// TestRootKeyRotationSurvivesSIGKILL starts a root-key rotation of 6000
// keysets in a real server process (SQLite, local-file root keys), kills
// the process with SIGKILL at random points of the job, checks after each
// kill that every keyset is readable with the keys a restart opens,
// restarts the server, and finally lets the job finish: every keyset is
// then wrapped by the new root key and every ciphertext and data key made
// before the rotation decrypts, unchanged.
func TestRootKeyRotationSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills server processes")
	}
	ctx := context.Background()
	e := &crashEnv{dir: t.TempDir(), grpcAddr: freeAddr(t)}
	cfg, hsm, err := devSetup(ctx, e.dir, e.grpcAddr, freeAddr(t), "127.0.0.1:0", true, slog.New(slog.DiscardHandler))
	if err != nil || hsm {
		t.Fatalf("devSetup(--no-hsm) = hsm %v, err %v; want a local-file root key", hsm, err)
	}
	e.cfg, e.config = cfg, filepath.Join(e.dir, "tresor.yaml")
	if e.logs, err = os.Create(filepath.Join(e.dir, "server.log")); err != nil {
		t.Fatal(err)
	}
	defer e.logs.Close()

	// Fill the store as the server would: 6000 keys wrapped by the first
	// root key, with ciphertexts and data keys under some of them.
	st, err := store.OpenSQLite(ctx, strings.TrimPrefix(cfg.Store.URL, "sqlite://"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rk1, err := localkek.Open(ctx, strings.TrimPrefix(cfg.RootKey.URI, "local-file://"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer rk1.Close()
	ring, err := envelope.New(st, rk1, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	type item struct{ ct, pt, aad []byte }
	var items []item
	start := time.Now()
	for i := range crashKeys {
		name := fmt.Sprintf("key-%04d", i)
		typ := store.KeyTypeAES256GCM
		if i%3 == 0 {
			typ = store.KeyTypeAES256SIV
		}
		if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: name, Type: typ}); err != nil {
			t.Fatalf("CreateKey(%q) err = %v", name, err)
		}
		if i%60 == 0 {
			pt, aad := []byte("account of "+name), []byte("customer=42")
			ct, _, err := ring.Encrypt(ctx, name, pt, aad)
			if err != nil {
				t.Fatal(err)
			}
			items = append(items, item{ct, pt, aad})
			if typ == store.KeyTypeAES256GCM {
				dk, err := ring.GenerateDataKey(ctx, name, nil)
				if err != nil {
					t.Fatal(err)
				}
				items = append(items, item{dk.Ciphertext, bytes.Clone(dk.Plaintext), nil})
			}
		}
	}
	t.Logf("filled %d keys in %v", crashKeys, time.Since(start))

	newPath := filepath.Join(e.dir, "root-2.key")
	if _, err := localkek.CreateKeyFile(newPath); err != nil {
		t.Fatal(err)
	}
	rk2, err := localkek.Open(ctx, newPath, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer rk2.Close()

	// readable checks that every keyset unwraps with the root key it names
	// and that no key is wrapped by a third key: what a restarted server
	// needs to serve every key.
	readable := func(t *testing.T) (under1, under2 int) {
		t.Helper()
		held := map[string]envelope.KEK{rk1.ID(): rk1, rk2.ID(): rk2}
		token := ""
		for {
			keys, next, err := st.ListKeys(ctx, store.MaxPageSize, token)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				kek, ok := held[k.RootKeyID]
				if !ok {
					t.Fatalf("key %q is wrapped by unknown root key %q", k.Name, k.RootKeyID)
				}
				if _, err := envelope.RewrapKeyset(ctx, k, kek, kek); err != nil {
					t.Fatalf("key %q cannot be unwrapped by its root key %q: %v", k.Name, k.RootKeyID, err)
				}
				if k.RootKeyID == rk1.ID() {
					under1++
				} else {
					under2++
				}
			}
			if next == "" {
				break
			}
			token = next
		}
		if under1+under2 != wantKeysets {
			t.Fatalf("%d keys in the store, want %d", under1+under2, wantKeysets)
		}
		return under1, under2
	}

	e.start(t)
	admin, _ := e.admin(t)
	resp, err := admin.RotateRootKey(ctx, &tresorv1.RotateRootKeyRequest{RootKeyUri: localkek.URI(newPath)})
	if err != nil {
		t.Fatalf("RotateRootKey() err = %v\n%s", err, e.tail())
	}
	job := resp.GetRotation()
	if job.GetToRootKey() != rk2.ID() || job.GetTotal() != wantKeysets {
		t.Fatalf("RotateRootKey() = %v, want a job to %s over %d keysets", job, rk2.ID(), wantKeysets)
	}

	// Kill the server 3 times at random points of the job: round r waits
	// until a random number of keysets in the r-th quarter of the job is
	// re-wrapped, then a random 0-5ms more, so that the kill lands in the
	// middle of a batch, of a commit, or between batches.
	kills, running := 0, true
	for round := range 3 {
		target := int64(round*crashKeys/4 + 1 + rand.IntN(crashKeys/4))
		deadline := time.Now().Add(20 * time.Second)
		for {
			j, err := st.LatestRootKeyRotation(ctx)
			if err == nil && (j.Rewrapped >= target || j.State == store.RotationDone) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: fewer than %d keysets re-wrapped after 20s: %+v\n%s", round, target, j, e.tail())
			}
			time.Sleep(500 * time.Microsecond)
		}
		time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
		e.kill(t)
		running = false
		j, err := st.LatestRootKeyRotation(ctx)
		if err != nil {
			t.Fatal(err)
		}
		under1, under2 := readable(t)
		t.Logf("kill %d: job %s, %d of %d re-wrapped; %d keysets under the old root key, %d under the new", round+1, j.State, j.Rewrapped, j.Total, under1, under2)
		if j.State == store.RotationDone {
			break
		}
		kills++
		if int64(under2) != j.Rewrapped {
			t.Errorf("kill %d: %d keysets under the new root key, but the job counts %d re-wrapped (progress and keysets are written in one transaction)", round+1, under2, j.Rewrapped)
		}
		e.start(t)
		running = true
	}
	if kills == 0 {
		t.Fatalf("no kill landed before the job finished; the job is too short for this test")
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		j, err := st.LatestRootKeyRotation(ctx)
		if err == nil && j.State == store.RotationDone {
			if j.Rewrapped != wantKeysets {
				t.Errorf("job done with %d re-wrapped, want %d (each keyset once)", j.Rewrapped, wantKeysets)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job not done 60s after the last restart: %+v, %v\n%s", j, err, e.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if under1, under2 := readable(t); under1 != 0 || under2 != wantKeysets {
		t.Errorf("after the job: %d keysets under the old root key, %d under the new; want 0 and %d", under1, under2, wantKeysets)
	}
	if !running {
		e.start(t)
	}
	// The server serves on the new root key alone: over the API, the
	// ciphertexts and data keys made before decrypt.
	_, crypto := e.admin(t)
	for _, it := range items {
		dec, err := crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: envelope.FormatCiphertext(it.ct), AssociatedData: it.aad})
		if err != nil || !bytes.Equal(dec.GetPlaintext(), it.pt) {
			t.Fatalf("Decrypt() after the rotation = %v, %v; want the plaintext", dec, err)
		}
	}
	e.stop(t)
	// And a restart opens only the new root key.
	logs := e.tail()
	e.start(t)
	e.stop(t)
	if after := strings.TrimPrefix(e.tail(), logs); strings.Contains(after, "serving with both root keys") {
		t.Errorf("a restart after the job opened both root keys:\n%s", after)
	}
}

// TestOpenRootKeysPrefersTheStore checks the startup decision: with no
// rotation the configured root key is active; after one, the rotation's
// new key is, with a warning naming both ids; while one runs, both keys
// are held.
func TestOpenRootKeysPrefersTheStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	uri := func(name string) string {
		p := filepath.Join(dir, name)
		if _, err := localkek.CreateKeyFile(p); err != nil {
			t.Fatal(err)
		}
		return localkek.URI(p)
	}
	u1, u2 := uri("1.key"), uri("2.key")
	id := func(u string) string {
		k, err := localkek.Open(ctx, strings.TrimPrefix(u, "local-file://"), slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		defer k.Close()
		return k.ID()
	}
	id1, id2 := id(u1), id(u2)
	cfg := config.Default()
	cfg.RootKey.URI = u1
	open := func(t *testing.T) (*serveRootKeys, string) {
		t.Helper()
		var logs bytes.Buffer
		rk, err := openRootKeys(ctx, cfg, st, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatalf("openRootKeys() err = %v, want nil", err)
		}
		t.Cleanup(func() { rk.Close() })
		return rk, logs.String()
	}

	rk, _ := open(t)
	if got := rk.set.IDs(); rk.set.ID() != id1 || len(got) != 1 {
		t.Errorf("no rotation: root keys %q, active %q; want only %q", got, rk.set.ID(), id1)
	}
	job, err := st.StartRootKeyRotation(ctx, store.RootKeyRotation{ID: "rkr-test", FromURI: u1, ToURI: u2, FromID: id1, ToID: id2})
	if err != nil {
		t.Fatal(err)
	}
	rk, logs := open(t)
	if got := rk.set.IDs(); rk.set.ID() != id2 || len(got) != 2 {
		t.Errorf("running rotation: root keys %q, active %q; want both, %q active", got, rk.set.ID(), id2)
	}
	const warning = "root_key.uri names another root key"
	if !strings.Contains(logs, warning) || !strings.Contains(logs, id1) || !strings.Contains(logs, id2) {
		t.Errorf("running rotation with root_key.uri naming the old key: logs %q; want a warning naming %q and %q", logs, id1, id2)
	}
	if _, err := st.FinishRootKeyRotation(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	rk, _ = open(t)
	if got := rk.set.IDs(); rk.set.ID() != id2 || len(got) != 1 {
		t.Errorf("done rotation: root keys %q, active %q; want only %q", got, rk.set.ID(), id2)
	}
	cfg.RootKey.URI = u2
	if _, logs := open(t); strings.Contains(logs, warning) {
		t.Errorf("root_key.uri naming the active key: logs %q, want no warning", logs)
	}
	// A keyset written under the old root key after the job finished (a
	// replica that missed the switch): the old key opens too, until the
	// straggler check re-wraps it.
	if _, err := st.CreateKey(ctx, store.Key{
		Name: "straggler", Type: store.KeyTypeAES256GCM, State: store.KeyStateEnabled,
		PrimaryVersion: 1, MinDecryptionVersion: 1,
		Versions:      []store.Version{{Number: 1, TinkKeyID: 1, CreateTime: time.Now()}},
		WrappedKeyset: []byte("wrapped under the old root key"), RootKeyID: id1,
	}); err != nil {
		t.Fatal(err)
	}
	rk, logs = open(t)
	if got := rk.set.IDs(); rk.set.ID() != id2 || len(got) != 2 || !strings.Contains(logs, "keysets remain under the old root key") {
		t.Errorf("done rotation with a keyset left under the old key: root keys %q, active %q, logs %q; want both, %q active, and a warning", got, rk.set.ID(), logs, id2)
	}
	// A rotation's key that no longer opens stops the start.
	if err := os.Remove(strings.TrimPrefix(u2, "local-file://")); err != nil {
		t.Fatal(err)
	}
	if _, err := openRootKeys(ctx, cfg, st, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("openRootKeys() with the active key's file gone err = nil, want an error")
	}
}

// TestAdminCLI drives `tresor admin root-key-status` and `tresor admin
// rotate-root-key` against a server.
func TestAdminCLI(t *testing.T) {
	dir := t.TempDir()
	cfg, _, err := devSetup(context.Background(), dir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", true, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("devSetup() err = %v", err)
	}
	conn := startDev(t, cfg)
	with := func(args ...string) []string { return append(args, conn...) }
	if out, err := run(t, "", with("admin", "root-key-status")...); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("admin root-key-status before any rotation = %q, %v; want a NotFound error", out, err)
	}
	if out, err := run(t, "", with("admin", "rotate-root-key", cfg.RootKey.URI)...); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Errorf("admin rotate-root-key (the active key) = %q, %v; want an InvalidArgument error", out, err)
	}
	next := filepath.Join(dir, "root-2.key")
	if _, err := localkek.CreateKeyFile(next); err != nil {
		t.Fatal(err)
	}
	// protojson varies its whitespace on purpose: compare decoded fields.
	var job struct{ ID, State string }
	out := mustRun(t, "", with("admin", "rotate-root-key", localkek.URI(next))...)
	if err := json.Unmarshal([]byte(out), &job); err != nil || job.State != "ROOT_KEY_ROTATION_STATE_RUNNING" || !strings.HasPrefix(job.ID, "rkr-") {
		t.Errorf("admin rotate-root-key = %s (%v), want a running job", out, err)
	}
	started := job.ID
	out = mustRun(t, "", with("admin", "root-key-status")...)
	if err := json.Unmarshal([]byte(out), &job); err != nil || job.ID != started {
		t.Errorf("admin root-key-status = %s (%v), want job %s", out, err, started)
	}
}
