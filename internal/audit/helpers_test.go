package audit

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/kms/localkek"
)

// testRootKeys returns a root-key set holding a new local-file root key.
func testRootKeys(t testing.TB) *envelope.RootKeys {
	t.Helper()
	kek, err := localkek.OpenOrCreate(context.Background(), filepath.Join(t.TempDir(), "root.key"),
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("localkek.OpenOrCreate() err = %v, want nil", err)
	}
	t.Cleanup(func() { kek.Close() })
	keys, err := envelope.NewRootKeys(kek)
	if err != nil {
		t.Fatalf("envelope.NewRootKeys() err = %v, want nil", err)
	}
	return keys
}

// testPseudonymizer returns a Pseudonymizer with a fixed key.
func testPseudonymizer(t testing.TB) *Pseudonymizer {
	t.Helper()
	p, err := NewPseudonymizer(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatalf("NewPseudonymizer(32 bytes) err = %v, want nil", err)
	}
	return p
}

// testOptions returns options for chain with the given root keys.
func testOptions(t testing.TB, chain string, keys *envelope.RootKeys) Options {
	return Options{Chain: chain, RootKeys: keys, Pseudonymizer: testPseudonymizer(t)}
}

// testEvent returns the i-th event of a test.
func testEvent(i int) Event {
	return Event{
		Time:          time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC).Add(time.Duration(i) * time.Millisecond),
		RequestID:     fmt.Sprintf("req-%d", i),
		Method:        "/tresor.v1.CryptoService/Encrypt",
		Action:        "Encrypt",
		Workload:      "spiffe://bank.example/payments",
		Subject:       fmt.Sprintf("user-%d@bank.example", i%3),
		Auth:          AuthBoundToken,
		Source:        "10.0.0.7:51234",
		Resources:     []string{"keys/payments"},
		KeyVersions:   []string{"keys/payments:3"},
		Decision:      DecisionAllow,
		Policies:      []string{"policy0"},
		Code:          "OK",
		LatencyMicros: int64(100 + i),
		Fields:        FieldCounts{Protected: i % 4},
	}
}

// newLog starts a log and closes it at the end of the test.
func newLog(t testing.TB, opts Options, sinks ...Sink) *Log {
	t.Helper()
	l, err := New(t.Context(), opts, sinks...)
	if err != nil {
		t.Fatalf("New(ctx, %+v) err = %v, want nil", opts.Chain, err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l
}

// openFileSink opens a file sink and closes it at the end of the test.
func openFileSink(t testing.TB, path string) *FileSink {
	t.Helper()
	s, err := OpenFileSink(t.Context(), path)
	if err != nil {
		t.Fatalf("OpenFileSink(ctx, %s) err = %v, want nil", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// record records events first..last (inclusive) of testEvent.
func record(t testing.TB, l *Log, first, last int) {
	t.Helper()
	for i := first; i <= last; i++ {
		if err := l.Record(t.Context(), testEvent(i)); err != nil {
			t.Fatalf("Record(ctx, event %d) err = %v, want nil", i, err)
		}
	}
}

// closeLog closes l and fails the test on an error.
func closeLog(t testing.TB, l *Log) {
	t.Helper()
	if err := l.Close(t.Context()); err != nil {
		t.Fatalf("Close(ctx) err = %v, want nil", err)
	}
}

// verifyFile runs Verify over the file at path.
func verifyFile(t testing.TB, path string, keys RootKeyLookup) (Report, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("os.Open(%s) err = %v, want nil", path, err)
	}
	defer f.Close()
	return Verify(t.Context(), NewFileSource(f), keys)
}

// readLines returns the lines of the file at path.
func readLines(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("os.ReadFile(%s) err = %v, want nil", path, err)
	}
	return strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
}

// writeLines writes lines (each ending with a newline, but maybe the last)
// to a new file and returns its path.
func writeLines(t testing.TB, lines []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tampered.jsonl")
	s := strings.Join(lines, "")
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatalf("os.WriteFile(%s) err = %v, want nil", path, err)
	}
	return path
}

// closeEvents counts the close events (ActionClose) of the log in src.
func closeEvents(t testing.TB, src Source) int64 {
	t.Helper()
	var n int64
	if err := Query(t.Context(), src, nil, Filter{Action: ActionClose}, func(Event) error { n++; return nil }); err != nil {
		t.Fatalf("Query(close events) err = %v, want nil", err)
	}
	return n
}
