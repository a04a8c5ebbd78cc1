package audit

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/envelope"
)

// tamperLog writes 12 events one by one with a checkpoint every 4, and
// returns the file's lines: events 1-4 (lines 1-4), checkpoint 4 (line 5),
// events 5-8 (lines 6-9), checkpoint 8 (line 10), events 9-12 (lines
// 11-14), checkpoint 12 (line 15), and as checkpoint 12 holds the head on
// Close, the close event 13 (line 16) and the final checkpoint 13 (line 17).
func tamperLog(t *testing.T, keys *envelope.RootKeys) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	opts := testOptions(t, "c", keys)
	opts.CheckpointEvery = 4
	l := newLog(t, opts, openFileSink(t, path))
	record(t, l, 1, 12)
	closeLog(t, l)
	lines := readLines(t, path)
	if len(lines) != 17 {
		t.Fatalf("the log has %d lines, want 17:\n%s", len(lines), strings.Join(lines, ""))
	}
	for _, i := range []int{4, 9, 14, 16} {
		if !strings.HasPrefix(lines[i], checkpointPrefix) || strings.Contains(lines[i], `"final":true`) != (i == 16) {
			t.Fatalf("line %d = %s, want a checkpoint, final only on line 17", i+1, lines[i])
		}
	}
	if !strings.Contains(lines[15], `"seq":13,`) || !strings.Contains(lines[15], `"action":"`+ActionClose+`"`) {
		t.Fatalf("line 16 = %s, want the close event, seq 13", lines[15])
	}
	return lines
}

// eventSeq returns the seq of the event on line i (0-based) of tamperLog.
func lineOfSeq(seq int) int { return seq - 1 + (seq-1)/4 } // 0-based

