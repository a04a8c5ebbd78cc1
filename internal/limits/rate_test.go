package limits_test

import (
	"errors"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/limits"
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

// newFakeClock starts a quarter of a second into a UTC second, at 10:00 in
// the morning, so that tests see windows of a second and of a day.
func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 10, 0, 0, 250_000_000, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newLimiter(t testing.TB, cfg limits.RateConfig, now func() time.Time) *limits.Limiter {
	t.Helper()
	l, err := limits.NewLimiter(cfg, now)
	if err != nil {
		t.Fatalf("NewLimiter(%+v) err = %v, want nil", cfg, err)
	}
	return l
}

// step either moves the clock by wait, or (wait == 0) calls Allow and
// expects ok and, when refused, retryAfter.
type step struct {
	wait             time.Duration
	principal, class string
	ok               bool
	retryAfter       time.Duration
}

func allow(p, c string) step { return step{principal: p, class: c, ok: true} }
func refuse(p, c string, retry time.Duration) step {
	return step{principal: p, class: c, retryAfter: retry}
}
func wait(d time.Duration) step { return step{wait: d} }

func times(n int, s step) []step {
	out := make([]step, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// steps flattens its arguments, each a step or a []step.
func steps(parts ...any) []step {
	var out []step
	for _, p := range parts {
		switch p := p.(type) {
		case step:
			out = append(out, p)
		case []step:
			out = append(out, p...)
		default:
			panic("steps: not a step")
		}
	}
	return out
}

// Rates and waits that binary floating point holds exactly, so that the
// expected retryAfter values are exact.
const (
	slow    = 1.0 / 4096 // a token every 4096s
	slowGap = 4096 * time.Second
	ms      = time.Millisecond
)

func TestAllow(t *testing.T) {
	crypto := func(r limits.Rate) map[string]limits.Rate { return map[string]limits.Rate{"crypto": r} }
	tests := []struct {
		name  string
		cfg   limits.RateConfig
		steps []step
	}{
		{
			name: "burst, refusal, refill",
			cfg:  limits.RateConfig{Classes: crypto(limits.Rate{PerSecond: 4, Burst: 3})},
			steps: steps(
				times(3, allow("alice", "crypto")),
				refuse("alice", "crypto", 250*ms), refuse("alice", "crypto", 250*ms),
				wait(125*ms), refuse("alice", "crypto", 125*ms),
				wait(125*ms), allow("alice", "crypto"), refuse("alice", "crypto", 250*ms),
				wait(375*ms), allow("alice", "crypto"), refuse("alice", "crypto", 125*ms),
				wait(time.Hour), // refills up to the burst, no further
				times(3, allow("alice", "crypto")),
				refuse("alice", "crypto", 250*ms),
			),
		},
		{
			name: "global limit across principals and classes",
			cfg:  limits.RateConfig{Global: limits.Rate{PerSecond: 1, Burst: 3}},
			steps: steps(
				allow("alice", "crypto"), allow("bob", "read"), allow("carol", "admin"),
				refuse("dave", "crypto", time.Second), refuse("alice", "read", time.Second),
				wait(500*ms), refuse("bob", "read", 500*ms),
				wait(500*ms), allow("bob", "read"), refuse("carol", "admin", time.Second),
			),
		},
		{
			name: "global refusal takes no principal token",
			cfg: limits.RateConfig{
				Global:  limits.Rate{PerSecond: 1, Burst: 1},
				Classes: crypto(limits.Rate{PerSecond: slow, Burst: 1}),
			},
			steps: steps(
				allow("alice", "crypto"),
				refuse("bob", "crypto", time.Second), refuse("bob", "crypto", time.Second),
				wait(time.Second), allow("bob", "crypto"), refuse("bob", "crypto", slowGap),
			),
		},
		{
			name: "principal refusal takes no global token",
			cfg: limits.RateConfig{
				Global:  limits.Rate{PerSecond: slow, Burst: 2},
				Classes: crypto(limits.Rate{PerSecond: slow, Burst: 1}),
			},
			steps: steps(
				allow("alice", "crypto"),
				refuse("alice", "crypto", slowGap), refuse("alice", "crypto", slowGap),
				allow("bob", "crypto"),
				wait(slowGap/2),
				refuse("alice", "crypto", slowGap/2), // both buckets half full
				refuse("carol", "crypto", slowGap/2), // the global one
			),
		},
		{
			name: "refused by both buckets: the longer wait",
			cfg: limits.RateConfig{
				Global:  limits.Rate{PerSecond: 1, Burst: 1},
				Classes: crypto(limits.Rate{PerSecond: 0.5, Burst: 1}),
			},
			steps: steps(
				allow("alice", "crypto"), refuse("alice", "crypto", 2*time.Second),
				wait(time.Second), refuse("alice", "crypto", time.Second),
				allow("bob", "crypto"), refuse("alice", "crypto", time.Second),
				wait(time.Second), allow("alice", "crypto"),
			),
		},
		{
			name: "classes and principals isolated",
			cfg: limits.RateConfig{Classes: map[string]limits.Rate{
				"crypto": {PerSecond: 1, Burst: 2},
				"admin":  {PerSecond: 1, Burst: 1},
			}},
			steps: steps(
				allow("alice", "crypto"), allow("alice", "crypto"), refuse("alice", "crypto", time.Second),
				allow("alice", "admin"), refuse("alice", "admin", time.Second),
				allow("bob", "crypto"), allow("bob", "admin"), allow("bob", "crypto"), refuse("bob", "crypto", time.Second),
				allow("Alice", "crypto"), allow("alice ", "crypto"), allow("", "crypto"), allow("", "admin"),
				refuse("alice", "crypto", time.Second), refuse("", "admin", time.Second),
			),
		},
		{
			name: "unlisted class unlimited per principal",
			cfg: limits.RateConfig{Classes: map[string]limits.Rate{
				"crypto": {PerSecond: 1, Burst: 1},
				"read":   {PerSecond: 0, Burst: 0}, // listed as unlimited
			}},
			steps: steps(
				allow("alice", "crypto"), refuse("alice", "crypto", time.Second),
				times(1000, allow("alice", "read")),
				times(1000, allow("alice", "list")),
				times(1000, allow("alice", "")),
				refuse("alice", "crypto", time.Second),
			),
		},
		{
			name: "unlisted class still under global",
			cfg: limits.RateConfig{
				Global:  limits.Rate{PerSecond: 1, Burst: 3},
				Classes: crypto(limits.Rate{PerSecond: 1, Burst: 1}),
			},
			steps: steps(
				allow("alice", "read"), allow("alice", "read"), allow("alice", "crypto"),
				refuse("alice", "read", time.Second), refuse("bob", "crypto", time.Second),
			),
		},
		{
			name: "unlimited",
			cfg:  limits.RateConfig{},
			steps: steps(
				times(1000, allow("alice", "crypto")),
			),
		},
		{
			name: "principals dropped least recently used first",
			cfg:  limits.RateConfig{Classes: crypto(limits.Rate{PerSecond: slow, Burst: 1}), MaxPrincipals: 2},
			steps: steps(
				allow("alice", "crypto"), allow("bob", "crypto"),
				refuse("alice", "crypto", slowGap), // alice used last: bob goes first
				allow("carol", "crypto"),
				refuse("alice", "crypto", slowGap), // kept; now carol goes first
				allow("bob", "crypto"),             // dropped before, so full again
				allow("carol", "crypto"),
				refuse("bob", "crypto", slowGap),
				allow("alice", "crypto"),
			),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			l := newLimiter(t, tt.cfg, clock.Now)
			for i, s := range tt.steps {
				if s.wait != 0 {
					clock.Advance(s.wait)
					continue
				}
				ok, retry := l.Allow(s.principal, s.class)
				switch {
				case ok != s.ok:
					t.Fatalf("step %d: Allow(%q, %q) = %v, %v; want %v", i, s.principal, s.class, ok, retry, s.ok)
				case ok && retry != 0:
					t.Fatalf("step %d: Allow(%q, %q) = true, %v; want true, 0", i, s.principal, s.class, retry)
				case !ok && retry != s.retryAfter:
					t.Fatalf("step %d: Allow(%q, %q) = false, %v; want false, %v", i, s.principal, s.class, retry, s.retryAfter)
				}
			}
		})
	}
}

func TestAllowMaxPrincipals(t *testing.T) {
	tests := []struct {
		max, principals, want int
	}{
		{max: 1, principals: 10, want: 1},
		{max: 17, principals: 100, want: 17},
		{max: 1000, principals: 5000, want: 1000},
		{max: 0, principals: 1000, want: 1000}, // default bound, not reached
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.max), func(t *testing.T) {
			cfg := limits.RateConfig{
				Classes:       map[string]limits.Rate{"crypto": {PerSecond: 1, Burst: 1}, "admin": {PerSecond: 1, Burst: 1}},
				MaxPrincipals: tt.max,
			}
			l := newLimiter(t, cfg, newFakeClock().Now)
			for i := range tt.principals {
				for _, class := range []string{"crypto", "admin", "read"} {
					if ok, retry := l.Allow("p"+strconv.Itoa(i), class); !ok {
						t.Fatalf("Allow(%q, %q) = false, %v; want true", "p"+strconv.Itoa(i), class, retry)
					}
				}
			}
			if got := l.Tracked(); got != tt.want {
				t.Errorf("after %d principals with MaxPrincipals %d: %d tracked, want %d", tt.principals, tt.max, got, tt.want)
			}
			// The most recent principal is kept, with its tokens taken.
			last := "p" + strconv.Itoa(tt.principals-1)
			if ok, _ := l.Allow(last, "crypto"); ok {
				t.Errorf("Allow(%q, %q) again = true, want false", last, "crypto")
			}
		})
	}
}

