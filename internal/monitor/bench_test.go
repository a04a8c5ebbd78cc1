package monitor_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/monitor"
)

// benchPrincipals are the principals the benchmarks spread calls over.
func benchPrincipals(n int) []string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = fmt.Sprintf("%d:spiffe://bank.example/svc-%03d#svc", 30, i)
	}
	return ps
}

// BenchmarkScore scores calls from all CPUs, spread over 1000 principals
// (one goroutine's calls go to one principal after another, as a server's
// do).
func BenchmarkScore(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprint(n, " principals"), func(b *testing.B) {
			m := newMonitor(b, monitor.Options{})
			ps := benchPrincipals(n)
			var next atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(1)) * 7919
				obs := usual(t0)
				for pb.Next() {
					i++
					obs.Principal = ps[i%n]
					obs.Time = t0.Add(time.Duration(i) * time.Millisecond)
					m.Score(obs)
				}
			})
		})
	}
}

// BenchmarkCall is a chain's whole per-call work without the policy
// decision: Score, Admit and Observe.
func BenchmarkCall(b *testing.B) {
	m := newMonitor(b, monitor.Options{})
	ps := benchPrincipals(1000)
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1)) * 7919
		obs := usual(t0)
		for pb.Next() {
			i++
			obs.Principal = ps[i%len(ps)]
			obs.Time = t0.Add(time.Duration(i) * time.Millisecond)
			m.Score(obs)
			active, _, err := m.Admit(obs.Principal, obs.Time, true)
			if err == nil {
				m.Observe(obs, active)
			}
		}
	})
}

// BenchmarkSimulate is one simulated week with DefaultThresholds.
func BenchmarkSimulate(b *testing.B) {
	for b.Loop() {
		if _, err := monitor.Simulate(monitor.SimConfig{Seed: 1}, nil); err != nil {
			b.Fatal(err)
		}
	}
}
