package store

import (
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresStore is the [Store] for several replicas sharing one PostgreSQL
// database. Every write is a single statement or a single transaction, so
// replicas need no coordination beyond PostgreSQL's own: UpdateKey is a
// compare-and-swap on the revision, and each read is one statement and so
// sees one snapshot.
//
// Errors that mean the database could not be reached (refused or broken
// connections, a server shutting down, a read-only standby) wrap
// errUnavailable; the operation may be retried.
type PostgresStore struct {
	pool *pgConnPool
	now  func() time.Time

	// nextSweep is when (Unix microseconds, store clock) ConsumeBudget
	// next deletes the counts of ended windows.
	nextSweep atomic.Int64
}

var _ Store = (*PostgresStore)(nil)

// errUnavailable means the database could not be reached or cannot serve
// the request now; retrying later may succeed.
//
// TODO: becomes the exported ErrUnavailable in store.go.
var errUnavailable = errors.New("store: database unavailable")

// pgConnectTimeout bounds each attempt to connect when the URL does not set
// connect_timeout.
const pgConnectTimeout = 10 * time.Second

// pgMigrationLock is the pg_advisory_xact_lock key that serializes
// migrations of one database: "tresor" and 1 in ASCII.
const pgMigrationLock = 0x74726573_6f720001

// OpenPostgres connects to the PostgreSQL database at url
// (postgres://user@host:port/dbname?sslmode=verify-full ...; any parameter
// pgx accepts, plus pool_max_conns), migrates its schema and returns the
// store. It refuses a database whose schema is newer than this binary knows
// ([ErrSchemaTooNew]) and a database whose encoding is not UTF8.
//
// Migrations run in one transaction under a transaction-scoped advisory
// lock, so several replicas starting at once migrate the database once.
func OpenPostgres(ctx context.Context, url string, opts ...Option) (*PostgresStore, error) {
	o := newOptions(opts)
	config, err := pgx.ParseConfig(url)
	if err != nil {
		// pgx redacts the password in its message.
		return nil, fmt.Errorf("open postgres store: %w", err)
	}
	maxConns := max(4, runtime.GOMAXPROCS(0))
	if v, ok := config.RuntimeParams["pool_max_conns"]; ok {
		delete(config.RuntimeParams, "pool_max_conns")
		if maxConns, err = strconv.Atoi(v); err != nil || maxConns < 1 {
			return nil, fmt.Errorf("open postgres store: pool_max_conns=%q, want a positive integer", v)
		}
	}
	if config.ConnectTimeout == 0 {
		config.ConnectTimeout = pgConnectTimeout
	}
	if _, ok := config.RuntimeParams["application_name"]; !ok {
		config.RuntimeParams["application_name"] = "tresor"
	}
	s := &PostgresStore{pool: newPgConnPool(config, maxConns), now: o.now}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open postgres store %s@%s/%s: %w", config.User, config.Host, config.Database, err)
	}
	return s, nil
}

// Close closes the store's connections. Calls made after Close fail.
func (s *PostgresStore) Close() error {
	s.pool.close()
	return nil
}

// pgCreateKeySQL inserts a key and its versions in one statement, and so in
// one transaction.
const pgCreateKeySQL = `WITH k AS (
	INSERT INTO keys (name, type, state, primary_version, min_decryption_version,
		rotation_period_ns, labels, wrapped_keyset, root_key_id,
		create_time, update_time, revision)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, 1)
	RETURNING name)
INSERT INTO key_versions (key_name, number, tink_key_id, create_time)
SELECT k.name, v.number, v.tink_key_id, v.create_time
FROM k, unnest($11::bigint[], $12::bigint[], $13::timestamptz[]) AS v (number, tink_key_id, create_time)`

// CreateKey implements [Store.CreateKey].
func (s *PostgresStore) CreateKey(ctx context.Context, k Key) (Key, error) {
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
	numbers, tinkIDs, times := pgVersionArrays(k.Versions)
	err = s.pool.withConn(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, pgCreateKeySQL,
			k.Name, k.Type.String(), k.State.String(), int64(k.PrimaryVersion),
			int64(k.MinDecryptionVersion), int64(k.RotationPeriod), labels, k.WrappedKeyset,
			k.RootKeyID, k.CreateTime, numbers, tinkIDs, times)
		return err
	})
	if err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, pgErr(err))
	}
	return k, nil
}

