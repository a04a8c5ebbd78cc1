package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runStreams runs the CLI in process with stdin and returns stdout, stderr
// and the error main would report.
func runStreams(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCmd(strings.NewReader(stdin), &out, &errOut)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// uniqueName is base with a random suffix: the dev store is shared by
// every test of the package (and by -count=N runs).
func uniqueName(t *testing.T, base string) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return base + "-" + hex.EncodeToString(b[:])
}

// fieldsSetup is a classification schema on the dev server with its keys.
type fieldsSetup struct {
	conn   []string
	schema string
}

func (f fieldsSetup) with(args ...string) []string { return append(args, f.conn...) }

// newFieldsSetup starts a dev server, creates the keys of the customer
// schema under unique names and stores the schema with put-schema.
func newFieldsSetup(t *testing.T) fieldsSetup {
	t.Helper()
	f := fieldsSetup{conn: startDev(t, devCfg), schema: uniqueName(t, "customer")}
	aead, hmac, ff1 := uniqueName(t, "pii-aead"), uniqueName(t, "pii-hmac"), uniqueName(t, "acct-ff1")
	for _, k := range []struct{ name, typ string }{{aead, "AES256_GCM"}, {hmac, "HMAC_SHA256"}, {ff1, "FF1_AES256"}} {
		mustRun(t, "", f.with("keys", "create", k.name, "--type", k.typ)...)
	}
	def := `name: ` + f.schema + `
version: 1
default_tier: public
tiers:
  restricted: {protection: aead, key: ` + aead + `, sensitivity: restricted, mask: {keep_last: 4, format: digits}}
  account:    {protection: tokenize, key: ` + ff1 + `, sensitivity: confidential}
  indexed:    {protection: blind_index, key: ` + aead + `, index_key: ` + hmac + `, sensitivity: restricted}
  public:     {protection: none}
fields:
  - {path: "$.tax_id", tier: restricted}
  - {path: "$.account_number", tier: account}
  - {path: "$.accounts[*].iban", tier: indexed}
inspection:
  action: report
`
	path := filepath.Join(t.TempDir(), "schema.yaml")
	if err := os.WriteFile(path, []byte(def), 0o600); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Name    string
		Version string
		Keys    []string
	}
	out := mustRun(t, "", f.with("fields", "put-schema", path)...)
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Name != f.schema || got.Version != "1" || len(got.Keys) != 3 {
		t.Fatalf("fields put-schema %s = %s, %v; want %s version 1 naming its 3 keys", path, out, err, f.schema)
	}
	return f
}

// lines splits output into its non-empty lines.
func lines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// jsonValue decodes a JSON document into a comparable value.
func jsonValue(t *testing.T, doc string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatalf("output line %q is not JSON: %v", doc, err)
	}
	return v
}

func TestFieldsSchemaCLI(t *testing.T) {
	f := newFieldsSetup(t)
	out := mustRun(t, "", f.with("fields", "get-schema", f.schema)...)
	var got struct {
		Name       string
		Version    string
		Definition string
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Name != f.schema || got.Version != "1" || !strings.Contains(got.Definition, "$.accounts[*].iban") {
		t.Errorf("fields get-schema %s = %s, %v; want version 1 with its fields", f.schema, out, err)
	}
	if _, err := run(t, "", f.with("fields", "get-schema", uniqueName(t, "absent"))...); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("fields get-schema of a missing schema err = %v, want NotFound", err)
	}
}

