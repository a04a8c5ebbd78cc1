package soak

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	sdk "github.com/tresorkms/tresor/client"
	policies "github.com/tresorkms/tresor/examples/policies"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/devpki"
	"github.com/tresorkms/tresor/kms/pkcs11"
	"github.com/tresorkms/tresor/softhsm"
)

// The soak client's identity: the certificate's common name (its SPIFFE
// ID is spiffe://tresor.dev/<cn>, as devpki issues it), the audience of
// its tokens, and the one policy, which lets it do everything.
const (
	clientCN       = "soak-client"
	clientWorkload = "spiffe://tresor.dev/" + clientCN
	tokenAudience  = "tresor"
	issuerURL      = "https://tresor-soak.invalid"
	soakPolicy     = `// Written by tresor soak: the soak client may do everything.
@id("soak-client-may-do-everything")
permit (principal, action, resource)
when { principal.workload == "` + clientWorkload + `" };
`
)

// database is the run's PostgreSQL database.
type database struct {
	server string // the server URL the database was created on
	name   string
	url    string // the database's URL (may hold a password: never printed)
	where  string // the database's URL, redacted
}

// createDatabase creates a database with a unique name on the server at
// serverURL (a maintenance database where the user may create databases).
func createDatabase(ctx context.Context, serverURL string) (*database, error) {
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, errors.New("soak: --postgres: want a postgres:// URL") // the URL may hold a password
	}
	b := make([]byte, 6)
	rand.Read(b) // never fails
	db := &database{server: serverURL, name: "tresor_soak_" + hex.EncodeToString(b)}
	conn, err := pgConnect(ctx, serverURL)
	if err != nil {
		return nil, fmt.Errorf("soak: PostgreSQL at %s: %w", u.Redacted(), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+db.name+" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"); err != nil {
		return nil, fmt.Errorf("soak: create database %s on %s: %w", db.name, u.Redacted(), err)
	}
	d := *u
	d.Path, d.RawPath = "/"+db.name, ""
	db.url, db.where = d.String(), d.Redacted()
	return db, nil
}

