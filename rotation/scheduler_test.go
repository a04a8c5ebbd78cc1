package rotation

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
)

// schedClock is a fake clock the keyrings, the stores and the schedulers
// of a test share.
type schedClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *schedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *schedClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// memKEK is a root key backed by a real AES-256-GCM key in memory.
type memKEK struct{ gcm cipher.AEAD }

func newMemKEK(t testing.TB) *memKEK {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return &memKEK{gcm: gcm}
}

func (k *memKEK) ID() string { return "mem-root-1" }

func (k *memKEK) Wrap(_ context.Context, pt, aad []byte) ([]byte, error) {
	nonce := make([]byte, k.gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.gcm.Seal(nonce, nonce, pt, aad), nil
}

func (k *memKEK) Unwrap(_ context.Context, ct, aad []byte) ([]byte, error) {
	if len(ct) < k.gcm.NonceSize() {
		return nil, errors.New("unwrap failed")
	}
	return k.gcm.Open(nil, ct[:k.gcm.NonceSize()], ct[k.gcm.NonceSize():], aad)
}

// schedReplica is one tresor replica: its own store connection, keyring
// and scheduler.
type schedReplica struct {
	store store.Store
	ring  *envelope.Keyring
	sched *Scheduler
}

// schedReplicas returns n replicas sharing one SQLite file, one root key
// and one fake clock.
func schedReplicas(t testing.TB, n int, opts SchedulerOptions) ([]*schedReplica, *schedClock) {
	t.Helper()
	ctx := context.Background()
	clock := &schedClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "keys.db")
	kek := newMemKEK(t)
	out := make([]*schedReplica, n)
	for i := range out {
		st, err := store.OpenSQLite(ctx, path, store.WithClock(clock.Now))
		if err != nil {
			t.Fatalf("OpenSQLite() err = %v, want nil", err)
		}
		t.Cleanup(func() { st.Close() })
		ring, err := envelope.New(st, kek, envelope.Options{Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		o := opts
		o.Keyring, o.Store, o.Holder, o.Now = ring, st, fmt.Sprintf("replica-%d", i), clock.Now
		if o.Logger == nil {
			o.Logger = slog.New(slog.DiscardHandler)
		}
		sched, err := NewScheduler(o)
		if err != nil {
			t.Fatalf("NewScheduler() err = %v, want nil", err)
		}
		out[i] = &schedReplica{store: st, ring: ring, sched: sched}
	}
	return out, clock
}

func mustCreate(t testing.TB, ring *envelope.Keyring, spec envelope.KeySpec) {
	t.Helper()
	if spec.Type == store.KeyTypeUnspecified {
		spec.Type = store.KeyTypeAES256GCM
	}
	if _, err := ring.CreateKey(context.Background(), spec); err != nil {
		t.Fatalf("CreateKey(%s) err = %v, want nil", spec.Name, err)
	}
}

func mustGet(t testing.TB, ring *envelope.Keyring, name string) store.Key {
	t.Helper()
	k, err := ring.GetKey(context.Background(), name)
	if err != nil {
		t.Fatalf("GetKey(%s) err = %v, want nil", name, err)
	}
	return k
}

func tick(t testing.TB, s *Scheduler) TickReport {
	t.Helper()
	rep, err := s.Tick(context.Background())
	if err != nil {
		t.Fatalf("Tick() err = %v, want nil", err)
	}
	return rep
}

func TestSchedulerRotatesWhenDue(t *testing.T) {
	reps, clock := schedReplicas(t, 1, SchedulerOptions{PageSize: 2})
	r := reps[0]
	for i := range 5 {
		mustCreate(t, r.ring, envelope.KeySpec{Name: fmt.Sprintf("daily-%d", i), RotationPeriod: 24 * time.Hour})
	}
	mustCreate(t, r.ring, envelope.KeySpec{Name: "manual"})
	mustCreate(t, r.ring, envelope.KeySpec{Name: "off", RotationPeriod: time.Hour})
	if _, err := r.ring.DisableKey(context.Background(), "off"); err != nil {
		t.Fatal(err)
	}
	created := clock.Now()
	steps := []struct {
		name        string
		advance     time.Duration
		wantRotated int
		wantPrimary uint32
	}{
		{"not before the period", 24*time.Hour - time.Second, 0, 1},
		{"when the period has passed", time.Second, 5, 2},
		{"not twice", 0, 0, 2},
		{"not before the new version's period", 23 * time.Hour, 0, 2},
		{"again a period later", time.Hour, 5, 3},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			clock.Advance(s.advance)
			rep := tick(t, r.sched)
			if !rep.Leader || rep.Rotated != s.wantRotated || rep.Scanned != 7 {
				t.Errorf("Tick() at +%v = %+v, want leader, %d rotated of 7 scanned", clock.Now().Sub(created), rep, s.wantRotated)
			}
			for i := range 5 {
				if k := mustGet(t, r.ring, fmt.Sprintf("daily-%d", i)); k.PrimaryVersion != s.wantPrimary {
					t.Errorf("daily-%d primary version = %d, want %d", i, k.PrimaryVersion, s.wantPrimary)
				}
			}
		})
	}
	for _, name := range []string{"manual", "off"} {
		if k := mustGet(t, r.ring, name); k.PrimaryVersion != 1 {
			t.Errorf("%s primary version = %d, want 1 (no period, or disabled)", name, k.PrimaryVersion)
		}
	}
	k := mustGet(t, r.ring, "daily-0")
	if next, ok := envelope.NextRotationTime(k); !ok || !next.Equal(created.Add(72*time.Hour)) {
		t.Errorf("NextRotationTime(daily-0) = %v, %v; want %v", next, ok, created.Add(72*time.Hour))
	}
}

