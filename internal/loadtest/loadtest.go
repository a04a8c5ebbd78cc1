// Package loadtest measures tresor under load: a bounded, self-stopping
// closed-loop load generator ([Run]) and an in-process harness ([Start]) that
// serves two tresor servers on one keyring (gRPC and REST, mutual TLS,
// SQLite store, a root key): a protected one with the whole interceptor
// chain (bearer token, example policies, rate limiter) and an open one
// without authentication or policy, and a bare net/http AES-256-GCM baseline,
// all on loopback, for `tresor bench` and the Go benchmarks in this package.
//
// Reach for [Start] to get a [Harness], take an operation from it
// ([Harness.GRPCEncrypt], [Harness.GRPCEncryptOpen], [Harness.GRPCHealth],
// [Harness.RESTEncrypt], [Harness.RESTBaseline]) and pass it to [Run].
//
// It is a development tool: it only ever targets loopback addresses
// ([RequireLoopback]).
package loadtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"sync"
	"time"
)

// Limits and defaults of Options.
const (
	MaxConcurrency  = 4096
	MaxDuration     = time.Hour
	DefaultMaxOps   = 1 << 22 // 4 Mi ops, 32 MiB of latency samples
	DefaultDuration = 10 * time.Second
	// DefaultStopGrace is how long Run waits for operations still in flight
	// when the measurement ends before it cancels their context.
	DefaultStopGrace = 5 * time.Second
)

// Options bound one Run.
type Options struct {
	// Concurrency is the number of callers, each calling op in a loop
	// (closed loop: a caller starts its next call when the last one ended).
	Concurrency int
	// Duration is the measured time after Warmup; zero means DefaultDuration.
	Duration time.Duration
	// Warmup runs the load without measuring it, first.
	Warmup time.Duration
	// MaxOps bounds the measured operations (successes and errors); the run
	// stops early when it is reached. Zero means DefaultMaxOps.
	MaxOps int64
	// StopGrace is how long operations still in flight at the end get before
	// their context is canceled; zero means DefaultStopGrace.
	StopGrace time.Duration
}

// Result of a Run. Ops and the latencies count successful operations that
// started within the measured window; Errors counts the failed ones.
type Result struct {
	Ops    int64
	Errors int64
	// OpsPerSec is Ops over Elapsed.
	OpsPerSec float64
	// Elapsed runs from the end of the warmup until every caller stopped.
	Elapsed   time.Duration
	P50, P99  time.Duration
	Max, Mean time.Duration
	// CPU is the CPU time (user and system) the whole process used during
	// the measured window: load and, in process, the servers. Unlike
	// OpsPerSec it does not depend on what else the machine runs.
	CPU time.Duration
	// FirstError is the first error an operation returned in the window.
	FirstError error

	sorted []time.Duration // the latencies, ascending, for Merge
}

// Merge combines the results of several runs of one operation (for example
// rounds interleaved with other operations) as if they were one run: ops,
// errors and elapsed times add up, the percentiles are those of all samples.
func Merge(rs ...Result) Result {
	var m Result
	var n int
	for _, r := range rs {
		n += len(r.sorted)
	}
	all := make([]time.Duration, 0, n)
	for _, r := range rs {
		m.Ops += r.Ops
		m.Errors += r.Errors
		m.Elapsed += r.Elapsed
		m.CPU += r.CPU
		if m.FirstError == nil {
			m.FirstError = r.FirstError
		}
		all = append(all, r.sorted...)
	}
	slices.Sort(all)
	m.summarize(all)
	return m
}

// CPUPerOp is the process CPU time per successful operation.
func (r Result) CPUPerOp() time.Duration {
	if r.Ops == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Ops)
}

// summarize sets the rates and latencies from all, ascending.
func (r *Result) summarize(all []time.Duration) {
	r.sorted = all
	if r.Elapsed > 0 {
		r.OpsPerSec = float64(r.Ops) / r.Elapsed.Seconds()
	}
	r.P50 = Percentile(all, 50)
	r.P99 = Percentile(all, 99)
	r.Max, r.Mean = 0, 0
	if len(all) > 0 {
		r.Max = all[len(all)-1]
		var sum float64
		for _, d := range all {
			sum += float64(d)
		}
		r.Mean = time.Duration(sum / float64(len(all)))
	}
}

