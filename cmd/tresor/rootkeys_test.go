package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
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

	"github.com/jackc/pgx/v5"
	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/internal/store/pgtest"
	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/localkek"
	"github.com/tresorkms/tresor/kms/provider"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
	"github.com/tresorkms/tresor/rotation"
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
// rotation the configured root key is active; after one that the
// configured key endorsed, the rotation's new key is, with a warning naming
// both ids; while one runs, both keys are held.
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
	k1, err := provider.Open(ctx, u1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer k1.Close()
	rec := store.RootKeyRotation{ID: "rkr-test", FromURI: u1, ToURI: u2, FromID: id1, ToID: id2}
	if rec.Endorsement, err = rotation.Endorse(ctx, k1, rec); err != nil {
		t.Fatal(err)
	}
	job, err := st.StartRootKeyRotation(ctx, rec)
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
	// straggler check re-wraps it, when root_key.uri names the old key,
	// which endorsed the job. Naming the new key, the old one cannot be
	// verified: the start is refused.
	if _, err := st.CreateKey(ctx, store.Key{
		Name: "straggler", Type: store.KeyTypeAES256GCM, State: store.KeyStateEnabled,
		PrimaryVersion: 1, MinDecryptionVersion: 1,
		Versions:      []store.Version{{Number: 1, TinkKeyID: 1, CreateTime: time.Now()}},
		WrappedKeyset: []byte("wrapped under the old root key"), RootKeyID: id1,
	}); err != nil {
		t.Fatal(err)
	}
	_, err = openRootKeys(ctx, cfg, st, slog.New(slog.DiscardHandler))
	if !errors.Is(err, rotation.ErrUnendorsedRotation) || !strings.Contains(fmt.Sprint(err), "set root_key.uri to the URI of the old root key "+id1) {
		t.Errorf("openRootKeys(root_key.uri naming the new key, keysets left under the old) err = %v, want ErrUnendorsedRotation saying to name the old key %s", err, id1)
	}
	cfg.RootKey.URI = u1
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

// chainEnv is a key store on which the root key was rotated A -> B -> C,
// as servers do (each job endorsed by its old root key, every keyset
// re-wrapped), with ciphertexts made under A. D is another root key of
// the operator's, X an attacker's.
type chainEnv struct {
	st    store.Store
	dir   string
	uris  map[string]string // by name: A, B, C, D, X
	keys  map[string]kms.RootKey
	items []chainItem
}

type chainItem struct{ ct, pt, aad []byte }

// newChainKeys returns a chainEnv on st with a local root key file per
// name, opened until the test ends, and nothing stored yet.
func newChainKeys(t *testing.T, st store.Store, names ...string) *chainEnv {
	t.Helper()
	e := &chainEnv{st: st, dir: t.TempDir(), uris: map[string]string{}, keys: map[string]kms.RootKey{}}
	for _, name := range names {
		p := filepath.Join(e.dir, name+".key")
		if _, err := localkek.CreateKeyFile(p); err != nil {
			t.Fatal(err)
		}
		e.uris[name] = localkek.URI(p)
		k, err := provider.Open(context.Background(), e.uris[name], slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k.Close() })
		e.keys[name] = k
	}
	return e
}

func newChainEnv(t *testing.T, st store.Store) *chainEnv {
	t.Helper()
	ctx := context.Background()
	e := newChainKeys(t, st, "A", "B", "C", "D", "X")
	ring, err := envelope.New(st, e.keys["A"], envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, typ := range []store.KeyType{store.KeyTypeAES256GCM, store.KeyTypeAES256SIV} {
		name := fmt.Sprintf("payments-%d", i)
		if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: name, Type: typ}); err != nil {
			t.Fatal(err)
		}
		pt, aad := []byte("IBAN DE89370400440532013000"), []byte("customer=42")
		ct, _, err := ring.Encrypt(ctx, name, pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		e.items = append(e.items, chainItem{ct, pt, aad})
	}
	e.rotate(t, "rkr-ab", "A", "B")
	e.rotate(t, "rkr-bc", "B", "C")
	return e
}

