package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"time"

	sqlite3 "modernc.org/sqlite/lib"
)

var _ AuditLog = (*SQLite)(nil)

// sqliteAuditInserts is how many prepared INSERTs the store keeps: of 1,
// 2, 4 ... 256 events. One statement per row costs more than the rows
// themselves, and compiling a statement per batch nearly as much.
const sqliteAuditInserts = 9

func buildSQLiteInsertAudit(n int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO audit_events (chain, seq, time, data, hash) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?, ?, ?, ?, ?)")
	}
	return b.String()
}

const (
	sqliteInsertAuditCheckpointSQL = `INSERT INTO audit_checkpoints (chain, seq, time, hash, root_key_id, tag)
		VALUES (?, ?, ?, ?, ?, ?)`
	// sqliteAuditChainsSQL lists the distinct chains with one index lookup
	// per chain (a loose index scan), not a scan of every event.
	sqliteAuditChainsSQL = `WITH RECURSIVE c (chain) AS (
		SELECT min(chain) FROM audit_events
		UNION ALL
		SELECT (SELECT min(chain) FROM audit_events WHERE chain > c.chain) FROM c WHERE c.chain IS NOT NULL)
	SELECT chain FROM c WHERE chain IS NOT NULL`
)

// AppendAudit implements [AuditLog.AppendAudit] in one write transaction:
// the events and the checkpoint are durable (synchronous=FULL) when it
// returns nil.
func (s *SQLite) AppendAudit(ctx context.Context, events []AuditRecord, checkpoint *AuditCheckpointRecord) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	events, cp, err := validateAudit(events, checkpoint)
	if err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		for rest := events; len(rest) > 0; {
			// The largest power of two that fits, up to 256 events.
			i := min(bits.Len(uint(len(rest)))-1, sqliteAuditInserts-1)
			chunk := rest[:1<<i]
			rest = rest[len(chunk):]
			args := make([]any, 0, 5*len(chunk))
			for _, e := range chunk {
				args = append(args, e.Chain, int64(e.Seq), e.Time.UnixMicro(), e.Data, e.Hash)
			}
			_, err := tx.StmtContext(ctx, s.auditInserts[i]).ExecContext(ctx, args...)
			if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY) {
				return fmt.Errorf("%w: an event of (%q, %d...%d) is stored already", ErrConflict, chunk[0].Chain, chunk[0].Seq, chunk[len(chunk)-1].Seq)
			}
			if err != nil {
				return sqliteErr(err)
			}
		}
		if cp == nil {
			return nil
		}
		_, err := tx.ExecContext(ctx, sqliteInsertAuditCheckpointSQL,
			cp.Chain, int64(cp.Seq), cp.Time.UnixMicro(), cp.Hash, cp.RootKeyID, cp.Tag)
		if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY) {
			return fmt.Errorf("%w: checkpoint (%q, %d) is stored already", ErrConflict, cp.Chain, cp.Seq)
		}
		return sqliteErr(err)
	})
	if err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	return nil
}

// AuditHead implements [AuditLog.AuditHead].
func (s *SQLite) AuditHead(ctx context.Context, chain string) (uint64, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, fmt.Errorf("audit head of chain %q: %w", chain, err)
	}
	var (
		seq  int64
		hash []byte
	)
	err := s.r.QueryRowContext(ctx, `SELECT seq, hash FROM audit_events WHERE chain = ? ORDER BY seq DESC LIMIT 1`,
		chain).Scan(&seq, &hash)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, nil, nil
	case err != nil:
		return 0, nil, fmt.Errorf("audit head of chain %q: %w", chain, sqliteErr(err))
	}
	return uint64(seq), hash, nil
}

// ListAudit implements [AuditLog.ListAudit].
func (s *SQLite) ListAudit(ctx context.Context, chain string, afterSeq uint64, limit int) ([]AuditRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list audit of chain %q: %w", chain, err)
	}
	if afterSeq >= 1<<63 {
		return nil, nil
	}
	rows, err := s.r.QueryContext(ctx, `SELECT seq, time, data, hash FROM audit_events
		WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?`, chain, int64(afterSeq), auditPage(limit))
	if err != nil {
		return nil, fmt.Errorf("list audit of chain %q: %w", chain, sqliteErr(err))
	}
	defer rows.Close()
	var out []AuditRecord
	for rows.Next() {
		r := AuditRecord{Chain: chain}
		var seq, micros int64
		if err := rows.Scan(&seq, &micros, &r.Data, &r.Hash); err != nil {
			return nil, fmt.Errorf("list audit of chain %q: %w", chain, sqliteErr(err))
		}
		r.Seq, r.Time = uint64(seq), time.UnixMicro(micros).UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list audit of chain %q: %w", chain, sqliteErr(err))
	}
	return out, nil
}

// ListAuditChains implements [AuditLog.ListAuditChains].
func (s *SQLite) ListAuditChains(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list audit chains: %w", err)
	}
	rows, err := s.r.QueryContext(ctx, sqliteAuditChainsSQL)
	if err != nil {
		return nil, fmt.Errorf("list audit chains: %w", sqliteErr(err))
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, fmt.Errorf("list audit chains: %w", sqliteErr(err))
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list audit chains: %w", sqliteErr(err))
	}
	return out, nil
}

// ListAuditCheckpoints implements [AuditLog.ListAuditCheckpoints].
func (s *SQLite) ListAuditCheckpoints(ctx context.Context, chain string) ([]AuditCheckpointRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list audit checkpoints of chain %q: %w", chain, err)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT seq, time, hash, root_key_id, tag FROM audit_checkpoints
		WHERE chain = ? ORDER BY seq`, chain)
	if err != nil {
		return nil, fmt.Errorf("list audit checkpoints of chain %q: %w", chain, sqliteErr(err))
	}
	defer rows.Close()
	var out []AuditCheckpointRecord
	for rows.Next() {
		c := AuditCheckpointRecord{Chain: chain}
		var seq, micros int64
		if err := rows.Scan(&seq, &micros, &c.Hash, &c.RootKeyID, &c.Tag); err != nil {
			return nil, fmt.Errorf("list audit checkpoints of chain %q: %w", chain, sqliteErr(err))
		}
		c.Seq, c.Time = uint64(seq), time.UnixMicro(micros).UTC()
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list audit checkpoints of chain %q: %w", chain, sqliteErr(err))
	}
	return out, nil
}

// LatestAuditCheckpoints implements [AuditLog.LatestAuditCheckpoints]. The
// bare columns of an aggregate query with max() come from the row holding
// the maximum (documented SQLite behaviour).
func (s *SQLite) LatestAuditCheckpoints(ctx context.Context) ([]AuditCheckpointRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("latest audit checkpoints: %w", err)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT chain, max(seq), time, hash, root_key_id, tag FROM audit_checkpoints
		GROUP BY chain ORDER BY chain`)
	if err != nil {
		return nil, fmt.Errorf("latest audit checkpoints: %w", sqliteErr(err))
	}
	defer rows.Close()
	var out []AuditCheckpointRecord
	for rows.Next() {
		var (
			c           AuditCheckpointRecord
			seq, micros int64
		)
		if err := rows.Scan(&c.Chain, &seq, &micros, &c.Hash, &c.RootKeyID, &c.Tag); err != nil {
			return nil, fmt.Errorf("latest audit checkpoints: %w", sqliteErr(err))
		}
		c.Seq, c.Time = uint64(seq), time.UnixMicro(micros).UTC()
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("latest audit checkpoints: %w", sqliteErr(err))
	}
	return out, nil
}
