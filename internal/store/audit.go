package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

// This file holds the audit log's storage: the records package
// internal/audit writes through [AuditLog], and the rules both
// implementations share.

// ErrInvalidAudit means AppendAudit got a record it cannot store: no
// events and no checkpoint, an empty or over-long chain name, a sequence
// number of 0 or above 2^63-1, no data or hash, a checkpoint whose root key
// id or tag is empty, or two records with the same (chain, seq). The
// wrapping error says which; nothing was written.
var ErrInvalidAudit = errors.New("store: invalid audit record")

// Limits of the audit log.
const (
	// MaxAuditChain is the longest chain name AppendAudit accepts, in bytes.
	MaxAuditChain = 256
	// DefaultAuditPage is the number of records ListAudit returns when its
	// limit is 0 or less.
	DefaultAuditPage = 1000
	// MaxAuditPage caps the limit of ListAudit; larger values are lowered to it.
	MaxAuditPage = 10000
)

// AuditRecord is one event of the tamper-evident audit log, as stored. The
// store keeps Data opaque: it is the event's encoding, on which Hash was
// computed by package audit. The store neither reads nor checks it.
type AuditRecord struct {
	Chain string    // the writer's chain; (Chain, Seq) is unique
	Seq   uint64    // from 1, consecutive within a chain
	Time  time.Time // when the event happened; kept in UTC to the microsecond
	Data  []byte    // the encoded event
	Hash  []byte    // the event's chain hash
}

// AuditCheckpointRecord is a signed statement that the chain Chain had, at
// sequence number Seq, the head hash Hash. Package audit computes Tag with
// the root key named RootKeyID; the store keeps it opaque.
type AuditCheckpointRecord struct {
	Chain     string
	Seq       uint64
	Hash      []byte
	Time      time.Time // kept in UTC to the microsecond
	RootKeyID string
	Tag       []byte
}

// AuditLog stores the audit log: hash-chained events and checkpoints, per
// chain (one chain per writer). Package internal/audit defines the chain;
// the store keeps records in order and refuses to overwrite one.
type AuditLog interface {
	// AppendAudit stores events and, when not nil, checkpoint, in one
	// transaction: all of them or none. It returns ErrConflict, writing
	// nothing, when an event's (Chain, Seq) or the checkpoint's is stored
	// already, and ErrInvalidAudit for records it cannot store.
	AppendAudit(ctx context.Context, events []AuditRecord, checkpoint *AuditCheckpointRecord) error
	// AuditHead returns the highest Seq stored for chain and that event's
	// Hash, or 0 and nil (and no error) when the chain has no events.
	AuditHead(ctx context.Context, chain string) (seq uint64, hash []byte, err error)
	// ListAudit returns up to limit events of chain with Seq above afterSeq,
	// ordered by Seq. limit is bounded by DefaultAuditPage and MaxAuditPage
	// as ListKeys bounds its page size.
	ListAudit(ctx context.Context, chain string, afterSeq uint64, limit int) ([]AuditRecord, error)
	// ListAuditChains returns the names of the chains that have events,
	// ordered bytewise.
	ListAuditChains(ctx context.Context) ([]string, error)
	// ListAuditCheckpoints returns the checkpoints of chain, ordered by Seq.
	ListAuditCheckpoints(ctx context.Context, chain string) ([]AuditCheckpointRecord, error)
	// LatestAuditCheckpoints returns the checkpoint with the highest Seq of
	// every chain that has one, ordered by chain, in one query: what a new
	// chain anchors.
	LatestAuditCheckpoints(ctx context.Context) ([]AuditCheckpointRecord, error)
}

// validateAudit checks the arguments of AppendAudit and returns the events
// and checkpoint as stored (times in UTC to the microsecond). The errors it
// returns wrap ErrInvalidAudit. Every implementation calls it first.
func validateAudit(events []AuditRecord, cp *AuditCheckpointRecord) ([]AuditRecord, *AuditCheckpointRecord, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidAudit, fmt.Sprintf(format, args...))
	}
	// checkID's errors are built only on failure (what names the record
	// then): it runs for every event of every batch.
	checkID := func(chain string, seq uint64) error {
		switch {
		case chain == "":
			return errors.New("empty chain name")
		case len(chain) > MaxAuditChain:
			return fmt.Errorf("chain name of %d bytes, want at most %d", len(chain), MaxAuditChain)
		case seq == 0 || seq > math.MaxInt64:
			return fmt.Errorf("seq %d, want 1 to 2^63-1", seq)
		}
		if err := checkText(chain); err != nil {
			return fmt.Errorf("chain name: %v", err)
		}
		return nil
	}
	if len(events) == 0 && cp == nil {
		return nil, nil, invalid("no events and no checkpoint")
	}
	type id struct {
		chain string
		seq   uint64
	}
	seen := make(map[id]bool, len(events))
	out := make([]AuditRecord, len(events))
	for i, e := range events {
		if err := checkID(e.Chain, e.Seq); err != nil {
			return nil, nil, invalid("event %d: %v", i, err)
		}
		switch {
		case len(e.Data) == 0:
			return nil, nil, invalid("event %d: no data", i)
		case len(e.Hash) == 0:
			return nil, nil, invalid("event %d: no hash", i)
		case seen[id{e.Chain, e.Seq}]:
			return nil, nil, invalid("event %d: (%q, %d) given twice", i, e.Chain, e.Seq)
		}
		seen[id{e.Chain, e.Seq}] = true
		e.Time = storeTime(e.Time)
		out[i] = e
	}
	if cp == nil {
		return out, nil, nil
	}
	if err := checkID(cp.Chain, cp.Seq); err != nil {
		return nil, nil, invalid("checkpoint: %v", err)
	}
	switch {
	case len(cp.Hash) == 0:
		return nil, nil, invalid("checkpoint: no hash")
	case cp.RootKeyID == "":
		return nil, nil, invalid("checkpoint: no root key id")
	case len(cp.Tag) == 0:
		return nil, nil, invalid("checkpoint: no tag")
	}
	if err := checkText(cp.RootKeyID); err != nil {
		return nil, nil, invalid("checkpoint: root key id: %v", err)
	}
	c := *cp
	c.Time = storeTime(c.Time)
	return out, &c, nil
}

// auditPage returns the number of records ListAudit returns for limit.
func auditPage(limit int) int {
	switch {
	case limit <= 0:
		return DefaultAuditPage
	case limit > MaxAuditPage:
		return MaxAuditPage
	}
	return limit
}
