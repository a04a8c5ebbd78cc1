package envelope

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

// replicas returns n keyrings, each with its own connection to one SQLite
// file, the same root key and the same fake clock: n tresor replicas
// sharing a key store.
func replicas(t testing.TB, n int, opts Options) ([]*Keyring, *aeadKEK, *fakeClock) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys.db")
	clock := &fakeClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	opts.Now, opts.AfterFunc = clock.Now, clock.AfterFunc
	kek := newAEADKEK(t, "test-root-1")
	rings := make([]*Keyring, n)
	for i := range rings {
		s, err := store.OpenSQLite(ctx, path, store.WithClock(clock.Now))
		if err != nil {
			t.Fatalf("OpenSQLite() err = %v, want nil", err)
		}
		t.Cleanup(func() { s.Close() })
		if rings[i], err = New(s, kek, opts); err != nil {
			t.Fatalf("New() err = %v, want nil", err)
		}
	}
	return rings, kek, clock
}

// failingKEK is a root key whose Wrap fails while fail is set, as an HSM
// that went away would.
type failingKEK struct {
	*aeadKEK
	fail atomic.Bool
}

var errHSMGone = errors.New("hsm unreachable")

func (k *failingKEK) Wrap(ctx context.Context, pt, aad []byte) ([]byte, error) {
	if k.fail.Load() {
		return nil, errHSMGone
	}
	return k.aeadKEK.Wrap(ctx, pt, aad)
}

func TestUsageLimitRotatesTheKey(t *testing.T) {
	tests := []struct {
		name         string
		limit, block int64 // key's limit (0: the keyring's default) and reservation block
		encryptions  int
		wantVersions []uint32 // version of each ciphertext, in order, summarized as counts per version
		wantUses     map[uint32]int64
	}{
		{"limit 10, block 4", 10, 4, 25, []uint32{10, 10, 5}, map[uint32]int64{1: 10, 2: 10, 3: 8}},
		{"limit 1", 1, 1024, 3, []uint32{1, 1, 1}, map[uint32]int64{1: 1, 2: 1, 3: 1}},
		{"block larger than the limit", 3, 1024, 7, []uint32{3, 3, 1}, map[uint32]int64{1: 3, 2: 3, 3: 3}},
		{"default limit", 0, 1024, 5, []uint32{5}, map[uint32]int64{1: 1024}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, Options{UsageBlock: tt.block})
			if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM, UsageLimit: tt.limit}); err != nil {
				t.Fatalf("CreateKey() err = %v, want nil", err)
			}
			counts := map[uint32]uint32{}
			var cts [][]byte
			for i := range tt.encryptions {
				ct, ref, err := f.ring.Encrypt(ctx, "k", []byte("pan"), nil)
				if err != nil {
					t.Fatalf("Encrypt() #%d err = %v, want nil", i, err)
				}
				counts[ref.Version]++
				cts = append(cts, ct)
			}
			for i, want := range tt.wantVersions {
				if got := counts[uint32(i+1)]; got != want {
					t.Errorf("ciphertexts of version %d = %d, want %d (all: %v)", i+1, got, want, counts)
				}
			}
			uses, err := f.ring.Uses(ctx, "k")
			if err != nil {
				t.Fatalf("Uses(k) err = %v, want nil", err)
			}
			if len(uses) != len(tt.wantUses) {
				t.Errorf("Uses(k) = %v, want %v", uses, tt.wantUses)
			}
			for v, want := range tt.wantUses {
				if uses[v] != want {
					t.Errorf("Uses(k)[%d] = %d, want %d (all: %v)", v, uses[v], want, uses)
				}
			}
			for i, ct := range cts {
				if _, _, err := f.ring.Decrypt(ctx, ct, nil); err != nil {
					t.Errorf("Decrypt(ciphertext #%d) err = %v, want nil", i, err)
				}
			}
		})
	}
}

