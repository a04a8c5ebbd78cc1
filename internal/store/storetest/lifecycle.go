package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

// Key deletion and destruction.

// scheduledKey returns a key whose deletion is scheduled.
func scheduledKey(name string) store.Key {
	k := fullKey(name)
	k.State = store.KeyStateDeletionScheduled
	k.DeletionTime = deletionTime
	return k
}

// destroyedKey returns a destroyed key: no keyset, and no root key id.
func destroyedKey(name string) store.Key {
	k := fullKey(name)
	k.State = store.KeyStateDestroyed
	k.DestroyTime = deletionTime.Add(time.Hour)
	k.WrappedKeyset = nil
	k.RootKeyID = ""
	return k
}

func testLifecycleRoundTrip(t *testing.T, s store.Store) {
	destroyedWithRoot := destroyedKey("destroyed-keeps-root-key-id")
	destroyedWithRoot.RootKeyID = "root-1"
	destroyedEmptyKeyset := destroyedKey("destroyed-empty-keyset")
	destroyedEmptyKeyset.WrappedKeyset = []byte{}
	zeroLimits := fullKey("zero-limits")
	zeroLimits.UsageLimit, zeroLimits.RetireAfter, zeroLimits.RetireAfterVersions = 0, 0, 0
	maxLimits := fullKey("max-limits")
	maxLimits.UsageLimit, maxLimits.RetireAfter = math.MaxInt64, math.MaxInt64
	lastMicrosecond := scheduledKey("deletion-at-end-of-9999")
	lastMicrosecond.DeletionTime = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
	tests := []struct {
		name string
		key  store.Key
	}{
		{"deletion scheduled", scheduledKey("scheduled")},
		{"destroyed", destroyedKey("destroyed")},
		{"destroyed keeps root key id", destroyedWithRoot},
		{"destroyed with empty keyset", destroyedEmptyKeyset},
		{"zero limits", zeroLimits},
		{"largest limits", maxLimits},
		{"deletion at the end of year 9999", lastMicrosecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			created := mustCreate(t, s, tt.key)
			want := stored(tt.key)
			want.CreateTime, want.UpdateTime, want.Revision = created.CreateTime, created.CreateTime, 1
			if d := diffKey(created, want); d != "" {
				t.Errorf("CreateKey(ctx, %q) returned %s", tt.key.Name, d)
			}
			if d := diffKey(mustGet(t, s, tt.key.Name), want); d != "" {
				t.Errorf("GetKey(ctx, %q) after CreateKey: %s", tt.key.Name, d)
			}
		})
	}
	for _, k := range listAll(t, s, 3) {
		if d := diffKey(k, mustGet(t, s, k.Name)); d != "" {
			t.Errorf("ListKeys key %q differs from GetKey: %s", k.Name, d)
		}
	}
}

// testScheduleCancelDestroy walks a key through the states the keyring
// gives it: scheduled for deletion, cancelled (DISABLED), scheduled again
// and destroyed.
func testScheduleCancelDestroy(t *testing.T, s store.Store) {
	cur := mustCreate(t, s, fullKey("k"))
	other := mustCreate(t, s, fullKey("other"))
	step := func(what string, f func(k *store.Key)) {
		t.Helper()
		k := cur
		f(&k)
		updated, err := s.UpdateKey(t.Context(), k)
		if err != nil {
			t.Fatalf("%s: UpdateKey(ctx, %q) err = %v, want nil", what, k.Name, err)
		}
		want := stored(k)
		want.CreateTime, want.UpdateTime, want.Revision = cur.CreateTime, updated.UpdateTime, cur.Revision+1
		if d := diffKey(updated, want); d != "" {
			t.Errorf("%s: UpdateKey(ctx, %q) returned %s", what, k.Name, d)
		}
		if d := diffKey(mustGet(t, s, k.Name), want); d != "" {
			t.Errorf("%s: GetKey(ctx, %q) after UpdateKey: %s", what, k.Name, d)
		}
		cur = updated
	}
	step("schedule deletion", func(k *store.Key) {
		k.State, k.DeletionTime = store.KeyStateDeletionScheduled, deletionTime
	})
	step("cancel deletion", func(k *store.Key) {
		k.State, k.DeletionTime = store.KeyStateDisabled, time.Time{}
	})
	step("schedule deletion again", func(k *store.Key) {
		k.State, k.DeletionTime = store.KeyStateDeletionScheduled, deletionTime.Add(time.Hour)
	})
	step("destroy", func(k *store.Key) {
		k.State, k.DeletionTime, k.DestroyTime = store.KeyStateDestroyed, time.Time{}, deletionTime.Add(time.Hour)
		k.WrappedKeyset = nil // RootKeyID kept
	})
	if cur.WrappedKeyset != nil {
		t.Errorf("destroyed key %q has WrappedKeyset %#v, want nil", cur.Name, cur.WrappedKeyset)
	}
	step("relabel the tombstone", func(k *store.Key) { k.Labels = map[string]string{"destroyed-by": "ops"} })
	if d := diffKey(mustGet(t, s, "other"), other); d != "" {
		t.Errorf("GetKey(ctx, %q) after another key was destroyed: %s", "other", d)
	}
}

