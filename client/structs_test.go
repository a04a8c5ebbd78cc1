package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/fields"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// Types for the tests.

type testAccount struct {
	IBAN     string `json:"iban" tresor:"indexed"`
	IBANBidx string `json:"iban_bidx,omitempty"`
	Number   string `json:"number" tresor:"account"`
	Currency string `json:"currency"`
}

type testAddress struct {
	Street string `json:"street" tresor:"restricted"`
	City   string `json:"city"`
}

type testCard struct {
	PAN string `json:"pan" tresor:"card"`
}

type testCustomer struct {
	ID        int64          `json:"id"`
	Name      string         `json:"name"`
	TaxID     string         `json:"tax_id" tresor:"restricted"`
	BirthDate *string        `json:"birth_date,omitempty" tresor:"restricted"`
	Email     string         `json:"email" tresor:"searchable"`
	Password  string         `json:"password" tresor:"secret"`
	Address   *testAddress   `json:"address"`
	Accounts  []testAccount  `json:"accounts"`
	Cards     [2]*testCard   `json:"cards"`
	Balance   float64        `json:"balance"`
	Limits    map[string]int `json:"limits"`
	Meta      any            `json:"meta"`
	Opened    time.Time      `json:"opened"`
	Public    string         `json:"public" tresor:"public"`
}

type testEmbedded struct {
	Note string `json:"note" tresor:"restricted"`
}

type testEmbedPtr struct {
	Other string `tresor:"restricted"`
}

type testOuter struct {
	testEmbedded
	*testEmbedPtr
	Named   testEmbedded `json:"named"`
	Grid    [][]testCard `json:"grid"`
	Odd     string       `json:"a b.c" tresor:"restricted"`
	Skipped string       `json:"-"`
	Plain   string
}

type testIBAN string

type testNamedString struct {
	IBAN testIBAN  `json:"iban" tresor:"indexed"`
	Ptr  **string  `json:"ptr" tresor:"restricted"`
	Bidx *testIBAN `json:"iban_bidx"`
}

type testTree struct {
	Label string      `json:"label"`
	Kids  []*testTree `json:"kids"`
}

type testWithTree struct {
	Secret string   `json:"secret" tresor:"restricted"`
	Tree   testTree `json:"tree"`
}

// Types StructPaths refuses.

type badInt struct {
	PIN int `json:"pin" tresor:"restricted"`
}

type badSlice struct {
	Phones []string `json:"phones" tresor:"restricted"`
}

type badHidden struct {
	Secret string `json:"-" tresor:"restricted"`
}

type badUnexported struct {
	secret string `tresor:"restricted"`
}

type badInMap struct {
	ByName map[string]testAddress `json:"by_name"`
}

type badMarshaler struct {
	Secret string `tresor:"restricted"`
}

func (badMarshaler) MarshalJSON() ([]byte, error) { return []byte(`{}`), nil }

type badHasMarshaler struct {
	Inner badMarshaler `json:"inner"`
}

type badRecursive struct {
	Secret string        `json:"secret" tresor:"restricted"`
	Next   *badRecursive `json:"next"`
}

type badTierName struct {
	Secret string `tresor:"Restricted!"`
}

type badQuoted struct {
	Secret string `json:"secret,string" tresor:"restricted"`
}

type badBidx struct {
	IBAN     string `json:"iban" tresor:"indexed"`
	IBANBidx int    `json:"iban_bidx"`
}

type badConflictA struct {
	Secret string `tresor:"restricted"`
}

type badConflictB struct {
	Secret string
}

type badConflict struct {
	badConflictA
	badConflictB
}

type badTextMarshaler struct {
	Secret testText `json:"secret" tresor:"restricted"`
}

type testText string

func (testText) MarshalText() ([]byte, error) { return []byte("x"), nil }

func TestStructPaths(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want map[string]string
	}{
		{"customer", testCustomer{}, map[string]string{
			"$.tax_id": "restricted", "$.birth_date": "restricted", "$.email": "searchable", "$.password": "secret",
			"$.address.street": "restricted", "$.accounts[*].iban": "indexed", "$.accounts[*].number": "account",
			"$.cards[*].pan": "card", "$.public": "public",
		}},
		{"nil pointer", (*testCustomer)(nil), map[string]string{
			"$.tax_id": "restricted", "$.birth_date": "restricted", "$.email": "searchable", "$.password": "secret",
			"$.address.street": "restricted", "$.accounts[*].iban": "indexed", "$.accounts[*].number": "account",
			"$.cards[*].pan": "card", "$.public": "public",
		}},
		{"embedded, nested lists, odd names", &testOuter{}, map[string]string{
			"$.note": "restricted", "$.Other": "restricted", "$.named.note": "restricted",
			"$.grid[*][*].pan": "card", `$["a b.c"]`: "restricted",
		}},
		{"named string types", testNamedString{}, map[string]string{"$.iban": "indexed", "$.ptr": "restricted"}},
		{"untagged recursive type beside tags", testWithTree{}, map[string]string{"$.secret": "restricted"}},
		{"no tags", testTree{}, map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := StructPaths(tt.v)
			if err != nil {
				t.Fatalf("StructPaths(%T) err = %v, want nil", tt.v, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("StructPaths(%T) = %v, want %v", tt.v, got, tt.want)
			}
		})
	}
}

func TestStructPathsErrors(t *testing.T) {
	tests := []struct {
		name     string
		v        any
		mentions string // the Go field or type the error names
	}{
		{"nil", nil, "nil"},
		{"not a struct", 42, "int"},
		{"pointer to a non-struct", new(string), "string"},
		{"tagged int", badInt{}, "badInt.PIN"},
		{"tagged slice of strings", badSlice{}, "badSlice.Phones"},
		{"tagged json:\"-\"", badHidden{}, "badHidden.Secret"},
		{"tagged unexported", badUnexported{}, "badUnexported.secret"},
		{"tags inside a map", badInMap{}, "map[string]client.testAddress"},
		{"struct with MarshalJSON", badMarshaler{}, "badMarshaler"},
		{"tags inside a MarshalJSON type", badHasMarshaler{}, "badMarshaler.Secret"},
		{"recursive type with tags", badRecursive{}, "badRecursive"},
		{"invalid tier name", badTierName{}, "badTierName.Secret"},
		{"string option", badQuoted{}, "badQuoted.Secret"},
		{"blind index sibling not a string", badBidx{}, "badBidx.IBANBidx"},
		{"tagged field hidden by a conflict", badConflict{}, "badConflict.badConflictA.Secret"},
		{"tagged TextMarshaler string", badTextMarshaler{}, "badTextMarshaler.Secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := StructPaths(tt.v)
			if !errors.Is(err, ErrInvalidStruct) {
				t.Fatalf("StructPaths(%T) err = %v, want ErrInvalidStruct", tt.v, err)
			}
			if !strings.Contains(err.Error(), tt.mentions) {
				t.Errorf("StructPaths(%T) err = %q, want it to name %q", tt.v, err, tt.mentions)
			}
			// The cached answer is the same error.
			if _, err2 := StructPaths(tt.v); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("StructPaths(%T) again err = %v, want %v", tt.v, err2, err)
			}
		})
	}
}

