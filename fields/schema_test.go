package fields

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// customerSchema is the example. Paths with brackets are quoted: in
// a YAML flow mapping, '[' starts a sequence.
const customerSchema = `
name: customer
version: 3
default_tier: public
tiers:
  restricted:   {protection: aead, key: pii-aead, mask: {keep_last: 4, format: text}}
  account:      {protection: tokenize, key: acct-ff1, mask: {keep_last: 4, format: digits}}
  searchable:   {protection: deterministic, key: pii-siv, sensitivity: confidential}
  indexed:      {protection: blind_index, key: pii-aead, index_key: pii-hmac, index_bytes: 16, index_suffix: "_bidx", mask: {format: iban}}
  card:         {protection: mask, mask: {keep_last: 4, format: card}}
  secret:       {protection: redact}
  public:       {protection: none}
fields:
  - {path: $.tax_id, tier: restricted}
  - {path: $.email, tier: searchable}
  - {path: $.card, tier: card}
  - {path: $.password, tier: secret}
  - {path: $.account_no, tier: account}
  - {path: '$.accounts[*].iban', tier: indexed}
  - {path: $.address, tier: restricted}
  - {path: '$.phones[*]', tier: restricted}
  - {path: '$["date of birth"]', tier: restricted}
inspection:
  action: report
`

func mustSchema(t testing.TB, src string) *Schema {
	t.Helper()
	s, err := ParseSchema([]byte(src))
	if err != nil {
		t.Fatalf("ParseSchema() err = %v, want nil", err)
	}
	return s
}

func TestParseSchema(t *testing.T) {
	s := mustSchema(t, customerSchema)
	if s.Name() != "customer" || s.Version() != 3 || s.DefaultTier() != "public" {
		t.Errorf("ParseSchema() = %s v%d default %s; want customer v3 default public", s.Name(), s.Version(), s.DefaultTier())
	}
	tests := []struct {
		tier string
		want Sensitivity
	}{
		{"restricted", SensitivityRestricted},
		{"public", SensitivityPublic},
		{"searchable", SensitivityConfidential},
		{"account", SensitivityRestricted},
	}
	for _, tt := range tests {
		tier, ok := s.Tier(tt.tier)
		if !ok || tier.Sensitivity != tt.want {
			t.Errorf("Tier(%q) = %+v, %v; want sensitivity %s", tt.tier, tier, ok, tt.want)
		}
	}
	ix, _ := s.Tier("indexed")
	if ix.IndexBytes != 16 || ix.IndexSuffix != "_bidx" {
		t.Errorf("Tier(indexed) = %+v, want 16 index bytes and suffix _bidx", ix)
	}
	in, ok := s.Inspection()
	if !ok || in.Action != InspectReport || len(in.Detectors) != 6 {
		t.Errorf("Inspection() = %+v, %v; want report with all 6 detectors", in, ok)
	}
	if f := s.Fields(); len(f) != 9 || f[8].Path != `$["date of birth"]` {
		t.Errorf("Fields() = %v, want 9 fields, the last $[\"date of birth\"]", f)
	}
}

func TestSchemaKeys(t *testing.T) {
	s := mustSchema(t, customerSchema)
	var got []string
	for _, k := range s.Keys() {
		got = append(got, fmt.Sprintf("%s=%s%v", k.Name, k.KeyType, k.Tiers))
	}
	want := "acct-ff1=FF1_AES256[account] pii-aead=AES256_GCM[indexed restricted] pii-hmac=HMAC_SHA256[indexed] pii-siv=AES256_SIV[searchable]"
	if strings.Join(got, " ") != want {
		t.Errorf("Keys() = %s\nwant %s", strings.Join(got, " "), want)
	}
}

func TestSchemaMarshalRoundTrip(t *testing.T) {
	s := mustSchema(t, customerSchema)
	b, err := s.Marshal()
	if err != nil {
		t.Fatalf("Marshal() err = %v, want nil", err)
	}
	s2, err := ParseSchema(b)
	if err != nil {
		t.Fatalf("ParseSchema(Marshal()) err = %v, want nil\n%s", err, b)
	}
	b2, _ := s2.Marshal()
	if string(b) != string(b2) {
		t.Errorf("Marshal(ParseSchema(Marshal())) =\n%s\nwant\n%s", b2, b)
	}
}

