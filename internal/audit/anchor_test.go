package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/envelope"
)

// recordNow records events first..last (inclusive) of testEvent at the
// log's clock, so that a later chain's events are newer.
func recordNow(t testing.TB, l *Log, first, last int) {
	t.Helper()
	for i := first; i <= last; i++ {
		e := testEvent(i)
		e.Time = time.Time{}
		if err := l.Record(t.Context(), e); err != nil {
			t.Fatalf("Record(ctx, event %d) err = %v, want nil", i, err)
		}
	}
}

// writeChain writes events 1..n of chain to the sink with a checkpoint
// every 4, and closes the log unless crash is set (the log is then left
// as a crash leaves it: it is closed at the end of the test, with its
// sink closed already).
func writeChain(t *testing.T, keys *envelope.RootKeys, sink Sink, chain string, n int, crash bool) {
	t.Helper()
	opts := testOptions(t, chain, keys)
	opts.CheckpointEvery = 4
	l := newLog(t, opts, sink)
	recordNow(t, l, 1, n)
	if !crash {
		closeLog(t, l)
	}
}

// lineChain returns the chain and seq of an event or checkpoint line.
func lineChain(t *testing.T, line string) (string, uint64) {
	t.Helper()
	line = strings.TrimSuffix(line, "\n")
	if strings.HasPrefix(line, checkpointPrefix) {
		cp, err := parseCheckpoint([]byte(line))
		if err != nil {
			t.Fatalf("parseCheckpoint(%s) err = %v", line, err)
		}
		return cp.Chain, cp.Seq
	}
	h, err := parseHead([]byte(line))
	if err != nil {
		t.Fatalf("parseHead(%s) err = %v", line, err)
	}
	return string(h.chain), h.seq
}

// dropLines removes the lines of chain for which drop(seq, checkpoint)
// holds.
func dropLines(t *testing.T, lines []string, chain string, drop func(seq uint64, checkpoint bool) bool) []string {
	t.Helper()
	return slices.DeleteFunc(lines, func(l string) bool {
		c, seq := lineChain(t, l)
		return c == chain && drop(seq, strings.HasPrefix(l, checkpointPrefix))
	})
}

// resealChain rewrites the event lines of chain so that every hash and
// prev is consistent again, as someone without the root key can.
func resealChain(t *testing.T, lines []string, chain string) {
	t.Helper()
	var prev Digest
	for i, l := range lines {
		line := []byte(strings.TrimSuffix(l, "\n"))
		h, err := parseHead(line)
		if err != nil || string(h.chain) != chain {
			continue // a checkpoint or another chain
		}
		var sealed []byte
		sealed, prev = seal(nil, chain, h.seq, prev, line[h.body:len(line)-hashSuffixLen])
		lines[i] = string(sealed) + "\n"
	}
}

// anchoredFile writes chain a (10 events: checkpoints 4, 8 and the final
// 10) then chain b (6 events: checkpoint 1 with the anchor of a at 10,
// checkpoint 5, final checkpoint 6) to one file, and returns its lines.
func anchoredFile(t *testing.T, keys *envelope.RootKeys) (path string, lines []string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "audit.jsonl")
	sa := openFileSink(t, path)
	writeChain(t, keys, sa, "a", 10, false)
	sa.Close()
	writeChain(t, keys, openFileSink(t, path), "b", 6, false)
	return path, readLines(t, path)
}