func TestStructPathsCache(t *testing.T) {
	type once struct {
		Secret string `tresor:"restricted"`
	}
	if _, err := StructPaths(once{}); err != nil {
		t.Fatalf("StructPaths() err = %v, want nil", err)
	}
	cached, ok := structInfos.Load(reflect.TypeFor[once]())
	if !ok {
		t.Fatal("StructPaths() did not cache the analysis")
	}
	info, err := structInfoOf(&once{})
	if err != nil || info != cached.(*structInfo) {
		t.Errorf("structInfoOf(*once) = %p, %v; want the cached %p", info, err, cached)
	}
	// Concurrent first uses agree.
	type racy struct {
		A string `tresor:"restricted"`
		B []struct {
			C *string `tresor:"secret"`
		}
	}
	var wg sync.WaitGroup
	results := make([]map[string]string, 8)
	for i := range results {
		wg.Go(func() {
			results[i], _ = StructPaths(racy{})
		})
	}
	wg.Wait()
	for i, r := range results {
		if !reflect.DeepEqual(r, results[0]) || len(r) != 2 {
			t.Errorf("StructPaths(racy) #%d = %v, want %v (2 paths)", i, r, results[0])
		}
	}
}

// testTiers is a tier table with every protection, over the keys
// createTestKeys makes.
func testTiers() []SchemaTier {
	return []SchemaTier{
		{Name: "restricted", Protection: ProtectAEAD, Key: "customer-pii", Sensitivity: "restricted", Mask: &TierMask{Format: "digits", KeepLast: 4}},
		{Name: "searchable", Protection: ProtectDeterministic, Key: "customer-siv", Mask: &TierMask{Format: "email"}},
		{Name: "indexed", Protection: ProtectBlindIndex, Key: "customer-pii", IndexKey: "customer-index", IndexBytes: 12},
		{Name: "account", Protection: ProtectTokenize, Key: "customer-accounts", Sensitivity: "confidential"},
		{Name: "card", Protection: ProtectMask, Mask: &TierMask{Format: "card", KeepLast: 4}},
		{Name: "secret", Protection: ProtectRedact},
		{Name: "unused", Protection: ProtectAEAD, Key: "no-such-key"},
	}
}

func TestStructSchema(t *testing.T) {
	tests := []struct {
		name      string
		v         any
		tiers     []SchemaTier
		wantTiers []string
	}{
		{"customer", &testCustomer{}, testTiers(), []string{"account", "card", "indexed", "public", "restricted", "searchable", "secret"}},
		{"embedded and odd names", testOuter{}, testTiers(), []string{"card", "public", "restricted"}},
		{"public tier given", testNamedString{}, append(testTiers(), SchemaTier{Name: "public", Protection: ProtectNone, Sensitivity: "internal"}), []string{"indexed", "public", "restricted"}},
		{"no tags", testTree{}, nil, []string{"public"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			def, err := StructSchema("customer", 3, tt.v, tt.tiers...)
			if err != nil {
				t.Fatalf("StructSchema() err = %v, want nil", err)
			}
			s, err := fields.ParseSchema(def)
			if err != nil {
				t.Fatalf("fields.ParseSchema(StructSchema()) err = %v, want nil\n%s", err, def)
			}
			if s.Name() != "customer" || s.Version() != 3 || s.DefaultTier() != DefaultTier {
				t.Errorf("schema name, version, default tier = %q, %d, %q; want customer, 3, public", s.Name(), s.Version(), s.DefaultTier())
			}
			paths, _ := StructPaths(tt.v)
			got := map[string]string{}
			for _, f := range s.Fields() {
				got[f.Path] = f.Tier
			}
			if !reflect.DeepEqual(got, paths) {
				t.Errorf("schema fields = %v, want StructPaths() = %v", got, paths)
			}
			var names []string
			for _, tr := range s.Tiers() {
				names = append(names, tr.Name)
			}
			if !slices.Equal(names, tt.wantTiers) {
				t.Errorf("schema tiers = %v, want %v", names, tt.wantTiers)
			}
			if pub, _ := s.Tier(DefaultTier); pub.Protection != fields.ProtectionNone {
				t.Errorf("tier public protection = %v, want none", pub.Protection)
			}
			// The same input gives the same bytes.
			again, _ := StructSchema("customer", 3, tt.v, tt.tiers...)
			if string(again) != string(def) {
				t.Errorf("StructSchema() twice differs:\n%s\n%s", def, again)
			}
		})
	}
	t.Run("tier options", func(t *testing.T) {
		def, err := StructSchema("customer", 1, testCustomer{}, testTiers()...)
		if err != nil {
			t.Fatalf("StructSchema() err = %v, want nil", err)
		}
		s, err := fields.ParseSchema(def)
		if err != nil {
			t.Fatalf("fields.ParseSchema() err = %v, want nil", err)
		}
		idx, _ := s.Tier("indexed")
		if idx.Protection != fields.ProtectionBlindIndex || idx.Key != "customer-pii" || idx.IndexKey != "customer-index" || idx.IndexBytes != 12 || idx.IndexSuffix != bidxSuffix {
			t.Errorf("tier indexed = %+v, want blind_index over customer-pii, customer-index, 12 bytes, suffix _bidx", idx)
		}
		r, _ := s.Tier("restricted")
		if r.Mask != (fields.MaskSpec{Format: fields.MaskDigits, KeepLast: 4}) || r.Sensitivity != fields.SensitivityRestricted {
			t.Errorf("tier restricted = %+v, want digits mask keeping 4, restricted", r)
		}
		card, _ := s.Tier("card")
		if card.Protection != fields.ProtectionMask || card.Mask != (fields.MaskSpec{Format: fields.MaskCard, KeepLast: 4}) {
			t.Errorf("tier card = %+v, want a card mask keeping 4", card)
		}
		acc, _ := s.Tier("account")
		if acc.Sensitivity != fields.SensitivityConfidential {
			t.Errorf("tier account sensitivity = %q, want confidential", acc.Sensitivity)
		}
	})
}

