package store

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLite is the embedded [Store]: one SQLite database file, in WAL mode, with
// synchronous=FULL so that an acknowledged write survives a crash or power
// loss. Writes go through a single connection, one transaction at a time;
// reads run concurrently on a pool of read-only connections and each sees a
// consistent snapshot.
//
// Several processes may open the same file (each waits for the others' write
// transactions up to a busy timeout of 10 seconds, and then fails with
// [ErrUnavailable]), but one tresor per database is the intended deployment.
//
// The writer runs with secure_delete=ON, so the space that a write frees in
// the database is overwritten with zeros. After UpdateKey destroys a key it
// also checkpoints and truncates the write-ahead log, which holds the
// previous copies of changed pages; that waits up to the busy timeout for
// readers to finish, and is best effort: when another process keeps reading
// longer, the old copies stay in the log until it is next reset. Copies made
// outside the database (backups, the file system's own) are out of its reach.
//
// The store's clock ([WithClock]) decides which budget windows have ended:
// ConsumeBudget deletes their counts now and then (see [SQLite.ConsumeBudget]).
type SQLite struct {
	w   *sql.DB // one connection; BEGIN IMMEDIATE; every write
	r   *sql.DB // query_only connections; every read
	now func() time.Time

	// Prepared statements. The database/sql pool prepares each on a
	// connection the first time it runs there.
	getKey, listKeys, listByRoot, countByRoot *sql.Stmt // on r
	keyRevisions, uses, latestRotation        *sql.Stmt // on r
	insertKey, updateKey, keyState            *sql.Stmt // on w
	deleteVersions, insertVersion             *sql.Stmt // on w
	consumeBudget, sweepBudgets               *sql.Stmt // on w
	reserveUses, hasVersion                   *sql.Stmt // on w
	acquireLease, releaseLease                *sql.Stmt // on w
	rewrapKey, runningRotation                *sql.Stmt // on w
	countRewrapped, addRewrapped              *sql.Stmt // on w
	// auditInserts[i] inserts 1<<i audit events (on w): a batch is
	// written as a sum of powers of two, so no batch compiles SQL.
	auditInserts [sqliteAuditInserts]*sql.Stmt

	sweeps sweepSchedule // when ConsumeBudget next deletes ended windows
}

var _ Store = (*SQLite)(nil)

// OpenSQLite opens the SQLite database file at path, creating it (mode 0600)
// when it does not exist, and brings its schema up to date. It refuses a
// database whose schema is newer than this binary knows ([ErrSchemaTooNew]).
//
// path names a file; in-memory databases are not supported, since the store
// needs several connections to one database. Tests use a file in
// t.TempDir().
func OpenSQLite(ctx context.Context, path string, opts ...Option) (*SQLite, error) {
	o := newOptions(opts)
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("open sqlite store %q: want the path of a database file (in-memory and URI names are not supported)", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open sqlite store %q: %w", path, err)
	}
	// Create the file ourselves so that it, and the -wal and -shm files
	// SQLite gives the same mode, are private to the owner.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open sqlite store: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open sqlite store: %w", err)
	}

	// A file: URI, so that no character of the path is read as DSN syntax.
	name := (&url.URL{Scheme: "file", Path: abs}).String()
	busy := strconv.FormatInt(o.sqliteBusyTimeout.Milliseconds(), 10)
	w, err := sql.Open("sqlite", name+"?_busy_timeout="+busy+
		"&_foreign_keys=on&_journal_mode=WAL&_synchronous=FULL&_txlock=immediate&_pragma=secure_delete(1)")
	if err != nil {
		return nil, fmt.Errorf("open sqlite store %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := checkWriter(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", path, sqliteErr(err))
	}
	if err := migrate(ctx, w, o.now); err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", path, err)
	}

	r, err := sql.Open("sqlite", name+"?_busy_timeout="+busy+"&_foreign_keys=on&_query_only=on")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", path, err)
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	if err := r.PingContext(ctx); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", path, sqliteErr(err))
	}
	s := &SQLite{w: w, r: r, now: o.now}
	for _, p := range []struct {
		stmt  **sql.Stmt
		db    *sql.DB
		query string
	}{
		{&s.getKey, r, getKeySQL},
		{&s.listKeys, r, listKeysSQL},
		{&s.listByRoot, r, listByRootSQL},
		{&s.countByRoot, r, `SELECT count(*) FROM keys WHERE root_key_id = ? AND state <> 'DESTROYED'`},
		{&s.keyRevisions, r, `SELECT name, revision FROM keys WHERE name IN (SELECT value FROM json_each(?))`},
		{&s.uses, r, `SELECT u.version, u.used FROM keys AS k LEFT JOIN key_uses AS u ON u.key_name = k.name WHERE k.name = ?`},
		{&s.latestRotation, r, selectRotationSQL + ` ORDER BY seq DESC LIMIT 1`},
		{&s.insertKey, w, insertKeySQL},
		{&s.updateKey, w, updateKeySQL},
		{&s.keyState, w, `SELECT revision, state FROM keys WHERE name = ?`},
		{&s.deleteVersions, w, `DELETE FROM key_versions WHERE key_name = ?`},
		{&s.insertVersion, w, insertVersionSQL},
		{&s.consumeBudget, w, consumeBudgetSQL},
		{&s.sweepBudgets, w, sweepBudgetsSQL},
		{&s.reserveUses, w, reserveUsesSQL},
		{&s.hasVersion, w, `SELECT (SELECT count(*) FROM keys WHERE name = ?1),
			(SELECT count(*) FROM key_versions WHERE key_name = ?1 AND number = ?2)`},
		{&s.acquireLease, w, acquireLeaseSQL},
		{&s.releaseLease, w, `DELETE FROM leases WHERE name = ? AND holder = ?`},
		{&s.rewrapKey, w, rewrapKeySQL},
		{&s.runningRotation, w, selectRotationSQL + ` WHERE state = 'RUNNING'`},
		{&s.countRewrapped, w, `SELECT count(*) FROM keys WHERE root_key_id = ? AND state <> 'DESTROYED'`},
		{&s.addRewrapped, w, `UPDATE root_key_rotations SET rewrapped = rewrapped + ?2, update_time = ?3 WHERE id = ?1`},
	} {
		if *p.stmt, err = p.db.PrepareContext(ctx, p.query); err != nil {
			s.Close()
			return nil, fmt.Errorf("open sqlite store %s: prepare: %w", path, sqliteErr(err))
		}
	}
	for i := range s.auditInserts {
		if s.auditInserts[i], err = w.PrepareContext(ctx, buildSQLiteInsertAudit(1<<i)); err != nil {
			s.Close()
			return nil, fmt.Errorf("open sqlite store %s: prepare: %w", path, sqliteErr(err))
		}
	}
	return s, nil
}