// pgUpdateKeySQL is the compare-and-swap, in one statement and so in one
// transaction: it changes the key only when the revision is the caller's,
// and then replaces its versions. Its one row holds the new create time and
// revision (NULL when nothing changed) and the revision stored before
// (NULL when there is no such key).
const pgUpdateKeySQL = `WITH u AS (
	UPDATE keys SET type = $3, state = $4, primary_version = $5,
		min_decryption_version = $6, rotation_period_ns = $7, labels = $8,
		wrapped_keyset = $9, root_key_id = $10, update_time = $11,
		revision = revision + 1
	WHERE name = $1 AND revision = $2
	RETURNING name, create_time, revision),
d AS (
	DELETE FROM key_versions
	WHERE key_name = (SELECT name FROM u) AND number <> ALL ($12::bigint[])),
i AS (
	INSERT INTO key_versions (key_name, number, tink_key_id, create_time)
	SELECT u.name, v.number, v.tink_key_id, v.create_time
	FROM u, unnest($12::bigint[], $13::bigint[], $14::timestamptz[]) AS v (number, tink_key_id, create_time)
	ON CONFLICT (key_name, number) DO UPDATE
	SET tink_key_id = excluded.tink_key_id, create_time = excluded.create_time)
SELECT (SELECT create_time FROM u), (SELECT revision FROM u),
	(SELECT revision FROM keys WHERE name = $1)`

// UpdateKey implements [Store.UpdateKey].
func (s *PostgresStore) UpdateKey(ctx context.Context, k Key) (Key, error) {
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
	numbers, tinkIDs, times := pgVersionArrays(k.Versions)
	var (
		created       *time.Time
		revision, old *int64
	)
	err = s.pool.withConn(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, pgUpdateKeySQL,
			k.Name, k.Revision, k.Type.String(), k.State.String(), int64(k.PrimaryVersion),
			int64(k.MinDecryptionVersion), int64(k.RotationPeriod), labels, k.WrappedKeyset,
			k.RootKeyID, k.UpdateTime, numbers, tinkIDs, times).Scan(&created, &revision, &old)
	})
	switch {
	case err != nil:
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, pgErr(err))
	case revision != nil && created != nil:
		k.CreateTime, k.Revision = created.UTC(), *revision
		return k, nil
	case old == nil:
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, ErrNotFound)
	case *old != k.Revision:
		return Key{}, fmt.Errorf("update key %q: %w: stored revision is %d, not %d", k.Name, ErrConflict, *old, k.Revision)
	default: // another replica's update committed while this one ran
		return Key{}, fmt.Errorf("update key %q: %w: revision %d was replaced concurrently", k.Name, ErrConflict, k.Revision)
	}
}

// pgVersionArrays returns the columns of vs, for unnest.
func pgVersionArrays(vs []Version) (numbers, tinkIDs []int64, times []time.Time) {
	numbers = make([]int64, len(vs))
	tinkIDs = make([]int64, len(vs))
	times = make([]time.Time, len(vs))
	for i, v := range vs {
		numbers[i], tinkIDs[i], times[i] = int64(v.Number), int64(v.TinkKeyID), v.CreateTime
	}
	return numbers, tinkIDs, times
}

// pgSelectKeysSQL reads keys, each with its versions gathered into arrays
// ordered by number, in a single statement and so from a single snapshot.
// %s is the source of the keys rows.
const pgSelectKeysSQL = `SELECT k.name, k.type, k.state, k.primary_version,
	k.min_decryption_version, k.rotation_period_ns, k.labels, k.wrapped_keyset,
	k.root_key_id, k.create_time, k.update_time, k.revision,
	v.numbers, v.tink_key_ids, v.create_times
FROM %s AS k CROSS JOIN LATERAL (
	SELECT array_agg(number ORDER BY number) AS numbers,
		array_agg(tink_key_id ORDER BY number) AS tink_key_ids,
		array_agg(create_time ORDER BY number) AS create_times
	FROM key_versions WHERE key_name = k.name) AS v
ORDER BY k.name`

var (
	pgGetKeySQL   = fmt.Sprintf(pgSelectKeysSQL, `(SELECT * FROM keys WHERE name = $1)`)
	pgListKeysSQL = fmt.Sprintf(pgSelectKeysSQL, `(SELECT * FROM keys WHERE name > $1 ORDER BY name LIMIT $2)`)
)

