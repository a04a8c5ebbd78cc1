package store

import (
	"cmp"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresStore is the [Store] for several replicas sharing one PostgreSQL
// database. Every write is a single statement or a single transaction, so
// replicas need no coordination beyond PostgreSQL's own: UpdateKey is a
// compare-and-swap on the revision, ReserveUses and AcquireLease are single
// upserts, RewrapKeys is one statement per batch, and each read is one
// statement and so sees one snapshot.
//
// Errors that mean the database could not be reached (refused or broken
// connections, a server shutting down, a read-only standby) wrap
// [ErrUnavailable]; the operation may be retried. On such an error the store
// closes its pooled connections, since a server that dropped one has most
// likely dropped them all, and the next call connects afresh.
//
// Destroying a key sets its wrapped_keyset to NULL. PostgreSQL keeps the
// previous row version, with the old wrapped keyset, until VACUUM removes it
// and its space is reused, and in its write-ahead log and backups; the
// keyset there is still wrapped by the root key.
type PostgresStore struct {
	pool *pgxpool.Pool
	now  func() time.Time

	sweeps sweepSchedule // when ConsumeBudget next deletes ended windows
}

var _ Store = (*PostgresStore)(nil)

// pgConnectTimeout bounds each attempt to connect when the URL does not set
// connect_timeout.
const pgConnectTimeout = 10 * time.Second

// pgMigrationLock is the pg_advisory_xact_lock key that serializes
// migrations of one database: "tresor" and 1 in ASCII.
const pgMigrationLock = 0x74726573_6f720001

// OpenPostgres connects to the PostgreSQL database at url
// (postgres://user@host:port/dbname?sslmode=verify-full ...; any parameter
// pgx accepts, and pgxpool's pool_max_conns, pool_max_conn_lifetime and the
// like), migrates its schema and returns the store. It refuses a database
// whose schema is newer than this binary knows ([ErrSchemaTooNew]) and a
// database whose encoding is not UTF8.
//
// Migrations run in one transaction under a transaction-scoped advisory
// lock, so several replicas starting at once migrate the database once.
func OpenPostgres(ctx context.Context, url string, opts ...Option) (*PostgresStore, error) {
	o := newOptions(opts)
	config, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx redacts the password in its message.
		return nil, fmt.Errorf("open postgres store: %w", err)
	}
	cc := config.ConnConfig
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = pgConnectTimeout
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "tresor"
	}
	pool, err := pgxpool.NewWithConfig(ctx, config)
	if err != nil {
		return nil, fmt.Errorf("open postgres store: %w", err)
	}
	s := &PostgresStore{pool: pool, now: o.now}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open postgres store %s@%s/%s: %w", cc.User, cc.Host, cc.Database, err)
	}
	return s, nil
}

// Close closes the store's connections, waiting for calls in flight to
// return theirs. Calls made after Close fail.
func (s *PostgresStore) Close() error {
	s.pool.Close()
	return nil
}

// pgCreateKeySQL inserts a key and its versions in one statement, and so in
// one transaction.
const pgCreateKeySQL = `WITH k AS (
	INSERT INTO keys (name, type, state, primary_version, min_decryption_version,
		rotation_period_ns, labels, wrapped_keyset, root_key_id, deletion_time,
		destroy_time, usage_limit, retire_after_ns, retire_after_versions,
		create_time, update_time, revision)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, 1)
	RETURNING name)
INSERT INTO key_versions (key_name, number, tink_key_id, create_time)
SELECT k.name, v.number, v.tink_key_id, v.create_time
FROM k, unnest($16::bigint[], $17::bigint[], $18::timestamptz[]) AS v (number, tink_key_id, create_time)`

