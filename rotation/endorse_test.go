package rotation

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
)

// openRoot opens a root key for the test.
func openRoot(t testing.TB, uri string) kms.RootKey {
	t.Helper()
	k, err := openKey(context.Background(), uri)
	if err != nil {
		t.Fatalf("open root key: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// endorsed returns the job from from to to, endorsed by from.
func endorsed(t testing.TB, id string, from kms.RootKey, fromURI string, to kms.RootKey, toURI string) store.RootKeyRotation {
	t.Helper()
	job := store.RootKeyRotation{ID: id, FromID: from.ID(), FromURI: fromURI, ToID: to.ID(), ToURI: toURI}
	var err error
	if job.Endorsement, err = Endorse(context.Background(), from, job); err != nil {
		t.Fatalf("Endorse(%s) err = %v, want nil", id, err)
	}
	return job
}

func TestEndorsement(t *testing.T) {
	ctx := context.Background()
	uriA, uriB, uriX := keyFile(t), keyFile(t), keyFile(t)
	a, b, x := openRoot(t, uriA), openRoot(t, uriB), openRoot(t, uriX)
	good := endorsed(t, "rkr-1", a, uriA, b, uriB)
	if err := VerifyEndorsement(ctx, a, good); err != nil {
		t.Fatalf("VerifyEndorsement(endorsed job) err = %v, want nil", err)
	}
	other := endorsed(t, "rkr-2", a, uriA, x, uriX)
	mod := func(f func(j *store.RootKeyRotation)) store.RootKeyRotation {
		j := good
		j.Endorsement = bytes.Clone(good.Endorsement)
		f(&j)
		return j
	}
	byX := good
	byX.Endorsement, _ = x.Wrap(ctx, func() []byte { d := endorsementDigest(good); return d[:] }(), endorsementAAD(good.FromID))
	garbage := make([]byte, len(good.Endorsement))
	if _, err := rand.Read(garbage); err != nil {
		t.Fatal(err)
	}
	// Fields whose bytes run together the same way do not share a digest:
	// every field is length-prefixed.
	if endorsementDigest(store.RootKeyRotation{ID: "rkr-1a", FromID: "b"}) == endorsementDigest(store.RootKeyRotation{ID: "rkr-1", FromID: "ab"}) {
		t.Error("endorsementDigest() is the same for jobs whose fields differ but run together the same way")
	}
	tests := []struct {
		name string
		key  kms.RootKey
		job  store.RootKeyRotation
	}{
		{"no endorsement", a, mod(func(j *store.RootKeyRotation) { j.Endorsement = nil })},
		{"empty endorsement", a, mod(func(j *store.RootKeyRotation) { j.Endorsement = []byte{} })},
		{"endorsed by another key", a, byX},
		{"garbage", a, mod(func(j *store.RootKeyRotation) { j.Endorsement = garbage })},
		{"truncated", a, mod(func(j *store.RootKeyRotation) { j.Endorsement = j.Endorsement[:len(j.Endorsement)-1] })},
		{"ToURI changed", a, mod(func(j *store.RootKeyRotation) { j.ToURI = uriX })},
		{"ToID and ToURI changed", a, mod(func(j *store.RootKeyRotation) { j.ToID, j.ToURI = x.ID(), uriX })},
		{"FromURI changed", a, mod(func(j *store.RootKeyRotation) { j.FromURI = uriX })},
		{"ID changed", a, mod(func(j *store.RootKeyRotation) { j.ID = "rkr-3" })},
		{"endorsement of another job", a, mod(func(j *store.RootKeyRotation) { j.Endorsement = other.Endorsement })},
		{"checked with another key", x, good},
		{"checked with the new key", b, good},
		{"no key", nil, good},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyEndorsement(ctx, tt.key, tt.job)
			if !errors.Is(err, ErrUnendorsedRotation) {
				t.Errorf("VerifyEndorsement(%s) err = %v, want ErrUnendorsedRotation", tt.name, err)
			}
			for _, secret := range []string{uriA, uriB, uriX} {
				if strings.Contains(fmt.Sprint(err), secret) {
					t.Errorf("VerifyEndorsement(%s) err = %q; want no URI in it", tt.name, err)
				}
			}
		})
	}
	t.Run("old root key unavailable", func(t *testing.T) {
		down := &downKEK{KEK: a}
		down.down.Store(true)
		err := VerifyEndorsement(ctx, down, good)
		if !errors.Is(err, kms.ErrUnavailable) || errors.Is(err, ErrUnendorsedRotation) {
			t.Errorf("VerifyEndorsement(old key down) err = %v, want kms.ErrUnavailable and not ErrUnendorsedRotation", err)
		}
		if _, err := Endorse(ctx, down, good); !errors.Is(err, kms.ErrUnavailable) {
			t.Errorf("Endorse(old key down) err = %v, want kms.ErrUnavailable", err)
		}
	})
	if _, err := Endorse(ctx, b, good); err == nil {
		t.Errorf("Endorse(job from %s, with key %s) err = nil, want an error", good.FromID, b.ID())
	}
}

// recordingOpener opens root keys with openKey and remembers every URI it
// was asked to open.
type recordingOpener struct {
	mu   sync.Mutex
	uris []string
}

func (o *recordingOpener) OpenRootKey(ctx context.Context, uri string) (kms.RootKey, error) {
	o.mu.Lock()
	o.uris = append(o.uris, uri)
	o.mu.Unlock()
	return openKey(ctx, uri)
}

func (o *recordingOpener) opened(uri string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Contains(o.uris, uri)
}

// forgeryEnv is one replica, running, on a store with keysets under its
// root key A, with a legitimate other key B and an attacker's key X.
type forgeryEnv struct {
	st               store.Store
	rep              *replica
	open             *recordingOpener
	logs             *syncBuffer
	uriA, uriB, uriX string
	a, b, x          kms.RootKey
	items            []sealed
}

func newForgeryEnv(t *testing.T, uriA, uriB, uriX string, keysets int) *forgeryEnv {
	t.Helper()
	e := newReplicaOn(t, uriA, keysets)
	e.uriB, e.uriX = uriB, uriX
	e.b, e.x = openRoot(t, uriB), openRoot(t, uriX)
	return e
}

// newReplicaOn is a forgeryEnv with only the replica's root key A.
func newReplicaOn(t *testing.T, uriA string, keysets int) *forgeryEnv {
	t.Helper()
	e := &forgeryEnv{st: openSQLite(t), open: &recordingOpener{}, logs: &syncBuffer{}, uriA: uriA}
	e.a = openRoot(t, uriA)
	opts := fastOptions(t)
	opts.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e.rep = newReplica(t, e.st, nil, uriA, e.open, opts)
	if keysets > 0 {
		e.items = seal(t, e.rep.ring, "k", keysets)
	}
	return e
}

// checkRefused runs the replica for some 15 polls after job was written
// and checks that it refused job: its root keys unchanged, the forged
// key never opened, every keyset still under A, the refusal logged once
// with the job's id, and everything sealed before still decrypting.
func (e *forgeryEnv) checkRefused(t *testing.T, job store.RootKeyRotation) {
	t.Helper()
	stop := e.rep.run(t)
	time.Sleep(300 * time.Millisecond)
	stop()
	if got := e.rep.roots.IDs(); e.rep.roots.ID() != e.a.ID() || !slices.Equal(got, []string{e.a.ID()}) {
		t.Errorf("root keys after a forged job = %q (active %q), want only %q", got, e.rep.roots.ID(), e.a.ID())
	}
	for _, uri := range slices.Compact(slices.Sorted(slices.Values([]string{e.uriX, e.uriB, job.FromURI, job.ToURI}))) {
		if uri != "" && uri != e.uriA && e.open.opened(uri) {
			t.Errorf("the replica opened %s for a forged job, want it never opened", uri)
		}
	}
	ids, _ := rootKeyIDs(t, e.st)
	for name, id := range ids {
		if id != e.a.ID() {
			t.Errorf("keyset %q is wrapped by %q after a forged job, want %q", name, id, e.a.ID())
		}
	}
	logs := e.logs.String()
	if n := e.logs.count("root-key rotation refused"); n != 1 || !strings.Contains(logs, "job="+job.ID) {
		t.Errorf("refusal logged %d times, want once naming job %s; log:\n%s", n, job.ID, logs)
	}
	if strings.Contains(logs, "will retry") {
		t.Errorf("a refusal made Run back off, want it to poll on; log:\n%s", logs)
	}
	check(t, e.rep.ring, e.items)
}

// TestFollowRefusesForgedRotation writes rotation jobs to the store as
// anyone who can write to it could, pointing at a root key of their own
// (X): a running replica follows none of them, opens no key they name,
// and re-wraps nothing.
func TestFollowRefusesForgedRotation(t *testing.T) {
	ctx := context.Background()
	uriA, uriB, uriX := keyFile(t), keyFile(t), keyFile(t)
	a, b, x := openRoot(t, uriA), openRoot(t, uriB), openRoot(t, uriX)
	toX := func(id string) store.RootKeyRotation {
		return store.RootKeyRotation{ID: id, FromID: a.ID(), FromURI: uriA, ToID: x.ID(), ToURI: uriX, Total: 4}
	}
	tests := []struct {
		name string
		job  func() store.RootKeyRotation
	}{
		{"no endorsement", func() store.RootKeyRotation { return toX("rkr-forged") }},
		{"endorsed by the attacker's key", func() store.RootKeyRotation {
			j := toX("rkr-forged")
			d := endorsementDigest(j)
			j.Endorsement, _ = x.Wrap(ctx, d[:], endorsementAAD(j.FromID))
			return j
		}},
		{"garbage endorsement", func() store.RootKeyRotation {
			j := toX("rkr-forged")
			j.Endorsement = bytes.Repeat([]byte{7}, 80)
			return j
		}},
		{"ToURI changed under a valid endorsement", func() store.RootKeyRotation {
			j := endorsed(t, "rkr-forged", a, uriA, b, uriB)
			j.ToURI = uriX
			return j
		}},
		{"ToID and ToURI changed under a valid endorsement", func() store.RootKeyRotation {
			j := endorsed(t, "rkr-forged", a, uriA, b, uriB)
			j.ToID, j.ToURI = x.ID(), uriX
			return j
		}},
		{"endorsement of another job", func() store.RootKeyRotation {
			j := toX("rkr-forged")
			j.Endorsement = endorsed(t, "rkr-legit", a, uriA, b, uriB).Endorsement
			return j
		}},
		{"ID changed under a valid endorsement", func() store.RootKeyRotation {
			j := endorsed(t, "rkr-legit", a, uriA, x, uriX)
			j.ID = "rkr-forged"
			return j
		}},
		{"from a root key the replica does not hold", func() store.RootKeyRotation {
			return endorsed(t, "rkr-forged", x, uriX, b, uriB)
		}},
		{"running from a root key the replica does not hold to its own", func() store.RootKeyRotation {
			return endorsed(t, "rkr-forged", x, uriX, a, uriA)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newForgeryEnv(t, uriA, uriB, uriX, 2)
			job := tt.job()
			if _, err := e.st.StartRootKeyRotation(ctx, job); err != nil {
				t.Fatalf("StartRootKeyRotation(forged) err = %v, want nil", err)
			}
			e.checkRefused(t, job)
		})
	}
}

// TestFollowRefusesForgedRotationHSM: on a SoftHSM2 root key, a job
// without an endorsement to another key of the token is refused, and so are
// jobs endorsed by the active key (as a tresor without Start's checks could
// have made them) to a PKCS#11 module not in use or to a local-file key:
// the module is never loaded, the key never opened.
func TestFollowRefusesForgedRotationHSM(t *testing.T) {
	ctx := context.Background()
	root1, root2 := openRoot(t, hsm.root1), openRoot(t, hsm.root2)
	fileURI := keyFile(t)
	file := openRoot(t, fileURI)
	badModule := "pkcs11:token=tresor-rotation;object=root-2?module-path=/tmp/not-a-module.so&pin-source=" + hsm.token.PINFile
	tests := []struct {
		name string
		job  store.RootKeyRotation
		want string // in the error
	}{
		{"no endorsement, to another key of the token",
			store.RootKeyRotation{ID: "rkr-forged", FromID: root1.ID(), FromURI: hsm.root1, ToID: root2.ID(), ToURI: hsm.root2}, "has no endorsement"},
		{"endorsed, to a PKCS#11 module not in use",
			func() store.RootKeyRotation {
				j := store.RootKeyRotation{ID: "rkr-forged", FromID: root1.ID(), FromURI: hsm.root1, ToID: "pkcs11:evil", ToURI: badModule}
				j.Endorsement, _ = Endorse(ctx, root1, j)
				return j
			}(), "is not the module of a root key in use"},
		{"endorsed, to a local-file key", endorsed(t, "rkr-forged", root1, hsm.root1, file, fileURI), "to a local-file key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newReplicaOn(t, hsm.root1, 2)
			if _, err := e.st.StartRootKeyRotation(ctx, tt.job); err != nil {
				t.Fatalf("StartRootKeyRotation(forged) err = %v, want nil", err)
			}
			if _, err := e.rep.rot.follow(ctx, tt.job); !errors.Is(err, ErrUnendorsedRotation) || !strings.Contains(fmt.Sprint(err), tt.want) {
				t.Errorf("follow(forged) err = %v, want ErrUnendorsedRotation saying %q", err, tt.want)
			}
			e.checkRefused(t, tt.job)
		})
	}
}

