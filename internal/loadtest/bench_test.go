package loadtest

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// benchCallers is the number of concurrent callers of every benchmark.
const benchCallers = 64

// benchParallel runs op from benchCallers goroutines (RunParallel runs
// parallelism x GOMAXPROCS of them) and reports ops/s and the p50 and p99
// latencies and the process CPU time per op besides ns/op. Compare the
// ns/op (or cpu-µs/op) of two benchmarks of one run for their ratio:
//
//	go test -run '^$' -bench . -count 3 ./internal/loadtest
func benchParallel(b *testing.B, op func(context.Context) error) {
	ctx := context.Background()
	if err := op(ctx); err != nil {
		b.Fatalf("op err = %v", err)
	}
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((benchCallers + procs - 1) / procs)
	var (
		mu  sync.Mutex
		all []time.Duration
	)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU()
	b.RunParallel(func(pb *testing.PB) {
		lat := make([]time.Duration, 0, 1024)
		for pb.Next() {
			t0 := time.Now()
			if err := op(ctx); err != nil {
				b.Error(err)
				return
			}
			lat = append(lat, time.Since(t0))
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
	})
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	b.StopTimer()
	slices.Sort(all)
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(Percentile(all, 50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(Percentile(all, 99).Microseconds()), "p99-µs")
	if cpu > 0 && len(all) > 0 {
		// Process CPU (load and servers) per op: steadier than ns/op on a
		// shared machine; compare two benchmarks' for their ratio too.
		b.ReportMetric(float64(cpu.Microseconds())/float64(len(all)), "cpu-µs/op")
	}
}

func BenchmarkGRPCEmptyCall(b *testing.B) { benchParallel(b, harness(b).GRPCHealth()) }

func BenchmarkGRPCEncrypt1KiB(b *testing.B) { benchParallel(b, harness(b).GRPCEncrypt(1024)) }

func BenchmarkGRPCEncryptOpen1KiB(b *testing.B) { benchParallel(b, harness(b).GRPCEncryptOpen(1024)) }

func BenchmarkRESTBaseline(b *testing.B) { benchParallel(b, harness(b).RESTBaseline(1024)) }

func BenchmarkRESTEncrypt1KiB(b *testing.B) { benchParallel(b, harness(b).RESTEncrypt(1024)) }
