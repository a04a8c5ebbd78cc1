package pgtest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tresorkms/tresor/internal/store/pgtest"
)

func TestNewDatabase(t *testing.T) {
	var dbURL string
	t.Run("use", func(t *testing.T) {
		dbURL = pgtest.NewDatabase(t)
		conn, err := pgx.Connect(t.Context(), dbURL)
		if err != nil {
			t.Fatalf("pgx.Connect(ctx, %q) err = %v, want nil", dbURL, err)
		}
		var name, encoding string
		if err := conn.QueryRow(t.Context(), `SELECT current_database(), pg_encoding_to_char(encoding)
			FROM pg_database WHERE datname = current_database()`).Scan(&name, &encoding); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(name, "tresor_test_") || encoding != "UTF8" {
			t.Errorf("database = %q, %s; want tresor_test_..., UTF8", name, encoding)
		}
		// Left open on purpose: the cleanup drops the database regardless.
		_ = conn
	})
	if t.Failed() {
		return
	}
	// The subtest's cleanup has run: its database is gone.
	if conn, err := pgx.Connect(context.Background(), dbURL); err == nil {
		conn.Close(context.Background())
		t.Errorf("pgx.Connect(ctx, %q) after the test's cleanup err = nil, want an error (database dropped)", dbURL)
	}
}

func TestNewDatabaseUnique(t *testing.T) {
	a, b := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	if a == b {
		t.Errorf("NewDatabase twice = %q both times, want two databases", a)
	}
}