// checkWriter makes sure the writer connection runs with the settings the
// store's durability and erasure depend on; a DSN the driver silently
// ignored would otherwise go unnoticed.
func checkWriter(ctx context.Context, w *sql.DB) error {
	var mode string
	if err := w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	var sync, fk, secure int
	if err := w.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
		return err
	}
	if err := w.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
		return err
	}
	if err := w.QueryRowContext(ctx, "PRAGMA secure_delete").Scan(&secure); err != nil {
		return err
	}
	if mode != "wal" || sync != 2 || fk != 1 || secure != 1 {
		return fmt.Errorf("sqlite: journal_mode=%s synchronous=%d foreign_keys=%d secure_delete=%d, want wal, 2 (FULL), 1, 1", mode, sync, fk, secure)
	}
	return nil
}

// Close closes the database. Calls made after Close fail.
func (s *SQLite) Close() error {
	var errs []error
	for _, stmt := range []*sql.Stmt{s.getKey, s.listKeys, s.listByRoot, s.countByRoot,
		s.keyRevisions, s.uses, s.latestRotation, s.insertKey, s.updateKey, s.keyState,
		s.deleteVersions, s.insertVersion, s.consumeBudget, s.sweepBudgets,
		s.reserveUses, s.hasVersion, s.acquireLease, s.releaseLease,
		s.rewrapKey, s.runningRotation, s.countRewrapped, s.addRewrapped} {
		if stmt != nil {
			errs = append(errs, stmt.Close())
		}
	}
	for _, stmt := range s.auditInserts {
		if stmt != nil {
			errs = append(errs, stmt.Close())
		}
	}
	return errors.Join(append(errs, s.r.Close(), s.w.Close())...)
}

