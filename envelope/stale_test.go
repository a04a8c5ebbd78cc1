package envelope

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
)

// outageKEK is a root key that can be made unreachable, as an HSM whose
// token is pulled out: every call then fails with kms.ErrUnavailable. It
// counts the unwraps tried, reachable or not.
type outageKEK struct {
	KEK
	down    atomic.Bool
	unwraps atomic.Int64
}

func (k *outageKEK) Wrap(ctx context.Context, pt, aad []byte) ([]byte, error) {
	if k.down.Load() {
		return nil, fmt.Errorf("test HSM: token not present: %w", kms.ErrUnavailable)
	}
	return k.KEK.Wrap(ctx, pt, aad)
}

func (k *outageKEK) Unwrap(ctx context.Context, ct, aad []byte) ([]byte, error) {
	k.unwraps.Add(1)
	if k.down.Load() {
		return nil, fmt.Errorf("test HSM: token not present: %w", kms.ErrUnavailable)
	}
	return k.KEK.Unwrap(ctx, ct, aad)
}

// outageStore is a key store whose GetKey can be made to fail as a dropped
// database connection does. It counts the reads tried.
type outageStore struct {
	store.Store
	down  atomic.Bool
	reads atomic.Int64
}

func (s *outageStore) GetKey(ctx context.Context, name string) (store.Key, error) {
	s.reads.Add(1)
	if s.down.Load() {
		return store.Key{}, fmt.Errorf("test database: connection reset: %w", store.ErrUnavailable)
	}
	return s.Store.GetKey(ctx, name)
}

// staleFixture is a keyring over an outageKEK and an outageStore, with a
// fake clock and a log the test reads.
type staleFixture struct {
	*fixture
	ring *Keyring
	kek  *outageKEK
	st   *outageStore
	logs *syncLog
}

type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// warnings counts the stale warnings logged.
func (l *syncLog) warnings() int {
	return strings.Count(l.String(), "serving a cached key past cache.max_age")
}

const (
	testMaxAge = time.Minute
	testGrace  = 10 * time.Minute
)

func newStaleFixture(t *testing.T, opts Options) *staleFixture {
	t.Helper()
	f := newFixture(t, Options{})
	sf := &staleFixture{fixture: f, kek: &outageKEK{KEK: f.kek}, st: &outageStore{Store: f.store}, logs: &syncLog{}}
	if opts.CacheMaxAge == 0 {
		opts.CacheMaxAge = testMaxAge
	}
	if opts.CacheStaleGrace == 0 {
		opts.CacheStaleGrace = testGrace
	}
	opts.Now, opts.AfterFunc = f.now.Now, f.now.AfterFunc
	opts.Logger = slog.New(slog.NewTextHandler(sf.logs, nil))
	ring, err := New(sf.st, sf.kek, opts)
	if err != nil {
		t.Fatalf("New() err = %v, want nil", err)
	}
	sf.ring = ring
	return sf
}

func (f *staleFixture) encrypt(t *testing.T, name string) error {
	t.Helper()
	_, _, err := f.ring.Encrypt(context.Background(), name, []byte("card 4111 1111 1111 1111"), nil)
	return err
}