func TestSchedulerRetires(t *testing.T) {
	ctx := context.Background()
	reps, clock := schedReplicas(t, 1, SchedulerOptions{})
	r := reps[0]
	mustCreate(t, r.ring, envelope.KeySpec{Name: "by-count", RetireAfterVersions: 2})
	mustCreate(t, r.ring, envelope.KeySpec{Name: "by-age", RetireAfter: 48 * time.Hour})
	mustCreate(t, r.ring, envelope.KeySpec{Name: "rotating", RotationPeriod: 100 * time.Hour, RetireAfterVersions: 1})
	for range 3 {
		if _, err := r.ring.RotateKey(ctx, "by-count"); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(time.Hour)
	if _, err := r.ring.RotateKey(ctx, "by-age"); err != nil { // v1 superseded at +1h
		t.Fatal(err)
	}
	steps := []struct {
		name                     string
		advance                  time.Duration
		wantRotated, wantRetired int
		wantMin                  map[string]uint32
	}{
		{"by count at once", 0, 0, 1, map[string]uint32{"by-count": 3, "by-age": 1, "rotating": 1}},
		{"by age not yet", 48*time.Hour - time.Second, 0, 0, map[string]uint32{"by-count": 3, "by-age": 1, "rotating": 1}},
		{"by age once superseded 48h", time.Second, 0, 1, map[string]uint32{"by-count": 3, "by-age": 2, "rotating": 1}},
		{"rotated and retired in one tick", 51 * time.Hour, 1, 1, map[string]uint32{"by-count": 3, "by-age": 2, "rotating": 2}},
		{"nothing more", time.Hour, 0, 0, map[string]uint32{"by-count": 3, "by-age": 2, "rotating": 2}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			clock.Advance(s.advance)
			rep := tick(t, r.sched)
			if rep.Rotated != s.wantRotated || rep.Retired != s.wantRetired || rep.Failed != 0 {
				t.Errorf("Tick() = %+v, want %d rotated, %d retired", rep, s.wantRotated, s.wantRetired)
			}
			for name, want := range s.wantMin {
				k := mustGet(t, r.ring, name)
				if k.MinDecryptionVersion != want || k.MinDecryptionVersion > k.PrimaryVersion {
					t.Errorf("%s min decryption version = %d (primary %d), want %d", name, k.MinDecryptionVersion, k.PrimaryVersion, want)
				}
			}
		})
	}
}

