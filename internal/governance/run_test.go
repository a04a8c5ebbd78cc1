package governance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

// testConfigYAML writes TLS material valid for a year and a valid policy
// set under dir and returns a configuration that uses them, the store at
// storeURL and a PKCS#11 root key whose URI carries testPIN.
func testConfigYAML(t testing.TB, dir, storeURL string) string {
	t.Helper()
	now := time.Now()
	s := writeTLS(t, filepath.Join(dir, "tls"), now.Add(-time.Hour), now.Add(365*24*time.Hour), 3*365*24*time.Hour)
	pdir := filepath.Join(dir, "policies")
	schema, err := os.ReadFile(filepath.Join(examplesDir, "tresor.cedarschema"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(pdir, "tresor.cedarschema"), string(schema))
	writeFile(t, filepath.Join(pdir, "health.cedar"), goodPolicy)
	return fmt.Sprintf(`listen:
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
`, s.cert, s.key, s.ca, storeURL, testPIN, filepath.Join(pdir, "tresor.cedarschema"), pdir)
}

// openSQLite opens an existing SQLite store for Run, as cmd/tresor does.
func openSQLite(ctx context.Context, url string) (KeyStore, error) {
	path := strings.TrimPrefix(url, "sqlite://")
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	return store.OpenSQLite(ctx, path)
}

func TestRunExitCodes(t *testing.T) {
	tests := []struct {
		name   string
		keys   []keySpec
		policy string // a second policy file, when set
		want   int
		status string
	}{
		{name: "clean", keys: []keySpec{{name: "payments", owner: "payments-team"}}, want: ExitOK, status: "ok"},
		{name: "warnings", keys: []keySpec{{name: "payments", owner: "payments-team"}, {name: "orphan"}}, want: ExitWarnings, status: "warnings"},
		{
			name: "errors", keys: []keySpec{{name: "orphan"}},
			policy: `permit (principal, action == Tresor::Action::"Decrypt", resource) when { resource.nonexistent == "x" };`,
			want:   ExitErrors, status: "errors",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			st, dbPath := openStore(t)
			for _, k := range tc.keys {
				k.created = time.Now()
				createKey(t, st, k)
			}
			cfgPath := writeFile(t, filepath.Join(dir, "tresor.yaml"), testConfigYAML(t, dir, "sqlite://"+dbPath))
			if tc.policy != "" {
				writeFile(t, filepath.Join(dir, "policies", "bad.cedar"), tc.policy)
			}
			r, err := Run(context.Background(), Options{ConfigPath: cfgPath, Env: []string{}, OpenStore: openSQLite})
			if err != nil {
				t.Fatalf("Run(%s) err = %v, want nil", tc.name, err)
			}
			if r.ExitCode() != tc.want || r.Status != tc.status {
				t.Errorf("Run(%s) = exit %d, status %q; want %d, %q\n%s", tc.name, r.ExitCode(), r.Status, tc.want, tc.status, r.Text())
			}
			if r.Keys == nil || r.Keys.Total != len(tc.keys) {
				t.Errorf("Run(%s) key summary = %+v, want %d keys", tc.name, r.Keys, len(tc.keys))
			}
			if tc.want == ExitErrors && !hasFinding(r.Findings, PolicyCheck, SeverityError, filepath.Join(dir, "policies", "bad.cedar"), "nonexistent") {
				t.Errorf("Run(%s) findings = %+v, want a policy error about bad.cedar", tc.name, r.Findings)
			}
		})
	}
}

