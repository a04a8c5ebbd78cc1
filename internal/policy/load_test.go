package policy

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

// policyDir writes the example schema and files into a new directory.
func policyDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	schema, err := os.ReadFile(filepath.Join(examplesDir, DefaultSchemaFile))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, DefaultSchemaFile), string(schema))
	for name, text := range files {
		writeFile(t, filepath.Join(dir, name), text)
	}
	return dir
}

func writeFile(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writePolicies loads the example schema with files.
func writePolicies(t testing.TB, files map[string]string) *Engine {
	t.Helper()
	dir := policyDir(t, files)
	e, err := Load(Options{PolicyDir: dir, Location: cet})
	if err != nil {
		t.Fatalf("Load(%v) err = %v, want nil", files, err)
	}
	return e
}

const goodPolicy = `@id("health") permit (principal, action == Tresor::Action::"CheckHealth", resource);`

func TestLoadRefusesInvalidPolicies(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		want   []string // in the error's message, beside the file name
	}{
		{
			name:   "unknown attribute",
			policy: `permit (principal, action == Tresor::Action::"Decrypt", resource) when { resource.colour == "red" };`,
			want:   []string{"bad.cedar:0", "colour"},
		},
		{
			name:   "unknown principal attribute",
			policy: `permit (principal, action, resource) when { principal.department == "risk" };`,
			want:   []string{"department"},
		},
		{
			name:   "wrong type",
			policy: `permit (principal, action == Tresor::Action::"Decrypt", resource) when { resource.tier_level > "3" };`,
			want:   []string{"Long", "String"},
		},
		{
			name:   "string compared to a long",
			policy: `@id("tier-as-number") permit (principal, action == Tresor::Action::"Decrypt", resource) when { resource.tier == 4 };`,
			want:   []string{"tier-as-number"},
		},
		{
			name:   "decimal method on a string",
			policy: `permit (principal, action, resource) when { context has purpose && context.purpose.greaterThan(decimal("1.0")) };`,
			want:   []string{"decimal"},
		},
		{
			name:   "unknown action",
			policy: `@id("exfiltrate") permit (principal, action == Tresor::Action::"Exfiltrate", resource);`,
			want:   []string{"exfiltrate", "Exfiltrate"},
		},
		{
			name:   "unknown action in a set",
			policy: `permit (principal, action in [Tresor::Action::"Decrypt", Tresor::Action::"Decrpyt"], resource);`,
			want:   []string{"Decrpyt"},
		},
		{
			name:   "unknown entity type",
			policy: `permit (principal == Tresor::User::"bob", action, resource);`,
			want:   []string{"Tresor::User"},
		},
		{
			name:   "action on the wrong resource type",
			policy: `permit (principal, action == Tresor::Action::"CheckHealth", resource is Tresor::Key);`,
			want:   []string{"bad.cedar:0"},
		},
		{
			name:   "optional attribute without has",
			policy: `permit (principal, action, resource) when { context.purpose == "fraud" };`,
			want:   []string{"purpose"},
		},
		{
			name:   "tag without hasTag",
			policy: `permit (principal, action == Tresor::Action::"Decrypt", resource) when { resource.getTag("env") == "prod" };`,
			want:   []string{"env"},
		},
		{
			name:   "second policy of the file",
			policy: "permit (principal, action == Tresor::Action::\"GetKey\", resource);\npermit (principal, action, resource) when { context.weekday == \"Monday\" };",
			want:   []string{"bad.cedar:1", "line 2"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := policyDir(t, map[string]string{"good.cedar": goodPolicy, "bad.cedar": tc.policy})
			e, err := Load(Options{PolicyDir: dir})
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("Load(%s) err = %v, want ErrInvalidPolicy", tc.name, err)
			}
			if e != nil {
				t.Errorf("Load(%s) engine = %p, want nil", tc.name, e)
			}
			msg := err.Error()
			for _, w := range append([]string{"bad.cedar", "does not validate"}, tc.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("Load(%s) err = %q, want it to contain %q", tc.name, msg, w)
				}
			}
			if strings.Contains(msg, "good.cedar") {
				t.Errorf("Load(%s) err = %q, names good.cedar", tc.name, msg)
			}
		})
	}
}

func TestLoadRefusesBadSets(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"syntax error", map[string]string{"good.cedar": goodPolicy, "syntax.cedar": `permit (principal, action, resource) when { ;`}, "syntax.cedar does not parse"},
		{"missing semicolon", map[string]string{"syntax.cedar": `permit (principal, action, resource)`}, "syntax.cedar does not parse"},
		{"no policy file", map[string]string{"README.md": "policies go here"}, "no *.cedar file"},
		{"only empty files", map[string]string{"empty.cedar": "// nothing yet\n"}, "no policy in"},
		{"duplicate id", map[string]string{"a.cedar": goodPolicy, "b.cedar": goodPolicy}, "id already used by a.cedar"},
		{"every bad policy reported", map[string]string{
			"a.cedar": `permit (principal, action == Tresor::Action::"Nope", resource);`,
			"b.cedar": `permit (principal, action, resource) when { resource.nope };`,
		}, "b.cedar"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(Options{PolicyDir: policyDir(t, tc.files)})
			if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load(%s) err = %v, want ErrInvalidPolicy containing %q", tc.name, err, tc.want)
			}
		})
	}
}

