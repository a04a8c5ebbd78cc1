package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tresorkms/tresor/examples/policies"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/devpki"
	"github.com/tresorkms/tresor/internal/governance"
	"github.com/tresorkms/tresor/internal/policy"
	"github.com/tresorkms/tresor/internal/store"
)

// Secrets planted in the configurations below; no output may show them.
const (
	govPIN      = "pin-31337-secret"
	govPassword = "pg-swordfish-secret"
)

// runGov runs check or report in process (as a root command with only
// them) and returns stdout, stderr and the error, whose exit code main
// would use.
func runGov(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "tresor", SilenceUsage: true, SilenceErrors: true}
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.AddCommand(newReportCmd(), newGovernanceCheckCmd())
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// exitCodeOf is the code main exits with for err.
func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	var ec exitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

type govSetup struct {
	dir, cfg, db, policyDir, schemaDir string
}

// newGovSetup writes a deployment: TLS valid for certDays, the example
// schema and a health policy, a classification schema using pii-aead, a
// SQLite store at db (created when withStore) and a config that points at
// them, with a PIN in the root key URI. storeURL overrides the store.
func newGovSetup(t *testing.T, certDays int, withStore bool, storeURL string) govSetup {
	t.Helper()
	dir := t.TempDir()
	s := govSetup{dir: dir, db: filepath.Join(dir, "keys.db"), policyDir: filepath.Join(dir, "policies"), schemaDir: filepath.Join(dir, "schemas")}
	ca, err := devpki.NewCA("gov CA", 3*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueServer([]string{"127.0.0.1"}, time.Duration(certDays)*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	schema, err := policies.Files.ReadFile(policies.SchemaFile)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"ca.pem":                             string(ca.CertPEM),
		"server.pem":                         string(pair.CertPEM),
		"server-key.pem":                     string(pair.KeyPEM),
		"policies/tresor.cedarschema":        string(schema),
		"policies/health.cedar":              `@id("health") permit (principal, action == Tresor::Action::"CheckHealth", resource);`,
		"schemas/customer.yaml":              "name: customer\nversion: 1\ndefault_tier: public\ntiers:\n  restricted: {protection: aead, key: pii-aead}\n  public: {protection: none}\nfields:\n  - {path: $.tax_id, tier: restricted}\n",
		"schemas/README.md":                  "not a schema",
		"policies/not-a-policy.cedarschema~": "",
	}
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if storeURL == "" {
		storeURL = "sqlite://" + s.db
	}
	if withStore {
		st, err := store.OpenSQLite(context.Background(), s.db)
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
	}
	s.cfg = filepath.Join(dir, "tresor.yaml")
	yaml := fmt.Sprintf(`listen:
  grpc: "127.0.0.1:0"
tls:
  cert_file: %q
  key_file: %q
  client_ca_file: %q
store:
  url: %q
root_key:
  uri: "pkcs11:token=tresor;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=%s"
auth:
  require_token: false
policy:
  schema_file: %q
  dir: %q
`, filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"), filepath.Join(dir, "ca.pem"), storeURL, govPIN,
		filepath.Join(s.policyDir, "tresor.cedarschema"), s.policyDir)
	if err := os.WriteFile(s.cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// addKey creates an AES-256-GCM key directly in the setup's store.
func (s govSetup) addKey(t *testing.T, name, owner string) {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), s.db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	k := store.Key{
		Name: name, Type: store.KeyTypeAES256GCM, State: store.KeyStateEnabled, PrimaryVersion: 1, MinDecryptionVersion: 1,
		Versions:      []store.Version{{Number: 1, TinkKeyID: 1, CreateTime: time.Now()}},
		WrappedKeyset: []byte("wrapped"), RootKeyID: "root-1",
	}
	if owner != "" {
		k.Labels = map[string]string{"owner": owner}
	}
	if _, err := st.CreateKey(context.Background(), k); err != nil {
		t.Fatalf("CreateKey(%s) err = %v, want nil", name, err)
	}
}

func TestCheckAndReportExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(t *testing.T) govSetup
		args     []string // after the command and --config
		want     int
		stdout   string // in check's output
		is       error
		inErrMsg string
	}{
		{
			name: "clean",
			setup: func(t *testing.T) govSetup {
				s := newGovSetup(t, 365, true, "")
				s.addKey(t, "pii-aead", "crm")
				return s
			},
			want: 0, stdout: "configuration OK",
		},
		{
			name: "warnings print but pass",
			setup: func(t *testing.T) govSetup {
				s := newGovSetup(t, 365, true, "")
				s.addKey(t, "orphan", "")
				return s
			},
			want: 0, stdout: `WARNING  orphan: no "owner" label`,
		},
		{
			name: "warnings fail under --strict",
			setup: func(t *testing.T) govSetup {
				s := newGovSetup(t, 365, true, "")
				s.addKey(t, "orphan", "")
				return s
			},
			args: []string{"--strict"}, want: 1, inErrMsg: "orphan",
		},
		{
			name:  "certificate expiring in 10 days is a warning",
			setup: func(t *testing.T) govSetup { return newGovSetup(t, 10, true, "") },
			args:  []string{"--strict"}, want: 1, inErrMsg: "expires on",
		},
		{
			name:  "--tls-warn-days 5 lets it pass",
			setup: func(t *testing.T) govSetup { return newGovSetup(t, 10, true, "") },
			args:  []string{"--strict", "--tls-warn-days", "5"}, want: 0,
		},
		{
			name: "policy with an undefined attribute is an error",
			setup: func(t *testing.T) govSetup {
				s := newGovSetup(t, 365, true, "")
				if err := os.WriteFile(filepath.Join(s.policyDir, "bad.cedar"), []byte(`permit (principal, action == Tresor::Action::"Decrypt", resource) when { resource.nonexistent == "x" };`), 0o600); err != nil {
					t.Fatal(err)
				}
				return s
			},
			want: 2, is: policy.ErrInvalidPolicy, inErrMsg: "bad.cedar", stdout: "ERROR",
		},
		{
			name:  "missing store is an error and is not created",
			setup: func(t *testing.T) govSetup { return newGovSetup(t, 365, false, "") },
			want:  2, inErrMsg: "not created",
		},
		{
			name:  "--skip keys for a fresh deployment",
			setup: func(t *testing.T) govSetup { return newGovSetup(t, 365, false, "") },
			args:  []string{"--skip", "keys", "--strict"}, want: 0,
		},
		{
			name:  "schema using a missing key is an error",
			setup: func(t *testing.T) govSetup { return newGovSetup(t, 365, true, "") },
			args:  []string{"--schema-dir", "SCHEMAS"}, want: 2, inErrMsg: `"pii-aead", which does not exist`,
		},
		{
			name: "schema using an existing key passes",
			setup: func(t *testing.T) govSetup {
				s := newGovSetup(t, 365, true, "")
				s.addKey(t, "pii-aead", "crm")
				return s
			},
			args: []string{"--schema-dir", "SCHEMAS", "--strict"}, want: 0, stdout: "schema: ok",
		},
		{
			name: "unknown configuration key",
			setup: func(t *testing.T) govSetup {
				s := newGovSetup(t, 365, true, "")
				f, err := os.OpenFile(s.cfg, os.O_APPEND|os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintln(f, "unexpected_key: true")
				f.Close()
				return s
			},
			want: 2, is: config.ErrInvalid, inErrMsg: "unexpected_key",
		},
		{name: "unknown flag", setup: func(t *testing.T) govSetup { return newGovSetup(t, 365, true, "") }, args: []string{"--no-such-flag"}, want: 3},
		{name: "unknown check", setup: func(t *testing.T) govSetup { return newGovSetup(t, 365, true, "") }, args: []string{"--skip", "everything"}, want: 3, is: governance.ErrUnknownCheck},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.setup(t)
			args := []string{"--config", s.cfg}
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "SCHEMAS", s.schemaDir))
			}
			out, err := runGov(t, append([]string{"check"}, args...)...)
			if got := exitCodeOf(err); got != tc.want {
				t.Fatalf("check %v exit code = %d (err %v), want %d\n%s", tc.args, got, err, tc.want, out)
			}
			if tc.stdout != "" && !strings.Contains(out, tc.stdout) {
				t.Errorf("check %v printed\n%s\nwant it to contain %q", tc.args, out, tc.stdout)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("check %v err = %v, want errors.Is %v", tc.args, err, tc.is)
			}
			if tc.inErrMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.inErrMsg)) {
				t.Errorf("check %v err = %v, want it to contain %q", tc.args, err, tc.inErrMsg)
			}
			if _, statErr := os.Stat(s.db); tc.name == "missing store is an error and is not created" && !errors.Is(statErr, fs.ErrNotExist) {
				t.Errorf("check created the key store %s (stat err %v); want nothing created", s.db, statErr)
			}

			// report exits alike and writes a valid JSON report.
			if tc.want == 3 {
				return
			}
			outFile := filepath.Join(t.TempDir(), "report.json")
			_, err = runGov(t, append([]string{"report", "--out", outFile}, args...)...)
			if got := exitCodeOf(err); got != tc.want {
				t.Errorf("report %v exit code = %d (err %v), want %d", tc.args, got, err, tc.want)
			}
			data, err := os.ReadFile(outFile)
			if err != nil {
				t.Fatalf("report --out %s wrote nothing: %v", outFile, err)
			}
			var rep governance.Report
			if err := json.Unmarshal(data, &rep); err != nil || rep.Version != governance.FormatVersion {
				t.Errorf("report --out = %s, %v; want a JSON report of version %d", data, err, governance.FormatVersion)
			}
		})
	}
}