func TestRunSkips(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.db")
	cfgPath := writeFile(t, filepath.Join(dir, "tresor.yaml"), testConfigYAML(t, dir, "sqlite://"+missing))

	r, err := Run(context.Background(), Options{ConfigPath: cfgPath, Env: []string{}, OpenStore: openSQLite})
	if err != nil {
		t.Fatalf("Run(missing store) err = %v, want nil", err)
	}
	if !hasFinding(r.Findings, KeysCheck, SeverityError, "sqlite://"+missing, "key store") || r.ExitCode() != ExitErrors {
		t.Errorf("Run(missing store) = exit %d, %+v; want a keys error about %s", r.ExitCode(), r.Findings, missing)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Run(missing store) created %s (stat err = %v); want nothing created", missing, err)
	}

	r, err = Run(context.Background(), Options{ConfigPath: cfgPath, Env: []string{}, OpenStore: openSQLite, Skip: []string{KeysCheck}})
	if err != nil || r.ExitCode() != ExitOK || r.Keys != nil {
		t.Errorf("Run(--skip keys) = exit %d, keys %+v, %v; want 0, nil, nil\n%s", r.ExitCode(), r.Keys, err, r.Text())
	}
	if st := checkStatus(r, KeysCheck); st != "skipped" {
		t.Errorf("Run(--skip keys) keys status = %q, want skipped", st)
	}
	if st := checkStatus(r, SchemaCheck); st != "skipped" {
		t.Errorf("Run() without a schema source: schema status = %q, want skipped", st)
	}

	if _, err := Run(context.Background(), Options{ConfigPath: cfgPath, Skip: []string{"config"}}); !errors.Is(err, ErrUnknownCheck) {
		t.Errorf("Run(Skip config) err = %v, want ErrUnknownCheck", err)
	}

	bad := writeFile(t, filepath.Join(dir, "bad.yaml"), "unexpected_key: 1\n")
	r, err = Run(context.Background(), Options{ConfigPath: bad, Env: []string{}, OpenStore: openSQLite})
	if err != nil || r.ExitCode() != ExitErrors {
		t.Fatalf("Run(bad config) = exit %d, %v; want 2, nil", r.ExitCode(), err)
	}
	for _, c := range []string{PolicyCheck, SchemaCheck, TLSCheck, KeysCheck} {
		if st := checkStatus(r, c); st != "skipped" {
			t.Errorf("Run(bad config) %s status = %q, want skipped", c, st)
		}
	}
}

func checkStatus(r Report, check string) string {
	for _, cs := range r.Summary.Checks {
		if cs.Check == check {
			return cs.Status
		}
	}
	return ""
}

// TestReportHoldsNoSecrets: a PIN in the root key URI and a password in a
// PostgreSQL URL stay out of the report, even when an error quotes them.
func TestReportHoldsNoSecrets(t *testing.T) {
	dir := t.TempDir()
	pgURL := "postgres://tresor:" + testPassword + "@db.bank.internal:5432/keys?sslmode=verify-full&password=" + testPassword
	cfgPath := writeFile(t, filepath.Join(dir, "tresor.yaml"), testConfigYAML(t, dir, pgURL))
	careless := func(_ context.Context, url string) (KeyStore, error) {
		return nil, fmt.Errorf("cannot connect to %s: %w", url, store.ErrUnavailable)
	}
	r, err := Run(context.Background(), Options{ConfigPath: cfgPath, Env: []string{}, OpenStore: careless})
	if err != nil {
		t.Fatalf("Run() err = %v, want nil", err)
	}
	errs := findingsOf(r.Findings, KeysCheck, SeverityError, "")
	if len(errs) != 1 || !errors.Is(errs[0].Err, store.ErrUnavailable) {
		t.Fatalf("Run(unreachable store) findings = %+v, want one keys error wrapping store.ErrUnavailable", r.Findings)
	}
	if want := "postgres://tresor@db.bank.internal:5432/keys"; errs[0].Subject != want {
		t.Errorf("Run(unreachable store) subject = %q, want %q", errs[0].Subject, want)
	}
	js, err := r.JSON()
	if err != nil {
		t.Fatalf("JSON() err = %v, want nil", err)
	}
	for name, out := range map[string]string{"JSON": string(js), "Text": r.Text()} {
		for _, secret := range []string{testPassword, testPIN} {
			if strings.Contains(out, secret) {
				t.Errorf("%s() holds the secret %q:\n%s", name, secret, out)
			}
		}
	}
}

