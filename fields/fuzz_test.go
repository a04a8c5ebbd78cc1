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
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/secret"
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
	dec.UseNumber() // valid JSON numbers beyond float64 (1E700) are numbers still
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

// valueAt returns the value at a concrete path (as FieldResult.Path
// spells it: .name, ["name"], [index]) in x, a decoded JSON value.
func valueAt(x any, path string) (any, bool) {
	if !strings.HasPrefix(path, "$") {
		return nil, false
	}
	for i := 1; i < len(path); {
		switch {
		case path[i] == '.':
			j := i + 1
			for j < len(path) && isNameChar(path[j]) {
				j++
			}
			m, ok := x.(map[string]any)
			if !ok || j == i+1 {
				return nil, false
			}
			if x, ok = m[path[i+1:j]]; !ok {
				return nil, false
			}
			i = j
		case strings.HasPrefix(path[i:], `["`):
			j := i + 2
			for j < len(path) && path[j] != '"' {
				if path[j] == '\\' {
					j++
				}
				j++
			}
			var name string
			if j+1 >= len(path) || path[j+1] != ']' || json.Unmarshal([]byte(path[i+1:j+1]), &name) != nil {
				return nil, false
			}
			m, ok := x.(map[string]any)
			if !ok {
				return nil, false
			}
			if x, ok = m[name]; !ok {
				return nil, false
			}
			i = j + 2
		case path[i] == '[':
			j := strings.IndexByte(path[i:], ']')
			if j < 0 {
				return nil, false
			}
			n, err := strconv.Atoi(path[i+1 : i+j])
			a, ok := x.([]any)
			if err != nil || !ok || n < 0 || n >= len(a) {
				return nil, false
			}
			x, i = a[n], i+j+1
		default:
			return nil, false
		}
	}
	return x, true
}

// decodeJSON decodes doc with numbers as json.Number.
func decodeJSON(doc []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	var x any
	err := d.Decode(&x)
	return x, err
}

// checkConfidential reports a value that Protect says it protected but
// that is in clear at its path in out, the protected document: the
// decoded values at each path of res, in doc and in out, are compared.
//   - aead, deterministic, blind_index: the value is a ciphertext string,
//     not the original value;
//   - tokenize: the digits of the string are replaced, the rest (and the
//     length) kept; the token differs from the original unless FF1 maps
//     it to itself, which is checked with the key (for 6 digits that
//     happens to one value in a million: rare, but a long fuzzing run
//     meets it, so equality alone is not a failure);
//   - redact: the value is "[REDACTED]";
//   - mask: the value is the mask of the original, and shows no more
//     characters of the mask's class than the mask keeps.
//
// Its errors quote the document: the fuzzer's, never a real one.
func checkConfidential(ctx context.Context, keys Tokenizer, s *Schema, doc, out []byte, res Result) error {
	in, err := decodeJSON(doc)
	if err != nil {
		return fmt.Errorf("decode the document %q: %w", doc, err)
	}
	prot, err := decodeJSON(out)
	if err != nil {
		return fmt.Errorf("decode the protected document %q: %w", out, err)
	}
	for _, fr := range res.Fields {
		orig, ok1 := valueAt(in, fr.Path)
		got, ok2 := valueAt(prot, fr.Path)
		if !ok1 || !ok2 {
			return fmt.Errorf("field %s (%s) is not in the document (%v) or the protected one (%v)", fr.Path, fr.Protection, ok1, ok2)
		}
		gs, isString := got.(string)
		if !isString {
			return fmt.Errorf("%s (%s) is a %T in the protected document, not a string", fr.Path, fr.Protection, got)
		}
		switch fr.Protection {
		case ProtectionAEAD, ProtectionDeterministic, ProtectionBlindIndex:
			if reflect.DeepEqual(orig, got) {
				return fmt.Errorf("%s (%s) is in clear", fr.Path, fr.Protection)
			}
			if !strings.HasPrefix(gs, envelope.StringPrefix) {
				return fmt.Errorf("%s (%s) is %q, not a ciphertext", fr.Path, fr.Protection, gs)
			}
		case ProtectionTokenize:
			was, _ := orig.(string)
			same := len(was) == len(gs)
			for i := 0; same && i < len(was); i++ {
				same = isDigit(was[i]) == isDigit(gs[i]) && (isDigit(was[i]) || was[i] == gs[i])
			}
			if !same {
				return fmt.Errorf("%s (tokenize) is %q, not the format of %q", fr.Path, gs, was)
			}
			if gs == was {
				token, err := ff1Token(ctx, keys, s, fr, was)
				if err != nil {
					return err
				}
				if token != was {
					return fmt.Errorf("%s (tokenize) is in clear; its token is %q", fr.Path, token)
				}
			}
		case ProtectionRedact:
			if gs != secret.Redacted {
				return fmt.Errorf("%s (redact) is %q, not %q", fr.Path, gs, secret.Redacted)
			}
		case ProtectionMask:
			var was string
			switch o := orig.(type) {
			case string:
				was = o
			case json.Number:
				was = o.String()
			default:
				return fmt.Errorf("%s (mask) was a %T", fr.Path, orig)
			}
			tier, _ := s.Tier(fr.Tier)
			if want := applyMask(was, tier.Mask); gs != want {
				return fmt.Errorf("%s (mask) is %q, want %q", fr.Path, gs, want)
			}
			if shown, most := maskShows(gs, tier.Mask); shown > most {
				return fmt.Errorf("%s (mask) is %q: %d characters shown, the mask keeps at most %d", fr.Path, gs, shown, most)
			}
		default:
			return fmt.Errorf("%s has protection %s", fr.Path, fr.Protection)
		}
	}
	return nil
}

