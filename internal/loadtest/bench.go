package loadtest

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"text/tabwriter"
	"time"
)

// Bench targets, in the order a run measures them.
const (
	TargetGRPCEmpty       = "grpc-empty"        // health Check, protected server
	TargetGRPCEncrypt     = "grpc-encrypt"      // Encrypt, protected server (the whole chain)
	TargetGRPCEncryptOpen = "grpc-encrypt-open" // Encrypt, open server (no token, no policy)
	TargetRESTBaseline    = "rest-baseline"     // bare net/http baseline
	TargetRESTEncrypt     = "rest-encrypt"      // REST Encrypt, protected server
)

// BenchOptions configure Bench.
type BenchOptions struct {
	Concurrency int
	Duration    time.Duration
	Warmup      time.Duration
	// Size is the plaintext size in bytes.
	Size int
	// Target is "grpc" (grpc-empty, grpc-encrypt), "rest" (rest-baseline,
	// rest-encrypt), "chain" (grpc-encrypt-open, grpc-encrypt) or "all".
	Target string
	// CPUProfile, when set, is a path prefix: each target's CPU profile is
	// written to CPUProfile.<target>.r<round>.pprof (go tool pprof merges
	// the rounds). Server goroutines carry the label side=server and load
	// goroutines side=client (go tool pprof -tags, -tagfocus side=server).
	CPUProfile string
	// HTTP1 makes the REST clients speak HTTP/1.1 instead of HTTP/2.
	HTTP1 bool
	// Rounds splits each target's Duration (and Warmup) into this many
	// slices, run round-robin over the targets, so that a disturbance of the
	// machine (another process, a GC cycle) weighs on every target alike.
	// Zero means DefaultRounds; one runs the targets one after the other.
	Rounds int
}

// DefaultRounds is the default of BenchOptions.Rounds.
const DefaultRounds = 10

// BenchRow is one measured target.
type BenchRow struct {
	Target string
	Result
}

// BenchReport is one Bench run.
type BenchReport struct {
	Rows []BenchRow
	// GRPCRatio is gRPC Encrypt ops/s over the empty call's; RESTRatio is
	// REST Encrypt ops/s over the baseline's; ChainRatio is gRPC Encrypt
	// ops/s on the protected server over the open server's: what the
	// token, the policy and the rate limiter cost. Zero when not measured.
	GRPCRatio, RESTRatio, ChainRatio float64
	// GRPCRounds, RESTRounds and ChainRounds are the ratios of each round,
	// for their spread.
	GRPCRounds, RESTRounds, ChainRounds []float64
	// GRPCCPURatio, RESTCPURatio and ChainCPURatio compare process CPU time
	// per operation instead of rates: the empty call's (baseline's, open
	// server's) over Encrypt's. On a saturated machine they equal the rate
	// ratios; unlike those, they do not move with what else the machine
	// runs.
	GRPCCPURatio, RESTCPURatio, ChainCPURatio float64
}

func (o BenchOptions) targets() ([]string, error) {
	switch o.Target {
	case "grpc":
		return []string{TargetGRPCEmpty, TargetGRPCEncrypt}, nil
	case "rest":
		return []string{TargetRESTBaseline, TargetRESTEncrypt}, nil
	case "chain":
		return []string{TargetGRPCEncryptOpen, TargetGRPCEncrypt}, nil
	case "all", "":
		return []string{TargetGRPCEmpty, TargetGRPCEncryptOpen, TargetGRPCEncrypt, TargetRESTBaseline, TargetRESTEncrypt}, nil
	}
	return nil, fmt.Errorf("loadtest: unknown target %q (want grpc, rest, chain or all)", o.Target)
}

