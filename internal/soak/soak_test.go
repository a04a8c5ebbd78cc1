package soak

import (
	"context"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

func TestSchedule(t *testing.T) {
	kinds := func(fs []Fault) map[FaultKind]int {
		m := map[FaultKind]int{}
		for _, f := range fs {
			m[f.Kind]++
		}
		return m
	}
	tests := []struct {
		name       string
		d          time.Duration
		wantAt     []time.Duration
		wantOutage time.Duration
	}{
		{"reference 30m", 30 * time.Minute, []time.Duration{2 * time.Minute, 330 * time.Second, 9 * time.Minute, 750 * time.Second, 990 * time.Second, 20 * time.Minute, 1410 * time.Second}, 15 * time.Second},
		{"5m: six times closer", 5 * time.Minute, []time.Duration{20 * time.Second, 55 * time.Second, 90 * time.Second, 125 * time.Second, 165 * time.Second, 200 * time.Second, 235 * time.Second}, 3 * time.Second},
		{"1m: outage kept at 3s", time.Minute, []time.Duration{4 * time.Second, 11 * time.Second, 18 * time.Second, 25 * time.Second, 33 * time.Second, 40 * time.Second, 47 * time.Second}, 3 * time.Second},
		{"2h: outage capped at 20s", 2 * time.Hour, []time.Duration{8 * time.Minute, 22 * time.Minute, 36 * time.Minute, 50 * time.Minute, 66 * time.Minute, 80 * time.Minute, 94 * time.Minute}, 20 * time.Second},
		{"12m: outage scaled", 12 * time.Minute, []time.Duration{48 * time.Second, 132 * time.Second, 216 * time.Second, 300 * time.Second, 396 * time.Second, 480 * time.Second, 564 * time.Second}, 6 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Schedule(tt.d)
			if len(got) != len(tt.wantAt) {
				t.Fatalf("Schedule(%v) = %d faults, want %d", tt.d, len(got), len(tt.wantAt))
			}
			for i, f := range got {
				if f.At != tt.wantAt[i] {
					t.Errorf("Schedule(%v)[%d] (%s) at %v, want %v", tt.d, i, f.Kind, f.At, tt.wantAt[i])
				}
				if i > 0 && f.At <= got[i-1].At {
					t.Errorf("Schedule(%v)[%d] at %v, not after the fault before (%v)", tt.d, i, f.At, got[i-1].At)
				}
				if f.At >= tt.d {
					t.Errorf("Schedule(%v)[%d] at %v, not within the run", tt.d, i, f.At)
				}
				if f.Kind == FaultRemoveToken && f.Outage != tt.wantOutage {
					t.Errorf("Schedule(%v)[%d] outage %v, want %v", tt.d, i, f.Outage, tt.wantOutage)
				}
			}
			k := kinds(got)
			for _, want := range []FaultKind{FaultKill, FaultTerm, FaultDropPostgres, FaultRemoveToken, FaultRotateRootKey} {
				if k[want] == 0 {
					t.Errorf("Schedule(%v) has no %s, want every fault at least once", tt.d, want)
				}
			}
			if s := FormatSchedule(got); strings.Count(s, "\n") != len(got) || !strings.Contains(s, "kill -9 replica a") || !strings.Contains(s, "SIGTERM replica b") {
				t.Errorf("FormatSchedule() = %q, want one line a fault naming the replicas", s)
			}
		})
	}
}

func TestClock(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "00:00.0"},
		{1500 * time.Millisecond, "00:01.5"},
		{2*time.Minute + 3*time.Second, "02:03.0"},
		{time.Hour + 59*time.Second, "1:00:59.0"},
		{-time.Second, "-00:01.0"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := clock(tt.d); got != tt.want {
				t.Errorf("clock(%v) = %q, want %q", tt.d, got, tt.want)
			}
		})
	}
}