func TestStructSchemaErrors(t *testing.T) {
	aead := SchemaTier{Name: "restricted", Protection: ProtectAEAD, Key: "k"}
	tests := []struct {
		name    string
		schema  string
		version int64
		v       any
		tiers   []SchemaTier
		want    error
	}{
		{"unknown tier", "customer", 1, testAddress{}, []SchemaTier{{Name: "other", Protection: ProtectRedact}}, ErrSchemaMismatch},
		{"no tiers at all", "customer", 1, testCustomer{}, nil, ErrSchemaMismatch},
		{"invalid struct", "customer", 1, badInt{}, []SchemaTier{aead}, ErrInvalidStruct},
		{"not a struct", "customer", 1, "x", []SchemaTier{aead}, ErrInvalidStruct},
		{"bad schema name", "Customer", 1, testAddress{}, []SchemaTier{aead}, ErrInvalidArgument},
		{"empty schema name", "", 1, testAddress{}, []SchemaTier{aead}, ErrInvalidArgument},
		{"version 0", "customer", 0, testAddress{}, []SchemaTier{aead}, ErrInvalidArgument},
		{"tier twice", "customer", 1, testAddress{}, []SchemaTier{aead, aead}, ErrInvalidArgument},
		{"bad tier name", "customer", 1, testAddress{}, []SchemaTier{aead, {Name: "Bad Tier", Protection: ProtectRedact}}, ErrInvalidArgument},
		{"unknown protection", "customer", 1, testAddress{}, []SchemaTier{{Name: "restricted", Protection: "rot13"}}, ErrInvalidArgument},
		{"aead without key", "customer", 1, testAddress{}, []SchemaTier{{Name: "restricted", Protection: ProtectAEAD}}, ErrInvalidArgument},
		{"redact with key", "customer", 1, testAddress{}, []SchemaTier{{Name: "restricted", Protection: ProtectRedact, Key: "k"}}, ErrInvalidArgument},
		{"blind_index without index key", "customer", 1, testAddress{}, []SchemaTier{{Name: "restricted", Protection: ProtectBlindIndex, Key: "k"}}, ErrInvalidArgument},
		{"index key on aead", "customer", 1, testAddress{}, []SchemaTier{{Name: "restricted", Protection: ProtectAEAD, Key: "k", IndexKey: "i"}}, ErrInvalidArgument},
		{"mask without mask", "customer", 1, testAddress{}, []SchemaTier{{Name: "restricted", Protection: ProtectMask}}, ErrInvalidArgument},
		{"none with mask", "customer", 1, testAddress{}, []SchemaTier{aead, {Name: "plain", Protection: ProtectNone, Mask: &TierMask{Format: "text"}}}, ErrInvalidArgument},
		{"public tier not none", "customer", 1, testAddress{}, []SchemaTier{aead, {Name: DefaultTier, Protection: ProtectRedact}}, ErrInvalidArgument},
		// ProtectStruct would refuse every answer for such a tag.
		{"tagged tier protects nothing", "customer", 1, testAddress{}, []SchemaTier{{Name: "restricted", Protection: ProtectNone}}, ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			def, err := StructSchema(tt.schema, tt.version, tt.v, tt.tiers...)
			if !errors.Is(err, tt.want) || def != nil {
				t.Fatalf("StructSchema() = %q, %v; want nil, %v", def, err, tt.want)
			}
		})
	}
}

// TestCheckProtected: ProtectStruct's check of the outcomes against the
// tagged fields sent.
func TestCheckProtected(t *testing.T) {
	out := func(path, protection, outcome string) *tresorv1.FieldOutcome {
		return &tresorv1.FieldOutcome{Path: path, Tier: "t", Protection: protection, Outcome: outcome}
	}
	all := []*tresorv1.FieldOutcome{
		out("$.a", "aead", "protected"), out("$.b[0].c", "tokenize", "tokenized"),
		out("$.d", "mask", "masked"), out("$.e", "redact", "redacted"), out("$.f", "deterministic", "protected"),
	}
	tagged := []string{"$.a", "$.b[0].c", "$.d", "$.e", "$.f"}
	tests := []struct {
		name     string
		tagged   []string
		outcomes []*tresorv1.FieldOutcome
		want     error
		path     string
	}{
		{"every tagged field protected", tagged, all, nil, ""},
		{"nothing tagged sent", nil, nil, nil, ""},
		{"outcomes for untagged paths too", []string{"$.a"}, all, nil, ""},
		{"no outcomes", tagged, nil, ErrSchemaMismatch, "$.a"},
		{"one missing", tagged, all[:4], ErrSchemaMismatch, "$.f"},
		{"another array index", []string{"$.b[1].c"}, all, ErrSchemaMismatch, "$.b[1].c"},
		{"protection none", []string{"$.x"}, []*tresorv1.FieldOutcome{out("$.x", "none", "protected")}, ErrSchemaMismatch, "$.x"},
		{"outcome withheld", []string{"$.x"}, []*tresorv1.FieldOutcome{out("$.x", "aead", "withheld")}, ErrSchemaMismatch, "$.x"},
		{"outcome clear", []string{"$.x"}, []*tresorv1.FieldOutcome{out("$.x", "aead", "clear")}, ErrSchemaMismatch, "$.x"},
		{"no outcome", []string{"$.x"}, []*tresorv1.FieldOutcome{out("$.x", "aead", "")}, ErrSchemaMismatch, "$.x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkProtected(tt.tagged, tt.outcomes)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("checkProtected() err = %v, want %v", err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), tt.path) {
				t.Errorf("checkProtected() err = %q, want it to name %s", err, tt.path)
			}
		})
	}
}

// TestWriteBackTaggedPaths: writeBack hands ProtectStruct the concrete
// path of every tagged field sent as a string: not nulls, not omitted
// fields, not blind indexes, not DefaultTier's fields; and v stays
// unchanged when the check fails.
func TestWriteBackTaggedPaths(t *testing.T) {
	v := newCustomer()
	v.BirthDate = nil
	b, _ := json.Marshal(v)
	info, err := structInfoOf(v)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	refuse := errors.New("refused")
	before := cloneCustomer(v)
	answer := strings.Replace(string(b), `"123-45-6789"`, `"tresor:v1:AAAA"`, 1)
	err = writeBack(info, reflect.ValueOf(v).Elem(), b, []byte(answer), func(tagged []string) error {
		got = tagged
		return refuse
	})
	if !errors.Is(err, refuse) {
		t.Fatalf("writeBack() err = %v, want verify's error", err)
	}
	if !reflect.DeepEqual(v, before) {
		t.Errorf("writeBack() changed v when verify failed")
	}
	want := []string{"$.tax_id", "$.email", "$.password", "$.address.street", "$.accounts[0].iban", "$.accounts[0].number",
		"$.accounts[1].iban", "$.accounts[1].number", "$.cards[0].pan"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("writeBack() tagged paths = %q, want %q", got, want)
	}
}

