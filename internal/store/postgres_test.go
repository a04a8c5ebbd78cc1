package store_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/internal/store/pgtest"
	"github.com/tresorkms/tresor/internal/store/storetest"
)

// The PostgreSQL tests need a running server; see package pgtest. They
// reuse testKey and benchKey from sqlite_test.go.

func openPostgres(t testing.TB, url string, opts ...store.Option) *store.PostgresStore {
	t.Helper()
	s, err := store.OpenPostgres(t.Context(), url, opts...)
	if err != nil {
		t.Fatalf("OpenPostgres(test database) err = %v, want nil", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rawPostgres connects to the database directly, bypassing the store.
func rawPostgres(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("pgx.Connect(test database) err = %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// pgMigrations is the number of migrations this binary has.
func pgMigrations(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("pgmigrations")
	if err != nil || len(entries) == 0 {
		t.Fatalf("os.ReadDir(pgmigrations) = %d entries, %v; want migrations", len(entries), err)
	}
	return len(entries)
}

// checkSchema fails t unless schema_migrations lists every migration once.
func checkSchema(t *testing.T, url string) {
	t.Helper()
	var n, maxVersion int
	if err := rawPostgres(t, url).QueryRow(t.Context(),
		`SELECT count(*), coalesce(max(version), 0) FROM schema_migrations`).Scan(&n, &maxVersion); err != nil {
		t.Fatal(err)
	}
	if want := pgMigrations(t); n != want || maxVersion != want {
		t.Errorf("schema_migrations: %d rows, max version %d; want %d, %d", n, maxVersion, want, want)
	}
}

func TestPostgres(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts ...store.Option) store.Store {
		return openPostgres(t, pgtest.NewDatabase(t), opts...)
	})
}

func TestOpenPostgresMigrationsIdempotent(t *testing.T) {
	url := pgtest.NewDatabase(t)
	for i := range 3 {
		s := openPostgres(t, url)
		if i == 0 {
			if _, err := s.CreateKey(t.Context(), testKey("k")); err != nil {
				t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
			}
		}
		if _, err := s.GetKey(t.Context(), "k"); err != nil {
			t.Errorf("GetKey(ctx, %q) after open %d err = %v, want nil", "k", i+1, err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close() err = %v, want nil", err)
		}
	}
	checkSchema(t, url)
}

// TestOpenPostgresConcurrently opens a fresh database from several
// goroutines at once, as replicas starting together would: every open
// succeeds and the schema is migrated once.
func TestOpenPostgresConcurrently(t *testing.T) {
	const replicas = 5
	url := pgtest.NewDatabase(t)
	errs := make([]error, replicas)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			<-start
			s, err := store.OpenPostgres(t.Context(), url)
			if err == nil {
				_, err = s.CreateKey(t.Context(), testKey("k"+strconv.Itoa(i)))
				s.Close()
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: OpenPostgres and CreateKey err = %v, want nil", i, err)
		}
	}
	checkSchema(t, url)
}

func TestOpenPostgresRefusesNewerSchema(t *testing.T) {
	url := pgtest.NewDatabase(t)
	openPostgres(t, url).Close()
	if _, err := rawPostgres(t, url).Exec(t.Context(), `INSERT INTO schema_migrations (version, name, applied_time)
		SELECT max(version) + 1, 'from_the_future.sql', now() FROM schema_migrations`); err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenPostgres(t.Context(), url)
	if !errors.Is(err, store.ErrSchemaTooNew) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("OpenPostgres(test database) with a newer schema err = %v, want ErrSchemaTooNew", err)
	}
}

func TestOpenPostgresRefusesForeignMigration(t *testing.T) {
	url := pgtest.NewDatabase(t)
	openPostgres(t, url).Close()
	if _, err := rawPostgres(t, url).Exec(t.Context(), `UPDATE schema_migrations SET name = 'other.sql' WHERE version = 1`); err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenPostgres(t.Context(), url)
	if err == nil {
		s.Close()
		t.Fatalf("OpenPostgres(test database) with a renamed migration err = nil, want an error")
	}
	if !strings.Contains(err.Error(), "other.sql") {
		t.Errorf("OpenPostgres(test database) with a renamed migration err = %v, want it to name other.sql", err)
	}
}

func TestOpenPostgresBadURL(t *testing.T) {
	tests := []struct {
		name, url string
		// unavailable is whether the error must be store.ErrUnavailable.
		unavailable bool
	}{
		{"not a URL", "postgres://%zz", false},
		{"bad pool_max_conns", "postgres://postgres@127.0.0.1:5432/postgres?pool_max_conns=0", false},
		{"nothing listening", "postgres://tresor:s3cret@127.0.0.1:1/tresor?sslmode=disable&connect_timeout=5", true},
		{"no such database", "postgres://postgres@127.0.0.1:5432/tresor_no_such_db?sslmode=disable", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := store.OpenPostgres(t.Context(), tt.url)
			if err == nil {
				s.Close()
				t.Fatalf("OpenPostgres(ctx, %q) err = nil, want an error", tt.url)
			}
			t.Logf("OpenPostgres(ctx, %q) err = %v", tt.url, err)
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("OpenPostgres(ctx, %q) err = %v, shows the password", tt.url, err)
			}
			if got := errors.Is(err, store.ErrUnavailable); got != tt.unavailable {
				t.Errorf("OpenPostgres(ctx, %q) err = %v; ErrUnavailable: %t, want %t", tt.url, err, got, tt.unavailable)
			}
		})
	}
}

