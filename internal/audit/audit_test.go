package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestCanonicalLineRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		e    Event
	}{
		{"empty", Event{Time: time.Unix(0, 0)}},
		{"full", testEvent(7)},
		{"escapes", Event{
			Time:      time.Date(2030, 1, 2, 3, 4, 5, 999999000, time.UTC),
			RequestID: "q\"uote\\back\nnl\ttab\x01\x1f\x7f<>&",
			Action:    "ünïcode \u2028\u2029 😀",
			Resources: []string{"", "a", "b,c"},
			Policies:  []string{"p\"1"},
			Fields:    FieldCounts{Protected: 1, Revealed: 2, Masked: 3, Withheld: 4},
			Risk:      -3,
		}},
		{"only some field counts", Event{Time: time.Unix(1, 0), Fields: FieldCounts{Masked: 9}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := tt.e
			sanitize(&e)
			line, hash := seal(nil, "c-1", 42, Digest{1, 2, 3}, appendBody(nil, &e))
			var got Event
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatalf("json.Unmarshal(%s) err = %v, want nil", line, err)
			}
			want := e
			want.Chain, want.Seq, want.Prev, want.Hash = "c-1", 42, Digest{1, 2, 3}, hash
			want.Time = want.Time.UTC()
			if !reflect.DeepEqual(got, want) {
				t.Errorf("json.Unmarshal(seal(event)) = %+v, want %+v", got, want)
			}
			again, _ := seal(nil, got.Chain, got.Seq, got.Prev, appendBody(nil, &got))
			if !bytes.Equal(again, line) {
				t.Errorf("seal(decoded line) = %s, want %s", again, line)
			}
			h, err := parseHead(line)
			if err != nil || string(h.chain) != "c-1" || h.seq != 42 || h.prev != (Digest{1, 2, 3}) || h.hash != hash {
				t.Errorf("parseHead(%s) = %+v, %v; want chain c-1, seq 42, prev 010203..., hash %s", line, h, err, hash)
			}
			if got, _ := lineHash(&h.prev, line, nil); got != hash {
				t.Errorf("lineHash(line) = %s, want %s", got, hash)
			}
			if !json.Valid(line) {
				t.Errorf("line %s is not valid JSON", line)
			}
		})
	}
}

func TestSanitizeInvalidUTF8(t *testing.T) {
	e := Event{Time: time.Unix(0, 0), Action: "a\xffb", Resources: []string{"\xc3"}}
	sanitize(&e)
	if e.Action != "a\uFFFDb" || e.Resources[0] != "\uFFFD" {
		t.Errorf("sanitize(invalid UTF-8) = %q, %q; want %q, %q", e.Action, e.Resources[0], "a\uFFFDb", "\uFFFD")
	}
}

func TestPseudonymizer(t *testing.T) {
	if _, err := NewPseudonymizer(make([]byte, 31)); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("NewPseudonymizer(31 bytes) err = %v, want ErrInvalidOptions", err)
	}
	key := bytes.Repeat([]byte{1}, 32)
	p, err := NewPseudonymizer(key)
	if err != nil {
		t.Fatalf("NewPseudonymizer(32 bytes) err = %v, want nil", err)
	}
	other, _ := NewPseudonymizer(bytes.Repeat([]byte{2}, 32))
	key[0] = 9 // the Pseudonymizer keeps a copy
	p2, _ := NewPseudonymizer(bytes.Repeat([]byte{1}, 32))

	sub := p.Subject("alice@bank.example")
	if !strings.HasPrefix(sub, "h:") || len(sub) != 24 || strings.Contains(sub, "alice") {
		t.Errorf("Subject(alice) = %q, want h: and 22 characters", sub)
	}
	for _, tc := range []struct {
		name     string
		got, not string
		equal    bool
	}{
		{"deterministic", p.Subject("alice@bank.example"), sub, true},
		{"key copied", p2.Subject("alice@bank.example"), sub, true},
		{"other value", p.Subject("bob@bank.example"), sub, false},
		{"other key", other.Subject("alice@bank.example"), sub, false},
		{"other kind", p.Pseudonym(KindSource, "alice@bank.example"), sub, false},
		{"port dropped", p.Source("10.0.0.1:443"), p.Source("10.0.0.1"), true},
		{"IPv6 port dropped", p.Source("[2001:db8::1]:443"), p.Source("2001:DB8::1"), true},
	} {
		if (tc.got == tc.not) != tc.equal {
			t.Errorf("%s: %q vs %q, want equal = %t", tc.name, tc.got, tc.not, tc.equal)
		}
	}
	if got := p.Subject(""); got != "" {
		t.Errorf("Subject(\"\") = %q, want \"\"", got)
	}
	for _, s := range []string{fmt.Sprint(p), fmt.Sprintf("%v %+v %#v", *p, *p, p)} {
		if strings.Contains(s, "1 1 1") || strings.Contains(s, "\x01") || !strings.Contains(s, "REDACTED") {
			t.Errorf("formatted Pseudonymizer = %q, want [REDACTED] and no key", s)
		}
	}
}

