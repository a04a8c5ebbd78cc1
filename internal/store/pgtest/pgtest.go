// Package pgtest gives tests a fresh PostgreSQL database of their own.
//
// Call [NewDatabase] from a test; it needs a running PostgreSQL server
// (postgres://postgres@127.0.0.1:5432/postgres, trust authentication, or the
// server named by TRESOR_TEST_POSTGRES_URL) and fails the test, never skips
// it, when there is none.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultURL is the server NewDatabase uses when TRESOR_TEST_POSTGRES_URL is
// not set: a maintenance database on which the user may create databases.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// EnvURL names the environment variable that overrides DefaultURL.
const EnvURL = "TRESOR_TEST_POSTGRES_URL"

// StartCommand starts the local cluster on a Debian machine whose
// PostgreSQL is stopped; failures mention it.
const StartCommand = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"

// timeout bounds each statement NewDatabase and its cleanup run.
const timeout = 30 * time.Second

// NewDatabase creates a database named tresor_test_<random hex> (UTF8,
// collation C), arranges with t.Cleanup for it to be dropped, with any
// connections still open to it, and returns its URL: the server's URL with
// the database name replaced.
func NewDatabase(t testing.TB) string {
	t.Helper()
	server := os.Getenv(EnvURL)
	if server == "" {
		server = DefaultURL
	}
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("pgtest: %s: want a postgres:// URL", EnvURL) // the URL may hold a password
	}
	where := u.Redacted()

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	admin, err := connect(ctx, server)
	if err != nil {
		t.Fatalf("pgtest: PostgreSQL at %s is unreachable: %v\n"+
			"Start it (on Debian: %s) or point %s at a server where this user may create databases.",
			where, err, StartCommand, EnvURL)
	}
	defer admin.Close(context.Background())

	b := make([]byte, 8)
	rand.Read(b) // never fails
	name := "tresor_test_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+
		" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"); err != nil {
		t.Fatalf("pgtest: create database %s on %s: %v", name, where, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		admin, err := connect(ctx, server)
		if err != nil {
			t.Errorf("pgtest: drop database %s: PostgreSQL at %s is unreachable: %v", name, where, err)
			return
		}
		defer admin.Close(context.Background())
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s on %s: %v", name, where, err)
		}
	})

	db := *u
	db.Path = "/" + name
	db.RawPath = ""
	return db.String()
}

func connect(ctx context.Context, server string) (*pgx.Conn, error) {
	config, err := pgx.ParseConfig(server)
	if err != nil {
		return nil, err
	}
	if config.ConnectTimeout == 0 {
		config.ConnectTimeout = 5 * time.Second
	}
	return pgx.ConnectConfig(ctx, config)
}