// TestEveryEncryptionCounts: Encrypt, GenerateDataKey, its form without
// plaintext and ReEncrypt's destination each spend a use; AES-256-SIV keys
// and decryption spend none.
func TestEveryEncryptionCounts(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{UsageBlock: 1})
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "gcm", Type: store.KeyTypeAES256GCM, UsageLimit: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "other", Type: store.KeyTypeAES256GCM, UsageLimit: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "siv", Type: store.KeyTypeAES256SIV, UsageLimit: 1}); err != nil {
		t.Fatal(err)
	}
	src, _, err := f.ring.Encrypt(ctx, "other", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"Encrypt", func() error { _, _, err := f.ring.Encrypt(ctx, "gcm", []byte("x"), nil); return err }},
		{"GenerateDataKey", func() error { _, err := f.ring.GenerateDataKey(ctx, "gcm", nil); return err }},
		{"GenerateDataKeyWithoutPlaintext", func() error { _, err := f.ring.GenerateDataKeyWithoutPlaintext(ctx, "gcm", nil); return err }},
		{"ReEncrypt to gcm", func() error { _, _, _, err := f.ring.ReEncrypt(ctx, src, nil, "gcm"); return err }},
	}
	for i, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if err := s.do(); err != nil {
				t.Fatalf("%s err = %v, want nil", s.name, err)
			}
			uses, err := f.ring.Uses(ctx, "gcm")
			if err != nil || uses[1] != int64(i+1) {
				t.Errorf("Uses(gcm) after %s = %v, %v; want version 1 at %d", s.name, uses, err, i+1)
			}
		})
	}
	for range 5 {
		ct, ref, err := f.ring.Encrypt(ctx, "siv", []byte("deterministic"), nil)
		if err != nil || ref.Version != 1 {
			t.Fatalf("Encrypt(siv) = version %d, %v; want version 1, nil: SIV keys have no usage limit", ref.Version, err)
		}
		if _, _, err := f.ring.Decrypt(ctx, ct, nil); err != nil {
			t.Fatalf("Decrypt(siv) err = %v, want nil", err)
		}
	}
	if uses, err := f.ring.Uses(ctx, "siv"); err != nil || len(uses) != 0 {
		t.Errorf("Uses(siv) = %v, %v; want none counted", uses, err)
	}
	if uses, err := f.ring.Uses(ctx, "other"); err != nil || uses[1] != 1 {
		t.Errorf("Uses(other) = %v, %v; want 1 (decryption by ReEncrypt counts nothing)", uses, err)
	}
}

// TestUsageLimitHoldsAcrossReplicas: replicas share one limit per version
// through the store, and a spent version is rotated once, not once per
// replica.
func TestUsageLimitHoldsAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	const limit = 6
	rings, _, _ := replicas(t, 3, Options{UsageBlock: 2})
	if _, err := rings[0].CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM, UsageLimit: limit}); err != nil {
		t.Fatal(err)
	}
	counts := map[uint32]int{}
	for i := range 30 {
		_, ref, err := rings[i%len(rings)].Encrypt(ctx, "k", []byte("x"), nil)
		if err != nil {
			t.Fatalf("Encrypt() #%d on replica %d err = %v, want nil", i, i%len(rings), err)
		}
		counts[ref.Version]++
	}
	k, err := rings[1].GetKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	uses, err := rings[2].Uses(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	for v, n := range counts {
		if n > limit || uses[v] > limit {
			t.Errorf("version %d sealed %d messages, reserved %d; want at most %d", v, n, uses[v], limit)
		}
	}
	// 30 messages need 5 versions of 6; replicas reserve in blocks of 2, so
	// at most one block per replica per version goes unspent.
	if n := len(k.Versions); n < 5 || n > 8 {
		t.Errorf("key has %d versions after 30 encryptions at %d per version, want 5 to 8 (one rotation per spent version)", n, limit)
	}
	for i := 1; i < len(k.Versions); i++ {
		if uses[k.Versions[i-1].Number] != limit {
			t.Errorf("version %d rotated away with %d uses reserved, want exactly %d", k.Versions[i-1].Number, uses[k.Versions[i-1].Number], limit)
		}
	}
}

func TestUsageLimitConcurrent(t *testing.T) {
	ctx := context.Background()
	const limit, workers, each = 37, 16, 40
	f := newFixture(t, Options{UsageBlock: 5})
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM, UsageLimit: limit}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	counts := map[uint32]int{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				_, ref, err := f.ring.Encrypt(ctx, "k", []byte("x"), nil)
				if err != nil {
					t.Errorf("Encrypt() err = %v, want nil", err)
					return
				}
				mu.Lock()
				counts[ref.Version]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	total := 0
	for v, n := range counts {
		total += n
		if n > limit {
			t.Errorf("version %d sealed %d messages, want at most %d", v, n, limit)
		}
	}
	if total != workers*each {
		t.Errorf("sealed %d messages, want %d", total, workers*each)
	}
	k, err := f.ring.GetKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if want := (workers*each + limit - 1) / limit; len(k.Versions) != want {
		t.Errorf("key has %d versions, want %d: one rotation per spent version", len(k.Versions), want)
	}
}