// CreateKey implements [Store.CreateKey].
func (s *PostgresStore) CreateKey(ctx context.Context, k Key) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, err)
	}
	k, labels, err := prepareKey(k)
	if err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, err)
	}
	now := storeTime(s.now())
	k.CreateTime, k.UpdateTime, k.Revision = now, now, 1
	numbers, tinkIDs, times := pgVersionArrays(k.Versions)
	_, err = s.pool.Exec(ctx, pgCreateKeySQL,
		k.Name, k.Type.String(), k.State.String(), int64(k.PrimaryVersion),
		int64(k.MinDecryptionVersion), int64(k.RotationPeriod), labels, k.WrappedKeyset,
		k.RootKeyID, nullTime(k.DeletionTime), nullTime(k.DestroyTime), k.UsageLimit,
		int64(k.RetireAfter), int64(k.RetireAfterVersions), k.CreateTime, numbers, tinkIDs, times)
	if err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", k.Name, s.fail(err))
	}
	return k, nil
}

// pgUpdateKeySQL is the compare-and-swap, in one statement and so in one
// transaction: it changes the key only when the revision is the caller's
// (and never moves a DESTROYED key to another state), and then replaces its
// versions. Its one row holds the new create time and revision (NULL when
// nothing changed) and the revision and state stored before (NULL when
// there is no such key).
const pgUpdateKeySQL = `WITH u AS (
	UPDATE keys SET type = $3, state = $4, primary_version = $5,
		min_decryption_version = $6, rotation_period_ns = $7, labels = $8,
		wrapped_keyset = $9, root_key_id = $10, deletion_time = $11,
		destroy_time = $12, usage_limit = $13, retire_after_ns = $14,
		retire_after_versions = $15, update_time = $16, revision = revision + 1
	WHERE name = $1 AND revision = $2 AND (state <> 'DESTROYED' OR $4 = 'DESTROYED')
	RETURNING name, create_time, revision),
d AS (
	DELETE FROM key_versions
	WHERE key_name = (SELECT name FROM u) AND number <> ALL ($17::bigint[])),
i AS (
	INSERT INTO key_versions (key_name, number, tink_key_id, create_time)
	SELECT u.name, v.number, v.tink_key_id, v.create_time
	FROM u, unnest($17::bigint[], $18::bigint[], $19::timestamptz[]) AS v (number, tink_key_id, create_time)
	ON CONFLICT (key_name, number) DO UPDATE
	SET tink_key_id = excluded.tink_key_id, create_time = excluded.create_time)
SELECT (SELECT create_time FROM u), (SELECT revision FROM u),
	old.revision, old.state
FROM (SELECT 1) AS one LEFT JOIN keys AS old ON old.name = $1`

// UpdateKey implements [Store.UpdateKey].
func (s *PostgresStore) UpdateKey(ctx context.Context, k Key) (Key, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, err)
	}
	k, labels, err := prepareKey(k)
	if err != nil {
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, err)
	}
	k.UpdateTime = storeTime(s.now())
	numbers, tinkIDs, times := pgVersionArrays(k.Versions)
	var (
		created       *time.Time
		revision, old *int64
		oldState      *string
	)
	err = s.pool.QueryRow(ctx, pgUpdateKeySQL,
		k.Name, k.Revision, k.Type.String(), k.State.String(), int64(k.PrimaryVersion),
		int64(k.MinDecryptionVersion), int64(k.RotationPeriod), labels, k.WrappedKeyset,
		k.RootKeyID, nullTime(k.DeletionTime), nullTime(k.DestroyTime), k.UsageLimit,
		int64(k.RetireAfter), int64(k.RetireAfterVersions), k.UpdateTime,
		numbers, tinkIDs, times).Scan(&created, &revision, &old, &oldState)
	switch {
	case err != nil:
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, s.fail(err))
	case revision != nil && created != nil:
		k.CreateTime, k.Revision = created.UTC(), *revision
		return k, nil
	case old == nil:
		return Key{}, fmt.Errorf("update key %q: %w", k.Name, ErrNotFound)
	case *old != k.Revision:
		return Key{}, fmt.Errorf("update key %q: %w: stored revision is %d, not %d", k.Name, ErrConflict, *old, k.Revision)
	case oldState != nil && *oldState == KeyStateDestroyed.String():
		return Key{}, fmt.Errorf("update key %q: %w: the key is destroyed and stays so, not %v", k.Name, ErrInvalidKey, k.State)
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