const insertKeySQL = `INSERT INTO keys (name, type, state, primary_version,
	min_decryption_version, rotation_period_ns, labels, wrapped_keyset,
	root_key_id, deletion_time, destroy_time, usage_limit, retire_after_ns,
	retire_after_versions, create_time, update_time, revision)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// updateKeySQL is the compare-and-swap: it changes the row only when the
// revision is the caller's, and never moves a DESTROYED key to another
// state.
const updateKeySQL = `UPDATE keys SET type = ?3, state = ?4,
	primary_version = ?5, min_decryption_version = ?6, rotation_period_ns = ?7,
	labels = ?8, wrapped_keyset = ?9, root_key_id = ?10, deletion_time = ?11,
	destroy_time = ?12, usage_limit = ?13, retire_after_ns = ?14,
	retire_after_versions = ?15, update_time = ?16, revision = revision + 1
	WHERE name = ?1 AND revision = ?2 AND (state <> 'DESTROYED' OR ?4 = 'DESTROYED')
	RETURNING create_time, revision`

const insertVersionSQL = `INSERT INTO key_versions (key_name, number, tink_key_id, create_time)
	VALUES (?, ?, ?, ?)`

// CreateKey implements [Store.CreateKey].
func (s *SQLite) CreateKey(ctx context.Context, k Key) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, err)
	}
	k, labels, err := prepareKey(k)
	if err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, err)
	}
	now := storeTime(s.now())
	k.CreateTime, k.UpdateTime, k.Revision = now, now, 1
	err = s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.StmtContext(ctx, s.insertKey).ExecContext(ctx,
			k.Name, k.Type.String(), k.State.String(), k.PrimaryVersion,
			k.MinDecryptionVersion, int64(k.RotationPeriod), labels, blob(k.WrappedKeyset),
			k.RootKeyID, nullMicros(k.DeletionTime), nullMicros(k.DestroyTime), k.UsageLimit,
			int64(k.RetireAfter), k.RetireAfterVersions,
			k.CreateTime.UnixMicro(), k.UpdateTime.UnixMicro(), k.Revision)
		if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY) {
			return ErrAlreadyExists
		}
		if err != nil {
			return sqliteErr(err)
		}
		return s.insertVersions(ctx, tx, k.Name, k.Versions)
	})
	if err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, err)
	}
	return k, nil
}

// UpdateKey implements [Store.UpdateKey]. When it destroys a key it also
// truncates the write-ahead log, best effort (see [SQLite]).
func (s *SQLite) UpdateKey(ctx context.Context, k Key) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, err)
	}
	k, labels, err := prepareKey(k)
	if err != nil {
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, err)
	}
	k.UpdateTime = storeTime(s.now())
	err = s.write(ctx, func(tx *sql.Tx) error {
		var created int64
		err := tx.StmtContext(ctx, s.updateKey).QueryRowContext(ctx,
			k.Name, k.Revision, k.Type.String(), k.State.String(),
			k.PrimaryVersion, k.MinDecryptionVersion, int64(k.RotationPeriod),
			labels, blob(k.WrappedKeyset), k.RootKeyID, nullMicros(k.DeletionTime),
			nullMicros(k.DestroyTime), k.UsageLimit, int64(k.RetireAfter),
			k.RetireAfterVersions, k.UpdateTime.UnixMicro()).Scan(&created, &k.Revision)
		if errors.Is(err, sql.ErrNoRows) {
			var (
				stored int64
				state  string
			)
			err := tx.StmtContext(ctx, s.keyState).QueryRowContext(ctx, k.Name).Scan(&stored, &state)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				return ErrNotFound
			case err != nil:
				return sqliteErr(err)
			case stored != k.Revision:
				return fmt.Errorf("%w: stored revision is %d, not %d", ErrConflict, stored, k.Revision)
			case state == KeyStateDestroyed.String():
				return fmt.Errorf("%w: the key is destroyed and stays so, not %v", ErrInvalidKey, k.State)
			default:
				return fmt.Errorf("sqlite: key at revision %d in state %s was not updated", stored, state)
			}
		}
		if err != nil {
			return sqliteErr(err)
		}
		k.CreateTime = time.UnixMicro(created).UTC()
		if _, err := tx.StmtContext(ctx, s.deleteVersions).ExecContext(ctx, k.Name); err != nil {
			return sqliteErr(err)
		}
		return s.insertVersions(ctx, tx, k.Name, k.Versions)
	})
	if err != nil {
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, err)
	}
	if k.State == KeyStateDestroyed {
		s.truncateWAL(ctx)
	}
	return k, nil
}

// truncateWAL checkpoints the write-ahead log into the database and
// truncates it, so that the copies of pages it held before a key was
// destroyed are gone. It waits for readers up to the busy timeout, and is
// best effort: the destruction has committed either way.
func (s *SQLite) truncateWAL(ctx context.Context) {
	var busy, logPages, checkpointed int
	s.w.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logPages, &checkpointed) //nolint:errcheck // best effort
}

func (s *SQLite) insertVersions(ctx context.Context, tx *sql.Tx, name string, vs []Version) error {
	stmt := tx.StmtContext(ctx, s.insertVersion)
	for _, v := range vs {
		if _, err := stmt.ExecContext(ctx, name, v.Number, v.TinkKeyID, v.CreateTime.UnixMicro()); err != nil {
			return sqliteErr(err)
		}
	}
	return nil
}

// write runs fn in a write transaction and commits it when fn succeeds.
func (s *SQLite) write(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return sqliteErr(err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return sqliteErr(err)
	}
	return nil
}

// Budget counters.

// consumeBudgetSQL adds ?4 to the count of the window (?1, ?2), creating it,
// unless the sum would pass the limit ?5: then it changes nothing and returns
// no row. The caller checks ?4 <= ?5 first, for the insert; the test is
// written so that it cannot overflow. A window given with different ends
// keeps the latest, so that it is not deleted early.
const consumeBudgetSQL = `INSERT INTO budget_counts (counter, window_start, window_end, used)
	VALUES (?1, ?2, ?3, ?4)
	ON CONFLICT (counter, window_start) DO UPDATE
	SET used = used + excluded.used, window_end = max(window_end, excluded.window_end)
	WHERE used <= ?5 - excluded.used
	RETURNING used`

// sweepBudgetsSQL deletes up to ?2 counts of windows that ended by ?1.
const sweepBudgetsSQL = `DELETE FROM budget_counts WHERE (counter, window_start) IN
	(SELECT counter, window_start FROM budget_counts WHERE window_end <= ?1 LIMIT ?2)`

// errBudgetExceeded makes write roll back a ConsumeBudget that found a
// window over its limit.
var errBudgetExceeded = errors.New("budget exceeded")

// ConsumeBudget implements [Store.ConsumeBudget]. It checks and increments
// every window in one write transaction (BEGIN IMMEDIATE), so concurrent
// calls, from this process or another one on the same file, never count
// past a limit. On an error it returns 0 (not -1) with the error, so that a
// caller that ignores the error still refuses. A successful call sweeps the
// counts of ended windows now and then, in the same transaction.
func (s *SQLite) ConsumeBudget(ctx context.Context, n int64, windows []BudgetWindow) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("consume budget: %w", err)
	}
	if err := validateBudget(n, windows); err != nil {
		return 0, fmt.Errorf("consume budget: %w", err)
	}
	nowTime := storeTime(s.now())
	now := nowTime.UnixMicro()
	sweep := s.sweeps.due(nowTime)
	exceeded, swept := -1, int64(0)
	err := s.write(ctx, func(tx *sql.Tx) error {
		stmt := tx.StmtContext(ctx, s.consumeBudget)
		for i, w := range windows {
			if n > w.Limit {
				exceeded = i
				return errBudgetExceeded
			}
			var used int64
			err := stmt.QueryRowContext(ctx, w.Counter, storeTime(w.Start).UnixMicro(),
				storeTime(w.End).UnixMicro(), n, w.Limit).Scan(&used)
			if errors.Is(err, sql.ErrNoRows) {
				exceeded = i
				return errBudgetExceeded
			}
			if err != nil {
				return sqliteErr(err)
			}
		}
		if !sweep {
			return nil
		}
		res, err := tx.StmtContext(ctx, s.sweepBudgets).ExecContext(ctx, now, budgetSweepBatch)
		if err != nil {
			return fmt.Errorf("delete ended windows: %w", sqliteErr(err))
		}
		deleted, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("delete ended windows: %w", sqliteErr(err))
		}
		swept = deleted
		return nil
	})
	switch {
	case errors.Is(err, errBudgetExceeded):
		return exceeded, nil
	case err != nil:
		return 0, fmt.Errorf("consume budget: %w", err)
	}
	if sweep {
		s.sweeps.swept(nowTime, swept)
	}
	return -1, nil
}

// Use reservations.

// reserveUsesSQL adds min(?3, ?4 - used) to the count of version ?2 of key
// ?1, creating it, when the key has that version and the count is below the
// limit ?4; it returns what it added, and no row when it added nothing. Every
// SET expression reads the row as it was, so last_granted is the grant. The
// caller checks ?3, ?4 >= 1; no sum can overflow, since used < ?4 before.
const reserveUsesSQL = `INSERT INTO key_uses (key_name, version, used, last_granted)
	SELECT key_name, number, min(?3, ?4), min(?3, ?4) FROM key_versions
	WHERE key_name = ?1 AND number = ?2
	ON CONFLICT (key_name, version) DO UPDATE
	SET used = used + min(?3, ?4 - used), last_granted = min(?3, ?4 - used)
	WHERE used < ?4
	RETURNING last_granted`

// ReserveUses implements [Store.ReserveUses] in one statement, inside a
// write transaction that also tells a spent version from a missing one.
func (s *SQLite) ReserveUses(ctx context.Context, name string, version uint32, n, limit int64) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("reserve uses of key %q version %d: %w", name, version, err)
	}
	if err := validateReserve(version, n, limit); err != nil {
		return 0, fmt.Errorf("reserve uses of key %q version %d: %w", name, version, err)
	}
	var granted int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		err := tx.StmtContext(ctx, s.reserveUses).QueryRowContext(ctx, name, version, n, limit).Scan(&granted)
		if !errors.Is(err, sql.ErrNoRows) {
			return sqliteErr(err)
		}
		granted = 0
		var keys, versions int
		err = tx.StmtContext(ctx, s.hasVersion).QueryRowContext(ctx, name, version).Scan(&keys, &versions)
		switch {
		case err != nil:
			return sqliteErr(err)
		case keys == 0:
			return ErrNotFound
		case versions == 0:
			return fmt.Errorf("%w: the key has no version %d", ErrInvalidKey, version)
		}
		return nil // spent
	})
	if err != nil {
		return 0, fmt.Errorf("reserve uses of key %q version %d: %w", name, version, err)
	}
	return granted, nil
}

// Uses implements [Store.Uses].
func (s *SQLite) Uses(ctx context.Context, name string) (map[uint32]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("uses of key %q: %w", name, err)
	}
	rows, err := s.uses.QueryContext(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("uses of key %q: %w", name, sqliteErr(err))
	}
	defer rows.Close()
	var uses map[uint32]int64
	for rows.Next() {
		var version, used sql.NullInt64
		if err := rows.Scan(&version, &used); err != nil {
			return nil, fmt.Errorf("uses of key %q: %w", name, sqliteErr(err))
		}
		if uses == nil {
			uses = map[uint32]int64{}
		}
		if version.Valid {
			uses[uint32(version.Int64)] = used.Int64
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("uses of key %q: %w", name, sqliteErr(err))
	}
	if uses == nil {
		return nil, fmt.Errorf("uses of key %q: %w", name, ErrNotFound)
	}
	return uses, nil
}

// Leases.

// acquireLeaseSQL makes ?2 the holder of lease ?1 until ?3, when the lease
// is free, held by ?2 or expired by ?4; it returns a row exactly then.
const acquireLeaseSQL = `INSERT INTO leases (name, holder, expire_time) VALUES (?1, ?2, ?3)
	ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expire_time = excluded.expire_time
	WHERE holder = excluded.holder OR expire_time <= ?4
	RETURNING holder`

// AcquireLease implements [Store.AcquireLease] in one statement.
func (s *SQLite) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("acquire lease %q for %q: %w", name, holder, err)
	}
	if err := validateLease(name, holder, ttl, true); err != nil {
		return false, fmt.Errorf("acquire lease %q for %q: %w", name, holder, err)
	}
	now := storeTime(s.now())
	acquired := false
	err := s.write(ctx, func(tx *sql.Tx) error {
		var got string
		err := tx.StmtContext(ctx, s.acquireLease).QueryRowContext(ctx,
			name, holder, leaseExpiry(now, ttl).UnixMicro(), now.UnixMicro()).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		acquired = err == nil
		return sqliteErr(err)
	})
	if err != nil {
		return false, fmt.Errorf("acquire lease %q for %q: %w", name, holder, err)
	}
	return acquired, nil
}

// ReleaseLease implements [Store.ReleaseLease].
func (s *SQLite) ReleaseLease(ctx context.Context, name, holder string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("release lease %q for %q: %w", name, holder, err)
	}
	if err := validateLease(name, holder, 0, false); err != nil {
		return fmt.Errorf("release lease %q for %q: %w", name, holder, err)
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.StmtContext(ctx, s.releaseLease).ExecContext(ctx, name, holder)
		return sqliteErr(err)
	})
	if err != nil {
		return fmt.Errorf("release lease %q for %q: %w", name, holder, err)
	}
	return nil
}

// KeyRevisions implements [Store.KeyRevisions]: one query per up to 1000
// names, given as a JSON array.
func (s *SQLite) KeyRevisions(ctx context.Context, names []string) (map[string]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("key revisions: %w", err)
	}
	revisions := make(map[string]int64, len(names))
	for _, chunk := range revisionNames(names) {
		arg, err := json.Marshal(chunk)
		if err != nil {
			return nil, fmt.Errorf("key revisions: %w", err)
		}
		if err := s.keyRevisionsOf(ctx, string(arg), revisions); err != nil {
			return nil, fmt.Errorf("key revisions: %w", err)
		}
	}
	return revisions, nil
}

func (s *SQLite) keyRevisionsOf(ctx context.Context, namesJSON string, revisions map[string]int64) error {
	rows, err := s.keyRevisions.QueryContext(ctx, namesJSON)
	if err != nil {
		return sqliteErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			name     string
			revision int64
		)
		if err := rows.Scan(&name, &revision); err != nil {
			return sqliteErr(err)
		}
		revisions[name] = revision
	}
	return sqliteErr(rows.Err())
}

// Root-key rotations.

const selectRotationSQL = `SELECT id, prev_id, from_uri, to_uri, from_id, to_id, state,
	total, rewrapped, start_time, update_time, end_time, endorsement FROM root_key_rotations`

// scanRotation reads a row of selectRotationSQL.
func scanRotation(row interface{ Scan(...any) error }) (RootKeyRotation, error) {
	var (
		r                RootKeyRotation
		state            string
		started, updated int64
		ended            sql.NullInt64
	)
	if err := row.Scan(&r.ID, &r.PrevID, &r.FromURI, &r.ToURI, &r.FromID, &r.ToID, &state,
		&r.Total, &r.Rewrapped, &started, &updated, &ended, &r.Endorsement); err != nil {
		return RootKeyRotation{}, err
	}
	var err error
	if r.State, err = ParseRotationState(state); err != nil {
		return RootKeyRotation{}, fmt.Errorf("job %q: %w", r.ID, err)
	}
	r.StartTime = time.UnixMicro(started).UTC()
	r.UpdateTime = time.UnixMicro(updated).UTC()
	r.EndTime = fromNullMicros(ended)
	return r, nil
}

// StartRootKeyRotation implements [Store.StartRootKeyRotation].
func (s *SQLite) StartRootKeyRotation(ctx context.Context, r RootKeyRotation) (RootKeyRotation, error) {
	if err := ctx.Err(); err != nil {
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w", r.ID, err)
	}
	if err := validateRotation(r); err != nil {
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w", r.ID, err)
	}
	now := storeTime(s.now())
	r = startedRotation(r, now)
	err := s.write(ctx, func(tx *sql.Tx) error {
		running, err := scanRotation(tx.StmtContext(ctx, s.runningRotation).QueryRowContext(ctx))
		switch {
		case err == nil:
			return fmt.Errorf("%w: job %q is running", ErrConflict, running.ID)
		case !errors.Is(err, sql.ErrNoRows):
			return sqliteErr(err)
		}
		var latest string
		err = tx.QueryRowContext(ctx, `SELECT id FROM root_key_rotations ORDER BY seq DESC LIMIT 1`).Scan(&latest)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return sqliteErr(err)
		}
		if latest != r.PrevID {
			return fmt.Errorf("%w: the latest job is %q, not PrevID %q", ErrConflict, latest, r.PrevID)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO root_key_rotations (id, prev_id, from_uri, to_uri,
			from_id, to_id, state, total, rewrapped, start_time, update_time, endorsement)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)`,
			r.ID, r.PrevID, r.FromURI, r.ToURI, r.FromID, r.ToID, r.State.String(), r.Total,
			now.UnixMicro(), now.UnixMicro(), blobArg(r.Endorsement))
		switch {
		case isConstraint(err, sqlite3.SQLITE_CONSTRAINT_UNIQUE) && strings.Contains(err.Error(), "prev_id"):
			return fmt.Errorf("%w: a job with PrevID %q was started before", ErrConflict, r.PrevID)
		case isConstraint(err, sqlite3.SQLITE_CONSTRAINT_UNIQUE):
			return fmt.Errorf("%w: a job with this ID was started before", ErrAlreadyExists)
		}
		return sqliteErr(err)
	})
	if err != nil {
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w", r.ID, err)
	}
	return r, nil
}

