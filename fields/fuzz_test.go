package fields

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tresorkms/tresor/envelope"
)

// Fuzz targets for the schema parser, the path parser and documents through
// Protect and Reveal. Run one with
//
//	go test -run '^$' -fuzz '^FuzzProtectDocument$' -fuzztime 1m -parallel 1 ./fields
//
// (or `make fuzz`); plain `go test` runs their seeds and any corpus under
// testdata/fuzz.

// fuzzSeedFiles returns the contents of the files matching each pattern.
func fuzzSeedFiles(f *testing.F, patterns ...string) [][]byte {
	f.Helper()
	var out [][]byte
	for _, p := range patterns {
		names, err := filepath.Glob(p)
		if err != nil {
			f.Fatalf("Glob(%q) err = %v, want nil", p, err)
		}
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				f.Fatalf("ReadFile(%s) err = %v, want nil", n, err)
			}
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		f.Fatalf("no seed files match %q", patterns)
	}
	return out
}

// FuzzParseSchema: any input gives a schema or an error wrapping
// ErrInvalidSchema. A schema's canonical form (Marshal) parses back to a
// schema with the same canonical form, its paths are canonical, and it
// validates against keys of exactly the types it asks for.
func FuzzParseSchema(f *testing.F) {
	srcs := fuzzSeedFiles(f, "testdata/*.yaml", "../examples/schemas/*.yaml")
	srcs = append(srcs, []byte(customerSchema), []byte(fuzzSchema("public", "protect")))
	for _, src := range srcs {
		f.Add(src)
		s, err := ParseSchema(src)
		if err != nil {
			f.Fatalf("ParseSchema(seed) err = %v, want nil", err)
		}
		m, err := s.Marshal()
		if err != nil {
			f.Fatalf("Marshal(seed) err = %v, want nil", err)
		}
		f.Add(m) // the JSON form
	}
	for _, src := range []string{
		"", "{}", "{{{", "name: c\n---\nname: d\n", "[1, 2]", "name: [a]",
		"name: c\nversion: 1\ndefault_tier: p\ntiers: {p: {protection: none}}\nfields: [{path: '$[\"a\\u0000b\"]', tier: p}]\n",
		"name: c\nversion: 1\ndefault_tier: p\ntiers: {p: {protection: none}, m: {protection: mask, mask: {format: card, keep_last: 9}}}\n",
		"name: c\nversion: 1\ndefault_tier: p\ntiers: {p: {protection: none}, b: {protection: blind_index, key: k, index_key: h, index_suffix: '!'}}\nfields: [{path: $.a, tier: b}]\n",
		"name: c\nversion: 1\ndefault_tier: p\ntiers: {p: {protection: none}}\ninspection: {action: report, detectors: [card, card]}\n",
		"a: &a [*a, *a, *a, *a]\n",
	} {
		f.Add([]byte(src))
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSchema(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidSchema) {
				t.Fatalf("ParseSchema(%q) err = %v, want ErrInvalidSchema", data, err)
			}
			return
		}
		m, err := s.Marshal()
		if err != nil {
			t.Fatalf("Marshal(ParseSchema(%q)) err = %v, want nil", data, err)
		}
		s2, err := ParseSchema(m)
		if err != nil {
			t.Fatalf("ParseSchema(Marshal(ParseSchema(%q))) err = %v, want nil; the canonical form is\n%s", data, err, m)
		}
		m2, err := s2.Marshal()
		if err != nil || !bytes.Equal(m, m2) {
			t.Fatalf("the canonical form of %q does not round trip:\n%s\nthen\n%s (%v)", data, m, m2, err)
		}
		if _, ok := s.Tier(s.DefaultTier()); !ok {
			t.Fatalf("ParseSchema(%q) default tier %q is not a tier", data, s.DefaultTier())
		}
		for _, fl := range s.Fields() {
			segs, err := parsePath(fl.Path)
			if err != nil || canonicalPath(segs) != fl.Path {
				t.Fatalf("ParseSchema(%q) field path %q is not canonical (%v)", data, fl.Path, err)
			}
			if _, ok := s.Tier(fl.Tier); !ok {
				t.Fatalf("ParseSchema(%q) field %s has tier %q, which is not a tier", data, fl.Path, fl.Tier)
			}
		}
		types := map[string]string{}
		for _, k := range s.Keys() {
			types[k.Name] = k.KeyType
		}
		exact := KeyTyperFunc(func(_ context.Context, name string) (string, error) {
			typ, ok := types[name]
			if !ok {
				return "", fmt.Errorf("key %q was not in Keys()", name)
			}
			return typ, nil
		})
		if err := s.Validate(ctx, exact); err != nil {
			t.Fatalf("Validate(the keys of Keys()) of %q err = %v, want nil", data, err)
		}
		if len(types) > 0 {
			wrong := KeyTyperFunc(func(context.Context, string) (string, error) { return "NO_SUCH_TYPE", nil })
			if err := s.Validate(ctx, wrong); !errors.Is(err, ErrInvalidSchema) {
				t.Fatalf("Validate(every key of the wrong type) of %q err = %v, want ErrInvalidSchema", data, err)
			}
		}
	})
}