func TestReportJSON(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	r := NewReport(at, "/etc/tresor/tresor.yaml", []Finding{
		{Check: KeysCheck, Severity: SeverityWarning, Subject: "b", Message: "no owner"},
		{Check: ConfigCheck, Severity: SeverityInfo, Subject: "/etc/tresor/tresor.yaml", Message: "configuration OK"},
		{Check: KeysCheck, Severity: SeverityError, Subject: "a", Message: "broken", Err: errors.New("internal detail")},
	}, []string{SchemaCheck}, &KeySummary{Total: 2, Enabled: 2, NoOwner: 1, ByType: map[string]int{"AES256_GCM": 2}})
	js, err := r.JSON()
	if err != nil {
		t.Fatalf("JSON() err = %v, want nil", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		t.Fatalf("JSON() = %s: not valid JSON: %v", js, err)
	}
	want := []string{"config", "findings", "keys", "status", "summary", "time", "version"}
	if got := slices.Sorted(maps.Keys(top)); !slices.Equal(got, want) {
		t.Errorf("JSON() top-level fields = %v, want %v", got, want)
	}
	var back struct {
		Version  int
		Status   string
		Findings []map[string]string
		Summary  struct {
			Errors, Warnings, Infos int
			Checks                  []map[string]any
		}
		Keys map[string]any
	}
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if back.Version != FormatVersion || back.Status != "errors" || back.Summary.Errors != 1 || back.Summary.Warnings != 1 || back.Summary.Infos != 1 {
		t.Errorf("JSON() = %s; want version 1, status errors, 1 error, 1 warning, 1 info", js)
	}
	wantFinding := map[string]string{"check": "config", "severity": "info", "subject": "/etc/tresor/tresor.yaml", "message": "configuration OK"}
	if len(back.Findings) != 3 || !reflect.DeepEqual(back.Findings[0], wantFinding) {
		t.Errorf("JSON() findings = %v, want 3, the first %v", back.Findings, wantFinding)
	}
	if back.Findings[1]["subject"] != "a" || back.Findings[1]["severity"] != "error" {
		t.Errorf("JSON() findings[1] = %v, want the keys error about a (errors before warnings)", back.Findings[1])
	}
	if strings.Contains(string(js), "internal detail") {
		t.Errorf("JSON() = %s, holds Finding.Err; want it left out", js)
	}
	if len(back.Summary.Checks) != 5 || back.Summary.Checks[2]["check"] != "schema" || back.Summary.Checks[2]["status"] != "skipped" {
		t.Errorf("JSON() summary.checks = %v, want the five checks in order, schema skipped", back.Summary.Checks)
	}
	if back.Keys["no_owner"] != float64(1) || back.Keys["total"] != float64(2) {
		t.Errorf("JSON() keys = %v, want total 2, no_owner 1", back.Keys)
	}
	again, err := r.JSON()
	if err != nil || string(again) != string(js) {
		t.Errorf("JSON() twice = %s, then %s; want the same bytes", js, again)
	}
	empty, err := NewReport(at, "x", nil, nil, nil).JSON()
	if err != nil || !strings.Contains(string(empty), `"findings": []`) || !strings.Contains(string(empty), `"keys": null`) {
		t.Errorf("JSON() of an empty report = %s, %v; want findings [] and keys null", empty, err)
	}

	text := r.Text()
	for _, w := range []string{"result: ERRORS: 1 error, 1 warning, 1 note (exit code 2)", "keys: errors (2 keys: 2 enabled", "ERROR    a: broken", "WARNING  b: no owner", "schema: skipped", "config: ok"} {
		if !strings.Contains(text, w) {
			t.Errorf("Text() = \n%s\nwant it to contain %q", text, w)
		}
	}
	if strings.Index(text, "config: ok") > strings.Index(text, "keys: errors") {
		t.Errorf("Text() = \n%s\nwant config before keys", text)
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		sev  []Severity
		want int
	}{
		{"nothing", nil, ExitOK},
		{"infos only", []Severity{SeverityInfo, SeverityInfo}, ExitOK},
		{"a warning", []Severity{SeverityInfo, SeverityWarning}, ExitWarnings},
		{"an error", []Severity{SeverityWarning, SeverityError, SeverityInfo}, ExitErrors},
	}
	for _, tc := range tests {
		var fs []Finding
		for _, s := range tc.sev {
			fs = append(fs, Finding{Check: KeysCheck, Severity: s})
		}
		if got := NewReport(time.Now(), "", fs, nil, nil).ExitCode(); got != tc.want {
			t.Errorf("NewReport(%s).ExitCode() = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestSeverityText(t *testing.T) {
	for _, s := range []Severity{SeverityInfo, SeverityWarning, SeverityError} {
		b, err := s.MarshalText()
		if err != nil {
			t.Fatalf("%v.MarshalText() err = %v, want nil", s, err)
		}
		var back Severity
		if err := back.UnmarshalText(b); err != nil || back != s {
			t.Errorf("UnmarshalText(%s) = %v, %v; want %v", b, back, err, s)
		}
	}
	if _, err := Severity(0).MarshalText(); !errors.Is(err, ErrInvalidSeverity) {
		t.Errorf("Severity(0).MarshalText() err = %v, want ErrInvalidSeverity", err)
	}
	if _, err := ParseSeverity("fatal"); !errors.Is(err, ErrInvalidSeverity) {
		t.Errorf("ParseSeverity(fatal) err = %v, want ErrInvalidSeverity", err)
	}
}