// TestSchemaMarshalRoundTripPaths: paths holding characters that YAML
// refuses or reads as a line break (found by FuzzSchemaPath) keep their
// meaning through the canonical form, as stored and read by other replicas.
func TestSchemaMarshalRoundTripPaths(t *testing.T) {
	for _, path := range []string{`$["\u0085"]`, `$["\u007f"]`, `$["a\u009fb"]`, `$["\ufffe"]`, `$["\u2028"]`, `$["\u00e9"]`} {
		t.Run(path, func(t *testing.T) {
			s := mustSchema(t, "name: c\nversion: 1\ndefault_tier: p\ntiers: {p: {protection: none}}\nfields: [{path: '"+path+"', tier: p}]\n")
			b, err := s.Marshal()
			if err != nil {
				t.Fatalf("Marshal() err = %v, want nil", err)
			}
			s2, err := ParseSchema(b)
			if err != nil {
				t.Fatalf("ParseSchema(Marshal()) err = %v, want nil\n%s", err, b)
			}
			if got, want := s2.Fields(), s.Fields(); len(got) != 1 || got[0] != want[0] {
				t.Errorf("ParseSchema(Marshal()) fields = %q, want %q", got, want)
			}
		})
	}
}

func TestSchemaErrors(t *testing.T) {
	base := func(tiers, fields string) string {
		return "name: c\nversion: 1\ndefault_tier: pub\ntiers:\n  pub: {protection: none}\n" + tiers + "fields:\n" + fields
	}
	tests := []struct {
		name, src string
		want      string // in the message
	}{
		{"unknown tier", base("", "  - {path: $.a, tier: nope}\n"), `unknown tier "nope"`},
		{"tier with no key", base("  r: {protection: aead}\n", "  - {path: $.a, tier: r}\n"), "needs a key"},
		{"blind index with no index key", base("  r: {protection: blind_index, key: k}\n", "  - {path: $.a, tier: r}\n"), "needs an index_key"},
		{"invalid path", base("  r: {protection: redact}\n", "  - {path: a.b, tier: r}\n"), `path "a.b"`},
		{"invalid path step", base("  r: {protection: redact}\n", "  - {path: '$.a[0]', tier: r}\n"), `path "$.a[0]"`},
		{"path listed twice", base("  r: {protection: redact}\n", "  - {path: $.a, tier: r}\n  - {path: '$[\"a\"]', tier: r}\n"), "listed twice"},
		{"path inside another", base("  r: {protection: redact}\n", "  - {path: $.a, tier: r}\n  - {path: $.a.b, tier: r}\n"), "lies inside"},
		{"unknown protection", base("  r: {protection: rot13, key: k}\n", ""), `unknown protection "rot13"`},
		{"blind index on array element", base("  r: {protection: blind_index, key: k, index_key: h}\n", "  - {path: '$.phones[*]', tier: r}\n"), "not an array element"},
		{"index bytes out of range", base("  r: {protection: blind_index, key: k, index_key: h, index_bytes: 4}\n", ""), "index_bytes 4"},
		{"unknown YAML field", base("  r: {protection: redact, colour: red}\n", ""), "colour"},
		{"unknown top-level field", "extra: 1\n" + base("", ""), "extra"},
		{"one key two types", base("  r: {protection: aead, key: k}\n  d: {protection: deterministic, key: k}\n", ""), "used both"},
		{"bad name", strings.Replace(base("", ""), "name: c", "name: Cust_1", 1), "name \"Cust_1\""},
		{"zero version", strings.Replace(base("", ""), "version: 1", "version: 0", 1), "version 0"},
		{"unknown default tier", strings.Replace(base("", ""), "default_tier: pub", "default_tier: x", 1), `default_tier "x"`},
		{"default tier tokenize", strings.Replace(base("  t: {protection: tokenize, key: f}\n", ""), "default_tier: pub", "default_tier: t", 1), "cannot apply to every unlisted value"},
		{"mask with no mask", base("  m: {protection: mask}\n", ""), "needs a mask"},
		{"card mask keeps 6", base("  m: {protection: mask, mask: {format: card, keep_last: 6}}\n", ""), "keep_last 6"},
		{"key on redact", base("  r: {protection: redact, key: k}\n", ""), "takes no key"},
		{"bad sensitivity", base("  r: {protection: redact, sensitivity: secret}\n", ""), `sensitivity "secret"`},
		{"inspection bad action", base("", "") + "inspection: {action: shout}\n", `action "shout"`},
		{"inspection protect without tier", base("", "") + "inspection: {action: protect}\n", "needs a tier"},
		{"inspection unknown detector", base("", "") + "inspection: {action: report, detectors: [card, dna]}\n", `unknown detector "dna"`},
		{"blind index sibling listed", base("  r: {protection: blind_index, key: k, index_key: h}\n", "  - {path: $.a, tier: r}\n  - {path: $.a_bidx, tier: pub}\n"), "blind index member"},
		{"not YAML", "{{{", "invalid schema"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseSchema([]byte(tt.src))
			if !errors.Is(err, ErrInvalidSchema) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseSchema() = %v, %v; want ErrInvalidSchema mentioning %q", s, err, tt.want)
			}
		})
	}
}