func TestReportFormats(t *testing.T) {
	s := newGovSetup(t, 365, true, "")
	s.addKey(t, "payments", "payments-team")
	js, err := runGov(t, "report", "--config", s.cfg)
	if err != nil {
		t.Fatalf("report --format json err = %v, want nil", err)
	}
	var rep governance.Report
	if err := json.Unmarshal([]byte(js), &rep); err != nil || rep.Status != "ok" || rep.Keys == nil || rep.Keys.Total != 1 {
		t.Errorf("report (json) = %s, %v; want status ok and 1 key", js, err)
	}
	text, err := runGov(t, "report", "--config", s.cfg, "--format", "text")
	if err != nil || !strings.Contains(text, "result: OK") || !strings.Contains(text, "keys: ok (1 keys") {
		t.Errorf("report --format text = %q, %v; want the readable summary", text, err)
	}
	if _, err := runGov(t, "report", "--config", s.cfg, "--format", "xml"); exitCodeOf(err) != 3 {
		t.Errorf("report --format xml err = %v (exit %d), want exit 3", err, exitCodeOf(err))
	}
	if _, err := runGov(t, "report"); exitCodeOf(err) != 3 || !strings.Contains(fmt.Sprint(err), "config") {
		t.Errorf("report without --config err = %v (exit %d), want exit 3 naming config", err, exitCodeOf(err))
	}
	if _, err := runGov(t, "report", "--config", s.cfg, "--out", filepath.Join(s.dir, "no", "such", "dir", "r.json")); exitCodeOf(err) != 3 {
		t.Errorf("report --out into a missing directory err = %v (exit %d), want exit 3", err, exitCodeOf(err))
	}
}