// nullTime returns t, or nil (NULL) for the zero time: how an optional time
// is stored.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// pgSelectKeysSQL reads keys, each with its versions gathered into arrays
// ordered by number, in a single statement and so from a single snapshot.
// %s is the source of the keys rows.
const pgSelectKeysSQL = `SELECT k.name, k.type, k.state, k.primary_version,
	k.min_decryption_version, k.rotation_period_ns, k.labels, k.wrapped_keyset,
	k.root_key_id, k.deletion_time, k.destroy_time, k.usage_limit,
	k.retire_after_ns, k.retire_after_versions, k.create_time, k.update_time,
	k.revision, v.numbers, v.tink_key_ids, v.create_times
FROM %s AS k CROSS JOIN LATERAL (
	SELECT array_agg(number ORDER BY number) AS numbers,
		array_agg(tink_key_id ORDER BY number) AS tink_key_ids,
		array_agg(create_time ORDER BY number) AS create_times
	FROM key_versions WHERE key_name = k.name) AS v
ORDER BY k.name`

var (
	pgGetKeySQL     = fmt.Sprintf(pgSelectKeysSQL, `(SELECT * FROM keys WHERE name = $1)`)
	pgListKeysSQL   = fmt.Sprintf(pgSelectKeysSQL, `(SELECT * FROM keys WHERE name > $1 ORDER BY name LIMIT $2)`)
	pgListByRootSQL = fmt.Sprintf(pgSelectKeysSQL, `(SELECT * FROM keys
		WHERE root_key_id = $1 AND state <> 'DESTROYED' AND name > $2 ORDER BY name LIMIT $3)`)
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
	keys, next := pageKeys(keys, n)
	return keys, next, nil
}

// queryKeys runs one of the select statements above and gathers its rows
// into keys.
func (s *PostgresStore) queryKeys(ctx context.Context, query string, args ...any) ([]Key, error) {
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, s.fail(err)
	}
	defer rows.Close()
	var keys []Key
	for rows.Next() {
		var (
			k                           Key
			typ, state, labels          string
			rotation, retire, retireVer int64
			deletion, destroy           *time.Time
			numbers, tinkIDs            []int64
			times                       []time.Time
		)
		if err := rows.Scan(&k.Name, &typ, &state, &k.PrimaryVersion,
			&k.MinDecryptionVersion, &rotation, &labels, &k.WrappedKeyset,
			&k.RootKeyID, &deletion, &destroy, &k.UsageLimit, &retire, &retireVer,
			&k.CreateTime, &k.UpdateTime, &k.Revision,
			&numbers, &tinkIDs, &times); err != nil {
			return nil, s.fail(err)
		}
		if err := decodeKeyColumns(&k, typ, state, labels, rotation, retire); err != nil {
			return nil, err
		}
		k.RetireAfterVersions = uint32(retireVer)
		if deletion != nil {
			k.DeletionTime = deletion.UTC()
		}
		if destroy != nil {
			k.DestroyTime = destroy.UTC()
		}
		k.CreateTime, k.UpdateTime = k.CreateTime.UTC(), k.UpdateTime.UTC()
		if len(tinkIDs) != len(numbers) || len(times) != len(numbers) {
			return nil, fmt.Errorf("key %q: version columns of unequal lengths", k.Name)
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
	if err := rows.Err(); err != nil {
		return nil, s.fail(err)
	}
	return keys, nil
}

// Budgets.

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
// A successful call sweeps the counts of ended windows now and then, in a
// statement of its own.
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
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
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
		return 0, fmt.Errorf("consume budget: %w", s.fail(err))
	}
	s.sweepBudgets(ctx, now)
	return -1, nil
}

// sweepBudgets deletes up to budgetSweepBatch counts of windows that ended
// by now, when a sweep is due. It is best effort: on an error the next call
// tries again.
func (s *PostgresStore) sweepBudgets(ctx context.Context, now time.Time) {
	if !s.sweeps.due(now) {
		return
	}
	if tag, err := s.pool.Exec(ctx, pgSweepBudgetsSQL, now, budgetSweepBatch); err == nil {
		s.sweeps.swept(now, tag.RowsAffected())
	}
}