// ff1Token tokenizes v as the field's tier does, computed here from the
// key: FF1 over its digits with the field's key and tweak, the rest of v
// kept.
func ff1Token(ctx context.Context, keys Tokenizer, s *Schema, fr FieldResult, v string) (string, error) {
	block, _, err := keys.TokenizationCipher(ctx, fr.Key)
	if err != nil {
		return "", fmt.Errorf("TokenizationCipher(%s): %w", fr.Key, err)
	}
	f, err := newFF1(block, 10)
	if err != nil {
		return "", err
	}
	var digits []byte
	for i := range len(v) {
		if isDigit(v[i]) {
			digits = append(digits, v[i]-'0')
		}
	}
	enc, _, err := f.appendCipher(nil, nil, appendBinding(nil, "tresor-ff1-v1\x00", s.Name(), fr.Pattern), digits, true)
	if err != nil {
		return "", fmt.Errorf("FF1 of %s: %w", fr.Path, err)
	}
	token := []byte(v)
	for i, j := 0, 0; i < len(token); i++ {
		if isDigit(token[i]) {
			token[i] = '0' + enc[j]
			j++
		}
	}
	return string(token), nil
}

// maskShows counts the characters of a masked value that the mask's
// format hides unless kept, and how many it keeps at most: digits for
// card and digits (the last KeepLast), letters and digits for iban (the
// country code and the last KeepLast), the local part but its first
// character for email, every character for text (the last KeepLast).
func maskShows(masked string, spec MaskSpec) (shown, most int) {
	count := func(s string, class func(rune) bool) int {
		n := 0
		for _, r := range s {
			if r != '*' && class(r) {
				n++
			}
		}
		return n
	}
	switch spec.Format {
	case MaskCard, MaskDigits:
		return count(masked, isDigitRune), spec.KeepLast
	case MaskIBAN:
		return count(masked, isAlnumRune), 2 + spec.KeepLast
	case MaskEmail:
		local := masked
		if at := strings.LastIndexByte(masked, '@'); at >= 0 {
			local = masked[:at]
		}
		return count(local, func(rune) bool { return true }), 1
	}
	return count(masked, func(rune) bool { return true }), spec.KeepLast
}