// TestStaleIfError: a cached key past CacheMaxAge keeps serving while the
// root key or the store is down, tries a reload at most every staleRetry,
// warns at most once a minute, and fails once the grace has passed; it
// loads afresh when the outage ends.
func TestStaleIfError(t *testing.T) {
	tests := []struct {
		name    string
		setDown func(f *staleFixture, down bool)
		tries   func(f *staleFixture) int64 // reloads tried so far
		wantErr error
	}{
		{"root key unavailable", func(f *staleFixture, down bool) { f.kek.down.Store(down) }, func(f *staleFixture) int64 { return f.kek.unwraps.Load() }, kms.ErrUnavailable},
		{"store unavailable", func(f *staleFixture, down bool) { f.st.down.Store(down) }, func(f *staleFixture) int64 { return f.st.reads.Load() }, ErrStoreUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := newStaleFixture(t, Options{})
			if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "warm", Type: store.KeyTypeAES256GCM}); err != nil {
				t.Fatalf("CreateKey() err = %v, want nil", err)
			}
			ct, _, err := f.ring.Encrypt(ctx, "warm", []byte("before the outage"), nil)
			if err != nil {
				t.Fatalf("Encrypt() err = %v, want nil", err)
			}
			tt.setDown(f, true)
			start := tt.tries(f)

			// Within CacheMaxAge: a plain hit, nothing tried.
			if err := f.encrypt(t, "warm"); err != nil {
				t.Fatalf("Encrypt() within max age err = %v, want nil", err)
			}
			if got := tt.tries(f) - start; got != 0 {
				t.Errorf("reloads tried within max age = %d, want 0", got)
			}

			// Past CacheMaxAge: one reload fails, the stale entry serves, and
			// for staleRetry nothing else is tried.
			f.now.Advance(testMaxAge + time.Second)
			for i := range 50 {
				if err := f.encrypt(t, "warm"); err != nil {
					t.Fatalf("Encrypt() #%d past max age in an outage err = %v, want nil (served stale)", i, err)
				}
			}
			if pt, _, err := f.ring.Decrypt(ctx, ct, nil); err != nil || string(pt) != "before the outage" {
				t.Fatalf("Decrypt() past max age in an outage = %q, %v, want the plaintext, nil", pt, err)
			}
			if got := tt.tries(f) - start; got != 1 {
				t.Errorf("reloads tried in the first %v of the outage = %d, want 1", staleRetry, got)
			}
			if st := f.ring.Cache().Stats(); st.Stale != 51 {
				t.Errorf("Stats().Stale = %d after 51 calls served stale, want 51", st.Stale)
			}
			f.now.Advance(staleRetry)
			for range 10 {
				if err := f.encrypt(t, "warm"); err != nil {
					t.Fatalf("Encrypt() %v later err = %v, want nil (served stale)", staleRetry, err)
				}
			}
			if got := tt.tries(f) - start; got != 2 {
				t.Errorf("reloads tried after %v more = %d, want 2", staleRetry, got)
			}
			if got := f.logs.warnings(); got != 1 {
				t.Errorf("stale warnings = %d within a minute, want 1:\n%s", got, f.logs)
			}
			f.now.Advance(staleWarnEvery)
			if err := f.encrypt(t, "warm"); err != nil {
				t.Fatalf("Encrypt() a minute later err = %v, want nil (served stale)", err)
			}
			if got := f.logs.warnings(); got != 2 {
				t.Errorf("stale warnings = %d a minute later, want 2", got)
			}
			if log := f.logs.String(); !strings.Contains(log, "key=warm") || strings.Contains(log, "4111") {
				t.Errorf("log = %q, want the key's name and no plaintext", log)
			}

			// Past the grace: the entry is gone and calls fail.
			f.now.Advance(testGrace)
			err = f.encrypt(t, "warm")
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Encrypt() past max age + grace err = %v, want %v", err, tt.wantErr)
			}
			if st := f.ring.Cache().Stats(); st.Size != 0 {
				t.Errorf("Stats().Size = %d past the grace, want 0", st.Size)
			}

			// The outage ends: the key loads afresh.
			tt.setDown(f, false)
			if err := f.encrypt(t, "warm"); err != nil {
				t.Fatalf("Encrypt() after the outage err = %v, want nil", err)
			}
			if pt, _, err := f.ring.Decrypt(ctx, ct, nil); err != nil || string(pt) != "before the outage" {
				t.Errorf("Decrypt() after the outage = %q, %v, want the plaintext, nil", pt, err)
			}
		})
	}
}