func TestAnchorsFile(t *testing.T) {
	keys := testRootKeys(t)
	path, orig := anchoredFile(t, keys)
	bFirst := slices.IndexFunc(orig, func(l string) bool { return strings.HasPrefix(l, `{"chain":"b","seq":1,`) })
	if bFirst < 0 || !strings.Contains(orig[bFirst], `,"anchors":[{"chain":"a","seq":10,"hash":"`) ||
		!strings.HasPrefix(orig[bFirst+1], `{"type":"checkpoint","chain":"b","seq":1,`) {
		t.Fatalf("chain b does not start with an event anchoring a at seq 10 and its checkpoint:\n%s", strings.Join(orig, ""))
	}
	t.Logf("the anchoring event: %s", orig[bFirst])

	// The sink lists the latest checkpoints and resumes chains from the
	// same scan.
	sink := openFileSink(t, path)
	cps, err := sink.LatestCheckpoints(t.Context())
	slices.SortFunc(cps, func(x, y Checkpoint) int { return strings.Compare(x.Chain, y.Chain) })
	if err != nil || len(cps) != 2 || cps[0].Chain != "a" || cps[0].Seq != 10 || !cps[0].Final || cps[1].Chain != "b" || cps[1].Seq != 6 {
		t.Errorf("LatestCheckpoints() = %+v, %v; want a at seq 10 and b at seq 6, final", cps, err)
	}
	if seq, _, err := sink.Head(t.Context(), "a"); seq != 10 || err != nil {
		t.Errorf("Head(a) after LatestCheckpoints = %d, %v; want 10, nil", seq, err)
	}

	// bLine is the 1-based line of b's first event once lines are dropped.
	tests := []struct {
		name   string
		tamper func(l []string) []string
		// wantLine, wantChain and wantText locate the failure; wantLine 0
		// means the log verifies.
		wantLine  int
		wantChain string
		wantText  string
		check     func(t *testing.T, rep Report)
	}{
		{"untouched", func(l []string) []string { return l }, 0, "", "", func(t *testing.T, rep Report) {
			if rep.Anchors != 1 || !rep.Chains[0].Closed || !rep.Chains[1].Closed || len(rep.Unclosed) != 0 || rep.Uncovered != 0 {
				t.Errorf("Verify() = %+v; want 1 anchor, both chains closed", rep)
			}
		}},
		{"the older chain deleted", func(l []string) []string {
			return dropLines(t, l, "a", func(uint64, bool) bool { return true })
		}, 1, "b", "chain a was deleted or cut before seq 10", nil},
		{"the older chain cut after an earlier checkpoint", func(l []string) []string {
			return dropLines(t, l, "a", func(seq uint64, _ bool) bool { return seq > 8 })
		}, bFirst - 2, "b", "chain a was deleted or cut before seq 10 (it ends at seq 8)", nil},
		{"the anchored checkpoint removed", func(l []string) []string {
			return dropLines(t, l, "a", func(seq uint64, cp bool) bool { return cp && seq == 10 })
		}, bFirst, "b", "chain a has no checkpoint at seq 10", nil},
		{"anchor forged, chain b resealed", func(l []string) []string {
			i := strings.Index(l[bFirst], `"seq":10,"hash":"`) + len(`"seq":10,"hash":"`)
			l[bFirst] = l[bFirst][:i] + strings.Repeat("0", 64) + l[bFirst][i+64:]
			resealChain(t, l, "b")
			return l
		}, bFirst + 2, "b", "checkpoint: hash", nil},
		{"anchors removed, chain b resealed", func(l []string) []string {
			i := strings.Index(l[bFirst], anchorsMember)
			j := i + strings.Index(l[bFirst][i:], `]`)
			l[bFirst] = l[bFirst][:i] + l[bFirst][j+1:]
			resealChain(t, l, "b")
			return l
		}, bFirst + 2, "b", "checkpoint: hash", nil},
		{"the newest chain's final checkpoint cut", func(l []string) []string {
			return dropLines(t, l, "b", func(seq uint64, cp bool) bool { return cp && seq == 6 })
		}, 0, "", "", func(t *testing.T, rep Report) {
			// Not detectable: it looks like a crash of the newest writer.
			if rep.Uncovered != 1 || rep.Chains[1].Closed || len(rep.Unclosed) != 0 {
				t.Errorf("Verify() = %+v; want 1 uncovered event, chain b not closed but not listed", rep)
			}
		}},
		{"the newest chain's tail cut after a checkpoint", func(l []string) []string {
			return dropLines(t, l, "b", func(seq uint64, _ bool) bool { return seq > 5 })
		}, 0, "", "", func(t *testing.T, rep Report) {
			if rep.Uncovered != 0 || rep.Chains[1].Closed || rep.Chains[1].LastSeq != 5 || len(rep.Unclosed) != 0 {
				t.Errorf("Verify() = %+v; want chain b to end at seq 5, not closed, not listed", rep)
			}
		}},
		{"the newest chain deleted", func(l []string) []string {
			return dropLines(t, l, "b", func(uint64, bool) bool { return true })
		}, 0, "", "", func(t *testing.T, rep Report) {
			if len(rep.Chains) != 1 || !rep.Chains[0].Closed || rep.Anchors != 0 {
				t.Errorf("Verify() = %+v; want chain a alone, closed", rep)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := tt.tamper(slices.Clone(orig))
			rep, err := verifyFile(t, writeLines(t, lines), keys)
			if tt.wantLine == 0 {
				if err != nil {
					t.Fatalf("Verify() err = %v, want nil", err)
				}
				tt.check(t, rep)
				return
			}
			var ve *VerifyError
			if !errors.As(err, &ve) || !errors.Is(err, ErrTampered) || ve.Line != int64(tt.wantLine) || ve.Chain != tt.wantChain ||
				!strings.Contains(ve.Reason, tt.wantText) {
				t.Fatalf("Verify() err = %v; want ErrTampered at line %d, chain %s, saying %q", err, tt.wantLine, tt.wantChain, tt.wantText)
			}
		})
	}
}

// lister is a sink whose LatestCheckpoints lies.
type lister struct {
	*FileSink
	edit func([]Checkpoint) []Checkpoint
}

func (s lister) LatestCheckpoints(ctx context.Context) ([]Checkpoint, error) {
	cps, err := s.FileSink.LatestCheckpoints(ctx)
	return s.edit(cps), err
}

// TestForgedAnchors: anchors a writer signed but that name no checkpoint
// the log holds fail verification at the anchoring event.
func TestForgedAnchors(t *testing.T) {
	keys := testRootKeys(t)
	tests := []struct {
		name     string
		edit     func(cp *Checkpoint)
		wantText string
	}{
		{"another hash", func(cp *Checkpoint) { cp.Hash[0] ^= 1 }, "chain a's checkpoint at seq 10 has another hash"},
		{"a seq without a checkpoint", func(cp *Checkpoint) { cp.Seq = 9 }, "chain a has no checkpoint at seq 9"},
		{"a seq after the chain's end", func(cp *Checkpoint) { cp.Seq = 11 }, "chain a was deleted or cut before seq 11 (it ends at seq 10)"},
		{"a chain that never was", func(cp *Checkpoint) { cp.Chain = "ghost" }, "chain ghost was deleted or cut before seq 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			sa := openFileSink(t, path)
			writeChain(t, keys, sa, "a", 10, false)
			sa.Close()
			sink := lister{openFileSink(t, path), func(cps []Checkpoint) []Checkpoint {
				for i := range cps {
					tt.edit(&cps[i])
				}
				return cps
			}}
			writeChain(t, keys, sink, "b", 2, false)
			_, err := verifyFile(t, path, keys)
			var ve *VerifyError
			if !errors.As(err, &ve) || !errors.Is(err, ErrTampered) || ve.Chain != "b" || ve.Seq != 1 || !strings.Contains(ve.Reason, tt.wantText) {
				t.Fatalf("Verify() err = %v; want ErrTampered at chain b seq 1 saying %q", err, tt.wantText)
			}
		})
	}
}