func testDestroyedStaysDestroyed(t *testing.T, s store.Store) {
	created := mustCreate(t, s, fullKey("k"))
	k := created
	k.State, k.DestroyTime, k.WrappedKeyset = store.KeyStateDestroyed, deletionTime, nil
	destroyed, err := s.UpdateKey(t.Context(), k)
	if err != nil {
		t.Fatalf("UpdateKey(ctx, %q) to DESTROYED err = %v, want nil", k.Name, err)
	}
	revive := []struct {
		name string
		f    func(k *store.Key)
	}{
		{"enabled", func(k *store.Key) { k.State = store.KeyStateEnabled }},
		{"disabled", func(k *store.Key) { k.State = store.KeyStateDisabled }},
		{"deletion scheduled", func(k *store.Key) { k.State, k.DeletionTime = store.KeyStateDeletionScheduled, deletionTime }},
	}
	for _, tt := range revive {
		t.Run(tt.name, func(t *testing.T) {
			k := destroyed
			k.DestroyTime = time.Time{}
			k.WrappedKeyset, k.RootKeyID = []byte("resurrected"), "root-1"
			tt.f(&k)
			if _, err := s.UpdateKey(t.Context(), k); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("UpdateKey(ctx, %q) from DESTROYED to %v err = %v, want ErrInvalidKey", k.Name, k.State, err)
			}
			// A stale revision is a conflict, as for any key.
			k.Revision--
			if _, err := s.UpdateKey(t.Context(), k); !errors.Is(err, store.ErrConflict) {
				t.Errorf("UpdateKey(ctx, %q rev %d, stored rev %d) from DESTROYED err = %v, want ErrConflict", k.Name, k.Revision, destroyed.Revision, err)
			}
			if d := diffKey(mustGet(t, s, "k"), destroyed); d != "" {
				t.Errorf("GetKey(ctx, %q) after refused UpdateKey: %s", "k", d)
			}
		})
	}
}

// Use reservations.

// reserve calls ReserveUses and fails t unless it grants want.
func reserve(t *testing.T, s store.Store, name string, version uint32, n, limit, want int64) {
	t.Helper()
	got, err := s.ReserveUses(t.Context(), name, version, n, limit)
	if err != nil || got != want {
		t.Fatalf("ReserveUses(ctx, %q, %d, %d, %d) = %d, %v; want %d, nil", name, version, n, limit, got, err, want)
	}
}

// wantUses fails t unless Uses(name) is want.
func wantUses(t *testing.T, s store.Store, name string, want map[uint32]int64) {
	t.Helper()
	got, err := s.Uses(t.Context(), name)
	if err != nil || got == nil || !maps.Equal(got, want) {
		t.Fatalf("Uses(ctx, %q) = %v, %v; want %v, nil", name, got, err, want)
	}
}