// TestAllowConcurrent checks that no token is taken twice or lost when many
// goroutines call at once, with the clock standing still.
func TestAllowConcurrent(t *testing.T) {
	const (
		goroutines = 16
		calls      = 50
	)
	tests := []struct {
		name      string
		cfg       limits.RateConfig
		principal func(g int) string
		want      int64
	}{
		{
			name:      "one principal",
			cfg:       limits.RateConfig{Global: limits.Rate{PerSecond: 1, Burst: 300}, Classes: map[string]limits.Rate{"crypto": {PerSecond: 1, Burst: 100}}},
			principal: func(int) string { return "alice" },
			want:      100,
		},
		{
			name:      "many principals, global decides",
			cfg:       limits.RateConfig{Global: limits.Rate{PerSecond: 1, Burst: 300}, Classes: map[string]limits.Rate{"crypto": {PerSecond: 1, Burst: 40}}},
			principal: func(g int) string { return "p" + strconv.Itoa(g) },
			want:      300,
		},
		{
			name:      "many principals, each decides",
			cfg:       limits.RateConfig{Global: limits.Rate{PerSecond: 1, Burst: 700}, Classes: map[string]limits.Rate{"crypto": {PerSecond: 1, Burst: 40}}},
			principal: func(g int) string { return "p" + strconv.Itoa(g) },
			want:      goroutines * 40,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(t, tt.cfg, newFakeClock().Now)
			var allowed atomic.Int64
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					for range calls {
						if ok, _ := l.Allow(tt.principal(g), "crypto"); ok {
							allowed.Add(1)
						}
					}
				})
			}
			wg.Wait()
			if got := allowed.Load(); got != tt.want {
				t.Errorf("%d goroutines × %d Allow calls: %d allowed, want %d", goroutines, calls, got, tt.want)
			}
		})
	}
}

