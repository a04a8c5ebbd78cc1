package audit

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/internal/store/pgtest"
)

// backends opens a fresh store of each kind, and a database handle of its
// own on the same database.
var backends = []struct {
	name string
	open func(t testing.TB) (store.Store, *sql.DB)
}{
	{"sqlite", func(t testing.TB) (store.Store, *sql.DB) {
		path := filepath.Join(t.TempDir(), "tresor.db")
		return openSQLite(t, path), rawDB(t, "sqlite", path)
	}},
	{"postgres", func(t testing.TB) (store.Store, *sql.DB) {
		url := pgtest.NewDatabase(t)
		s, err := store.OpenPostgres(context.Background(), url)
		if err != nil {
			t.Fatalf("store.OpenPostgres() err = %v, want nil", err)
		}
		t.Cleanup(func() { s.Close() })
		return s, rawDB(t, "pgx", url)
	}},
}

func rawDB(t testing.TB, driver, name string) *sql.DB {
	db, err := sql.Open(driver, name)
	if err != nil {
		t.Fatalf("sql.Open(%s) err = %v", driver, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func openSQLite(t testing.TB, path string) *store.SQLite {
	t.Helper()
	s, err := store.OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatalf("store.OpenSQLite(%s) err = %v, want nil", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStoreSinkRecordVerify(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			keys := testRootKeys(t)
			st, _ := b.open(t)
			opts := testOptions(t, "replica-1", keys)
			opts.CheckpointEvery = 30
			l := newLog(t, opts, NewStoreSink(st))
			var wg sync.WaitGroup
			errs := make(chan error, 200)
			for g := range 10 {
				wg.Go(func() {
					for i := range 20 {
						if err := l.Record(t.Context(), testEvent(g*20+i)); err != nil {
							errs <- err
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("Record(ctx, event) err = %v, want nil", err)
			}
			closeLog(t, l)
			// A second writer of another chain, and a resumed first one.
			l2 := newLog(t, testOptions(t, "replica-2", keys), NewStoreSink(st))
			record(t, l2, 0, 4)
			closeLog(t, l2)
			l3 := newLog(t, opts, NewStoreSink(st))
			record(t, l3, 200, 204)
			closeLog(t, l3)

			src := NewStoreSource(st)
			src.page = 7 // pages end between events and their checkpoints
			rep, err := Verify(t.Context(), src, keys)
			if err != nil {
				t.Fatalf("Verify(store) err = %v, want nil", err)
			}
			// The first Close records a close event when its last batch
			// ended with a checkpoint; replica-2 anchors replica-1, so its
			// first event is checkpointed at once.
			closes := closeEvents(t, NewStoreSource(st, "replica-1"))
			n1 := 205 + closes
			want := []ChainReport{
				{Chain: "replica-1", Events: n1, LastSeq: uint64(n1), CheckpointSeq: uint64(n1), Checkpoints: rep.Chains[0].Checkpoints, Closed: true},
				{Chain: "replica-2", Events: 5, LastSeq: 5, CheckpointSeq: 5, Checkpoints: 2, Closed: true},
			}
			if rep.Events != n1+5 || rep.Uncovered != 0 || !slices.Equal(rep.Chains, want) || rep.Chains[0].Checkpoints < 7 ||
				rep.Anchors != 1 || len(rep.Unclosed) != 0 {
				t.Errorf("Verify(store) = %+v; want %d events, none uncovered, 1 anchor, chains %+v with at least 7 checkpoints in replica-1, all closed", rep, n1+5, want)
			}
			var n int
			err = Query(t.Context(), NewStoreSource(st, "replica-2"), nil, Filter{Action: "Encrypt"}, func(Event) error { n++; return nil })
			if err != nil || n != 5 {
				t.Errorf("Query(store, chain replica-2, Encrypt) = %d events, %v; want 5, nil", n, err)
			}
		})
	}
}

// TestStoreVerifyDetectsTampering changes the SQLite tables directly.
func TestStoreVerifyDetectsTampering(t *testing.T) {
	keys := testRootKeys(t)
	tests := []struct {
		name    string
		sql     string
		wantSeq uint64
	}{
		{"one byte changed", `UPDATE audit_events SET data = CAST(replace(CAST(data AS TEXT), '"req-5"', '"req-6"') AS BLOB) WHERE seq = 5`, 5},
		{"one event removed", `DELETE FROM audit_events WHERE seq = 6`, 7},
		{"two events swapped", `UPDATE audit_events SET seq = seq + 1000 WHERE seq IN (6, 7);
			UPDATE audit_events SET seq = CASE seq WHEN 1006 THEN 7 ELSE 6 END WHERE seq IN (1006, 1007)`, 7},
		{"checkpoint forged", `UPDATE audit_checkpoints SET tag = CAST('forged' AS BLOB) WHERE seq = 8`, 8},
		{"checkpoint moved", `UPDATE audit_checkpoints SET seq = 7 WHERE seq = 8`, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tresor.db")
			st := openSQLite(t, path)
			opts := testOptions(t, "c", keys)
			opts.CheckpointEvery = 4
			l := newLog(t, opts, NewStoreSink(st))
			record(t, l, 1, 12)
			closeLog(t, l)
			if _, err := Verify(t.Context(), NewStoreSource(st), keys); err != nil {
				t.Fatalf("Verify(store) before tampering err = %v, want nil", err)
			}
			db := rawDB(t, "sqlite", path)
			res, err := db.ExecContext(t.Context(), tt.sql)
			if err != nil || must(res.RowsAffected()) == 0 {
				t.Fatalf("tamper: %s: err = %v, or no row changed", tt.sql, err)
			}
			_, err = Verify(t.Context(), NewStoreSource(st), keys)
			var ve *VerifyError
			if !errors.As(err, &ve) || !errors.Is(err, ErrTampered) || ve.Chain != "c" || ve.Seq != tt.wantSeq {
				t.Errorf("Verify(store) after %s err = %v, want ErrTampered at chain c seq %d", tt.name, err, tt.wantSeq)
			}
		})
	}
}

func TestFileSinkDevFull(t *testing.T) {
	keys := testRootKeys(t)
	sink := openFileSink(t, "/dev/full")
	l := newLog(t, testOptions(t, "c", keys), sink)
	err := l.Record(t.Context(), testEvent(1))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Record(ctx, event) to /dev/full err = %v, want ErrUnavailable wrapping ENOSPC", err)
	}
	if err := l.Ready(t.Context()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ready(ctx) after a failed write err = %v, want ErrUnavailable", err)
	}
}

// TestFileSinkFillsUp lowers the file size limit (RLIMIT_FSIZE) so that
// writes fail part way, as on a full disk, and checks that every event
// Record acknowledged is in the file, that the file verifies, and that the
// log recovers when there is room again.
func TestFileSinkFillsUp(t *testing.T) {
	keys := testRootKeys(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	sink := openFileSink(t, path)
	opts := testOptions(t, "c", keys)
	opts.CheckpointEvery = 7
	l := newLog(t, opts, sink)

	var acked []string
	recordAll := func(from, to int) (failed int) {
		for i := from; i <= to; i++ {
			err := l.Record(t.Context(), testEvent(i))
			switch {
			case err == nil:
				acked = append(acked, fmt.Sprintf("req-%d", i))
			case errors.Is(err, ErrUnavailable) && errors.Is(err, syscall.EFBIG):
				failed++
			default:
				t.Fatalf("Record(ctx, event %d) err = %v, want nil or ErrUnavailable wrapping EFBIG", i, err)
			}
		}
		return failed
	}
	recordAll(0, 19)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatalf("getrlimit(RLIMIT_FSIZE) err = %v", err)
	}
	limit := old
	limit.Cur = uint64(fi.Size() + 3000) // room for a few more events, then a partial line
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limit); err != nil {
		t.Fatalf("setrlimit(RLIMIT_FSIZE) err = %v", err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
				t.Fatalf("setrlimit(RLIMIT_FSIZE) back err = %v", err)
			}
		}
	}
	t.Cleanup(restore)
	failed := recordAll(20, 59)
	restore()
	if failed == 0 || failed == 40 {
		t.Fatalf("with the file size limited, %d of 40 Records failed; want some but not all", failed)
	}
	if err := l.Ready(t.Context()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ready(ctx) after the disk filled err = %v, want ErrUnavailable", err)
	}
	recordAll(60, 69)
	closeLog(t, l)

	rep, err := verifyFile(t, path, keys)
	if err != nil {
		t.Fatalf("Verify(file that filled up) err = %v, want nil", err)
	}
	closes := closeEvents(t, NewFileSource(strings.NewReader(strings.Join(readLines(t, path), ""))))
	if rep.Events != int64(len(acked))+closes || rep.Uncovered != 0 {
		t.Errorf("Verify(file that filled up) = %+v; want exactly the %d acknowledged events (and %d close events), all covered", rep, len(acked), closes)
	}
	var got []string
	f := must(os.Open(path))
	defer f.Close()
	if err := Query(t.Context(), NewFileSource(f), nil, Filter{}, func(e Event) error {
		if e.Action != ActionClose {
			got = append(got, e.RequestID)
		}
		return nil
	}); err != nil {
		t.Fatalf("Query(file) err = %v", err)
	}
	if !slices.Equal(got, acked) {
		t.Errorf("events in the file = %q, want the acknowledged ones %q", got, acked)
	}
}

func TestStoreSinkUnavailable(t *testing.T) {
	keys := testRootKeys(t)
	path := filepath.Join(t.TempDir(), "tresor.db")
	st, err := store.OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	l := newLog(t, testOptions(t, "c", keys), NewStoreSink(st))
	record(t, l, 1, 10)
	st.Close() // the store goes away under the log
	if err := l.Record(t.Context(), testEvent(11)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Record(ctx, event) to a closed store err = %v, want ErrUnavailable", err)
	}
	if err := l.Ready(t.Context()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ready(ctx) with the store closed err = %v, want ErrUnavailable", err)
	}
	st2 := openSQLite(t, path)
	rep, err := Verify(t.Context(), NewStoreSource(st2), keys)
	if err != nil || rep.Events != 10 {
		t.Errorf("Verify(store) = %+v, %v; want the 10 acknowledged events, nil", rep, err)
	}
}

// TestStoreSinkReadOnly makes the database refuse writes (a read-only
// standby, or a file system remounted read-only) with a trigger.
func TestStoreSinkReadOnly(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			keys := testRootKeys(t)
			st, db := b.open(t)
			opts := testOptions(t, "c", keys)
			opts.CheckpointEvery = 3
			l := newLog(t, opts, NewStoreSink(st))
			record(t, l, 1, 5)
			refuse, allow := refuseWrites(t, b.name, db)
			refuse()
			for i := 6; i <= 8; i++ {
				if err := l.Record(t.Context(), testEvent(i)); !errors.Is(err, ErrUnavailable) {
					t.Errorf("Record(ctx, event %d) to a store refusing writes err = %v, want ErrUnavailable", i, err)
				}
			}
			allow()
			record(t, l, 9, 10)
			closeLog(t, l)
			rep, err := Verify(t.Context(), NewStoreSource(st), keys)
			if err != nil || rep.Events != 7 || rep.Uncovered != 0 {
				t.Fatalf("Verify(store) = %+v, %v; want the 7 acknowledged events, all covered, nil", rep, err)
			}
			var got []string
			Query(t.Context(), NewStoreSource(st), nil, Filter{}, func(e Event) error {
				got = append(got, e.RequestID)
				return nil
			})
			if want := []string{"req-1", "req-2", "req-3", "req-4", "req-5", "req-9", "req-10"}; !slices.Equal(got, want) {
				t.Errorf("events in the store = %q, want %q", got, want)
			}
		})
	}
}

