package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

// Entry is one sealed event as a sink writes it.
type Entry struct {
	Chain string
	Seq   uint64
	Time  time.Time
	Hash  Digest
	Line  []byte // the canonical line, without a newline
}

// Sink keeps the log durably. A Log calls one sink from one goroutine at a
// time.
type Sink interface {
	// Head returns the seq and hash of the last event of chain the sink
	// holds, or 0 and the zero Digest when it holds none.
	Head(ctx context.Context, chain string) (seq uint64, hash Digest, err error)
	// Append writes entries and, when not nil, checkpoint durably, all or
	// nothing, and returns nil only when they are durable. It must not keep
	// the entries' Lines after it returns. After an error the Log calls
	// Head before appending again.
	Append(ctx context.Context, entries []Entry, checkpoint *Checkpoint) error
}

// CheckpointLister is a [Sink] that can list the latest checkpoint of each
// chain it holds. When a [Log] starts a new chain in such a sink, the
// chain's first event anchors those checkpoints ([Anchor]). [FileSink] and
// [StoreSink] implement it; a sink that does not gets no anchors.
type CheckpointLister interface {
	// LatestCheckpoints returns the last checkpoint of every chain that
	// has one, in any order.
	LatestCheckpoints(ctx context.Context) ([]Checkpoint, error)
}

// Item is one record read from a log: an event line or a checkpoint.
type Item struct {
	// Line is the event's canonical line, valid until the next call of
	// Next; nil for a checkpoint.
	Line []byte
	// Checkpoint is the checkpoint; nil for an event.
	Checkpoint *Checkpoint
	// LineNo is the record's line number in a file, from 1; 0 when the
	// source has no lines.
	LineNo int64
}

// Source reads a log in the order it was written: within a chain, events
// by seq, and each checkpoint after the event it covers.
type Source interface {
	// Next returns the next record, or io.EOF after the last.
	Next(ctx context.Context) (Item, error)
}

// StoreSink writes the log to the key store, one transaction per batch.
type StoreSink struct {
	s store.AuditLog
}

var _ Sink = (*StoreSink)(nil)

// NewStoreSink returns a sink over the store's audit tables.
func NewStoreSink(s store.AuditLog) *StoreSink { return &StoreSink{s: s} }

// Head implements [Sink.Head].
func (s *StoreSink) Head(ctx context.Context, chain string) (uint64, Digest, error) {
	seq, hash, err := s.s.AuditHead(ctx, chain)
	if err != nil {
		return 0, Digest{}, fmt.Errorf("audit store sink: %w", err)
	}
	var d Digest
	if seq > 0 && len(hash) != len(d) {
		return 0, Digest{}, fmt.Errorf("audit store sink: head of chain %q (seq %d) has a hash of %d bytes, want %d", chain, seq, len(hash), len(d))
	}
	copy(d[:], hash)
	return seq, d, nil
}

// LatestCheckpoints implements [CheckpointLister] with one store query
// (at New, for a new chain's anchors).
func (s *StoreSink) LatestCheckpoints(ctx context.Context) ([]Checkpoint, error) {
	latest, err := s.s.LatestAuditCheckpoints(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit store sink: %w", err)
	}
	out := make([]Checkpoint, 0, len(latest))
	for _, c := range latest {
		cp := Checkpoint{Chain: c.Chain, Seq: c.Seq, Time: c.Time, RootKeyID: c.RootKeyID}
		if len(c.Hash) != len(cp.Hash) {
			continue // not one Verify would accept: nothing to anchor
		}
		copy(cp.Hash[:], c.Hash)
		out = append(out, cp)
	}
	return out, nil
}

// Append implements [Sink.Append] with one store.AuditLog.AppendAudit.
func (s *StoreSink) Append(ctx context.Context, entries []Entry, cp *Checkpoint) error {
	records := make([]store.AuditRecord, len(entries))
	for i := range entries {
		e := &entries[i]
		records[i] = store.AuditRecord{Chain: e.Chain, Seq: e.Seq, Time: e.Time, Data: e.Line, Hash: e.Hash[:]}
	}
	var rc *store.AuditCheckpointRecord
	if cp != nil {
		rc = &store.AuditCheckpointRecord{Chain: cp.Chain, Seq: cp.Seq, Hash: cp.Hash[:], Time: cp.Time,
			RootKeyID: cp.RootKeyID, Tag: cp.Tag}
	}
	if err := s.s.AppendAudit(ctx, records, rc); err != nil {
		return fmt.Errorf("audit store sink: %w", err)
	}
	return nil
}

// StoreSource reads the log from the key store: chain by chain (bytewise
// order), events by seq in pages, each checkpoint after its event.
type StoreSource struct {
	s        store.AuditLog
	page     int
	chains   []string
	started  bool
	chain    int
	events   []store.AuditRecord
	after    uint64
	done     bool // the chain's events are all read
	cps      []store.AuditCheckpointRecord
	cpLoaded bool
}

var _ Source = (*StoreSource)(nil)

// NewStoreSource returns a source over the store's audit tables. chains
// limits it to those chains; none means every chain. Verify of a source
// limited to some chains fails on anchors to the others: verify the whole
// log.
func NewStoreSource(s store.AuditLog, chains ...string) *StoreSource {
	return &StoreSource{s: s, chains: chains, started: len(chains) > 0, page: store.MaxAuditPage}
}

// Next implements [Source.Next].
func (s *StoreSource) Next(ctx context.Context) (Item, error) {
	if !s.started {
		chains, err := s.s.ListAuditChains(ctx)
		if err != nil {
			return Item{}, fmt.Errorf("audit store source: %w", err)
		}
		s.chains, s.started = chains, true
	}
	for s.chain < len(s.chains) {
		chain := s.chains[s.chain]
		if !s.cpLoaded {
			cps, err := s.s.ListAuditCheckpoints(ctx, chain)
			if err != nil {
				return Item{}, fmt.Errorf("audit store source: %w", err)
			}
			s.cps, s.cpLoaded = cps, true
		}
		// A checkpoint comes right after the event it covers.
		if len(s.cps) > 0 && (s.cps[0].Seq <= s.after || s.done) {
			c := s.cps[0]
			s.cps = s.cps[1:]
			// The store keeps no final flag: verifyTag reads it from the tag.
			cp := &Checkpoint{Chain: c.Chain, Seq: c.Seq, Time: c.Time, RootKeyID: c.RootKeyID, Tag: c.Tag, finalUnknown: true}
			if copy(cp.Hash[:], c.Hash) != len(cp.Hash) || len(c.Hash) != len(cp.Hash) {
				cp.Hash = Digest{} // fails verification by its hash
			}
			return Item{Checkpoint: cp}, nil
		}
		if len(s.events) == 0 && !s.done {
			events, err := s.s.ListAudit(ctx, chain, s.after, s.page)
			if err != nil {
				return Item{}, fmt.Errorf("audit store source: %w", err)
			}
			s.events = events
			s.done = len(events) == 0
		}
		if len(s.events) > 0 {
			e := s.events[0]
			s.events = s.events[1:]
			s.after = e.Seq
			return Item{Line: e.Data}, nil
		}
		if len(s.cps) == 0 {
			s.chain++
			s.after, s.done, s.cps, s.cpLoaded = 0, false, nil, false
		}
	}
	return Item{}, io.EOF
}

// errSinkClosed is returned by a closed FileSink.
var errSinkClosed = errors.New("audit file sink: closed")