// reseal rewrites the event lines from index from on so that every hash
// and prev is consistent again, as an attacker without the root key can.
func reseal(t *testing.T, lines []string, from int) {
	t.Helper()
	var prev Digest
	if from > 0 {
		for i := from - 1; i >= 0; i-- {
			if h, err := parseHead([]byte(strings.TrimSuffix(lines[i], "\n"))); err == nil {
				prev = h.hash
				break
			}
		}
	}
	for i := from; i < len(lines); i++ {
		line := []byte(strings.TrimSuffix(lines[i], "\n"))
		h, err := parseHead(line)
		if err != nil {
			continue // a checkpoint
		}
		body := line[len(appendHead(nil, string(h.chain), h.seq, &h.prev)) : len(line)-hashSuffixLen]
		var sealed []byte
		sealed, prev = seal(nil, string(h.chain), h.seq, prev, body)
		lines[i] = string(sealed) + "\n"
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	keys := testRootKeys(t)
	otherKeys := testRootKeys(t)
	orig := tamperLog(t, keys)
	t.Logf("an event line: %s", orig[0])
	t.Logf("a checkpoint line: %s", orig[4])

	replace := func(i int, old, new string) func(t *testing.T, l []string) []string {
		return func(t *testing.T, l []string) []string {
			if !strings.Contains(l[i], old) {
				t.Fatalf("line %d = %s, want it to hold %q", i+1, l[i], old)
			}
			l[i] = strings.Replace(l[i], old, new, 1)
			return l
		}
	}
	checkpointAt := func(l []string, i int) *Checkpoint {
		cp, err := parseCheckpoint([]byte(strings.TrimSuffix(l[i], "\n")))
		if err != nil {
			t.Fatalf("parseCheckpoint(line %d) err = %v", i+1, err)
		}
		return cp
	}
	tests := []struct {
		name     string
		tamper   func(t *testing.T, l []string) []string
		wantLine int64
		wantSeq  uint64
		wantErr  error
	}{
		{"one byte of a value changed", replace(lineOfSeq(5), `"req-5"`, `"req-6"`), 6, 5, ErrTampered},
		{"one byte of a key changed (case)", replace(lineOfSeq(7), `"action"`, `"Action"`), 8, 7, ErrTampered},
		{"one byte of seq changed", replace(lineOfSeq(3), `"seq":3,`, `"seq":4,`), 3, 4, ErrTampered},
		{"one byte of the hash changed", func(t *testing.T, l []string) []string {
			i := lineOfSeq(2)
			c := l[i][len(l[i])-4]
			n := byte('0')
			if c == '0' {
				n = '1'
			}
			l[i] = l[i][:len(l[i])-4] + string(n) + l[i][len(l[i])-3:]
			return l
		}, 2, 2, ErrTampered},
		{"hash in upper case", func(t *testing.T, l []string) []string {
			i := lineOfSeq(2)
			n := len(l[i])
			l[i] = l[i][:n-67] + strings.ToUpper(l[i][n-67:n-3]) + l[i][n-3:]
			return l
		}, 2, 0, ErrTampered},
		{"one byte of a checkpoint changed", replace(4, `"seq":4`, `"seq":3`), 5, 3, ErrTampered},
		{"one event removed", func(t *testing.T, l []string) []string {
			return slices.Delete(l, lineOfSeq(6), lineOfSeq(6)+1)
		}, 7, 7, ErrTampered},
		{"the first event removed", func(t *testing.T, l []string) []string { return l[1:] }, 1, 2, ErrTampered},
		{"two events swapped", func(t *testing.T, l []string) []string {
			i, j := lineOfSeq(6), lineOfSeq(7)
			l[i], l[j] = l[j], l[i]
			return l
		}, 7, 7, ErrTampered},
		{"an event duplicated", func(t *testing.T, l []string) []string {
			return slices.Insert(l, lineOfSeq(6)+1, l[lineOfSeq(6)])
		}, 8, 6, ErrTampered},
		{"an event inserted, hashes recomputed after it", func(t *testing.T, l []string) []string {
			// A new event 6 after event 5, everything after it renumbered
			// and resealed: only the checkpoint of seq 8 catches it.
			i := lineOfSeq(6)
			l = slices.Insert(l, i, l[i])
			for j, seq := i+1, 7; j < len(l); j++ {
				if !strings.HasPrefix(l[j], checkpointPrefix) {
					h, _ := parseHead([]byte(strings.TrimSuffix(l[j], "\n")))
					l[j] = strings.Replace(l[j], `"seq":`+itoa(h.seq)+`,`, `"seq":`+itoa(uint64(seq))+`,`, 1)
					seq++
				}
			}
			reseal(t, l, i)
			return l
		}, 11, 8, ErrTampered},
		{"an event modified, hashes recomputed after it", func(t *testing.T, l []string) []string {
			l = replace(lineOfSeq(10), `"Encrypt"`, `"Decrypt"`)(t, l)
			reseal(t, l, lineOfSeq(10))
			return l
		}, 15, 12, ErrTampered},
		{"a line cut short", func(t *testing.T, l []string) []string {
			l[lineOfSeq(9)] = l[lineOfSeq(9)][:40] + "\n"
			return l
		}, 11, 0, ErrTampered},
		{"an empty line inserted", func(t *testing.T, l []string) []string {
			return slices.Insert(l, 2, "\n")
		}, 3, 0, ErrTampered},
		{"checkpoint tag changed", func(t *testing.T, l []string) []string {
			cp := checkpointAt(l, 9)
			cp.Tag[len(cp.Tag)-1] ^= 1
			l[9] = string(appendCheckpoint(nil, cp)) + "\n"
			return l
		}, 10, 8, ErrTampered},
		{"checkpoint tag of another checkpoint", func(t *testing.T, l []string) []string {
			cp := checkpointAt(l, 9)
			cp.Tag = checkpointAt(l, 4).Tag
			l[9] = string(appendCheckpoint(nil, cp)) + "\n"
			return l
		}, 10, 8, ErrTampered},
		{"checkpoint time changed", func(t *testing.T, l []string) []string {
			cp := checkpointAt(l, 9)
			cp.Time = cp.Time.Add(time.Microsecond)
			l[9] = string(appendCheckpoint(nil, cp)) + "\n"
			return l
		}, 10, 8, ErrTampered},
		{"checkpoint forged with a root key of the same id", func(t *testing.T, l []string) []string {
			cp := checkpointAt(l, 9)
			forged, err := signCheckpoint(t.Context(), &fixedID{RootKeys: otherKeys, id: cp.RootKeyID}, cp.Chain, cp.Seq, cp.Hash, cp.Time)
			if err != nil {
				t.Fatalf("signCheckpoint(other key) err = %v", err)
			}
			l[9] = string(appendCheckpoint(nil, forged)) + "\n"
			return l
		}, 10, 8, ErrTampered},
		{"checkpoint signed by an unknown root key", func(t *testing.T, l []string) []string {
			cp := checkpointAt(l, 9)
			forged, err := signCheckpoint(t.Context(), otherKeys, cp.Chain, cp.Seq, cp.Hash, cp.Time)
			if err != nil {
				t.Fatalf("signCheckpoint(other key) err = %v", err)
			}
			l[9] = string(appendCheckpoint(nil, forged)) + "\n"
			return l
		}, 10, 8, ErrUnknownRootKey},
		{"checkpoint of a resealed chain, signed by an unknown key", func(t *testing.T, l []string) []string {
			l = replace(lineOfSeq(6), `"req-6"`, `"req-X"`)(t, l)
			reseal(t, l, lineOfSeq(6))
			h, _ := parseHead([]byte(strings.TrimSuffix(l[lineOfSeq(8)], "\n")))
			forged, _ := signCheckpoint(t.Context(), otherKeys, "c", 8, h.hash, time.Now())
			l[9] = string(appendCheckpoint(nil, forged)) + "\n"
			return l
		}, 10, 8, ErrUnknownRootKey},
		{"checkpoint moved", func(t *testing.T, l []string) []string {
			l[4], l[5] = l[5], l[4]
			return l
		}, 6, 4, ErrTampered},
		{"checkpoint of another chain", replace(9, `"chain":"c"`, `"chain":"d"`), 10, 8, ErrTampered},
		{"final flag removed", replace(16, `"final":true,`, ``), 17, 13, ErrTampered},
		{"final flag added", replace(14, `"root_key_id"`, `"final":true,"root_key_id"`), 15, 12, ErrTampered},
		{"close event and final checkpoint replaced by a non-final one", func(t *testing.T, l []string) []string {
			// Without the root key, a non-final checkpoint of seq 13 cannot
			// be made: the final one's tag does not fit it.
			return append(l[:15], l[15], strings.Replace(l[16], `"final":true,`, ``, 1))
		}, 17, 13, ErrTampered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := tt.tamper(t, slices.Clone(orig))
			_, err := verifyFile(t, writeLines(t, lines), keys)
			var ve *VerifyError
			if !errors.As(err, &ve) || !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify(tampered log) err = %v, want a *VerifyError wrapping %v", err, tt.wantErr)
			}
			if ve.Line != tt.wantLine || (tt.wantSeq != 0 && ve.Seq != tt.wantSeq) {
				t.Errorf("Verify(tampered log) err = %v; want it at line %d, seq %d", err, tt.wantLine, tt.wantSeq)
			}
		})
	}

	// The untouched log verifies.
	rep, err := verifyFile(t, writeLines(t, orig), keys)
	if err != nil || rep.Events != 13 || rep.Checkpoints != 4 || rep.Uncovered != 0 || !rep.Chains[0].Closed {
		t.Errorf("Verify(untouched log) = %+v, %v; want 13 events, 4 checkpoints, closed, nil", rep, err)
	}
	// Without the last checkpoint and events, it verifies too, with the
	// tail reported uncovered: a cut after the last checkpoint is not
	// detectable.
	rep, err = verifyFile(t, writeLines(t, orig[:13]), keys)
	if err != nil || rep.Events != 11 || rep.Uncovered != 3 {
		t.Errorf("Verify(log cut after event 11) = %+v, %v; want 11 events, 3 uncovered, nil", rep, err)
	}
}

func itoa(n uint64) string { return string(appendUint(nil, n)) }

func appendUint(b []byte, n uint64) []byte {
	if n >= 10 {
		b = appendUint(b, n/10)
	}
	return append(b, byte('0'+n%10))
}

// fixedID is a root-key set whose active key claims another id.
type fixedID struct {
	*envelope.RootKeys
	id string
}

func (f *fixedID) Active() envelope.KEK { return idKEK{f.RootKeys.Active(), f.id} }

type idKEK struct {
	envelope.KEK
	id string
}

func (k idKEK) ID() string { return k.id }

func TestVerifyContextCanceled(t *testing.T) {
	keys := testRootKeys(t)
	lines := tamperLog(t, keys)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Verify(ctx, NewFileSource(strings.NewReader(strings.Join(lines, ""))), keys); !errors.Is(err, context.Canceled) {
		t.Errorf("Verify(canceled ctx) err = %v, want context.Canceled", err)
	}
}
