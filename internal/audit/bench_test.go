package audit

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// BenchmarkRecord measures Record throughput with concurrent callers, each
// Record waiting until its event is durable (fsync or commit):
//
//	go test -run '^$' -bench BenchmarkRecord -benchtime 20000x ./internal/audit/
func BenchmarkRecord(b *testing.B) {
	sinks := []struct {
		name string
		open func(b *testing.B) Sink
	}{
		{"file", func(b *testing.B) Sink { return openFileSink(b, filepath.Join(b.TempDir(), "audit.jsonl")) }},
		{"sqlite", func(b *testing.B) Sink {
			return NewStoreSink(openSQLite(b, filepath.Join(b.TempDir(), "tresor.db")))
		}},
		{"postgres", func(b *testing.B) Sink {
			st, _ := backends[1].open(b)
			return NewStoreSink(st)
		}},
	}
	for _, s := range sinks {
		for _, goroutines := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", s.name, goroutines), func(b *testing.B) {
				keys := testRootKeys(b)
				l := newLog(b, testOptions(b, "bench", keys), s.open(b))
				e := testEvent(1)
				var wg sync.WaitGroup
				next := make(chan struct{}, b.N)
				for range b.N {
					next <- struct{}{}
				}
				close(next)
				b.ResetTimer()
				start := time.Now()
				for range goroutines {
					wg.Go(func() {
						for range next {
							if err := l.Record(context.Background(), e); err != nil {
								b.Errorf("Record(ctx, event) err = %v, want nil", err)
								return
							}
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
				closeLog(b, l)
			})
		}
	}
}

// BenchmarkVerifyMillion measures Verify over a JSON-lines file of one
// million events (written outside the timer, with a checkpoint every
// 1000):
//
//	go test -run '^$' -bench BenchmarkVerifyMillion -benchtime 1x ./internal/audit/
func BenchmarkVerifyMillion(b *testing.B) {
	const events = 1_000_000
	keys := testRootKeys(b)
	pz := testPseudonymizer(b)
	path := filepath.Join(b.TempDir(), "audit.jsonl")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var (
		prev, hash Digest
		line, body []byte
	)
	for i := 1; i <= events; i++ {
		e := testEvent(i)
		e.Subject, e.Source = pz.Subject(e.Subject), pz.Source(e.Source)
		body = appendBody(body[:0], &e)
		line, hash = seal(line[:0], "bench", uint64(i), prev, body)
		prev = hash
		w.Write(line)
		w.WriteByte('\n')
		if i%DefaultCheckpointEvery == 0 {
			cp, err := signCheckpoint(context.Background(), keys, "bench", uint64(i), hash, e.Time)
			if err != nil {
				b.Fatal(err)
			}
			w.Write(appendCheckpoint(nil, cp))
			w.WriteByte('\n')
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	fi, _ := os.Stat(path)
	b.SetBytes(fi.Size())
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		rep, err := Verify(context.Background(), NewFileSource(f), keys)
		f.Close()
		if err != nil || rep.Events != events || rep.Uncovered != 0 {
			b.Fatalf("Verify(1M events) = %+v, %v; want %d events, all covered, nil", rep, err, events)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(events*b.N)/time.Since(start).Seconds(), "events/s")
}