// LatestRootKeyRotation implements [Store.LatestRootKeyRotation].
func (s *SQLite) LatestRootKeyRotation(ctx context.Context) (RootKeyRotation, error) {
	if err := ctx.Err(); err != nil {
		return RootKeyRotation{}, fmt.Errorf("latest root key rotation: %w", err)
	}
	r, err := scanRotation(s.latestRotation.QueryRowContext(ctx))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return RootKeyRotation{}, fmt.Errorf("latest root key rotation: none started: %w", ErrNotFound)
	case err != nil:
		return RootKeyRotation{}, fmt.Errorf("latest root key rotation: %w", sqliteErr(err))
	}
	return r, nil
}

// ListRootKeyRotations implements [Store.ListRootKeyRotations].
func (s *SQLite) ListRootKeyRotations(ctx context.Context) ([]RootKeyRotation, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list root key rotations: %w", err)
	}
	rows, err := s.r.QueryContext(ctx, selectRotationSQL+` ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("list root key rotations: %w", sqliteErr(err))
	}
	defer rows.Close()
	var jobs []RootKeyRotation
	for rows.Next() {
		r, err := scanRotation(rows)
		if err != nil {
			return nil, fmt.Errorf("list root key rotations: %w", sqliteErr(err))
		}
		jobs = append(jobs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list root key rotations: %w", sqliteErr(err))
	}
	return jobs, nil
}

// ListKeysByRootKey implements [Store.ListKeysByRootKey].
func (s *SQLite) ListKeysByRootKey(ctx context.Context, rootKeyID, afterName string, limit int) ([]Key, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list keys by root key %q: %w", rootKeyID, err)
	}
	if err := checkText(afterName); err != nil {
		return nil, fmt.Errorf("list keys by root key %q: %w: name %q to start after: %v", rootKeyID, ErrInvalidKey, afterName, err)
	}
	keys, err := s.query(ctx, s.listByRoot, rootKeyID, afterName, pageSize(limit))
	if err != nil {
		return nil, fmt.Errorf("list keys by root key %q: %w", rootKeyID, err)
	}
	return keys, nil
}

// CountKeysByRootKey implements [Store.CountKeysByRootKey].
func (s *SQLite) CountKeysByRootKey(ctx context.Context, rootKeyID string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("count keys by root key %q: %w", rootKeyID, err)
	}
	var n int64
	if err := s.countByRoot.QueryRowContext(ctx, rootKeyID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count keys by root key %q: %w", rootKeyID, sqliteErr(err))
	}
	return n, nil
}

// RootKeyIDsInUse implements [Store.RootKeyIDsInUse].
func (s *SQLite) RootKeyIDsInUse(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("root key ids in use: %w", err)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT DISTINCT root_key_id FROM keys
		WHERE state <> 'DESTROYED' ORDER BY root_key_id`)
	if err != nil {
		return nil, fmt.Errorf("root key ids in use: %w", sqliteErr(err))
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("root key ids in use: %w", sqliteErr(err))
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("root key ids in use: %w", sqliteErr(err))
	}
	return ids, nil
}