// checkWithheldAndMasked checks the reveals of out, the protection of doc,
// that show nothing in clear: with every field withheld, it opens nothing,
// so it succeeds and gives out back byte for byte; masked, it succeeds
// and gives valid JSON. reveal reveals out with every field in mode. Both
// may fail with ErrReveal only when doc holds a public value that looks
// like a ciphertext (looksSealed): it is revealed as one, and fails.
func checkWithheldAndMasked(out []byte, looksSealed bool, reveal func(RevealMode) ([]byte, error)) error {
	back, err := reveal(RevealWithheld)
	switch {
	case err != nil && looksSealed && errors.Is(err, ErrReveal):
	case err != nil:
		return fmt.Errorf("Reveal(withheld) err = %w, want nil: withholding opens nothing", err)
	case !bytes.Equal(back, out):
		return fmt.Errorf("Reveal(every field withheld) =\n%s\nwant the protected document\n%s", back, out)
	}
	m, err := reveal(RevealMasked)
	switch {
	case err != nil && looksSealed && errors.Is(err, ErrReveal):
	case err != nil:
		return fmt.Errorf("Reveal(masked) err = %w, want nil", err)
	case !json.Valid(m):
		return fmt.Errorf("Reveal(masked) = %q, not valid JSON", m)
	}
	return nil
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
//   - the protected document is valid JSON, and no protected value is in
//     clear at its path (checkConfidential);
//   - revealing it with every field withheld succeeds and gives it back
//     byte for byte; a masked reveal succeeds and gives valid JSON;
//     revealing it in clear gives the original JSON value but for masked
//     or redacted fields and the added blind indexes. The one exception:
//     a public value that looks like a ciphertext is revealed as one, and
//     fails with ErrReveal, whatever the mode.
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
		[]byte(`{"a":1E700,"p":-1e-400}`), // valid JSON, beyond float64
	)
	for _, d := range docs {
		for variant := range uint8(4) {
			f.Add(variant, d, "doc-1")
		}
	}
	p, ring := newProtector(f, Options{MaxDocumentBytes: fuzzMaxBytes, MaxDepth: fuzzMaxDepth})
	variants := []fuzzVariant{
		{schema: mustSchema(f, customerSchema), irreversible: []string{"card", "password"}, siblings: []string{"iban_bidx"}},
		{schema: mustSchema(f, fuzzSchema("public", "protect")), siblings: []string{"i_ix"}},
		{schema: mustSchema(f, fuzzSchema("sealed", "")), siblings: []string{"i_ix"}},
		{schema: mustSchema(f, fuzzSchema("searchable", "reject")), siblings: []string{"i_ix"}},
	}
	revealClear := func(FieldRef) (RevealMode, error) { return RevealClear, nil }
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
		if err := checkConfidential(ctx, ring, v.schema, doc, out, res); err != nil {
			t.Fatalf("Protect(%q): %v\nprotected: %s", doc, err, out)
		}

		// A public value that looks like a ciphertext is revealed as one,
		// and fails: the only way a protected document does not reveal.
		looksSealed := bytes.Contains(doc, []byte(`"`+envelope.StringPrefix))
		reveal := func(mode RevealMode) ([]byte, error) {
			b, _, err := p.Reveal(ctx, v.schema, out, docID, func(FieldRef) (RevealMode, error) { return mode, nil })
			return b, err
		}
		if err := checkWithheldAndMasked(out, looksSealed, reveal); err != nil {
			t.Fatalf("Protect(%q) then %v", doc, err)
		}

		back, _, err := p.Reveal(ctx, v.schema, out, docID, revealClear)
		if err != nil {
			if looksSealed && errors.Is(err, ErrReveal) {
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

func TestValueAt(t *testing.T) {
	doc := []byte(`{"a":{"b":[1,{"c d":"x","e":null}]},"q\"r":true,"n":2}`)
	x, err := decodeJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path   string
		want   any
		wantOK bool
	}{
		{"$.n", json.Number("2"), true},
		{"$.a.b[0]", json.Number("1"), true},
		{`$.a.b[1]["c d"]`, "x", true},
		{"$.a.b[1].e", nil, true},
		{`$["q\"r"]`, true, true},
		{"$.a.b[2]", nil, false},
		{"$.a.b[-1]", nil, false},
		{"$.a.x", nil, false},
		{"$.n.m", nil, false},
		{"$.a[0]", nil, false},
		{`$["a"`, nil, false},
		{"a", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, ok := valueAt(x, tt.path)
			if ok != tt.wantOK || (ok && !reflect.DeepEqual(got, tt.want)) {
				t.Errorf("valueAt(%s) = %v, %v; want %v, %v", tt.path, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// TestCheckConfidential: the customer document as Protect leaves it
// passes; with any protected value put back in clear, or protected
// otherwise than its tier says, it fails.
func TestCheckConfidential(t *testing.T) {
	ctx := context.Background()
	p, ring := newProtector(t, Options{})
	s := mustSchema(t, customerSchema)
	doc := []byte(customerDoc)
	out, res, err := p.Protect(ctx, s, doc, "doc-1")
	if err != nil {
		t.Fatalf("Protect() err = %v", err)
	}
	orig, err := decodeJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	o := orig.(map[string]any)
	tests := []struct {
		name    string
		change  func(m map[string]any)
		wantErr string // "": none
	}{
		{"as protected", func(map[string]any) {}, ""},
		{"aead in clear", func(m map[string]any) { m["tax_id"] = o["tax_id"] }, "$.tax_id (aead) is in clear"},
		{"aead object in clear", func(m map[string]any) { m["address"] = o["address"] }, "$.address (aead) is a map[string]interface {}"},
		{"aead not a ciphertext", func(m map[string]any) { m["tax_id"] = "xxx-xx-xxxx" }, "not a ciphertext"},
		{"deterministic in clear", func(m map[string]any) { m["email"] = o["email"] }, "$.email (deterministic) is in clear"},
		{"blind index in clear", func(m map[string]any) {
			m["accounts"].([]any)[1].(map[string]any)["iban"] = o["accounts"].([]any)[1].(map[string]any)["iban"]
		}, "$.accounts[1].iban (blind_index) is in clear"},
		{"tokenize in clear", func(m map[string]any) { m["account_no"] = o["account_no"] }, "$.account_no (tokenize) is in clear"},
		{"tokenize: a separator changed", func(m map[string]any) {
			m["account_no"] = strings.ReplaceAll(m["account_no"].(string), "-", " ")
		}, "not the format"},
		{"tokenize: a digit became a letter", func(m map[string]any) { m["account_no"] = "x" + m["account_no"].(string)[1:] }, "not the format"},
		{"redact in clear", func(m map[string]any) { m["password"] = o["password"] }, `$.password (redact) is "hunter2"`},
		{"mask in clear", func(m map[string]any) { m["card"] = o["card"] }, "$.card (mask) is"},
		{"mask showing too much", func(m map[string]any) { m["card"] = "**** **** **11 1111" }, "$.card (mask) is"},
		{"a protected field left out", func(m map[string]any) { delete(m, "tax_id") }, "not in the document (true) or the protected one (false)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x, err := decodeJSON(out)
			if err != nil {
				t.Fatal(err)
			}
			tt.change(x.(map[string]any))
			changed, err := json.Marshal(x)
			if err != nil {
				t.Fatal(err)
			}
			err = checkConfidential(ctx, ring, s, doc, changed, res)
			if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("checkConfidential() = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

// TestFF1Token: the token computed from the key is Protect's, so a value
// FF1 maps to itself is told from one left in clear.
func TestFF1Token(t *testing.T) {
	ctx := context.Background()
	p, ring := newProtector(t, Options{})
	s := mustSchema(t, customerSchema)
	for _, v := range []string{"123456", "0012-3456-7890", "9 9 9 9 9 9 9", "000000.000000"} {
		t.Run(v, func(t *testing.T) {
			doc, _ := json.Marshal(map[string]string{"account_no": v})
			out, res, err := p.Protect(ctx, s, doc, "doc-1")
			if err != nil || len(res.Fields) != 1 {
				t.Fatalf("Protect(%s) = %v, %v", doc, res.Fields, err)
			}
			var m map[string]string
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatal(err)
			}
			got, err := ff1Token(ctx, ring, s, res.Fields[0], v)
			if err != nil || got != m["account_no"] {
				t.Errorf("ff1Token(%q) = %q, %v; Protect made %q", v, got, err, m["account_no"])
			}
		})
	}
}

func TestMaskShows(t *testing.T) {
	tests := []struct {
		masked      string
		spec        MaskSpec
		shown, most int
	}{
		{"**** **** **** 1111", MaskSpec{Format: MaskCard, KeepLast: 4}, 4, 4},
		{"**** **** ***1 1111", MaskSpec{Format: MaskCard, KeepLast: 4}, 5, 4},
		{"DE** **** **** **** **30 00", MaskSpec{Format: MaskIBAN, KeepLast: 4}, 6, 6},
		{"j***@example.com", MaskSpec{Format: MaskEmail}, 1, 1},
		{"jo**@example.com", MaskSpec{Format: MaskEmail}, 2, 1},
		{"*****er2", MaskSpec{Format: MaskText, KeepLast: 3}, 3, 3},
		{"********", MaskSpec{}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.masked, func(t *testing.T) {
			if shown, most := maskShows(tt.masked, tt.spec); shown != tt.shown || most != tt.most {
				t.Errorf("maskShows(%q, %+v) = %d, %d; want %d, %d", tt.masked, tt.spec, shown, most, tt.shown, tt.most)
			}
		})
	}
}

// TestCheckWithheldAndMasked: a withheld reveal opens nothing and a
// masked one must succeed: ErrReveal from either fails, unless the
// document holds a public value that looks like a ciphertext.
func TestCheckWithheldAndMasked(t *testing.T) {
	out := []byte(`{"a":"tresor:v1:xyz"}`)
	type answer struct {
		doc []byte
		err error
	}
	tests := []struct {
		name        string
		withheld    answer
		masked      answer
		looksSealed bool
		wantErr     string
	}{
		{"both reveal", answer{out, nil}, answer{[]byte(`{"a":"***"}`), nil}, false, ""},
		{"withheld fails with ErrReveal", answer{nil, ErrReveal}, answer{[]byte(`{"a":"***"}`), nil}, false, "withholding opens nothing"},
		{"masked fails with ErrReveal", answer{out, nil}, answer{nil, ErrReveal}, false, "Reveal(masked) err"},
		{"withheld changes the document", answer{[]byte(`{"a":"x"}`), nil}, answer{[]byte(`{"a":"***"}`), nil}, false, "want the protected document"},
		{"masked is not JSON", answer{out, nil}, answer{[]byte(`{"a":`), nil}, false, "not valid JSON"},
		{"ErrReveal for a public value that looks sealed", answer{nil, ErrReveal}, answer{nil, ErrReveal}, true, ""},
		{"another error for a public value that looks sealed", answer{nil, errors.New("fields: boom")}, answer{nil, ErrReveal}, true, "withholding opens nothing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reveal := func(mode RevealMode) ([]byte, error) {
				if mode == RevealWithheld {
					return tt.withheld.doc, tt.withheld.err
				}
				return tt.masked.doc, tt.masked.err
			}
			err := checkWithheldAndMasked(out, tt.looksSealed, reveal)
			if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("checkWithheldAndMasked() = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}