// Use reservations.

// pgReserveUsesSQL adds least($3, $4 - used) to the count of version $2 of
// key $1, creating it, when the key has that version and the count is below
// the limit $4, in one upsert. Every SET expression reads the row as it was,
// so last_granted is the grant. Its one row holds the grant (NULL when
// nothing was added) and whether the key and the version exist, which tell
// a spent version from a missing one. The caller checks $3, $4 >= 1; no sum
// can overflow, since used < $4 before.
const pgReserveUsesSQL = `WITH r AS (
	INSERT INTO key_uses AS u (key_name, version, used, last_granted)
	SELECT key_name, number, least($3::bigint, $4::bigint), least($3::bigint, $4::bigint)
	FROM key_versions WHERE key_name = $1 AND number = $2
	ON CONFLICT (key_name, version) DO UPDATE
	SET used = u.used + least($3::bigint, $4::bigint - u.used),
		last_granted = least($3::bigint, $4::bigint - u.used)
	WHERE u.used < $4::bigint
	RETURNING u.last_granted)
SELECT (SELECT last_granted FROM r),
	EXISTS (SELECT 1 FROM keys WHERE name = $1),
	EXISTS (SELECT 1 FROM key_versions WHERE key_name = $1 AND number = $2)`

// ReserveUses implements [Store.ReserveUses] in one statement.
func (s *PostgresStore) ReserveUses(ctx context.Context, name string, version uint32, n, limit int64) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("reserve uses of key %q version %d: %w", name, version, err)
	}
	if err := validateReserve(version, n, limit); err != nil {
		return 0, fmt.Errorf("reserve uses of key %q version %d: %w", name, version, err)
	}
	if checkText(name) != nil {
		return 0, fmt.Errorf("reserve uses of key %q version %d: %w", name, version, ErrNotFound)
	}
	var (
		granted               *int64
		keyExists, hasVersion bool
	)
	err := s.pool.QueryRow(ctx, pgReserveUsesSQL, name, int64(version), n, limit).Scan(&granted, &keyExists, &hasVersion)
	switch {
	case err != nil:
		return 0, fmt.Errorf("reserve uses of key %q version %d: %w", name, version, s.fail(err))
	case granted != nil:
		return *granted, nil
	case !keyExists:
		return 0, fmt.Errorf("reserve uses of key %q version %d: %w", name, version, ErrNotFound)
	case !hasVersion:
		return 0, fmt.Errorf("reserve uses of key %q version %d: %w: the key has no version %d", name, version, ErrInvalidKey, version)
	default:
		return 0, nil // spent
	}
}

// Uses implements [Store.Uses].
func (s *PostgresStore) Uses(ctx context.Context, name string) (map[uint32]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("uses of key %q: %w", name, err)
	}
	if checkText(name) != nil {
		return nil, fmt.Errorf("uses of key %q: %w", name, ErrNotFound)
	}
	rows, err := s.pool.Query(ctx, `SELECT u.version, u.used FROM keys AS k
		LEFT JOIN key_uses AS u ON u.key_name = k.name WHERE k.name = $1`, name)
	if err != nil {
		return nil, fmt.Errorf("uses of key %q: %w", name, s.fail(err))
	}
	defer rows.Close()
	var uses map[uint32]int64
	for rows.Next() {
		var version, used *int64
		if err := rows.Scan(&version, &used); err != nil {
			return nil, fmt.Errorf("uses of key %q: %w", name, s.fail(err))
		}
		if uses == nil {
			uses = map[uint32]int64{}
		}
		if version != nil && used != nil {
			uses[uint32(*version)] = *used
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("uses of key %q: %w", name, s.fail(err))
	}
	if uses == nil {
		return nil, fmt.Errorf("uses of key %q: %w", name, ErrNotFound)
	}
	return uses, nil
}

// Leases.