func TestFieldsProtectRevealJSONLines(t *testing.T) {
	f := newFieldsSetup(t)
	docs := []string{
		`{"id":"c-1","name":"Ada","tax_id":"123-45-6789","account_number":"4000123412341234","accounts":[{"iban":"DE89370400440532013000"},{"iban":"FR1420041010050500013M02606"}]}`,
		`{"id":"c-2","name":"Grace","tax_id":"987-65-4321","account_number":"12345678","accounts":[]}`,
		`{"id":"c-3","tax_id":"111-22-3333","account_number":"0042-0042-9","balance":12.50}`,
	}
	clearValues := []string{"123-45-6789", "987-65-4321", "111-22-3333", "4000123412341234", "12345678", "0042-0042-9", "DE89370400440532013000", "FR1420041010050500013M02606"}
	for _, idField := range []string{"", "id"} {
		t.Run("id-field="+idField, func(t *testing.T) {
			var flags []string
			if idField != "" {
				flags = []string{"--id-field", idField}
			}
			protect := append([]string{"fields", "protect", "--schema", f.schema}, flags...)
			reveal := append([]string{"fields", "reveal", "--schema", f.schema}, flags...)
			out, stderr, err := runStreams(t, strings.Join(docs, "\n")+"\n", f.with(protect...)...)
			if err != nil {
				t.Fatalf("tresor %s: err = %v, want nil", strings.Join(protect, " "), err)
			}
			if stderr != "" {
				t.Errorf("tresor %s: stderr = %q, want no findings", strings.Join(protect, " "), stderr)
			}
			protected := lines(out)
			if len(protected) != len(docs) {
				t.Fatalf("tresor %s printed %d lines, want %d:\n%s", strings.Join(protect, " "), len(protected), len(docs), out)
			}
			for _, v := range clearValues {
				if strings.Contains(out, v) {
					t.Errorf("tresor %s output holds the clear value %q:\n%s", strings.Join(protect, " "), v, out)
				}
			}
			for i, p := range protected {
				var in, got struct {
					AccountNumber string `json:"account_number"`
					TaxID         string `json:"tax_id"`
					Accounts      []map[string]string
				}
				if err := json.Unmarshal([]byte(docs[i]), &in); err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal([]byte(p), &got); err != nil {
					t.Fatalf("protected document %d = %s, not JSON: %v", i+1, p, err)
				}
				// FF1 keeps the length, the digits' places and the separators.
				if len(got.AccountNumber) != len(in.AccountNumber) || got.AccountNumber == in.AccountNumber {
					t.Errorf("document %d: account_number %q protected to %q, want a different token of the same length", i+1, in.AccountNumber, got.AccountNumber)
				}
				for j := range min(len(in.AccountNumber), len(got.AccountNumber)) {
					a, b := in.AccountNumber[j], got.AccountNumber[j]
					if isDigit(a) != isDigit(b) || (!isDigit(a) && a != b) {
						t.Errorf("document %d: account_number %q protected to %q, want digits for digits and separators kept", i+1, in.AccountNumber, got.AccountNumber)
						break
					}
				}
				if !strings.HasPrefix(got.TaxID, "tresor:v1:") {
					t.Errorf("document %d: tax_id protected to %q, want a tresor:v1: ciphertext", i+1, got.TaxID)
				}
				if len(got.Accounts) != len(in.Accounts) {
					t.Errorf("document %d: %d accounts protected, want %d", i+1, len(got.Accounts), len(in.Accounts))
				}
				for j, a := range got.Accounts {
					if !strings.HasPrefix(a["iban"], "tresor:v1:") || a["iban_bidx"] == "" {
						t.Errorf("document %d: account %d protected to %v, want a ciphertext and a blind index iban_bidx", i+1, j, a)
					}
				}
			}

			revealed := lines(mustRun(t, out, f.with(reveal...)...))
			if len(revealed) != len(docs) {
				t.Fatalf("tresor %s printed %d lines, want %d", strings.Join(reveal, " "), len(revealed), len(docs))
			}
			for i := range docs {
				// The blind index stays (it is not secret, and it is what
				// lookups search); everything else is the input.
				got, want := jsonValue(t, revealed[i]), jsonValue(t, docs[i])
				if idx, pidx := blindIndexes(got), blindIndexes(jsonValue(t, protected[i])); !slices.Equal(idx, pidx) {
					t.Errorf("tresor %s document %d has blind indexes %q, want those protect made %q", strings.Join(reveal, " "), i+1, idx, pidx)
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("tresor %s document %d = %s (blind indexes dropped), want the input %s", strings.Join(reveal, " "), i+1, revealed[i], docs[i])
				}
			}
		})
	}

	// A document protected with its id reveals under that id only: the
	// id is bound into each ciphertext.
	out := mustRun(t, docs[0], f.with("fields", "protect", "--schema", f.schema, "--id-field", "id")...)
	moved := strings.Replace(out, `"id":"c-1"`, `"id":"c-2"`, 1)
	if got, err := run(t, moved, f.with("fields", "reveal", "--schema", f.schema, "--id-field", "id")...); err == nil {
		t.Errorf("fields reveal --id-field id of a document protected as c-1 and relabelled c-2 = %s, want an error", got)
	}
}