// writeBack on its own, against answers a server could give.

type wbAccount struct {
	IBAN     string  `json:"iban" tresor:"indexed"`
	IBANBidx *string `json:"iban_bidx,omitempty"`
}

type wbDoc struct {
	Name     string      `json:"name"`
	Secret   *string     `json:"secret" tresor:"restricted"`
	Empty    *string     `json:"empty" tresor:"restricted"`
	Omitted  string      `json:"omitted,omitempty" tresor:"restricted"`
	Big      int64       `json:"big"`
	Ratio    float64     `json:"ratio"`
	Accounts []wbAccount `json:"accounts"`
	Extra    string      `json:"extra,omitempty"`
}

func newWBDoc() *wbDoc {
	secret := "s3cr3t-value"
	return &wbDoc{Name: "Ada", Secret: &secret, Big: 1<<62 + 1, Ratio: 0.1, Accounts: []wbAccount{{IBAN: "DE89370400440532013000"}}}
}

func TestWriteBack(t *testing.T) {
	const sent = `{"name":"Ada","secret":"s3cr3t-value","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"DE89370400440532013000"}]}`
	tests := []struct {
		name   string
		answer string
		check  func(t *testing.T, before, after *wbDoc)
	}{
		{"tagged fields and an added blind index", `{"name":"Ada","secret":"tresor:v1:AAAA","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"tresor:v1:BBBB","iban_bidx":"1.abc"}]}`, func(t *testing.T, before, after *wbDoc) {
			if *after.Secret != "tresor:v1:AAAA" || after.Accounts[0].IBAN != "tresor:v1:BBBB" || after.Accounts[0].IBANBidx == nil || *after.Accounts[0].IBANBidx != "1.abc" {
				t.Errorf("after = %+v, want the protected values and the blind index", after)
			}
			if *before.Secret != "s3cr3t-value" {
				t.Errorf("the old *string was written through: %q", *before.Secret)
			}
			if after.Big != 1<<62+1 || after.Ratio != 0.1 || after.Name != "Ada" || after.Empty != nil {
				t.Errorf("after = %+v: untagged fields changed", after)
			}
		}},
		{"unchanged answer", sent, func(t *testing.T, before, after *wbDoc) {
			if after.Secret != before.Secret {
				t.Errorf("Secret pointer replaced without a change")
			}
		}},
		{"blind index of another suffix", `{"name":"Ada","secret":"m","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x","iban_index":"1.abc"}]}`, func(t *testing.T, before, after *wbDoc) {
			if after.Accounts[0].IBAN != "x" || after.Accounts[0].IBANBidx != nil {
				t.Errorf("after.Accounts = %+v, want iban x and no _bidx", after.Accounts)
			}
		}},
		{"member order and spacing", ` { "accounts" : [ { "iban" : "x" } ], "ratio":0.1, "big":4611686018427387905, "empty":null, "secret":"m", "name":"\u0041da" } `, func(t *testing.T, before, after *wbDoc) {
			if *after.Secret != "m" {
				t.Errorf("after.Secret = %q, want m", *after.Secret)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newWBDoc()
			before := *v
			b, _ := json.Marshal(v)
			if string(b) != sent {
				t.Fatalf("json.Marshal() = %s, want %s", b, sent)
			}
			info, err := structInfoOf(v)
			if err != nil {
				t.Fatal(err)
			}
			if err := writeBack(info, reflect.ValueOf(v).Elem(), b, []byte(tt.answer), nil); err != nil {
				t.Fatalf("writeBack() err = %v, want nil", err)
			}
			tt.check(t, &before, v)
		})
	}
}

func TestWriteBackMismatch(t *testing.T) {
	tests := []struct {
		name, answer string
		want         error
		path         string
	}{
		{"untagged string", `{"name":"tresor:v1:x","secret":"m","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x"}]}`, ErrSchemaMismatch, "$.name"},
		{"untagged number rewritten", `{"name":"Ada","secret":"m","empty":null,"big":4.611686018427388e18,"ratio":0.1,"accounts":[{"iban":"x"}]}`, ErrSchemaMismatch, "$.big"},
		{"tagged null filled", `{"name":"Ada","secret":"m","empty":"x","big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x"}]}`, ErrSchemaMismatch, "$.empty"},
		{"tagged not a string", `{"name":"Ada","secret":{"a":1},"empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x"}]}`, ErrSchemaMismatch, "$.secret"},
		{"array grew", `{"name":"Ada","secret":"m","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x"},{"iban":"y"}]}`, ErrSchemaMismatch, "$.accounts"},
		{"array became an object", `{"name":"Ada","secret":"m","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":{"iban":"x"}}`, ErrSchemaMismatch, "$.accounts"},
		{"element not an object", `{"name":"Ada","secret":"m","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":["x"]}`, ErrSchemaMismatch, "$.accounts[0]"},
		{"member removed", `{"name":"Ada","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x"}]}`, ErrSchemaMismatch, "$.secret"},
		{"untagged member removed", `{"secret":"m","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x"}]}`, ErrSchemaMismatch, "$.name"},
		{"omitted tagged field added", `{"name":"Ada","secret":"m","omitted":"x","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x"}]}`, ErrSchemaMismatch, "$.omitted"},
		{"omitted untagged field added", `{"name":"Ada","secret":"m","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x"}],"extra":"y"}`, ErrSchemaMismatch, "$.extra"},
		{"unknown member added", `{"name":"Ada","secret":"m","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x"}],"zz":1}`, ErrSchemaMismatch, "$.zz"},
		{"blind index not a string", `{"name":"Ada","secret":"m","empty":null,"big":4611686018427387905,"ratio":0.1,"accounts":[{"iban":"x","iban_bidx":7}]}`, ErrSchemaMismatch, "$.accounts[0].iban_bidx"},
		{"not an object", `[]`, ErrSchemaMismatch, "$"},
		{"null document", `null`, ErrSchemaMismatch, "$"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newWBDoc()
			before := *v
			before.Accounts = slices.Clone(v.Accounts)
			b, _ := json.Marshal(v)
			info, _ := structInfoOf(v)
			err := writeBack(info, reflect.ValueOf(v).Elem(), b, []byte(tt.answer), nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("writeBack() err = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.path+":") {
				t.Errorf("writeBack() err = %q, want it to name %s", err, tt.path)
			}
			if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "DE89") {
				t.Errorf("writeBack() err = %q holds a value", err)
			}
			if !reflect.DeepEqual(*v, before) || v.Secret != before.Secret {
				t.Errorf("writeBack() changed v on error: %+v, want %+v", *v, before)
			}
		})
	}
	t.Run("not JSON", func(t *testing.T) {
		v := newWBDoc()
		b, _ := json.Marshal(v)
		for _, answer := range []string{`{"name":"s3cr3t-value`, string(b) + ` s3cr3t`, string(b) + `{}`, `s3cr3t`, ``} {
			info, _ := structInfoOf(v)
			err := writeBack(info, reflect.ValueOf(v).Elem(), b, []byte(answer), nil)
			if err == nil || strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("writeBack(%q) err = %v, want an error without the document", answer, err)
			}
			if *v.Secret != "s3cr3t-value" {
				t.Errorf("writeBack(%q) changed v", answer)
			}
		}
	})
}