// rewrapKeySQL re-wraps one key when its revision is still ?2; destroyed
// keys never get a keyset back.
const rewrapKeySQL = `UPDATE keys SET wrapped_keyset = ?3, root_key_id = ?4,
	update_time = ?5, revision = revision + 1
	WHERE name = ?1 AND revision = ?2 AND state <> 'DESTROYED'`

// RewrapKeys implements [Store.RewrapKeys]: one write transaction that runs
// one prepared statement per key, in process, and updates the job.
func (s *SQLite) RewrapKeys(ctx context.Context, jobID string, keys []Key) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("rewrap keys for job %q: %w", jobID, err)
	}
	if err := validateRewrap(keys); err != nil {
		return nil, fmt.Errorf("rewrap keys for job %q: %w", jobID, err)
	}
	now := storeTime(s.now()).UnixMicro()
	var conflicts []string
	err := s.write(ctx, func(tx *sql.Tx) error {
		job, err := s.runningJob(ctx, tx, jobID)
		if err != nil {
			return err
		}
		if err := checkRewrapRoot(keys, job.ToID); err != nil {
			return err
		}
		stmt := tx.StmtContext(ctx, s.rewrapKey)
		stored := 0
		for _, k := range keys {
			res, err := stmt.ExecContext(ctx, k.Name, k.Revision, k.WrappedKeyset, k.RootKeyID, now)
			if err != nil {
				return sqliteErr(err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return sqliteErr(err)
			}
			if n == 0 {
				conflicts = append(conflicts, k.Name)
			}
			stored += int(n)
		}
		if len(keys) == 0 {
			return nil
		}
		_, err = tx.StmtContext(ctx, s.addRewrapped).ExecContext(ctx, jobID, stored, now)
		return sqliteErr(err)
	})
	if err != nil {
		return nil, fmt.Errorf("rewrap keys for job %q: %w", jobID, err)
	}
	return conflicts, nil
}