// rotate does in the store what a root-key rotation from key from to key
// to does: it records the job, endorsed by from, re-wraps every keyset and
// finishes the job.
func (e *chainEnv) rotate(t *testing.T, id, from, to string) store.RootKeyRotation {
	t.Helper()
	ctx := context.Background()
	job := e.job(t, id, from, to)
	if _, err := e.st.StartRootKeyRotation(ctx, job); err != nil {
		t.Fatalf("StartRootKeyRotation(%s) err = %v, want nil", id, err)
	}
	for {
		keys, err := e.st.ListKeysByRootKey(ctx, job.FromID, "", store.MaxPageSize)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) == 0 {
			break
		}
		for i := range keys {
			if keys[i], err = envelope.RewrapKeyset(ctx, keys[i], e.keys[from], e.keys[to]); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := e.st.RewrapKeys(ctx, id, keys); err != nil {
			t.Fatal(err)
		}
	}
	done, err := e.st.FinishRootKeyRotation(ctx, id)
	if err != nil {
		t.Fatalf("FinishRootKeyRotation(%s) err = %v, want nil", id, err)
	}
	return done
}

// job returns the job from key from to key to, after the store's latest
// job, endorsed by from.
func (e *chainEnv) job(t *testing.T, id, from, to string) store.RootKeyRotation {
	t.Helper()
	job := store.RootKeyRotation{ID: id, PrevID: e.prev(t), FromID: e.keys[from].ID(), FromURI: e.uris[from], ToID: e.keys[to].ID(), ToURI: e.uris[to]}
	var err error
	if job.Endorsement, err = rotation.Endorse(context.Background(), e.keys[from], job); err != nil {
		t.Fatalf("Endorse(%s) err = %v, want nil", id, err)
	}
	return job
}