// FuzzSchemaPath: the path parser. A path that parses has a canonical
// spelling that parses to the same steps and is its own canonical spelling,
// and (if it is valid UTF-8) a schema listing it, in YAML or in JSON,
// parses and lists that canonical spelling.
func FuzzSchemaPath(f *testing.F) {
	for _, p := range []string{
		"$", "$.", "$.a", "$.a.b", "$.a[*]", "$[*]", "$.a[*].b[*]", `$["a"]`, `$["a b"]`, `$["a\"b"]`,
		`$["a\\"]`, `$["\u00e9"]`, `$[""]`, `$["a"`, `$["a\"]`, `$[0]`, `$[*`, "$..a", "a.b", "$.a-b_c9",
		`$["a]b"].c`, `$["\ud800"]`, "$[\"a\x00b\"]", "$[\"\x85\"]", "$[\"\u0085\"]", "$[\"\x7f\"]", "$[\"\ufeff\"]", "$[\"\u2028\"]", `$["a"]["b"]`,
	} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		segs, err := parsePath(p)
		if err != nil {
			if err != errPath {
				t.Fatalf("parsePath(%q) err = %v, want errPath", p, err)
			}
			return
		}
		if len(segs) == 0 {
			t.Fatalf("parsePath(%q) = no steps, nil; the root alone is not a field", p)
		}
		for i, s := range segs {
			if !s.wildcard && s.name == "" {
				t.Fatalf("parsePath(%q) step %d is an empty name", p, i)
			}
		}
		c := canonicalPath(segs)
		segs2, err := parsePath(c)
		if err != nil || !slices.Equal(segs, segs2) {
			t.Fatalf("parsePath(canonicalPath(parsePath(%q)) = %q) = %v, %v; want %v", p, c, segs2, err, segs)
		}
		if c2 := canonicalPath(segs2); c2 != c {
			t.Fatalf("canonical path of %q is %q, then %q", p, c, c2)
		}
		if !utf8.ValidString(p) {
			return // a schema file is text: JSON and YAML carry no invalid UTF-8
		}
		q := quoteSchemaString(p)
		for _, src := range []string{
			"name: c\nversion: 1\ndefault_tier: p\ntiers: {p: {protection: none}}\nfields: [{path: " + q + ", tier: p}]\n",
			`{"name":"c","version":1,"default_tier":"p","tiers":{"p":{"protection":"none"}},"fields":[{"path":` + q + `,"tier":"p"}]}`,
		} {
			s, err := ParseSchema([]byte(src))
			if err != nil {
				t.Fatalf("ParseSchema(a schema listing %q) err = %v, want nil", p, err)
			}
			if got := s.Fields(); len(got) != 1 || got[0].Path != c {
				t.Fatalf("ParseSchema(a schema listing %q) fields = %v, want [%s]", p, got, c)
			}
			// The canonical form, as stored, reads back to the same path.
			m, err := s.Marshal()
			if err != nil {
				t.Fatalf("Marshal(a schema listing %q) err = %v, want nil", p, err)
			}
			s2, err := ParseSchema(m)
			if err != nil {
				t.Fatalf("ParseSchema(Marshal(a schema listing %q)) err = %v, want nil; the canonical form is\n%s", p, err, m)
			}
			if got := s2.Fields(); len(got) != 1 || got[0].Path != c {
				t.Fatalf("ParseSchema(Marshal(a schema listing %q)) fields = %v, want [%s]", p, got, c)
			}
		}
	})
}

