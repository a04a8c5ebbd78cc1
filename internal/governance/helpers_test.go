package governance

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/devpki"
	"github.com/tresorkms/tresor/internal/store"
)

const examplesDir = "../../examples/policies"

// The secrets the tests plant in configurations; no report may show them.
const (
	testPIN      = "pin-4711-secret"
	testPassword = "pg-hunter2-secret"
)

func writeFile(t testing.TB, path, text string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// policyDir writes the example schema and the given policy files to a new
// directory.
func policyDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	schema, err := os.ReadFile(filepath.Join(examplesDir, "tresor.cedarschema"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "tresor.cedarschema"), string(schema))
	for name, text := range files {
		writeFile(t, filepath.Join(dir, name), text)
	}
	return dir
}

const goodPolicy = `@id("health") permit (principal, action == Tresor::Action::"CheckHealth", resource);`

// tlsSet is a CA bundle and a server certificate and key, written to dir.
type tlsSet struct{ ca, cert, key string }

// writeTLS issues a server certificate valid from notBefore to notAfter
// under a CA valid for caValidity, and writes them.
func writeTLS(t testing.TB, dir string, notBefore, notAfter time.Time, caValidity time.Duration) tlsSet {
	t.Helper()
	ca, err := devpki.NewCA("governance test CA", caValidity)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.IssueClientWindow("tresor.test", "", notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return tlsSet{
		ca:   writeFile(t, filepath.Join(dir, "ca.pem"), string(ca.CertPEM)),
		cert: writeFile(t, filepath.Join(dir, "server.pem"), string(p.CertPEM)),
		key:  writeFile(t, filepath.Join(dir, "server-key.pem"), string(p.KeyPEM)),
	}
}

// openStore opens a new SQLite store in a temporary directory.
func openStore(t testing.TB) (*store.SQLite, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.db")
	st, err := store.OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatalf("OpenSQLite(%s) err = %v, want nil", path, err)
	}
	t.Cleanup(func() { st.Close() })
	return st, path
}

// keySpec describes a key the tests create directly in the store.
type keySpec struct {
	name       string
	typ        store.KeyType
	state      store.KeyState
	owner      string
	created    time.Time // of the primary version
	rotation   time.Duration
	usageLimit int64
	used       int64 // reserved uses of the primary version
	deletion   time.Time
}

func createKey(t testing.TB, st store.Store, s keySpec) store.Key {
	t.Helper()
	ctx := context.Background()
	k := store.Key{
		Name:                 s.name,
		Type:                 s.typ,
		State:                store.KeyStateEnabled,
		PrimaryVersion:       1,
		MinDecryptionVersion: 1,
		RotationPeriod:       s.rotation,
		UsageLimit:           s.usageLimit,
		Versions:             []store.Version{{Number: 1, TinkKeyID: 7, CreateTime: s.created}},
		WrappedKeyset:        []byte("wrapped-keyset-bytes"),
		RootKeyID:            "root-1",
	}
	if k.Type == 0 {
		k.Type = store.KeyTypeAES256GCM
	}
	if s.owner != "" {
		k.Labels = map[string]string{OwnerLabel: s.owner}
	}
	created, err := st.CreateKey(ctx, k)
	if err != nil {
		t.Fatalf("CreateKey(%s) err = %v, want nil", s.name, err)
	}
	if s.used > 0 {
		limit := s.usageLimit
		if limit == 0 {
			limit = 1 << 30
		}
		if _, err := st.ReserveUses(ctx, s.name, 1, s.used, limit); err != nil {
			t.Fatalf("ReserveUses(%s, %d) err = %v, want nil", s.name, s.used, err)
		}
	}
	if s.state != 0 && s.state != store.KeyStateEnabled {
		created.State = s.state
		created.DeletionTime = s.deletion
		if created, err = st.UpdateKey(ctx, created); err != nil {
			t.Fatalf("UpdateKey(%s, state %s) err = %v, want nil", s.name, s.state, err)
		}
	}
	return created
}

// findings returns the findings of check about subject (any subject when
// empty) with severity s.
func findingsOf(fs []Finding, check string, s Severity, subject string) []Finding {
	var out []Finding
	for _, f := range fs {
		if f.Check == check && f.Severity == s && (subject == "" || f.Subject == subject) {
			out = append(out, f)
		}
	}
	return out
}

func hasFinding(fs []Finding, check string, s Severity, subject, contains string) bool {
	for _, f := range findingsOf(fs, check, s, subject) {
		if strings.Contains(f.Message, contains) {
			return true
		}
	}
	return false
}