func testReserveUses(t *testing.T, s store.Store) {
	mustCreate(t, s, fullKey("k")) // versions 1 and 2
	mustCreate(t, s, fullKey("other"))
	wantUses(t, s, "k", map[uint32]int64{})
	reserve(t, s, "k", 1, 4, 10, 4)
	reserve(t, s, "k", 1, 4, 10, 4)
	reserve(t, s, "k", 1, 4, 10, 2)
	reserve(t, s, "k", 1, 1, 10, 0)
	reserve(t, s, "k", 1, 1000, 10, 0)
	wantUses(t, s, "k", map[uint32]int64{1: 10})
	// A first reservation larger than the limit is cut to it.
	reserve(t, s, "k", 2, 3, 2, 2)
	wantUses(t, s, "k", map[uint32]int64{1: 10, 2: 2})
	// The limit is the caller's on every call.
	reserve(t, s, "k", 1, 5, 12, 2)
	reserve(t, s, "k", 1, 1, 5, 0)
	reserve(t, s, "k", 2, 1, 3, 1)
	wantUses(t, s, "k", map[uint32]int64{1: 12, 2: 3})
	wantUses(t, s, "other", map[uint32]int64{})
	reserve(t, s, "other", 2, 1, 1, 1)
	wantUses(t, s, "other", map[uint32]int64{2: 1})
	wantUses(t, s, "k", map[uint32]int64{1: 12, 2: 3})
}

func testReserveUsesNoOverflow(t *testing.T, s store.Store) {
	mustCreate(t, s, minimalKey("k"))
	reserve(t, s, "k", 1, math.MaxInt64, math.MaxInt64, math.MaxInt64)
	reserve(t, s, "k", 1, math.MaxInt64, math.MaxInt64, 0)
	mustCreate(t, s, minimalKey("j"))
	reserve(t, s, "j", 1, 1<<62-1, 1<<62, 1<<62-1)
	reserve(t, s, "j", 1, math.MaxInt64, math.MaxInt64, math.MaxInt64-(1<<62-1))
	wantUses(t, s, "j", map[uint32]int64{1: math.MaxInt64})
}

func testReserveUsesInvalid(t *testing.T, s store.Store) {
	mustCreate(t, s, fullKey("k")) // versions 1 and 2
	tests := []struct {
		name     string
		key      string
		version  uint32
		n, limit int64
		want     error
	}{
		{"n zero", "k", 1, 0, 10, store.ErrInvalidKey},
		{"n negative", "k", 1, -1, 10, store.ErrInvalidKey},
		{"n smallest", "k", 1, math.MinInt64, 10, store.ErrInvalidKey},
		{"limit zero", "k", 1, 1, 0, store.ErrInvalidKey},
		{"limit negative", "k", 1, 1, -10, store.ErrInvalidKey},
		{"version zero", "k", 0, 1, 10, store.ErrInvalidKey},
		{"version the key lacks", "k", 3, 1, 10, store.ErrInvalidKey},
		{"largest version", "k", math.MaxUint32, 1, 10, store.ErrInvalidKey},
		{"missing key", "missing", 1, 1, 10, store.ErrNotFound},
		{"empty name", "", 1, 1, 10, store.ErrNotFound},
		{"name not UTF-8", "k\xff", 1, 1, 10, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.ReserveUses(t.Context(), tt.key, tt.version, tt.n, tt.limit)
			if !errors.Is(err, tt.want) || got != 0 {
				t.Errorf("ReserveUses(ctx, %q, %d, %d, %d) = %d, %v; want 0, %v", tt.key, tt.version, tt.n, tt.limit, got, err, tt.want)
			}
		})
	}
	wantUses(t, s, "k", map[uint32]int64{})
	for _, name := range []string{"missing", "", "k\xff"} {
		if got, err := s.Uses(t.Context(), name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Uses(ctx, %q) = %v, %v; want ErrNotFound", name, got, err)
		}
	}
}

