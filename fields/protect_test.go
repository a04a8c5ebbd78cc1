package fields

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
)

// gcmKEK is a root key backed by a real AES-256-GCM key in memory.
type gcmKEK struct{ gcm cipher.AEAD }

func (k *gcmKEK) ID() string { return "fields-test-root" }

func (k *gcmKEK) Wrap(_ context.Context, pt, aad []byte) ([]byte, error) {
	nonce := make([]byte, k.gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.gcm.Seal(nonce, nonce, pt, aad), nil
}

func (k *gcmKEK) Unwrap(_ context.Context, ct, aad []byte) ([]byte, error) {
	if len(ct) < k.gcm.NonceSize() {
		return nil, errors.New("unwrap failed")
	}
	return k.gcm.Open(nil, ct[:k.gcm.NonceSize()], ct[k.gcm.NonceSize():], aad)
}

// newKeyring returns a real keyring (SQLite store, local root key) holding
// the customer schema's keys.
func newKeyring(t testing.TB) *envelope.Keyring {
	t.Helper()
	ctx := context.Background()
	s, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatalf("OpenSQLite() err = %v, want nil", err)
	}
	t.Cleanup(func() { s.Close() })
	key := make([]byte, 32)
	rand.Read(key)
	block, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(block)
	ring, err := envelope.New(s, &gcmKEK{gcm: gcm}, envelope.Options{})
	if err != nil {
		t.Fatalf("envelope.New() err = %v, want nil", err)
	}
	for name, typ := range map[string]store.KeyType{
		"pii-aead": store.KeyTypeAES256GCM,
		"pii-siv":  store.KeyTypeAES256SIV,
		"pii-hmac": store.KeyTypeHMACSHA256,
		"acct-ff1": store.KeyTypeFF1AES256,
	} {
		if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: name, Type: typ}); err != nil {
			t.Fatalf("CreateKey(%q) err = %v, want nil", name, err)
		}
	}
	return ring
}

func newProtector(t testing.TB, opts Options) (*Protector, *envelope.Keyring) {
	t.Helper()
	ring := newKeyring(t)
	p, err := New(ring, opts)
	if err != nil {
		t.Fatalf("New() err = %v, want nil", err)
	}
	return p, ring
}

const customerDoc = `{
  "id": 42,
  "name": "Jane Doe",
  "tax_id": "123-45-6789",
  "email": "jane.doe@example.com",
  "card": "4111 1111 1111 1111",
  "password": "hunter2",
  "account_no": "0012-3456-7890",
  "balance": 12345678901234567890.000000000001,
  "accounts": [
    {"iban": "DE89 3704 0044 0532 0130 00", "currency": "EUR"},
    {"iban": "GB82WEST12345698765432", "currency": "GBP"}
  ],
  "address": {"street": "1 Main St", "zip": "12345", "geo": [1.5e3, -0.0]},
  "phones": ["+44 20 7946 0958", null],
  "date of birth": "1980-01-01",
  "notes": "called on 2024-01-15"
}`

func clearAll(FieldRef) (RevealMode, error) { return RevealClear, nil }

