package audit

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// VerifyError says where Verify found the first bad record. It wraps
// ErrTampered, or ErrUnknownRootKey for a checkpoint it could not check.
type VerifyError struct {
	Chain  string // "" when the record's chain could not be read
	Seq    uint64 // the event's (or checkpoint's) seq; 0 when unknown
	Line   int64  // the line number in a file; 0 for the store
	Reason string
	Err    error
}

func (e *VerifyError) Error() string {
	where := ""
	if e.Line > 0 {
		where = "line " + strconv.FormatInt(e.Line, 10)
	}
	if e.Chain != "" {
		if where != "" {
			where += ", "
		}
		where += "chain " + e.Chain + " seq " + strconv.FormatUint(e.Seq, 10)
	}
	if where == "" {
		where = "log"
	}
	return fmt.Sprintf("%v at %s: %s", e.Err, where, e.Reason)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// ChainReport is what Verify found of one chain.
type ChainReport struct {
	Chain       string
	Events      int64
	LastSeq     uint64
	Checkpoints int64
	// CheckpointSeq is the seq of the last checkpoint: every event up to
	// it is covered by a root-key signature.
	CheckpointSeq uint64
	// Uncovered counts the events after the last checkpoint. Their hashes
	// chain, but someone able to rewrite the log could have rewritten or
	// cut them without a root key.
	Uncovered int64
	// Closed says the chain ends with a final checkpoint: its writer
	// stopped with Log.Close.
	Closed bool
}

// Report is what Verify found of a whole log.
type Report struct {
	Events      int64
	Checkpoints int64
	Uncovered   int64 // events after their chain's last checkpoint
	Anchors     int64 // anchors checked: other chains' checkpoints found intact
	Chains      []ChainReport
	// Unclosed names the chains, other than the newest (the one with the
	// latest last event), that do not end with a final checkpoint, in
	// bytewise order. Their writer crashed or was killed, or is still
	// writing (another replica), or the chain was cut after a checkpoint:
	// the log cannot tell which. Verify does not fail for them; events
	// after the cut were lost without a trace unless a later chain
	// anchored a checkpoint after it.
	Unclosed []string
}

// chainState is Verify's view of one chain.
type chainState struct {
	ChainReport
	hash     Digest
	lastTime [len(timeLayout)]byte // the canonical time of the last event
	lastPos  int64                 // the position of the last event in the log
	cps      []cpRef               // the checkpoints verified, by seq
}

// cpRef is a checkpoint an anchor may name.
type cpRef struct {
	seq  uint64
	hash Digest
}

// anchorRef is an anchor read from an event, checked once the whole log
// is read.
type anchorRef struct {
	Anchor
	chain string // the anchoring chain
	seq   uint64 // the anchoring event
	line  int64
}

// Verify reads the whole log from src and checks, chain by chain, that each
// event's hash covers its bytes, that seqs count up from 1 without gaps and
// that each event names its predecessor's hash, and that each checkpoint
// matches the chain at its seq and carries a tag made by the root key it
// names (found in keys). It returns the first bad record as a *VerifyError
// wrapping ErrTampered: a modified event fails its own hash, a removed one
// leaves a gap, an inserted or moved one breaks the seq order or its
// successor's prev, and a forged checkpoint fails its tag or its hash.
//
// Once the whole log is read, it checks every anchor (in the first event
// of a chain): the chain it names must hold a checkpoint at exactly its seq
// with its hash, else the chain was deleted or cut below that checkpoint
// (or the anchor forged), and Verify fails at the anchoring event.
//
// Events after a chain's last checkpoint, counted in Report.Uncovered, can
// be cut off without a trace, and so can a chain's tail after the
// checkpoint later chains anchored and the newest chains whole: a
// checkpoint is written at least every Options.CheckpointInterval and on
// Close. A chain cut after a checkpoint no longer ends with a final one:
// Report.Unclosed lists it, unless it is the newest.
func Verify(ctx context.Context, src Source, keys RootKeyLookup) (Report, error) {
	chains := map[string]*chainState{}
	var (
		rep     Report
		scratch []byte
		last    *chainState // the chain of the previous event, most often the next one's
		anchors []anchorRef
	)
	for {
		it, err := src.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rep, err
		}
		if it.Checkpoint != nil {
			if err := verifyCheckpoint(ctx, it, chains, keys); err != nil {
				return rep, err
			}
			rep.Checkpoints++
			continue
		}
		h, err := parseHead(it.Line)
		if err != nil {
			return rep, &VerifyError{Line: it.LineNo, Reason: err.Error(), Err: ErrTampered}
		}
		c := last
		if c == nil || c.Chain != string(h.chain) {
			c = chains[string(h.chain)]
			if c == nil {
				c = &chainState{ChainReport: ChainReport{Chain: string(h.chain)}}
				chains[c.Chain] = c
			}
			last = c
		}
		var got Digest
		got, scratch = lineHash(&h.prev, it.Line, scratch)
		switch {
		case got != h.hash:
			return rep, eventError(c, h.seq, it, "the event's hash does not match its content (modified)")
		case h.seq != c.LastSeq+1:
			if h.seq <= c.LastSeq {
				return rep, eventError(c, h.seq, it, "seq %d after seq %d (inserted, duplicated or reordered)", h.seq, c.LastSeq)
			}
			return rep, eventError(c, h.seq, it, "seq %d after seq %d (events %d to %d missing)", h.seq, c.LastSeq, c.LastSeq+1, h.seq-1)
		case h.prev != c.hash:
			return rep, eventError(c, h.seq, it, "prev hash %s is not the hash of seq %d (inserted or replaced)", h.prev, c.LastSeq)
		}
		if h.seq == 1 {
			as, err := parseAnchors(it.Line[h.body : len(it.Line)-hashSuffixLen])
			if err != nil {
				return rep, eventError(c, h.seq, it, "%v", err)
			}
			for _, a := range as {
				anchors = append(anchors, anchorRef{Anchor: a, chain: c.Chain, seq: h.seq, line: it.LineNo})
			}
		}
		if t, ok := bytes.CutPrefix(it.Line[h.body:], []byte(`"time":"`)); ok && len(t) >= len(c.lastTime) {
			copy(c.lastTime[:], t)
		}
		c.hash, c.LastSeq = h.hash, h.seq
		c.Events++
		c.Uncovered++
		c.Closed = false
		rep.Events++
		c.lastPos = rep.Events
	}
	for _, a := range anchors {
		if err := checkAnchor(a, chains); err != nil {
			return rep, err
		}
		rep.Anchors++
	}
	var newest *chainState
	for _, c := range chains {
		rep.Uncovered += c.Uncovered
		rep.Chains = append(rep.Chains, c.ChainReport)
		if newest == nil || bytes.Compare(c.lastTime[:], newest.lastTime[:]) > 0 ||
			(c.lastTime == newest.lastTime && c.lastPos > newest.lastPos) {
			newest = c
		}
	}
	for _, c := range chains {
		if !c.Closed && c != newest {
			rep.Unclosed = append(rep.Unclosed, c.Chain)
		}
	}
	slices.Sort(rep.Unclosed)
	slices.SortFunc(rep.Chains, func(a, b ChainReport) int {
		switch {
		case a.Chain < b.Chain:
			return -1
		case a.Chain > b.Chain:
			return 1
		}
		return 0
	})
	return rep, nil
}

