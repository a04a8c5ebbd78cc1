package rotation

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
)

// openSQLiteAt opens a SQLite store and returns it with a second handle
// on its file, to change the rows as anyone who can write to the database
// could.
func openSQLiteAt(t testing.TB) (store.Store, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.db")
	st, err := store.OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatalf("OpenSQLite() err = %v, want nil", err)
	}
	t.Cleanup(func() { st.Close() })
	db, err := sql.Open("sqlite", "file:"+path+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return st, db
}

// replayStore shows extra, when set, as the latest job: a row written to
// the store by hand (a copy of an old job, with the unique constraints
// dropped).
type replayStore struct {
	store.Store
	mu    sync.Mutex
	extra *store.RootKeyRotation
}

func (s *replayStore) set(job store.RootKeyRotation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extra = &job
}

func (s *replayStore) LatestRootKeyRotation(ctx context.Context) (store.RootKeyRotation, error) {
	s.mu.Lock()
	extra := s.extra
	s.mu.Unlock()
	if extra != nil {
		return *extra, nil
	}
	return s.Store.LatestRootKeyRotation(ctx)
}

func (s *replayStore) ListRootKeyRotations(ctx context.Context) ([]store.RootKeyRotation, error) {
	jobs, err := s.Store.ListRootKeyRotations(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && s.extra != nil {
		jobs = append(jobs, *s.extra)
	}
	return jobs, err
}

// TestFollowRefusesReplayedRotation: after A -> B -> A, made by a running
// replica, the store is changed so that the genuine first job A -> B,
// endorsed by A (the active root key), is the latest again, or a job
// after the latest reuses its endorsement, or the latest job or every job
// is deleted: the replica follows none of it (it follows only the job
// that names the one it followed last, and never one it followed before).
// Its keyring stays on A, nothing is re-wrapped, and Start refuses.
func TestFollowRefusesReplayedRotation(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		tamper func(t *testing.T, db *sql.DB, rs *replayStore, ab, ba store.RootKeyRotation)
		want   string // in the refusal
	}{
		{"the first job made the latest again", func(t *testing.T, db *sql.DB, rs *replayStore, ab, ba store.RootKeyRotation) {
			if _, err := db.Exec(`UPDATE root_key_rotations SET seq = 1000 WHERE id = ?`, ab.ID); err != nil {
				t.Fatal(err)
			}
		}, "was followed before"},
		{"the latest job deleted", func(t *testing.T, db *sql.DB, rs *replayStore, ab, ba store.RootKeyRotation) {
			if _, err := db.Exec(`DELETE FROM root_key_rotations WHERE id = ?`, ba.ID); err != nil {
				t.Fatal(err)
			}
		}, "was followed before"},
		{"a copy of the first job stored as the latest, running", func(t *testing.T, db *sql.DB, rs *replayStore, ab, ba store.RootKeyRotation) {
			ab.State, ab.EndTime, ab.Rewrapped = store.RotationRunning, time.Time{}, 0
			rs.set(ab)
		}, "was followed before"},
		{"the first job's endorsement under a new ID after the latest", func(t *testing.T, db *sql.DB, rs *replayStore, ab, ba store.RootKeyRotation) {
			ab.ID, ab.PrevID, ab.State, ab.EndTime = "rkr-replayed", ba.ID, store.RotationRunning, time.Time{}
			rs.set(ab)
		}, "is not of this job"},
		{"every job deleted", func(t *testing.T, db *sql.DB, rs *replayStore, ab, ba store.RootKeyRotation) {
			if _, err := db.Exec(`DELETE FROM root_key_rotations`); err != nil {
				t.Fatal(err)
			}
		}, "holds no root-key rotation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uriA, uriB := keyFile(t), keyFile(t)
			st, db := openSQLiteAt(t)
			rs := &replayStore{Store: st}
			var logs syncBuffer
			opts := fastOptions(t)
			opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
			r := newReplica(t, st, rs, uriA, nil, opts)
			a := openRoot(t, uriA)
			items := seal(t, r.ring, "k", 2)
			r.run(t)
			ab, err := r.rot.Start(ctx, uriB)
			if err != nil {
				t.Fatalf("Start(B) err = %v, want nil", err)
			}
			waitDone(t, st, 30*time.Second)
			ba, err := r.rot.Start(ctx, uriA)
			if err != nil {
				t.Fatalf("Start(A) err = %v, want nil", err)
			}
			waitDone(t, st, 30*time.Second)
			if ab.PrevID != "" || ba.PrevID != ab.ID {
				t.Fatalf("PrevID of A -> B = %q, of B -> A = %q; want \"\" and %q", ab.PrevID, ba.PrevID, ab.ID)
			}
			if r.roots.ID() != a.ID() {
				t.Fatalf("active root key after A -> B -> A = %q, want %q", r.roots.ID(), a.ID())
			}
			held := r.roots.IDs()

			tt.tamper(t, db, rs, ab, ba)
			time.Sleep(300 * time.Millisecond)
			if got := r.roots.IDs(); r.roots.ID() != a.ID() || !slices.Equal(got, held) {
				t.Errorf("root keys after the store was changed = %q (active %q), want %q (active %q)", got, r.roots.ID(), held, a.ID())
			}
			if n := logs.count("root-key rotation refused"); n != 1 || !strings.Contains(logs.String(), tt.want) {
				t.Errorf("refusal logged %d times, want once saying %q; log:\n%s", n, tt.want, logs.String())
			}
			if strings.Contains(logs.String(), "will retry") {
				t.Errorf("a refusal made Run back off, want it to poll on; log:\n%s", logs.String())
			}
			if job, err := r.rot.Start(ctx, uriB); !errors.Is(err, ErrUnendorsedRotation) && !errors.Is(err, ErrRotationRunning) {
				t.Errorf("Start(B) after the store was changed = %+v, %v; want ErrUnendorsedRotation (or, the latest shown running, ErrRotationRunning)", job, err)
			}
			items = append(items, seal(t, r.ring, "after", 1)...)
			wantAllWrappedBy(t, st, a.ID())
			check(t, r.ring, items)
		})
	}
}