// semanticEqual compares two JSON documents with numbers as text.
func semanticEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	da := json.NewDecoder(bytes.NewReader(a))
	da.UseNumber()
	db := json.NewDecoder(bytes.NewReader(b))
	db.UseNumber()
	if err := da.Decode(&x); err != nil {
		t.Fatalf("decode %q: %v", a, err)
	}
	if err := db.Decode(&y); err != nil {
		t.Fatalf("decode %q: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}

func TestProtectRevealRoundTrip(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	s := mustSchema(t, customerSchema)
	out, res, err := p.Protect(ctx, s, []byte(customerDoc), "doc-1")
	if err != nil {
		t.Fatalf("Protect() err = %v, want nil", err)
	}
	for _, secretValue := range []string{"123-45-6789", "jane.doe", "4111 1111 1111 1111", "hunter2", "0012-3456-7890", "DE89", "GB82", "Main St", "7946", "1980-01-01"} {
		if bytes.Contains(out, []byte(secretValue)) {
			t.Errorf("Protect() output holds %q:\n%s", secretValue, out)
		}
	}
	for _, keep := range []string{`"id":42`, `"balance":12345678901234567890.000000000001`, `"currency":"EUR"`, `"notes":"called on 2024-01-15"`, `"card":"**** **** **** 1111"`, `"[REDACTED]"`, `"iban_bidx":"1.`, `null]`} {
		if !bytes.Contains(out, []byte(keep)) {
			t.Errorf("Protect() output lacks %s:\n%s", keep, out)
		}
	}
	var doc map[string]any
	json.Unmarshal(out, &doc)
	tok, _ := doc["account_no"].(string)
	if len(tok) != len("0012-3456-7890") || tok[4] != '-' || tok[9] != '-' || tok == "0012-3456-7890" {
		t.Errorf("Protect() account_no = %q, want a token of the same shape", tok)
	}
	outcomes := map[string]string{}
	for _, f := range res.Fields {
		outcomes[f.Path] = f.Outcome
	}
	wantOutcomes := map[string]string{
		"$.tax_id": OutcomeProtected, "$.email": OutcomeProtected, "$.card": OutcomeMasked, "$.password": OutcomeRedacted,
		"$.account_no": OutcomeTokenized, "$.accounts[0].iban": OutcomeProtected, "$.accounts[1].iban": OutcomeProtected,
		"$.address": OutcomeProtected, "$.phones[0]": OutcomeProtected, `$["date of birth"]`: OutcomeProtected,
	}
	if !reflect.DeepEqual(outcomes, wantOutcomes) {
		t.Errorf("Protect() outcomes = %v\nwant %v", outcomes, wantOutcomes)
	}

	back, _, err := p.Reveal(ctx, s, out, "doc-1", clearAll)
	if err != nil {
		t.Fatalf("Reveal(clear) err = %v, want nil", err)
	}
	// Everything but the irreversible fields and the added blind indexes is
	// the original document, numbers and member order included.
	var orig map[string]any
	json.Unmarshal([]byte(customerDoc), &orig)
	want := []byte(customerDoc)
	want = bytes.Replace(want, []byte(`"4111 1111 1111 1111"`), []byte(`"**** **** **** 1111"`), 1)
	want = bytes.Replace(want, []byte(`"hunter2"`), []byte(`"[REDACTED]"`), 1)
	var compact bytes.Buffer
	json.Compact(&compact, want)
	got := string(back)
	for _, bidx := range []string{`,"iban_bidx":"`} {
		for strings.Contains(got, bidx) {
			i := strings.Index(got, bidx)
			j := strings.IndexByte(got[i+len(bidx):], '"')
			got = got[:i] + got[i+len(bidx)+j+1:]
		}
	}
	if got != compact.String() {
		t.Errorf("Reveal(Protect(doc)) =\n%s\nwant\n%s", got, compact.String())
	}
}

func TestDeterministicAndBlindIndexAreStable(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	s := mustSchema(t, customerSchema)
	doc := `{"email":"a@example.com","accounts":[{"iban":"DE89370400440532013000"}]}`
	o1, _, err1 := p.Protect(ctx, s, []byte(doc), "d1")
	o2, _, err2 := p.Protect(ctx, s, []byte(doc), "d2")
	if err1 != nil || err2 != nil {
		t.Fatalf("Protect() errs = %v, %v", err1, err2)
	}
	var a, b struct {
		Email    string
		Accounts []map[string]string
	}
	json.Unmarshal(o1, &a)
	json.Unmarshal(o2, &b)
	if a.Email != b.Email {
		t.Errorf("deterministic email differs across documents: %q vs %q", a.Email, b.Email)
	}
	if a.Accounts[0]["iban"] == b.Accounts[0]["iban"] {
		t.Errorf("randomized iban ciphertexts are equal across documents")
	}
	if a.Accounts[0]["iban_bidx"] != b.Accounts[0]["iban_bidx"] {
		t.Errorf("blind indexes differ: %q vs %q", a.Accounts[0]["iban_bidx"], b.Accounts[0]["iban_bidx"])
	}
	// The lookup index ignores case and spaces, like the stored one.
	idx, err := p.BlindIndex(ctx, s, "$.accounts[*].iban", "de89 3704 0044 0532 0130 00")
	if err != nil || idx != a.Accounts[0]["iban_bidx"] {
		t.Errorf("BlindIndex() = %q, %v; want %q, nil", idx, err, a.Accounts[0]["iban_bidx"])
	}
	at, err := p.BlindIndexAt(ctx, s, "$.accounts[*].iban", "DE89370400440532013000", 1)
	if err != nil || at != idx {
		t.Errorf("BlindIndexAt(v1) = %q, %v; want %q, nil", at, err, idx)
	}
	if _, err := p.BlindIndex(ctx, s, "$.email", "x"); !errors.Is(err, ErrInvalidSchema) {
		t.Errorf("BlindIndex($.email) err = %v, want ErrInvalidSchema", err)
	}
}

func TestRevealRefusesMovedAndTampered(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	s := mustSchema(t, customerSchema)
	out, _, err := p.Protect(ctx, s, []byte(`{"tax_id":"123-45-6789","address":"x","email":"e@example.com"}`), "doc-1")
	if err != nil {
		t.Fatalf("Protect() err = %v", err)
	}
	var m map[string]string
	json.Unmarshal(out, &m)
	swap := func(a, b string) []byte {
		doc, _ := json.Marshal(map[string]string{"tax_id": m[a], "address": m[b], "email": m["email"]})
		return doc
	}
	tampered := []byte(m["tax_id"])
	tampered[len(tampered)-3] ^= 1
	flipped, _ := json.Marshal(map[string]string{"tax_id": string(tampered)})
	moved, _ := json.Marshal(map[string]string{"email": m["tax_id"]})
	tests := []struct {
		name, docID string
		doc         []byte
		path        string
	}{
		{"field moved to another path", "doc-1", swap("address", "tax_id"), "$.address"},
		{"field moved to another document", "doc-2", out, "$.tax_id"},
		{"tampered ciphertext", "doc-1", flipped, "$.tax_id"},
		{"ciphertext moved to a deterministic field", "doc-1", moved, "$.email"},
		{"plaintext where a ciphertext belongs", "doc-1", []byte(`{"tax_id":"123-45-6789"}`), "$.tax_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, res, err := p.Reveal(ctx, s, tt.doc, tt.docID, clearAll)
			if !errors.Is(err, ErrReveal) || got != nil {
				t.Fatalf("Reveal() = %s, %v; want nil, ErrReveal", got, err)
			}
			if err.Error() != ErrReveal.Error()+": "+tt.path {
				t.Errorf("Reveal() err = %q, want only %q and the path %s", err, ErrReveal, tt.path)
			}
			if strings.Contains(err.Error(), "123-45") || len(res.Fields) != 0 {
				t.Errorf("Reveal() err = %q, res = %+v: leaks", err, res)
			}
		})
	}
}

func TestRevealModes(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	s := mustSchema(t, customerSchema)
	doc := `{"tax_id":"123-45-6789","account_no":"4000123412341234","accounts":[{"iban":"DE89 3704 0044 0532 0130 00"}],"email":"jane@example.com","password":"x"}`
	out, _, err := p.Protect(ctx, s, []byte(doc), "")
	if err != nil {
		t.Fatalf("Protect() err = %v", err)
	}
	var refs []FieldRef
	masked, res, err := p.Reveal(ctx, s, out, "", func(f FieldRef) (RevealMode, error) {
		refs = append(refs, f)
		if f.Tier == "searchable" {
			return RevealWithheld, nil
		}
		return RevealMasked, nil
	})
	if err != nil {
		t.Fatalf("Reveal(masked) err = %v, want nil", err)
	}
	for _, plain := range []string{"123-45-6789", "4000123412341234", "DE89 3704", "jane@"} {
		if bytes.Contains(masked, []byte(plain)) {
			t.Errorf("Reveal(masked) holds %q: %s", plain, masked)
		}
	}
	for _, want := range []string{`"tax_id":"*******6789"`, `"account_no":"************1234"`, `"iban":"DE** **** **** **** **30 00"`, `"password":"[REDACTED]"`} {
		if !bytes.Contains(masked, []byte(want)) {
			t.Errorf("Reveal(masked) lacks %s: %s", want, masked)
		}
	}
	var m1, m2 map[string]any
	json.Unmarshal(out, &m1)
	json.Unmarshal(masked, &m2)
	if m1["email"] != m2["email"] {
		t.Errorf("Reveal(withheld email) = %v, want it unchanged %v", m2["email"], m1["email"])
	}
	if len(refs) != 4 {
		t.Errorf("decide called %d times (%+v), want 4: once per reversible field", len(refs), refs)
	}
	outcomes := map[string]string{}
	for _, f := range res.Fields {
		outcomes[f.Path] = f.Outcome
	}
	want := map[string]string{"$.tax_id": OutcomeMasked, "$.account_no": OutcomeMasked, "$.accounts[0].iban": OutcomeMasked, "$.email": OutcomeWithheld, "$.password": OutcomeIrreversible}
	if !reflect.DeepEqual(outcomes, want) {
		t.Errorf("Reveal() outcomes = %v, want %v", outcomes, want)
	}
	errDenied := errors.New("denied")
	if _, _, err := p.Reveal(ctx, s, out, "", func(FieldRef) (RevealMode, error) { return 0, errDenied }); !errors.Is(err, errDenied) {
		t.Errorf("Reveal(decide fails) err = %v, want %v", err, errDenied)
	}
}

func TestProtectWrongTypes(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	s := mustSchema(t, customerSchema)
	tests := []struct{ name, doc, path string }{
		{"tokenize a number", `{"account_no":1234567890}`, "$.account_no"},
		{"tokenize letters", `{"account_no":"12345678AB"}`, "$.account_no"},
		{"tokenize an object", `{"account_no":{"n":"1234567"}}`, "$.account_no"},
		{"tokenize 5 digits", `{"account_no":"12-345"}`, "$.account_no"},
		{"mask an object", `{"card":{"n":"4111111111111111"}}`, "$.card"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := p.Protect(ctx, s, []byte(tt.doc), "")
			if !errors.Is(err, ErrWrongType) || !strings.Contains(err.Error(), tt.path) {
				t.Errorf("Protect(%s) err = %v, want ErrWrongType naming %s", tt.doc, err, tt.path)
			}
			if err != nil && (strings.Contains(err.Error(), "1234") || strings.Contains(err.Error(), "345")) {
				t.Errorf("Protect(%s) err = %q holds the value", tt.doc, err)
			}
		})
	}
}