// GetKey implements [Store.GetKey].
func (s *PostgresStore) GetKey(ctx context.Context, name string) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, fmt.Errorf("get key %q: %w", name, err)
	}
	if checkText(name) != nil {
		// PostgreSQL refuses such text; no key has such a name.
		return Key{}, fmt.Errorf("get key %q: %w", name, ErrNotFound)
	}
	keys, err := s.queryKeys(ctx, pgGetKeySQL, name)
	if err != nil {
		return Key{}, fmt.Errorf("get key %q: %w", name, err)
	}
	if len(keys) == 0 {
		return Key{}, fmt.Errorf("get key %q: %w", name, ErrNotFound)
	}
	return keys[0], nil
}

// ListKeys implements [Store.ListKeys].
func (s *PostgresStore) ListKeys(ctx context.Context, size int, token string) ([]Key, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", fmt.Errorf("list keys: %w", err)
	}
	after, err := decodePageToken(token)
	if err != nil {
		return nil, "", fmt.Errorf("list keys: %w", err)
	}
	n := pageSize(size)
	keys, err := s.queryKeys(ctx, pgListKeysSQL, after, n+1)
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

// queryKeys runs one of the select statements above and gathers its rows
// into keys.
func (s *PostgresStore) queryKeys(ctx context.Context, query string, args ...any) ([]Key, error) {
	var keys []Key
	err := s.pool.withConn(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				k                  Key
				typ, state, labels string
				rotation           int64
				numbers, tinkIDs   []int64
				times              []time.Time
			)
			if err := rows.Scan(&k.Name, &typ, &state, &k.PrimaryVersion,
				&k.MinDecryptionVersion, &rotation, &labels, &k.WrappedKeyset,
				&k.RootKeyID, &k.CreateTime, &k.UpdateTime, &k.Revision,
				&numbers, &tinkIDs, &times); err != nil {
				return err
			}
			if k.Type, err = ParseKeyType(typ); err != nil {
				return fmt.Errorf("key %q: %w", k.Name, err)
			}
			if k.State, err = ParseKeyState(state); err != nil {
				return fmt.Errorf("key %q: %w", k.Name, err)
			}
			if k.Labels, err = decodeLabels(labels); err != nil {
				return fmt.Errorf("key %q: %w", k.Name, err)
			}
			if len(k.WrappedKeyset) == 0 {
				k.WrappedKeyset = nil
			}
			k.RotationPeriod = time.Duration(rotation)
			k.CreateTime, k.UpdateTime = k.CreateTime.UTC(), k.UpdateTime.UTC()
			if len(tinkIDs) != len(numbers) || len(times) != len(numbers) {
				return fmt.Errorf("key %q: version columns of unequal lengths", k.Name)
			}
			if len(numbers) > 0 {
				k.Versions = make([]Version, len(numbers))
				for i := range numbers {
					k.Versions[i] = Version{
						Number:     uint32(numbers[i]),
						TinkKeyID:  uint32(tinkIDs[i]),
						CreateTime: times[i].UTC(),
					}
				}
			}
			keys = append(keys, k)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, pgErr(err)
	}
	return keys, nil
}

// Budgets.

// pgBudgetSweepInterval is how often, at most, ConsumeBudget deletes the
// counts of windows that have ended, by the store's clock (and again on the
// next call while a sweep found a full batch); pgBudgetSweepBatch caps how
// many one sweep deletes. As in SQLite.
const (
	pgBudgetSweepInterval = time.Minute
	pgBudgetSweepBatch    = 1000
)

// pgLockBudgetsSQL creates the count rows the windows lack (with used 0),
// locks all of them in the order given, and returns their counts. Every
// caller gives them sorted bytewise by counter and then by start, so that
// two transactions never wait for each other in a cycle. ON CONFLICT DO
// UPDATE, unlike DO NOTHING followed by SELECT FOR UPDATE, also copes with a
// row that the sweep deletes meanwhile. A window given with different ends
// keeps the latest, so that it is not deleted early.
const pgLockBudgetsSQL = `INSERT INTO budget_counts AS b (counter, window_start, window_end, used)
SELECT w.counter, w.window_start, w.window_end, 0
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY
	AS w (counter, window_start, window_end, i)
ORDER BY w.i
ON CONFLICT (counter, window_start) DO UPDATE
SET window_end = greatest(b.window_end, excluded.window_end)
RETURNING b.counter, b.window_start, b.used`