// trackingOpener opens root keys with openKey and counts, per URI, the
// handles opened and closed.
type trackingOpener struct {
	mu            sync.Mutex
	opens, closes map[string]int
}

func newTrackingOpener() *trackingOpener {
	return &trackingOpener{opens: map[string]int{}, closes: map[string]int{}}
}

type trackedKey struct {
	kms.RootKey
	o    *trackingOpener
	uri  string
	once sync.Once
}

func (k *trackedKey) Close() error {
	k.once.Do(func() {
		k.o.mu.Lock()
		k.o.closes[k.uri]++
		k.o.mu.Unlock()
	})
	return k.RootKey.Close()
}

func (o *trackingOpener) OpenRootKey(ctx context.Context, uri string) (kms.RootKey, error) {
	k, err := openKey(ctx, uri)
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	o.opens[uri]++
	o.mu.Unlock()
	return &trackedKey{RootKey: k, o: o, uri: uri}, nil
}

// counts returns how often uri was opened, and how many of those handles
// are closed.
func (o *trackingOpener) counts(uri string) (opens, closes int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.opens[uri], o.closes[uri]
}

// TestFollowVerifiesWithATemporaryKey: after A -> B -> C, a replica that
// started on C refuses forged jobs after the latest one without changing
// its root keys. The old root key B of the latest job is trusted (a
// follow-up job for keysets left under it is endorsed by it): it is opened
// to verify the endorsement and closed again, never added to the keyring.
// A, an earlier root key, is no longer trusted and never opened; nor is a
// key of a job that neither starts from the active key nor repeats the
// latest job's keys.
func TestFollowVerifiesWithATemporaryKey(t *testing.T) {
	ctx := context.Background()
	garbage := bytes.Repeat([]byte{7}, 80)
	tests := []struct {
		name       string
		from, to   string // of the forged job: A, B, C or D
		opensB     bool   // B is opened to verify it
		wantRefuse string
	}{
		{"from the old key B of the latest job to the active key C", "B", "C", true, "does not unwrap"},
		{"from the earlier key A to the active key C", "A", "C", false, "a new job starts from the active root key"},
		{"from B to another key D", "B", "D", false, "a new job starts from the active root key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openSQLite(t)
			uris := map[string]string{"A": keyFile(t), "B": keyFile(t), "C": keyFile(t), "D": keyFile(t)}
			ids := map[string]string{}
			for name, uri := range uris {
				ids[name] = openRoot(t, uri).ID()
			}
			first := newReplica(t, st, nil, uris["A"], nil, fastOptions(t))
			items := seal(t, first.ring, "k", 1)
			stop := first.run(t)
			for _, to := range []string{"B", "C"} {
				if _, err := first.rot.Start(ctx, uris[to]); err != nil {
					t.Fatalf("Start(%s) err = %v, want nil", to, err)
				}
				waitDone(t, st, 30*time.Second)
			}
			stop()
			latest, err := st.LatestRootKeyRotation(ctx)
			if err != nil {
				t.Fatal(err)
			}

			open := newTrackingOpener()
			var logs syncBuffer
			opts := fastOptions(t)
			opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
			r := newReplica(t, st, nil, uris["A"], open, opts)
			if got := r.roots.IDs(); !slices.Equal(got, []string{ids["C"]}) {
				t.Fatalf("root keys of a replica started after A -> B -> C = %q, want only C %q", got, ids["C"])
			}
			forged := store.RootKeyRotation{ID: "rkr-forged", PrevID: latest.ID,
				FromID: ids[tt.from], FromURI: uris[tt.from], ToID: ids[tt.to], ToURI: uris[tt.to], Endorsement: garbage}
			if _, err := st.StartRootKeyRotation(ctx, forged); err != nil {
				t.Fatalf("StartRootKeyRotation(forged) err = %v, want nil", err)
			}
			if _, err := r.rot.follow(ctx, forged); !errors.Is(err, ErrUnendorsedRotation) || !strings.Contains(err.Error(), tt.wantRefuse) {
				t.Errorf("follow(forged) err = %v, want ErrUnendorsedRotation saying %q", err, tt.wantRefuse)
			}
			r.run(t)
			time.Sleep(300 * time.Millisecond)
			if got := r.roots.IDs(); r.roots.ID() != ids["C"] || !slices.Equal(got, []string{ids["C"]}) {
				t.Errorf("root keys after the forged job = %q (active %q), want only C %q", got, r.roots.ID(), ids["C"])
			}
			// B is opened once: the refusal of a record is kept, not
			// verified again at every poll.
			opensB, closesB := open.counts(uris["B"])
			if want := map[bool]int{true: 1}[tt.opensB]; opensB != want || closesB != opensB {
				t.Errorf("B opened %d times, closed %d times; want opened %d times, and every handle closed", opensB, closesB, want)
			}
			for _, name := range []string{"A", "D"} {
				if n, _ := open.counts(uris[name]); n != 0 {
					t.Errorf("%s opened %d times, want never", name, n)
				}
			}
			ids2, _ := rootKeyIDs(t, st)
			for name, id := range ids2 {
				if id != ids["C"] {
					t.Errorf("keyset %q is wrapped by %q, want C %q", name, id, ids["C"])
				}
			}
			check(t, r.ring, items)
		})
	}
}

