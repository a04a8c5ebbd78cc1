package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/internal/store/pgtest"
)

// legacyRotations are jobs an older tresor (schema 8) recorded, by seq;
// they are inserted out of order, so that only seq orders them.
var legacyRotations = []struct {
	seq      int
	id       string
	from, to string
}{
	{12, "rkr-3", "root-c", "root-a"},
	{3, "rkr-1", "root-a", "root-b"},
	{7, "rkr-2", "root-b", "root-c"},
}

// checkLegacyChain checks a store migrated from schema 8 with
// legacyRotations: migration 9 chained them by seq (PrevID), and the next
// job chains from the latest of them.
func checkLegacyChain(t *testing.T, s store.Store) {
	t.Helper()
	jobs, err := s.ListRootKeyRotations(t.Context())
	if err != nil {
		t.Fatalf("ListRootKeyRotations(ctx) err = %v, want nil", err)
	}
	var got []string
	for _, j := range jobs {
		got = append(got, fmt.Sprintf("%s<-%q", j.ID, j.PrevID))
		if len(j.Endorsement) != 0 || j.State != store.RotationDone {
			t.Errorf("migrated job %s = %+v; want DONE with no endorsement", j.ID, j)
		}
	}
	want := []string{`rkr-1<-""`, `rkr-2<-"rkr-1"`, `rkr-3<-"rkr-2"`}
	if !slices.Equal(got, want) {
		t.Errorf("migrated jobs (ID<-PrevID) = %q, want %q", got, want)
	}
	next := store.RootKeyRotation{ID: "rkr-4", FromURI: "local-file:///a", ToURI: "local-file:///b", FromID: "root-a", ToID: "root-b"}
	if _, err := s.StartRootKeyRotation(t.Context(), next); !errors.Is(err, store.ErrConflict) {
		t.Errorf("StartRootKeyRotation(ctx, job with no PrevID) after migrated jobs err = %v, want ErrConflict", err)
	}
	next.PrevID = "rkr-3"
	if _, err := s.StartRootKeyRotation(t.Context(), next); err != nil {
		t.Errorf("StartRootKeyRotation(ctx, job after %q) err = %v, want nil", next.PrevID, err)
	}
}

// TestSQLiteMigratesRotationChain: migration 9 gives the jobs an older
// tresor recorded their PrevID, from seq.
func TestSQLiteMigratesRotationChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	db := rawDB(t, path)
	if _, err := db.Exec(`CREATE TABLE schema_migrations (
		version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, applied_time INTEGER NOT NULL) STRICT`); err != nil {
		t.Fatal(err)
	}
	names, err := filepath.Glob("migrations/000[1-8]_*.sql")
	if err != nil || len(names) != 8 {
		t.Fatalf("migrations 1 to 8: %q, %v", names, err)
	}
	for i, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(string(b)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations VALUES (?, ?, 0)`, i+1, filepath.Base(name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, j := range legacyRotations {
		if _, err := db.Exec(`INSERT INTO root_key_rotations (seq, id, from_uri, to_uri, from_id, to_id,
			state, total, rewrapped, start_time, update_time, end_time)
			VALUES (?, ?, 'local-file:///' || ?, 'local-file:///' || ?, ?, ?, 'DONE', 0, 0, 1, 2, 2)`,
			j.seq, j.id, j.from, j.to, j.from, j.to); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	checkLegacyChain(t, openSQLite(t, path))
}

// TestPostgresMigratesRotationChain is TestSQLiteMigratesRotationChain on
// PostgreSQL.
func TestPostgresMigratesRotationChain(t *testing.T) {
	url := pgtest.NewDatabase(t)
	raw := rawPostgres(t, url)
	ctx := context.Background()
	if _, err := raw.Exec(ctx, `CREATE TABLE schema_migrations (
		version integer NOT NULL PRIMARY KEY, name text NOT NULL, applied_time timestamptz NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	names, err := filepath.Glob("pgmigrations/000[1-8]_*.sql")
	if err != nil || len(names) != 8 {
		t.Fatalf("migrations 1 to 8: %q, %v", names, err)
	}
	for i, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Exec(ctx, string(b)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := raw.Exec(ctx, `INSERT INTO schema_migrations VALUES ($1, $2, now())`, i+1, filepath.Base(name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, j := range legacyRotations {
		if _, err := raw.Exec(ctx, `INSERT INTO root_key_rotations (seq, id, from_uri, to_uri, from_id, to_id,
			state, total, rewrapped, start_time, update_time, end_time) OVERRIDING SYSTEM VALUE
			VALUES ($1, $2, 'local-file:///' || $3, 'local-file:///' || $4, $3, $4, 'DONE', 0, 0, now(), now(), now())`,
			j.seq, j.id, j.from, j.to); err != nil {
			t.Fatal(err)
		}
	}
	checkLegacyChain(t, openPostgres(t, url))
}