// blindIndexes removes the iban_bidx members of $.accounts[*] from doc
// and returns them.
func blindIndexes(doc any) []string {
	var idx []string
	accounts, _ := doc.(map[string]any)["accounts"].([]any)
	for _, a := range accounts {
		if m, ok := a.(map[string]any); ok {
			if s, ok := m["iban_bidx"].(string); ok {
				idx = append(idx, s)
			}
			delete(m, "iban_bidx")
		}
	}
	return idx
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func TestFieldsProtectRevealCSV(t *testing.T) {
	f := newFieldsSetup(t)
	const in = "id,name,tax_id,account_number\n" +
		"c-1,Ada,123-45-6789,4000123412341234\n" +
		"c-2,\"Hopper, Grace\",987-65-4321,12345678\n"
	protect := []string{"fields", "protect", "--schema", f.schema, "--format", "csv", "--id-field", "id"}
	out := mustRun(t, in, f.with(protect...)...)
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(rows) != 3 {
		t.Fatalf("tresor %s = %q, %v; want a header and 2 rows", strings.Join(protect, " "), out, err)
	}
	if got := strings.Join(rows[0], ","); got != "id,name,tax_id,account_number" {
		t.Errorf("tresor %s header = %q, want the input's", strings.Join(protect, " "), got)
	}
	for _, v := range []string{"123-45-6789", "987-65-4321", "4000123412341234", "12345678"} {
		if strings.Contains(out, v) {
			t.Errorf("tresor %s output holds the clear value %q:\n%s", strings.Join(protect, " "), v, out)
		}
	}
	for i, r := range rows[1:] {
		if !strings.HasPrefix(r[2], "tresor:v1:") || len(r[3]) != len([]string{"4000123412341234", "12345678"}[i]) {
			t.Errorf("tresor %s row %d = %q, want a ciphertext tax_id and a token of the account number's length", strings.Join(protect, " "), i+1, r)
		}
	}
	reveal := []string{"fields", "reveal", "--schema", f.schema, "--format", "csv", "--id-field", "id"}
	if got := mustRun(t, out, f.with(reveal...)...); got != in {
		t.Errorf("tresor %s = %q, want the input %q", strings.Join(reveal, " "), got, in)
	}
}

func TestFieldsBadInput(t *testing.T) {
	f := newFieldsSetup(t)
	good := `{"id":"c-1","tax_id":"123-45-6789"}`
	tests := []struct {
		name  string
		stdin string
		args  []string
		want  string
	}{
		{"malformed JSON line", good + "\n" + good + "\n" + `{"id":"c-3","tax_id":` + "\n", []string{"protect", "--schema", f.schema}, "document 3"},
		{"not an object", "[1,2]\n", []string{"protect", "--schema", f.schema}, "document 1"},
		{"id field missing", good + "\n" + `{"tax_id":"1"}` + "\n", []string{"protect", "--schema", f.schema, "--id-field", "id"}, "document 2"},
		{"unknown schema", good + "\n", []string{"protect", "--schema", uniqueName(t, "absent")}, "NotFound"},
		{"unknown schema on reveal", good + "\n", []string{"reveal", "--schema", uniqueName(t, "absent")}, "NotFound"},
		{"no schema", good + "\n", []string{"protect"}, "--schema is required"},
		{"format xml", "<doc/>\n", []string{"protect", "--schema", f.schema, "--format", "xml"}, `--format "xml"`},
		{"csv without a header", "", []string{"protect", "--schema", f.schema, "--format", "csv"}, "csv header"},
		{"csv row too long", "id,tax_id\nc-1,1,extra\n", []string{"protect", "--schema", f.schema, "--format", "csv"}, "document 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := f.with(append([]string{"fields"}, tt.args...)...)
			out, err := run(t, tt.stdin, args...)
			if exitCodeOf(err) == 0 || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("tresor fields %s: stdout %q, err = %v; want a non-zero exit naming %q", strings.Join(tt.args, " "), out, err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "123-45-6789") {
				t.Errorf("tresor fields %s: err = %v, want no document value in it", strings.Join(tt.args, " "), err)
			}
		})
	}
}

// TestFieldsFindings: a card number in a field the schema leaves public is
// reported on stderr by path and detector, never by value, and (action
// report) the document is protected all the same.
func TestFieldsFindings(t *testing.T) {
	f := newFieldsSetup(t)
	const card = "4111 1111 1111 1111"
	doc := `{"id":"c-1","tax_id":"123-45-6789","note":"paid with ` + card + `"}`
	args := []string{"fields", "protect", "--schema", f.schema}
	out, stderr, err := runStreams(t, doc+"\n", f.with(args...)...)
	if err != nil {
		t.Fatalf("tresor %s: err = %v, want nil (inspection action report)", strings.Join(args, " "), err)
	}
	if want := "finding: card at $.note (report)"; !strings.Contains(stderr, want) {
		t.Errorf("tresor %s: stderr = %q, want %q", strings.Join(args, " "), stderr, want)
	}
	for _, v := range []string{card, "4111", "123-45-6789"} {
		if strings.Contains(stderr, v) {
			t.Errorf("tresor %s: stderr = %q holds the value %q", strings.Join(args, " "), stderr, v)
		}
	}
	if strings.Contains(out, "123-45-6789") || !strings.Contains(out, card) {
		t.Errorf("tresor %s = %s, want tax_id protected and the public note left as it is", strings.Join(args, " "), out)
	}
}

