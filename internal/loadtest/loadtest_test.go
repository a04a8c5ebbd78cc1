package loadtest

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond // 1..100 ms
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample p50", ms(7), 50, 7 * time.Millisecond},
		{"one sample p99", ms(7), 99, 7 * time.Millisecond},
		{"two samples p50 is the lower", ms(1, 2), 50, 1 * time.Millisecond},
		{"two samples p51 is the upper", ms(1, 2), 51, 2 * time.Millisecond},
		{"odd count p50 is the median", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"even count p50 nearest rank", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"1..100 p50", hundred, 50, 50 * time.Millisecond},
		{"1..100 p99", hundred, 99, 99 * time.Millisecond},
		{"1..100 p99.9", hundred, 99.9, 100 * time.Millisecond},
		{"1..100 p100", hundred, 100, 100 * time.Millisecond},
		{"1..100 p1", hundred, 1, 1 * time.Millisecond},
		{"p0 is the minimum", ms(3, 4, 9), 0, 3 * time.Millisecond},
		{"p above 100 is the maximum", ms(3, 4, 9), 150, 9 * time.Millisecond},
		{"ten samples p99 is the maximum", ms(1, 1, 1, 1, 1, 1, 1, 1, 1, 50), 99, 50 * time.Millisecond},
		{"ten samples p90", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestRunStopsByItself(t *testing.T) {
	sleep := func(d time.Duration) func(context.Context) error {
		return func(ctx context.Context) error {
			select {
			case <-time.After(d):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	failing := errors.New("boom")
	tests := []struct {
		name    string
		opts    Options
		op      func(context.Context) error
		maxWall time.Duration // Run must return within this
		check   func(t *testing.T, r Result)
	}{
		{
			name: "time bound", opts: Options{Concurrency: 4, Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond},
			op: sleep(time.Millisecond), maxWall: 2 * time.Second,
			check: func(t *testing.T, r Result) {
				if r.Ops == 0 || r.Errors != 0 || r.FirstError != nil {
					t.Errorf("Run() = %+v, want ops and no errors", r)
				}
				if r.Elapsed < 200*time.Millisecond {
					t.Errorf("Elapsed = %v, want at least the 200ms duration", r.Elapsed)
				}
				if r.P50 < time.Millisecond || r.P99 < r.P50 || r.Max < r.P99 {
					t.Errorf("latencies p50 %v p99 %v max %v, want 1ms <= p50 <= p99 <= max", r.P50, r.P99, r.Max)
				}
			},
		},
		{
			name: "count bound", opts: Options{Concurrency: 8, Duration: time.Minute, MaxOps: 1000},
			op: func(context.Context) error { return nil }, maxWall: 5 * time.Second,
			check: func(t *testing.T, r Result) {
				if r.Ops == 0 || r.Ops > 1000 {
					t.Errorf("Ops = %d, want 1..1000 (MaxOps)", r.Ops)
				}
			},
		},
		{
			name: "stuck operations are canceled after the grace", opts: Options{Concurrency: 3, Duration: 50 * time.Millisecond, StopGrace: 50 * time.Millisecond},
			op: sleep(time.Hour), maxWall: 2 * time.Second,
			check: func(t *testing.T, r Result) {
				if r.Ops != 0 || r.Errors != 3 || !errors.Is(r.FirstError, context.Canceled) {
					t.Errorf("Run() = %+v, want 0 ops and 3 canceled errors", r)
				}
			},
		},
		{
			name: "errors are counted, not timed", opts: Options{Concurrency: 2, Duration: 50 * time.Millisecond},
			op: func(context.Context) error { time.Sleep(time.Millisecond); return failing }, maxWall: 2 * time.Second,
			check: func(t *testing.T, r Result) {
				if r.Ops != 0 || r.Errors == 0 || !errors.Is(r.FirstError, failing) || r.P99 != 0 {
					t.Errorf("Run() = %+v, want only errors", r)
				}
			},
		},
		{
			name: "invalid concurrency runs nothing", opts: Options{Concurrency: 0, Duration: time.Hour},
			op: func(context.Context) error { panic("must not run") }, maxWall: time.Second,
			check: func(t *testing.T, r Result) {
				if r.FirstError == nil || r.Ops != 0 {
					t.Errorf("Run() = %+v, want an options error", r)
				}
			},
		},
		{
			name: "too long runs nothing", opts: Options{Concurrency: 1, Duration: 2 * MaxDuration},
			op: func(context.Context) error { panic("must not run") }, maxWall: time.Second,
			check: func(t *testing.T, r Result) {
				if r.FirstError == nil {
					t.Errorf("Run() = %+v, want an options error", r)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			r := Run(context.Background(), tt.opts, tt.op)
			if wall := time.Since(start); wall > tt.maxWall {
				t.Errorf("Run() took %v, want at most %v", wall, tt.maxWall)
			}
			tt.check(t, r)
		})
	}
}

func TestRunWarmupIsNotMeasured(t *testing.T) {
	var calls atomic.Int64
	r := Run(context.Background(), Options{Concurrency: 2, Warmup: 100 * time.Millisecond, Duration: 100 * time.Millisecond}, func(context.Context) error {
		calls.Add(1)
		time.Sleep(time.Millisecond)
		return nil
	})
	if r.Ops == 0 || r.Ops >= calls.Load() {
		t.Errorf("Ops = %d of %d calls, want the warmup calls left out", r.Ops, calls.Load())
	}
}

func TestRunStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := Run(ctx, Options{Concurrency: 4, Duration: time.Hour}, func(ctx context.Context) error {
		select {
		case <-time.After(time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if wall := time.Since(start); wall > 2*time.Second {
		t.Errorf("Run() took %v after its context ended", wall)
	}
	if r.Ops == 0 || r.FirstError == nil {
		t.Errorf("Run() = %+v, want some ops and the context's error", r)
	}
}

func TestRequireLoopback(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:8443", true},
		{"127.8.9.10:1", true},
		{"[::1]:443", true},
		{"localhost:80", true},
		{"::1", true},
		{"10.0.0.1:443", false},
		{"0.0.0.0:443", false},
		{"example.com:443", false},
		{"", false},
	}
	for _, tt := range tests {
		if err := RequireLoopback(tt.addr); (err == nil) != tt.ok {
			t.Errorf("RequireLoopback(%q) = %v, want ok %v", tt.addr, err, tt.ok)
		}
	}
}

func TestMerge(t *testing.T) {
	a := Result{Ops: 3, Elapsed: time.Second}
	a.summarize(ms(1, 2, 3))
	b := Result{Ops: 2, Errors: 1, Elapsed: time.Second, FirstError: errors.New("x")}
	b.summarize(ms(10, 20))
	m := Merge(a, b)
	if m.Ops != 5 || m.Errors != 1 || m.Elapsed != 2*time.Second || m.OpsPerSec != 2.5 || m.FirstError == nil {
		t.Errorf("Merge() = %+v, want 5 ops, 1 error, 2s, 2.5 ops/s", m)
	}
	if m.P50 != 3*time.Millisecond || m.P99 != 20*time.Millisecond || m.Max != 20*time.Millisecond || m.Mean != 36*time.Millisecond/5 {
		t.Errorf("Merge() latencies p50 %v p99 %v max %v mean %v, want 3ms 20ms 20ms 7.2ms", m.P50, m.P99, m.Max, m.Mean)
	}
	if z := Merge(); z.Ops != 0 || z.OpsPerSec != 0 || z.P99 != 0 {
		t.Errorf("Merge() of nothing = %+v, want zero", z)
	}
}