// TestStaleNotServedAfterChange: an expired entry whose key changed (through
// this keyring, or on another replica, seen by SyncCache or by the reload)
// is never served stale, even in an outage: a change is not an outage.
func TestStaleNotServedAfterChange(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, f *staleFixture, other *Keyring)
	}{
		{"disabled through this keyring", func(t *testing.T, f *staleFixture, _ *Keyring) {
			if _, err := f.ring.DisableKey(context.Background(), "warm"); err != nil {
				t.Fatalf("DisableKey() err = %v, want nil", err)
			}
		}},
		{"rotated on another replica, dropped by SyncCache", func(t *testing.T, f *staleFixture, other *Keyring) {
			if _, err := other.RotateKey(context.Background(), "warm"); err != nil {
				t.Fatalf("RotateKey() on the other replica err = %v, want nil", err)
			}
			if n, err := f.ring.SyncCache(context.Background()); err != nil || n != 1 {
				t.Fatalf("SyncCache() = %d, %v, want 1, nil", n, err)
			}
		}},
		{"rotated on another replica, seen at reload", func(t *testing.T, f *staleFixture, other *Keyring) {
			if _, err := other.RotateKey(context.Background(), "warm"); err != nil {
				t.Fatalf("RotateKey() on the other replica err = %v, want nil", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newStaleFixture(t, Options{})
			if _, err := f.ring.CreateKey(context.Background(), KeySpec{Name: "warm", Type: store.KeyTypeAES256GCM}); err != nil {
				t.Fatalf("CreateKey() err = %v, want nil", err)
			}
			// The other replica shares the store and a reachable root key.
			other, err := New(f.store, f.fixture.kek, Options{Now: f.now.Now, AfterFunc: f.now.AfterFunc})
			if err != nil {
				t.Fatal(err)
			}
			f.now.Advance(testMaxAge + time.Second)
			f.kek.down.Store(true)
			tt.change(t, f, other)
			err = f.encrypt(t, "warm")
			if !errors.Is(err, kms.ErrUnavailable) {
				t.Errorf("Encrypt() of a changed key in an outage err = %v, want kms.ErrUnavailable (not served stale)", err)
			}
			if st := f.ring.Cache().Stats(); st.Stale != 0 {
				t.Errorf("Stats().Stale = %d, want 0", st.Stale)
			}
		})
	}
}

// TestStaleGraceOff: with NoStaleGrace an expired entry is dropped at once
// and an outage fails the next call.
func TestStaleGraceOff(t *testing.T) {
	f := newStaleFixture(t, Options{CacheStaleGrace: NoStaleGrace})
	if _, err := f.ring.CreateKey(context.Background(), KeySpec{Name: "warm", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatalf("CreateKey() err = %v, want nil", err)
	}
	f.now.Advance(testMaxAge)
	if st := f.ring.Cache().Stats(); st.Size != 0 {
		t.Errorf("Stats().Size = %d at max age without grace, want 0", st.Size)
	}
	f.kek.down.Store(true)
	if err := f.encrypt(t, "warm"); !errors.Is(err, kms.ErrUnavailable) {
		t.Errorf("Encrypt() in an outage without grace err = %v, want kms.ErrUnavailable", err)
	}
}

// TestStaleBoundedByMaxKeys: expired entries count against CacheMaxKeys and
// are the first evicted.
func TestStaleBoundedByMaxKeys(t *testing.T) {
	f := newStaleFixture(t, Options{CacheMaxKeys: 2})
	ctx := context.Background()
	for _, n := range []string{"k1", "k2"} {
		if _, err := f.ring.CreateKey(ctx, KeySpec{Name: n, Type: store.KeyTypeAES256GCM}); err != nil {
			t.Fatal(err)
		}
	}
	f.now.Advance(testMaxAge + time.Second)
	if st := f.ring.Cache().Stats(); st.Size != 2 {
		t.Errorf("Stats().Size = %d with two expired entries in grace, want 2", st.Size)
	}
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "k3", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatal(err)
	}
	if st := f.ring.Cache().Stats(); st.Size != 2 {
		t.Errorf("Stats().Size = %d after a third key, want 2 (CacheMaxKeys)", st.Size)
	}
	f.kek.down.Store(true)
	if err := f.encrypt(t, "k3"); err != nil {
		t.Errorf("Encrypt(k3) err = %v, want nil (fresh)", err)
	}
	served := 0
	for _, n := range []string{"k1", "k2"} {
		switch err := f.encrypt(t, n); {
		case err == nil:
			served++
		case !errors.Is(err, kms.ErrUnavailable):
			t.Errorf("Encrypt(%s) err = %v, want nil or kms.ErrUnavailable", n, err)
		}
	}
	if served != 1 {
		t.Errorf("%d of the two expired keys served stale, want 1 (the other was evicted for k3)", served)
	}
}

// TestStaleConcurrentCallersTryOnce: many callers of an expired key in an
// outage make one reload between them.
func TestStaleConcurrentCallersTryOnce(t *testing.T) {
	f := newStaleFixture(t, Options{})
	if _, err := f.ring.CreateKey(context.Background(), KeySpec{Name: "warm", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatal(err)
	}
	f.now.Advance(testMaxAge + time.Second)
	f.kek.down.Store(true)
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 20 {
				if err := f.encrypt(t, "warm"); err != nil {
					t.Errorf("Encrypt() in an outage err = %v, want nil (served stale)", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := f.kek.unwraps.Load(); got != 1 {
		t.Errorf("unwraps tried by 1280 calls in an outage = %d, want 1", got)
	}
}

// TestKeyAttributesInStoreOutage: authorization reads a stale key's labels
// while the store is down, until the grace ends.
func TestKeyAttributesInStoreOutage(t *testing.T) {
	f := newStaleFixture(t, Options{})
	ctx := context.Background()
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "warm", Type: store.KeyTypeAES256GCM, Labels: map[string]string{LabelOwner: "spiffe://bank.example/payments"}}); err != nil {
		t.Fatal(err)
	}
	f.now.Advance(testMaxAge + time.Second)
	f.st.down.Store(true)
	if a, err := f.ring.KeyAttributes(ctx, "warm"); err != nil || a.Owner != "spiffe://bank.example/payments" {
		t.Errorf("KeyAttributes() in a store outage = %+v, %v, want the owner, nil", a, err)
	}
	f.now.Advance(testGrace)
	if _, err := f.ring.KeyAttributes(ctx, "warm"); !errors.Is(err, ErrStoreUnavailable) {
		t.Errorf("KeyAttributes() past the grace err = %v, want ErrStoreUnavailable", err)
	}
}
