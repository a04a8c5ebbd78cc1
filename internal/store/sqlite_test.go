package store_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/internal/store/storetest"
)

func openSQLite(t testing.TB, path string, opts ...store.Option) *store.SQLite {
	t.Helper()
	s, err := store.OpenSQLite(t.Context(), path, opts...)
	if err != nil {
		t.Fatalf("OpenSQLite(ctx, %q) err = %v, want nil", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opts ...store.Option) store.Store {
		return openSQLite(t, filepath.Join(t.TempDir(), "tresor.db"), opts...)
	})
}

func testKey(name string) store.Key {
	return store.Key{
		Name:           name,
		Type:           store.KeyTypeAES256GCM,
		State:          store.KeyStateEnabled,
		PrimaryVersion: 1,
		Labels:         map[string]string{"team": "payments"},
		Versions:       []store.Version{{Number: 1, TinkKeyID: 7, CreateTime: time.Date(2025, 5, 6, 7, 8, 9, 10, time.UTC)}},
		WrappedKeyset:  []byte("wrapped"),
		RootKeyID:      "root-1",
	}
}

// rawDB opens the database file directly, bypassing the store.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatalf("sql.Open(sqlite, %q) err = %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestOpenSQLiteMigrationsIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	for i := range 3 {
		s := openSQLite(t, path)
		if i == 0 {
			if _, err := s.CreateKey(t.Context(), testKey("k")); err != nil {
				t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close() err = %v, want nil", err)
		}
	}
	db := rawDB(t, path)
	var n, maxVersion int
	if err := db.QueryRow(`SELECT count(*), max(version) FROM schema_migrations`).Scan(&n, &maxVersion); err != nil {
		t.Fatal(err)
	}
	if n != maxVersion || n < 1 {
		t.Errorf("schema_migrations after 3 opens: %d rows, max version %d; want one row per version", n, maxVersion)
	}
}

func TestSQLitePersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	s := openSQLite(t, path)
	created, err := s.CreateKey(t.Context(), testKey("k"))
	if err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	created.Versions = append(created.Versions, store.Version{Number: 2, TinkKeyID: 8})
	created.PrimaryVersion = 2
	want, err := s.UpdateKey(t.Context(), created)
	if err != nil {
		t.Fatalf("UpdateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close() err = %v, want nil", err)
	}

	s = openSQLite(t, path)
	got, err := s.GetKey(t.Context(), "k")
	if err != nil {
		t.Fatalf("GetKey(ctx, %q) after reopen err = %v, want nil", "k", err)
	}
	if got.Revision != 2 || len(got.Versions) != 2 || got.PrimaryVersion != 2 ||
		!got.UpdateTime.Equal(want.UpdateTime) || !got.CreateTime.Equal(want.CreateTime) ||
		got.Labels["team"] != "payments" || string(got.WrappedKeyset) != "wrapped" {
		t.Errorf("GetKey(ctx, %q) after reopen = %+v, want %+v", "k", got, want)
	}
}

func TestOpenSQLiteRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	s := openSQLite(t, path)
	if _, err := s.CreateKey(t.Context(), testKey("k")); err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	s.Close()
	db := rawDB(t, path)
	if _, err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_time)
		SELECT max(version) + 1, 'from_the_future.sql', 0 FROM schema_migrations`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s2, err := store.OpenSQLite(t.Context(), path)
	if !errors.Is(err, store.ErrSchemaTooNew) {
		if s2 != nil {
			s2.Close()
		}
		t.Fatalf("OpenSQLite(ctx, %q) with a newer schema err = %v, want ErrSchemaTooNew", path, err)
	}
}

func TestOpenSQLiteRefusesForeignMigration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	openSQLite(t, path).Close()
	db := rawDB(t, path)
	if _, err := db.Exec(`UPDATE schema_migrations SET name = 'other.sql' WHERE version = 1`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := store.OpenSQLite(t.Context(), path)
	if err == nil {
		s.Close()
		t.Fatalf("OpenSQLite(ctx, %q) with a renamed migration err = nil, want an error", path)
	}
	if !strings.Contains(err.Error(), "other.sql") {
		t.Errorf("OpenSQLite(ctx, %q) with a renamed migration err = %v, want it to name other.sql", path, err)
	}
}

func TestOpenSQLiteBadPath(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
	}{
		{"empty", ""},
		{"in-memory", ":memory:"},
		{"URI", "file:" + filepath.Join(dir, "x.db") + "?mode=memory"},
		{"missing directory", filepath.Join(dir, "no", "such", "dir", "x.db")},
		{"directory", dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := store.OpenSQLite(t.Context(), tt.path)
			if err == nil {
				s.Close()
				t.Fatalf("OpenSQLite(ctx, %q) err = nil, want an error", tt.path)
			}
		})
	}
}

func TestOpenSQLiteOddPath(t *testing.T) {
	dir := t.TempDir()
	for _, base := range []string{"a?b.db", "a#b.db", "a%20b.db", "a b.db", "mode=memory"} {
		t.Run(base, func(t *testing.T) {
			path := filepath.Join(dir, base)
			s := openSQLite(t, path)
			if _, err := s.CreateKey(t.Context(), testKey("k")); err != nil {
				t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
			}
			s.Close()
			fi, err := os.Stat(path)
			if err != nil || fi.Size() == 0 {
				t.Fatalf("database %q: stat = %v, %v; want a non-empty file", path, fi, err)
			}
			s = openSQLite(t, path)
			if _, err := s.GetKey(t.Context(), "k"); err != nil {
				t.Errorf("GetKey(ctx, %q) after reopen of %q err = %v, want nil", "k", path, err)
			}
		})
	}
}

func TestOpenSQLiteFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	s := openSQLite(t, path)
	if _, err := s.CreateKey(t.Context(), testKey("k")); err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode&0o077 != 0 {
			t.Errorf("%s mode = %v, want no access for group and others", filepath.Base(p), mode)
		}
	}
}

func TestSQLiteSettings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	openSQLite(t, path)
	var mode string
	if err := rawDB(t, path).QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "wal" {
		t.Errorf("journal_mode = %q, want wal", mode)
	}
}

func TestSQLiteClock(t *testing.T) {
	testClock(t, func(opts ...store.Option) store.Store {
		return openSQLite(t, filepath.Join(t.TempDir(), "tresor.db"), opts...)
	})
}

// TestSQLiteTwoHandles opens one database twice, as two processes would, and
// checks that compare-and-swap holds across them.
func TestSQLiteTwoHandles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	a, b := openSQLite(t, path), openSQLite(t, path)
	created, err := a.CreateKey(t.Context(), testKey("k"))
	if err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	const n = 8
	errs := make([]error, 2*n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 2 * n {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			k := created
			k.Labels = map[string]string{"writer": strconv.Itoa(i)}
			<-start
			_, errs[i] = s.UpdateKey(t.Context(), k)
		})
	}
	close(start)
	wg.Wait()
	wins := 0
	for _, err := range errs {
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
	for _, s := range []store.Store{a, b} {
		if got, err := s.GetKey(t.Context(), "k"); err != nil || got.Revision != 2 {
			t.Errorf("GetKey(ctx, %q) = rev %d, %v; want rev 2, nil", "k", got.Revision, err)
		}
	}
}

func TestSQLiteClosed(t *testing.T) {
	testClosed(t, openSQLite(t, filepath.Join(t.TempDir(), "tresor.db")))
}

// budgetRows returns the counters and window starts (Unix seconds) of the
// budget_counts rows, read from the file directly.
func budgetRows(t *testing.T, path string) []string {
	t.Helper()
	rows, err := rawDB(t, path).Query(`SELECT counter, window_start FROM budget_counts ORDER BY counter, window_start`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var counter string
		var start int64
		if err := rows.Scan(&counter, &start); err != nil {
			t.Fatal(err)
		}
		got = append(got, counter+"@"+strconv.FormatInt(time.UnixMicro(start).Unix(), 10))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestSQLiteBudgetSweep(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	testBudgetSweep(t, func(opts ...store.Option) store.Store { return openSQLite(t, path, opts...) },
		func() []string { return budgetRows(t, path) })
}

func TestSQLiteBudgetSweepBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	testBudgetSweepBatches(t, func(opts ...store.Option) store.Store { return openSQLite(t, path, opts...) },
		func() []string { return budgetRows(t, path) })
}

// TestSQLiteBudgetTwoHandles checks that budgets hold across two handles on
// one database, as they would across two processes.
func TestSQLiteBudgetTwoHandles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	handles := []*store.SQLite{openSQLite(t, path), openSQLite(t, path)}
	const (
		goroutines = 8
		calls      = 50
		limit      = 300
	)
	start := time.Now().Truncate(time.Hour)
	w := []store.BudgetWindow{{Counter: "c", Start: start, End: start.Add(48 * time.Hour), Limit: limit}}
	var counted [2 * goroutines]int
	var wg sync.WaitGroup
	for g := range 2 * goroutines {
		s := handles[g%2]
		wg.Go(func() {
			for range calls {
				got, err := s.ConsumeBudget(t.Context(), 1, w)
				if err != nil || (got != -1 && got != 0) {
					t.Errorf("ConsumeBudget(ctx, 1, [c]) = %d, %v; want -1 or 0, nil", got, err)
					return
				}
				if got == -1 {
					counted[g]++
				}
			}
		})
	}
	wg.Wait()
	total := 0
	for _, n := range counted {
		total += n
	}
	if total != limit {
		t.Errorf("ConsumeBudget from two handles counted %d of %d calls, want %d", total, 2*goroutines*calls, limit)
	}
}

// TestSQLiteMigratesForward opens a database that an older tresor created
// and wrote: its keys read back with the new fields zero, and every new
// capability works on it.
func TestSQLiteMigratesForward(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	db := rawDB(t, path)
	if _, err := db.Exec(`CREATE TABLE schema_migrations (
		version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, applied_time INTEGER NOT NULL) STRICT`); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"0001_create_keys.sql", "0002_create_budget_counts.sql"} {
		b, err := os.ReadFile("migrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(b)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations VALUES (?, ?, 0)`, i+1, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`INSERT INTO keys (name, type, state, primary_version,
		min_decryption_version, rotation_period_ns, labels, wrapped_keyset, root_key_id,
		create_time, update_time, revision)
		VALUES ('old', 'AES256_GCM', 'ENABLED', 1, 0, 0, '{"team": "cards"}', x'0102', 'root-1',
		1704164645123456, 1704164645123456, 3);
		INSERT INTO key_versions VALUES ('old', 1, 7, 1704164645123456)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	checkMigratedForward(t, openSQLite(t, path))
}

// checkMigratedForward checks a store opened on a database that holds the
// key "old" (revision 3, version 1, root key root-1) written before the
// migrations of key lifecycles, uses, leases and rotations.
func checkMigratedForward(t *testing.T, s store.Store) {
	t.Helper()
	k, err := s.GetKey(t.Context(), "old")
	if err != nil {
		t.Fatalf("GetKey(ctx, %q) err = %v, want nil", "old", err)
	}
	if k.Revision != 3 || k.State != store.KeyStateEnabled || string(k.WrappedKeyset) != "\x01\x02" ||
		!k.DeletionTime.IsZero() || !k.DestroyTime.IsZero() || k.UsageLimit != 0 || k.RetireAfter != 0 || k.RetireAfterVersions != 0 {
		t.Errorf("GetKey(ctx, %q) = %+v; want rev 3, ENABLED, keyset 01 02 and zero new fields", "old", k)
	}
	if n, err := s.ReserveUses(t.Context(), "old", 1, 2, 10); err != nil || n != 2 {
		t.Errorf("ReserveUses(ctx, %q, 1, 2, 10) = %d, %v; want 2, nil", "old", n, err)
	}
	if ok, err := s.AcquireLease(t.Context(), "job", "a", time.Minute); err != nil || !ok {
		t.Errorf("AcquireLease(ctx, %q, %q) = %t, %v; want true, nil", "job", "a", ok, err)
	}
	if n, err := s.CountKeysByRootKey(t.Context(), "root-1"); err != nil || n != 1 {
		t.Errorf("CountKeysByRootKey(ctx, %q) = %d, %v; want 1, nil", "root-1", n, err)
	}
	k.State, k.DeletionTime = store.KeyStateDeletionScheduled, time.Now()
	if k, err = s.UpdateKey(t.Context(), k); err != nil {
		t.Fatalf("UpdateKey(ctx, %q) to DELETION_SCHEDULED err = %v, want nil", "old", err)
	}
	k.State, k.DeletionTime, k.DestroyTime, k.WrappedKeyset = store.KeyStateDestroyed, time.Time{}, time.Now(), nil
	if _, err = s.UpdateKey(t.Context(), k); err != nil {
		t.Fatalf("UpdateKey(ctx, %q) to DESTROYED err = %v, want nil", "old", err)
	}
	if n, err := s.CountKeysByRootKey(t.Context(), "root-1"); err != nil || n != 0 {
		t.Errorf("CountKeysByRootKey(ctx, %q) after destruction = %d, %v; want 0, nil", "root-1", n, err)
	}
}

// TestSQLiteDestroyErasesKeyset destroys a key and then looks for its
// wrapped keyset, which UpdateKey wrote three times, in the database and
// its write-ahead log while the store is open: no copy is left.
func TestSQLiteDestroyErasesKeyset(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	s := openSQLite(t, path)
	marker := []byte("WRAPPED-KEYSET-MARKER-0123456789abcdef")
	k := testKey("k")
	k.WrappedKeyset = bytes.Repeat(marker, 10)
	neighbour := testKey("neighbour") // shares the page
	if _, err := s.CreateKey(t.Context(), neighbour); err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "neighbour", err)
	}
	k, err := s.CreateKey(t.Context(), k)
	if err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	for range 2 {
		k.Labels["n"] += "x" // the row moves within its page
		if k, err = s.UpdateKey(t.Context(), k); err != nil {
			t.Fatalf("UpdateKey(ctx, %q) err = %v, want nil", "k", err)
		}
	}
	copies := func() int {
		n := 0
		for _, p := range []string{path, path + "-wal"} {
			b, err := os.ReadFile(p)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			n += bytes.Count(b, marker)
		}
		return n
	}
	if n := copies(); n == 0 {
		t.Fatalf("the keyset is nowhere in the files before destruction; the test tests nothing")
	}
	k.State, k.DestroyTime, k.WrappedKeyset = store.KeyStateDestroyed, time.Now(), nil
	if _, err := s.UpdateKey(t.Context(), k); err != nil {
		t.Fatalf("UpdateKey(ctx, %q) to DESTROYED err = %v, want nil", "k", err)
	}
	if n := copies(); n != 0 {
		t.Errorf("after destruction the database and its log hold %d copies of the wrapped keyset's marker, want 0", n)
	}
	if got, err := s.GetKey(t.Context(), "neighbour"); err != nil || !bytes.Equal(got.WrappedKeyset, neighbour.WrappedKeyset) {
		t.Errorf("GetKey(ctx, %q) after another key was destroyed = %q, %v; want its keyset, nil", "neighbour", got.WrappedKeyset, err)
	}
}

// rewrapBenchKeys is how many keys the RewrapKeys benchmarks re-wrap, and
// rewrapBenchBatch how many each RewrapKeys call takes: the issue's
// measurement.
const (
	rewrapBenchKeys  = 100_000
	rewrapBenchBatch = 500
)

// benchmarkRewrapKeys runs root-key rotation jobs over the keys of s, all
// wrapped by "root-a" to begin with, one batch of rewrapBenchBatch keys per
// iteration: read the batch (ListKeysByRootKey, outside the timer unless
// withList) and store it re-wrapped (RewrapKeys). When a job has moved every
// key it finishes and the next moves them back. It reports keys/s.
func benchmarkRewrapKeys(b *testing.B, s store.Store, withList bool) {
	roots := [2]string{"root-a", "root-b"}
	jobs := 0
	startJob := func() {
		from, to := roots[jobs%2], roots[(jobs+1)%2]
		prev := "" // each job names the one before it
		if jobs > 0 {
			prev = "bench-" + strconv.Itoa(jobs-1)
		}
		if _, err := s.StartRootKeyRotation(b.Context(), store.RootKeyRotation{
			ID: "bench-" + strconv.Itoa(jobs), FromURI: "local-file:///" + from, ToURI: "local-file:///" + to,
			FromID: from, ToID: to, Total: rewrapBenchKeys, PrevID: prev,
		}); err != nil {
			b.Fatal(err)
		}
	}
	startJob()
	keyset := bytes.Repeat([]byte{0xA5}, 300)
	after := ""
	rewrapped := 0
	for b.Loop() {
		if !withList {
			b.StopTimer()
		}
		from, to, id := roots[jobs%2], roots[(jobs+1)%2], "bench-"+strconv.Itoa(jobs)
		batch, err := s.ListKeysByRootKey(b.Context(), from, after, rewrapBenchBatch)
		if err != nil {
			b.Fatal(err)
		}
		if len(batch) == 0 {
			b.StopTimer()
			if _, err := s.FinishRootKeyRotation(b.Context(), id); err != nil {
				b.Fatal(err)
			}
			jobs++
			startJob()
			from, to, id, after = roots[jobs%2], roots[(jobs+1)%2], "bench-"+strconv.Itoa(jobs), ""
			if batch, err = s.ListKeysByRootKey(b.Context(), from, after, rewrapBenchBatch); err != nil || len(batch) == 0 {
				b.Fatalf("ListKeysByRootKey(ctx, %q, \"\", %d) = %d keys, %v", from, rewrapBenchBatch, len(batch), err)
			}
			if withList {
				b.StartTimer()
			}
		}
		for i := range batch {
			batch[i].WrappedKeyset, batch[i].RootKeyID = keyset, to
		}
		after = batch[len(batch)-1].Name
		b.StartTimer()
		conflicts, err := s.RewrapKeys(b.Context(), id, batch)
		if err != nil || len(conflicts) != 0 {
			b.Fatalf("RewrapKeys(ctx, %q, %d keys) = %d conflicts, %v; want none, nil", id, len(batch), len(conflicts), err)
		}
		rewrapped += len(batch)
	}
	b.ReportMetric(float64(rewrapped)/b.Elapsed().Seconds(), "keys/s")
}

// BenchmarkRewrapKeys re-wraps 100,000 keys in batches of 500 on SQLite;
// see benchmarkRewrapKeys.
func BenchmarkRewrapKeys(b *testing.B) {
	for _, withList := range []bool{false, true} {
		name := "RewrapKeys"
		if withList {
			name = "ListAndRewrapKeys"
		}
		b.Run(name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "tresor.db")
			s := openSQLite(b, path)
			insertKeysSQLite(b, path, rewrapBenchKeys, "root-a")
			benchmarkRewrapKeys(b, s, withList)
		})
	}
}

// insertKeysSQLite inserts n keys named key-0000001 ... directly, in one
// transaction: each with one version, a 300-byte keyset and revision 1,
// wrapped by root.
func insertKeysSQLite(t testing.TB, path string, n int, root string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`WITH RECURSIVE i (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM i WHERE i < ?1)
		INSERT INTO keys (name, type, state, primary_version, min_decryption_version,
			rotation_period_ns, labels, wrapped_keyset, root_key_id, create_time, update_time, revision)
		SELECT printf('key-%07d', i), 'AES256_GCM', 'ENABLED', 1, 0, 0, '{"team": "payments"}',
			randomblob(300), ?2, 1700000000000000, 1700000000000000, 1 FROM i;
		INSERT INTO key_versions (key_name, number, tink_key_id, create_time)
		SELECT name, 1, 7, 1700000000000000 FROM keys WHERE root_key_id = ?2`, n, root); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkConsumeBudget(b *testing.B) {
	s := openSQLite(b, filepath.Join(b.TempDir(), "tresor.db"))
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

func BenchmarkGetKey(b *testing.B) {
	s := openSQLite(b, filepath.Join(b.TempDir(), "tresor.db"))
	k := benchKey("k")
	if _, err := s.CreateKey(b.Context(), k); err != nil {
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

func BenchmarkUpdateKey(b *testing.B) {
	s := openSQLite(b, filepath.Join(b.TempDir(), "tresor.db"))
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

// benchKey is a key of a realistic size: a few versions, labels and a
// keyset of a few hundred bytes.
func benchKey(name string) store.Key {
	k := testKey(name)
	k.Versions = nil
	for i := uint32(1); i <= 5; i++ {
		k.Versions = append(k.Versions, store.Version{Number: i, TinkKeyID: 1000 + i, CreateTime: time.Now()})
	}
	k.PrimaryVersion = 5
	k.Labels = map[string]string{"team": "payments", "env": "prod", "owner": "cards"}
	k.WrappedKeyset = make([]byte, 400)
	return k
}