// TestStartRefusesAfterForgedRotation: with a forged job done as the
// store's latest, Start refuses (ErrUnendorsedRotation) and changes
// nothing.
func TestStartRefusesAfterForgedRotation(t *testing.T) {
	ctx := context.Background()
	uriA, uriB, uriX := keyFile(t), keyFile(t), keyFile(t)
	e := newForgeryEnv(t, uriA, uriB, uriX, 0) // no keyset: the forged job can finish
	forged := store.RootKeyRotation{ID: "rkr-forged", FromID: e.a.ID(), FromURI: uriA, ToID: e.x.ID(), ToURI: uriX}
	if _, err := e.st.StartRootKeyRotation(ctx, forged); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.FinishRootKeyRotation(ctx, forged.ID); err != nil {
		t.Fatal(err)
	}
	job, err := e.rep.rot.Start(ctx, uriB)
	if !errors.Is(err, ErrUnendorsedRotation) {
		t.Fatalf("Start(uri) = %+v, %v; want ErrUnendorsedRotation", job, err)
	}
	if latest, err := e.st.LatestRootKeyRotation(ctx); err != nil || latest.ID != forged.ID {
		t.Errorf("latest job after a refused Start = %+v, %v; want still %s", latest, err, forged.ID)
	}
	if got := e.rep.roots.IDs(); e.rep.roots.ID() != e.a.ID() || len(got) != 1 {
		t.Errorf("root keys after a refused Start = %q (active %q), want only %q", got, e.rep.roots.ID(), e.a.ID())
	}
	if e.open.opened(uriX) || e.open.opened(uriB) {
		t.Errorf("Start opened %q; want neither the forged key nor the new one opened", e.open.uris)
	}
	e.checkRefused(t, forged)
}