// TestPostgresContextCanceledMidCall cancels calls that wait for a row lock
// another connection holds: they return promptly with the context's error,
// and the store works on afterwards.
func TestPostgresContextCanceledMidCall(t *testing.T) {
	url := pgtest.NewDatabase(t)
	// Two connections: the canceled calls break theirs, and the store
	// must replace them.
	s := openPostgres(t, url+"&pool_max_conns=2")
	created, err := s.CreateKey(t.Context(), testKey("k"))
	if err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	w := storeBudgetWindow("c")
	if got, err := s.ConsumeBudget(t.Context(), 1, []store.BudgetWindow{w}); err != nil || got != -1 {
		t.Fatalf("ConsumeBudget(ctx, 1, [c]) = %d, %v; want -1, nil", got, err)
	}
	blocker := rawPostgres(t, url)
	tx, err := blocker.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM keys FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM budget_counts FOR UPDATE`); err != nil {
		t.Fatal(err)
	}

	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"UpdateKey", func(ctx context.Context) error { _, err := s.UpdateKey(ctx, created); return err }},
		{"ConsumeBudget", func(ctx context.Context) error {
			_, err := s.ConsumeBudget(ctx, 1, []store.BudgetWindow{w})
			return err
		}},
	}
	for _, c := range calls {
		for _, want := range []error{context.Canceled, context.DeadlineExceeded} {
			t.Run(c.name+"/"+want.Error(), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
				if want == context.Canceled {
					ctx, cancel = context.WithCancel(t.Context())
					time.AfterFunc(200*time.Millisecond, cancel)
				}
				defer cancel()
				begin := time.Now()
				err := c.call(ctx)
				took := time.Since(begin)
				if !errors.Is(err, want) {
					t.Errorf("%s(ctx canceled while it waits for a lock) err = %v, want %v", c.name, err, want)
				}
				if took > 2*time.Second {
					t.Errorf("%s(ctx canceled after 200ms) returned after %v, want promptly", c.name, took)
				}
			})
		}
	}

	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Nothing was written, and the store works on.
	got, err := s.GetKey(t.Context(), "k")
	if err != nil || got.Revision != 1 {
		t.Fatalf("GetKey(ctx, %q) after canceled calls = rev %d, %v; want rev 1, nil", "k", got.Revision, err)
	}
	if _, err := s.UpdateKey(t.Context(), created); err != nil {
		t.Errorf("UpdateKey(ctx, %q) after canceled calls err = %v, want nil", "k", err)
	}
	w.Limit = 2
	if got, err := s.ConsumeBudget(t.Context(), 1, []store.BudgetWindow{w}); err != nil || got != -1 {
		t.Errorf("ConsumeBudget(ctx, 1, [c]) after canceled calls = %d, %v; want -1, nil (count 1 before)", got, err)
	}
}

// storeBudgetWindow is a window of counter with limit 1 that lasts two days
// from the start of the current hour.
func storeBudgetWindow(counter string) store.BudgetWindow {
	start := time.Now().UTC().Truncate(time.Hour)
	return store.BudgetWindow{Counter: counter, Start: start, End: start.Add(48 * time.Hour), Limit: 1}
}

// terminateBackends drops every connection to the database but conn's own,
// on the server's side, as a restart or an administrator would.
func terminateBackends(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresReconnects drops the store's connections on the server's
// side: each kind of call may fail with ErrUnavailable once, and the store
// then reconnects.
func TestPostgresReconnects(t *testing.T) {
	url := pgtest.NewDatabase(t)
	s := openPostgres(t, url)
	k, err := s.CreateKey(t.Context(), testKey("k"))
	if err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	if _, err := s.StartRootKeyRotation(t.Context(), store.RootKeyRotation{
		ID: "j", FromURI: "local-file:///old", ToURI: "local-file:///new", FromID: "root-1", ToID: "root-2",
	}); err != nil {
		t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", "j", err)
	}
	raw := rawPostgres(t, url)
	calls := []struct {
		name string
		call func() error
	}{
		{"GetKey", func() error { _, err := s.GetKey(t.Context(), "k"); return err }},
		{"UpdateKey", func() error {
			got, err := s.GetKey(t.Context(), "k")
			if err == nil {
				_, err = s.UpdateKey(t.Context(), got)
			}
			return err
		}},
		{"ReserveUses", func() error { _, err := s.ReserveUses(t.Context(), "k", 1, 1, 1000); return err }},
		{"AcquireLease", func() error { _, err := s.AcquireLease(t.Context(), "job", "a", time.Minute); return err }},
		{"KeyRevisions", func() error { _, err := s.KeyRevisions(t.Context(), []string{"k"}); return err }},
		{"ListKeysByRootKey", func() error { _, err := s.ListKeysByRootKey(t.Context(), "root-1", "", 10); return err }},
		{"LatestRootKeyRotation", func() error { _, err := s.LatestRootKeyRotation(t.Context()); return err }},
		{"RewrapKeys", func() error { _, err := s.RewrapKeys(t.Context(), "j", nil); return err }},
		{"ConsumeBudget", func() error {
			_, err := s.ConsumeBudget(t.Context(), 1, []store.BudgetWindow{storeBudgetWindow("c")})
			return err
		}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			if err := c.call(); err != nil { // the pool has a connection
				t.Fatalf("%s before the connections were dropped err = %v, want nil", c.name, err)
			}
			terminateBackends(t, raw)
			err := c.call()
			t.Logf("%s on dropped connections: %v", c.name, err)
			if err != nil && !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("%s on dropped connections err = %v, want nil or ErrUnavailable", c.name, err)
			}
			if err := c.call(); err != nil {
				t.Errorf("%s again err = %v, want nil (the store reconnects)", c.name, err)
			}
		})
	}
	if got, err := s.GetKey(t.Context(), "k"); err != nil || got.Revision < k.Revision+1 {
		t.Errorf("GetKey(ctx, %q) = rev %d, %v; want at least rev %d, nil", "k", got.Revision, err, k.Revision+1)
	}
}

// TestPostgresTerminatedUnderLoad drops the store's connections over and
// over while goroutines re-wrap keys, reserve uses and update a key. Every
// call succeeds or fails with ErrUnavailable, and no write is ever half
// done: the job's count is the number of keys re-wrapped, each key's label
// agrees with its revision, and the uses counted are those granted, give
// or take the calls whose outcome was lost with the connection.
func TestPostgresTerminatedUnderLoad(t *testing.T) {
	const (
		keys  = 20000
		kills = 15
	)
	url := pgtest.NewDatabase(t)
	s := openPostgres(t, url+"&pool_max_conns=4")
	insertKeysPG(t, rawPostgres(t, url), keys, "root-1")
	counter := testKey("counter")
	counter.RootKeyID = "root-other"
	counter.Labels = map[string]string{"n": "0"}
	if _, err := s.CreateKey(t.Context(), counter); err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "counter", err)
	}
	if _, err := s.StartRootKeyRotation(t.Context(), store.RootKeyRotation{
		ID: "j", FromURI: "local-file:///old", ToURI: "local-file:///new", FromID: "root-1", ToID: "root-2",
	}); err != nil {
		t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", "j", err)
	}

	var (
		mu          sync.Mutex
		unavailable = map[string]int{}
	)
	// check fails t unless err is nil or ErrUnavailable, and reports
	// whether it was nil.
	check := func(what string, err error) bool {
		if err == nil {
			return true
		}
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s while connections drop err = %v, want nil or ErrUnavailable", what, err)
		}
		mu.Lock()
		unavailable[what]++
		mu.Unlock()
		return false
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var granted, reserveFailed int64
	wg.Go(func() { // the rotation job
		for {
			select {
			case <-done:
				return
			default:
			}
			batch, err := s.ListKeysByRootKey(t.Context(), "root-1", "", 5)
			if !check("ListKeysByRootKey", err) {
				continue
			}
			if len(batch) == 0 {
				return
			}
			for i := range batch {
				batch[i].RootKeyID, batch[i].WrappedKeyset = "root-2", []byte("rewrapped "+batch[i].Name)
			}
			_, err = s.RewrapKeys(t.Context(), "j", batch)
			check("RewrapKeys", err)
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			n, err := s.ReserveUses(t.Context(), "counter", 1, 1, 1<<40)
			if check("ReserveUses", err) {
				granted += n
			} else {
				reserveFailed++
			}
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			k, err := s.GetKey(t.Context(), "counter")
			if !check("GetKey", err) {
				continue
			}
			n, _ := strconv.Atoi(k.Labels["n"])
			k.Labels["n"] = strconv.Itoa(n + 1)
			if _, err := s.UpdateKey(t.Context(), k); !errors.Is(err, store.ErrConflict) {
				check("UpdateKey", err)
			}
		}
	})
	raw := rawPostgres(t, url)
	for range kills {
		time.Sleep(40 * time.Millisecond)
		terminateBackends(t, raw)
	}
	close(done)
	wg.Wait()
	t.Logf("calls that failed with ErrUnavailable: %v; uses granted %d", unavailable, granted)
	if len(unavailable) == 0 {
		t.Errorf("no call failed while connections dropped %d times; the test tests nothing", kills)
	}
	// The first call after the last drop may find a dropped connection;
	// the next one reconnects.
	if _, err := s.GetKey(t.Context(), "counter"); err != nil && !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("GetKey(ctx, %q) after the last drop err = %v, want nil or ErrUnavailable", "counter", err)
	}

	job, err := s.LatestRootKeyRotation(t.Context())
	if err != nil {
		t.Fatalf("LatestRootKeyRotation(ctx) err = %v, want nil", err)
	}
	moved, err := s.CountKeysByRootKey(t.Context(), "root-2")
	if err != nil {
		t.Fatalf("CountKeysByRootKey(ctx, %q) err = %v, want nil", "root-2", err)
	}
	if job.Rewrapped != moved {
		t.Errorf("job counts %d keys re-wrapped, but %d keys are under root-2: a half-done RewrapKeys", job.Rewrapped, moved)
	}
	for after := ""; ; {
		listed, err := s.ListKeysByRootKey(t.Context(), "root-2", after, store.MaxPageSize)
		if err != nil {
			t.Fatalf("ListKeysByRootKey(ctx, %q) err = %v, want nil", "root-2", err)
		}
		if len(listed) == 0 {
			break
		}
		for _, k := range listed {
			if string(k.WrappedKeyset) != "rewrapped "+k.Name || k.Revision != 2 {
				t.Errorf("key %q under root-2 = keyset %q, rev %d; want %q, rev 2", k.Name, k.WrappedKeyset, k.Revision, "rewrapped "+k.Name)
			}
		}
		after = listed[len(listed)-1].Name
	}
	got, err := s.GetKey(t.Context(), "counter")
	if err != nil {
		t.Fatalf("GetKey(ctx, %q) err = %v, want nil", "counter", err)
	}
	if n, _ := strconv.ParseInt(got.Labels["n"], 10, 64); n != got.Revision-1 {
		t.Errorf("key %q has label n=%d at revision %d: a half-done UpdateKey", "counter", n, got.Revision)
	}
	uses, err := s.Uses(t.Context(), "counter")
	if err != nil {
		t.Fatalf("Uses(ctx, %q) err = %v, want nil", "counter", err)
	}
	if uses[1] < granted || uses[1] > granted+reserveFailed {
		t.Errorf("Uses(ctx, %q)[1] = %d; want between %d granted and %d (granted plus calls that failed)", "counter", uses[1], granted, granted+reserveFailed)
	}
}

// insertKeysPG inserts n keys named key-0000000 ... directly, in one
// statement: each with one version, a 200-byte keyset and revision 1,
// wrapped by root.
func insertKeysPG(t testing.TB, conn *pgx.Conn, n int, root string) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), `WITH k AS (
		INSERT INTO keys (name, type, state, primary_version, min_decryption_version,
			rotation_period_ns, labels, wrapped_keyset, root_key_id, create_time, update_time, revision)
		SELECT format('key-%s', lpad(i::text, 7, '0')), 'AES256_GCM', 'ENABLED', 1, 0, 0,
			'{"team": "payments"}', convert_to(repeat('k', 200), 'UTF8'), $2, now(), now(), 1
		FROM generate_series(1, $1) AS i
		RETURNING name)
		INSERT INTO key_versions (key_name, number, tink_key_id, create_time)
		SELECT name, 1, 7, now() FROM k`, n, root); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresMigratesForward opens a database that an older tresor
// created and wrote: its keys read back with the new fields zero, and every
// new capability works on it.
func TestPostgresMigratesForward(t *testing.T) {
	url := pgtest.NewDatabase(t)
	raw := rawPostgres(t, url)
	if _, err := raw.Exec(t.Context(), `CREATE TABLE schema_migrations (
		version integer NOT NULL PRIMARY KEY, name text NOT NULL, applied_time timestamptz NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"0001_create_keys.sql", "0002_create_budget_counts.sql"} {
		b, err := os.ReadFile("pgmigrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Exec(t.Context(), string(b)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := raw.Exec(t.Context(), `INSERT INTO schema_migrations VALUES ($1, $2, now())`, i+1, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := raw.Exec(t.Context(), `INSERT INTO keys (name, type, state, primary_version,
		min_decryption_version, rotation_period_ns, labels, wrapped_keyset, root_key_id,
		create_time, update_time, revision)
		VALUES ('old', 'AES256_GCM', 'ENABLED', 1, 0, 0, '{"team": "cards"}', '\x0102', 'root-1',
		'2024-01-02T03:04:05.123456Z', '2024-01-02T03:04:05.123456Z', 3);
		INSERT INTO key_versions VALUES ('old', 1, 7, '2024-01-02T03:04:05.123456Z')`); err != nil {
		t.Fatal(err)
	}
	s := openPostgres(t, url)
	checkSchema(t, url)
	checkMigratedForward(t, s)
}

func TestPostgresClock(t *testing.T) {
	testClock(t, func(opts ...store.Option) store.Store {
		return openPostgres(t, pgtest.NewDatabase(t), opts...)
	})
}

// TestPostgresTwoHandles opens one database twice, as two replicas would,
// and checks that compare-and-swap and budgets hold across them.
func TestPostgresTwoHandles(t *testing.T) {
	url := pgtest.NewDatabase(t)
	handles := []*store.PostgresStore{openPostgres(t, url), openPostgres(t, url)}
	created, err := handles[0].CreateKey(t.Context(), testKey("k"))
	if err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	const (
		n     = 8
		calls = 50
		limit = 300
	)
	start := time.Now().Truncate(time.Hour)
	// Two windows, given in either order: the store must not deadlock.
	a := store.BudgetWindow{Counter: "a", Start: start, End: start.Add(48 * time.Hour), Limit: limit}
	b := store.BudgetWindow{Counter: "b", Start: start, End: start.Add(48 * time.Hour), Limit: limit + 1}
	updateErrs := make([]error, 2*n)
	counted := make([]int, 2*n)
	begin := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 2 * n {
		s := handles[g%2]
		wg.Go(func() {
			k := created
			k.Labels = map[string]string{"writer": strconv.Itoa(g)}
			<-begin
			_, updateErrs[g] = s.UpdateKey(t.Context(), k)
			windows := []store.BudgetWindow{a, b}
			if g%4 >= 2 {
				windows = []store.BudgetWindow{b, a}
			}
			for range calls {
				got, err := s.ConsumeBudget(t.Context(), 1, windows)
				if err != nil || (got != -1 && windows[got].Counter != "a") {
					t.Errorf("ConsumeBudget(ctx, 1, [%s %s]) = %d, %v; want -1 or a's index, nil", windows[0].Counter, windows[1].Counter, got, err)
					return
				}
				if got == -1 {
					counted[g]++
				}
			}
		})
	}
	close(begin)
	wg.Wait()
	wins := 0
	for _, err := range updateErrs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("UpdateKey(ctx, %q rev 1) err = %v, want nil or ErrConflict", "k", err)
		}
	}
	if wins != 1 {
		t.Errorf("UpdateKey(ctx, %q rev 1) from two handles: %d succeeded, want 1", "k", wins)
	}
	total := 0
	for _, c := range counted {
		total += c
	}
	if total != limit {
		t.Errorf("ConsumeBudget from two handles counted %d of %d calls, want %d", total, 2*n*calls, limit)
	}
}

// budgetRowsPG returns the counters and window starts (Unix seconds) of the
// budget_counts rows, read directly.
func budgetRowsPG(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), `SELECT counter, window_start FROM budget_counts ORDER BY counter, window_start`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var counter string
		var start time.Time
		if err := rows.Scan(&counter, &start); err != nil {
			t.Fatal(err)
		}
		got = append(got, counter+"@"+strconv.FormatInt(start.Unix(), 10))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestPostgresBudgetSweep(t *testing.T) {
	url := pgtest.NewDatabase(t)
	raw := rawPostgres(t, url)
	testBudgetSweep(t, func(opts ...store.Option) store.Store { return openPostgres(t, url, opts...) },
		func() []string { return budgetRowsPG(t, raw) })
}

func TestPostgresBudgetSweepBatches(t *testing.T) {
	url := pgtest.NewDatabase(t)
	raw := rawPostgres(t, url)
	testBudgetSweepBatches(t, func(opts ...store.Option) store.Store { return openPostgres(t, url, opts...) },
		func() []string { return budgetRowsPG(t, raw) })
}

// TestPostgresBudgetDuplicateWindows checks that a window given twice is
// counted twice and checked against each limit in turn, as SQLite does.
func TestPostgresBudgetDuplicateWindows(t *testing.T) {
	s := openPostgres(t, pgtest.NewDatabase(t))
	w := storeBudgetWindow("dup")
	w5, w10 := w, w
	w5.Limit, w10.Limit = 5, 10
	steps := []struct {
		windows []store.BudgetWindow
		want    int
	}{
		{[]store.BudgetWindow{w10, w10}, -1}, // 6
		{[]store.BudgetWindow{w10, w5}, 1},   // 9 > 5
		{[]store.BudgetWindow{w10, w10}, 1},  // 12 > 10
		{[]store.BudgetWindow{w10}, -1},      // 9
	}
	for i, st := range steps {
		if got, err := s.ConsumeBudget(t.Context(), 3, st.windows); err != nil || got != st.want {
			t.Fatalf("step %d: ConsumeBudget(ctx, 3, %d windows) = %d, %v; want %d, nil", i, len(st.windows), got, err, st.want)
		}
	}
}

func TestPostgresBudgetTimeRange(t *testing.T) {
	s := openPostgres(t, pgtest.NewDatabase(t))
	w := storeBudgetWindow("c")
	w.End = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := s.ConsumeBudget(t.Context(), 1, []store.BudgetWindow{w}); !errors.Is(err, store.ErrInvalidBudget) {
		t.Errorf("ConsumeBudget(ctx, 1, [window ending in year 10000]) err = %v, want ErrInvalidBudget", err)
	}
}

func TestPostgresClosed(t *testing.T) {
	testClosed(t, openPostgres(t, pgtest.NewDatabase(t)))
}

func BenchmarkPostgresGetKey(b *testing.B) {
	s := openPostgres(b, pgtest.NewDatabase(b))
	if _, err := s.CreateKey(b.Context(), benchKey("k")); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.GetKey(b.Context(), "k"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.GetKey(context.Background(), "k"); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func BenchmarkPostgresUpdateKey(b *testing.B) {
	s := openPostgres(b, pgtest.NewDatabase(b))
	k, err := s.CreateKey(b.Context(), benchKey("k"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if k, err = s.UpdateKey(b.Context(), k); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPostgresRewrapKeys re-wraps 100,000 keys in batches of 500 on
// PostgreSQL; see benchmarkRewrapKeys.
func BenchmarkPostgresRewrapKeys(b *testing.B) {
	for _, withList := range []bool{false, true} {
		name := "RewrapKeys"
		if withList {
			name = "ListAndRewrapKeys"
		}
		b.Run(name, func(b *testing.B) {
			url := pgtest.NewDatabase(b)
			s := openPostgres(b, url)
			raw := rawPostgres(b, url)
			insertKeysPG(b, raw, rewrapBenchKeys, "root-a")
			if _, err := raw.Exec(b.Context(), `VACUUM ANALYZE`); err != nil {
				b.Fatal(err)
			}
			benchmarkRewrapKeys(b, s, withList)
		})
	}
}

func BenchmarkPostgresConsumeBudget(b *testing.B) {
	s := openPostgres(b, pgtest.NewDatabase(b))
	start := time.Now().Truncate(time.Hour)
	windows := []store.BudgetWindow{
		{Counter: "decrypt/restricted/1s/=spiffe://bank.example/payments", Start: start, End: start.Add(time.Hour), Limit: 1 << 62},
		{Counter: "decrypt/restricted/24h0m0s/=spiffe://bank.example/payments", Start: start, End: start.Add(24 * time.Hour), Limit: 1 << 62},
	}
	for b.Loop() {
		if got, err := s.ConsumeBudget(b.Context(), 1, windows); err != nil || got != -1 {
			b.Fatalf("ConsumeBudget(ctx, 1, ...) = %d, %v; want -1, nil", got, err)
		}
	}
}