func TestSchemaValidate(t *testing.T) {
	s := mustSchema(t, customerSchema)
	ctx := context.Background()
	good := map[string]string{"acct-ff1": KeyTypeFF1, "pii-aead": KeyTypeAEAD, "pii-hmac": KeyTypeHMAC, "pii-siv": KeyTypeDeterministic}
	errMissing := errors.New("key not found")
	lookup := func(types map[string]string) KeyTyper {
		return KeyTyperFunc(func(_ context.Context, name string) (string, error) {
			if typ, ok := types[name]; ok {
				return typ, nil
			}
			return "", errMissing
		})
	}
	if err := s.Validate(ctx, lookup(good)); err != nil {
		t.Errorf("Validate(all keys) err = %v, want nil", err)
	}
	missing := map[string]string{"acct-ff1": KeyTypeFF1, "pii-aead": KeyTypeAEAD, "pii-siv": KeyTypeDeterministic}
	if err := s.Validate(ctx, lookup(missing)); !errors.Is(err, ErrInvalidSchema) || !errors.Is(err, errMissing) || !strings.Contains(err.Error(), "pii-hmac") {
		t.Errorf("Validate(no pii-hmac) err = %v, want ErrInvalidSchema wrapping the lookup error, naming pii-hmac", err)
	}
	wrong := map[string]string{"acct-ff1": KeyTypeFF1, "pii-aead": KeyTypeAEAD, "pii-hmac": KeyTypeHMAC, "pii-siv": KeyTypeAEAD}
	if err := s.Validate(ctx, lookup(wrong)); !errors.Is(err, ErrInvalidSchema) || !strings.Contains(err.Error(), `"pii-siv"`) {
		t.Errorf("Validate(pii-siv is GCM) err = %v, want ErrInvalidSchema naming pii-siv", err)
	}
}

// TestParseSchemaJSONEscapes: JSON schemas parse whatever escapes their
// encoder chose (\/, surrogate pairs), and still refuse duplicate and
// unknown members.
func TestParseSchemaJSONEscapes(t *testing.T) {
	const base = `{"name":"esc","version":1,"default_tier":"public","tiers":{"public":{"protection":"none"},` +
		`"masked":{"protection":"mask","mask":{"keep_last":4,"format":"digits"}}},"fields":[{"path":%s,"tier":"masked"}]}`
	tests := []struct {
		name, path, want string
	}{
		{"plain", `"$.card"`, `$.card`},
		{"escaped solidus", `"$[\"a\/b\"]"`, `$["a/b"]`},
		{"surrogate pair", `"$[\"\ud83d\ude00\"]"`, "$[\"\U0001F600\"]"},
		{"escaped latin", `"$[\"stra\u00dfe\"]"`, `$["straße"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseSchema([]byte(fmt.Sprintf(base, tt.path)))
			if err != nil {
				t.Fatalf("ParseSchema(%s) err = %v, want nil", tt.path, err)
			}
			if got := s.Fields(); len(got) != 1 || got[0].Path != tt.want {
				t.Errorf("ParseSchema(%s).Fields() = %q, want one field at %q", tt.path, got, tt.want)
			}
		})
	}
	for name, def := range map[string]string{
		"duplicate member":   `{"name":"esc","name":"other","version":1,"default_tier":"public","tiers":{"public":{"protection":"none"}},"fields":[]}`,
		"unknown member":     `{"name":"esc","version":1,"default_tier":"public","tiers":{"public":{"protection":"none"}},"fields":[],"extra":1}`,
		"member in capitals": `{"Name":"esc","version":1,"default_tier":"public","tiers":{"public":{"protection":"none"}},"fields":[]}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseSchema([]byte(def)); !errors.Is(err, ErrInvalidSchema) {
				t.Errorf("ParseSchema(%s) err = %v, want ErrInvalidSchema", def, err)
			}
		})
	}
}