// Against a real server.

// createTestKeys creates the keys testTiers uses.
func createTestKeys(tb testing.TB, c *Client) {
	tb.Helper()
	for name, typ := range map[string]tresorv1.KeyType{
		"customer-pii":      tresorv1.KeyType_KEY_TYPE_AES256_GCM,
		"customer-siv":      tresorv1.KeyType_KEY_TYPE_AES256_SIV,
		"customer-index":    tresorv1.KeyType_KEY_TYPE_HMAC_SHA256,
		"customer-accounts": tresorv1.KeyType_KEY_TYPE_FF1_AES256,
	} {
		if _, err := c.CreateKey(context.Background(), &tresorv1.CreateKeyRequest{KeyId: name, Type: typ}); err != nil {
			tb.Fatalf("CreateKey(%s) err = %v, want nil", name, err)
		}
	}
}

// structSetup starts a server with the test keys and the schema
// "customer" generated from testCustomer.
func structSetup(t *testing.T) (*TestServer, *Client) {
	t.Helper()
	s := StartTestServer(t)
	c := s.Client(t, nil)
	createTestKeys(t, c)
	def, err := StructSchema("customer", 1, testCustomer{}, testTiers()...)
	if err != nil {
		t.Fatalf("StructSchema() err = %v, want nil", err)
	}
	if _, err := c.PutSchema(context.Background(), &tresorv1.PutSchemaRequest{Definition: string(def)}); err != nil {
		t.Fatalf("PutSchema(StructSchema()) err = %v, want nil", err)
	}
	return s, c
}

func strPtr(s string) *string { return &s }

func newCustomer() *testCustomer {
	return &testCustomer{
		ID:        1<<53 + 1,
		Name:      "Ada Lovelace",
		TaxID:     "123-45-6789",
		BirthDate: strPtr("1815-12-10"),
		Email:     "ada@example.com",
		Password:  "hunter2",
		Address:   &testAddress{Street: "12 St James's Square", City: "London"},
		Accounts: []testAccount{
			{IBAN: "DE89370400440532013000", Number: "0532013000", Currency: "EUR"},
			{IBAN: "GB82WEST12345698765432", Number: "98765432", Currency: "GBP"},
		},
		Cards:   [2]*testCard{{PAN: "4111 1111 1111 1111"}, nil},
		Balance: 1234.5600000000002,
		Limits:  map[string]int{"daily": 500},
		Meta:    map[string]any{"n": json.Number("1.50"), "tags": []any{"a"}},
		Opened:  time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC),
		Public:  "visible",
	}
}

// cloneCustomer is a deep copy, by value, of what the tests compare.
func cloneCustomer(c *testCustomer) *testCustomer {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	var out testCustomer
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		panic(err)
	}
	return &out
}