// testReserveUsesSurviveUpdates checks that counts are kept per key and
// version across UpdateKey, which rewrites the key's versions.
func testReserveUsesSurviveUpdates(t *testing.T, s store.Store) {
	cur := mustCreate(t, s, fullKey("k")) // versions 1 and 2
	reserve(t, s, "k", 1, 3, 100, 3)
	reserve(t, s, "k", 2, 5, 100, 5)
	k := cur
	k.Versions = append(k.Versions, store.Version{Number: 3, TinkKeyID: 3})
	k.PrimaryVersion = 3
	k.Labels = map[string]string{"rotated": "yes"}
	if _, err := s.UpdateKey(t.Context(), k); err != nil {
		t.Fatalf("UpdateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	wantUses(t, s, "k", map[uint32]int64{1: 3, 2: 5})
	reserve(t, s, "k", 3, 1, 100, 1)
	reserve(t, s, "k", 1, 200, 100, 97)
	wantUses(t, s, "k", map[uint32]int64{1: 100, 2: 5, 3: 1})
}

// testReserveUsesConcurrent reserves from 8 goroutines at once, in
// different amounts, and checks that they are granted exactly the limit in
// all.
func testReserveUsesConcurrent(t *testing.T, s store.Store) {
	const (
		workers = 8
		limit   = 200
	)
	mustCreate(t, s, fullKey("k"))
	var granted [workers]int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			n := int64(1 + g%4)
			<-start
			for range 1000 {
				got, err := s.ReserveUses(t.Context(), "k", 1, n, limit)
				if err != nil || got < 0 || got > n {
					t.Errorf("ReserveUses(ctx, %q, 1, %d, %d) = %d, %v; want 0 to %d, nil", "k", n, limit, got, err, n)
					return
				}
				if got == 0 {
					return
				}
				granted[g] += got
			}
			t.Errorf("ReserveUses(ctx, %q, 1, %d, %d) still grants after 1000 calls", "k", n, limit)
		})
	}
	close(start)
	wg.Wait()
	var total int64
	for _, g := range granted {
		total += g
	}
	if total != limit {
		t.Errorf("%d goroutines granted %d uses in all (%v), want exactly the limit %d", workers, total, granted, limit)
	}
	wantUses(t, s, "k", map[uint32]int64{1: limit})
}

// Leases.

// acquire calls AcquireLease and fails t unless it returns want.
func acquire(t *testing.T, s store.Store, name, holder string, ttl time.Duration, want bool) {
	t.Helper()
	got, err := s.AcquireLease(t.Context(), name, holder, ttl)
	if err != nil || got != want {
		t.Fatalf("AcquireLease(ctx, %q, %q, %v) = %t, %v; want %t, nil", name, holder, ttl, got, err, want)
	}
}

func release(t *testing.T, s store.Store, name, holder string) {
	t.Helper()
	if err := s.ReleaseLease(t.Context(), name, holder); err != nil {
		t.Fatalf("ReleaseLease(ctx, %q, %q) err = %v, want nil", name, holder, err)
	}
}

func testLease(t *testing.T, s store.Store, c *clock) {
	const ttl = 10 * time.Second
	acquire(t, s, "rotate", "a", ttl, true)
	acquire(t, s, "rotate", "b", ttl, false)
	acquire(t, s, "sweep", "b", ttl, true) // another lease
	c.Advance(5 * time.Second)
	acquire(t, s, "rotate", "a", ttl, true) // renewed until 15s
	c.Advance(10*time.Second - time.Microsecond)
	acquire(t, s, "rotate", "b", ttl, false) // 14.999999s: a's renewal runs
	acquire(t, s, "sweep", "a", ttl, true)   // b's sweep lease ended at 10s
	c.Advance(time.Microsecond)
	acquire(t, s, "rotate", "b", ttl, true) // 15s: a's lease has ended
	acquire(t, s, "rotate", "a", ttl, false)

	release(t, s, "rotate", "a") // not a's: nothing changes
	acquire(t, s, "rotate", "a", ttl, false)
	release(t, s, "rotate", "B")
	acquire(t, s, "rotate", "a", ttl, false)
	release(t, s, "rotate", "b")
	acquire(t, s, "rotate", "a", ttl, true)
	release(t, s, "never-held", "a")
	release(t, s, "rotate", "a")
	release(t, s, "rotate", "a") // twice
	acquire(t, s, "rotate", "b", time.Microsecond, true)
	acquire(t, s, "rotate", "a", ttl, false)
	c.Advance(time.Microsecond)
	acquire(t, s, "rotate", "a", ttl, true)
	// A renewal may also shorten the lease.
	acquire(t, s, "rotate", "a", time.Second, true)
	c.Advance(time.Second)
	acquire(t, s, "rotate", "b", ttl, true)
}