// pgAcquireLeaseSQL makes $2 the holder of lease $1 until $3, when the lease
// is free, held by $2 or expired by $4; it returns a row exactly then. The
// upsert locks the row, so of two replicas acquiring at once one wins.
const pgAcquireLeaseSQL = `INSERT INTO leases AS l (name, holder, expire_time) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expire_time = excluded.expire_time
WHERE l.holder = excluded.holder OR l.expire_time <= $4
RETURNING true`

// AcquireLease implements [Store.AcquireLease] in one statement.
func (s *PostgresStore) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("acquire lease %q for %q: %w", name, holder, err)
	}
	if err := validateLease(name, holder, ttl, true); err != nil {
		return false, fmt.Errorf("acquire lease %q for %q: %w", name, holder, err)
	}
	now := storeTime(s.now())
	var acquired bool
	err := s.pool.QueryRow(ctx, pgAcquireLeaseSQL, name, holder, leaseExpiry(now, ttl), now).Scan(&acquired)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("acquire lease %q for %q: %w", name, holder, s.fail(err))
	}
	return acquired, nil
}

// ReleaseLease implements [Store.ReleaseLease].
func (s *PostgresStore) ReleaseLease(ctx context.Context, name, holder string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("release lease %q for %q: %w", name, holder, err)
	}
	if err := validateLease(name, holder, 0, false); err != nil {
		return fmt.Errorf("release lease %q for %q: %w", name, holder, err)
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM leases WHERE name = $1 AND holder = $2`, name, holder); err != nil {
		return fmt.Errorf("release lease %q for %q: %w", name, holder, s.fail(err))
	}
	return nil
}

// KeyRevisions implements [Store.KeyRevisions]: one query per up to 1000
// names, given as an array.
func (s *PostgresStore) KeyRevisions(ctx context.Context, names []string) (map[string]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("key revisions: %w", err)
	}
	revisions := make(map[string]int64, len(names))
	for _, chunk := range revisionNames(names) {
		rows, err := s.pool.Query(ctx, `SELECT name, revision FROM keys WHERE name = ANY ($1::text[])`, chunk)
		if err != nil {
			return nil, fmt.Errorf("key revisions: %w", s.fail(err))
		}
		var (
			name     string
			revision int64
		)
		_, err = pgx.ForEachRow(rows, []any{&name, &revision}, func() error {
			revisions[name] = revision
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("key revisions: %w", s.fail(err))
		}
	}
	return revisions, nil
}

// Root-key rotations.

const pgSelectRotationSQL = `SELECT id, prev_id, from_uri, to_uri, from_id, to_id, state,
	total, rewrapped, start_time, update_time, end_time, endorsement FROM root_key_rotations`

// pgScanRotation reads a row of pgSelectRotationSQL.
func pgScanRotation(row pgx.Row) (RootKeyRotation, error) {
	var (
		r     RootKeyRotation
		state string
		ended *time.Time
	)
	if err := row.Scan(&r.ID, &r.PrevID, &r.FromURI, &r.ToURI, &r.FromID, &r.ToID, &state,
		&r.Total, &r.Rewrapped, &r.StartTime, &r.UpdateTime, &ended, &r.Endorsement); err != nil {
		return RootKeyRotation{}, err
	}
	var err error
	if r.State, err = ParseRotationState(state); err != nil {
		return RootKeyRotation{}, fmt.Errorf("job %q: %w", r.ID, err)
	}
	r.StartTime, r.UpdateTime = r.StartTime.UTC(), r.UpdateTime.UTC()
	if ended != nil {
		r.EndTime = ended.UTC()
	}
	return r, nil
}

// pgStartRotationSQL records a running job unless one is running or $10,
// its PrevID, is not the latest job's ID (empty when there is none), so that
// these are reported before a reused ID. Of two jobs started at once, the
// unique index root_key_rotations_one_running refuses one, and the unique
// constraint on prev_id refuses a job started after one that began and
// ended since this statement's snapshot.
const pgStartRotationSQL = `INSERT INTO root_key_rotations (id, from_uri, to_uri,
	from_id, to_id, state, total, rewrapped, start_time, update_time, endorsement, prev_id)
SELECT $1, $2, $3, $4, $5, $6, $7, 0, $8, $8, $9::bytea, $10::text
WHERE NOT EXISTS (SELECT 1 FROM root_key_rotations WHERE state = 'RUNNING')
	AND $10::text = coalesce((SELECT id FROM root_key_rotations ORDER BY seq DESC LIMIT 1), '')`

// StartRootKeyRotation implements [Store.StartRootKeyRotation] in one
// statement.
func (s *PostgresStore) StartRootKeyRotation(ctx context.Context, r RootKeyRotation) (RootKeyRotation, error) {
	if err := ctx.Err(); err != nil {
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w", r.ID, err)
	}
	if err := validateRotation(r); err != nil {
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w", r.ID, err)
	}
	now := storeTime(s.now())
	r = startedRotation(r, now)
	tag, err := s.pool.Exec(ctx, pgStartRotationSQL,
		r.ID, r.FromURI, r.ToURI, r.FromID, r.ToID, r.State.String(), r.Total, now, blobArg(r.Endorsement), r.PrevID)
	var pe *pgconn.PgError
	switch {
	case err == nil && tag.RowsAffected() == 0:
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w: another job is running, or PrevID %q is not the latest job's ID", r.ID, ErrConflict, r.PrevID)
	case errors.As(err, &pe) && pe.ConstraintName == "root_key_rotations_one_running":
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w: another job is running", r.ID, ErrConflict)
	case errors.As(err, &pe) && pe.ConstraintName == "root_key_rotations_prev_id_unique":
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w: a job with PrevID %q was started before", r.ID, ErrConflict, r.PrevID)
	case errors.As(err, &pe) && pe.ConstraintName == "root_key_rotations_id_unique":
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w: a job with this ID was started before", r.ID, ErrAlreadyExists)
	case err != nil:
		return RootKeyRotation{}, fmt.Errorf("start root key rotation %q: %w", r.ID, s.fail(err))
	}
	return r, nil
}

// LatestRootKeyRotation implements [Store.LatestRootKeyRotation].
func (s *PostgresStore) LatestRootKeyRotation(ctx context.Context) (RootKeyRotation, error) {
	if err := ctx.Err(); err != nil {
		return RootKeyRotation{}, fmt.Errorf("latest root key rotation: %w", err)
	}
	r, err := pgScanRotation(s.pool.QueryRow(ctx, pgSelectRotationSQL+` ORDER BY seq DESC LIMIT 1`))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return RootKeyRotation{}, fmt.Errorf("latest root key rotation: none started: %w", ErrNotFound)
	case err != nil:
		return RootKeyRotation{}, fmt.Errorf("latest root key rotation: %w", s.fail(err))
	}
	return r, nil
}

// ListRootKeyRotations implements [Store.ListRootKeyRotations].
func (s *PostgresStore) ListRootKeyRotations(ctx context.Context) ([]RootKeyRotation, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list root key rotations: %w", err)
	}
	rows, err := s.pool.Query(ctx, pgSelectRotationSQL+` ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("list root key rotations: %w", s.fail(err))
	}
	jobs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RootKeyRotation, error) {
		return pgScanRotation(row)
	})
	if err != nil {
		return nil, fmt.Errorf("list root key rotations: %w", s.fail(err))
	}
	return jobs, nil
}