func TestLoadRefusesBadSchemas(t *testing.T) {
	schema, err := os.ReadFile(filepath.Join(examplesDir, DefaultSchemaFile))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		replace [2]string // in the example schema
		want    string
	}{
		{"syntax error", [2]string{"entity Role;", "entity Role"}, "does not parse"},
		{"no Key type", [2]string{"entity Key {", "entity Vault {"}, "Key"},
		{"Key without tier_level", [2]string{"tier_level: Long,", ""}, "Tresor::Key entity"},
		{"tier_level a String", [2]string{"tier_level: Long,", "tier_level: String,"}, "Tresor::Key entity"},
		{"Key without tags", [2]string{"} tags String;", "};"}, "Tresor::Key entity"},
		{"context without weekday", [2]string{"weekday: Long,", ""}, "does not conform"},
		{"context with an extra attribute", [2]string{"auth: String,", "auth: String, region: String,"}, "does not conform"},
		{"transaction_value required", [2]string{"transaction_value?: decimal", "transaction_value: decimal"}, "does not conform"},
		{"action on an unknown resource type", [2]string{"action CheckHealth\n    appliesTo { principal: Principal, resource: Service,",
			"entity Host;\n  action CheckHealth\n    appliesTo { principal: Principal, resource: Host,"}, "CheckHealth"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := string(schema)
			if !strings.Contains(text, tc.replace[0]) {
				t.Fatalf("example schema lacks %q", tc.replace[0])
			}
			dir := policyDir(t, map[string]string{"good.cedar": goodPolicy})
			writeFile(t, filepath.Join(dir, DefaultSchemaFile), strings.Replace(text, tc.replace[0], tc.replace[1], 1))
			_, err := Load(Options{PolicyDir: dir})
			if !errors.Is(err, ErrInvalidSchema) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load(schema %s) err = %v, want ErrInvalidSchema containing %q", tc.name, err, tc.want)
			}
		})
	}
}

func TestLoadMissingFiles(t *testing.T) {
	dir := policyDir(t, map[string]string{"good.cedar": goodPolicy})
	tests := []struct {
		name string
		opts Options
	}{
		{"missing schema", Options{PolicyDir: dir, SchemaFile: filepath.Join(dir, "nope.cedarschema")}},
		{"missing dir", Options{PolicyDir: filepath.Join(dir, "nope"), SchemaFile: filepath.Join(dir, DefaultSchemaFile)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Load(tc.opts); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Load(%s) err = %v, want fs.ErrNotExist", tc.name, err)
			}
		})
	}
	if _, err := Load(Options{}); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("Load(Options{}) err = %v, want ErrInvalidPolicy", err)
	}
}

func TestLoadSchemaFileOutsideDir(t *testing.T) {
	dir := policyDir(t, map[string]string{"good.cedar": goodPolicy})
	schemaDir := t.TempDir()
	moved := filepath.Join(schemaDir, "model.cedarschema")
	if err := os.Rename(filepath.Join(dir, DefaultSchemaFile), moved); err != nil {
		t.Fatal(err)
	}
	e, err := Load(Options{PolicyDir: dir, SchemaFile: moved})
	if err != nil {
		t.Fatalf("Load(SchemaFile elsewhere) err = %v, want nil", err)
	}
	if !e.HasAction("CheckHealth") {
		t.Errorf("HasAction(CheckHealth) = false, want true")
	}
}

func TestPolicyIDs(t *testing.T) {
	e := writePolicies(t, map[string]string{
		"b.cedar": goodPolicy,
		"a.cedar": `permit (principal, action == Tresor::Action::"GetKey", resource);
permit (principal, action == Tresor::Action::"ListKeys", resource);`,
		"notes.txt": "not a policy",
	})
	want := []string{"a.cedar:0", "a.cedar:1", "health"}
	if got := e.PolicyIDs(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("PolicyIDs() = %q, want %q", got, want)
	}
	d := e.Decide(req(payments, "ListKeys", service, office()))
	if !d.Allow || strings.Join(d.Policies, ",") != "a.cedar:1" {
		t.Errorf("Decide(payments, ListKeys) = %v by %q, want allow by a.cedar:1", d.Allow, d.Policies)
	}
}

// TestLoadFromFS: an embedded policy set (Options.FS) loads as the same
// files on disk do, and a missing file is an error.
func TestLoadFromFS(t *testing.T) {
	fsys := fstest.MapFS{
		DefaultSchemaFile: {Data: mustReadFile(t, filepath.Join(examplesDir, DefaultSchemaFile))},
		"p/good.cedar":    {Data: []byte(goodPolicy)},
	}
	fsys["p/"+DefaultSchemaFile] = fsys[DefaultSchemaFile]
	e, err := Load(Options{FS: fsys, PolicyDir: "p"})
	if err != nil {
		t.Fatalf("Load(FS) err = %v, want nil", err)
	}
	if got := e.PolicyIDs(); len(got) != 1 || got[0] != "health" {
		t.Errorf("Load(FS) policies = %q, want [health]", got)
	}
	if _, err := Load(Options{FS: fsys, PolicyDir: "nowhere"}); err == nil {
		t.Error("Load(FS, missing directory) err = nil, want an error")
	}
}

func mustReadFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