func TestProtectRevealStruct(t *testing.T) {
	s, c := structSetup(t)
	ctx := context.Background()
	orig := newCustomer()
	v := cloneCustomer(orig)

	presp, err := c.ProtectStruct(ctx, "customer", "cust-1", v)
	if err != nil {
		t.Fatalf("ProtectStruct() err = %v, want nil", err)
	}
	if got := s.Calls(tresorv1.FieldService_ProtectDocument_FullMethodName); got != 1 {
		t.Errorf("ProtectDocument calls = %d, want 1", got)
	}
	outcomes := map[string]string{}
	for _, f := range presp.GetFields() {
		outcomes[f.GetPath()] = f.GetOutcome()
	}
	wantProtect := map[string]string{
		"$.tax_id": "protected", "$.birth_date": "protected", "$.email": "protected", "$.password": "redacted",
		"$.address.street": "protected", "$.accounts[0].iban": "protected", "$.accounts[1].iban": "protected",
		"$.accounts[0].number": "tokenized", "$.accounts[1].number": "tokenized", "$.cards[0].pan": "masked",
	}
	for p, want := range wantProtect {
		if outcomes[p] != want {
			t.Errorf("ProtectStruct() outcome of %s = %q, want %q (all: %v)", p, outcomes[p], want, outcomes)
		}
	}
	// Tagged fields changed as their tiers say; nothing else did.
	sealed := func(name, got, was string) {
		t.Helper()
		if got == was || !strings.HasPrefix(got, "tresor:") {
			t.Errorf("protected %s = %q, want a tresor ciphertext", name, got)
		}
	}
	sealed("TaxID", v.TaxID, orig.TaxID)
	sealed("BirthDate", *v.BirthDate, *orig.BirthDate)
	sealed("Email", v.Email, orig.Email)
	sealed("Address.Street", v.Address.Street, orig.Address.Street)
	for i, a := range v.Accounts {
		sealed(fmt.Sprintf("Accounts[%d].IBAN", i), a.IBAN, orig.Accounts[i].IBAN)
		if a.IBANBidx == "" || strings.Contains(a.IBANBidx, orig.Accounts[i].IBAN) {
			t.Errorf("Accounts[%d].IBANBidx = %q, want a blind index", i, a.IBANBidx)
		}
		if a.Number == orig.Accounts[i].Number || len(a.Number) != len(orig.Accounts[i].Number) {
			t.Errorf("Accounts[%d].Number = %q, want a token as long as %d digits", i, a.Number, len(orig.Accounts[i].Number))
		}
	}
	if v.Password != "[REDACTED]" {
		t.Errorf("Password = %q, want [REDACTED]", v.Password)
	}
	if v.Cards[0].PAN != "**** **** **** 1111" || v.Cards[1] != nil {
		t.Errorf("Cards = %q, %v; want the PAN masked and a nil second card", v.Cards[0].PAN, v.Cards[1])
	}
	untouched := cloneCustomer(v)
	untouched.TaxID, untouched.BirthDate, untouched.Email, untouched.Password = orig.TaxID, orig.BirthDate, orig.Email, orig.Password
	untouched.Address.Street = orig.Address.Street
	for i := range untouched.Accounts {
		untouched.Accounts[i].IBAN, untouched.Accounts[i].Number, untouched.Accounts[i].IBANBidx = orig.Accounts[i].IBAN, orig.Accounts[i].Number, ""
	}
	untouched.Cards[0].PAN = orig.Cards[0].PAN
	if !reflect.DeepEqual(untouched, cloneCustomer(orig)) {
		t.Errorf("ProtectStruct() changed untagged fields:\n got %+v\nwant %+v", untouched, orig)
	}
	if v.ID != 1<<53+1 || v.Balance != 1234.5600000000002 {
		t.Errorf("ID, Balance = %d, %v; want them unchanged", v.ID, v.Balance)
	}

	// Equal e-mails give equal deterministic ciphertexts, in any document.
	other := cloneCustomer(orig)
	if _, err := c.ProtectStruct(ctx, "customer", "cust-2", other); err != nil {
		t.Fatalf("ProtectStruct(other) err = %v, want nil", err)
	}
	if other.Email != v.Email || other.TaxID == v.TaxID || other.Accounts[0].IBANBidx != v.Accounts[0].IBANBidx {
		t.Errorf("second document: email equal %v, tax id equal %v, blind index equal %v; want true, false, true",
			other.Email == v.Email, other.TaxID == v.TaxID, other.Accounts[0].IBANBidx == v.Accounts[0].IBANBidx)
	}

	protected := cloneCustomer(v)
	rresp, err := c.RevealStruct(ctx, "customer", 0, "cust-1", v)
	if err != nil {
		t.Fatalf("RevealStruct() err = %v, want nil", err)
	}
	for _, f := range rresp.GetFields() {
		want := "clear"
		if f.GetProtection() == "mask" || f.GetProtection() == "redact" {
			want = "irreversible"
		}
		if f.GetOutcome() != want {
			t.Errorf("RevealStruct() outcome of %s (%s) = %q, want %q", f.GetPath(), f.GetProtection(), f.GetOutcome(), want)
		}
	}
	// Everything reversible is back; masks, redactions and blind
	// indexes stay.
	want := cloneCustomer(orig)
	want.Password = "[REDACTED]"
	want.Cards[0].PAN = protected.Cards[0].PAN
	for i := range want.Accounts {
		want.Accounts[i].IBANBidx = protected.Accounts[i].IBANBidx
	}
	if !reflect.DeepEqual(cloneCustomer(v), want) {
		t.Errorf("RevealStruct() =\n%+v\nwant\n%+v", v, want)
	}
	if v.Opened != orig.Opened || v.Balance != orig.Balance || v.ID != orig.ID {
		t.Errorf("RevealStruct() changed untagged values")
	}
}

func TestProtectRevealEmbedded(t *testing.T) {
	s := StartTestServer(t)
	c := s.Client(t, nil)
	ctx := context.Background()
	createTestKeys(t, c)
	def, err := StructSchema("outer", 1, testOuter{}, testTiers()...)
	if err != nil {
		t.Fatalf("StructSchema(testOuter) err = %v, want nil", err)
	}
	if _, err := c.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: string(def)}); err != nil {
		t.Fatalf("PutSchema(%s) err = %v, want nil", def, err)
	}
	tests := []struct {
		name string
		v    testOuter
	}{
		{"all set", testOuter{
			testEmbedded: testEmbedded{Note: "note"},
			testEmbedPtr: &testEmbedPtr{Other: "other"},
			Named:        testEmbedded{Note: "named"},
			Grid:         [][]testCard{{{PAN: "4111111111111111"}}, {}, {{PAN: "5500 0000 0000 0004"}, {PAN: "340000000000009"}}},
			Odd:          "odd",
			Skipped:      "skipped",
			Plain:        "plain",
		}},
		{"nil embedded pointer", testOuter{testEmbedded: testEmbedded{Note: "note"}, Odd: "odd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := cloneOuter(&tt.v)
			if _, err := c.ProtectStruct(ctx, "outer", "doc", v); err != nil {
				t.Fatalf("ProtectStruct() err = %v, want nil", err)
			}
			if v.Note == tt.v.Note || v.Named.Note == tt.v.Named.Note || v.Odd == tt.v.Odd {
				t.Errorf("ProtectStruct() = %+v, want Note, Named.Note and Odd sealed", v)
			}
			if (v.testEmbedPtr == nil) != (tt.v.testEmbedPtr == nil) || v.testEmbedPtr != nil && v.Other == tt.v.Other {
				t.Errorf("ProtectStruct() embedded pointer = %+v, want it sealed (or nil as before)", v.testEmbedPtr)
			}
			if v.Skipped != tt.v.Skipped || v.Plain != tt.v.Plain {
				t.Errorf("ProtectStruct() changed Skipped or Plain")
			}
			for i, row := range v.Grid {
				for j, card := range row {
					if p := tt.v.Grid[i][j].PAN; card.PAN == p || !strings.HasSuffix(card.PAN, p[len(p)-4:]) {
						t.Errorf("Grid[%d][%d].PAN = %q, want it masked but the last 4", i, j, card.PAN)
					}
				}
			}
			masked := cloneOuter(v)
			if _, err := c.RevealStruct(ctx, "outer", 0, "doc", v); err != nil {
				t.Fatalf("RevealStruct() err = %v, want nil", err)
			}
			want := cloneOuter(&tt.v)
			want.Grid = masked.Grid
			if !reflect.DeepEqual(v, want) {
				t.Errorf("RevealStruct() = %+v, want %+v", v, want)
			}
		})
	}
}

// cloneOuter is a deep copy of o (deepCopy cannot set the unexported
// embedded pointer).
func cloneOuter(o *testOuter) *testOuter {
	c := *o
	if o.testEmbedPtr != nil {
		p := *o.testEmbedPtr
		c.testEmbedPtr = &p
	}
	c.Grid = nil
	for _, row := range o.Grid {
		c.Grid = append(c.Grid, slices.Clone(row))
	}
	return &c
}