// pgSetBudgetsSQL sets counts that pgLockBudgetsSQL locked.
const pgSetBudgetsSQL = `UPDATE budget_counts AS b SET used = w.used
FROM unnest($1::text[], $2::timestamptz[], $3::bigint[]) AS w (counter, window_start, used)
WHERE b.counter = w.counter AND b.window_start = w.window_start`

// pgSweepBudgetsSQL deletes up to $2 counts of windows that ended by $1.
// SKIP LOCKED keeps it from ever waiting for, or deadlocking with, a
// ConsumeBudget.
const pgSweepBudgetsSQL = `DELETE FROM budget_counts
WHERE (counter, window_start) IN (
	SELECT counter, window_start FROM budget_counts WHERE window_end <= $1
	LIMIT $2 FOR UPDATE SKIP LOCKED)`

// pgBudgetKey names one count: a window's Counter and Start as stored.
type pgBudgetKey struct {
	counter string
	start   int64 // Unix microseconds
}

// errPgBudgetExceeded rolls back a ConsumeBudget that found a window over
// its limit.
var errPgBudgetExceeded = errors.New("budget exceeded")

// ConsumeBudget implements [Store.ConsumeBudget], as SQLite does: windows
// are counted in the order given, so a window given twice counts n twice
// and is checked against each Limit in turn. It locks the count rows, in one
// transaction, in an order every caller shares, so concurrent calls, from
// any replica, never count past a limit and never deadlock. On an error it
// returns 0 (not -1), so that a caller that ignores the error still refuses.
//
// Besides what validateBudget refuses, Start and End outside years 1 to 9999
// are refused with [ErrInvalidBudget].
func (s *PostgresStore) ConsumeBudget(ctx context.Context, n int64, windows []BudgetWindow) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("consume budget: %w", err)
	}
	if err := validateBudget(n, windows); err != nil {
		return 0, fmt.Errorf("consume budget: %w", err)
	}
	ends := make(map[pgBudgetKey]time.Time, len(windows)) // the latest End of each count
	for i, w := range windows {
		start, end := storeTime(w.Start), storeTime(w.End)
		if start.Before(minTime) || end.After(maxTime) {
			return 0, fmt.Errorf("consume budget: %w: window %d (%q): %v to %v is outside years 1 to 9999", ErrInvalidBudget, i, w.Counter, w.Start, w.End)
		}
		key := pgBudgetKey{w.Counter, start.UnixMicro()}
		if e, ok := ends[key]; !ok || end.After(e) {
			ends[key] = end
		}
	}
	keys := slices.SortedFunc(maps.Keys(ends), func(a, b pgBudgetKey) int {
		return cmp.Or(strings.Compare(a.counter, b.counter), cmp.Compare(a.start, b.start))
	})
	counters := make([]string, len(keys))
	starts := make([]time.Time, len(keys))
	endTimes := make([]time.Time, len(keys))
	for i, key := range keys {
		counters[i], starts[i], endTimes[i] = key.counter, time.UnixMicro(key.start), ends[key]
	}

	now := storeTime(s.now())
	exceeded := -1
	err := s.pool.withTx(ctx, func(tx pgx.Tx) error {
		counts := make(map[pgBudgetKey]int64, len(keys))
		rows, err := tx.Query(ctx, pgLockBudgetsSQL, counters, starts, endTimes)
		if err != nil {
			return err
		}
		for rows.Next() {
			var (
				counter string
				start   time.Time
				used    int64
			)
			if err := rows.Scan(&counter, &start, &used); err != nil {
				rows.Close()
				return err
			}
			counts[pgBudgetKey{counter, start.UnixMicro()}] = used
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(counts) != len(keys) {
			return fmt.Errorf("locked %d budget counts, want %d", len(counts), len(keys))
		}
		for i, w := range windows {
			key := pgBudgetKey{w.Counter, storeTime(w.Start).UnixMicro()}
			// No overflow: 0 <= counts[key] and 0 < n, Limit.
			if counts[key] > w.Limit-n {
				exceeded = i
				return errPgBudgetExceeded
			}
			counts[key] += n
		}
		used := make([]int64, len(keys))
		for i, key := range keys {
			used[i] = counts[key]
		}
		_, err = tx.Exec(ctx, pgSetBudgetsSQL, counters, starts, used)
		return err
	})
	switch {
	case errors.Is(err, errPgBudgetExceeded):
		return exceeded, nil
	case err != nil:
		return 0, fmt.Errorf("consume budget: %w", pgErr(err))
	}
	s.sweepBudgets(ctx, now)
	return -1, nil
}