// runningJob returns the running job if its ID is id, or ErrNotFound.
func (s *SQLite) runningJob(ctx context.Context, tx *sql.Tx, id string) (RootKeyRotation, error) {
	job, err := scanRotation(tx.StmtContext(ctx, s.runningRotation).QueryRowContext(ctx))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return RootKeyRotation{}, fmt.Errorf("%w: no root key rotation is running", ErrNotFound)
	case err != nil:
		return RootKeyRotation{}, sqliteErr(err)
	case job.ID != id:
		return RootKeyRotation{}, fmt.Errorf("%w: the running root key rotation is %q", ErrNotFound, job.ID)
	}
	return job, nil
}

// FinishRootKeyRotation implements [Store.FinishRootKeyRotation].
func (s *SQLite) FinishRootKeyRotation(ctx context.Context, jobID string) (RootKeyRotation, error) {
	if err := ctx.Err(); err != nil {
		return RootKeyRotation{}, fmt.Errorf("finish root key rotation %q: %w", jobID, err)
	}
	now := storeTime(s.now())
	var job RootKeyRotation
	err := s.write(ctx, func(tx *sql.Tx) error {
		var err error
		if job, err = s.runningJob(ctx, tx, jobID); err != nil {
			return err
		}
		var left int64
		if err := tx.StmtContext(ctx, s.countRewrapped).QueryRowContext(ctx, job.FromID).Scan(&left); err != nil {
			return sqliteErr(err)
		}
		if left > 0 {
			return fmt.Errorf("%w: %d keys are still wrapped by %q", ErrConflict, left, job.FromID)
		}
		_, err = tx.ExecContext(ctx, `UPDATE root_key_rotations SET state = 'DONE',
			end_time = ?2, update_time = ?2 WHERE id = ?1`, jobID, now.UnixMicro())
		return sqliteErr(err)
	})
	if err != nil {
		return RootKeyRotation{}, fmt.Errorf("finish root key rotation %q: %w", jobID, err)
	}
	return finishedRotation(job, now), nil
}