// quoteSchemaString returns s as a double-quoted string that JSON and
// YAML read alike: printable ASCII and characters beyond the BMP as they
// are, every other character as \uXXXX. yaml.v3 refuses two JSON escapes,
// \/ and surrogate pairs such as \ud83d\ude00: a schema in JSON that uses
// them is refused (with an error, not misread), so they are avoided here.
func quoteSchemaString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r >= 0x20 && r < 0x7f, r > 0xffff:
			b.WriteRune(r)
		default:
			fmt.Fprintf(&b, "\\u%04x", r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// fuzzSchema is a schema using every reversible protection, with short
// names the fuzzer finds easily.
func fuzzSchema(defaultTier, inspection string) string {
	s := `name: fuzz
version: 1
default_tier: ` + defaultTier + `
tiers:
  sealed:     {protection: aead, key: pii-aead, mask: {keep_last: 2, format: text}}
  searchable: {protection: deterministic, key: pii-siv, mask: {format: email}}
  indexed:    {protection: blind_index, key: pii-aead, index_key: pii-hmac, index_bytes: 8, index_suffix: _ix}
  account:    {protection: tokenize, key: acct-ff1, mask: {format: digits}}
  public:     {protection: none}
fields:
  - {path: $.a, tier: sealed}
  - {path: '$.b[*]', tier: searchable}
  - {path: '$.c[*].i', tier: indexed}
  - {path: $.i, tier: indexed}
  - {path: $.t, tier: account}
  - {path: '$.d.e', tier: sealed}
  - {path: '$["x y"]', tier: searchable}
  - {path: $.p, tier: public}
`
	if inspection != "" {
		s += "inspection: {action: " + inspection
		if inspection == "protect" {
			s += ", tier: sealed"
		}
		s += "}\n"
	}
	return s
}

// fuzzVariant is one schema documents are fuzzed under.
type fuzzVariant struct {
	schema *Schema
	// irreversible lists top-level members that do not reveal (masked,
	// redacted); siblings lists blind-index member names. The round trip
	// compares documents without them.
	irreversible, siblings []string
}

// fuzzMaxBytes and fuzzMaxDepth are the limits of the fuzzed Protector:
// small, so that the fuzzer reaches them.
const (
	fuzzMaxBytes = 4096
	fuzzMaxDepth = 6
)

// jsonShape reports, independently of the package's parser, whether doc is
// one valid JSON value that is an object, how deeply it nests (the
// top-level object is 1) and whether an object repeats a member name.
func jsonShape(doc []byte) (valid, object bool, depth int, dup bool) {
	if !json.Valid(doc) || !utf8.Valid(doc) {
		return false, false, 0, false
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	var walk func(d int) error
	walk = func(d int) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		delim, ok := tok.(json.Delim)
		if !ok {
			return nil
		}
		depth = max(depth, d)
		switch delim {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				name, _ := k.(string)
				if seen[name] {
					dup = true
				}
				seen[name] = true
				if err := walk(d + 1); err != nil {
					return err
				}
			}
		case '[':
			for dec.More() {
				if err := walk(d + 1); err != nil {
					return err
				}
			}
		}
		_, err = dec.Token() // the closing delimiter
		return err
	}
	first := bytes.TrimLeft(doc, " \t\r\n")
	if err := walk(1); err != nil && !errors.Is(err, io.EOF) {
		return false, false, 0, false
	}
	return true, len(first) > 0 && first[0] == '{', depth, dup
}

// semanticValue decodes doc (numbers kept as text) and drops the members
// the round trip does not compare.
func semanticValue(t *testing.T, doc []byte, v fuzzVariant) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	var x any
	if err := d.Decode(&x); err != nil {
		t.Fatalf("decode %q: %v", doc, err)
	}
	var drop func(any)
	drop = func(x any) {
		switch x := x.(type) {
		case map[string]any:
			for _, s := range v.siblings {
				delete(x, s)
			}
			for _, m := range x {
				drop(m)
			}
		case []any:
			for _, e := range x {
				drop(e)
			}
		}
	}
	drop(x)
	if m, ok := x.(map[string]any); ok {
		for _, k := range v.irreversible {
			delete(m, k)
		}
	}
	return x
}