// prev returns the ID of the store's latest job, "" when there is none:
// the PrevID of the next.
func (e *chainEnv) prev(t *testing.T) string {
	t.Helper()
	latest, err := e.st.LatestRootKeyRotation(context.Background())
	if errors.Is(err, store.ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return latest.ID
}

// open opens the root keys with root_key.uri naming key name; the root
// keys and their rotator log to logs.
func (e *chainEnv) open(t *testing.T, name string) (rk *serveRootKeys, logs *lockedBuffer, err error) {
	t.Helper()
	cfg := config.Default()
	cfg.RootKey.URI = e.uris[name]
	logs = &lockedBuffer{}
	rk, err = openRootKeys(context.Background(), cfg, e.st, slog.New(slog.NewTextHandler(logs, nil)))
	if err == nil {
		t.Cleanup(func() { rk.Close() })
	}
	return rk, logs, err
}

// checkServes checks that the keyring over rk reads every ciphertext made
// before the rotations and wraps a new keyset with the active root key.
func (e *chainEnv) checkServes(t *testing.T, rk *serveRootKeys, name string) {
	t.Helper()
	ctx := context.Background()
	ring, err := envelope.New(e.st, rk.set, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range e.items {
		if pt, _, err := ring.Decrypt(ctx, it.ct, it.aad); err != nil || !bytes.Equal(pt, it.pt) {
			t.Errorf("Decrypt(made under A) = %q, %v; want the plaintext", pt, err)
		}
	}
	if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: name, Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatalf("CreateKey(%q) err = %v, want nil", name, err)
	}
	if k, err := e.st.GetKey(ctx, name); err != nil || k.RootKeyID != rk.set.ID() {
		t.Errorf("GetKey(%q) = root key %q, %v; want the active %q", name, k.RootKeyID, err, rk.set.ID())
	}
}

// checkUnder checks that every keyset is wrapped by the root key id.
func (e *chainEnv) checkUnder(t *testing.T, id string) {
	t.Helper()
	keys, _, err := e.st.ListKeys(context.Background(), store.MaxPageSize, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.RootKeyID != id {
			t.Errorf("keyset %q is wrapped by %q, want %q", k.Name, k.RootKeyID, id)
		}
	}
}

// TestOpenRootKeysWalksTheChain: after the rotations A -> B -> C, a server
// whose root_key.uri names A, B or C starts on C alone (the keys only
// needed to walk the chain are closed again), reads what was sealed under
// A, and rotates on; with a rotation C -> D running, it holds C and D.
func TestOpenRootKeysWalksTheChain(t *testing.T) {
	ctx := context.Background()
	e := newChainEnv(t, openTestStore(t))
	idC := e.keys["C"].ID()
	const warning = "root_key.uri names another root key"
	for _, tt := range []struct {
		config string
		warn   bool
	}{{"A", true}, {"B", true}, {"C", false}} {
		t.Run("root_key.uri names "+tt.config, func(t *testing.T) {
			rk, logs, err := e.open(t, tt.config)
			if err != nil {
				t.Fatalf("openRootKeys() err = %v, want nil", err)
			}
			if got := rk.set.IDs(); rk.set.ID() != idC || len(got) != 1 || len(rk.opened) != 1 {
				t.Errorf("root keys %q (active %q), %d open; want only %q", got, rk.set.ID(), len(rk.opened), idC)
			}
			if strings.Contains(logs.String(), warning) != tt.warn {
				t.Errorf("logs %q: warning %q logged %t, want %t", logs, warning, !tt.warn, tt.warn)
			}
			e.checkServes(t, rk, "new-"+strings.ToLower(tt.config))
			// The rotator follows the latest rotation as it is: no refusal.
			stop := rk.run(ctx)
			time.Sleep(200 * time.Millisecond)
			stop()
			if rk.set.ID() != idC || strings.Contains(logs.String(), "refused") {
				t.Errorf("after the rotator ran: active root key %q, logs %q; want %q and no refusal", rk.set.ID(), logs, idC)
			}
		})
	}
	t.Run("rotates on", func(t *testing.T) {
		rk, _, err := e.open(t, "A")
		if err != nil {
			t.Fatalf("openRootKeys() err = %v, want nil", err)
		}
		job, err := rk.rotator.Start(ctx, e.uris["D"])
		if err != nil {
			t.Fatalf("Start(uri) err = %v, want nil", err)
		}
		if err := rotation.VerifyEndorsement(ctx, e.keys["C"], job); err != nil || job.FromID != idC {
			t.Errorf("Start(uri) = job from %q, endorsement %v; want a job from %q it endorsed", job.FromID, err, idC)
		}
		rk2, logs, err := e.open(t, "A")
		if err != nil {
			t.Fatalf("openRootKeys() with C -> D running err = %v, want nil", err)
		}
		if got := rk2.set.IDs(); rk2.set.ID() != job.ToID || len(got) != 2 || !strings.Contains(logs.String(), "serving with both root keys") {
			t.Errorf("C -> D running: root keys %q (active %q), logs %q; want C and D, D active", got, rk2.set.ID(), logs)
		}
	})
}

// posing is a root key that gives another key's id: how an attacker's key
// endorses a job in another key's name.
type posing struct {
	kms.RootKey
	id string
}

func (p posing) ID() string { return p.id }

// TestOpenRootKeysRefusesForgedRotation writes rotation jobs to the store
// as anyone who can write to it could, after the rotations A -> B -> C: the
// start is refused with an error that names the job and no URI, the
// attacker's key X is never opened (its file is gone: opening it would
// fail otherwise), and every keyset stays under C. On SQLite and on
// PostgreSQL.
func TestOpenRootKeysRefusesForgedRotation(t *testing.T) {
	ctx := context.Background()
	stores := []struct {
		name string
		open func(t *testing.T) store.Store
	}{
		{"sqlite", openTestStore},
		{"postgres", func(t *testing.T) store.Store {
			st, err := store.OpenPostgres(ctx, pgtest.NewDatabase(t))
			if err != nil {
				t.Fatalf("OpenPostgres() err = %v, want nil", err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}},
	}
	forgeries := []struct {
		name   string
		config string
		forge  func(t *testing.T, e *chainEnv) store.RootKeyRotation // nil: no job
		want   string                                                // in the error
	}{
		{"no endorsement", "A", func(t *testing.T, e *chainEnv) store.RootKeyRotation {
			return store.RootKeyRotation{ID: "rkr-forged", PrevID: e.prev(t), FromID: e.keys["C"].ID(), FromURI: e.uris["C"], ToID: e.keys["X"].ID(), ToURI: e.uris["X"]}
		}, "has no endorsement"},
		{"endorsed by the attacker's key", "A", func(t *testing.T, e *chainEnv) store.RootKeyRotation {
			j := store.RootKeyRotation{ID: "rkr-forged", PrevID: e.prev(t), FromID: e.keys["C"].ID(), FromURI: e.uris["C"], ToID: e.keys["X"].ID(), ToURI: e.uris["X"]}
			var err error
			if j.Endorsement, err = rotation.Endorse(ctx, posing{e.keys["X"], j.FromID}, j); err != nil {
				t.Fatal(err)
			}
			return j
		}, "does not unwrap"},
		{"ToURI changed under a valid endorsement", "A", func(t *testing.T, e *chainEnv) store.RootKeyRotation {
			j := e.job(t, "rkr-forged", "C", "D")
			j.ToURI = e.uris["X"]
			return j
		}, "not of this job"},
		{"ToID and ToURI changed under a valid endorsement", "B", func(t *testing.T, e *chainEnv) store.RootKeyRotation {
			j := e.job(t, "rkr-forged", "C", "D")
			j.ToID, j.ToURI = e.keys["X"].ID(), e.uris["X"]
			return j
		}, "not of this job"},
		{"endorsement of another job", "C", func(t *testing.T, e *chainEnv) store.RootKeyRotation {
			j := store.RootKeyRotation{ID: "rkr-forged", PrevID: e.prev(t), FromID: e.keys["C"].ID(), FromURI: e.uris["C"], ToID: e.keys["X"].ID(), ToURI: e.uris["X"]}
			j.Endorsement = e.job(t, "rkr-legit", "C", "D").Endorsement
			return j
		}, "not of this job"},
		{"from a root key outside the chain", "A", func(t *testing.T, e *chainEnv) store.RootKeyRotation {
			return e.job(t, "rkr-forged", "X", "D")
		}, "not a root key trusted on the way"},
		{"running from the attacker's key to the configured key", "C", func(t *testing.T, e *chainEnv) store.RootKeyRotation {
			return e.job(t, "rkr-forged", "X", "C")
		}, "cannot be verified from root_key.uri"},
		{"root_key.uri names no key of the chain", "D", nil, "no root-key rotation in the key store moves from or to root key"},
	}
	for _, sto := range stores {
		t.Run(sto.name, func(t *testing.T) {
			for _, tt := range forgeries {
				t.Run(tt.name, func(t *testing.T) {
					e := newChainEnv(t, sto.open(t))
					jobID := "rkr-bc"
					if tt.forge != nil {
						job := tt.forge(t, e)
						if _, err := e.st.StartRootKeyRotation(ctx, job); err != nil {
							t.Fatalf("StartRootKeyRotation(forged) err = %v, want nil", err)
						}
						jobID = job.ID
					}
					if err := os.Remove(strings.TrimPrefix(e.uris["X"], "local-file://")); err != nil {
						t.Fatal(err)
					}
					_, _, err := e.open(t, tt.config)
					if !errors.Is(err, rotation.ErrUnendorsedRotation) {
						t.Fatalf("openRootKeys() err = %v, want ErrUnendorsedRotation", err)
					}
					t.Logf("openRootKeys() err = %v", err)
					msg := err.Error()
					for _, want := range []string{jobID, tt.want, "root_key.uri"} {
						if !strings.Contains(msg, want) {
							t.Errorf("openRootKeys() err = %q, want it to say %q", msg, want)
						}
					}
					if strings.Contains(msg, e.dir) || strings.Contains(msg, "local-file://") {
						t.Errorf("openRootKeys() err = %q, want no root key URI in it", msg)
					}
					e.checkUnder(t, e.keys["C"].ID())
				})
			}
		})
	}
}

// TestOpenRootKeysUnendorsedRotation: a rotation recorded before
// endorsements were kept is trusted only when root_key.uri names its new
// root key.
func TestOpenRootKeysUnendorsedRotation(t *testing.T) {
	ctx := context.Background()
	e := newChainKeys(t, openTestStore(t), "A", "B")
	old := store.RootKeyRotation{ID: "rkr-old", FromID: e.keys["A"].ID(), FromURI: e.uris["A"], ToID: e.keys["B"].ID(), ToURI: e.uris["B"]}
	if _, err := e.st.StartRootKeyRotation(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.FinishRootKeyRotation(ctx, old.ID); err != nil {
		t.Fatal(err)
	}
	rk, _, err := e.open(t, "B")
	if err != nil {
		t.Fatalf("openRootKeys(root_key.uri naming the new key of an unendorsed rotation) err = %v, want nil", err)
	}
	if got := rk.set.IDs(); len(got) != 1 || got[0] != old.ToID {
		t.Errorf("root keys %q, want only %q", got, old.ToID)
	}
	if _, _, err := e.open(t, "A"); !errors.Is(err, rotation.ErrUnendorsedRotation) || !strings.Contains(err.Error(), "has no endorsement") {
		t.Errorf("openRootKeys(root_key.uri naming the old key of an unendorsed rotation) err = %v, want ErrUnendorsedRotation", err)
	}
}

// replayedStore shows extra after the store's jobs, as the latest: a row
// written by hand (a copy of an old job, with the unique constraints
// dropped).
type replayedStore struct {
	store.Store
	extra store.RootKeyRotation
}

func (s replayedStore) ListRootKeyRotations(ctx context.Context) ([]store.RootKeyRotation, error) {
	jobs, err := s.Store.ListRootKeyRotations(ctx)
	return append(jobs, s.extra), err
}

func (s replayedStore) LatestRootKeyRotation(context.Context) (store.RootKeyRotation, error) {
	return s.extra, nil
}

// TestOpenRootKeysRefusesBrokenChain changes the rotation records after
// A -> B -> C as anyone who can write to the key store could, keeping
// every endorsement genuine: the order changed so that an old rotation is
// the latest again, the latest rotation or every one deleted, a copy of an
// old rotation added as the latest. A server whose root_key.uri names A
// would come up on a retired root key; it refuses to start, and every
// keyset stays under C. On SQLite and on PostgreSQL.
func TestOpenRootKeysRefusesBrokenChain(t *testing.T) {
	ctx := context.Background()
	type env struct {
		*chainEnv
		exec func(t *testing.T, query string) // on the store's database
		pg   bool
	}
	stores := []struct {
		name string
		open func(t *testing.T) env
	}{
		{"sqlite", func(t *testing.T) env {
			path := filepath.Join(t.TempDir(), "keys.db")
			st, err := store.OpenSQLite(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			db, err := sql.Open("sqlite", "file:"+path+"?_busy_timeout=10000")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			return env{chainEnv: newChainEnv(t, st), exec: func(t *testing.T, q string) {
				if _, err := db.ExecContext(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}}
		}},
		{"postgres", func(t *testing.T) env {
			url := pgtest.NewDatabase(t)
			st, err := store.OpenPostgres(ctx, url)
			if err != nil {
				t.Fatalf("OpenPostgres() err = %v, want nil", err)
			}
			t.Cleanup(func() { st.Close() })
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close(context.Background()) })
			return env{chainEnv: newChainEnv(t, st), pg: true, exec: func(t *testing.T, q string) {
				if _, err := conn.Exec(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}}
		}},
	}
	// makeLatest moves the job id to the end of the store's order.
	makeLatest := func(t *testing.T, e env, id string) {
		if e.pg {
			e.exec(t, `UPDATE root_key_rotations SET seq = DEFAULT WHERE id = '`+id+`'`) // seq is an identity column
		} else {
			e.exec(t, `UPDATE root_key_rotations SET seq = 1000 WHERE id = '`+id+`'`)
		}
	}
	tests := []struct {
		name    string
		tamper  func(t *testing.T, e env) store.Store // the store the server reads
		want    error
		wantMsg string
	}{
		{"the first rotation made the latest again", func(t *testing.T, e env) store.Store {
			makeLatest(t, e, "rkr-ab")
			return e.st
		}, rotation.ErrUnendorsedRotation, "not one chain"},
		{"after A -> B -> C -> A, the rotation A -> B made the latest again", func(t *testing.T, e env) store.Store {
			e.rotate(t, "rkr-ca", "C", "A")
			makeLatest(t, e, "rkr-ab")
			return e.st
		}, rotation.ErrUnendorsedRotation, "not one chain"},
		{"the latest rotation deleted", func(t *testing.T, e env) store.Store {
			e.exec(t, `DELETE FROM root_key_rotations WHERE id = 'rkr-bc'`)
			return e.st
		}, rotation.ErrMissingRotation, "are missing from the key store"},
		{"every rotation deleted", func(t *testing.T, e env) store.Store {
			e.exec(t, `DELETE FROM root_key_rotations`)
			return e.st
		}, rotation.ErrMissingRotation, "has no root-key rotation"},
		{"a copy of the first rotation added as the latest", func(t *testing.T, e env) store.Store {
			jobs, err := e.st.ListRootKeyRotations(ctx)
			if err != nil || len(jobs) != 2 {
				t.Fatalf("ListRootKeyRotations() = %d jobs, %v; want 2", len(jobs), err)
			}
			return replayedStore{Store: e.st, extra: jobs[0]}
		}, rotation.ErrUnendorsedRotation, "not one chain"},
	}
	for _, sto := range stores {
		t.Run(sto.name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					e := sto.open(t)
					idC := e.keys["C"].ID()
					under := idC
					if strings.Contains(tt.name, "C -> A") {
						under = e.keys["A"].ID()
					}
					st := tt.tamper(t, e)
					cfg := config.Default()
					cfg.RootKey.URI = e.uris["A"]
					rk, err := openRootKeys(ctx, cfg, st, slog.New(slog.DiscardHandler))
					if err == nil {
						rk.Close()
						t.Fatalf("openRootKeys() = root keys %q (active %q), nil; want %v", rk.set.IDs(), rk.set.ID(), tt.want)
					}
					if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
						t.Errorf("openRootKeys() err = %v, want %v saying %q", err, tt.want, tt.wantMsg)
					}
					if msg := err.Error(); strings.Contains(msg, e.dir) || strings.Contains(msg, "local-file://") {
						t.Errorf("openRootKeys() err = %q, want no root key URI in it", msg)
					}
					t.Logf("openRootKeys() err = %v", err)
					e.checkUnder(t, under)
				})
			}
		})
	}
	// The chain as rotations make it still serves, its jobs each naming the
	// one before.
	e := newChainEnv(t, openTestStore(t))
	jobs, err := e.st.ListRootKeyRotations(ctx)
	if err != nil || len(jobs) != 2 || jobs[0].PrevID != "" || jobs[1].PrevID != jobs[0].ID {
		t.Fatalf("ListRootKeyRotations() = %+v, %v; want rkr-ab then rkr-bc naming it", jobs, err)
	}
	rk, _, err := e.open(t, "A")
	if err != nil || rk.set.ID() != e.keys["C"].ID() {
		t.Fatalf("openRootKeys() after A -> B -> C err = %v, want C active", err)
	}
	e.checkServes(t, rk, "after-the-chain")
}
