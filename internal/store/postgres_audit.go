package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var _ AuditLog = (*PostgresStore)(nil)

// pgAppendAuditSQL inserts a batch of events and an optional checkpoint
// ($7 IS NOT NULL) in one statement, and so in one transaction and one
// round trip.
const pgAppendAuditSQL = `WITH e AS (
	INSERT INTO audit_events (chain, seq, time, data, hash)
	SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::bytea[], $5::bytea[])
	RETURNING 1),
c AS (
	INSERT INTO audit_checkpoints (chain, seq, time, hash, root_key_id, tag)
	SELECT $6::text, $7::bigint, $8::timestamptz, $9::bytea, $10::text, $11::bytea
	WHERE $7::bigint IS NOT NULL
	RETURNING 1)
SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM c)`

// pgAuditChainsSQL lists the distinct chains with one index lookup per
// chain (a loose index scan), not a scan of every event.
const pgAuditChainsSQL = `WITH RECURSIVE c (chain) AS (
	SELECT min(chain) FROM audit_events
	UNION ALL
	SELECT (SELECT min(chain) FROM audit_events WHERE chain > c.chain) FROM c WHERE c.chain IS NOT NULL)
SELECT chain FROM c WHERE chain IS NOT NULL`

// AppendAudit implements [AuditLog.AppendAudit] in one statement.
func (s *PostgresStore) AppendAudit(ctx context.Context, events []AuditRecord, checkpoint *AuditCheckpointRecord) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	events, cp, err := validateAudit(events, checkpoint)
	if err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	chains := make([]string, len(events))
	seqs := make([]int64, len(events))
	times := make([]time.Time, len(events))
	data := make([][]byte, len(events))
	hashes := make([][]byte, len(events))
	for i, e := range events {
		chains[i], seqs[i], times[i], data[i], hashes[i] = e.Chain, int64(e.Seq), e.Time, e.Data, e.Hash
	}
	var (
		cpChain, cpRoot *string
		cpSeq           *int64
		cpTime          *time.Time
		cpHash, cpTag   []byte
	)
	if cp != nil {
		seq := int64(cp.Seq)
		cpChain, cpSeq, cpTime, cpHash, cpRoot, cpTag = &cp.Chain, &seq, &cp.Time, cp.Hash, &cp.RootKeyID, cp.Tag
	}
	var nEvents, nCheckpoints int64
	err = s.pool.QueryRow(ctx, pgAppendAuditSQL, chains, seqs, times, data, hashes,
		cpChain, cpSeq, cpTime, cpHash, cpRoot, cpTag).Scan(&nEvents, &nCheckpoints)
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && pe.Code == "23505": // unique_violation
		return fmt.Errorf("append audit: %w: %s is stored already", ErrConflict, pe.ConstraintName)
	case err != nil:
		return fmt.Errorf("append audit: %w", s.fail(err))
	case nEvents != int64(len(events)) || (cp != nil) != (nCheckpoints == 1):
		return fmt.Errorf("append audit: postgres: stored %d events and %d checkpoints, want %d and %t", nEvents, nCheckpoints, len(events), cp != nil)
	}
	return nil
}

// AuditHead implements [AuditLog.AuditHead].
func (s *PostgresStore) AuditHead(ctx context.Context, chain string) (uint64, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, fmt.Errorf("audit head of chain %q: %w", chain, err)
	}
	if checkText(chain) != nil {
		return 0, nil, nil
	}
	var (
		seq  int64
		hash []byte
	)
	err := s.pool.QueryRow(ctx, `SELECT seq, hash FROM audit_events WHERE chain = $1 ORDER BY seq DESC LIMIT 1`,
		chain).Scan(&seq, &hash)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, nil, nil
	case err != nil:
		return 0, nil, fmt.Errorf("audit head of chain %q: %w", chain, s.fail(err))
	}
	return uint64(seq), hash, nil
}

// ListAudit implements [AuditLog.ListAudit].
func (s *PostgresStore) ListAudit(ctx context.Context, chain string, afterSeq uint64, limit int) ([]AuditRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list audit of chain %q: %w", chain, err)
	}
	if afterSeq >= 1<<63 || checkText(chain) != nil {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT seq, time, data, hash FROM audit_events
		WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3`, chain, int64(afterSeq), auditPage(limit))
	if err != nil {
		return nil, fmt.Errorf("list audit of chain %q: %w", chain, s.fail(err))
	}
	var (
		out []AuditRecord
		r   AuditRecord
		seq int64
	)
	if _, err := pgx.ForEachRow(rows, []any{&seq, &r.Time, &r.Data, &r.Hash}, func() error {
		out = append(out, AuditRecord{Chain: chain, Seq: uint64(seq), Time: r.Time.UTC(), Data: r.Data, Hash: r.Hash})
		r = AuditRecord{}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list audit of chain %q: %w", chain, s.fail(err))
	}
	return out, nil
}

// ListAuditChains implements [AuditLog.ListAuditChains].
func (s *PostgresStore) ListAuditChains(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list audit chains: %w", err)
	}
	rows, err := s.pool.Query(ctx, pgAuditChainsSQL)
	if err != nil {
		return nil, fmt.Errorf("list audit chains: %w", s.fail(err))
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list audit chains: %w", s.fail(err))
	}
	return out, nil
}

// ListAuditCheckpoints implements [AuditLog.ListAuditCheckpoints].
func (s *PostgresStore) ListAuditCheckpoints(ctx context.Context, chain string) ([]AuditCheckpointRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list audit checkpoints of chain %q: %w", chain, err)
	}
	if checkText(chain) != nil {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT seq, time, hash, root_key_id, tag FROM audit_checkpoints
		WHERE chain = $1 ORDER BY seq`, chain)
	if err != nil {
		return nil, fmt.Errorf("list audit checkpoints of chain %q: %w", chain, s.fail(err))
	}
	var (
		out []AuditCheckpointRecord
		c   AuditCheckpointRecord
		seq int64
	)
	if _, err := pgx.ForEachRow(rows, []any{&seq, &c.Time, &c.Hash, &c.RootKeyID, &c.Tag}, func() error {
		out = append(out, AuditCheckpointRecord{Chain: chain, Seq: uint64(seq), Time: c.Time.UTC(),
			Hash: c.Hash, RootKeyID: c.RootKeyID, Tag: c.Tag})
		c = AuditCheckpointRecord{}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list audit checkpoints of chain %q: %w", chain, s.fail(err))
	}
	return out, nil
}

// LatestAuditCheckpoints implements [AuditLog.LatestAuditCheckpoints].
func (s *PostgresStore) LatestAuditCheckpoints(ctx context.Context) ([]AuditCheckpointRecord, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("latest audit checkpoints: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT ON (chain) chain, seq, time, hash, root_key_id, tag
		FROM audit_checkpoints ORDER BY chain, seq DESC`)
	if err != nil {
		return nil, fmt.Errorf("latest audit checkpoints: %w", s.fail(err))
	}
	var (
		out []AuditCheckpointRecord
		c   AuditCheckpointRecord
		seq int64
	)
	if _, err := pgx.ForEachRow(rows, []any{&c.Chain, &seq, &c.Time, &c.Hash, &c.RootKeyID, &c.Tag}, func() error {
		c.Seq, c.Time = uint64(seq), c.Time.UTC()
		out = append(out, c)
		c = AuditCheckpointRecord{}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("latest audit checkpoints: %w", s.fail(err))
	}
	return out, nil
}