// checkNoValues fails t if any of texts (errors, result paths) holds a
// scalar value of doc, valid JSON, that looks like an account or card
// number: 6 digits or more. Values that are part of a member name, which
// paths do show, are skipped.
func checkNoValues(t *testing.T, doc []byte, texts []string) {
	t.Helper()
	var values, names []string
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	// In an object, tokens alternate name, value; track which comes next.
	var inObject []bool
	var expectName bool
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch tok := tok.(type) {
		case json.Delim:
			switch tok {
			case '{':
				inObject = append(inObject, true)
				expectName = true
				continue
			case '[':
				inObject = append(inObject, false)
				expectName = false
				continue
			default:
				inObject = inObject[:len(inObject)-1]
			}
		case string:
			if expectName {
				names = append(names, tok)
				expectName = false
				continue
			}
			values = append(values, tok)
		case json.Number:
			values = append(values, tok.String())
		}
		expectName = len(inObject) > 0 && inObject[len(inObject)-1]
	}
	allNames := strings.Join(names, "\x00")
	for _, v := range values {
		digits := 0
		for _, c := range v {
			if c >= '0' && c <= '9' {
				digits++
			}
		}
		if digits < 6 || strings.Contains(allNames, v) {
			continue
		}
		for _, text := range texts {
			if strings.Contains(text, v) {
				t.Fatalf("a value of %q is in an error or a result: %q", doc, text)
			}
		}
	}
}