func TestAnchorsStore(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			keys := testRootKeys(t)
			tests := []struct {
				name     string
				sql      []string
				wantText string // "" means the log verifies
				check    func(t *testing.T, rep Report)
			}{
				{"untouched", nil, "", func(t *testing.T, rep Report) {
					if rep.Anchors != 1 || !rep.Chains[0].Closed || !rep.Chains[1].Closed || len(rep.Unclosed) != 0 {
						t.Errorf("Verify() = %+v; want 1 anchor, both chains closed", rep)
					}
				}},
				{"the older chain deleted", []string{
					`DELETE FROM audit_events WHERE chain = 'a'`,
					`DELETE FROM audit_checkpoints WHERE chain = 'a'`,
				}, "chain a was deleted or cut before seq 10", nil},
				{"the older chain cut after an earlier checkpoint", []string{
					`DELETE FROM audit_events WHERE chain = 'a' AND seq > 8`,
					`DELETE FROM audit_checkpoints WHERE chain = 'a' AND seq > 8`,
				}, "chain a was deleted or cut before seq 10 (it ends at seq 8)", nil},
				{"the anchored checkpoint removed", []string{
					`DELETE FROM audit_checkpoints WHERE chain = 'a' AND seq = 10`,
				}, "chain a has no checkpoint at seq 10", nil},
				{"the newest chain's final checkpoint cut", []string{
					`DELETE FROM audit_checkpoints WHERE chain = 'b' AND seq = 6`,
				}, "", func(t *testing.T, rep Report) {
					if rep.Uncovered != 1 || rep.Chains[1].Closed || len(rep.Unclosed) != 0 {
						t.Errorf("Verify() = %+v; want 1 uncovered event, chain b not closed but not listed", rep)
					}
				}},
				{"the newest chain deleted", []string{
					`DELETE FROM audit_events WHERE chain = 'b'`,
					`DELETE FROM audit_checkpoints WHERE chain = 'b'`,
				}, "", func(t *testing.T, rep Report) {
					if len(rep.Chains) != 1 || !rep.Chains[0].Closed {
						t.Errorf("Verify() = %+v; want chain a alone, closed", rep)
					}
				}},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					st, db := b.open(t)
					writeChain(t, keys, NewStoreSink(st), "a", 10, false)
					writeChain(t, keys, NewStoreSink(st), "b", 6, false)
					for _, q := range tt.sql {
						res, err := db.ExecContext(t.Context(), q)
						if err != nil || must(res.RowsAffected()) == 0 {
							t.Fatalf("tamper: %s: err = %v, or no row changed", q, err)
						}
					}
					rep, err := Verify(t.Context(), NewStoreSource(st), keys)
					if tt.wantText == "" {
						if err != nil {
							t.Fatalf("Verify() err = %v, want nil", err)
						}
						tt.check(t, rep)
						return
					}
					var ve *VerifyError
					if !errors.As(err, &ve) || !errors.Is(err, ErrTampered) || ve.Chain != "b" || ve.Seq != 1 || !strings.Contains(ve.Reason, tt.wantText) {
						t.Fatalf("Verify() err = %v; want ErrTampered at chain b seq 1 saying %q", err, tt.wantText)
					}
				})
			}
		})
	}
}