func TestLatencies(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // descending: Latencies sorts
	}
	tests := []struct {
		name string
		in   []time.Duration
		want LatencyStats
	}{
		{"none", nil, LatencyStats{}},
		{"one", ms(7), LatencyStats{Count: 1, P50Ms: 7, P99Ms: 7, MaxMs: 7}},
		{"two: nearest rank", ms(9, 1), LatencyStats{Count: 2, P50Ms: 1, P99Ms: 9, MaxMs: 9}},
		{"1..100", ms(hundred...), LatencyStats{Count: 100, P50Ms: 50, P99Ms: 99, MaxMs: 100}},
		{"sub-millisecond", []time.Duration{1500 * time.Microsecond, 250 * time.Microsecond}, LatencyStats{Count: 2, P50Ms: 0.25, P99Ms: 1.5, MaxMs: 1.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Latencies(tt.in); got != tt.want {
				t.Errorf("Latencies(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestJudgeGrowth(t *testing.T) {
	series := func(n int, f func(i int) (gor, heapMiB float64)) []Sample {
		out := make([]Sample, n)
		for i := range out {
			g, h := f(i)
			out[i] = Sample{At: time.Duration(i) * time.Second, Goroutines: g, HeapInuse: h * (1 << 20)}
		}
		return out
	}
	tests := []struct {
		name       string
		samples    []Sample
		wantJudged bool
		wantPass   bool
		wantReason string
	}{
		{"flat", series(100, func(int) (float64, float64) { return 40, 12 }), true, true, "goroutines 40 -> 40"},
		{"noisy but bounded", series(100, func(i int) (float64, float64) { return float64(35 + i%10), float64(10 + i%7) }), true, true, ""},
		{"warm-up growth ignored", series(100, func(i int) (float64, float64) {
			if i < 20 {
				return float64(10 + i*5), float64(2 + i)
			}
			return 110, 22
		}), true, true, ""},
		{"goroutine leak", series(100, func(i int) (float64, float64) { return float64(40 + i), 12 }), true, false, "goroutines grew"},
		{"within the slack", series(100, func(i int) (float64, float64) { return 40 + float64(i)/5, 12 }), true, true, ""},
		{"heap leak", series(100, func(i int) (float64, float64) { return 40, 10 + float64(i) }), true, false, "heap in use grew"},
		{"slow heap growth within 2x + 8 MiB", series(100, func(i int) (float64, float64) { return 40, 10 + float64(i)/2 }), true, true, ""},
		{"small heap within the 8 MiB slack", series(100, func(i int) (float64, float64) { return 40, 1 + float64(i)/20 }), true, true, ""},
		{"too short", series(8, func(i int) (float64, float64) { return float64(40 + 100*i), 12 }), false, true, "not judged"},
		{"shortest judged", series(10, func(int) (float64, float64) { return 40, 12 }), true, true, ""},
		{"empty", nil, false, true, "not judged"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := JudgeGrowth(tt.samples)
			if g.Judged != tt.wantJudged || g.Pass != tt.wantPass || !strings.Contains(g.Reason, tt.wantReason) {
				t.Errorf("JudgeGrowth() = judged %v, pass %v, %q; want judged %v, pass %v, a reason with %q", g.Judged, g.Pass, g.Reason, tt.wantJudged, tt.wantPass, tt.wantReason)
			}
		})
	}
}

func TestRecover(t *testing.T) {
	s := time.Second
	call := func(start, end time.Duration, replica int, code codes.Code) Call {
		return Call{Start: start, End: end, Replica: int8(replica), Code: code}
	}
	// Sorted by start. Replica 0 fails from 10s to 12.5s, replica 1 is fine.
	calls := []Call{
		call(9*s, 9*s+s/10, 0, codes.OK),
		call(10*s, 10*s+s/10, 0, codes.Unavailable),
		call(11*s, 11*s+s/10, 1, codes.OK),
		call(12*s, 12*s+s/10, 0, codes.Unavailable),
		call(12*s+s/2, 13*s, 0, codes.OK),
		call(13*s, 13*s+s/10, 1, codes.OK),
	}
	tests := []struct {
		name          string
		f             FaultTiming
		wantCalls     []time.Duration
		wantReady     []time.Duration
		wantEnd       time.Duration
		wantRecovered bool
	}{
		{"one replica: calls ok after the first success", FaultTiming{Injected: 10 * s, Restored: 11 * s, Replicas: []int{0}, ReadyAt: []time.Duration{11*s + s/5}},
			[]time.Duration{2 * s}, []time.Duration{s / 5}, 13 * s, true},
		{"ready later than the calls", FaultTiming{Injected: 10 * s, Restored: 11 * s, Replicas: []int{0, 1}, ReadyAt: []time.Duration{14 * s, 11 * s}},
			[]time.Duration{2 * s, s / 10}, []time.Duration{3 * s, 0}, 14 * s, true},
		{"at least minSettle", FaultTiming{Injected: 10 * s, Restored: 10*s + s/2, Replicas: []int{1}, ReadyAt: []time.Duration{10*s + s/2}},
			[]time.Duration{s/2 + s/10}, []time.Duration{0}, 11*s + s/2, true},
		{"never ready: window to maxSettle", FaultTiming{Injected: 10 * s, Restored: 11 * s, Replicas: []int{0}, ReadyAt: []time.Duration{-1}},
			[]time.Duration{2 * s}, []time.Duration{-1}, 16 * s, false},
		{"no success within maxSettle", FaultTiming{Injected: 10 * s, Restored: 13*s + s/2, Replicas: []int{0}, ReadyAt: []time.Duration{14 * s}},
			[]time.Duration{-1}, []time.Duration{s / 2}, 18*s + s/2, false},
		{"ready before the restore does not count", FaultTiming{Injected: 10 * s, Restored: 11 * s, Replicas: []int{1}, ReadyAt: []time.Duration{10 * s}},
			[]time.Duration{s / 10}, []time.Duration{-1}, 16 * s, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Recover(calls, tt.f, s, 5*s)
			if r.Window.Start != tt.f.Injected || r.Window.End != tt.wantEnd || r.Recovered != tt.wantRecovered {
				t.Errorf("Recover() window %v..%v, recovered %v; want %v..%v, %v", r.Window.Start, r.Window.End, r.Recovered, tt.f.Injected, tt.wantEnd, tt.wantRecovered)
			}
			for i := range tt.wantCalls {
				if r.CallsAfter[i] != tt.wantCalls[i] || r.ReadyAfter[i] != tt.wantReady[i] {
					t.Errorf("Recover() replica %d: calls ok after %v, ready after %v; want %v, %v", tt.f.Replicas[i], r.CallsAfter[i], r.ReadyAfter[i], tt.wantCalls[i], tt.wantReady[i])
				}
			}
		})
	}
}

func TestInWindow(t *testing.T) {
	s := time.Second
	windows := []Window{{Start: 10 * s, End: 12 * s}, {Start: 20 * s, End: 21 * s}}
	tests := []struct {
		name       string
		start, end time.Duration
		want       bool
	}{
		{"before", 8 * s, 9 * s, false},
		{"ends inside", 9 * s, 10*s + 1, true},
		{"inside", 11 * s, 11*s + 1, true},
		{"spans", 9 * s, 13 * s, true},
		{"starts at the end", 12 * s, 13 * s, true},
		{"between", 12*s + 1, 19 * s, false},
		{"second window", 20*s + s/2, 22 * s, true},
		{"after", 22 * s, 23 * s, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := InWindow(Call{Start: tt.start, End: tt.end}, windows); got != tt.want {
				t.Errorf("InWindow(%v..%v) = %v, want %v", tt.start, tt.end, got, tt.want)
			}
		})
	}
}

func TestParseMetrics(t *testing.T) {
	full := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 37
go_memstats_heap_inuse_bytes 1.2582912e+07
go_gc_duration_seconds{quantile="0.5"} 1e-05
process_resident_memory_bytes 6.7108864e+07
tresor_calls_total{method="Encrypt",code="OK"} 12
`
	tests := []struct {
		name    string
		in      string
		want    Sample
		wantErr string
	}{
		{"all three", full, Sample{Goroutines: 37, HeapInuse: 12 << 20, RSS: 64 << 20}, ""},
		{"one missing", strings.Replace(full, "process_resident_memory_bytes", "process_virtual_memory_bytes", 1), Sample{}, "process_resident_memory_bytes"},
		{"not a number", strings.Replace(full, "go_goroutines 37", "go_goroutines many", 1), Sample{}, "go_goroutines"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMetrics(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("parseMetrics() err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("parseMetrics() = %+v, %v; want %+v, nil", got, err, tt.want)
			}
		})
	}
}

func TestSameDocument(t *testing.T) {
	orig := `{"id":"doc-1","tax_id":"123-45-6789","accounts":[{"iban":"DE89370400440532013000","number":"0012345678"}],"balance":12.50}`
	tests := []struct {
		name     string
		revealed string
		wantErr  string
	}{
		{"same with the blind index beside", `{"id":"doc-1","tax_id":"123-45-6789","accounts":[{"iban":"DE89370400440532013000","iban_bidx":"1.abc","number":"0012345678"}],"balance":12.50}`, ""},
		{"blind index missing", orig, "blind index"},
		{"other value", `{"id":"doc-1","tax_id":"123-45-6780","accounts":[{"iban":"DE89370400440532013000","iban_bidx":"1.abc","number":"0012345678"}],"balance":12.50}`, "another document"},
		{"number written otherwise", `{"id":"doc-1","tax_id":"123-45-6789","accounts":[{"iban":"DE89370400440532013000","iban_bidx":"1.abc","number":"0012345678"}],"balance":12.5}`, "another document"},
		{"not JSON", `{"id":`, "not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := sameDocument(tt.revealed, orig)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("sameDocument() err = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("sameDocument() err = %v, want one saying %q", err, tt.wantErr)
			}
			for _, secret := range []string{"123-45-678", "DE8937", "0012345678"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("sameDocument() err = %q holds a document value", err)
				}
			}
		})
	}
}

func TestReservoir(t *testing.T) {
	tests := []struct {
		name     string
		size     int
		offered  int
		wantKept int
	}{
		{"fewer than the size", 10, 4, 4},
		{"exactly the size", 10, 10, 10},
		{"more: a sample of size", 10, 1000, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newReservoir(tt.size, 1)
			for i := range tt.offered {
				r.add(item{key: string(rune('a' + i%26)), aad: []byte{byte(i), byte(i >> 8)}})
			}
			items, seen := r.snapshot()
			if len(items) != tt.wantKept || seen != int64(tt.offered) {
				t.Errorf("after %d adds: %d kept, %d seen; want %d kept, %d seen", tt.offered, len(items), seen, tt.wantKept, tt.offered)
			}
			if _, ok := r.pick(rand.New(rand.NewPCG(1, 2))); !ok {
				t.Errorf("pick() ok = false, want an item")
			}
		})
	}
	// Uniform: the late half of 10000 items holds about half the sample.
	r := newReservoir(1000, 7)
	for i := range 10000 {
		r.add(item{aad: []byte{byte(i >> 8), byte(i)}})
	}
	items, _ := r.snapshot()
	late := 0
	for _, it := range items {
		if int(it.aad[0])<<8|int(it.aad[1]) >= 5000 {
			late++
		}
	}
	if late < 400 || late > 600 {
		t.Errorf("reservoir of 1000 from 10000: %d from the later half, want about 500", late)
	}
}

func TestOptionsRefused(t *testing.T) {
	ok := Options{
		Duration:     time.Minute,
		ServeCommand: func(string) *exec.Cmd { return nil },
		VerifyAudit: func(context.Context, string, []string) (AuditReport, error) {
			return AuditReport{}, nil
		},
	}
	tests := []struct {
		name    string
		change  func(*Options)
		wantErr string
	}{
		{"too short", func(o *Options) { o.Duration = 59 * time.Second }, "shorter than 1m0s"},
		{"too many clients", func(o *Options) { o.Clients = 1000 }, "clients"},
		{"negative rate", func(o *Options) { o.Rate = -1 }, "rate"},
		{"tiny sample", func(o *Options) { o.Remember = 3 }, "remember"},
		{"long tokens", func(o *Options) { o.TokenLifetime = time.Hour }, "token lifetime"},
		{"no serve command", func(o *Options) { o.ServeCommand = nil }, "ServeCommand"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.change(&o)
			if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Run() err = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
	d, err := ok.withDefaults()
	if err != nil || d.Clients != DefaultClients || d.Seed == 0 || d.PostgresURL != DefaultPostgresURL || d.Remember != DefaultRemember || d.TokenLifetime != DefaultTokenLifetime {
		t.Errorf("withDefaults() = %+v, %v; want the defaults filled in and a seed", d, err)
	}
}