func TestProtectDocumentLimits(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{MaxDocumentBytes: 1024, MaxDepth: 4})
	s := mustSchema(t, customerSchema)
	tests := []struct {
		name, doc string
		want      error
	}{
		{"too large, malformed at the end", `{"a":"` + strings.Repeat("x", 2000) + `"!!!`, ErrDocumentTooLarge},
		{"too deep", `{"a":{"b":{"c":{"d":{}}}}}`, ErrDocumentTooDeep},
		{"deep enough", `{"a":{"b":{"c":{"d":1}}}}`, nil},
		{"malformed", `{"a":}`, ErrInvalidDocument},
		{"duplicate keys", `{"tax_id":"1","tax_id":"2"}`, ErrInvalidDocument},
		{"missing paths are fine", `{}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := p.Protect(ctx, s, []byte(tt.doc), "")
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("Protect() err = %v, want %v", err, tt.want)
			}
			_, _, err = p.Reveal(ctx, s, []byte(tt.doc), "", clearAll)
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Reveal() err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestInspection(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	const card = "4111 1111 1111 1111"
	doc := `{"notes":"pay with ` + card + `","items":[{"memo":"ok"},{"memo":"x"},{"memo":"y"},{"memo":"mail jane@example.com"}],"tax_id":"1"}`
	for _, action := range []string{"report", "protect", "reject"} {
		t.Run(action, func(t *testing.T) {
			src := strings.Replace(customerSchema, "action: report", "action: "+action, 1)
			if action == "protect" {
				src = strings.Replace(src, "action: protect", "action: protect\n  tier: restricted", 1)
			}
			s := mustSchema(t, src)
			out, res, err := p.Protect(ctx, s, []byte(doc), "d")
			wantFindings := []Finding{{"$.notes", "card", InspectionAction(action)}, {"$.items[3].memo", "email", InspectionAction(action)}}
			if !reflect.DeepEqual(res.Findings, wantFindings) {
				t.Errorf("Protect() findings = %+v, want %+v", res.Findings, wantFindings)
			}
			if fmt.Sprintf("%+v", res)+fmt.Sprint(err) != "" && strings.Contains(fmt.Sprintf("%+v %v", res, err), "4111") {
				t.Errorf("Protect() result or error holds the card number: %+v %v", res, err)
			}
			switch action {
			case "report":
				if err != nil || !bytes.Contains(out, []byte(card)) {
					t.Errorf("Protect(report) = %s, %v; want the card left in place, nil", out, err)
				}
			case "protect":
				if err != nil || bytes.Contains(out, []byte(card)) || bytes.Contains(out, []byte("jane@")) {
					t.Fatalf("Protect(protect) = %s, %v; want the findings sealed, nil", out, err)
				}
				back, _, err := p.Reveal(ctx, s, out, "d", clearAll)
				if err != nil || !bytes.Contains(back, []byte(card)) || !bytes.Contains(back, []byte(`"memo":"mail jane@example.com"`)) {
					t.Errorf("Reveal(inspected) = %s, %v; want the findings revealed", back, err)
				}
			case "reject":
				if !errors.Is(err, ErrRejected) || out != nil || !strings.Contains(err.Error(), "$.notes (card)") || !strings.Contains(err.Error(), "$.items[3].memo (email)") {
					t.Errorf("Protect(reject) = %s, %v; want nil, ErrRejected naming $.notes (card) and $.items[3].memo (email)", out, err)
				}
			}
		})
	}
}

func TestDefaultTierProtectsUnlisted(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	s := mustSchema(t, strings.Replace(customerSchema, "default_tier: public", "default_tier: restricted", 1))
	doc := `{"id":42,"nested":{"list":["a",{"b":true}],"none":null},"card":"4111111111111111"}`
	out, _, err := p.Protect(ctx, s, []byte(doc), "d")
	if err != nil {
		t.Fatalf("Protect() err = %v", err)
	}
	// The values, not their digits: base64 ciphertexts may hold "42".
	if bytes.Contains(out, []byte(`"id":42`)) || bytes.Contains(out, []byte(`"a"`)) || bytes.Contains(out, []byte(`"b":true`)) ||
		!bytes.Contains(out, []byte(`"id":"tresor:v1:`)) || !bytes.Contains(out, []byte(`"none":null`)) {
		t.Errorf("Protect(default restricted) = %s; want every unlisted scalar sealed, null kept", out)
	}
	back, _, err := p.Reveal(ctx, s, out, "d", clearAll)
	want := `{"id":42,"nested":{"list":["a",{"b":true}],"none":null},"card":"************1111"}`
	if err != nil || string(back) != want {
		t.Errorf("Reveal() = %s, %v; want %s, nil", back, err, want)
	}
}

