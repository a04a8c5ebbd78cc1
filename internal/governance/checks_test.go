package governance

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/policy"
	"github.com/tresorkms/tresor/internal/store"
)

func TestCheckPolicies(t *testing.T) {
	tests := []struct {
		name     string
		files    map[string]string
		schema   string   // replaces the schema file's contents when set
		wantErrs []string // subjects (file base names) of the error findings, in order
		wantIs   error
	}{
		{name: "valid", files: map[string]string{"good.cedar": goodPolicy}},
		{
			name:     "attribute the schema does not define",
			files:    map[string]string{"good.cedar": goodPolicy, "bad.cedar": `permit (principal, action == Tresor::Action::"Decrypt", resource) when { resource.nonexistent == "x" };`},
			wantErrs: []string{"bad.cedar"}, wantIs: policy.ErrInvalidPolicy,
		},
		{
			name: "two bad files, one finding each",
			files: map[string]string{
				"a.cedar":  `permit (principal, action, resource) when { principal.department == "risk" };`,
				"ba.cedar": `permit (principal, action, resource) when { resource.colour == "red" };`,
			},
			wantErrs: []string{"a.cedar", "ba.cedar"}, wantIs: policy.ErrInvalidPolicy,
		},
		{name: "does not parse", files: map[string]string{"broken.cedar": `permit (principal, action, resource`}, wantErrs: []string{"broken.cedar"}, wantIs: policy.ErrInvalidPolicy},
		{name: "schema does not parse", files: map[string]string{"good.cedar": goodPolicy}, schema: "namespace {", wantErrs: []string{"tresor.cedarschema"}, wantIs: policy.ErrInvalidSchema},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := policyDir(t, tc.files)
			if tc.schema != "" {
				writeFile(t, filepath.Join(dir, "tresor.cedarschema"), tc.schema)
			}
			fs := CheckPolicies(policy.Options{PolicyDir: dir, SchemaFile: filepath.Join(dir, "tresor.cedarschema")})
			errs := findingsOf(fs, PolicyCheck, SeverityError, "")
			if len(errs) != len(tc.wantErrs) {
				t.Fatalf("CheckPolicies(%s) = %+v, want %d error findings", tc.name, fs, len(tc.wantErrs))
			}
			for i, f := range errs {
				if f.Subject != filepath.Join(dir, tc.wantErrs[i]) {
					t.Errorf("CheckPolicies(%s) error %d subject = %q, want %q", tc.name, i, f.Subject, filepath.Join(dir, tc.wantErrs[i]))
				}
				if !errors.Is(f.Err, tc.wantIs) {
					t.Errorf("CheckPolicies(%s) error %d Err = %v, want %v", tc.name, i, f.Err, tc.wantIs)
				}
			}
			if len(tc.wantErrs) == 0 && !hasFinding(fs, PolicyCheck, SeverityInfo, dir, "validate against tresor.cedarschema") {
				t.Errorf("CheckPolicies(%s) = %+v, want one info finding that the policies validate", tc.name, fs)
			}
		})
	}
	t.Run("undefined attribute names it", func(t *testing.T) {
		dir := policyDir(t, map[string]string{"bad.cedar": `permit (principal, action == Tresor::Action::"Decrypt", resource) when { resource.nonexistent == "x" };`})
		fs := CheckPolicies(policy.Options{PolicyDir: dir})
		if len(fs) != 1 || fs[0].Severity != SeverityError || !strings.Contains(fs[0].Message, "nonexistent") {
			t.Errorf("CheckPolicies(resource.nonexistent) = %+v, want one error naming nonexistent", fs)
		}
	})
}