func TestSchedulerDestroysAfterTheWait(t *testing.T) {
	ctx := context.Background()
	reps, clock := schedReplicas(t, 1, SchedulerOptions{})
	r := reps[0]
	mustCreate(t, r.ring, envelope.KeySpec{Name: "old"})
	mustCreate(t, r.ring, envelope.KeySpec{Name: "kept"})
	ct, _, err := r.ring.Encrypt(ctx, "old", []byte("IBAN DE89 3704 0044 0532 0130 00"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	week := 7 * 24 * time.Hour
	if _, err := r.ring.ScheduleKeyDeletion(ctx, "old", week); err != nil {
		t.Fatalf("ScheduleKeyDeletion(old) err = %v, want nil", err)
	}
	if _, err := r.ring.CancelKeyDeletion(ctx, "old"); err != nil {
		t.Fatalf("CancelKeyDeletion(old) err = %v, want nil", err)
	}
	clock.Advance(week) // the cancelled schedule would have come due now
	if rep := tick(t, r.sched); rep.Destroyed != 0 {
		t.Fatalf("Tick() after a cancelled schedule = %+v, want nothing destroyed", rep)
	}
	if _, err := r.ring.ScheduleKeyDeletion(ctx, "old", week); err != nil {
		t.Fatalf("ScheduleKeyDeletion(old) again err = %v, want nil", err)
	}
	clock.Advance(week - time.Minute)
	if rep := tick(t, r.sched); rep.Destroyed != 0 {
		t.Fatalf("Tick() a minute before the deletion time = %+v, want nothing destroyed", rep)
	}
	clock.Advance(time.Minute)
	destroyedAt := clock.Now()
	if rep := tick(t, r.sched); rep.Destroyed != 1 || rep.Failed != 0 {
		t.Fatalf("Tick() at the deletion time = %+v, want 1 destroyed", rep)
	}
	k := mustGet(t, r.ring, "old")
	if k.State != store.KeyStateDestroyed || !k.DestroyTime.Equal(destroyedAt) {
		t.Errorf("GetKey(old) = %v at %v, want DESTROYED at %v", k.State, k.DestroyTime, destroyedAt)
	}
	if stored, err := r.store.GetKey(ctx, "old"); err != nil || stored.WrappedKeyset != nil {
		t.Errorf("stored keyset of the destroyed key = %d bytes, %v; want none", len(stored.WrappedKeyset), err)
	}
	if _, _, err := r.ring.Decrypt(ctx, ct, []byte("ad")); !errors.Is(err, envelope.ErrKeyDestroyed) {
		t.Errorf("Decrypt(ciphertext of the destroyed key) err = %v, want ErrKeyDestroyed", err)
	}
	if k := mustGet(t, r.ring, "kept"); k.State != store.KeyStateEnabled {
		t.Errorf("kept = %v, want ENABLED", k.State)
	}
	if rep := tick(t, r.sched); rep.Destroyed != 0 {
		t.Errorf("Tick() after destruction = %+v, want nothing more destroyed", rep)
	}
}

// TestSchedulerLease: two replicas share a store; only the lease holder
// acts, and the other takes over once the holder stops renewing.
func TestSchedulerLease(t *testing.T) {
	ttl := 30 * time.Second
	reps, clock := schedReplicas(t, 2, SchedulerOptions{LeaseTTL: ttl})
	a, b := reps[0], reps[1]
	mustCreate(t, a.ring, envelope.KeySpec{Name: "k1", RotationPeriod: time.Hour})
	mustCreate(t, a.ring, envelope.KeySpec{Name: "k2", RotationPeriod: time.Hour + 10*time.Second})
	clock.Advance(time.Hour)
	if rep := tick(t, a.sched); !rep.Leader || rep.Rotated != 1 {
		t.Fatalf("A.Tick() = %+v, want leader with k1 rotated", rep)
	}
	clock.Advance(10 * time.Second) // k2 is due now; A's lease runs
	before := mustGet(t, b.ring, "k2").Revision
	if rep := tick(t, b.sched); rep.Leader || rep.Rotated != 0 || rep.Scanned != 0 {
		t.Fatalf("B.Tick() while A holds the lease = %+v, want nothing done", rep)
	}
	if k := mustGet(t, b.ring, "k2"); k.Revision != before {
		t.Errorf("B changed k2 without the lease: revision %d -> %d", before, k.Revision)
	}
	if rep := tick(t, a.sched); !rep.Leader || rep.Rotated != 1 {
		t.Fatalf("A.Tick() renewing = %+v, want leader with k2 rotated", rep)
	}
	clock.Advance(ttl - time.Second)
	if rep := tick(t, b.sched); rep.Leader {
		t.Fatalf("B.Tick() %v after A renewed = %+v, want not leader", ttl-time.Second, rep)
	}
	// A stops renewing (its replica died): once the lease lapses B takes
	// over, and A, back, finds it taken.
	clock.Advance(2*time.Second + time.Hour) // past the TTL; k1 and k2 due again
	if rep := tick(t, b.sched); !rep.Leader || rep.Rotated != 2 {
		t.Fatalf("B.Tick() after A's lease lapsed = %+v, want leader with 2 rotated", rep)
	}
	if rep := tick(t, a.sched); rep.Leader || rep.Scanned != 0 {
		t.Errorf("A.Tick() after B took over = %+v, want not leader", rep)
	}
	for _, name := range []string{"k1", "k2"} {
		if k := mustGet(t, a.ring, name); k.PrimaryVersion != 3 {
			t.Errorf("%s primary version = %d, want 3 (each due rotation done once)", name, k.PrimaryVersion)
		}
	}
}

// fakeKeyring lists fixed keys, all due for rotation, and fails to rotate
// while fail is set.
type fakeKeyring struct {
	keys    []store.Key
	fail    bool
	rotates int
}

var errFake = errors.New("root key unreachable")

func (f *fakeKeyring) ListKeys(context.Context, int, string) ([]store.Key, string, error) {
	return f.keys, "", nil
}

func (f *fakeKeyring) RotateIfDue(_ context.Context, name string) (store.Key, bool, error) {
	f.rotates++
	if f.fail {
		return store.Key{}, false, errFake
	}
	return store.Key{Name: name}, true, nil
}

func (f *fakeKeyring) RetireVersions(_ context.Context, name string) (store.Key, bool, error) {
	return store.Key{Name: name}, false, nil
}

func (f *fakeKeyring) DestroyIfDue(_ context.Context, name string) (store.Key, bool, error) {
	return store.Key{Name: name}, false, nil
}

// fakeLeaser grants the lease, or fails while failures > 0.
type fakeLeaser struct {
	failures int
	acquired int
	released bool
}

func (l *fakeLeaser) AcquireLease(context.Context, string, string, time.Duration) (bool, error) {
	l.acquired++
	if l.failures > 0 {
		l.failures--
		return false, errors.New("store unreachable")
	}
	return true, nil
}

func (l *fakeLeaser) ReleaseLease(context.Context, string, string) error {
	l.released = true
	return nil
}

func dueKey(name string, created time.Time) store.Key {
	return store.Key{Name: name, State: store.KeyStateEnabled, RotationPeriod: time.Hour, PrimaryVersion: 1, MinDecryptionVersion: 1,
		Versions: []store.Version{{Number: 1, CreateTime: created}}}
}

func TestSchedulerKeyFailureBacksOff(t *testing.T) {
	clock := &schedClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	kr := &fakeKeyring{keys: []store.Key{dueKey("k", clock.Now().Add(-2*time.Hour))}, fail: true}
	s, err := NewScheduler(SchedulerOptions{Keyring: kr, Store: &fakeLeaser{}, Holder: "h", Interval: time.Minute, MaxBackoff: 4 * time.Minute, Now: clock.Now, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		advance    time.Duration
		fail       bool
		wantFailed int
		wantSkip   int
		wantRotate int
	}{
		{0, true, 1, 0, 0},                // fails: retry in 1m
		{59 * time.Second, true, 0, 1, 0}, // still backing off
		{time.Second, true, 1, 0, 0},      // fails again: retry in 2m
		{time.Minute, true, 0, 1, 0},      // backing off
		{time.Minute, true, 1, 0, 0},      // third failure: 4m (the cap)
		{4 * time.Minute, true, 1, 0, 0},  // fourth: still 4m
		{4 * time.Minute, false, 0, 0, 1}, // works
		{time.Second, false, 0, 0, 1},     // no backoff left
	}
	for i, st := range steps {
		clock.Advance(st.advance)
		kr.fail = st.fail
		rep := tick(t, s)
		if rep.Failed != st.wantFailed || rep.Skipped != st.wantSkip || rep.Rotated != st.wantRotate {
			t.Errorf("step %d: Tick() = %+v, want %d failed, %d skipped, %d rotated", i, rep, st.wantFailed, st.wantSkip, st.wantRotate)
		}
	}
}

func TestSchedulerRunBacksOffAndReleases(t *testing.T) {
	clock := &schedClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	leaser := &fakeLeaser{failures: 4}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waits []time.Duration
	after := func(d time.Duration) <-chan time.Time {
		waits = append(waits, d)
		if len(waits) == 7 {
			cancel()
		}
		ch := make(chan time.Time, 1)
		ch <- clock.Now()
		return ch
	}
	s, err := NewScheduler(SchedulerOptions{Keyring: &fakeKeyring{}, Store: leaser, Holder: "h", Interval: time.Minute, MaxBackoff: 5 * time.Second, Now: clock.Now, After: after, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); err != nil {
		t.Fatalf("Run() err = %v, want nil", err)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, time.Minute, time.Minute, time.Minute}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("Run() waits = %v, want %v (1s doubling to the 5s cap while the store fails, then the interval)", waits, want)
	}
	if !leaser.released {
		t.Errorf("Run() returned without releasing the lease")
	}
}

func TestNewSchedulerValidates(t *testing.T) {
	tests := []struct {
		name string
		opts SchedulerOptions
	}{
		{"no keyring", SchedulerOptions{Store: &fakeLeaser{}, Holder: "h"}},
		{"no store", SchedulerOptions{Keyring: &fakeKeyring{}, Holder: "h"}},
		{"no holder", SchedulerOptions{Keyring: &fakeKeyring{}, Store: &fakeLeaser{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewScheduler(tt.opts); err == nil {
				t.Errorf("NewScheduler(%s) err = nil, want an error", tt.name)
			}
		})
	}
}

// slowKeyring is fakeKeyring whose rotations each take a while on the
// scheduler's clock, as an HSM call can.
type slowKeyring struct {
	fakeKeyring
	clock *schedClock
	each  time.Duration
}

func (s *slowKeyring) RotateIfDue(ctx context.Context, name string) (store.Key, bool, error) {
	s.clock.Advance(s.each)
	return s.fakeKeyring.RotateIfDue(ctx, name)
}

// TestSchedulerRenewsTheLeaseWithinATick: a page of slow keys does not
// outlast the lease; the scheduler renews it as the tick goes, and stops
// when it is lost.
func TestSchedulerRenewsTheLeaseWithinATick(t *testing.T) {
	clock := &schedClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	var keys []store.Key
	for i := range 10 {
		keys = append(keys, dueKey(fmt.Sprintf("k%d", i), clock.Now().Add(-2*time.Hour)))
	}
	kr := &slowKeyring{fakeKeyring: fakeKeyring{keys: keys}, clock: clock, each: 5 * time.Second}
	leaser := &fakeLeaser{}
	s, err := NewScheduler(SchedulerOptions{Keyring: kr, Store: leaser, Holder: "h", Interval: time.Minute, LeaseTTL: 30 * time.Second, Now: clock.Now, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rep := tick(t, s)
	// 10 keys x 5 s = 50 s of work under a 30 s lease, renewed before a
	// key once more than 10 s (a third of the TTL) has passed: before the
	// 4th, 7th and 10th key, so the lease never goes 15 s unrenewed.
	if rep.Rotated != 10 || leaser.acquired != 4 {
		t.Errorf("Tick() = %+v with %d lease acquisitions, want 10 rotated and 4 acquisitions (the lease renewed within the tick)", rep, leaser.acquired)
	}
	// A lease lost in the middle of a tick stops it.
	leaser.acquired, kr.rotates = 0, 0
	lost := &losingLeaser{grants: 2}
	s2, err := NewScheduler(SchedulerOptions{Keyring: kr, Store: lost, Holder: "h", Interval: time.Minute, LeaseTTL: 30 * time.Second, Now: clock.Now, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if rep := tick(t, s2); rep.Rotated != 6 {
		t.Errorf("Tick() with the lease lost at the second renewal = %+v, want 6 rotated and then a stop", rep)
	}
}

// losingLeaser grants the lease grants times, then refuses it.
type losingLeaser struct{ grants int }

func (l *losingLeaser) AcquireLease(context.Context, string, string, time.Duration) (bool, error) {
	l.grants--
	return l.grants >= 0, nil
}

func (l *losingLeaser) ReleaseLease(context.Context, string, string) error { return nil }