// sweepBudgets deletes up to pgBudgetSweepBatch counts of windows that
// ended by now, when a sweep is due. It is best effort: on an error the
// next call tries again.
func (s *PostgresStore) sweepBudgets(ctx context.Context, now time.Time) {
	if now.UnixMicro() < s.nextSweep.Load() {
		return
	}
	var swept int64
	err := s.pool.withConn(ctx, func(c *pgx.Conn) error {
		tag, err := c.Exec(ctx, pgSweepBudgetsSQL, now, pgBudgetSweepBatch)
		swept = tag.RowsAffected()
		return err
	})
	if err == nil && swept < pgBudgetSweepBatch {
		s.nextSweep.Store(now.Add(pgBudgetSweepInterval).UnixMicro())
	}
}

// Errors.

// pgErr maps an error from pgx to the store's errors: a unique violation is
// ErrAlreadyExists, a failure to reach the database errUnavailable. Context
// errors pass through; nil is nil.
func pgErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if errors.Is(err, errPgPoolClosed) {
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "23505": // unique_violation
			return fmt.Errorf("%w: %w", ErrAlreadyExists, err)
		case strings.HasPrefix(pe.Code, "08"), // connection_exception
			pe.Code == "57P01", // admin_shutdown
			pe.Code == "57P02", // crash_shutdown
			pe.Code == "57P03", // cannot_connect_now
			pe.Code == "53300", // too_many_connections
			pe.Code == "25006": // read_only_sql_transaction: a standby
			return fmt.Errorf("%w: %w", errUnavailable, err)
		default:
			return fmt.Errorf("postgres: %w", err)
		}
	}
	var (
		ce     *pgconn.ConnectError
		netErr net.Error
	)
	if errors.As(err, &ce) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("%w: %w", errUnavailable, err)
	}
	return fmt.Errorf("postgres: %w", err)
}

// Migrations.

//go:embed pgmigrations/*.sql
var pgMigrationFiles embed.FS

// pgLoadMigrations returns the embedded migrations in order. Their file
// names are NNNN_what.sql, numbered from 0001 without gaps.
//
// TODO: the same as loadMigrations in sqlite.go but for the directory.
func pgLoadMigrations() ([]migration, error) {
	const dir = "pgmigrations"
	entries, err := fs.ReadDir(pgMigrationFiles, dir)
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
		b, err := fs.ReadFile(pgMigrationFiles, dir+"/"+e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(b)})
	}
	return ms, nil
}

// migrate brings the schema up to date in one transaction, under an
// advisory lock that serializes it with other replicas' migrations. It is a
// no-op on an up-to-date database and fails with ErrSchemaTooNew on a
// database migrated by a newer binary.
func (s *PostgresStore) migrate(ctx context.Context) error {
	ms, err := pgLoadMigrations()
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	err = s.pool.withConn(ctx, func(c *pgx.Conn) error {
		if enc := c.PgConn().ParameterStatus("server_encoding"); enc != "UTF8" {
			return fmt.Errorf("database encoding is %q, want UTF8", enc)
		}
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(pgMigrationLock)); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
				version      integer     NOT NULL PRIMARY KEY,
				name         text        NOT NULL,
				applied_time timestamptz NOT NULL)`); err != nil {
				return err
			}
			applied, err := pgSchemaVersion(ctx, tx, ms)
			if err != nil {
				return err
			}
			for _, m := range ms[applied:] {
				if _, err := tx.Exec(ctx, m.sql); err != nil {
					return fmt.Errorf("%s: %w", m.name, err)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_time) VALUES ($1, $2, $3)`,
					m.version, m.name, storeTime(s.now())); err != nil {
					return fmt.Errorf("%s: %w", m.name, err)
				}
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("migrate: %w", pgErr(err))
	}
	return nil
}