func TestNewLimiterInvalid(t *testing.T) {
	tests := []struct {
		name string
		cfg  limits.RateConfig
	}{
		{"global burst zero", limits.RateConfig{Global: limits.Rate{PerSecond: 1}}},
		{"global NaN", limits.RateConfig{Global: limits.Rate{PerSecond: math.NaN(), Burst: 1}}},
		{"global infinite", limits.RateConfig{Global: limits.Rate{PerSecond: math.Inf(1), Burst: 1}}},
		{"class burst zero", limits.RateConfig{Classes: map[string]limits.Rate{"crypto": {PerSecond: 1}}}},
		{"class burst negative", limits.RateConfig{Classes: map[string]limits.Rate{"crypto": {PerSecond: 1, Burst: -1}}}},
		{"class NaN", limits.RateConfig{Classes: map[string]limits.Rate{"crypto": {PerSecond: math.NaN(), Burst: 1}}}},
		{"empty class name", limits.RateConfig{Classes: map[string]limits.Rate{"": {PerSecond: 1, Burst: 1}}}},
		{"negative MaxPrincipals", limits.RateConfig{MaxPrincipals: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := limits.NewLimiter(tt.cfg, nil); !errors.Is(err, limits.ErrInvalidConfig) {
				t.Errorf("NewLimiter(%+v) err = %v, want ErrInvalidConfig", tt.cfg, err)
			}
		})
	}
}

func BenchmarkAllow(b *testing.B) {
	const principals = 1000
	names := make([]string, principals)
	for i := range names {
		names[i] = "spiffe://bank.example/payments/" + strconv.Itoa(i)
	}
	l := newLimiter(b, limits.RateConfig{
		Global:  limits.Rate{PerSecond: 1e12, Burst: 1e9},
		Classes: map[string]limits.Rate{"crypto": {PerSecond: 1e9, Burst: 1e6}},
	}, nil)
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(7919)) // each goroutine its own walk over the principals
		for pb.Next() {
			if ok, _ := l.Allow(names[i%principals], "crypto"); !ok {
				b.Error("Allow refused")
				return
			}
			i++
		}
	})
}