func TestProtectKeyErrorNamesPathNotValue(t *testing.T) {
	ctx := context.Background()
	p, ring := newProtector(t, Options{})
	if _, err := ring.DisableKey(ctx, "pii-aead"); err != nil {
		t.Fatal(err)
	}
	s := mustSchema(t, customerSchema)
	_, _, err := p.Protect(ctx, s, []byte(`{"tax_id":"123-45-6789"}`), "")
	if !errors.Is(err, envelope.ErrKeyDisabled) || !strings.Contains(err.Error(), "$.tax_id") || strings.Contains(err.Error(), "123-45") {
		t.Errorf("Protect(disabled key) err = %v, want ErrKeyDisabled naming $.tax_id and not the value", err)
	}
}

// TestBlindIndexNameIsNoHidingPlace: a member named like a blind index
// escapes inspection only when Protect writes the index over it; a value
// under that name with no field beside it is inspected like any other.
func TestBlindIndexNameIsNoHidingPlace(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	const card = "4111 1111 1111 1111"
	s := mustSchema(t, customerSchema)
	tests := []struct {
		name         string
		doc          string
		wantFindings []Finding
		wantCard     bool // the card stays in the output (report)
	}{
		{"no field beside it", `{"accounts":[{"iban_bidx":"` + card + `"}]}`, []Finding{{"$.accounts[0].iban_bidx", "card", InspectReport}}, true},
		{"before its field", `{"accounts":[{"iban_bidx":"` + card + `","iban":"DE89 3704 0044 0532 0130 00"}]}`, nil, false},
		{"after its field", `{"accounts":[{"iban":"DE89 3704 0044 0532 0130 00","iban_bidx":"` + card + `"}]}`, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, res, err := p.Protect(ctx, s, []byte(tt.doc), "d")
			if err != nil {
				t.Fatalf("Protect(%s) err = %v, want nil", tt.doc, err)
			}
			if !reflect.DeepEqual(res.Findings, tt.wantFindings) {
				t.Errorf("Protect(%s) findings = %+v, want %+v", tt.doc, res.Findings, tt.wantFindings)
			}
			if got := bytes.Contains(out, []byte(card)); got != tt.wantCard {
				t.Errorf("Protect(%s) = %s: card in the output %v, want %v", tt.doc, out, got, tt.wantCard)
			}
		})
	}
}