func (o Options) check() (Options, error) {
	if o.Concurrency < 1 || o.Concurrency > MaxConcurrency {
		return o, fmt.Errorf("loadtest: concurrency %d out of range 1..%d", o.Concurrency, MaxConcurrency)
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.Duration < 0 || o.Warmup < 0 || o.MaxOps < 0 || o.StopGrace < 0 {
		return o, errors.New("loadtest: negative duration, warmup, max ops or stop grace")
	}
	if o.Duration+o.Warmup > MaxDuration {
		return o, fmt.Errorf("loadtest: warmup plus duration exceed %v", MaxDuration)
	}
	if o.MaxOps == 0 {
		o.MaxOps = DefaultMaxOps
	}
	if o.StopGrace == 0 {
		o.StopGrace = DefaultStopGrace
	}
	return o, nil
}

// worker is one caller's record; padded apart so callers do not share a
// cache line for their counters.
type worker struct {
	lat    []time.Duration
	errs   int64
	first  error
	firstT time.Time
	_      [64]byte
}

// Run calls op from opts.Concurrency callers in closed loops for
// opts.Warmup, then measures for opts.Duration (or until opts.MaxOps
// operations), and returns when every caller has stopped. It stops early,
// returning what it measured, when ctx ends. Invalid options give a Result
// with FirstError set and no load.
func Run(ctx context.Context, opts Options, op func(context.Context) error) Result {
	opts, err := opts.check()
	if err != nil {
		return Result{FirstError: err}
	}
	// Operations run under opCtx, canceled StopGrace after the end (or when
	// ctx ends): a stuck operation cannot keep Run from returning.
	opCtx, cancelOps := context.WithCancel(ctx)
	defer cancelOps()

	start := time.Now()
	measureFrom := start.Add(opts.Warmup)
	measureTo := measureFrom.Add(opts.Duration)

	var (
		budget  = opts.MaxOps // measured operations left; guarded by mu
		mu      sync.Mutex
		stopped = make(chan struct{}) // closed on the count bound
		stop    sync.Once
	)
	// take reserves up to n measured operations and returns how many it
	// got; 0 means the count bound is reached. Callers reserve in batches,
	// which keeps the lock off the hot path.
	const batch = 64
	take := func(n int64) int64 {
		mu.Lock()
		defer mu.Unlock()
		if budget <= 0 {
			return 0
		}
		n = min(n, budget)
		budget -= n
		return n
	}

	workers := make([]worker, opts.Concurrency)
	// A modest start: the samples live in the heap the servers under test
	// share in process, and a large one would space out their collections.
	perWorker := int(min(opts.MaxOps/int64(opts.Concurrency)+1, 1<<10))
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		w.lat = make([]time.Duration, 0, perWorker)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var credit int64
			for {
				select {
				case <-stopped:
					return
				case <-opCtx.Done():
					return
				default:
				}
				t0 := time.Now()
				if !t0.Before(measureTo) {
					return
				}
				measured := !t0.Before(measureFrom)
				if measured {
					if credit == 0 {
						if credit = take(batch); credit == 0 {
							stop.Do(func() { close(stopped) })
							return
						}
					}
					credit--
				}
				err := op(opCtx)
				if !measured {
					continue
				}
				d := time.Since(t0)
				if err != nil {
					if w.errs == 0 {
						w.first, w.firstT = err, t0
					}
					w.errs++
					continue
				}
				w.lat = append(w.lat, d)
			}
		}()
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timer := time.NewTimer(time.Until(measureTo) + opts.StopGrace)
	defer timer.Stop()
	var cpu0 time.Duration
	warm := time.NewTimer(time.Until(measureFrom))
	defer warm.Stop()
	select {
	case <-warm.C:
		cpu0 = processCPU()
	case <-done:
	case <-ctx.Done():
	}
	select {
	case <-done:
	case <-ctx.Done():
		<-done
	case <-timer.C:
		cancelOps()
		<-done
	}
	end := time.Now()
	cpu1 := processCPU()

	var res Result
	var all []time.Duration
	var firstT time.Time
	for i := range workers {
		w := &workers[i]
		all = append(all, w.lat...)
		res.Errors += w.errs
		if w.first != nil && (res.FirstError == nil || w.firstT.Before(firstT)) {
			res.FirstError, firstT = w.first, w.firstT
		}
	}
	if ctx.Err() != nil && res.FirstError == nil {
		res.FirstError = ctx.Err()
	}
	res.Ops = int64(len(all))
	if end.After(measureFrom) {
		res.Elapsed = end.Sub(measureFrom)
		if cpu0 > 0 {
			res.CPU = cpu1 - cpu0
		}
	}
	slices.Sort(all)
	res.summarize(all)
	return res
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted, an
// ascending slice, by the nearest-rank method: the smallest sample that at
// least p percent of the samples are less than or equal to. It returns 0 for
// an empty slice; p <= 0 gives the minimum and p > 100 the maximum.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if p <= 0 || math.IsNaN(p) {
		return sorted[0]
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = max(1, min(rank, n))
	return sorted[rank-1]
}

// RequireLoopback returns an error unless addr ("host:port", or a bare host)
// names only loopback addresses: the load tool never targets another machine.
func RequireLoopback(addr string) error {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("loadtest: %q is not a loopback address; the load tool only targets this machine", addr)
	}
	return nil
}