func TestCheckTLS(t *testing.T) {
	now := time.Now()
	day := 24 * time.Hour
	tests := []struct {
		name        string
		from, until time.Time
		caValidity  time.Duration
		want        Severity // the most severe finding about the server certificate
		contains    string
	}{
		{name: "valid a year", from: now.Add(-day), until: now.Add(365 * day), caValidity: 3 * 365 * day, want: SeverityInfo, contains: "valid"},
		{name: "expires in 10 days", from: now.Add(-day), until: now.Add(10*day + time.Hour), caValidity: 3 * 365 * day, want: SeverityWarning, contains: "in 10 days"},
		{name: "expired", from: now.Add(-30 * day), until: now.Add(-2 * day), caValidity: 3 * 365 * day, want: SeverityError, contains: "expired"},
		{name: "not yet valid", from: now.Add(2 * day), until: now.Add(300 * day), caValidity: 3 * 365 * day, want: SeverityError, contains: "not valid until"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := writeTLS(t, t.TempDir(), tc.from, tc.until, tc.caValidity)
			fs := CheckTLS(TLSFiles{CertFile: s.cert, KeyFile: s.key, ClientCAFile: s.ca}, now, DefaultTLSWarnWithin)
			got := findingsOf(fs, TLSCheck, tc.want, s.cert)
			if len(got) != 1 || !strings.Contains(got[0].Message, tc.contains) {
				t.Errorf("CheckTLS(%s) = %+v, want one %s finding about %s containing %q", tc.name, fs, tc.want, s.cert, tc.contains)
			}
			if tc.want != SeverityInfo && len(findingsOf(fs, TLSCheck, SeverityInfo, s.cert)) != 0 {
				t.Errorf("CheckTLS(%s) = %+v, want no info finding about %s beside the %s", tc.name, fs, s.cert, tc.want)
			}
			if !hasFinding(fs, TLSCheck, SeverityInfo, s.ca, "valid") {
				t.Errorf("CheckTLS(%s) = %+v, want the CA bundle %s valid", tc.name, fs, s.ca)
			}
		})
	}

	dir := t.TempDir()
	good := writeTLS(t, filepath.Join(dir, "good"), now.Add(-day), now.Add(365*day), 3*365*day)
	other := writeTLS(t, filepath.Join(dir, "other"), now.Add(-day), now.Add(365*day), 3*365*day)
	expiringCA := writeTLS(t, filepath.Join(dir, "ca-soon"), now.Add(-day), now.Add(day), 20*day)
	empty := writeFile(t, filepath.Join(dir, "empty.pem"), "no PEM here\n")
	bad := []struct {
		name    string
		files   TLSFiles
		subject string
		want    Severity
		is      error
	}{
		{name: "cert file missing", files: TLSFiles{CertFile: filepath.Join(dir, "nope.pem")}, subject: filepath.Join(dir, "nope.pem"), want: SeverityError, is: os.ErrNotExist},
		{name: "no certificate in file", files: TLSFiles{ClientCAFile: empty}, subject: empty, want: SeverityError, is: ErrNoCertificate},
		{name: "key of another certificate", files: TLSFiles{CertFile: good.cert, KeyFile: other.key}, subject: other.key, want: SeverityError},
		{name: "client CA expiring in 20 days", files: TLSFiles{ClientCAFile: expiringCA.ca}, subject: expiringCA.ca, want: SeverityWarning},
		{name: "token CA missing", files: TLSFiles{TokenCAFile: filepath.Join(dir, "token-ca.pem")}, subject: filepath.Join(dir, "token-ca.pem"), want: SeverityError, is: os.ErrNotExist},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			fs := CheckTLS(tc.files, now, DefaultTLSWarnWithin)
			got := findingsOf(fs, TLSCheck, tc.want, tc.subject)
			if len(got) != 1 {
				t.Fatalf("CheckTLS(%s) = %+v, want one %s finding about %s", tc.name, fs, tc.want, tc.subject)
			}
			if tc.is != nil && !errors.Is(got[0].Err, tc.is) {
				t.Errorf("CheckTLS(%s) Err = %v, want %v", tc.name, got[0].Err, tc.is)
			}
			if strings.Contains(got[0].Message, "PRIVATE KEY") {
				t.Errorf("CheckTLS(%s) message = %q, shows key material", tc.name, got[0].Message)
			}
		})
	}
	t.Run("warn days are configurable", func(t *testing.T) {
		s := writeTLS(t, t.TempDir(), now.Add(-day), now.Add(40*day), 365*day)
		if fs := CheckTLS(TLSFiles{CertFile: s.cert}, now, 60*day); len(findingsOf(fs, TLSCheck, SeverityWarning, s.cert)) != 1 {
			t.Errorf("CheckTLS(40 days left, warn within 60) = %+v, want a warning", fs)
		}
		if fs := CheckTLS(TLSFiles{CertFile: s.cert}, now, 30*day); len(findingsOf(fs, TLSCheck, SeverityWarning, s.cert)) != 0 {
			t.Errorf("CheckTLS(40 days left, warn within 30) = %+v, want no warning", fs)
		}
	})
}