// TestFollowRefusesRollback: after A -> B -> C, a replica that still
// holds A refuses a job after the latest that would roll its keyring back
// to A: one endorsed by A, which is no longer active (a new job starts from
// the active root key), and one without an endorsement from C to A.
func TestFollowRefusesRollback(t *testing.T) {
	ctx := context.Background()
	uriA, uriB, uriC := keyFile(t), keyFile(t), keyFile(t)
	a, b, c := openRoot(t, uriA), openRoot(t, uriB), openRoot(t, uriC)
	tests := []struct {
		name string
		job  func(prev string) store.RootKeyRotation
	}{
		{"endorsed by the old root key A", func(prev string) store.RootKeyRotation {
			j := store.RootKeyRotation{ID: "rkr-back", PrevID: prev, FromID: a.ID(), FromURI: uriA, ToID: b.ID(), ToURI: uriB}
			j.Endorsement, _ = Endorse(ctx, a, j)
			return j
		}},
		{"no endorsement, from C to A", func(prev string) store.RootKeyRotation {
			return store.RootKeyRotation{ID: "rkr-back", PrevID: prev, FromID: c.ID(), FromURI: uriC, ToID: a.ID(), ToURI: uriA}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openSQLite(t)
			var logs syncBuffer
			opts := fastOptions(t)
			opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
			r := newReplica(t, st, nil, uriA, nil, opts)
			items := seal(t, r.ring, "k", 2)
			r.run(t)
			for _, uri := range []string{uriB, uriC} {
				if _, err := r.rot.Start(ctx, uri); err != nil {
					t.Fatalf("Start(uri) err = %v, want nil", err)
				}
				waitDone(t, st, 30*time.Second)
			}
			if r.roots.ID() != c.ID() || !slices.Contains(r.roots.IDs(), a.ID()) {
				t.Fatalf("root keys after A->B->C = %q (active %q), want A still held and C active", r.roots.IDs(), r.roots.ID())
			}
			latest, err := st.LatestRootKeyRotation(ctx)
			if err != nil {
				t.Fatal(err)
			}
			job := tt.job(latest.ID)
			if _, err := st.StartRootKeyRotation(ctx, job); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			if r.roots.ID() != c.ID() {
				t.Errorf("active root key after job %s = %q, want still %q", job.ID, r.roots.ID(), c.ID())
			}
			if n := logs.count("root-key rotation refused"); n != 1 {
				t.Errorf("refusal logged %d times, want once; log:\n%s", n, logs.String())
			}
			wantAllWrappedBy(t, st, c.ID())
			check(t, r.ring, items)
		})
	}
}