// drop drops the database, closing any connection still open to it.
func (db *database) drop(ctx context.Context) error {
	conn, err := pgConnect(ctx, db.server)
	if err != nil {
		return fmt.Errorf("soak: drop database %s: %w", db.name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db.name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("soak: drop database %s: %w", db.name, err)
	}
	return nil
}

// terminateConnections terminates every connection to the database but
// the caller's and returns how many it terminated.
func (db *database) terminateConnections(ctx context.Context) (int, error) {
	conn, err := pgConnect(ctx, db.server)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()) t`, db.name).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("pg_terminate_backend: %w", err)
	}
	return n, nil
}

func pgConnect(ctx context.Context, u string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return nil, err
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// token is the run's SoftHSM2 token and the directory SoftHSM2 keeps it
// in (which the remove-token fault moves away).
type token struct {
	*softhsm.Token
	dir, away string
	roots     []string // the root key URIs created, in order
}

// newToken initializes a token with a unique label under dir (the
// process's one SoftHSM2 configuration directory), points this process at
// its configuration and creates its first root key.
func newToken(ctx context.Context, dir string) (*token, error) {
	tokens := filepath.Join(dir, "tokens")
	before, err := os.ReadDir(tokens)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("soak: %w", err)
	}
	b := make([]byte, 4)
	rand.Read(b) // never fails
	label := "soak-" + hex.EncodeToString(b)
	tok, err := softhsm.NewToken(ctx, dir, label)
	if err != nil {
		return nil, fmt.Errorf("soak: SoftHSM2 token: %w", err)
	}
	after, err := os.ReadDir(tokens)
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	seen := map[string]bool{}
	for _, e := range before {
		seen[e.Name()] = true
	}
	t := &token{Token: tok}
	for _, e := range after {
		if !seen[e.Name()] && e.IsDir() {
			t.dir = filepath.Join(tokens, e.Name())
		}
	}
	if t.dir == "" {
		return nil, fmt.Errorf("soak: no new directory in %s for token %q", tokens, label)
	}
	t.away = filepath.Join(dir, "removed-"+label)
	if err := tok.SetProcessEnv(); err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	if _, err := t.newRootKey(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// newRootKey creates the next root key object (root-1, root-2, ...) in
// the token and returns its URI.
func (t *token) newRootKey(ctx context.Context) (string, error) {
	uri := t.URI(fmt.Sprintf("root-%d", len(t.roots)+1))
	if err := pkcs11.CreateRootKey(ctx, uri); err != nil {
		return "", fmt.Errorf("soak: create root key: %w", err)
	}
	t.roots = append(t.roots, uri)
	return uri, nil
}

// remove moves the token's directory out of the token directory; restore
// puts it back.
func (t *token) remove() error  { return os.Rename(t.dir, t.away) }
func (t *token) restore() error { return os.Rename(t.away, t.dir) }

// identity is what the clients and the replicas share: the local CA, the
// server and client certificates, the token issuer and the policies.
type identity struct {
	tls          devpki.Files
	clientTLS    *tls.Config // the clients': the local CA, the client certificate
	clientCert   *x509.Certificate
	issuer       *devissuer.Issuer
	jwks         string
	policySchema string
	policyDir    string
}

// newIdentity writes a local CA, certificates, a token issuer (its JWKS in
// a file the replicas read) and the Cedar schema with the soak policy
// under dir.
func newIdentity(dir string) (*identity, error) {
	files, err := devpki.WriteDir(filepath.Join(dir, "tls"), []string{"127.0.0.1", "localhost", "::1"}, clientCN)
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	id := &identity{tls: files}
	if id.clientTLS, err = sdk.TLSFromFiles(files.CACert, files.ClientCert, files.ClientKey); err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	id.clientCert = id.clientTLS.Certificates[0].Leaf // tls.LoadX509KeyPair fills it
	if id.issuer, err = devissuer.Open(filepath.Join(dir, "issuer")); err != nil {
		return nil, fmt.Errorf("soak: token issuer: %w", err)
	}
	id.issuer.SetURL(issuerURL)
	id.jwks = filepath.Join(dir, "issuer", "jwks.json")
	if err := id.issuer.WriteJWKS(id.jwks); err != nil {
		return nil, fmt.Errorf("soak: token issuer: %w", err)
	}
	id.policyDir = filepath.Join(dir, "policies")
	if err := os.MkdirAll(id.policyDir, 0o700); err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	schema, err := policies.Files.ReadFile(policies.SchemaFile)
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	id.policySchema = filepath.Join(id.policyDir, policies.SchemaFile)
	if err := os.WriteFile(id.policySchema, schema, 0o600); err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	if err := os.WriteFile(filepath.Join(id.policyDir, "soak.cedar"), []byte(soakPolicy), 0o600); err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	return id, nil
}

// replicaConfig is what differs between the replicas' configuration files.
type replicaConfig struct {
	name                       string
	grpc, http, metrics        string
	storeURL, rootKeyURI, path string
}

// write writes the replica's configuration file (0600: the store URL may
// hold a password).
func (c replicaConfig) write(id *identity) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by tresor soak for replica %s.\n", c.name)
	fmt.Fprintf(&b, "listen:\n  grpc: %q\n  http: %q\n  metrics: %q\n", c.grpc, c.http, c.metrics)
	fmt.Fprintf(&b, "tls:\n  cert_file: %q\n  key_file: %q\n  client_ca_file: %q\n", id.tls.ServerCert, id.tls.ServerKey, id.tls.CACert)
	fmt.Fprintf(&b, "store:\n  url: %q\n", c.storeURL)
	fmt.Fprintf(&b, "root_key:\n  uri: %q\n", c.rootKeyURI)
	fmt.Fprintf(&b, "log:\n  level: info\n  format: json\n")
	fmt.Fprintf(&b, "auth:\n  require_token: true\n  token:\n    issuer: %q\n    audiences: [%q]\n    jwks_file: %q\n", issuerURL, tokenAudience, id.jwks)
	fmt.Fprintf(&b, "policy:\n  schema_file: %q\n  dir: %q\n  timezone: UTC\n", id.policySchema, id.policyDir)
	fmt.Fprintf(&b, "audit:\n  enabled: true\n  store: true\n")
	if err := os.WriteFile(c.path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("soak: %w", err)
	}
	return nil
}

// freePort returns a loopback address whose port is free right now.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("soak: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}
