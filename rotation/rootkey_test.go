package rotation

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/awskms"
	"github.com/tresorkms/tresor/kms/localkek"
	"github.com/tresorkms/tresor/kms/provider"
	"github.com/tresorkms/tresor/localkms"
)

// openKey opens a root key as tresor does, through kms/provider.
func openKey(ctx context.Context, uri string) (kms.RootKey, error) {
	return provider.Open(ctx, uri, slog.New(slog.DiscardHandler))
}

func openSQLite(t testing.TB) store.Store {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatalf("OpenSQLite() err = %v, want nil", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// keyFile writes a new local-file root key and returns its URI.
func keyFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "root.key")
	if _, err := localkek.CreateKeyFile(path); err != nil {
		t.Fatal(err)
	}
	return localkek.URI(path)
}

// fastOptions make jobs finish in tests: short poll, grace and backoff.
func fastOptions(t testing.TB) RootKeyOptions {
	return RootKeyOptions{
		PollInterval: 20 * time.Millisecond,
		Grace:        100 * time.Millisecond,
		LeaseTTL:     time.Second,
		MinBackoff:   5 * time.Millisecond,
		MaxBackoff:   50 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// replica is one tresor process: the root keys it holds, a keyring over
// them and its rotator.
type replica struct {
	roots *envelope.RootKeys
	ring  *envelope.Keyring
	rot   *RootKeyRotator
}

// newReplica opens root keys as cmd/tresor does at startup: the latest
// job's new key (configURI when there is no job) and, while the job runs,
// its old key too. It trusts every job in the store, as cmd/tresor does
// once it has verified them from the configured root key (its tests check
// that walk; the tests here make jobs with Start).
func newReplica(t testing.TB, st store.Store, rs RootKeyStore, configURI string, open Opener, opts RootKeyOptions) *replica {
	t.Helper()
	ctx := context.Background()
	if open == nil {
		open = OpenerFunc(openKey)
	}
	uris := []string{configURI}
	latest, err := st.LatestRootKeyRotation(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		t.Fatalf("LatestRootKeyRotation() err = %v, want nil", err)
	case latest.State == store.RotationRunning:
		uris = []string{latest.ToURI, latest.FromURI}
	default:
		uris = []string{latest.ToURI}
	}
	var keys []envelope.KEK
	for _, u := range uris {
		k, err := open.OpenRootKey(ctx, u)
		if err != nil {
			t.Fatalf("open root key: %v", err)
		}
		t.Cleanup(func() { k.Close() })
		keys = append(keys, k)
	}
	roots, err := envelope.NewRootKeys(keys[0], keys[1:]...)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := envelope.New(st, roots, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	opts.ActiveURI = uris[0]
	if opts.Verified, err = st.ListRootKeyRotations(ctx); err != nil {
		t.Fatalf("ListRootKeyRotations() err = %v, want nil", err)
	}
	if rs == nil {
		rs = st
	}
	rot, err := NewRootKeyRotator(rs, roots, open, opts)
	if err != nil {
		t.Fatalf("NewRootKeyRotator() err = %v, want nil", err)
	}
	t.Cleanup(func() { rot.Close() })
	return &replica{roots: roots, ring: ring, rot: rot}
}

// run runs the replica's rotator until the test ends, ctx ends or stop is
// called.
func (r *replica) run(t testing.TB) (stop func()) {
	return r.runCtx(t, context.Background())
}

func (r *replica) runCtx(t testing.TB, ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.rot.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run() err = %v, want nil", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitDone waits until the latest job is done.
func waitDone(t testing.TB, st store.Store, timeout time.Duration) store.RootKeyRotation {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		job, err := st.LatestRootKeyRotation(context.Background())
		if err == nil && job.State == store.RotationDone {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("root-key rotation not done after %v: %+v, %v", timeout, job, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sealed is what a caller holds: a ciphertext (or a wrapped data key) and
// what it must decrypt to.
type sealed struct {
	what    string
	pt, aad []byte
	ct      []byte
	siv     bool
}

// seal creates n keys of each type named prefix-gcm-i and prefix-siv-i and
// returns a ciphertext under each and a data key under each GCM key.
func seal(t testing.TB, ring *envelope.Keyring, prefix string, n int) []sealed {
	t.Helper()
	ctx := context.Background()
	var out []sealed
	for i := range n {
		for _, typ := range []store.KeyType{store.KeyTypeAES256GCM, store.KeyTypeAES256SIV} {
			name := fmt.Sprintf("%s-%s-%d", prefix, strings.ToLower(typ.String()[7:]), i)
			if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: name, Type: typ}); err != nil {
				t.Fatalf("CreateKey(%q) err = %v, want nil", name, err)
			}
			pt, aad := []byte("IBAN DE89370400440532013000 of "+name), []byte("customer=42")
			ct, _, err := ring.Encrypt(ctx, name, pt, aad)
			if err != nil {
				t.Fatalf("Encrypt(%q) err = %v, want nil", name, err)
			}
			out = append(out, sealed{what: "ciphertext under " + name, pt: pt, aad: aad, ct: ct, siv: typ == store.KeyTypeAES256SIV})
			if typ == store.KeyTypeAES256GCM {
				dk, err := ring.GenerateDataKey(ctx, name, []byte("file=statement.pdf"))
				if err != nil {
					t.Fatalf("GenerateDataKey(%q) err = %v, want nil", name, err)
				}
				out = append(out, sealed{what: "data key under " + name, pt: bytes.Clone(dk.Plaintext), aad: []byte("file=statement.pdf"), ct: dk.Ciphertext})
			}
		}
	}
	return out
}

// check decrypts every sealed item with ring, and re-encrypts the
// deterministic ones: the same bytes come out, so the keysets are the same.
func check(t testing.TB, ring *envelope.Keyring, items []sealed) {
	t.Helper()
	ctx := context.Background()
	for _, it := range items {
		pt, ref, err := ring.Decrypt(ctx, it.ct, it.aad)
		if err != nil || !bytes.Equal(pt, it.pt) {
			t.Errorf("Decrypt(%s) = %d bytes, %v; want the original %d bytes", it.what, len(pt), err, len(it.pt))
			continue
		}
		if it.siv {
			again, _, err := ring.Encrypt(ctx, ref.Name, it.pt, it.aad)
			if err != nil || !bytes.Equal(again, it.ct) {
				t.Errorf("Encrypt(%s) again = %x, %v; want the same bytes %x", it.what, again, err, it.ct)
			}
		}
	}
}

// wantAllWrappedBy fails t unless every stored keyset is wrapped by the
// root key with id want.
func wantAllWrappedBy(t testing.TB, st store.Store, want string) {
	t.Helper()
	ids, _ := rootKeyIDs(t, st)
	for name, id := range ids {
		if id != want {
			t.Errorf("keyset %q is wrapped by %q, want %q", name, id, want)
		}
	}
}

// rootKeyIDs returns every key's RootKeyID and Versions, by name.
func rootKeyIDs(t testing.TB, st store.Store) (map[string]string, map[string][]store.Version) {
	t.Helper()
	ids, versions := map[string]string{}, map[string][]store.Version{}
	token := ""
	for {
		keys, next, err := st.ListKeys(context.Background(), store.MaxPageSize, token)
		if err != nil {
			t.Fatalf("ListKeys() err = %v, want nil", err)
		}
		for _, k := range keys {
			ids[k.Name], versions[k.Name] = k.RootKeyID, k.Versions
		}
		if next == "" {
			return ids, versions
		}
		token = next
	}
}

// TestRotateAcrossProviders rotates SoftHSM2 -> AWS KMS (a real local-kms
// through the AWS SDK) -> SoftHSM2, with ciphertexts and data keys made
// before, keys created and rotated during the job, and a key created by a
// replica that has not yet seen the job. After each rotation everything
// decrypts, with a keyring that holds only the new root key too, and no
// keyset changed (deterministic ciphertexts come out the same, versions
// and Tink key ids are the same).
func TestRotateAcrossProviders(t *testing.T) {
	ctx := context.Background()
	srv, err := localkms.Start(ctx, localkms.Options{})
	if err != nil {
		t.Fatalf("localkms.Start() err = %v, want nil", err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, kv := range srv.ClientEnv() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	kmsURI, err := awskms.CreateRootKey(ctx, "aws-kms://?region="+srv.Region()+"&endpoint="+srv.Endpoint())
	if err != nil {
		t.Fatalf("awskms.CreateRootKey() err = %v, want nil", err)
	}

	st := openSQLite(t)
	a := newReplica(t, st, nil, hsm.root1, nil, fastOptions(t))
	items := seal(t, a.ring, "before", 6)
	_, versionsBefore := rootKeyIDs(t, st)

	for i, to := range []string{kmsURI, hsm.root2} {
		t.Run(fmt.Sprintf("%d-%s", i+1, provider.Scheme(to)), func(t *testing.T) {
			from := a.roots.ID()
			stale := newReplica(t, st, nil, hsm.root1, nil, fastOptions(t)) // holds the old key only, does not run
			if i == 1 {
				stale = newReplica(t, st, nil, kmsURI, nil, fastOptions(t))
			}
			job, err := a.rot.Start(ctx, to)
			if err != nil {
				t.Fatalf("Start(%s) err = %v, want nil", provider.Scheme(to), err)
			}
			if job.State != store.RotationRunning || job.FromID != from || job.ToID == from || job.Total < int64(len(versionsBefore)) {
				t.Fatalf("Start() = %+v; want a running job from %q with at least %d keysets", job, from, len(versionsBefore))
			}
			if a.roots.ID() != job.ToID {
				t.Errorf("active root key after Start = %q, want the new %q", a.roots.ID(), job.ToID)
			}
			// During the job: new keys, a rotated key, and a key from a
			// replica that still wraps with the old root key.
			items = append(items, seal(t, a.ring, fmt.Sprintf("during%d", i), 1)...)
			if _, err := a.ring.RotateKey(ctx, "before-gcm-0"); err != nil {
				t.Fatalf("RotateKey() during the job err = %v, want nil", err)
			}
			items = append(items, seal(t, stale.ring, fmt.Sprintf("straggler%d", i), 1)...)
			ids, _ := rootKeyIDs(t, st)
			if ids[fmt.Sprintf("during%d-gcm-0", i)] != job.ToID || ids[fmt.Sprintf("straggler%d-gcm-0", i)] != from {
				t.Fatalf("root keys during the job = %v; want new keys under %q and the straggler under %q", ids, job.ToID, from)
			}

			a.run(t)
			done := waitDone(t, st, 60*time.Second)
			if done.ID != job.ID || done.EndTime.IsZero() || done.Rewrapped < done.Total {
				t.Errorf("job = %+v; want %s done with Rewrapped >= Total", done, job.ID)
			}
			ids, versions := rootKeyIDs(t, st)
			for name, id := range ids {
				if id != job.ToID {
					t.Errorf("key %q is wrapped by %q after the rotation, want %q", name, id, job.ToID)
				}
			}
			for name, v := range versionsBefore {
				if name != "before-gcm-0" && !slices.Equal(v, versions[name]) {
					t.Errorf("versions of %q = %+v after the rotation, want unchanged %+v", name, versions[name], v)
				}
			}
			check(t, a.ring, items)
			// A replica started now holds only the new root key.
			fresh := newReplica(t, st, nil, hsm.root1, nil, fastOptions(t))
			if got := fresh.roots.IDs(); !slices.Equal(got, []string{job.ToID}) {
				t.Errorf("root keys of a replica started after the job = %q, want only %q", got, job.ToID)
			}
			check(t, fresh.ring, items)
		})
	}
}

func TestRotateBadInput(t *testing.T) {
	ctx := context.Background()
	srv, err := localkms.Start(ctx, localkms.Options{})
	if err != nil {
		t.Fatalf("localkms.Start() err = %v, want nil", err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, kv := range append(srv.ClientEnv(), "AWS_MAX_ATTEMPTS=1") {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	kmsURI, err := awskms.CreateRootKey(ctx, "aws-kms://?region="+srv.Region()+"&endpoint="+srv.Endpoint())
	if err != nil {
		t.Fatalf("awskms.CreateRootKey() err = %v, want nil", err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}

	st := openSQLite(t)
	a := newReplica(t, st, nil, hsm.root1, nil, fastOptions(t))
	items := seal(t, a.ring, "k", 2)
	if _, err := a.rot.Status(ctx); !errors.Is(err, ErrNoRotation) {
		t.Errorf("Status() before any rotation err = %v, want ErrNoRotation", err)
	}
	activeID := a.roots.ID()
	sameKeyOtherURI := strings.Replace(hsm.root1, "object=root-1", "object=root-1;type=secret-key", 1)
	tests := []struct {
		name string
		uri  string
		want error
	}{
		{"empty", "", ErrInvalidRootKey},
		{"blank", "  ", ErrInvalidRootKey},
		{"no scheme", "root-2", ErrInvalidRootKey},
		{"unknown scheme", "vault://transit/keys/root", ErrInvalidRootKey},
		{"malformed pkcs11", "pkcs11:object=root-2", ErrInvalidRootKey},
		{"malformed aws-kms", "aws-kms://not-an-arn?region=", ErrInvalidRootKey},
		{"no such key in the token", hsm.token.URI("root-9"), ErrInvalidRootKey},
		{"no such key file", localkek.URI(filepath.Join(t.TempDir(), "missing.key")), ErrInvalidRootKey},
		{"the active key", hsm.root1, ErrInvalidRootKey},
		{"the active key by another URI", sameKeyOtherURI, ErrInvalidRootKey},
		{"a local-file key after an HSM key", keyFile(t), ErrInvalidRootKey},
		{"KMS unreachable", kmsURI, kms.ErrUnavailable},
		{"a PKCS#11 module not in use", "pkcs11:token=tresor-rotation;object=root-2?module-path=/tmp/not-a-module.so&pin-source=" + hsm.token.PINFile, ErrInvalidRootKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job, err := a.rot.Start(ctx, tt.uri)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Start(%q) = %+v, %v; want %v", tt.uri, job, err, tt.want)
			}
			if strings.Contains(tt.name, "module") && !strings.Contains(fmt.Sprint(err), "not the module of a root key in use") {
				t.Errorf("Start(%q) err = %v; want it refused for its module, before any load", tt.uri, err)
			}
			if tt.want == kms.ErrUnavailable && errors.Is(err, ErrInvalidRootKey) {
				t.Errorf("Start(%q) err = %v; an outage is not an invalid key", tt.uri, err)
			}
			if _, err := a.rot.Status(ctx); !errors.Is(err, ErrNoRotation) {
				t.Errorf("Status() after a refused Start err = %v, want ErrNoRotation (nothing changed)", err)
			}
			if got := a.roots.IDs(); a.roots.ID() != activeID || !slices.Equal(got, []string{activeID}) {
				t.Errorf("root keys after a refused Start = %q (active %q), want only %q", got, a.roots.ID(), activeID)
			}
		})
	}
	check(t, a.ring, items)

	job, err := a.rot.Start(ctx, hsm.root2)
	if err != nil {
		t.Fatalf("Start(root-2) err = %v, want nil", err)
	}
	if _, err := a.rot.Start(ctx, hsm.root1); !errors.Is(err, ErrRotationRunning) {
		t.Errorf("Start() while a job runs err = %v, want ErrRotationRunning", err)
	}
	if got, err := a.rot.Status(ctx); err != nil || got.ID != job.ID || got.State != store.RotationRunning {
		t.Errorf("Status() = %+v, %v; want job %s running", got, err, job.ID)
	}
}

// faultyStore injects failures and crashes into a store.
type faultyStore struct {
	store.Store
	mu    sync.Mutex
	calls int // RewrapKeys calls
	// before runs before each RewrapKeys call; an error it returns is
	// returned instead, with nothing written.
	before func(call int) error
	// after runs after each RewrapKeys call that succeeded.
	after func(call int)
	// noRelease drops ReleaseLease, as a crashed process releases nothing.
	noRelease bool
}

func (s *faultyStore) RewrapKeys(ctx context.Context, jobID string, keys []store.Key) ([]string, error) {
	s.mu.Lock()
	s.calls++
	call := s.calls
	s.mu.Unlock()
	if s.before != nil {
		if err := s.before(call); err != nil {
			return nil, err
		}
	}
	conflicts, err := s.Store.RewrapKeys(ctx, jobID, keys)
	if err == nil && s.after != nil {
		s.after(call)
	}
	return conflicts, err
}

func (s *faultyStore) ReleaseLease(ctx context.Context, name, holder string) error {
	if s.noRelease {
		return nil
	}
	return s.Store.ReleaseLease(ctx, name, holder)
}

func (s *faultyStore) rewraps() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// TestResumeAfterCrash stops a replica right after its third batch
// committed, without releasing its lease, as a crash does; a replica
// started afterwards reads every keyset (half re-wrapped), takes the job
// over once the lease lapses, and finishes it. Every keyset is re-wrapped
// exactly once.
func TestResumeAfterCrash(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	uri1, uri2 := keyFile(t), keyFile(t)
	crashCtx, crash := context.WithCancel(context.Background())
	fs := &faultyStore{Store: st, noRelease: true}
	opts := fastOptions(t)
	opts.BatchSize = 25
	a := newReplica(t, st, fs, uri1, nil, opts)
	items := seal(t, a.ring, "k", 50) // 100 keys
	job, err := a.rot.Start(ctx, uri2)
	if err != nil {
		t.Fatalf("Start() err = %v, want nil", err)
	}
	fs.after = func(call int) {
		if call == 3 {
			crash() // before the rotator sees the batch committed
		}
	}
	stopA := a.runCtx(t, crashCtx)
	select {
	case <-crashCtx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the job did not commit 3 batches within 30s")
	}
	stopA()
	crashAt := time.Now()
	mid, err := st.LatestRootKeyRotation(ctx)
	if err != nil || mid.State != store.RotationRunning || mid.Rewrapped != 75 || mid.Total != 100 {
		t.Fatalf("job after the crash = %+v, %v; want running, 75 of 100 re-wrapped", mid, err)
	}
	if n, err := st.CountKeysByRootKey(ctx, job.FromID); err != nil || n != 25 {
		t.Errorf("CountKeysByRootKey(old) after the crash = %d, %v; want 25", n, err)
	}

	b := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	if got := b.roots.IDs(); len(got) != 2 || b.roots.ID() != job.ToID {
		t.Errorf("root keys of a replica started mid-job = %q (active %q), want both, %q active", got, b.roots.ID(), job.ToID)
	}
	check(t, b.ring, items)
	b.run(t)
	done := waitDone(t, st, 30*time.Second)
	if done.Rewrapped != 100 || done.Total != 100 {
		t.Errorf("job = %+v, want 100 of 100 re-wrapped, each once", done)
	}
	if waited := done.EndTime.Sub(crashAt); waited < 500*time.Millisecond {
		t.Errorf("the job was resumed %v after the crash, before the crashed replica's lease (1s) lapsed", waited)
	}
	check(t, newReplica(t, st, nil, uri1, nil, fastOptions(t)).ring, items)
}

// flakyKey fails Wrap with kms.ErrUnavailable while failures remain.
type flakyKey struct {
	kms.RootKey
	failures atomic.Int64
}

func (k *flakyKey) Wrap(ctx context.Context, pt, aad []byte) ([]byte, error) {
	if k.failures.Add(-1) >= 0 {
		return nil, fmt.Errorf("flaky test key: %w", kms.ErrUnavailable)
	}
	return k.RootKey.Wrap(ctx, pt, aad)
}

// TestRetriesWhenUnavailable makes the new root key and the store fail for
// a while: the job backs off, retries and finishes, and no batch is half
// written.
func TestRetriesWhenUnavailable(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	uri1, uri2 := keyFile(t), keyFile(t)
	var flaky *flakyKey
	open := OpenerFunc(func(ctx context.Context, uri string) (kms.RootKey, error) {
		k, err := openKey(ctx, uri)
		if err != nil || uri != uri2 {
			return k, err
		}
		flaky = &flakyKey{RootKey: k}
		return flaky, nil
	})
	var storeFailures atomic.Int64
	fs := &faultyStore{Store: st, before: func(call int) error {
		if call == 2 || call == 3 {
			storeFailures.Add(1)
			return fmt.Errorf("injected: %w", store.ErrUnavailable)
		}
		return nil
	}}
	opts := fastOptions(t)
	opts.BatchSize = 20
	a := newReplica(t, st, fs, uri1, open, opts)
	items := seal(t, a.ring, "k", 50)
	job, err := a.rot.Start(ctx, uri2)
	if err != nil {
		t.Fatalf("Start() err = %v, want nil", err)
	}
	flaky.failures.Store(30)
	a.run(t)
	done := waitDone(t, st, 30*time.Second)
	if done.Rewrapped != done.Total || done.Total != 100 {
		t.Errorf("job = %+v, want 100 of 100 re-wrapped", done)
	}
	if flaky.failures.Load() >= 0 || storeFailures.Load() != 2 {
		t.Errorf("failures left = %d, store failures = %d; want every injected failure hit", flaky.failures.Load(), storeFailures.Load())
	}
	ids, _ := rootKeyIDs(t, st)
	for name, id := range ids {
		if id != job.ToID {
			t.Errorf("key %q wrapped by %q, want %q", name, id, job.ToID)
		}
	}
	check(t, newReplica(t, st, nil, uri1, nil, fastOptions(t)).ring, items)
}

// TestTwoReplicas runs two replicas on one store: exactly one re-wraps
// (the lease holder); the other switches to the new root key and reads
// everything, including a key it created before it saw the job.
func TestTwoReplicas(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	uri1, uri2 := keyFile(t), keyFile(t)
	fa, fb := &faultyStore{Store: st}, &faultyStore{Store: st}
	a := newReplica(t, st, fa, uri1, nil, fastOptions(t))
	b := newReplica(t, st, fb, uri1, nil, fastOptions(t))
	items := seal(t, a.ring, "k", 40)
	job, err := a.rot.Start(ctx, uri2)
	if err != nil {
		t.Fatalf("Start() err = %v, want nil", err)
	}
	items = append(items, seal(t, b.ring, "from-b", 1)...) // b has not seen the job: old root key
	a.run(t)
	b.run(t)
	waitDone(t, st, 30*time.Second)
	if ra, rb := fa.rewraps(), fb.rewraps(); (ra == 0) == (rb == 0) {
		t.Errorf("RewrapKeys calls: replica a %d, replica b %d; want exactly one replica to re-wrap", ra, rb)
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.roots.ID() != job.ToID && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if b.roots.ID() != job.ToID {
		t.Errorf("replica b's active root key = %q, want %q", b.roots.ID(), job.ToID)
	}
	if n, err := st.CountKeysByRootKey(ctx, job.FromID); err != nil || n != 0 {
		t.Errorf("CountKeysByRootKey(old) = %d, %v; want 0", n, err)
	}
	check(t, b.ring, items)
	check(t, a.ring, items)
}

// TestFollowsOnAMiss: a replica that polls rarely follows a rotation at
// once when its keyring meets a keyset under a root key it does not hold.
func TestFollowsOnAMiss(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	uri1, uri2 := keyFile(t), keyFile(t)
	a := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	slow := fastOptions(t)
	slow.PollInterval = time.Hour
	b := newReplica(t, st, nil, uri1, nil, slow)
	b.run(t) // its first poll finds no job; the next is an hour away
	time.Sleep(50 * time.Millisecond)
	job, err := a.rot.Start(ctx, uri2)
	if err != nil {
		t.Fatalf("Start() err = %v, want nil", err)
	}
	a.run(t)
	waitDone(t, st, 30*time.Second)
	// A key created under the new root key, unknown to b.
	items := seal(t, a.ring, "new", 1)
	_, _, err = b.ring.Decrypt(ctx, items[0].ct, items[0].aad)
	if !errors.Is(err, envelope.ErrRootKeyNotHeld) {
		t.Fatalf("b Decrypt() before following err = %v, want ErrRootKeyNotHeld", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.roots.ID() != job.ToID && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if b.roots.ID() != job.ToID {
		t.Fatalf("replica b's active root key %q 5s after a miss, want %q (followed at once, not at its hourly poll)", b.roots.ID(), job.ToID)
	}
	check(t, b.ring, items)
}