// TestGovernanceShowsNoSecrets: a PIN in the root key URI and a password in
// the PostgreSQL URL appear nowhere: not on stdout (text or JSON), not in
// the error main prints.
func TestGovernanceShowsNoSecrets(t *testing.T) {
	// Nothing listens on port 1: opening the store fails, and its error is
	// in the report.
	s := newGovSetup(t, 365, false, "postgres://tresor:"+govPassword+"@127.0.0.1:1/keys?sslmode=disable&connect_timeout=2")
	for _, args := range [][]string{
		{"check", "--config", s.cfg},
		{"report", "--config", s.cfg},
		{"report", "--config", s.cfg, "--format", "text"},
	} {
		out, err := runGov(t, args...)
		if exitCodeOf(err) != 2 || !strings.Contains(out, "keys") {
			t.Errorf("%v = exit %d (%v), want 2 for the unreachable store\n%s", args, exitCodeOf(err), err, out)
		}
		for _, secret := range []string{govPIN, govPassword} {
			if strings.Contains(out, secret) || strings.Contains(fmt.Sprint(err), secret) {
				t.Errorf("%v shows the secret %q:\n%s\n%v", args, secret, out, err)
			}
		}
	}
}

func TestSQLitePath(t *testing.T) {
	tests := []struct {
		url  string
		path string
		ok   bool
	}{
		{"sqlite:///var/lib/tresor/keys.db", "/var/lib/tresor/keys.db", true},
		{"/var/lib/tresor/keys.db", "/var/lib/tresor/keys.db", true},
		{"postgres://u@h/db", "", false},
	}
	for _, tc := range tests {
		if path, ok := sqlitePath(tc.url); path != tc.path || ok != tc.ok {
			t.Errorf("sqlitePath(%q) = %q, %v; want %q, %v", tc.url, path, ok, tc.path, tc.ok)
		}
	}
}
