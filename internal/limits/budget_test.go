package limits_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/limits"
	"github.com/tresorkms/tresor/internal/store"
)

// openStore opens a SQLite store in t.TempDir() on the clock of the test, so
// that it deletes the counts of windows only when they ended by that clock.
func openStore(t *testing.T, clock *fakeClock) *store.SQLite {
	t.Helper()
	s, err := store.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "tresor.db"), store.WithClock(clock.Now))
	if err != nil {
		t.Fatalf("OpenSQLite(ctx, ...) err = %v, want nil", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newBudgets(t *testing.T, s limits.BudgetStore, rules []limits.BudgetRule, clock *fakeClock) *limits.Budgets {
	t.Helper()
	b, err := limits.NewBudgets(s, rules, clock.Now)
	if err != nil {
		t.Fatalf("NewBudgets(...) err = %v, want nil", err)
	}
	return b
}

// decryptRestricted is 5 decrypts of restricted data a second and 1000 a day.
var decryptRestricted = limits.BudgetRule{
	Action:  "decrypt",
	Tier:    "restricted",
	Windows: []limits.Window{{Period: time.Second, Limit: 5}, {Period: 24 * time.Hour, Limit: 1000}},
}

// consume calls b.Consume and fails t unless it returns ok and, when
// refused, a retryAfter in (0, maxRetry].
func consume(t *testing.T, b *limits.Budgets, principal, action, tier string, n int64, ok bool, maxRetry time.Duration) time.Duration {
	t.Helper()
	gotOK, retry, err := b.Consume(t.Context(), principal, action, tier, n)
	switch {
	case err != nil:
		t.Fatalf("Consume(ctx, %q, %q, %q, %d) err = %v, want nil", principal, action, tier, n, err)
	case gotOK != ok:
		t.Fatalf("Consume(ctx, %q, %q, %q, %d) = %v, %v; want %v", principal, action, tier, n, gotOK, retry, ok)
	case ok && retry != 0:
		t.Fatalf("Consume(ctx, %q, %q, %q, %d) = true, %v; want true, 0", principal, action, tier, n, retry)
	case !ok && (retry <= 0 || retry > maxRetry):
		t.Fatalf("Consume(ctx, %q, %q, %q, %d) = false, %v; want false, a retryAfter in (0, %v]", principal, action, tier, n, retry, maxRetry)
	}
	return retry
}

func TestBudgetsSecondAndDay(t *testing.T) {
	clock := newFakeClock() // 10:00:00.250
	b := newBudgets(t, openStore(t, clock), []limits.BudgetRule{decryptRestricted}, clock)
	for range 5 {
		consume(t, b, "alice", "decrypt", "restricted", 1, true, 0)
	}
	if retry := consume(t, b, "alice", "decrypt", "restricted", 1, false, time.Second); retry != 750*ms {
		t.Errorf("6th Consume in the second: retryAfter = %v, want 750ms (to the end of the second)", retry)
	}
	clock.Advance(700 * ms)
	if retry := consume(t, b, "alice", "decrypt", "restricted", 1, false, time.Second); retry != 50*ms {
		t.Errorf("Consume 50ms before the second ends: retryAfter = %v, want 50ms", retry)
	}
	clock.Advance(50 * ms)
	consume(t, b, "alice", "decrypt", "restricted", 1, true, 0)

	// 6 counted so far today. 5 a second, n at a time, up to 1000.
	used := int64(6)
	consume(t, b, "alice", "decrypt", "restricted", 4, true, 0)
	used += 4
	for used < 1000 {
		clock.Advance(time.Second)
		consume(t, b, "alice", "decrypt", "restricted", 5, true, 0)
		used += 5
	}
	clock.Advance(time.Second)
	now := clock.Now()
	midnight := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	if retry := consume(t, b, "alice", "decrypt", "restricted", 1, false, 24*time.Hour); retry != midnight.Sub(now) {
		t.Errorf("Consume after 1000 in a day: retryAfter = %v, want %v (to midnight UTC)", retry, midnight.Sub(now))
	}
	clock.Advance(midnight.Sub(now))
	for range 5 {
		consume(t, b, "alice", "decrypt", "restricted", 1, true, 0)
	}
	consume(t, b, "alice", "decrypt", "restricted", 1, false, time.Second)
}

func TestBudgetsIndependent(t *testing.T) {
	clock := newFakeClock()
	rules := []limits.BudgetRule{
		{Action: "decrypt", Tier: "restricted", Windows: []limits.Window{{Period: time.Second, Limit: 2}}},
		{Action: "decrypt", Tier: "confidential", Windows: []limits.Window{{Period: time.Second, Limit: 3}}},
		{Action: "reveal", Tier: "restricted", Windows: []limits.Window{{Period: time.Second, Limit: 1}}},
	}
	b := newBudgets(t, openStore(t, clock), rules, clock)
	// Principal names that a careless counter name would mix up.
	principals := []string{"alice", "Alice", "alice/1s", "alice/", "alice#", "=alice", "", "a\x00b", "a\xffb", strings.Repeat("p", 2000), strings.Repeat("p", 2001)}
	for _, p := range principals {
		consume(t, b, p, "decrypt", "restricted", 2, true, 0)
		consume(t, b, p, "decrypt", "restricted", 1, false, time.Second)
		consume(t, b, p, "decrypt", "confidential", 3, true, 0)
		consume(t, b, p, "decrypt", "confidential", 1, false, time.Second)
		consume(t, b, p, "reveal", "restricted", 1, true, 0)
		consume(t, b, p, "reveal", "restricted", 1, false, time.Second)
	}
	// No rule: always allowed.
	for range 100 {
		consume(t, b, "alice", "decrypt", "internal", 1000, true, 0)
		consume(t, b, "alice", "encrypt", "restricted", 1000, true, 0)
	}
}

// recorder is a BudgetStore that records its calls and returns what it is told.
type recorder struct {
	calls    [][]store.BudgetWindow
	exceeded int
	err      error
}

func (r *recorder) ConsumeBudget(ctx context.Context, n int64, windows []store.BudgetWindow) (int, error) {
	r.calls = append(r.calls, windows)
	return r.exceeded, r.err
}

func TestBudgetsWindows(t *testing.T) {
	clock := newFakeClock() // 2030-01-02 10:00:00.250 UTC
	r := &recorder{exceeded: -1}
	b := newBudgets(t, r, []limits.BudgetRule{{
		Action: "decrypt", Tier: "restricted",
		Windows: []limits.Window{{Period: time.Second, Limit: 5}, {Period: 7 * time.Minute, Limit: 50}, {Period: 24 * time.Hour, Limit: 1000}},
	}}, clock)
	if _, _, err := b.Consume(t.Context(), "spiffe://bank.example/payments", "decrypt", "restricted", 3); err != nil {
		t.Fatalf("Consume(...) err = %v, want nil", err)
	}
	if _, _, err := b.Consume(t.Context(), "alice", "decrypt", "public", 3); err != nil {
		t.Fatalf("Consume(...) err = %v, want nil", err)
	}
	if len(r.calls) != 1 {
		t.Fatalf("ConsumeBudget called %d times, want 1 (no call for a tier without a rule)", len(r.calls))
	}
	sec := time.Date(2030, 1, 2, 10, 0, 0, 0, time.UTC)
	sevenMin := time.Unix(sec.Unix()/420*420, 0).UTC()
	day := time.Date(2030, 1, 2, 0, 0, 0, 0, time.UTC)
	want := []store.BudgetWindow{
		{Counter: "decrypt/restricted/1s/=spiffe://bank.example/payments", Start: sec, End: sec.Add(time.Second), Limit: 5},
		{Counter: "decrypt/restricted/7m0s/=spiffe://bank.example/payments", Start: sevenMin, End: sevenMin.Add(7 * time.Minute), Limit: 50},
		{Counter: "decrypt/restricted/24h0m0s/=spiffe://bank.example/payments", Start: day, End: day.Add(24 * time.Hour), Limit: 1000},
	}
	got := r.calls[0]
	if len(got) != len(want) {
		t.Fatalf("ConsumeBudget got %d windows, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Counter != want[i].Counter || !got[i].Start.Equal(want[i].Start) || !got[i].End.Equal(want[i].End) || got[i].Limit != want[i].Limit {
			t.Errorf("window %d = %+v, want %+v", i, got[i], want[i])
		}
	}

	// Long or odd names are hashed, and stay within the store's 512 bytes.
	for _, p := range []string{strings.Repeat("x", 600), "a\x00b", "a\xffb"} {
		r.calls = nil
		if _, _, err := b.Consume(t.Context(), p, "decrypt", "restricted", 1); err != nil {
			t.Fatalf("Consume(...) err = %v, want nil", err)
		}
		for _, w := range r.calls[0] {
			if len(w.Counter) > 512 || !strings.Contains(w.Counter, "/#") {
				t.Errorf("counter for principal %q = %q, want a hashed name of at most 512 bytes", p, w.Counter)
			}
		}
	}

	// A store refusal names a window: retryAfter is to its end.
	r.exceeded = 1
	ok, retry, err := b.Consume(t.Context(), "alice", "decrypt", "restricted", 1)
	if wantRetry := sevenMin.Add(7 * time.Minute).Sub(clock.Now()); ok || retry != wantRetry || err != nil {
		t.Errorf("Consume(...) with window 1 exceeded = %v, %v, %v; want false, %v, nil", ok, retry, err, wantRetry)
	}
	// A store error is returned, refused.
	r.exceeded, r.err = 0, errors.New("disk on fire")
	if ok, _, err := b.Consume(t.Context(), "alice", "decrypt", "restricted", 1); ok || !errors.Is(err, r.err) {
		t.Errorf("Consume(...) with a store error = %v, %v; want false, the store's error", ok, err)
	}
	// A store answer that names no window is an error.
	for _, bad := range []int{-2, 3, 100} {
		r.exceeded, r.err = bad, nil
		if ok, _, err := b.Consume(t.Context(), "alice", "decrypt", "restricted", 1); ok || err == nil {
			t.Errorf("Consume(...) with the store reporting window %d = %v, %v; want false, an error", bad, ok, err)
		}
	}
}

func TestBudgetsStoreErrors(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, clock)
	b := newBudgets(t, s, []limits.BudgetRule{decryptRestricted}, clock)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if ok, _, err := b.Consume(ctx, "alice", "decrypt", "restricted", 1); ok || !errors.Is(err, context.Canceled) {
		t.Errorf("Consume(canceled ctx, ...) = %v, %v; want false, context.Canceled", ok, err)
	}
	for _, n := range []int64{0, -1} {
		if ok, _, err := b.Consume(t.Context(), "alice", "decrypt", "restricted", n); ok || err == nil {
			t.Errorf("Consume(ctx, %q, ..., %d) = %v, %v; want false, an error", "alice", n, ok, err)
		}
	}
	s.Close()
	if ok, _, err := b.Consume(t.Context(), "alice", "decrypt", "restricted", 1); ok || err == nil {
		t.Errorf("Consume(...) on a closed store = %v, %v; want false, an error", ok, err)
	}
}

func TestNewBudgetsInvalid(t *testing.T) {
	sec := []limits.Window{{Period: time.Second, Limit: 1}}
	tests := []struct {
		name  string
		rules []limits.BudgetRule
	}{
		{"period under a second", []limits.BudgetRule{{Action: "decrypt", Tier: "t", Windows: []limits.Window{{Period: time.Second - 1, Limit: 1}}}}},
		{"period zero", []limits.BudgetRule{{Action: "decrypt", Tier: "t", Windows: []limits.Window{{Limit: 1}}}}},
		{"limit zero", []limits.BudgetRule{{Action: "decrypt", Tier: "t", Windows: []limits.Window{{Period: time.Second}}}}},
		{"limit negative", []limits.BudgetRule{{Action: "decrypt", Tier: "t", Windows: []limits.Window{{Period: time.Second, Limit: -1}}}}},
		{"no windows", []limits.BudgetRule{{Action: "decrypt", Tier: "t"}}},
		{"period twice", []limits.BudgetRule{{Action: "decrypt", Tier: "t", Windows: []limits.Window{{Period: time.Second, Limit: 1}, {Period: time.Second, Limit: 2}}}}},
		{"duplicate action and tier", []limits.BudgetRule{{Action: "decrypt", Tier: "t", Windows: sec}, {Action: "decrypt", Tier: "t", Windows: sec}}},
		{"empty action", []limits.BudgetRule{{Tier: "t", Windows: sec}}},
		{"empty tier", []limits.BudgetRule{{Action: "decrypt", Windows: sec}}},
		{"slash in action", []limits.BudgetRule{{Action: "de/crypt", Tier: "t", Windows: sec}}},
		{"slash in tier", []limits.BudgetRule{{Action: "decrypt", Tier: "a/b", Windows: sec}}},
		{"long tier", []limits.BudgetRule{{Action: "decrypt", Tier: strings.Repeat("t", 65), Windows: sec}}},
		{"tier not UTF-8", []limits.BudgetRule{{Action: "decrypt", Tier: "\xff", Windows: sec}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := limits.NewBudgets(&recorder{}, tt.rules, nil); !errors.Is(err, limits.ErrInvalidConfig) {
				t.Errorf("NewBudgets(%+v) err = %v, want ErrInvalidConfig", tt.rules, err)
			}
		})
	}
	if _, err := limits.NewBudgets(nil, nil, nil); !errors.Is(err, limits.ErrInvalidConfig) {
		t.Errorf("NewBudgets(nil, nil, nil) err = %v, want ErrInvalidConfig", err)
	}
	ok := []limits.BudgetRule{
		{Action: "decrypt", Tier: "restricted", Windows: sec},
		{Action: "decrypt", Tier: "confidential", Windows: sec},
		{Action: strings.Repeat("a", 64), Tier: strings.Repeat("t", 64), Windows: []limits.Window{{Period: time.Second, Limit: 1}, {Period: 1<<63 - 1, Limit: 1}}},
	}
	if _, err := limits.NewBudgets(&recorder{}, ok, nil); err != nil {
		t.Errorf("NewBudgets(%+v) err = %v, want nil", ok, err)
	}
}
