package store

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
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
// transactions up to a busy timeout), but one tresor per database is the
// intended deployment.
//
// The store's clock ([WithClock]) decides which budget windows have ended:
// ConsumeBudget deletes their counts now and then (see [SQLite.ConsumeBudget]).
type SQLite struct {
	w   *sql.DB // one connection; BEGIN IMMEDIATE; every write
	r   *sql.DB // query_only connections; every read
	now func() time.Time

	// Prepared statements. The database/sql pool prepares each on a
	// connection the first time it runs there.
	getKey, listKeys               *sql.Stmt // on r
	insertKey, updateKey, revision *sql.Stmt // on w
	deleteVersions, insertVersion  *sql.Stmt // on w
	consumeBudget, sweepBudgets    *sql.Stmt // on w

	// nextSweep is when (Unix microseconds, store clock) ConsumeBudget
	// next deletes the counts of ended windows.
	nextSweep atomic.Int64
}

var _ Store = (*SQLite)(nil)

// sqliteBusyTimeout is how long a connection waits for a lock another
// process holds before it fails with SQLITE_BUSY.
const sqliteBusyTimeout = 10 * time.Second

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
	busy := strconv.FormatInt(sqliteBusyTimeout.Milliseconds(), 10)
	w, err := sql.Open("sqlite", name+"?_busy_timeout="+busy+
		"&_foreign_keys=on&_journal_mode=WAL&_synchronous=FULL&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite store %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := checkWriter(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", path, err)
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
		return nil, fmt.Errorf("open sqlite store %s: %w", path, err)
	}
	s := &SQLite{w: w, r: r, now: o.now}
	for _, p := range []struct {
		stmt  **sql.Stmt
		db    *sql.DB
		query string
	}{
		{&s.getKey, r, getKeySQL},
		{&s.listKeys, r, listKeysSQL},
		{&s.insertKey, w, insertKeySQL},
		{&s.updateKey, w, updateKeySQL},
		{&s.revision, w, `SELECT revision FROM keys WHERE name = ?`},
		{&s.deleteVersions, w, `DELETE FROM key_versions WHERE key_name = ?`},
		{&s.insertVersion, w, insertVersionSQL},
		{&s.consumeBudget, w, consumeBudgetSQL},
		{&s.sweepBudgets, w, sweepBudgetsSQL},
	} {
		if *p.stmt, err = p.db.PrepareContext(ctx, p.query); err != nil {
			s.Close()
			return nil, fmt.Errorf("open sqlite store %s: prepare: %w", path, sqliteErr(err))
		}
	}
	return s, nil
}

// checkWriter makes sure the writer connection runs with the settings the
// store's durability depends on; a DSN the driver silently ignored would
// otherwise go unnoticed.
func checkWriter(ctx context.Context, w *sql.DB) error {
	var mode string
	if err := w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	var sync, fk int
	if err := w.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
		return err
	}
	if err := w.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
		return err
	}
	if mode != "wal" || sync != 2 || fk != 1 {
		return fmt.Errorf("sqlite: journal_mode=%s synchronous=%d foreign_keys=%d, want wal, 2 (FULL), 1", mode, sync, fk)
	}
	return nil
}

// Close closes the database. Calls made after Close fail.
func (s *SQLite) Close() error {
	var errs []error
	for _, stmt := range []*sql.Stmt{s.getKey, s.listKeys, s.insertKey, s.updateKey, s.revision,
		s.deleteVersions, s.insertVersion, s.consumeBudget, s.sweepBudgets} {
		if stmt != nil {
			errs = append(errs, stmt.Close())
		}
	}
	return errors.Join(append(errs, s.r.Close(), s.w.Close())...)
}