// pgSchemaVersion returns the number of migrations applied to the
// database, after checking that they are the first ones of ms.
func pgSchemaVersion(ctx context.Context, tx pgx.Tx, ms []migration) (int, error) {
	rows, err := tx.Query(ctx, `SELECT version, name FROM schema_migrations ORDER BY version`)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	applied := 0
	for rows.Next() {
		var v int
		var name string
		if err := rows.Scan(&v, &name); err != nil {
			return 0, err
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
	return applied, rows.Err()
}

// Connection pool.
//
// TODO: replace with pgxpool once github.com/jackc/puddle/v2 (which pgxpool
// imports) is in go.mod and go.sum: withConn becomes pool.AcquireFunc.

// Limits of pooled connections.
const (
	pgMaxConnLifetime = time.Hour
	pgMaxConnIdleTime = 30 * time.Minute
	// A connection idle longer than this is pinged before it is used.
	pgPingAfterIdle = time.Second
)

var errPgPoolClosed = errors.New("store: closed")

// pgConnPool is a small pool of pgx connections: at most cap(slots) open
// at once; idle ones are reused most recent first; broken ones, and ones
// left inside a transaction, are closed rather than reused.
type pgConnPool struct {
	config *pgx.ConnConfig
	slots  chan struct{} // a token per connection in use

	mu     sync.Mutex
	idle   []*pgPooledConn
	closed bool
}

type pgPooledConn struct {
	conn              *pgx.Conn
	created, lastUsed time.Time
}

func newPgConnPool(config *pgx.ConnConfig, maxConns int) *pgConnPool {
	return &pgConnPool{config: config, slots: make(chan struct{}, maxConns)}
}

// withConn runs fn on a connection of the pool, and returns the connection
// to the pool when fn has returned (fn must close any rows it opened).
func (p *pgConnPool) withConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := p.acquire(ctx)
	if err != nil {
		return err
	}
	defer p.release(c)
	return fn(c.conn)
}

// withTx runs fn in a transaction and commits it when fn succeeds.
func (p *pgConnPool) withTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return p.withConn(ctx, func(c *pgx.Conn) error {
		return pgx.BeginFunc(ctx, c, fn)
	})
}

func (p *pgConnPool) acquire(ctx context.Context) (*pgPooledConn, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.slots
			return nil, errPgPoolClosed
		}
		var c *pgPooledConn
		if n := len(p.idle); n > 0 {
			c, p.idle[n-1] = p.idle[n-1], nil
			p.idle = p.idle[:n-1]
		}
		p.mu.Unlock()
		if c == nil {
			break
		}
		now := time.Now()
		switch {
		case c.conn.IsClosed() || now.Sub(c.created) > pgMaxConnLifetime || now.Sub(c.lastUsed) > pgMaxConnIdleTime:
			pgCloseConn(c.conn)
			continue
		case now.Sub(c.lastUsed) > pgPingAfterIdle:
			if err := c.conn.Ping(ctx); err != nil {
				pgCloseConn(c.conn)
				if ctx.Err() != nil {
					<-p.slots
					return nil, ctx.Err()
				}
				continue
			}
		}
		return c, nil
	}
	conn, err := pgx.ConnectConfig(ctx, p.config)
	if err != nil {
		<-p.slots
		return nil, err
	}
	now := time.Now()
	return &pgPooledConn{conn: conn, created: now, lastUsed: now}, nil
}

func (p *pgConnPool) release(c *pgPooledConn) {
	defer func() { <-p.slots }()
	reusable := !c.conn.IsClosed() && !c.conn.PgConn().IsBusy() && c.conn.PgConn().TxStatus() == 'I'
	c.lastUsed = time.Now()
	p.mu.Lock()
	if reusable && !p.closed {
		p.idle = append(p.idle, c)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	pgCloseConn(c.conn)
}

// close closes the idle connections, and makes the pool close the others
// as they are released and refuse to hand out more.
func (p *pgConnPool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, c := range idle {
		pgCloseConn(c.conn)
	}
}

// pgCloseConn closes conn, giving the server a moment to hear of it.
func pgCloseConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn.Close(ctx) //nolint:errcheck // the connection is dropped either way
}