// Bench starts a harness and measures the targets one after the other in
// this process, then writes the table to w.
func Bench(ctx context.Context, w io.Writer, opts BenchOptions) (BenchReport, error) {
	targets, err := opts.targets()
	if err != nil {
		return BenchReport{}, err
	}
	if opts.Rounds == 0 {
		opts.Rounds = DefaultRounds
	}
	if opts.Rounds < 1 || opts.Rounds > 100 {
		return BenchReport{}, fmt.Errorf("loadtest: rounds %d out of range 1..100", opts.Rounds)
	}
	if opts.Size < 1 {
		return BenchReport{}, fmt.Errorf("loadtest: size %d: want at least 1 byte", opts.Size)
	}
	if _, err := (Options{Concurrency: opts.Concurrency, Duration: opts.Duration, Warmup: opts.Warmup}).check(); err != nil {
		return BenchReport{}, err
	}
	h, err := Start(ctx, HarnessOptions{HTTP1: opts.HTTP1})
	if err != nil {
		return BenchReport{}, err
	}
	defer h.Close()
	ops := map[string]func(context.Context) error{
		TargetGRPCEmpty:       h.GRPCHealth(),
		TargetGRPCEncrypt:     h.GRPCEncrypt(opts.Size),
		TargetGRPCEncryptOpen: h.GRPCEncryptOpen(opts.Size),
		TargetRESTBaseline:    h.RESTBaseline(opts.Size),
		TargetRESTEncrypt:     h.RESTEncrypt(opts.Size),
	}
	proto := "HTTP/2"
	if opts.HTTP1 {
		proto = "HTTP/1.1"
	}
	slice := Options{Concurrency: opts.Concurrency, Duration: opts.Duration / time.Duration(opts.Rounds), Warmup: opts.Warmup / time.Duration(opts.Rounds)}
	fmt.Fprintf(w, "tresor bench: %d callers, %v warmup + %v measured per target in %d interleaved rounds, %d-byte plaintext, REST over %s, GOMAXPROCS %d, load and servers in one process\n",
		opts.Concurrency, opts.Warmup, opts.Duration, opts.Rounds, opts.Size, proto, runtime.GOMAXPROCS(0))
	for _, t := range targets {
		if err := ops[t](ctx); err != nil {
			return BenchReport{}, fmt.Errorf("loadtest: %s: first call: %w", t, err)
		}
	}
	results := map[string][]Result{}
	for round := range opts.Rounds {
		for _, t := range targets {
			if err := ctx.Err(); err != nil {
				return BenchReport{}, err
			}
			runtime.GC() // start each slice from a collected heap
			stopProfile, err := startProfile(opts.CPUProfile, t, round)
			if err != nil {
				return BenchReport{}, err
			}
			var r Result
			Label(ctx, func(ctx context.Context) { r = Run(ctx, slice, ops[t]) })
			if err := stopProfile(); err != nil {
				return BenchReport{}, err
			}
			results[t] = append(results[t], r)
		}
	}
	var rep BenchReport
	for _, t := range targets {
		rep.Rows = append(rep.Rows, BenchRow{Target: t, Result: Merge(results[t]...)})
	}
	rate := map[string]float64{}
	for _, r := range rep.Rows {
		rate[r.Target] = r.OpsPerSec
	}
	cpu := map[string]time.Duration{}
	for _, r := range rep.Rows {
		cpu[r.Target] = r.CPUPerOp()
	}
	if cpu[TargetGRPCEncrypt] > 0 {
		rep.GRPCCPURatio = float64(cpu[TargetGRPCEmpty]) / float64(cpu[TargetGRPCEncrypt])
	}
	if cpu[TargetRESTEncrypt] > 0 {
		rep.RESTCPURatio = float64(cpu[TargetRESTBaseline]) / float64(cpu[TargetRESTEncrypt])
	}
	if rate[TargetGRPCEmpty] > 0 {
		rep.GRPCRatio = rate[TargetGRPCEncrypt] / rate[TargetGRPCEmpty]
	}
	if rate[TargetRESTBaseline] > 0 {
		rep.RESTRatio = rate[TargetRESTEncrypt] / rate[TargetRESTBaseline]
	}
	if cpu[TargetGRPCEncrypt] > 0 {
		rep.ChainCPURatio = float64(cpu[TargetGRPCEncryptOpen]) / float64(cpu[TargetGRPCEncrypt])
	}
	if rate[TargetGRPCEncryptOpen] > 0 {
		rep.ChainRatio = rate[TargetGRPCEncrypt] / rate[TargetGRPCEncryptOpen]
	}
	for i := range opts.Rounds {
		ratio := func(num, den string) (float64, bool) {
			n, d := results[num], results[den]
			if len(n) <= i || len(d) <= i || d[i].OpsPerSec == 0 {
				return 0, false
			}
			return n[i].OpsPerSec / d[i].OpsPerSec, true
		}
		if r, ok := ratio(TargetGRPCEncrypt, TargetGRPCEmpty); ok {
			rep.GRPCRounds = append(rep.GRPCRounds, r)
		}
		if r, ok := ratio(TargetRESTEncrypt, TargetRESTBaseline); ok {
			rep.RESTRounds = append(rep.RESTRounds, r)
		}
		if r, ok := ratio(TargetGRPCEncrypt, TargetGRPCEncryptOpen); ok {
			rep.ChainRounds = append(rep.ChainRounds, r)
		}
	}
	rep.Print(w)
	return rep, nil
}

// Print writes the report as a table.
func (rep BenchReport) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\tops\tops/s\tp50\tp99\tmax\terrors\tCPU/op\t")
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%v\t%v\t%v\t%d\t%.1fµs\t\n", r.Target, r.Ops, r.OpsPerSec,
			r.P50.Round(time.Microsecond), r.P99.Round(time.Microsecond), r.Max.Round(time.Microsecond), r.Errors,
			float64(r.CPUPerOp())/float64(time.Microsecond))
	}
	_ = tw.Flush()
	rounds := func(rs []float64) string {
		var b strings.Builder
		for _, r := range rs {
			fmt.Fprintf(&b, " %.2f", r)
		}
		return b.String()
	}
	if rep.ChainRatio > 0 {
		fmt.Fprintf(w, "ratio gRPC encrypt chain / open:    %.2f ops/s (target >= 0.80), %.2f by CPU per op; ops/s per round:%s\n", rep.ChainRatio, rep.ChainCPURatio, rounds(rep.ChainRounds))
	}
	if rep.GRPCRatio > 0 {
		fmt.Fprintf(w, "ratio gRPC encrypt / empty call:    %.2f ops/s (target >= 0.60), %.2f by CPU per op; ops/s per round:%s\n", rep.GRPCRatio, rep.GRPCCPURatio, rounds(rep.GRPCRounds))
	}
	if rep.RESTRatio > 0 {
		fmt.Fprintf(w, "ratio REST encrypt / bare baseline: %.2f ops/s (target >= 0.60), %.2f by CPU per op; ops/s per round:%s\n", rep.RESTRatio, rep.RESTCPURatio, rounds(rep.RESTRounds))
	}
	for _, r := range rep.Rows {
		if r.FirstError != nil {
			fmt.Fprintf(w, "%s: first error: %v\n", r.Target, r.FirstError)
		}
	}
}

// startProfile starts a CPU profile of one slice of a target, to
// prefix.<target>.r<round>.pprof; go tool pprof merges several files.
func startProfile(prefix, target string, round int) (stop func() error, err error) {
	if prefix == "" {
		return func() error { return nil }, nil
	}
	name := fmt.Sprintf("%s.%s.r%d.pprof", prefix, target, round)
	f, err := os.Create(name)
	if err != nil {
		return nil, fmt.Errorf("loadtest: CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("loadtest: CPU profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}