func TestCloseMarksFinal(t *testing.T) {
	keys := testRootKeys(t)
	tests := []struct {
		name      string
		events    int
		wantClose bool // a close event carries the final checkpoint
		wantLines int
	}{
		{"events since the last checkpoint", 6, false, 6 + 2},
		{"the head checkpointed already", 8, true, 8 + 2 + 2},
		{"no events", 0, false, 0},
	}
	for _, tt := range tests {
		for _, backend := range []string{"file", "store"} {
			t.Run(tt.name+"/"+backend, func(t *testing.T) {
				var src func() Source
				var sink Sink
				path := filepath.Join(t.TempDir(), "audit.jsonl")
				if backend == "file" {
					sink = openFileSink(t, path)
					src = func() Source { return NewFileSource(strings.NewReader(strings.Join(readLines(t, path), ""))) }
				} else {
					st := openSQLite(t, filepath.Join(t.TempDir(), "tresor.db"))
					sink = NewStoreSink(st)
					src = func() Source { return NewStoreSource(st) }
				}
				writeChain(t, keys, sink, "c", tt.events, false)
				rep, err := Verify(t.Context(), src(), keys)
				if err != nil {
					t.Fatalf("Verify() err = %v, want nil", err)
				}
				if tt.events == 0 {
					if len(rep.Chains) != 0 {
						t.Errorf("Verify() = %+v; want no chain: Close wrote nothing", rep)
					}
					return
				}
				n := int64(tt.events)
				if tt.wantClose {
					n++
				}
				if len(rep.Chains) != 1 || !rep.Chains[0].Closed || rep.Events != n || rep.Uncovered != 0 || closeEvents(t, src()) != n-int64(tt.events) {
					t.Errorf("Verify() = %+v; want %d events (close event: %t), closed", rep, n, tt.wantClose)
				}
				if backend == "file" {
					lines := readLines(t, path)
					if len(lines) != tt.wantLines || !strings.Contains(lines[len(lines)-1], `"final":true`) ||
						strings.Count(strings.Join(lines, ""), `"final":true`) != 1 {
						t.Errorf("the file has %d lines, want %d, the last alone a final checkpoint:\n%s", len(lines), tt.wantLines, strings.Join(lines, ""))
					}
				}
			})
		}
	}
}