func TestCheckSchemas(t *testing.T) {
	now := time.Now()
	st, _ := openStore(t)
	createKey(t, st, keySpec{name: "pan", owner: "o", created: now})
	createKey(t, st, keySpec{name: "iban", owner: "o", created: now})
	createKey(t, st, keySpec{name: "old", owner: "o", created: now, state: store.KeyStateDisabled})
	keys, err := ReadKeys(context.Background(), st, st)
	if err != nil {
		t.Fatal(err)
	}
	// A stand-in for fields.ParseSchema: key names, name:TYPE for a type;
	// "!" fails.
	parse := func(data []byte) ([]SchemaKey, error) {
		if strings.HasPrefix(string(data), "!") {
			return nil, errors.New("line 1: unknown tier \"secret-ish\"")
		}
		var keys []SchemaKey
		for _, w := range strings.Fields(string(data)) {
			name, typ, _ := strings.Cut(w, ":")
			keys = append(keys, SchemaKey{Name: name, Type: typ})
		}
		return keys, nil
	}
	tests := []struct {
		name   string
		files  map[string]string
		keys   []KeyInfo
		errors []string // message parts of the error findings
		infos  int
	}{
		{name: "every key exists", files: map[string]string{"cards.yaml": "pan keys/iban:AES256_GCM pan"}, keys: keys, infos: 1},
		{name: "key of another type", files: map[string]string{"cards.yaml": "pan:AES256_SIV"}, keys: keys, errors: []string{`"pan" as AES256_SIV, but it is AES256_GCM`}},
		{name: "missing key", files: map[string]string{"cards.yaml": "pan nosuchkey"}, keys: keys, errors: []string{`"nosuchkey", which does not exist`}},
		{name: "disabled key", files: map[string]string{"cards.json": "old"}, keys: keys, errors: []string{`"old", which is DISABLED`}},
		{name: "does not parse", files: map[string]string{"cards.yml": "!"}, keys: keys, errors: []string{"does not parse"}},
		{name: "other files ignored", files: map[string]string{"README.md": "nosuchkey"}, keys: keys, infos: 1},
		{name: "no inventory", files: map[string]string{"cards.yaml": "nosuchkey"}, keys: nil, infos: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, text := range tc.files {
				writeFile(t, filepath.Join(dir, n), text)
			}
			fs := CheckSchemas(context.Background(), SchemaDir(dir, parse), tc.keys)
			errs := findingsOf(fs, SchemaCheck, SeverityError, "")
			if len(errs) != len(tc.errors) {
				t.Fatalf("CheckSchemas(%s) = %+v, want %d errors", tc.name, fs, len(tc.errors))
			}
			for i, f := range errs {
				if !strings.Contains(f.Message, tc.errors[i]) {
					t.Errorf("CheckSchemas(%s) error %d = %q, want it to contain %q", tc.name, i, f.Message, tc.errors[i])
				}
			}
			if got := len(findingsOf(fs, SchemaCheck, SeverityInfo, "")); got != tc.infos {
				t.Errorf("CheckSchemas(%s) = %+v, want %d info findings", tc.name, fs, tc.infos)
			}
		})
	}
	t.Run("directory missing", func(t *testing.T) {
		fs := CheckSchemas(context.Background(), SchemaDir(filepath.Join(t.TempDir(), "nope"), parse), keys)
		if len(fs) != 1 || fs[0].Severity != SeverityError || !errors.Is(fs[0].Err, os.ErrNotExist) {
			t.Errorf("CheckSchemas(missing dir) = %+v, want one error wrapping os.ErrNotExist", fs)
		}
	})
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, filepath.Join(dir, "good.yaml"), testConfigYAML(t, dir, "sqlite://"+filepath.Join(dir, "keys.db")))
	tests := []struct {
		name    string
		path    string
		env     []string
		ok      bool
		is      error
		secrets []string
	}{
		{name: "valid", path: good, ok: true},
		{name: "missing", path: filepath.Join(dir, "nope.yaml"), is: os.ErrNotExist},
		{name: "unknown key", path: writeFile(t, filepath.Join(dir, "unknown.yaml"), "unexpected_key: true\n"), is: config.ErrInvalid},
		{name: "incomplete", path: writeFile(t, filepath.Join(dir, "empty.yaml"), "listen:\n  grpc: 127.0.0.1:1\n"), is: config.ErrInvalid},
		{
			name:    "password under a numeric key",
			path:    writeFile(t, filepath.Join(dir, "misplaced.yaml"), "limits:\n  max_plaintext_bytes: \"s3cr3tpw\"\n"),
			is:      config.ErrInvalid,
			secrets: []string{"s3cr3tpw"}, // short: the YAML decoder quotes up to 7 characters
		},
		{
			name: "PIN in a numeric environment variable", path: good, is: config.ErrInvalid,
			env: []string{"TRESOR_LIMITS_MAX_PLAINTEXT_BYTES=" + testPIN}, secrets: []string{testPIN},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := tc.env
			if env == nil {
				env = []string{}
			}
			_, ok, fs := CheckConfig(tc.path, env)
			if ok != tc.ok || len(fs) != 1 {
				t.Fatalf("CheckConfig(%s) = %v, %+v; want ok %v and one finding", tc.name, ok, fs, tc.ok)
			}
			want := SeverityError
			if tc.ok {
				want = SeverityInfo
			}
			if fs[0].Severity != want || fs[0].Subject != tc.path {
				t.Errorf("CheckConfig(%s) = %+v, want a %s finding about %s", tc.name, fs[0], want, tc.path)
			}
			if tc.is != nil && !errors.Is(fs[0].Err, tc.is) {
				t.Errorf("CheckConfig(%s) Err = %v, want %v", tc.name, fs[0].Err, tc.is)
			}
			for _, s := range tc.secrets {
				if strings.Contains(fs[0].Message, s) {
					t.Errorf("CheckConfig(%s) message = %q, shows the secret %q", tc.name, fs[0].Message, s)
				}
			}
		})
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://tresor:" + testPassword + "@db:5432/keys", "postgres://tresor:xxxxx@db:5432/keys"},
		{"dial postgresql://u:p@h/db failed", "dial postgresql://u:xxxxx@h/db failed"},
		{"pkcs11:token=t;object=o?module-path=/x.so&pin-value=" + testPIN, "pkcs11:token=t;object=o?module-path=/x.so&pin-value=xxxxx"},
		{"postgres://h/db?sslmode=verify-full&password=" + testPassword, "postgres://h/db?sslmode=verify-full&password=xxxxx"},
		{"nothing secret in /etc/tresor/tresor.yaml: 3 keys", "nothing secret in /etc/tresor/tresor.yaml: 3 keys"},
		{"sqlite:///var/lib/tresor/keys.db", "sqlite:///var/lib/tresor/keys.db"},
	}
	for _, tc := range tests {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