func TestStructNilAndOmitted(t *testing.T) {
	_, c := structSetup(t)
	ctx := context.Background()
	// Nil pointers, nil slices and omitted fields are left alone.
	v := &testCustomer{TaxID: "123-45-6789", Email: "a@b.c", Password: "p", Public: "x"}
	want := *v
	if _, err := c.ProtectStruct(ctx, "customer", "", v); err != nil {
		t.Fatalf("ProtectStruct() err = %v, want nil", err)
	}
	if v.BirthDate != nil || v.Address != nil || v.Accounts != nil || v.Cards != [2]*testCard{} {
		t.Errorf("ProtectStruct() filled nil fields: %+v", v)
	}
	if _, err := c.RevealStruct(ctx, "customer", 1, "", v); err != nil {
		t.Fatalf("RevealStruct() err = %v, want nil", err)
	}
	want.Password = "[REDACTED]"
	if !reflect.DeepEqual(*v, want) {
		t.Errorf("RevealStruct() = %+v, want %+v", *v, want)
	}
}

func TestStructErrors(t *testing.T) {
	s, c := structSetup(t)
	ctx := context.Background()
	other, err := New(Config{Address: s.Addr, TLS: s.OtherTLS, Tokens: s.tokens(t, s.OtherTLS, TestOtherID)})
	if err != nil {
		t.Fatalf("New(other) err = %v, want nil", err)
	}
	t.Cleanup(func() { other.Close() })

	protected := newCustomer()
	if _, err := c.ProtectStruct(ctx, "customer", "cust-1", protected); err != nil {
		t.Fatalf("ProtectStruct() err = %v, want nil", err)
	}
	// A schema that lists an untagged field: the server changes it.
	wrong := `{"name":"wrong","version":1,"default_tier":"public","tiers":{"public":{"protection":"none"},"restricted":{"protection":"aead","key":"customer-pii"}},"fields":[{"path":"$.name","tier":"restricted"}]}`
	if _, err := c.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: wrong}); err != nil {
		t.Fatalf("PutSchema(wrong) err = %v, want nil", err)
	}
	// Schemas that leave tagged fields as they are: one that lists no
	// field (its default tier protects nothing), and one edited to give
	// tax_id a tier without protection.
	noFields := `{"name":"no-fields","version":1,"default_tier":"public","tiers":{"public":{"protection":"none"}},"fields":[]}`
	edited := `{"name":"edited","version":1,"default_tier":"public","tiers":{"public":{"protection":"none"},"restricted":{"protection":"aead","key":"customer-pii"},"secret":{"protection":"redact"},"searchable":{"protection":"deterministic","key":"customer-siv"}},"fields":[{"path":"$.tax_id","tier":"public"},{"path":"$.birth_date","tier":"restricted"},{"path":"$.email","tier":"searchable"},{"path":"$.password","tier":"secret"},{"path":"$.address.street","tier":"restricted"},{"path":"$.accounts[*].iban","tier":"restricted"},{"path":"$.accounts[*].number","tier":"restricted"},{"path":"$.cards[*].pan","tier":"restricted"}]}`
	for _, def := range []string{noFields, edited} {
		if _, err := c.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: def}); err != nil {
			t.Fatalf("PutSchema(%.40s) err = %v, want nil", def, err)
		}
	}
	// A schema whose default tier seals every untagged value.
	sealAll := `{"name":"seal-all","version":1,"default_tier":"restricted","tiers":{"restricted":{"protection":"aead","key":"customer-pii"}},"fields":[]}`
	if _, err := c.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: sealAll}); err != nil {
		t.Fatalf("PutSchema(seal-all) err = %v, want nil", err)
	}
	// A document whose untagged name was sealed under "wrong": revealing
	// it changes the untagged field.
	raw, _ := json.Marshal(newCustomer())
	wresp, err := c.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "wrong", Document: string(raw)})
	if err != nil {
		t.Fatalf("ProtectDocument(wrong) err = %v, want nil", err)
	}
	sealedName := &testCustomer{}
	if err := json.Unmarshal([]byte(wresp.GetDocument()), sealedName); err != nil || !strings.HasPrefix(sealedName.Name, "tresor:") {
		t.Fatalf("ProtectDocument(wrong) = %s, %v; want the name sealed", wresp.GetDocument(), err)
	}
	tampered := cloneCustomer(protected)
	tampered.TaxID = protected.Email // a ciphertext from another path

	var nilCustomer *testCustomer
	tests := []struct {
		name    string
		client  *Client
		reveal  bool
		schema  string
		docID   string
		v       any
		want    error
		noCalls bool // refused before any call
	}{
		{"protect non-pointer", c, false, "customer", "", *newCustomer(), ErrInvalidStruct, true},
		{"reveal non-pointer", c, true, "customer", "", *newCustomer(), ErrInvalidStruct, true},
		{"protect nil pointer", c, false, "customer", "", nilCustomer, ErrInvalidStruct, true},
		{"reveal nil pointer", c, true, "customer", "", nilCustomer, ErrInvalidStruct, true},
		{"protect nil", c, false, "customer", "", nil, ErrInvalidStruct, true},
		{"protect pointer to a string", c, false, "customer", "", strPtr("x"), ErrInvalidStruct, true},
		{"protect tagged int", c, false, "customer", "", &badInt{PIN: 4321}, ErrInvalidStruct, true},
		{"reveal tagged int", c, true, "customer", "", &badInt{PIN: 4321}, ErrInvalidStruct, true},
		{"protect unmarshalable", c, false, "customer", "", &struct {
			A string  `tresor:"restricted"`
			F float64 `json:"f"`
		}{A: "x", F: inf()}, nil, true},
		{"reveal unmarshalable", c, true, "customer", "", &struct {
			A string  `tresor:"restricted"`
			F float64 `json:"f"`
		}{A: "x", F: inf()}, nil, true},
		{"protect unknown schema", c, false, "nope", "", newCustomer(), ErrNotFound, false},
		{"reveal unknown schema", c, true, "nope", "cust-1", cloneCustomer(protected), ErrNotFound, false},
		{"protect untagged field listed", c, false, "wrong", "", newCustomer(), ErrSchemaMismatch, false},
		{"protect default tier seals", c, false, "seal-all", "", newCustomer(), ErrSchemaMismatch, false},
		{"protect under a schema listing no field", c, false, "no-fields", "", newCustomer(), ErrSchemaMismatch, false},
		{"protect under a schema leaving one tagged field public", c, false, "edited", "", newCustomer(), ErrSchemaMismatch, false},
		{"protect one tagged field under a schema listing no field", c, false, "no-fields", "", &testAddress{Street: "12 St James's Square"}, ErrSchemaMismatch, false},
		{"reveal untagged field listed", c, true, "wrong", "", sealedName, ErrSchemaMismatch, false},
		{"reveal with another document id", c, true, "customer", "cust-2", cloneCustomer(protected), ErrDecryptionFailed, false},
		{"reveal a moved ciphertext", c, true, "customer", "cust-1", tampered, ErrDecryptionFailed, false},
		{"protect by a stranger", other, false, "customer", "", newCustomer(), ErrPermissionDenied, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := deepCopy(t, tt.v)
			calls := s.TotalCalls()
			var err error
			var resp any
			if tt.reveal {
				resp, err = tt.client.RevealStruct(ctx, tt.schema, 0, tt.docID, tt.v)
			} else {
				resp, err = tt.client.ProtectStruct(ctx, tt.schema, tt.docID, tt.v)
			}
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("%s err = %v, want %v", tt.name, err, tt.want)
			}
			if !reflect.ValueOf(resp).IsNil() {
				t.Errorf("%s response = %v, want nil", tt.name, resp)
			}
			if tt.noCalls && s.TotalCalls() != calls {
				t.Errorf("%s made %d calls, want 0", tt.name, s.TotalCalls()-calls)
			}
			for _, secret := range []string{"4321", "123-45-6789", "Ada Lovelace", "DE89"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("%s err = %q holds a value", tt.name, err)
				}
			}
			if tt.v != nil && !reflect.DeepEqual(deepCopy(t, tt.v), before) {
				t.Errorf("%s changed v on error", tt.name)
			}
		})
	}

	// The stranger's reveal: the policy permits it nothing, field by field,
	// so the call succeeds and every field stays as it was (withheld).
	t.Run("reveal by a stranger", func(t *testing.T) {
		v := cloneCustomer(protected)
		before := cloneCustomer(v)
		resp, err := other.RevealStruct(ctx, "customer", 0, "cust-1", v)
		if err != nil {
			t.Fatalf("RevealStruct(stranger) err = %v, want nil (fields withheld)", err)
		}
		if len(resp.GetFields()) == 0 {
			t.Errorf("RevealStruct(stranger) reported no fields")
		}
		for _, f := range resp.GetFields() {
			want := "withheld"
			if f.GetProtection() == "mask" || f.GetProtection() == "redact" {
				want = "irreversible"
			}
			if f.GetOutcome() != want {
				t.Errorf("RevealStruct(stranger) outcome of %s = %q, want %q", f.GetPath(), f.GetOutcome(), want)
			}
		}
		if !reflect.DeepEqual(v, before) {
			t.Errorf("RevealStruct(stranger) changed v:\n got %+v\nwant %+v", v, before)
		}
	})
}