// FuzzProtectDocument: JSON documents through Protect, then Reveal. Under
// each schema variant:
//   - a document over the size limit is refused with ErrDocumentTooLarge;
//     one that is valid JSON, an object, without repeated member names and
//     within the depth limit is never refused as malformed, too deep or too
//     large; one that is too deep is refused with ErrDocumentTooDeep; and
//     one that Protect accepts is valid JSON within the limits;
//   - Protect and Reveal fail only with the package's sentinel errors, and
//     Protect's errors and results name no value (checked for values of 6
//     digits or more: card, account and tax numbers);
//   - the protected document is valid JSON; revealing it with every field
//     withheld gives it back byte for byte; revealing it in clear gives the
//     original JSON value but for masked or redacted fields and the added
//     blind indexes; a masked reveal gives valid JSON.
func FuzzProtectDocument(f *testing.F) {
	ctx := context.Background()
	docs := fuzzSeedFiles(f, "testdata/*.json")
	docs = append(docs, []byte(customerDoc),
		[]byte(`{"a":"secret","b":["x",1,null,{"k":true}],"c":[{"i":"DE89370400440532013000","i_ix":"old"}],"i":42,"t":"0012-3456-7890","d":{"e":[1,2]},"x y":"z","p":{"card":"4111111111111111"},"n":"4111 1111 1111 1111","m":"jane@example.com"}`),
		[]byte(`{"t":"\u0031\u0032\u00334567"}`),
		[]byte(`{"t":12345678}`),
		[]byte(`{"t":"12345"}`),
		[]byte(`{"i":null,"i_ix":"kept"}`),
		[]byte(`{"a":{"a":{"a":{"a":{"a":{}}}}}}`),
		[]byte(`{"a":[[[[[[]]]]]]}`),
		[]byte(`{"a":1,"a":2}`),
		[]byte(`{"p":"`+envelope.StringPrefix+`AQ"}`),
		[]byte(` {"a" : "\ud800" } `),
		[]byte(`[]`),
		[]byte(`{"a":1}x`),
	)
	for _, d := range docs {
		for variant := range uint8(4) {
			f.Add(variant, d, "doc-1")
		}
	}
	p, _ := newProtector(f, Options{MaxDocumentBytes: fuzzMaxBytes, MaxDepth: fuzzMaxDepth})
	variants := []fuzzVariant{
		{schema: mustSchema(f, customerSchema), irreversible: []string{"card", "password"}, siblings: []string{"iban_bidx"}},
		{schema: mustSchema(f, fuzzSchema("public", "protect")), siblings: []string{"i_ix"}},
		{schema: mustSchema(f, fuzzSchema("sealed", "")), siblings: []string{"i_ix"}},
		{schema: mustSchema(f, fuzzSchema("searchable", "reject")), siblings: []string{"i_ix"}},
	}
	revealClear := func(FieldRef) (RevealMode, error) { return RevealClear, nil }
	masked := func(FieldRef) (RevealMode, error) { return RevealMasked, nil }
	withheld := func(FieldRef) (RevealMode, error) { return RevealWithheld, nil }
	f.Fuzz(func(t *testing.T, variant uint8, doc []byte, docID string) {
		v := variants[int(variant)%len(variants)]
		in := bytes.Clone(doc)
		out, res, err := p.Protect(ctx, v.schema, doc, docID)
		if !bytes.Equal(doc, in) {
			t.Fatalf("Protect(%q) modified its input", in)
		}
		valid, object, depth, dup := jsonShape(doc)
		wellFormed := valid && object && !dup
		switch {
		case len(doc) > fuzzMaxBytes:
			if !errors.Is(err, ErrDocumentTooLarge) {
				t.Fatalf("Protect(%d bytes) err = %v, want ErrDocumentTooLarge", len(doc), err)
			}
			return
		case wellFormed && depth <= fuzzMaxDepth:
			if errors.Is(err, ErrInvalidDocument) || errors.Is(err, ErrDocumentTooDeep) || errors.Is(err, ErrDocumentTooLarge) {
				t.Fatalf("Protect(%q) err = %v, want it accepted: valid JSON, an object, depth %d, no repeated name", doc, err, depth)
			}
		case valid && object && depth > fuzzMaxDepth:
			if !errors.Is(err, ErrDocumentTooDeep) && !(dup && errors.Is(err, ErrInvalidDocument)) {
				t.Fatalf("Protect(%q) err = %v, want ErrDocumentTooDeep for depth %d", doc, err, depth)
			}
		}
		if valid {
			// Errors and results name paths, never values.
			texts := []string{}
			if err != nil {
				texts = append(texts, err.Error())
			}
			for _, fr := range res.Fields {
				texts = append(texts, fr.Path, fr.Pattern)
			}
			for _, fd := range res.Findings {
				texts = append(texts, fd.Path)
			}
			checkNoValues(t, doc, texts)
		}
		if err != nil {
			for _, want := range []error{ErrInvalidDocument, ErrDocumentTooDeep, ErrWrongType, ErrRejected} {
				if errors.Is(err, want) {
					return
				}
			}
			t.Fatalf("Protect(%q) err = %v, want one of the package's sentinel errors", doc, err)
		}
		if !wellFormed || depth > fuzzMaxDepth {
			t.Fatalf("Protect(%q) accepted a document that is not a well-formed object within depth %d (valid %v, object %v, depth %d, repeated name %v)", doc, fuzzMaxDepth, valid, object, depth, dup)
		}
		if !json.Valid(out) {
			t.Fatalf("Protect(%q) = %q, not valid JSON", doc, out)
		}

		back, _, err := p.Reveal(ctx, v.schema, out, docID, withheld)
		if err != nil && !errors.Is(err, ErrReveal) {
			t.Fatalf("Reveal(withheld, Protect(%q)) err = %v, want nil or ErrReveal", doc, err)
		}
		if err == nil && !bytes.Equal(back, out) {
			t.Fatalf("Reveal(every field withheld) =\n%s\nwant the protected document\n%s", back, out)
		}
		if m, _, err := p.Reveal(ctx, v.schema, out, docID, masked); err == nil && !json.Valid(m) {
			t.Fatalf("Reveal(masked, Protect(%q)) = %q, not valid JSON", doc, m)
		} else if err != nil && !errors.Is(err, ErrReveal) {
			t.Fatalf("Reveal(masked, Protect(%q)) err = %v, want nil or ErrReveal", doc, err)
		}

		back, _, err = p.Reveal(ctx, v.schema, out, docID, revealClear)
		if err != nil {
			// A public value that looks like a ciphertext is revealed as
			// one, and fails: the only way a protected document does not
			// reveal.
			if errors.Is(err, ErrReveal) && bytes.Contains(doc, []byte(`"`+envelope.StringPrefix)) {
				return
			}
			t.Fatalf("Reveal(clear, Protect(%q)) err = %v, want nil\nprotected: %s", doc, err, out)
		}
		if !json.Valid(back) {
			t.Fatalf("Reveal(clear, Protect(%q)) = %q, not valid JSON", doc, back)
		}
		if got, want := semanticValue(t, back, v), semanticValue(t, doc, v); !reflect.DeepEqual(got, want) {
			t.Fatalf("Reveal(Protect(doc)) is not doc:\ndoc       %s\nprotected %s\nrevealed  %s", doc, out, back)
		}
	})
}