func eventError(c *chainState, seq uint64, it Item, format string, args ...any) error {
	return &VerifyError{Chain: c.Chain, Seq: seq, Line: it.LineNo, Reason: fmt.Sprintf(format, args...), Err: ErrTampered}
}

// verifyCheckpoint checks a checkpoint against the chain read so far: it
// must cover the chain's last event, with that event's hash, and carry a
// tag the named root key made.
func verifyCheckpoint(ctx context.Context, it Item, chains map[string]*chainState, keys RootKeyLookup) error {
	cp := it.Checkpoint
	fail := func(err error, format string, args ...any) error {
		return &VerifyError{Chain: cp.Chain, Seq: cp.Seq, Line: it.LineNo,
			Reason: "checkpoint: " + fmt.Sprintf(format, args...), Err: err}
	}
	c := chains[cp.Chain]
	switch {
	case c == nil:
		return fail(ErrTampered, "no event of the chain before it (forged, or events removed)")
	case cp.Seq != c.LastSeq:
		return fail(ErrTampered, "it covers seq %d but follows seq %d (forged, moved, or events removed)", cp.Seq, c.LastSeq)
	case cp.Hash != c.hash:
		return fail(ErrTampered, "hash %s is not the chain's hash at seq %d (forged, or events modified)", cp.Hash, cp.Seq)
	}
	if err := cp.verifyTag(ctx, keys); err != nil {
		if errors.Is(err, ErrUnknownRootKey) {
			return fail(ErrUnknownRootKey, "%v", err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fail(ErrTampered, "%v (forged)", err)
	}
	c.Checkpoints++
	c.CheckpointSeq = cp.Seq
	c.Uncovered = 0
	c.Closed = cp.Final
	c.cps = append(c.cps, cpRef{seq: cp.Seq, hash: cp.Hash})
	return nil
}

// checkAnchor checks that the chain a names holds a verified checkpoint at
// a.Seq with a.Hash.
func checkAnchor(a anchorRef, chains map[string]*chainState) error {
	fail := func(format string, args ...any) error {
		return &VerifyError{Chain: a.chain, Seq: a.seq, Line: a.line,
			Reason: fmt.Sprintf("anchor of chain %s at seq %d: ", a.Chain, a.Seq) + fmt.Sprintf(format, args...), Err: ErrTampered}
	}
	c := chains[a.Chain]
	if c == nil {
		return fail("chain %s was deleted or cut before seq %d (the log holds none of its events)", a.Chain, a.Seq)
	}
	if c.LastSeq < a.Seq {
		return fail("chain %s was deleted or cut before seq %d (it ends at seq %d)", a.Chain, a.Seq, c.LastSeq)
	}
	i, found := slices.BinarySearchFunc(c.cps, a.Seq, func(r cpRef, seq uint64) int { return cmp.Compare(r.seq, seq) })
	if !found {
		return fail("chain %s has no checkpoint at seq %d (checkpoint removed, or the anchor forged)", a.Chain, a.Seq)
	}
	for ; i < len(c.cps) && c.cps[i].seq == a.Seq; i++ {
		if c.cps[i].hash == a.Hash {
			return nil
		}
	}
	return fail("chain %s's checkpoint at seq %d has another hash than the anchor's %s (chain rewritten, or the anchor forged)", a.Chain, a.Seq, a.Hash)
}