// TestFollowUpJobAdoptsItsOldKey: a replica that started on B after A -> B
// follows a running follow-up job A -> B (keysets left under A): the old
// key A, which it did not hold, is opened to verify the endorsement and,
// as the running job needs it, added to the keyring (one handle, kept
// open); the job after it chains from the follow-up.
func TestFollowUpJobAdoptsItsOldKey(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	uriA, uriB := keyFile(t), keyFile(t)
	a := openRoot(t, uriA)
	first := newReplica(t, st, nil, uriA, nil, fastOptions(t))
	seal(t, first.ring, "k", 1)
	stop := first.run(t)
	ab, err := first.rot.Start(ctx, uriB)
	if err != nil {
		t.Fatal(err)
	}
	done := waitDone(t, st, 30*time.Second)
	stop()

	open := newTrackingOpener()
	r := newReplica(t, st, nil, uriB, open, fastOptions(t))
	followUp := store.RootKeyRotation{ID: "rkr-follow-up", PrevID: ab.ID, FromID: ab.FromID, FromURI: ab.FromURI, ToID: ab.ToID, ToURI: ab.ToURI}
	if followUp.Endorsement, err = Endorse(ctx, a, followUp); err != nil {
		t.Fatal(err)
	}
	if _, err := st.StartRootKeyRotation(ctx, followUp); err != nil {
		t.Fatal(err)
	}
	followUp.State = store.RotationRunning
	if level, err := r.rot.follow(ctx, followUp); err != nil || level != trustFull {
		t.Fatalf("follow(follow-up job) = %v, %v; want trustFull, nil", level, err)
	}
	if got := r.roots.IDs(); r.roots.ID() != done.ToID || !slices.Contains(got, a.ID()) {
		t.Errorf("root keys while the follow-up job runs = %q (active %q), want A %q held and B active", got, r.roots.ID(), a.ID())
	}
	if opens, closes := open.counts(uriA); opens != 1 || closes != 0 {
		t.Errorf("A opened %d times, closed %d times; want one handle, kept open", opens, closes)
	}
	if head := r.rot.headJob(); head.ID != followUp.ID {
		t.Errorf("job followed last = %s, want the follow-up %s", head.ID, followUp.ID)
	}
}