func TestNewInvalidOptions(t *testing.T) {
	keys := testRootKeys(t)
	sink := openFileSink(t, filepath.Join(t.TempDir(), "audit.jsonl"))
	valid := testOptions(t, "c", keys)
	tests := []struct {
		name  string
		opts  func(o *Options)
		sinks []Sink
	}{
		{"no chain", func(o *Options) { o.Chain = "" }, []Sink{sink}},
		{"chain with quote", func(o *Options) { o.Chain = `a"b` }, []Sink{sink}},
		{"chain with space", func(o *Options) { o.Chain = "a b" }, []Sink{sink}},
		{"long chain", func(o *Options) { o.Chain = strings.Repeat("c", MaxChainLen+1) }, []Sink{sink}},
		{"no root keys", func(o *Options) { o.RootKeys = nil }, []Sink{sink}},
		{"no pseudonymizer", func(o *Options) { o.Pseudonymizer = nil }, []Sink{sink}},
		{"no sinks", func(o *Options) {}, nil},
		{"nil sink", func(o *Options) {}, []Sink{nil}},
		{"negative batch", func(o *Options) { o.MaxBatch = -1 }, []Sink{sink}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := valid
			tt.opts(&o)
			if l, err := New(t.Context(), o, tt.sinks...); !errors.Is(err, ErrInvalidOptions) {
				if l != nil {
					l.Close(t.Context())
				}
				t.Errorf("New(ctx, %s) err = %v, want ErrInvalidOptions", tt.name, err)
			}
		})
	}
}

func TestRecordVerifyFile(t *testing.T) {
	keys := testRootKeys(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	sink := openFileSink(t, path)
	opts := testOptions(t, "replica-1", keys)
	opts.CheckpointEvery = 50
	l := newLog(t, opts, sink)

	const goroutines, each = 16, 40
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				if err := l.Record(t.Context(), testEvent(g*each+i)); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Record(ctx, event) err = %v, want nil", err)
	}
	if err := l.Ready(t.Context()); err != nil {
		t.Errorf("Ready(ctx) err = %v, want nil", err)
	}
	closeLog(t, l)
	if err := l.Record(t.Context(), testEvent(0)); !errors.Is(err, ErrClosed) {
		t.Errorf("Record(ctx, event) after Close err = %v, want ErrClosed", err)
	}

	rep, err := verifyFile(t, path, keys)
	if err != nil {
		t.Fatalf("Verify(file) err = %v, want nil", err)
	}
	// A checkpoint ends the batch that reaches 50 events since the last,
	// so batches larger than 50 make fewer than 640/50 checkpoints. When
	// the last batch ended with one, Close recorded a close event.
	n := goroutines*each + closeEvents(t, NewFileSource(bytes.NewReader(must(os.ReadFile(path)))))
	if rep.Events != n || rep.Uncovered != 0 || rep.Checkpoints < 2 ||
		len(rep.Chains) != 1 || rep.Chains[0].Chain != "replica-1" || rep.Chains[0].LastSeq != uint64(n) ||
		rep.Chains[0].CheckpointSeq != uint64(n) || !rep.Chains[0].Closed {
		t.Errorf("Verify(file) = %+v; want %d events of chain replica-1, all covered, at least 2 checkpoints, closed",
			rep, n)
	}

	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("os.Stat(%s) = mode %v, %v; want 0600", path, fi.Mode().Perm(), err)
	}
	b, _ := os.ReadFile(path)
	for _, secret := range []string{"user-0", "user-1", "10.0.0.7"} {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("the audit file holds %q in the clear; want only its pseudonym", secret)
		}
	}
	if !bytes.Contains(b, []byte(opts.Pseudonymizer.Subject("user-1@bank.example"))) {
		t.Errorf("the audit file lacks the pseudonym of user-1")
	}
}