// RootKeyIDsInUse implements [Store.RootKeyIDsInUse].
func (s *PostgresStore) RootKeyIDsInUse(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("root key ids in use: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT root_key_id COLLATE "C" AS id FROM keys
		WHERE state <> 'DESTROYED' ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("root key ids in use: %w", s.fail(err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("root key ids in use: %w", s.fail(err))
	}
	return ids, nil
}

// ListKeysByRootKey implements [Store.ListKeysByRootKey].
func (s *PostgresStore) ListKeysByRootKey(ctx context.Context, rootKeyID, afterName string, limit int) ([]Key, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list keys by root key %q: %w", rootKeyID, err)
	}
	if checkText(rootKeyID) != nil {
		return nil, nil // no key has such a root key id
	}
	if err := checkText(afterName); err != nil {
		return nil, fmt.Errorf("list keys by root key %q: %w: name %q to start after: %v", rootKeyID, ErrInvalidKey, afterName, err)
	}
	keys, err := s.queryKeys(ctx, pgListByRootSQL, rootKeyID, afterName, pageSize(limit))
	if err != nil {
		return nil, fmt.Errorf("list keys by root key %q: %w", rootKeyID, err)
	}
	return keys, nil
}

// CountKeysByRootKey implements [Store.CountKeysByRootKey].
func (s *PostgresStore) CountKeysByRootKey(ctx context.Context, rootKeyID string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("count keys by root key %q: %w", rootKeyID, err)
	}
	if checkText(rootKeyID) != nil {
		return 0, nil
	}
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM keys WHERE root_key_id = $1 AND state <> 'DESTROYED'`, rootKeyID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count keys by root key %q: %w", rootKeyID, s.fail(err))
	}
	return n, nil
}

// pgRewrapKeysSQL re-wraps a batch of keys and counts them in the job, in
// one statement and so in one transaction and one round trip. It locks the
// job $1 while it runs, and changes nothing unless the job is running and
// re-wraps to $5. Of the keys (names $2, revisions $3, keysets $4) it
// re-wraps those whose revision is still the one given, and never a
// destroyed one. Its one row holds the job's to_id (NULL when it is not
// running) and the names of the keys it re-wrapped.
const pgRewrapKeysSQL = `WITH job AS (
	SELECT id, to_id FROM root_key_rotations
	WHERE id = $1 AND state = 'RUNNING' FOR UPDATE),
ok AS (
	SELECT id FROM job WHERE to_id = $5),
u AS (
	UPDATE keys AS k SET wrapped_keyset = v.wrapped_keyset, root_key_id = $5,
		update_time = $6, revision = k.revision + 1
	FROM ok, unnest($2::text[], $3::bigint[], $4::bytea[]) AS v (name, revision, wrapped_keyset)
	WHERE k.name = v.name AND k.revision = v.revision AND k.state <> 'DESTROYED'
	RETURNING k.name),
c AS (
	UPDATE root_key_rotations AS r
	SET rewrapped = r.rewrapped + (SELECT count(*) FROM u), update_time = $6
	FROM ok WHERE r.id = ok.id)
SELECT (SELECT to_id FROM job), array(SELECT name FROM u)`

// RewrapKeys implements [Store.RewrapKeys] in one statement: the batch goes
// to the server as arrays, in one round trip.
func (s *PostgresStore) RewrapKeys(ctx context.Context, jobID string, keys []Key) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("rewrap keys for job %q: %w", jobID, err)
	}
	if err := validateRewrap(keys); err != nil {
		return nil, fmt.Errorf("rewrap keys for job %q: %w", jobID, err)
	}
	if checkText(jobID) != nil {
		return nil, fmt.Errorf("rewrap keys for job %q: %w: no such root key rotation is running", jobID, ErrNotFound)
	}
	root := ""
	if len(keys) > 0 {
		root = keys[0].RootKeyID
		// All keys go to one root key; checkRewrapRoot below tells
		// which differs once the job's is known.
	}
	names := make([]string, len(keys))
	revisions := make([]int64, len(keys))
	keysets := make([][]byte, len(keys))
	for i, k := range keys {
		names[i], revisions[i], keysets[i] = k.Name, k.Revision, k.WrappedKeyset
	}
	var (
		toID    *string
		updated []string
	)
	err := s.pool.QueryRow(ctx, pgRewrapKeysSQL, jobID, names, revisions, keysets, root, storeTime(s.now())).Scan(&toID, &updated)
	switch {
	case err != nil:
		return nil, fmt.Errorf("rewrap keys for job %q: %w", jobID, s.fail(err))
	case toID == nil:
		return nil, fmt.Errorf("rewrap keys for job %q: %w: no such root key rotation is running", jobID, ErrNotFound)
	}
	if err := checkRewrapRoot(keys, *toID); err != nil {
		return nil, fmt.Errorf("rewrap keys for job %q: %w", jobID, err) // nothing was written
	}
	done := make(map[string]bool, len(updated))
	for _, name := range updated {
		done[name] = true
	}
	var conflicts []string
	for _, k := range keys {
		if !done[k.Name] {
			conflicts = append(conflicts, k.Name)
		}
	}
	return conflicts, nil
}

// FinishRootKeyRotation implements [Store.FinishRootKeyRotation] in one
// transaction, which locks the job.
func (s *PostgresStore) FinishRootKeyRotation(ctx context.Context, jobID string) (RootKeyRotation, error) {
	if err := ctx.Err(); err != nil {
		return RootKeyRotation{}, fmt.Errorf("finish root key rotation %q: %w", jobID, err)
	}
	if checkText(jobID) != nil {
		return RootKeyRotation{}, fmt.Errorf("finish root key rotation %q: %w: no such root key rotation is running", jobID, ErrNotFound)
	}
	now := storeTime(s.now())
	var job RootKeyRotation
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		job, err = pgScanRotation(tx.QueryRow(ctx, pgSelectRotationSQL+` WHERE id = $1 AND state = 'RUNNING' FOR UPDATE`, jobID))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: no such root key rotation is running", ErrNotFound)
		}
		if err != nil {
			return err
		}
		var left int64
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM keys WHERE root_key_id = $1 AND state <> 'DESTROYED'`, job.FromID).Scan(&left); err != nil {
			return err
		}
		if left > 0 {
			return fmt.Errorf("%w: %d keys are still wrapped by %q", ErrConflict, left, job.FromID)
		}
		_, err = tx.Exec(ctx, `UPDATE root_key_rotations SET state = 'DONE', end_time = $2, update_time = $2 WHERE id = $1`, jobID, now)
		return err
	})
	if err != nil {
		return RootKeyRotation{}, fmt.Errorf("finish root key rotation %q: %w", jobID, s.fail(err))
	}
	return finishedRotation(job, now), nil
}