// testLeaseConcurrent has two holders acquire each of several leases at
// once: exactly one wins each, and the other wins once the ttl has passed.
func testLeaseConcurrent(t *testing.T, s store.Store, c *clock) {
	const (
		rounds = 20
		ttl    = time.Minute
	)
	holders := []string{"replica-a", "replica-b"}
	for r := range rounds {
		name := fmt.Sprintf("job-%d", r)
		var got [2]bool
		var errs [2]error
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, h := range holders {
			wg.Go(func() {
				<-start
				got[i], errs[i] = s.AcquireLease(t.Context(), name, h, ttl)
			})
		}
		close(start)
		wg.Wait()
		if err := errors.Join(errs[:]...); err != nil {
			t.Fatalf("AcquireLease(ctx, %q, ...) err = %v, want nil", name, err)
		}
		if got[0] == got[1] {
			t.Fatalf("AcquireLease(ctx, %q, ...) from %q and %q at once = %t, %t; want exactly one true", name, holders[0], holders[1], got[0], got[1])
		}
		winner, loser := holders[0], holders[1]
		if got[1] {
			winner, loser = loser, winner
		}
		acquire(t, s, name, loser, ttl, false)
		c.Advance(ttl)
		acquire(t, s, name, loser, ttl, true)
		acquire(t, s, name, winner, ttl, false)
	}

	// Many holders at once: one wins.
	const many = 16
	wins := make(chan string, many)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range many {
		wg.Go(func() {
			h := fmt.Sprintf("holder-%d", i)
			<-start
			ok, err := s.AcquireLease(t.Context(), "hot", h, ttl)
			if err != nil {
				t.Errorf("AcquireLease(ctx, %q, %q) err = %v, want nil", "hot", h, err)
			}
			if ok {
				wins <- h
			}
		})
	}
	close(start)
	wg.Wait()
	close(wins)
	var winners []string
	for h := range wins {
		winners = append(winners, h)
	}
	if len(winners) != 1 {
		t.Errorf("AcquireLease(ctx, %q, ...) from %d holders at once: winners %q, want exactly one", "hot", many, winners)
	}
}

// testLeaseLongTTL takes a lease for the longest ttl there is (292 years),
// and nothing overflows.
func testLeaseLongTTL(t *testing.T, s store.Store, c *clock) {
	acquire(t, s, "forever", "a", math.MaxInt64, true)
	c.Advance(200 * 365 * 24 * time.Hour)
	acquire(t, s, "forever", "b", time.Second, false)
	acquire(t, s, "forever", "a", math.MaxInt64, true)
}

func testLeaseInvalid(t *testing.T, s store.Store) {
	long := strings.Repeat("x", 513)
	tests := []struct {
		name, lease, holder string
		ttl                 time.Duration
	}{
		{"empty lease name", "", "a", time.Second},
		{"empty holder", "job", "", time.Second},
		{"zero ttl", "job", "a", 0},
		{"negative ttl", "job", "a", -time.Second},
		{"ttl below a microsecond", "job", "a", 999 * time.Nanosecond},
		{"lease name of 513 bytes", long, "a", time.Second},
		{"holder of 513 bytes", "job", long, time.Second},
		{"lease name not UTF-8", "job\xff", "a", time.Second},
		{"holder with NUL", "job", "a\x00b", time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.AcquireLease(t.Context(), tt.lease, tt.holder, tt.ttl)
			if !errors.Is(err, store.ErrInvalidLease) || got {
				t.Errorf("AcquireLease(ctx, %q, %q, %v) = %t, %v; want false, ErrInvalidLease", tt.lease, tt.holder, tt.ttl, got, err)
			}
			if tt.ttl == time.Second { // the names are invalid
				if err := s.ReleaseLease(t.Context(), tt.lease, tt.holder); !errors.Is(err, store.ErrInvalidLease) {
					t.Errorf("ReleaseLease(ctx, %q, %q) err = %v, want ErrInvalidLease", tt.lease, tt.holder, err)
				}
			}
		})
	}
	// Nothing was taken, and the limits are inclusive of 512 bytes.
	acquire(t, s, "job", "b", time.Minute, true)
	acquire(t, s, long[:512], long[:512], time.Microsecond, true)
}