func inf() float64 { var z float64; return 1 / z }

// deepCopy copies what v points to (v itself if it is no pointer), deep
// enough to compare before and after.
func deepCopy(t *testing.T, v any) any {
	t.Helper()
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return v
	}
	out := reflect.New(rv.Type().Elem())
	copyValue(out.Elem(), rv.Elem())
	return out.Interface()
}

// copyValue deep-copies src into dst, following pointers, slices and
// maps, so that a later write through the original is seen.
func copyValue(dst, src reflect.Value) {
	switch src.Kind() {
	case reflect.Pointer:
		if src.IsNil() {
			return
		}
		p := reflect.New(src.Type().Elem())
		copyValue(p.Elem(), src.Elem())
		dst.Set(p)
	case reflect.Struct:
		if src.Type() == reflect.TypeFor[time.Time]() {
			dst.Set(src)
			return
		}
		for i := range src.NumField() {
			if dst.Field(i).CanSet() {
				copyValue(dst.Field(i), src.Field(i))
			}
		}
	case reflect.Slice:
		if src.IsNil() {
			return
		}
		s := reflect.MakeSlice(src.Type(), src.Len(), src.Len())
		for i := range src.Len() {
			copyValue(s.Index(i), src.Index(i))
		}
		dst.Set(s)
	case reflect.Array:
		for i := range src.Len() {
			copyValue(dst.Index(i), src.Index(i))
		}
	default:
		dst.Set(src)
	}
}

// Examples need a TestServer but get no testing.TB: exampleTB is the
// little of one StartTestServer uses.

type exampleTB struct {
	testing.TB // not used: the methods below are the ones called

	mu       sync.Mutex
	cleanups []func()
	dirs     []string
	failed   bool
}

func (e *exampleTB) Helper() {}

func (e *exampleTB) Cleanup(f func()) {
	e.mu.Lock()
	e.cleanups = append(e.cleanups, f)
	e.mu.Unlock()
}

func (e *exampleTB) TempDir() string {
	d, err := os.MkdirTemp("", "tresor-example-")
	if err != nil {
		e.Fatalf("TempDir: %v", err)
	}
	e.mu.Lock()
	e.dirs = append(e.dirs, d)
	e.mu.Unlock()
	return d
}

func (e *exampleTB) Name() string { return "example" }

func (e *exampleTB) Context() context.Context { return context.Background() }

func (e *exampleTB) Log(args ...any) { fmt.Fprintln(os.Stderr, args...) }

func (e *exampleTB) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func (e *exampleTB) Error(args ...any) { e.Log(args...); e.Fail() }

func (e *exampleTB) Errorf(format string, args ...any) { e.Logf(format, args...); e.Fail() }

func (e *exampleTB) Fatal(args ...any) { e.Log(args...); e.FailNow() }

func (e *exampleTB) Fatalf(format string, args ...any) { e.Logf(format, args...); e.FailNow() }

func (e *exampleTB) Fail() {
	e.mu.Lock()
	e.failed = true
	e.mu.Unlock()
}

func (e *exampleTB) Failed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.failed
}

// FailNow ends the example: the server cannot be set up.
func (e *exampleTB) FailNow() {
	e.Fail()
	e.stop()
	panic("example test server failed")
}

func (e *exampleTB) stop() {
	e.mu.Lock()
	cleanups, dirs := e.cleanups, e.dirs
	e.cleanups, e.dirs = nil, nil
	e.mu.Unlock()
	for _, f := range slices.Backward(cleanups) {
		f()
	}
	for _, d := range dirs {
		os.RemoveAll(d)
	}
}

// StartExampleServer starts a TestServer for an Example function, which
// has no testing.TB; call stop when done. It panics if the server cannot
// start.
func StartExampleServer() (s *TestServer, stop func()) {
	tb := &exampleTB{}
	s = StartTestServer(tb)
	return s, func() {
		tb.stop()
		if tb.Failed() {
			panic("example test server failed")
		}
	}
}