func TestResumeChain(t *testing.T) {
	keys := testRootKeys(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	for run := range 3 {
		sink := openFileSink(t, path)
		l := newLog(t, testOptions(t, "c", keys), sink)
		record(t, l, run*5, run*5+4)
		closeLog(t, l)
		if err := sink.Close(); err != nil {
			t.Fatalf("FileSink.Close() err = %v, want nil", err)
		}
	}
	// A crash in the middle of a write leaves part of a line; it is cut.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"chain":"c","seq":16,"prev":"00`)
	f.Close()
	sink := openFileSink(t, path)
	l := newLog(t, testOptions(t, "c", keys), sink)
	record(t, l, 15, 15)
	closeLog(t, l)

	rep, err := verifyFile(t, path, keys)
	if err != nil {
		t.Fatalf("Verify(file written by 4 logs) err = %v, want nil", err)
	}
	if rep.Events != 16 || rep.Chains[0].LastSeq != 16 || rep.Uncovered != 0 || rep.Checkpoints != 4 {
		t.Errorf("Verify(file written by 4 logs) = %+v, want 16 events, seq 16, 4 checkpoints, none uncovered", rep)
	}
}

func TestCheckpointInterval(t *testing.T) {
	keys := testRootKeys(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	opts := testOptions(t, "c", keys)
	opts.CheckpointInterval = 20 * time.Millisecond
	l := newLog(t, opts, openFileSink(t, path))
	record(t, l, 1, 1)
	deadline := time.Now().Add(5 * time.Second)
	for !bytes.Contains(must(os.ReadFile(path)), []byte(checkpointPrefix)) {
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint in the file 5s after an event, with CheckpointInterval 20ms; want one")
		}
		time.Sleep(5 * time.Millisecond)
	}
	rep, err := verifyFile(t, path, keys)
	if err != nil || rep.Events != 1 || rep.Checkpoints != 1 || rep.Uncovered != 0 {
		t.Errorf("Verify(file) = %+v, %v; want 1 event, 1 checkpoint, nil", rep, err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestRecordContextEnded(t *testing.T) {
	keys := testRootKeys(t)
	block := make(chan struct{})
	sink := &funcSink{append: func(ctx context.Context, _ []Entry, _ *Checkpoint) error {
		select {
		case <-block:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	opts := testOptions(t, "c", keys)
	opts.QueueSize, opts.MaxBatch = 1, 1
	l := newLog(t, opts, sink)
	defer close(block)
	// The first event holds the writer; the second fills the queue; the
	// third waits for room until its context ends.
	for i := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		err := l.Record(ctx, testEvent(i))
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Record(ctx, event %d) with a blocked sink err = %v, want context.DeadlineExceeded", i, err)
		}
	}
}

// funcSink is a Sink made of functions; a nil append succeeds.
type funcSink struct {
	mu      sync.Mutex
	appends int
	events  int
	append  func(ctx context.Context, entries []Entry, cp *Checkpoint) error
}

func (s *funcSink) Head(ctx context.Context, chain string) (uint64, Digest, error) {
	return 0, Digest{}, nil
}

func (s *funcSink) Append(ctx context.Context, entries []Entry, cp *Checkpoint) error {
	s.mu.Lock()
	s.appends++
	s.events += len(entries)
	s.mu.Unlock()
	if s.append == nil {
		return nil
	}
	return s.append(ctx, entries, cp)
}

func TestGroupCommit(t *testing.T) {
	keys := testRootKeys(t)
	sink := &funcSink{append: func(context.Context, []Entry, *Checkpoint) error {
		time.Sleep(2 * time.Millisecond) // a slow fsync
		return nil
	}}
	l := newLog(t, testOptions(t, "c", keys), sink)
	const goroutines, each = 64, 20
	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				if l.Record(t.Context(), testEvent(g*each+i)) != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	closeLog(t, l)
	if failed.Load() != 0 {
		t.Fatalf("%d Record calls failed, want 0", failed.Load())
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.events != goroutines*each || sink.appends > goroutines*each/8 {
		t.Errorf("%d Records from %d goroutines made %d appends of %d events; want %d events in at most %d appends",
			goroutines*each, goroutines, sink.appends, sink.events, goroutines*each, goroutines*each/8)
	}
}

func TestFailOpen(t *testing.T) {
	keys := testRootKeys(t)
	sinkErr := errors.New("disk on fire")
	sink := &funcSink{append: func(context.Context, []Entry, *Checkpoint) error { return sinkErr }}
	var (
		mu   sync.Mutex
		lost int
		errs []error
	)
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprintf("FailOpen=%t", failOpen), func(t *testing.T) {
			opts := testOptions(t, "c", keys)
			opts.FailOpen = failOpen
			opts.OnError = func(err error, events int) {
				mu.Lock()
				defer mu.Unlock()
				lost += events
				errs = append(errs, err)
			}
			l := newLog(t, opts, sink)
			err := l.Record(t.Context(), testEvent(1))
			switch {
			case failOpen && err != nil:
				t.Errorf("Record(ctx, event) with a failing sink, fail open: err = %v, want nil", err)
			case !failOpen && (!errors.Is(err, ErrUnavailable) || !errors.Is(err, sinkErr)):
				t.Errorf("Record(ctx, event) with a failing sink: err = %v, want ErrUnavailable wrapping the sink's error", err)
			}
			if err := l.Ready(t.Context()); !errors.Is(err, ErrUnavailable) {
				t.Errorf("Ready(ctx) after a failed write err = %v, want ErrUnavailable", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if lost != 1 || len(errs) != 1 || !errors.Is(errs[0], sinkErr) {
				t.Errorf("OnError saw %d lost events and errors %v; want 1 and the sink's error", lost, errs)
			}
			lost, errs = 0, nil
		})
	}
}

func TestQuery(t *testing.T) {
	keys := testRootKeys(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	opts := testOptions(t, "c", keys)
	l := newLog(t, opts, openFileSink(t, path))
	base := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
	events := []Event{
		{Time: base, RequestID: "0", Action: "Encrypt", Workload: "spiffe://a", Resources: []string{"k1"}},
		{Time: base.Add(time.Minute), RequestID: "1", Action: "Decrypt", Subject: "alice", KeyVersions: []string{"k2:7"}},
		{Time: base.Add(2 * time.Minute), RequestID: "2", Action: "Encrypt", Workload: "spiffe://b", Subject: "alice", Resources: []string{"k2"}},
		{Time: base.Add(3 * time.Minute), RequestID: "3", Action: "ProtectDocument", Workload: "spiffe://a", KeyVersions: []string{"k22:1"}},
	}
	for i, e := range events {
		if err := l.Record(t.Context(), e); err != nil {
			t.Fatalf("Record(ctx, event %d) err = %v, want nil", i, err)
		}
	}
	closeLog(t, l)
	tests := []struct {
		name string
		pz   *Pseudonymizer
		f    Filter
		want []string
	}{
		{"all", nil, Filter{}, []string{"0", "1", "2", "3"}},
		{"workload", nil, Filter{Principal: "spiffe://a"}, []string{"0", "3"}},
		{"subject", opts.Pseudonymizer, Filter{Principal: "alice"}, []string{"1", "2"}},
		{"subject without pseudonymizer", nil, Filter{Principal: "alice"}, nil},
		{"pseudonym", nil, Filter{Principal: opts.Pseudonymizer.Subject("alice")}, []string{"1", "2"}},
		{"action", nil, Filter{Action: "Encrypt"}, []string{"0", "2"}},
		{"key by name or version", nil, Filter{Key: "k2"}, []string{"1", "2"}},
		{"time range", nil, Filter{From: base.Add(time.Minute), To: base.Add(3 * time.Minute)}, []string{"1", "2"}},
		{"limit", nil, Filter{Limit: 3}, []string{"0", "1", "2"}},
		{"combined", opts.Pseudonymizer, Filter{Principal: "alice", Action: "Encrypt"}, []string{"2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var got []string
			err = Query(t.Context(), NewFileSource(f), tt.pz, tt.f, func(e Event) error {
				got = append(got, e.RequestID)
				return nil
			})
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("Query(%+v) = %q, %v; want %q, nil", tt.f, got, err, tt.want)
			}
		})
	}
}

// TestReadyRecoversWithoutTraffic: after a failed write, Ready reports the
// failure until the sinks take writes again, and then recovers by itself
// (the writer probes them): a server taken out of its load balancer gets
// no traffic to recover with.
func TestReadyRecoversWithoutTraffic(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	sink := &funcSink{append: func(context.Context, []Entry, *Checkpoint) error {
		if failing.Load() {
			return errors.New("disk full")
		}
		return nil
	}}
	opts := testOptions(t, "probe", testRootKeys(t))
	opts.CheckpointInterval = 40 * time.Millisecond
	l := newLog(t, opts, sink)
	if err := l.Record(t.Context(), testEvent(1)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Record(failing sink) err = %v, want ErrUnavailable", err)
	}
	if err := l.Ready(t.Context()); err == nil {
		t.Fatal("Ready() after a failed write = nil, want the failure")
	}
	failing.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for l.Ready(t.Context()) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("Ready() = %v 5s after the sink recovered with no traffic, want nil", l.Ready(t.Context()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	closeLog(t, l)
}
