package soak

import (
	"slices"
	"sort"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tresorkms/tresor/internal/loadtest"
)

// Method is an RPC the traffic calls.
type Method uint8

// The methods of the traffic.
const (
	MethodEncrypt Method = iota
	MethodDecrypt
	MethodGenerateDataKey
	MethodReEncrypt
	MethodProtectDocument
	MethodRevealDocument
	MethodRotateKey
	numMethods
)

var methodNames = [numMethods]string{"Encrypt", "Decrypt", "GenerateDataKey", "ReEncrypt", "ProtectDocument", "RevealDocument", "RotateKey"}

func (m Method) String() string {
	if m < numMethods {
		return methodNames[m]
	}
	return "?"
}

// Call is one RPC of the traffic: when it started and ended (from the
// start of the traffic), what it called on which replica, and its code.
type Call struct {
	Start, End time.Duration
	Method     Method
	Code       codes.Code
	Replica    int8
}

// Window is the time during which a fault's errors are expected (see
// Recover).
type Window struct {
	Start, End time.Duration
}

// FaultTiming is when a fault was injected and restored, which replicas
// it affects and when each was seen ready again; the input of [Recover].
type FaultTiming struct {
	Injected, Restored time.Duration
	Replicas           []int
	// ReadyAt is, per affected replica, when its /readyz first answered
	// 200 after the restore; -1 if it did not.
	ReadyAt []time.Duration
}

// Recovery is what [Recover] found for one fault.
type Recovery struct {
	Window Window
	// CallsAfter is, per affected replica, how long after the restore the
	// first call that started after it succeeded (its end); -1 if none
	// did within maxSettle.
	CallsAfter []time.Duration
	// ReadyAfter is, per affected replica, how long after the restore it
	// was seen ready; -1 if not within maxSettle.
	ReadyAfter []time.Duration
	// Recovered says every affected replica answered a call and was ready
	// within maxSettle.
	Recovered bool
}

// Recover computes a fault's window and recovery times from calls, which
// must be sorted by Start. The window runs from the injection until every
// affected replica has both answered a call that started after the
// restore and been seen ready; it ends at least minSettle and at most
// maxSettle after the restore.
func Recover(calls []Call, f FaultTiming, minSettle, maxSettle time.Duration) Recovery {
	n := len(f.Replicas)
	r := Recovery{CallsAfter: make([]time.Duration, n), ReadyAfter: make([]time.Duration, n), Recovered: true}
	i := sort.Search(len(calls), func(i int) bool { return calls[i].Start >= f.Restored })
	end := f.Restored + minSettle
	for j, rep := range f.Replicas {
		r.CallsAfter[j], r.ReadyAfter[j] = -1, -1
		for _, c := range calls[i:] {
			if c.Start > f.Restored+maxSettle {
				break
			}
			if int(c.Replica) == rep && c.Code == codes.OK && c.End-f.Restored <= maxSettle {
				r.CallsAfter[j] = c.End - f.Restored
				break
			}
		}
		if j < len(f.ReadyAt) && f.ReadyAt[j] >= f.Restored && f.ReadyAt[j]-f.Restored <= maxSettle {
			r.ReadyAfter[j] = f.ReadyAt[j] - f.Restored
		}
		if r.CallsAfter[j] < 0 || r.ReadyAfter[j] < 0 {
			r.Recovered = false
			end = max(end, f.Restored+maxSettle)
			continue
		}
		end = max(end, f.Restored+r.CallsAfter[j], f.Restored+r.ReadyAfter[j])
	}
	r.Window = Window{Start: f.Injected, End: min(end, f.Restored+maxSettle)}
	return r
}

// InWindow reports whether the call overlaps one of the windows.
func InWindow(c Call, windows []Window) bool {
	for _, w := range windows {
		if c.Start <= w.End && c.End >= w.Start {
			return true
		}
	}
	return false
}

// LatencyStats summarizes the latencies of one method's successful calls.
type LatencyStats struct {
	Count int64   `json:"count"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// Latencies summarizes durations (in any order; the slice is sorted in
// place) by the nearest-rank percentiles of loadtest.Percentile.
func Latencies(d []time.Duration) LatencyStats {
	slices.Sort(d)
	s := LatencyStats{Count: int64(len(d))}
	if len(d) == 0 {
		return s
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	s.P50Ms, s.P99Ms, s.MaxMs = ms(loadtest.Percentile(d, 50)), ms(loadtest.Percentile(d, 99)), ms(d[len(d)-1])
	return s
}