// TestSpentVersionWithoutRotationRefuses: when the key cannot be rotated
// (the root key is unreachable), encryption fails rather than exceed the
// limit, and resumes once rotation works.
func TestSpentVersionWithoutRotationRefuses(t *testing.T) {
	ctx := context.Background()
	kek := &failingKEK{aeadKEK: newAEADKEK(t, "test-root-1")}
	s, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ring, err := New(s, kek, Options{UsageBlock: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ring.CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM, UsageLimit: 2}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, _, err := ring.Encrypt(ctx, "k", []byte("x"), nil); err != nil {
			t.Fatalf("Encrypt() #%d err = %v, want nil", i, err)
		}
	}
	kek.fail.Store(true)
	for range 2 {
		if _, _, err := ring.Encrypt(ctx, "k", []byte("x"), nil); !errors.Is(err, ErrUsageLimitReached) || !errors.Is(err, errHSMGone) {
			t.Fatalf("Encrypt() with version 1 spent and the root key gone err = %v, want ErrUsageLimitReached wrapping the root key's error", err)
		}
	}
	if uses, err := ring.Uses(ctx, "k"); err != nil || uses[1] != 2 {
		t.Errorf("Uses(k) = %v, %v; want version 1 at exactly 2", uses, err)
	}
	kek.fail.Store(false)
	if _, ref, err := ring.Encrypt(ctx, "k", []byte("x"), nil); err != nil || ref.Version != 2 {
		t.Errorf("Encrypt() once the root key is back = version %d, %v; want version 2, nil", ref.Version, err)
	}
}

func TestUsageOptionsValidated(t *testing.T) {
	s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tests := []struct {
		name string
		opts Options
	}{
		{"limit above 2^32", Options{DefaultUsageLimit: MaxUsageLimit + 1}},
		{"negative limit", Options{DefaultUsageLimit: -1}},
		{"negative block", Options{UsageBlock: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(s, newAEADKEK(t, "r"), tt.opts); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("New(%+v) err = %v, want ErrInvalidArgument", tt.opts, err)
			}
		})
	}
	ctx := context.Background()
	ring, err := New(s, newAEADKEK(t, "r"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range []KeySpec{
		{Name: "a", Type: store.KeyTypeAES256GCM, UsageLimit: MaxUsageLimit + 1},
		{Name: "b", Type: store.KeyTypeAES256GCM, UsageLimit: -1},
		{Name: "c", Type: store.KeyTypeAES256GCM, RetireAfter: -time.Hour},
		{Name: "d", Type: store.KeyTypeAES256GCM, RetireAfterVersions: MaxRetireAfterVersions + 1},
	} {
		if _, err := ring.CreateKey(ctx, spec); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("CreateKey(%+v) err = %v, want ErrInvalidArgument", spec, err)
		}
	}
}

// countingStore counts ReserveUses calls and what they grant, per version,
// after delaying each by delay, as a remote database would.
type countingStore struct {
	store.Store
	delay time.Duration
	// block, when set, holds every ReserveUses whose context has a deadline
	// (a background prefetch) until it is closed or the context ends.
	block chan struct{}

	mu        sync.Mutex
	calls     int
	granted   map[uint32]int64
	deadlines []time.Duration // time left on each call's context, if any
}