// flakyRotations returns a tampered latest job for the first reads, as a
// transient wrong read would, then the store's.
type flakyRotations struct {
	store.Store
	mu      sync.Mutex
	tamper  int // reads left to tamper with
	tampers int // reads tampered with
	to      string
}

func (s *flakyRotations) LatestRootKeyRotation(ctx context.Context) (store.RootKeyRotation, error) {
	job, err := s.Store.LatestRootKeyRotation(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && s.tamper > 0 {
		s.tamper--
		s.tampers++
		job.ToURI = s.to
	}
	return job, err
}

// TestFollowRetriesAfterRefusal: a replica that refused a job because of
// a bad read follows it at a later poll, once the record verifies.
func TestFollowRetriesAfterRefusal(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	uri1, uri2, uriX := keyFile(t), keyFile(t), keyFile(t)
	a := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	fs := &flakyRotations{Store: st, to: uriX}
	var logs syncBuffer
	opts := fastOptions(t)
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	open := &recordingOpener{}
	b := newReplica(t, st, fs, uri1, open, opts)
	items := seal(t, a.ring, "k", 5)
	fs.mu.Lock()
	fs.tamper = 3
	fs.mu.Unlock()
	job, err := a.rot.Start(ctx, uri2)
	if err != nil {
		t.Fatalf("Start() err = %v, want nil", err)
	}
	b.run(t) // b alone runs: it refuses, then follows and re-wraps
	done := waitDone(t, st, 30*time.Second)
	if done.ID != job.ID || done.Rewrapped != 10 {
		t.Errorf("job = %+v, want %s done with 10 keysets re-wrapped", done, job.ID)
	}
	if b.roots.ID() != job.ToID {
		t.Errorf("b's active root key = %q, want %q", b.roots.ID(), job.ToID)
	}
	fs.mu.Lock()
	tampers := fs.tampers
	fs.mu.Unlock()
	if tampers != 3 || logs.count("root-key rotation refused") != 1 || open.opened(uriX) {
		t.Errorf("tampered reads %d, refusals logged %d, forged key opened %t; want 3, 1, false; log:\n%s", tampers, logs.count("root-key rotation refused"), open.opened(uriX), logs.String())
	}
	check(t, b.ring, items)
}

// TestFollowUpJobsAreEndorsed: the job that re-wraps keysets left behind
// by a done job is endorsed by the old root key like any other.
func TestFollowUpJobsAreEndorsed(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	uri1, uri2 := keyFile(t), keyFile(t)
	a := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	stale := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	seal(t, a.ring, "k", 1)
	job, err := a.rot.Start(ctx, uri2)
	if err != nil {
		t.Fatal(err)
	}
	a.run(t)
	waitDone(t, st, 30*time.Second)
	seal(t, stale.ring, "straggler", 1)
	followUp := waitLatest(t, st, 30*time.Second, func(j store.RootKeyRotation) bool { return j.ID != job.ID })
	if err := VerifyEndorsement(ctx, openRoot(t, uri1), followUp); err != nil {
		t.Errorf("VerifyEndorsement(follow-up job) err = %v, want nil", err)
	}
	if job.PrevID != "" || followUp.PrevID != job.ID {
		t.Errorf("PrevID of the job = %q, of the follow-up = %q; want \"\" and %q", job.PrevID, followUp.PrevID, job.ID)
	}
	if err := VerifyEndorsement(ctx, openRoot(t, uri1), job); err != nil {
		t.Errorf("VerifyEndorsement(job) err = %v, want nil", err)
	}
}