const insertKeySQL = `INSERT INTO keys (name, type, state, primary_version,
	min_decryption_version, rotation_period_ns, labels, wrapped_keyset,
	root_key_id, create_time, update_time, revision)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// updateKeySQL is the compare-and-swap: it changes the row only when the
// revision is the caller's.
const updateKeySQL = `UPDATE keys SET type = ?, state = ?,
	primary_version = ?, min_decryption_version = ?, rotation_period_ns = ?,
	labels = ?, wrapped_keyset = ?, root_key_id = ?, update_time = ?,
	revision = revision + 1
	WHERE name = ? AND revision = ?
	RETURNING create_time, revision`

const insertVersionSQL = `INSERT INTO key_versions (key_name, number, tink_key_id, create_time)
	VALUES (?, ?, ?, ?)`

// CreateKey implements [Store.CreateKey].
func (s *SQLite) CreateKey(ctx context.Context, k Key) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, err)
	}
	if err := validateKey(k); err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, err)
	}
	k = normalizeKey(k)
	now := storeTime(s.now())
	k.CreateTime, k.UpdateTime, k.Revision = now, now, 1
	labels, err := encodeLabels(k.Labels)
	if err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.StmtContext(ctx, s.insertKey).ExecContext(ctx,
			k.Name, k.Type.String(), k.State.String(), k.PrimaryVersion,
			k.MinDecryptionVersion, int64(k.RotationPeriod), labels, blob(k.WrappedKeyset),
			k.RootKeyID, k.CreateTime.UnixMicro(), k.UpdateTime.UnixMicro(), k.Revision)
		if isPrimaryKeyViolation(err) {
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

// UpdateKey implements [Store.UpdateKey].
func (s *SQLite) UpdateKey(ctx context.Context, k Key) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, err)
	}
	if err := validateKey(k); err != nil {
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, err)
	}
	k = normalizeKey(k)
	k.UpdateTime = storeTime(s.now())
	labels, err := encodeLabels(k.Labels)
	if err != nil {
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		var created int64
		err := tx.StmtContext(ctx, s.updateKey).QueryRowContext(ctx,
			k.Type.String(), k.State.String(),
			k.PrimaryVersion, k.MinDecryptionVersion, int64(k.RotationPeriod),
			labels, blob(k.WrappedKeyset), k.RootKeyID, k.UpdateTime.UnixMicro(),
			k.Name, k.Revision).Scan(&created, &k.Revision)
		if errors.Is(err, sql.ErrNoRows) {
			var stored int64
			err := tx.StmtContext(ctx, s.revision).QueryRowContext(ctx, k.Name).Scan(&stored)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				return ErrNotFound
			case err != nil:
				return sqliteErr(err)
			default:
				return fmt.Errorf("%w: stored revision is %d, not %d", ErrConflict, stored, k.Revision)
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
	return k, nil
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

// maxBudgetCounter is the longest counter name ConsumeBudget accepts, in bytes.
const maxBudgetCounter = 512

// validateBudget checks the arguments of ConsumeBudget against the rules of
// [ErrInvalidBudget], and also refuses counter names that are not valid UTF-8
// or hold a NUL (which not every backend stores) and windows whose End is not
// after Start once both are truncated to the microsecond. The errors it
// returns wrap ErrInvalidBudget. Every implementation calls it first.
func validateBudget(n int64, windows []BudgetWindow) error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidBudget, fmt.Sprintf(format, args...))
	}
	if n <= 0 {
		return invalid("n = %d, want at least 1", n)
	}
	if len(windows) == 0 {
		return invalid("no windows")
	}
	for i, w := range windows {
		switch {
		case w.Counter == "":
			return invalid("window %d: empty counter name", i)
		case len(w.Counter) > maxBudgetCounter:
			return invalid("window %d: counter name of %d bytes, want at most %d", i, len(w.Counter), maxBudgetCounter)
		case w.Limit <= 0:
			return invalid("window %d (%q): limit %d, want at least 1", i, w.Counter, w.Limit)
		case !storeTime(w.End).After(storeTime(w.Start)):
			return invalid("window %d (%q): end %v is not after start %v (to the microsecond)", i, w.Counter, w.End, w.Start)
		}
		if err := checkText(w.Counter); err != nil {
			return invalid("window %d: counter name: %v", i, err)
		}
	}
	return nil
}

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

// Sweeping: at most once per budgetSweepInterval of the store's clock, and
// again on the next call while a sweep found a full batch, a successful
// ConsumeBudget deletes up to budgetSweepBatch counts of ended windows in
// its own transaction. That bounds both the table and the time any one call
// spends on it.
const (
	budgetSweepInterval = time.Minute
	budgetSweepBatch    = 1000
)

// errBudgetExceeded makes write roll back a ConsumeBudget that found a
// window over its limit.
var errBudgetExceeded = errors.New("budget exceeded")

// ConsumeBudget implements [Store.ConsumeBudget]. It checks and increments
// every window in one write transaction (BEGIN IMMEDIATE), so concurrent
// calls, from this process or another one on the same file, never count
// past a limit. On an error it returns 0 (not -1) with the error, so that a
// caller that ignores the error still refuses.
func (s *SQLite) ConsumeBudget(ctx context.Context, n int64, windows []BudgetWindow) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("consume budget: %w", err)
	}
	if err := validateBudget(n, windows); err != nil {
		return 0, fmt.Errorf("consume budget: %w", err)
	}
	now := storeTime(s.now()).UnixMicro()
	sweep := now >= s.nextSweep.Load()
	exceeded, swept := -1, 0
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
		swept = int(deleted)
		return nil
	})
	switch {
	case errors.Is(err, errBudgetExceeded):
		return exceeded, nil
	case err != nil:
		return 0, fmt.Errorf("consume budget: %w", err)
	}
	if sweep && swept < budgetSweepBatch {
		s.nextSweep.Store(now + budgetSweepInterval.Microseconds())
	}
	return -1, nil
}

// selectKeySQL reads keys joined with their versions, one row per version,
// in a single statement and so from a single snapshot. %s is the source of
// the keys rows.
const selectKeySQL = `SELECT k.name, k.type, k.state, k.primary_version,
	k.min_decryption_version, k.rotation_period_ns, k.labels, k.wrapped_keyset,
	k.root_key_id, k.create_time, k.update_time, k.revision,
	v.number, v.tink_key_id, v.create_time
	FROM %s AS k LEFT JOIN key_versions AS v ON v.key_name = k.name
	ORDER BY k.name, v.number`

var (
	getKeySQL   = fmt.Sprintf(selectKeySQL, `(SELECT * FROM keys WHERE name = ?)`)
	listKeysSQL = fmt.Sprintf(selectKeySQL, `(SELECT * FROM keys WHERE name > ? ORDER BY name LIMIT ?)`)
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
	next := ""
	if len(keys) > n {
		keys = keys[:n:n]
		next = encodePageToken(keys[n-1].Name)
	}
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
			rotation, created, updated int64
			vNumber, vTinkID, vCreated sql.NullInt64
		)
		if err := rows.Scan(&k.Name, &typ, &state, &k.PrimaryVersion,
			&k.MinDecryptionVersion, &rotation, &labels, &k.WrappedKeyset,
			&k.RootKeyID, &created, &updated, &k.Revision,
			&vNumber, &vTinkID, &vCreated); err != nil {
			return nil, sqliteErr(err)
		}
		if len(keys) == 0 || keys[len(keys)-1].Name != k.Name {
			if k.Type, err = ParseKeyType(typ); err != nil {
				return nil, fmt.Errorf("key %q: %w", k.Name, err)
			}
			if k.State, err = ParseKeyState(state); err != nil {
				return nil, fmt.Errorf("key %q: %w", k.Name, err)
			}
			if k.Labels, err = decodeLabels(labels); err != nil {
				return nil, fmt.Errorf("key %q: %w", k.Name, err)
			}
			if len(k.WrappedKeyset) == 0 {
				k.WrappedKeyset = nil
			}
			k.RotationPeriod = time.Duration(rotation)
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

func encodeLabels(labels map[string]string) (string, error) {
	if len(labels) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(labels)
	if err != nil {
		return "", fmt.Errorf("labels: %w", err)
	}
	return string(b), nil
}

func decodeLabels(s string) (map[string]string, error) {
	var labels map[string]string
	if err := json.Unmarshal([]byte(s), &labels); err != nil {
		return nil, fmt.Errorf("labels: %w", err)
	}
	if len(labels) == 0 {
		return nil, nil
	}
	return labels, nil
}

// blob returns b, or an empty non-nil slice for nil: a nil []byte binds as
// NULL, which the NOT NULL column refuses.
func blob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// isPrimaryKeyViolation reports whether err is SQLite's
// SQLITE_CONSTRAINT_PRIMARYKEY.
func isPrimaryKeyViolation(err error) bool {
	var e *sqlite.Error
	return errors.As(err, &e) && e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
}

// sqliteErr marks an error from the database as such. Context errors and
// nil pass through.
func sqliteErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("sqlite: %w", err)
}

// Migrations.

//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string // file name
	sql     string
}

// loadMigrations returns the embedded migrations in order. Their file names
// are NNNN_what.sql, numbered from 0001 without gaps.
func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for i, e := range entries { // ReadDir sorts by name
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v != i+1 {
			return nil, fmt.Errorf("migration %s: want a name starting %04d_", e.Name(), i+1)
		}
		b, err := fs.ReadFile(migrationFiles, "migrations/"+e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(b)})
	}
	return ms, nil
}

// migrate brings the schema up to date: it applies each embedded migration
// the database lacks, each in its own transaction together with its row in
// schema_migrations. It is a no-op on an up-to-date database and fails with
// ErrSchemaTooNew on a database migrated by a newer binary.
func migrate(ctx context.Context, w *sql.DB, now func() time.Time) error {
	ms, err := loadMigrations()
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
	applied := 0
	for rows.Next() {
		var v int
		var name string
		if err := rows.Scan(&v, &name); err != nil {
			return 0, sqliteErr(err)
		}
		switch {
		case v > len(ms):
			return 0, fmt.Errorf("%w: database has schema version %d, this binary knows up to %d", ErrSchemaTooNew, v, len(ms))
		case v != applied+1:
			return 0, fmt.Errorf("schema_migrations lists version %d after %d", v, applied)
		case name != ms[v-1].name:
			return 0, fmt.Errorf("schema version %d was applied as %q, this binary has %q", v, name, ms[v-1].name)
		}
		applied = v
	}
	if err := rows.Err(); err != nil {
		return 0, sqliteErr(err)
	}
	return applied, nil
}