// TestFollowCatchesUpMissedJobs: a replica that was not running while
// A -> B and B -> C ran follows the latest job once it verified the one it
// missed, job by job: it ends on C, with B (needed only to verify B -> C)
// opened and closed again, never in its keyring. A missed job whose
// endorsement does not verify stops it there: its keyring stays as it
// was, and no later key is opened.
func TestFollowCatchesUpMissedJobs(t *testing.T) {
	ctx := context.Background()
	t.Run("genuine jobs", func(t *testing.T) {
		st := openSQLite(t)
		uriA, uriB, uriC := keyFile(t), keyFile(t), keyFile(t)
		open := newTrackingOpener()
		var logs syncBuffer
		opts := fastOptions(t)
		opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
		missed := newReplica(t, st, nil, uriA, open, opts) // made before the jobs, not running
		a := newReplica(t, st, nil, uriA, nil, fastOptions(t))
		items := seal(t, a.ring, "k", 2)
		stop := a.run(t)
		for _, uri := range []string{uriB, uriC} {
			if _, err := a.rot.Start(ctx, uri); err != nil {
				t.Fatalf("Start(uri) err = %v, want nil", err)
			}
			waitDone(t, st, 30*time.Second)
		}
		stop()
		latest, err := st.LatestRootKeyRotation(ctx)
		if err != nil {
			t.Fatal(err)
		}
		missed.run(t)
		deadline := time.Now().Add(5 * time.Second)
		for missed.roots.ID() != latest.ToID && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		idA := openRoot(t, uriA).ID()
		if got := missed.roots.IDs(); missed.roots.ID() != latest.ToID || !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values([]string{idA, latest.ToID}))) {
			t.Errorf("root keys after catching up = %q (active %q), want A and C, C %q active", got, missed.roots.ID(), latest.ToID)
		}
		if opens, closes := open.counts(uriB); opens != 1 || closes != 1 {
			t.Errorf("B opened %d times, closed %d times; want once, to verify B -> C, and closed", opens, closes)
		}
		if n := logs.count("root-key rotation refused"); n != 0 || logs.count("rotations this replica missed") != 1 {
			t.Errorf("log:\n%s\nwant no refusal, and the missed job reported once", logs.String())
		}
		if head := missed.rot.headJob(); head.ID != latest.ID {
			t.Errorf("job followed last = %s, want %s", head.ID, latest.ID)
		}
		check(t, missed.ring, items)
	})
	t.Run("a missed job that does not verify", func(t *testing.T) {
		st := openSQLite(t)
		uris := map[string]string{"A": keyFile(t), "B": keyFile(t), "C": keyFile(t), "D": keyFile(t)}
		keys := map[string]kms.RootKey{}
		for name, uri := range uris {
			keys[name] = openRoot(t, uri)
		}
		open := newTrackingOpener()
		var logs syncBuffer
		opts := fastOptions(t)
		opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
		r := newReplica(t, st, nil, uris["A"], open, opts)
		prev := ""
		for _, j := range []struct{ id, from, to string }{{"rkr-ab", "A", "B"}, {"rkr-bc", "B", "C"}, {"rkr-cd", "C", "D"}} {
			job := store.RootKeyRotation{ID: j.id, PrevID: prev, FromID: keys[j.from].ID(), FromURI: uris[j.from], ToID: keys[j.to].ID(), ToURI: uris[j.to]}
			var err error
			if job.Endorsement, err = Endorse(ctx, keys[j.from], job); err != nil {
				t.Fatal(err)
			}
			if j.id == "rkr-bc" {
				job.Endorsement = bytes.Repeat([]byte{7}, len(job.Endorsement)) // forged
			}
			if _, err := st.StartRootKeyRotation(ctx, job); err != nil {
				t.Fatal(err)
			}
			if _, err := st.FinishRootKeyRotation(ctx, job.ID); err != nil {
				t.Fatal(err)
			}
			prev = job.ID
		}
		r.run(t)
		time.Sleep(300 * time.Millisecond)
		if got := r.roots.IDs(); r.roots.ID() != keys["A"].ID() || !slices.Equal(got, []string{keys["A"].ID()}) {
			t.Errorf("root keys = %q (active %q), want only A %q", got, r.roots.ID(), keys["A"].ID())
		}
		if opens, closes := open.counts(uris["B"]); opens != 1 || closes != 1 {
			t.Errorf("B opened %d times, closed %d times; want once, to verify B -> C, and closed", opens, closes)
		}
		for _, name := range []string{"C", "D"} {
			if n, _ := open.counts(uris[name]); n != 0 {
				t.Errorf("%s opened %d times, want never", name, n)
			}
		}
		if n := logs.count("root-key rotation refused"); n != 1 || !strings.Contains(logs.String(), "job=rkr-bc") {
			t.Errorf("refusal logged %d times, want once naming rkr-bc; log:\n%s", n, logs.String())
		}
		if head := r.rot.headJob(); head.ID != "" {
			t.Errorf("job followed last = %q, want none", head.ID)
		}
	})
}