func (s *countingStore) ReserveUses(ctx context.Context, name string, version uint32, n, limit int64) (int64, error) {
	dl, hasDeadline := ctx.Deadline()
	if hasDeadline && s.block != nil {
		select {
		case <-s.block:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	g, err := s.Store.ReserveUses(ctx, name, version, n, limit)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.granted == nil {
		s.granted = map[uint32]int64{}
	}
	s.granted[version] += g
	if hasDeadline {
		s.deadlines = append(s.deadlines, time.Until(dl))
	}
	return g, err
}

func (s *countingStore) grants() (int, map[uint32]int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, maps.Clone(s.granted)
}

// countingFixture is newFixture over a countingStore.
func countingFixture(t *testing.T, cs *countingStore, opts Options) *Keyring {
	t.Helper()
	s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cs.Store = s
	ring, err := New(cs, newAEADKEK(t, "test-root-1"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return ring
}

// waitPrefetches waits until no prefetch of key name's cached version runs.
func waitPrefetches(t *testing.T, ring *Keyring, name string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		lk, ok := ring.cache.get(name)
		if !ok || lk.usage == nil || !lk.usage.prefetching.Load() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a prefetch still runs after 15s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestUsagePrefetch: with a store that takes half a millisecond more per
// reservation, blocks are reserved ahead in the background, so encryptions
// almost never wait for the store; every use sealed was granted, and the
// store counts exactly what it granted.
func TestUsagePrefetch(t *testing.T) {
	ctx := context.Background()
	const workers, each, block = 16, 625, 100
	cs := &countingStore{delay: 500 * time.Microsecond}
	ring := countingFixture(t, cs, Options{UsageBlock: block})
	if _, err := ring.CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatal(err)
	}
	// The first reservation has nothing to prefetch ahead of.
	if _, _, err := ring.Encrypt(ctx, "k", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				if _, ref, err := ring.Encrypt(ctx, "k", []byte("x"), nil); err != nil || ref.Version != 1 {
					t.Errorf("Encrypt() = version %d, %v; want version 1, nil", ref.Version, err)
					return
				}
				// Under 4,000 encryptions a second in all: a quarter
				// block lasts over 6 ms, many reservations' time.
				time.Sleep(4 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	waitPrefetches(t, ring, "k")
	lk, ok := ring.cache.get("k")
	if !ok || lk.usage == nil {
		t.Fatal("key k is not cached with a usage counter")
	}
	const total, blocks = workers*each + 1, workers * each / block
	calls, granted := cs.grants()
	waits := lk.usage.waits.Load() - 1 // the first encryption's
	t.Logf("%d encryptions, %d reservations, %d encryptions waited for the store", total, calls, waits)
	// Without prefetch every block runs out, and each time several of the
	// workers wait (over 1,000 in all). A disk stall beyond a quarter block's
	// time (fsync on a loaded machine) can still hold up every worker once:
	// allow that for 5% of the blocks.
	if limit := int64(workers * blocks / 20); waits >= limit {
		t.Errorf("%d encryptions waited for the store, want fewer than %d (all %d workers held up in 5%% of %d blocks): prefetch should keep ahead", waits, limit, workers, blocks)
	}
	if granted[1] < total {
		t.Errorf("granted %d uses, want at least the %d encryptions", granted[1], total)
	}
	if left := lk.usage.remaining.Load(); granted[1]-left != total {
		t.Errorf("granted %d uses with %d left, want exactly %d spent", granted[1], left, total)
	}
	uses, err := ring.Uses(ctx, "k")
	if err != nil || uses[1] != granted[1] {
		t.Errorf("Uses(k) = %v, %v; want version 1 at the %d granted", uses, err, granted[1])
	}
}

// TestUsagePrefetchConcurrentLimit: under concurrency with prefetch and a
// small limit, no version seals more than it was granted or its limit, and
// the store's count per version is what it granted.
func TestUsagePrefetchConcurrentLimit(t *testing.T) {
	ctx := context.Background()
	const limit, workers, each, block = 1000, 16, 300, 100
	cs := &countingStore{delay: 200 * time.Microsecond}
	ring := countingFixture(t, cs, Options{UsageBlock: block})
	if _, err := ring.CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM, UsageLimit: limit}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	sealed := map[uint32]int64{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				_, ref, err := ring.Encrypt(ctx, "k", []byte("x"), nil)
				if err != nil {
					t.Errorf("Encrypt() err = %v, want nil", err)
					return
				}
				mu.Lock()
				sealed[ref.Version]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	waitPrefetches(t, ring, "k")
	_, granted := cs.grants()
	uses, err := ring.Uses(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for v, n := range sealed {
		total += n
		if n > granted[v] || n > limit {
			t.Errorf("version %d sealed %d messages, granted %d, limit %d", v, n, granted[v], limit)
		}
	}
	if total != workers*each {
		t.Errorf("sealed %d messages, want %d", total, workers*each)
	}
	for v, g := range granted {
		if uses[v] != g || g > limit {
			t.Errorf("version %d: store counts %d uses, granted %d, limit %d; want equal and within the limit", v, uses[v], g, limit)
		}
	}
}

// TestUsagePrefetchSpent: a prefetch the store grants nothing marks the
// version spent, yet the uses still reserved are sealed before the key
// rotates.
func TestUsagePrefetchSpent(t *testing.T) {
	ctx := context.Background()
	cs := &countingStore{}
	ring := countingFixture(t, cs, Options{UsageBlock: 100})
	if _, err := ring.CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM, UsageLimit: 150}); err != nil {
		t.Fatal(err)
	}
	counts := map[uint32]int{}
	for i := range 151 {
		_, ref, err := ring.Encrypt(ctx, "k", []byte("x"), nil)
		if err != nil {
			t.Fatalf("Encrypt() #%d err = %v, want nil", i, err)
		}
		counts[ref.Version]++
		if i == 140 {
			// The prefetch at 24 left in the second grant (50) finds
			// the version spent.
			waitPrefetches(t, ring, "k")
			lk, _ := ring.cache.get("k")
			spent := lk.usage.spent.Load()
			if !spent || lk.usage.remaining.Load() != 9 {
				t.Fatalf("after 141 of 150 uses: spent %v, %d left; want spent with 9 left", spent, lk.usage.remaining.Load())
			}
		}
	}
	waitPrefetches(t, ring, "k")
	if counts[1] != 150 || counts[2] != 1 {
		t.Errorf("ciphertexts per version = %v, want 150 under version 1, then 1 under version 2", counts)
	}
	uses, err := ring.Uses(ctx, "k")
	if err != nil || uses[1] != 150 || uses[2] != 100 {
		t.Errorf("Uses(k) = %v, %v; want version 1 at 150, version 2 at 100", uses, err)
	}
}

// TestUsagePrefetchDetached: a prefetch runs on a context of its own,
// bounded by prefetchTimeout and not ended by the caller's, and its
// goroutine ends once the store answers, cached key or not.
func TestUsagePrefetchDetached(t *testing.T) {
	cs := &countingStore{block: make(chan struct{})}
	ring := countingFixture(t, cs, Options{UsageBlock: 8})
	if _, err := ring.CreateKey(context.Background(), KeySpec{Name: "k", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	for i := range 7 { // 8 granted; a prefetch starts at 1 left
		if _, _, err := ring.Encrypt(ctx, "k", []byte("x"), nil); err != nil {
			t.Fatalf("Encrypt() #%d err = %v, want nil", i, err)
		}
	}
	lk, _ := ring.cache.get("k")
	if !lk.usage.prefetching.Load() {
		t.Fatal("no prefetch runs with 1 of 8 uses left")
	}
	cancel()
	ring.cache.invalidate("k", lk.meta.Revision+1) // the key leaves the cache
	time.Sleep(10 * time.Millisecond)
	if !lk.usage.prefetching.Load() {
		t.Fatal("the prefetch ended with the caller's context")
	}
	close(cs.block)
	waitUntil(t, func() bool { return !lk.usage.prefetching.Load() })
	waitUntil(t, func() bool { return runtime.NumGoroutine() <= before })
	calls, granted := cs.grants()
	if calls != 2 || granted[1] != 16 || lk.usage.remaining.Load() != 9 {
		t.Errorf("reservations %d granting %v, %d left; want 2 granting 16, 9 left", calls, granted, lk.usage.remaining.Load())
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if len(cs.deadlines) != 1 || cs.deadlines[0] > prefetchTimeout || cs.deadlines[0] < prefetchTimeout/2 {
		t.Errorf("prefetch context deadlines = %v, want one within %v", cs.deadlines, prefetchTimeout)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRefillGivesUpWithItsContext: an encryption waiting for a block of
// uses that another reservation (a slow store) is fetching gives up when
// its own context ends.
func TestRefillGivesUpWithItsContext(t *testing.T) {
	r := &Keyring{}
	u := newVersionUsage(1, 100)
	if err := u.lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer u.unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, _, err := r.refill(ctx, "k", u); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("refill() while another reservation holds the slot err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refill() returned after %v, want soon after its deadline", d)
	}
}