// TestFieldsOutputStopsAtTheBadDocument: when document N fails, the output
// holds the N-1 documents before it, protected, each a whole line: a
// stream cut at a buffer boundary in the middle of a ciphertext is not
// output one can resume from.
func TestFieldsOutputStopsAtTheBadDocument(t *testing.T) {
	f := newFieldsSetup(t)
	for _, tt := range []struct {
		name, format, header, bad string
		doc                       func(i int) string
	}{
		{"jsonl", "jsonl", "", "{bad\n", func(i int) string { return fmt.Sprintf(`{"id":"c-%d","tax_id":"123-45-6789"}`+"\n", i) }},
		{"csv", "csv", "id,tax_id\n", "c-x,1,extra\n", func(i int) string { return fmt.Sprintf("c-%d,123-45-6789\n", i) }},
	} {
		for _, good := range []int{1, 100} {
			t.Run(fmt.Sprintf("%s after %d", tt.name, good), func(t *testing.T) {
				var in strings.Builder
				in.WriteString(tt.header)
				for i := range good {
					in.WriteString(tt.doc(i))
				}
				in.WriteString(tt.bad)
				args := []string{"fields", "protect", "--schema", f.schema, "--format", tt.format}
				out, err := run(t, in.String(), f.with(args...)...)
				if want := fmt.Sprintf("document %d", good+1); err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("tresor %s: err = %v, want one naming %s", strings.Join(args, " "), err, want)
				}
				got := lines(out)
				if tt.header != "" {
					if len(got) == 0 || got[0]+"\n" != tt.header {
						t.Fatalf("tresor %s printed %q, want the header first", strings.Join(args, " "), out)
					}
					got = got[1:]
				}
				if len(got) != good || !strings.HasSuffix(out, "\n") {
					t.Fatalf("tresor %s printed %d lines (%d bytes, ending %q), want the %d documents before the bad one, whole", strings.Join(args, " "), len(got), len(out), out[max(0, len(out)-20):], good)
				}
				for i, l := range got {
					if strings.Contains(l, "123-45-6789") || !strings.Contains(l, "tresor:v1:") {
						t.Errorf("tresor %s line %d = %q, want document %d protected", strings.Join(args, " "), i+1, l, i+1)
					}
				}
			})
		}
	}
}

// TestSchemaDirAtStartup: serve stores the schemas of fields.schema_dir
// whose keys exist, and starts (warning) when a schema's keys do not exist
// yet; a schema file that does not parse refuses the start.
func TestSchemaDirAtStartup(t *testing.T) {
	dir := t.TempDir()
	suffix := strconv.FormatInt(time.Now().UnixNano()%1_000_000, 10)
	key := "dirkey-" + suffix
	conn := startDev(t, devCfg)
	mustRun(t, "", append([]string{"keys", "create", key}, conn...)...)
	ok := "name: dir-ok-" + suffix + "\nversion: 1\ndefault_tier: public\ntiers:\n  r: {protection: aead, key: " + key + "}\n  public: {protection: none}\nfields:\n  - {path: \"$.ssn\", tier: r}\n"
	missing := strings.Replace(strings.Replace(ok, "dir-ok-", "dir-missing-", 1), key, "no-such-key-"+suffix, 1)
	if err := os.WriteFile(filepath.Join(dir, "ok.yaml"), []byte(ok), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "missing.yaml"), []byte(missing), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := devCfg
	cfg.Fields.SchemaDir = dir
	var logs lockedBuffer
	addr := serveInProcess(t, cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
	f := devClient(t, cfg, addr, "schema-dir-test")
	got := mustRun(t, "", "fields", "get-schema", "dir-ok-"+suffix, "--addr", f.addr, "--ca", f.ca, "--cert", f.cert, "--key-file", f.key, "--token", f.token)
	if !strings.Contains(got, key) {
		t.Errorf("get-schema dir-ok = %s, want the schema stored at start-up", got)
	}
	if !strings.Contains(logs.String(), "classification schema not loaded") {
		t.Errorf("serve logs = %s, want a warning for the schema whose key is missing", logs.String())
	}
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("name: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := serve(context.Background(), cfg, slog.New(slog.DiscardHandler), nil); err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("serve() with a schema file that does not parse err = %v, want a refusal naming bad.yaml", err)
	}
}