// Reading keys.

// selectKeySQL reads keys joined with their versions, one row per version,
// in a single statement and so from a single snapshot. %s is the source of
// the keys rows.
const selectKeySQL = `SELECT k.name, k.type, k.state, k.primary_version,
	k.min_decryption_version, k.rotation_period_ns, k.labels, k.wrapped_keyset,
	k.root_key_id, k.deletion_time, k.destroy_time, k.usage_limit,
	k.retire_after_ns, k.retire_after_versions, k.create_time, k.update_time,
	k.revision, v.number, v.tink_key_id, v.create_time
	FROM %s AS k LEFT JOIN key_versions AS v ON v.key_name = k.name
	ORDER BY k.name, v.number`

var (
	getKeySQL     = fmt.Sprintf(selectKeySQL, `(SELECT * FROM keys WHERE name = ?)`)
	listKeysSQL   = fmt.Sprintf(selectKeySQL, `(SELECT * FROM keys WHERE name > ? ORDER BY name LIMIT ?)`)
	listByRootSQL = fmt.Sprintf(selectKeySQL, `(SELECT * FROM keys
		WHERE root_key_id = ? AND state <> 'DESTROYED' AND name > ? ORDER BY name LIMIT ?)`)
)

// GetKey implements [Store.GetKey].
func (s *SQLite) GetKey(ctx context.Context, name string) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, fmt.Errorf("get key %q: %w", name, err)
	}
	keys, err := s.query(ctx, s.getKey, name)
	if err != nil {
		return Key{}, fmt.Errorf("get key %q: %w", name, err)
	}
	if len(keys) == 0 {
		return Key{}, fmt.Errorf("get key %q: %w", name, ErrNotFound)
	}
	return keys[0], nil
}

// ListKeys implements [Store.ListKeys].
func (s *SQLite) ListKeys(ctx context.Context, size int, token string) ([]Key, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", fmt.Errorf("list keys: %w", err)
	}
	after, err := decodePageToken(token)
	if err != nil {
		return nil, "", fmt.Errorf("list keys: %w", err)
	}
	n := pageSize(size)
	keys, err := s.query(ctx, s.listKeys, after, n+1)
	if err != nil {
		return nil, "", fmt.Errorf("list keys: %w", err)
	}
	keys, next := pageKeys(keys, n)
	return keys, next, nil
}

