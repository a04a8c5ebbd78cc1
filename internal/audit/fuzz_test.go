package audit

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tresorkms/tresor/envelope"
)

// Fuzz targets for reading an audit log back, as `tresor audit verify` and
// `tresor audit query` do. Run one with
//
//	go test -run '^$' -fuzz '^FuzzVerify$' -fuzztime 1m -parallel 1 ./internal/audit
//
// (or `make fuzz`); plain `go test` runs their seeds and any corpus under
// testdata/fuzz.

// fuzzKEK is a root key with a fixed AES-256-GCM key, so that the
// checkpoints of a log written in one process (a seed, a saved corpus
// entry) verify in every other.
type fuzzKEK struct{ gcm cipher.AEAD }

func newFuzzRootKeys(tb testing.TB) *envelope.RootKeys {
	tb.Helper()
	block, err := aes.NewCipher(bytes.Repeat([]byte{0x42}, 32))
	if err != nil {
		tb.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		tb.Fatal(err)
	}
	keys, err := envelope.NewRootKeys(fuzzKEK{gcm: gcm})
	if err != nil {
		tb.Fatalf("envelope.NewRootKeys() err = %v, want nil", err)
	}
	return keys
}

func (k fuzzKEK) ID() string { return "fuzz-root-1" }

func (k fuzzKEK) Wrap(_ context.Context, pt, aad []byte) ([]byte, error) {
	nonce := make([]byte, k.gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.gcm.Seal(nonce, nonce, pt, aad), nil
}

func (k fuzzKEK) Unwrap(_ context.Context, ct, aad []byte) ([]byte, error) {
	if len(ct) < k.gcm.NonceSize() {
		return nil, errors.New("unwrap failed")
	}
	pt, err := k.gcm.Open(nil, ct[:k.gcm.NonceSize()], ct[k.gcm.NonceSize():], aad)
	if err != nil {
		return nil, errors.New("unwrap failed")
	}
	return pt, nil
}

// fuzzLog writes a valid log file with every kind of line: chain "a" (5
// events, a checkpoint every 2, closed with a final checkpoint), then chain
// "b" (its first event anchoring a's last checkpoint, 3 events, closed),
// then chain "c", left open after events past its last checkpoint (as a
// crashed writer leaves it). It returns the file's bytes.
func fuzzLog(tb testing.TB, keys *envelope.RootKeys) []byte {
	tb.Helper()
	ctx := context.Background()
	path := filepath.Join(tb.TempDir(), "audit.jsonl")
	sink, err := OpenFileSink(ctx, path)
	if err != nil {
		tb.Fatalf("OpenFileSink() err = %v, want nil", err)
	}
	defer sink.Close()
	now := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	clock := func() time.Time { return now }
	var open *Log
	for i, c := range []struct {
		chain  string
		events int
		close  bool
	}{{"a", 5, true}, {"b", 3, true}, {"c", 3, false}} {
		opts := testOptions(tb, c.chain, keys)
		opts.CheckpointEvery = 2
		if !c.close {
			opts.CheckpointEvery = 100 // events 2 and 3 stay uncovered
		}
		opts.CheckpointInterval = time.Hour
		opts.Now = clock
		l, err := New(ctx, opts, sink)
		if err != nil {
			tb.Fatalf("New(%s) err = %v, want nil", c.chain, err)
		}
		for j := range c.events {
			e := testEvent(10*i + j)
			if err := l.Record(ctx, e); err != nil {
				tb.Fatalf("Record(%s, %d) err = %v, want nil", c.chain, j, err)
			}
		}
		if c.close {
			if err := l.Close(ctx); err != nil {
				tb.Fatalf("Close(%s) err = %v, want nil", c.chain, err)
			}
		} else {
			open = l
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("ReadFile() err = %v, want nil", err)
	}
	// Chain c stays open in the file: what the file held before Close.
	open.Close(ctx)
	return data
}

// verifyBytes runs Verify over a log held in memory.
func verifyBytes(data []byte, keys RootKeyLookup) (Report, error) {
	return Verify(context.Background(), NewFileSource(bytes.NewReader(data)), keys)
}

// FuzzVerify: arbitrary bytes as a log file. Verify gives a report or a
// *VerifyError (wrapping ErrTampered or ErrUnknownRootKey), never a panic
// or another error; a report adds up. Query over the same bytes returns
// nil or an error, never a panic.
func FuzzVerify(f *testing.F) {
	keys := newFuzzRootKeys(f)
	valid := fuzzLog(f, keys)
	if _, err := verifyBytes(valid, keys); err != nil {
		f.Fatalf("Verify(the seed log) err = %v, want nil", err)
	}
	f.Add(valid)
	lines := bytes.SplitAfter(valid, []byte("\n"))
	for i := range lines {
		f.Add(lines[i])                                             // one line alone
		f.Add(bytes.Join(append(lines[:i:i], lines[i+1:]...), nil)) // one line removed
	}
	f.Add([]byte(""))
	f.Add([]byte("\n\n"))
	f.Add([]byte(checkpointPrefix + `"chain":"a","seq":1}` + "\n"))
	f.Add([]byte(`{"chain":"a","seq":1,"prev":"` + string(bytes.Repeat([]byte("0"), 64)) + `","time":"x","hash":"` + string(bytes.Repeat([]byte("0"), 64)) + `"}`))
	pz := testPseudonymizer(f)
	filters := []Filter{
		{},
		{Principal: "user-1@bank.example", Action: "Encrypt", Key: "keys/payments", Limit: 2},
		{Principal: "spiffe://bank.example/payments", From: time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2032, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := verifyBytes(data, keys)
		if err != nil {
			var ve *VerifyError
			if !errors.As(err, &ve) || !(errors.Is(err, ErrTampered) || errors.Is(err, ErrUnknownRootKey)) {
				t.Fatalf("Verify(%q) err = %v, want a *VerifyError wrapping ErrTampered or ErrUnknownRootKey", data, err)
			}
			_ = ve.Error()
		} else {
			var events, uncovered, cps int64
			for _, c := range rep.Chains {
				events += c.Events
				uncovered += c.Uncovered
				cps += c.Checkpoints
				if c.Uncovered > c.Events || c.CheckpointSeq > c.LastSeq || uint64(c.Events) != c.LastSeq {
					t.Fatalf("Verify(%q) chain %+v does not add up", data, c)
				}
			}
			if events != rep.Events || uncovered != rep.Uncovered || cps != rep.Checkpoints {
				t.Fatalf("Verify(%q) report %+v does not add up: %d events, %d uncovered, %d checkpoints in its chains", data, rep, events, uncovered, cps)
			}
		}
		for _, fl := range filters {
			n := 0
			_ = QueryLines(context.Background(), NewFileSource(bytes.NewReader(data)), pz, fl, func(line []byte) error {
				n++
				if !bytes.Contains(data, line) {
					t.Fatalf("QueryLines(%q) gave the line %q, which the log does not hold", data, line)
				}
				return nil
			})
			if fl.Limit > 0 && n > fl.Limit {
				t.Fatalf("QueryLines(limit %d) gave %d lines", fl.Limit, n)
			}
		}
	})
}

// FuzzVerifyTampered: a valid log with one byte changed never verifies.
// Every byte of an event line is covered by its hash (the hash member by
// its strict decoding), every byte of a checkpoint line by its canonical
// form and its tag, and the newlines by the line structure.
func FuzzVerifyTampered(f *testing.F) {
	keys := newFuzzRootKeys(f)
	valid := fuzzLog(f, keys)
	if _, err := verifyBytes(valid, keys); err != nil {
		f.Fatalf("Verify(the log) err = %v, want nil", err)
	}
	// A byte of each line's every member: the first line's, a checkpoint's,
	// the anchoring event's, the last newline.
	for _, pos := range []int{0, 11, 20, 40, 100, 200, len(valid) / 2, len(valid) - 70, len(valid) - 2, len(valid) - 1} {
		for _, b := range []byte{'0', '9', 'a', 'f', 'A', '"', '\\', '\n', ' ', 0, 0xff} {
			f.Add(uint32(pos), b)
		}
	}
	for i, c := range valid {
		if c == '\n' {
			f.Add(uint32(i), byte('}'))
		}
	}
	f.Fuzz(func(t *testing.T, pos uint32, b byte) {
		i := int(pos % uint32(len(valid)))
		data := bytes.Clone(valid)
		data[i] = b
		_, err := verifyBytes(data, keys)
		if b == valid[i] {
			if err != nil {
				t.Fatalf("Verify(the unchanged log) err = %v, want nil", err)
			}
			return
		}
		if err == nil {
			start := bytes.LastIndexByte(valid[:i], '\n') + 1
			end := bytes.IndexByte(valid[i:], '\n')
			if end < 0 {
				end = len(valid)
			} else {
				end += i
			}
			t.Fatalf("Verify(log with byte %d changed from %q to %q) err = nil, want an error; the line was\n%s", i, valid[i], b, valid[start:end])
		}
		var ve *VerifyError
		if !errors.As(err, &ve) {
			t.Fatalf("Verify(log with byte %d changed) err = %v, want a *VerifyError", i, err)
		}
	})
}