// refuseWrites returns functions that make the audit_events table refuse
// inserts, with the error of a read-only database, and accept them again.
func refuseWrites(t *testing.T, backend string, db *sql.DB) (refuse, allow func()) {
	if backend == "sqlite" {
		return func() {
				mustExec(t, db, `CREATE TRIGGER refuse BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'attempt to write a readonly database'); END`)
			}, func() {
				mustExec(t, db, `DROP TRIGGER refuse`)
			}
	}
	return func() {
			mustExec(t, db, `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction' USING ERRCODE = '25006'; END $$`)
			mustExec(t, db, `CREATE TRIGGER refuse BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse()`)
		}, func() {
			mustExec(t, db, `DROP TRIGGER refuse ON audit_events`)
			mustExec(t, db, `DROP FUNCTION refuse`)
		}
}

func mustExec(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), q); err != nil {
		t.Fatalf("%s: err = %v", q, err)
	}
}

// TestTwoWritersOneChain checks that a second writer of one chain in the
// store fails rather than forks the chain, and resumes from the real head.
func TestTwoWritersOneChain(t *testing.T) {
	keys := testRootKeys(t)
	st := openSQLite(t, filepath.Join(t.TempDir(), "tresor.db"))
	a := newLog(t, testOptions(t, "c", keys), NewStoreSink(st))
	b := newLog(t, testOptions(t, "c", keys), NewStoreSink(st))
	record(t, a, 1, 3)
	if err := b.Record(t.Context(), testEvent(4)); !errors.Is(err, ErrUnavailable) || !errors.Is(err, store.ErrConflict) {
		t.Errorf("Record(ctx, event) by a second writer of the chain err = %v, want ErrUnavailable wrapping store.ErrConflict", err)
	}
	record(t, b, 5, 6) // from the real head
	if err := a.Record(t.Context(), testEvent(7)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Record(ctx, event) by the first writer after the second wrote err = %v, want store.ErrConflict", err)
	}
	record(t, a, 8, 8)
	closeLog(t, a)
	closeLog(t, b)
	rep, err := Verify(t.Context(), NewStoreSource(st), keys)
	if err != nil || rep.Events != 6 {
		t.Errorf("Verify(store) = %+v, %v; want 6 events in one chain, nil", rep, err)
	}
}

func TestMultipleSinks(t *testing.T) {
	keys := testRootKeys(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	st := openSQLite(t, filepath.Join(t.TempDir(), "tresor.db"))
	l := newLog(t, testOptions(t, "c", keys), openFileSink(t, path), NewStoreSink(st))
	record(t, l, 1, 20)
	closeLog(t, l)
	for name, src := range map[string]func() Source{
		"file":  func() Source { return NewFileSource(strings.NewReader(strings.Join(readLines(t, path), ""))) },
		"store": func() Source { return NewStoreSource(st) },
	} {
		rep, err := Verify(t.Context(), src(), keys)
		if err != nil || rep.Events != 20 || rep.Uncovered != 0 {
			t.Errorf("Verify(%s) = %+v, %v; want 20 events, all covered, nil", name, rep, err)
		}
	}
}

var _ RootKeys = (*envelope.RootKeys)(nil)
