package store_test

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

// The tests below run the same body against SQLite and PostgreSQL. open
// opens a store on a fresh database with opts; rows, where taken, returns
// the counter@start (Unix seconds) of its budget_counts rows, read directly.

// testClock checks that a store stamps keys with its clock, in UTC and to
// the microsecond.
func testClock(t *testing.T, open func(...store.Option) store.Store) {
	var mu sync.Mutex
	now := time.Date(2030, 1, 2, 3, 4, 5, 678901234, time.FixedZone("CET", 3600))
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	s := open(store.WithClock(clock))
	wantCreate := time.Date(2030, 1, 2, 2, 4, 5, 678901000, time.UTC)

	created, err := s.CreateKey(t.Context(), testKey("k"))
	if err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	if created.CreateTime != wantCreate || created.UpdateTime != wantCreate {
		t.Errorf("CreateKey(ctx, %q) times = %v, %v; want %v for both", "k", created.CreateTime, created.UpdateTime, wantCreate)
	}

	mu.Lock()
	now = now.Add(time.Hour + time.Nanosecond)
	mu.Unlock()
	updated, err := s.UpdateKey(t.Context(), created)
	if err != nil {
		t.Fatalf("UpdateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	got, err := s.GetKey(t.Context(), "k")
	if err != nil {
		t.Fatalf("GetKey(ctx, %q) err = %v, want nil", "k", err)
	}
	wantUpdate := wantCreate.Add(time.Hour)
	for _, k := range []store.Key{updated, got} {
		if k.CreateTime != wantCreate || k.UpdateTime != wantUpdate {
			t.Errorf("key %q times = %v, %v; want %v, %v", "k", k.CreateTime, k.UpdateTime, wantCreate, wantUpdate)
		}
	}
}

// testClosed checks that calls after Close fail and that Close may be
// called twice.
func testClosed(t *testing.T, s store.Store) {
	if err := s.Close(); err != nil {
		t.Fatalf("Close() err = %v, want nil", err)
	}
	if _, err := s.GetKey(context.Background(), "k"); err == nil {
		t.Errorf("GetKey(ctx, %q) after Close err = nil, want an error", "k")
	}
	if _, err := s.CreateKey(context.Background(), testKey("k")); err == nil {
		t.Errorf("CreateKey(ctx, %q) after Close err = nil, want an error", "k")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close() err = %v, want nil", err)
	}
}

// testBudgetSweep checks that ConsumeBudget deletes the counts of windows
// that ended by the store's clock, no more than once a minute, and those of
// windows still open never.
func testBudgetSweep(t *testing.T, open func(...store.Option) store.Store, rows func() []string) {
	var mu sync.Mutex
	t0 := time.Unix(1_900_000_000, 0).UTC()
	now := t0
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	set := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = t0.Add(d)
	}
	s := open(store.WithClock(clock))
	consume := func(counter string, start, length time.Duration) {
		t.Helper()
		w := store.BudgetWindow{Counter: counter, Start: t0.Add(start), End: t0.Add(start + length), Limit: 10}
		if got, err := s.ConsumeBudget(t.Context(), 1, []store.BudgetWindow{w}); err != nil || got != -1 {
			t.Fatalf("ConsumeBudget(ctx, 1, [%s]) = %d, %v; want -1, nil", counter, got, err)
		}
	}
	check := func(when string, want ...string) {
		t.Helper()
		if got := rows(); !slices.Equal(got, want) {
			t.Errorf("budget_counts %s = %q, want %q", when, got, want)
		}
	}
	at := func(counter string, start time.Duration) string {
		return counter + "@" + strconv.FormatInt(t0.Add(start).Unix(), 10)
	}

	// The first call sweeps (nothing) and sets the next sweep a minute on.
	consume("second", 0, time.Second)
	consume("day", 0, 24*time.Hour)
	consume("ends-at-sweep", 0, 2*time.Minute) // ends exactly when the sweep runs
	set(2 * time.Second)
	consume("second", 2*time.Second, time.Second)
	check("before a minute passed", at("day", 0), at("ends-at-sweep", 0), at("second", 0), at("second", 2*time.Second))

	set(2 * time.Minute)
	consume("second", 2*time.Minute, time.Second)
	check("after a minute", at("day", 0), at("second", 2*time.Minute))

	// A window that was deleted counts from zero when given again.
	consume("second", 0, time.Second)
	check("after an ended window was given again", at("day", 0), at("second", 0), at("second", 2*time.Minute))
}

// testBudgetSweepBatches checks that one call deletes at most a batch of
// ended windows, and that calls go on deleting until none is left.
func testBudgetSweepBatches(t *testing.T, open func(...store.Option) store.Store, rows func() []string) {
	var mu sync.Mutex
	t0 := time.Unix(1_900_000_000, 0).UTC()
	now := t0
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	s := open(store.WithClock(clock))
	const ended = 2500
	windows := make([]store.BudgetWindow, ended)
	for i := range windows {
		windows[i] = store.BudgetWindow{Counter: "c" + strconv.Itoa(i), Start: t0, End: t0.Add(time.Second), Limit: 1}
	}
	if got, err := s.ConsumeBudget(t.Context(), 1, windows); err != nil || got != -1 {
		t.Fatalf("ConsumeBudget(ctx, 1, %d windows) = %d, %v; want -1, nil", ended, got, err)
	}
	mu.Lock()
	now = t0.Add(time.Hour)
	mu.Unlock()
	live := store.BudgetWindow{Counter: "live", Start: t0.Add(time.Hour), End: t0.Add(2 * time.Hour), Limit: 100}
	for _, want := range []int{1501, 501, 1, 1, 1} {
		if got, err := s.ConsumeBudget(t.Context(), 1, []store.BudgetWindow{live}); err != nil || got != -1 {
			t.Fatalf("ConsumeBudget(ctx, 1, [live]) = %d, %v; want -1, nil", got, err)
		}
		if got := len(rows()); got != want {
			t.Fatalf("budget_counts has %d rows, want %d", got, want)
		}
	}
}