// TestUnclosedChains: chains whose writer crashed are listed, unless
// newest, and verification passes.
func TestUnclosedChains(t *testing.T) {
	keys := testRootKeys(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	// crashed copies the file as a crash of the writers leaves it.
	crashed := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, must(os.ReadFile(path)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// z: one event, no checkpoint; a: 5 events, a checkpoint at 4 (it
	// anchors nothing: z has no checkpoint).
	sz := openFileSink(t, path)
	writeChain(t, keys, sz, "z", 1, true)
	path = crashed("z.jsonl")
	sa := openFileSink(t, path)
	writeChain(t, keys, sa, "a", 5, true)
	path = crashed("za.jsonl")

	rep, err := verifyFile(t, path, keys)
	if err != nil || !slices.Equal(rep.Unclosed, []string{"z"}) || rep.Anchors != 0 {
		t.Errorf("Verify(z, a crashed) = %+v, %v; want z unclosed (a is the newest), no anchors", rep, err)
	}

	sb := openFileSink(t, path)
	writeChain(t, keys, sb, "b", 2, false)
	rep, err = verifyFile(t, path, keys)
	if err != nil || !slices.Equal(rep.Unclosed, []string{"a", "z"}) || rep.Anchors != 1 {
		t.Errorf("Verify(z, a crashed, b closed) = %+v, %v; want a and z unclosed, 1 anchor (b to a)", rep, err)
	}
	lines := readLines(t, path)
	if i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, `{"chain":"b","seq":1,`) }); i < 0 ||
		!strings.Contains(lines[i], `"anchors":[{"chain":"a","seq":4,`) || strings.Contains(lines[i], `"chain":"z"`) {
		t.Errorf("b's first event = %q, want an anchor of a at its checkpoint 4 only", lines[max(i, 0)])
	}
}

// TestOldLogsVerify: chains written without anchors (each alone, as
// before anchors) still verify; deleting one is not seen.
func TestOldLogsVerify(t *testing.T) {
	keys := testRootKeys(t)
	var all []string
	for _, chain := range []string{"a", "b"} {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		writeChain(t, keys, openFileSink(t, path), chain, 5, false)
		for _, l := range readLines(t, path) {
			all = append(all, strings.TrimSuffix(l, "\n")+"\n")
		}
	}
	for _, lines := range [][]string{all, dropLines(t, slices.Clone(all), "a", func(uint64, bool) bool { return true })} {
		rep, err := verifyFile(t, writeLines(t, lines), keys)
		if err != nil || rep.Anchors != 0 || len(rep.Unclosed) != 0 {
			t.Errorf("Verify(chains without anchors) = %+v, %v; want nil, no anchors", rep, err)
		}
	}
}

func TestAnchorsOf(t *testing.T) {
	base := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
	var cps []Checkpoint
	for i := range MaxAnchors + 10 {
		cps = append(cps, Checkpoint{Chain: fmt.Sprintf("c%03d", i), Seq: uint64(i + 1), Time: base.Add(time.Duration(i) * time.Second)})
	}
	cps = append(cps, Checkpoint{Chain: "self", Seq: 3, Time: base.Add(time.Hour)})
	got := anchorsOf(cps, "self")
	if len(got) != MaxAnchors || got[0].Chain != "c010" || got[len(got)-1].Chain != fmt.Sprintf("c%03d", MaxAnchors+9) ||
		!slices.IsSortedFunc(got, func(a, b Anchor) int { return strings.Compare(a.Chain, b.Chain) }) {
		t.Errorf("anchorsOf(%d checkpoints) = %d anchors from %v to %v; want the %d most recent, by name, without self",
			len(cps), len(got), got[0], got[len(got)-1], MaxAnchors)
	}
}
