package soak

import (
	"fmt"
	"slices"
	"time"
)

// Sample is one reading of a replica's /metrics.
type Sample struct {
	At         time.Duration // from the start of the traffic
	Goroutines float64       // go_goroutines
	HeapInuse  float64       // go_memstats_heap_inuse_bytes
	RSS        float64       // process_resident_memory_bytes
}

// The growth rule (see [JudgeGrowth]).
const (
	// minJudged is how many samples a series needs after its warm-up to
	// be judged.
	minJudged = 8
	// goroutineFactor and goroutineSlack: the last quarter's median of
	// goroutines may be at most factor × the first quarter's + slack.
	goroutineFactor = 1.5
	goroutineSlack  = 20
	// heapFactor and heapSlack: likewise for the heap in use.
	heapFactor = 2
	heapSlack  = 8 << 20
)

// GrowthRule states the rule [JudgeGrowth] applies, for the summary.
const GrowthRule = "per process series, after a warm-up of its first fifth of samples: " +
	"median goroutines of the last quarter <= 1.5 x first quarter + 20, " +
	"median heap in use of the last quarter <= 2 x first quarter + 8 MiB; " +
	"a series with fewer than 8 samples after warm-up is not judged"

// Growth is the verdict on one series.
type Growth struct {
	// Judged is false for a series too short to judge; Pass is then true.
	Judged bool
	Pass   bool
	// The medians of the first and last quarter after the warm-up.
	FirstGoroutines, LastGoroutines float64
	FirstHeap, LastHeap             float64
	Reason                          string
}

// JudgeGrowth applies the growth rule to one process's samples (in time
// order): it drops the first fifth of them (at least one) as warm-up, then
// compares the median of the last quarter of the rest with the median of
// the first quarter, for goroutines and for heap in use.
func JudgeGrowth(samples []Sample) Growth {
	warm := max(1, len(samples)/5)
	if len(samples)-warm < minJudged {
		return Growth{Pass: true, Reason: fmt.Sprintf("%d samples after warm-up, fewer than %d: not judged", max(0, len(samples)-warm), minJudged)}
	}
	rest := samples[warm:]
	q := len(rest) / 4
	first, last := rest[:q], rest[len(rest)-q:]
	g := Growth{
		Judged:          true,
		FirstGoroutines: median(first, func(s Sample) float64 { return s.Goroutines }),
		LastGoroutines:  median(last, func(s Sample) float64 { return s.Goroutines }),
		FirstHeap:       median(first, func(s Sample) float64 { return s.HeapInuse }),
		LastHeap:        median(last, func(s Sample) float64 { return s.HeapInuse }),
	}
	gorLimit := goroutineFactor*g.FirstGoroutines + goroutineSlack
	heapLimit := heapFactor*g.FirstHeap + heapSlack
	g.Pass = g.LastGoroutines <= gorLimit && g.LastHeap <= heapLimit
	switch {
	case g.LastGoroutines > gorLimit:
		g.Reason = fmt.Sprintf("goroutines grew from %.0f to %.0f (limit %.0f)", g.FirstGoroutines, g.LastGoroutines, gorLimit)
	case g.LastHeap > heapLimit:
		g.Reason = fmt.Sprintf("heap in use grew from %s to %s (limit %s)", mib(g.FirstHeap), mib(g.LastHeap), mib(heapLimit))
	default:
		g.Reason = fmt.Sprintf("goroutines %.0f -> %.0f (limit %.0f), heap in use %s -> %s (limit %s)",
			g.FirstGoroutines, g.LastGoroutines, gorLimit, mib(g.FirstHeap), mib(g.LastHeap), mib(heapLimit))
	}
	return g
}

func median(s []Sample, f func(Sample) float64) float64 {
	v := make([]float64, len(s))
	for i := range s {
		v[i] = f(s[i])
	}
	slices.Sort(v)
	n := len(v)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