// Key revisions.

func testKeyRevisions(t *testing.T, s store.Store) {
	a := mustCreate(t, s, fullKey("a"))
	b := mustCreate(t, s, fullKey("b"))
	mustCreate(t, s, fullKey("c/é"))
	for range 2 {
		var err error
		if b, err = s.UpdateKey(t.Context(), b); err != nil {
			t.Fatalf("UpdateKey(ctx, %q) err = %v, want nil", "b", err)
		}
	}
	if _, err := s.UpdateKey(t.Context(), a); err != nil {
		t.Fatalf("UpdateKey(ctx, %q) err = %v, want nil", "a", err)
	}
	check := func(names []string, want map[string]int64) {
		t.Helper()
		got, err := s.KeyRevisions(t.Context(), names)
		if err != nil || got == nil || !maps.Equal(got, want) {
			t.Errorf("KeyRevisions(ctx, %d names) = %v, %v; want %v, nil", len(names), got, err, want)
		}
	}
	check(nil, map[string]int64{})
	check([]string{}, map[string]int64{})
	check([]string{"missing"}, map[string]int64{})
	check([]string{"a", "b", "c/é"}, map[string]int64{"a": 2, "b": 3, "c/é": 1})
	check([]string{"b", "missing", "b", "", "a\xff", "a\x00", "A", `["a"]`, "a"}, map[string]int64{"a": 2, "b": 3})

	// More than one query's worth of names, with keys in the later ones.
	var many []string
	for i := range 2500 {
		many = append(many, fmt.Sprintf("missing-%04d", i))
	}
	many[10], many[1500], many[2499] = "a", "b", "c/é"
	check(many, map[string]int64{"a": 2, "b": 3, "c/é": 1})
}

// Contexts.

func testNewMethodsContextCanceled(t *testing.T, s store.Store) {
	mustCreate(t, s, fullKey("k"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	calls := []struct {
		name string
		call func() error
	}{
		{"ReserveUses", func() error { _, err := s.ReserveUses(ctx, "k", 1, 1, 10); return err }},
		{"Uses", func() error { _, err := s.Uses(ctx, "k"); return err }},
		{"AcquireLease", func() error { _, err := s.AcquireLease(ctx, "job", "a", time.Minute); return err }},
		{"ReleaseLease", func() error { return s.ReleaseLease(ctx, "job", "a") }},
		{"KeyRevisions", func() error { _, err := s.KeyRevisions(ctx, []string{"k"}); return err }},
		{"StartRootKeyRotation", func() error { _, err := s.StartRootKeyRotation(ctx, rotation("j", "r", "new")); return err }},
		{"LatestRootKeyRotation", func() error { _, err := s.LatestRootKeyRotation(ctx); return err }},
		{"ListRootKeyRotations", func() error { _, err := s.ListRootKeyRotations(ctx); return err }},
		{"ListKeysByRootKey", func() error { _, err := s.ListKeysByRootKey(ctx, "r", "", 10); return err }},
		{"CountKeysByRootKey", func() error { _, err := s.CountKeysByRootKey(ctx, "r"); return err }},
		{"RootKeyIDsInUse", func() error { _, err := s.RootKeyIDsInUse(ctx); return err }},
		{"RewrapKeys", func() error { _, err := s.RewrapKeys(ctx, "j", nil); return err }},
		{"FinishRootKeyRotation", func() error { _, err := s.FinishRootKeyRotation(ctx, "j"); return err }},
	}
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s(canceled ctx, ...) err = %v, want context.Canceled", c.name, err)
		}
	}
	wantUses(t, s, "k", map[uint32]int64{})
	acquire(t, s, "job", "b", time.Minute, true)
	if _, err := s.LatestRootKeyRotation(t.Context()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LatestRootKeyRotation(ctx) after a canceled start err = %v, want ErrNotFound", err)
	}
}