// query runs one of the select statements above and gathers its rows into keys.
func (s *SQLite) query(ctx context.Context, stmt *sql.Stmt, args ...any) ([]Key, error) {
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return nil, sqliteErr(err)
	}
	defer rows.Close()
	var keys []Key
	for rows.Next() {
		var (
			k                          Key
			typ, state, labels         string
			rotation, retire           int64
			created, updated           int64
			deletion, destroy          sql.NullInt64
			vNumber, vTinkID, vCreated sql.NullInt64
		)
		if err := rows.Scan(&k.Name, &typ, &state, &k.PrimaryVersion,
			&k.MinDecryptionVersion, &rotation, &labels, &k.WrappedKeyset,
			&k.RootKeyID, &deletion, &destroy, &k.UsageLimit, &retire,
			&k.RetireAfterVersions, &created, &updated, &k.Revision,
			&vNumber, &vTinkID, &vCreated); err != nil {
			return nil, sqliteErr(err)
		}
		if len(keys) == 0 || keys[len(keys)-1].Name != k.Name {
			if err := decodeKeyColumns(&k, typ, state, labels, rotation, retire); err != nil {
				return nil, err
			}
			k.DeletionTime = fromNullMicros(deletion)
			k.DestroyTime = fromNullMicros(destroy)
			k.CreateTime = time.UnixMicro(created).UTC()
			k.UpdateTime = time.UnixMicro(updated).UTC()
			keys = append(keys, k)
		}
		if vNumber.Valid {
			last := &keys[len(keys)-1]
			last.Versions = append(last.Versions, Version{
				Number:     uint32(vNumber.Int64),
				TinkKeyID:  uint32(vTinkID.Int64),
				CreateTime: time.UnixMicro(vCreated.Int64).UTC(),
			})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, sqliteErr(err)
	}
	return keys, nil
}

// blob returns b, or an empty non-nil slice for nil: a nil []byte binds as
// NULL, which the NOT NULL column refuses.
func blob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// nullMicros returns t as stored in an optional time column: Unix
// microseconds, or NULL for the zero time.
func nullMicros(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

// fromNullMicros is the inverse of nullMicros.
func fromNullMicros(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.UnixMicro(n.Int64).UTC()
}

// isConstraint reports whether err is SQLite's extended result code code,
// one of the SQLITE_CONSTRAINT_* codes.
func isConstraint(err error, code int) bool {
	var e *sqlite.Error
	return errors.As(err, &e) && e.Code() == code
}

// sqliteErr marks an error from the database as such, and one that says a
// lock stayed busy past the busy timeout as [ErrUnavailable] too. Context
// errors and nil pass through.
func sqliteErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var e *sqlite.Error
	if errors.As(err, &e) && e.Code()&0xff == sqlite3.SQLITE_BUSY {
		return fmt.Errorf("%w: sqlite: %w", ErrUnavailable, err)
	}
	return fmt.Errorf("sqlite: %w", err)
}

// Migrations.

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrate brings the schema up to date: it applies each embedded migration
// the database lacks, each in its own transaction together with its row in
// schema_migrations. It is a no-op on an up-to-date database and fails with
// ErrSchemaTooNew on a database migrated by a newer binary.
func migrate(ctx context.Context, w *sql.DB, now func() time.Time) error {
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	if _, err := w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version      INTEGER NOT NULL PRIMARY KEY,
		name         TEXT    NOT NULL,
		applied_time INTEGER NOT NULL
	) STRICT`); err != nil {
		return fmt.Errorf("migrate: %w", sqliteErr(err))
	}
	for {
		done, err := migrateOne(ctx, w, ms, now)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if done {
			return nil
		}
	}
}

// migrateOne applies the first migration the database lacks, and reports
// whether there was none. It reads the applied versions inside its write
// transaction, so that two processes opening one database do not both apply
// a migration.
func migrateOne(ctx context.Context, w *sql.DB, ms []migration, now func() time.Time) (done bool, err error) {
	tx, err := w.BeginTx(ctx, nil)
	if err != nil {
		return false, sqliteErr(err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	applied, err := schemaVersion(ctx, tx, ms)
	if err != nil {
		return false, err
	}
	if applied == len(ms) {
		return true, sqliteErr(tx.Commit())
	}
	m := ms[applied]
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return false, fmt.Errorf("%s: %w", m.name, sqliteErr(err))
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_time) VALUES (?, ?, ?)`,
		m.version, m.name, now().UnixMicro()); err != nil {
		return false, fmt.Errorf("%s: %w", m.name, sqliteErr(err))
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("%s: %w", m.name, sqliteErr(err))
	}
	return false, nil
}

// schemaVersion returns the number of migrations applied to the database,
// after checking that they are the first ones of ms.
func schemaVersion(ctx context.Context, tx *sql.Tx, ms []migration) (int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT version, name FROM schema_migrations ORDER BY version`)
	if err != nil {
		return 0, sqliteErr(err)
	}
	defer rows.Close()
	var applied []appliedMigration
	for rows.Next() {
		var m appliedMigration
		if err := rows.Scan(&m.version, &m.name); err != nil {
			return 0, sqliteErr(err)
		}
		applied = append(applied, m)
	}
	if err := rows.Err(); err != nil {
		return 0, sqliteErr(err)
	}
	return checkApplied(applied, ms)
}