// Errors.

// fail maps an error of a call to the store's errors, as pgErr does, and
// closes the pooled connections when the database was unreachable: a
// server that dropped one connection (a restart, a failover, an
// administrator) has most likely dropped them all, and the next call should
// not find them one by one.
func (s *PostgresStore) fail(err error) error {
	err = pgErr(err)
	if errors.Is(err, ErrUnavailable) {
		s.pool.Reset()
	}
	return err
}

// pgErr maps an error from pgx to the store's errors: a unique violation is
// ErrAlreadyExists, a failure to reach the database ErrUnavailable. The
// store's own sentinels, context errors and nil pass through.
func pgErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	for _, sentinel := range []error{ErrNotFound, ErrConflict, ErrInvalidKey, ErrAlreadyExists, ErrSchemaTooNew, ErrUnavailable} {
		if errors.Is(err, sentinel) {
			return err
		}
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
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
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
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return fmt.Errorf("postgres: %w", err)
}

// Migrations.

//go:embed pgmigrations/*.sql
var pgMigrationFiles embed.FS

// migrate brings the schema up to date in one transaction, under an
// advisory lock that serializes it with other replicas' migrations. It is a
// no-op on an up-to-date database and fails with ErrSchemaTooNew on a
// database migrated by a newer binary.
func (s *PostgresStore) migrate(ctx context.Context) error {
	ms, err := loadMigrations(pgMigrationFiles, "pgmigrations")
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	err = s.pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		if enc := c.Conn().PgConn().ParameterStatus("server_encoding"); enc != "UTF8" {
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
		return fmt.Errorf("migrate: %w", s.fail(err))
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
	var (
		applied []appliedMigration
		m       appliedMigration
	)
	if _, err := pgx.ForEachRow(rows, []any{&m.version, &m.name}, func() error {
		applied = append(applied, m)
		return nil
	}); err != nil {
		return 0, err
	}
	return checkApplied(applied, ms)
}
