package store

import (
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestSQLiteBusyIsUnavailable holds the write lock from another connection,
// as another process would, past the busy timeout: writes fail with
// ErrUnavailable, write nothing, and succeed once the lock is released.
func TestSQLiteBusyIsUnavailable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tresor.db")
	s, err := OpenSQLite(t.Context(), path, withSQLiteBusyTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatalf("OpenSQLite(ctx, %q) err = %v, want nil", path, err)
	}
	defer s.Close()
	k := Key{Name: "k", Type: KeyTypeAES256GCM, State: KeyStateEnabled, PrimaryVersion: 1,
		Versions: []Version{{Number: 1}}, WrappedKeyset: []byte{1}, RootKeyID: "r"}

	other, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.SetMaxOpenConns(1)
	tx, err := other.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO leases (name, holder, expire_time) VALUES ('x', 'other', 0)`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateKey(t.Context(), k); !errors.Is(err, ErrUnavailable) {
		t.Errorf("CreateKey(ctx, %q) while another process writes err = %v, want ErrUnavailable", "k", err)
	}
	if _, err := s.AcquireLease(t.Context(), "job", "a", time.Minute); !errors.Is(err, ErrUnavailable) {
		t.Errorf("AcquireLease(ctx, %q, %q) while another process writes err = %v, want ErrUnavailable", "job", "a", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKey(t.Context(), "k"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetKey(ctx, %q) after a refused CreateKey err = %v, want ErrNotFound", "k", err)
	}
	if _, err := s.CreateKey(t.Context(), k); err != nil {
		t.Errorf("CreateKey(ctx, %q) after the lock was released err = %v, want nil", "k", err)
	}
}
