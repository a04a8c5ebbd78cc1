package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/limits"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// customerSchema classifies a customer record; inspection is set per test.
const customerSchema = `
name: customer
version: 1
default_tier: public
tiers:
  restricted: {protection: aead, key: pii-aead, sensitivity: restricted, mask: {keep_last: 4, format: digits}}
  account:    {protection: tokenize, key: acct-ff1, sensitivity: confidential}
  searchable: {protection: deterministic, key: pii-siv, sensitivity: confidential}
  indexed:    {protection: blind_index, key: pii-aead, index_key: pii-hmac, sensitivity: restricted}
  card:       {protection: mask, mask: {keep_last: 4, format: card}}
  public:     {protection: none}
fields:
  - {path: "$.tax_id", tier: restricted}
  - {path: "$.account_number", tier: account}
  - {path: "$.email", tier: searchable}
  - {path: "$.accounts[*].iban", tier: indexed}
  - {path: "$.card", tier: card}
inspection:
  action: %s
`

const customerDoc = `{"id":"c-1","name":"Ada","tax_id":"123-45-6789","account_number":"12345678901234",` +
	`"email":"ada@example.com","accounts":[{"iban":"DE89370400440532013000","kind":"checking"}],` +
	`"card":"4111 1111 1111 1111","notes":"call me"}`

// fieldKeys creates the keys customerSchema names, owned by the payments
// workload.
func fieldKeys(t *testing.T, ts *testServer) {
	t.Helper()
	for name, typ := range map[string]tresorv1.KeyType{
		"pii-aead": tresorv1.KeyType_KEY_TYPE_AES256_GCM,
		"pii-siv":  tresorv1.KeyType_KEY_TYPE_AES256_SIV,
		"pii-hmac": tresorv1.KeyType_KEY_TYPE_HMAC_SHA256,
		"acct-ff1": tresorv1.KeyType_KEY_TYPE_FF1_AES256,
		"spare":    tresorv1.KeyType_KEY_TYPE_AES256_GCM,
	} {
		if _, err := ts.keys.CreateKey(context.Background(), &tresorv1.CreateKeyRequest{KeyId: name, Type: typ,
			Labels: map[string]string{"owner": paymentsID, "sensitivity": "restricted"}}); err != nil {
			t.Fatalf("CreateKey(%s) err = %v", name, err)
		}
	}
}

func putSchema(t *testing.T, c tresorv1.FieldServiceClient, def string) *tresorv1.Schema {
	t.Helper()
	r, err := c.PutSchema(context.Background(), &tresorv1.PutSchemaRequest{Definition: def})
	if err != nil {
		t.Fatalf("PutSchema() err = %v, want nil", err)
	}
	return r.GetSchema()
}

func TestSchemas(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	fieldKeys(t, ts)
	fc := tresorv1.NewFieldServiceClient(ts.conn)
	s := putSchema(t, fc, schemaWith("report"))
	if s.GetName() != "customer" || s.GetVersion() != 1 || len(s.GetKeys()) != 4 {
		t.Fatalf("PutSchema() = %s v%d keys %v, want customer v1 with 4 keys", s.GetName(), s.GetVersion(), s.GetKeys())
	}
	v2 := strings.Replace(schemaWith("report"), "version: 1", "version: 2", 1)
	putSchema(t, fc, v2)
	for _, tc := range []struct {
		name string
		def  string
		want codes.Code
	}{
		{"not YAML or JSON", "{{{", codes.InvalidArgument},
		{"unknown tier", strings.Replace(v2, "tier: card}", "tier: nope}", 1), codes.InvalidArgument},
		{"tier without a key", strings.Replace(v2, "{protection: aead, key: pii-aead,", "{protection: aead,", 1), codes.InvalidArgument},
		{"invalid path", strings.Replace(v2, `"$.tax_id"`, `"tax_id["`, 1), codes.InvalidArgument},
		{"path listed twice", strings.Replace(v2, `"$.card"`, `"$.tax_id"`, 1), codes.InvalidArgument},
		{"a key that does not exist", strings.Replace(strings.Replace(v2, "key: pii-siv", "key: nope", 1), "version: 2", "version: 3", 1), codes.FailedPrecondition},
		{"a key of the wrong type", strings.Replace(strings.Replace(v2, "key: acct-ff1", "key: spare", 1), "version: 2", "version: 3", 1), codes.FailedPrecondition},
		{"a version already stored", v2, codes.AlreadyExists},
		{"a version that skips one", strings.Replace(v2, "version: 2", "version: 9", 1), codes.FailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fc.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: tc.def})
			if status.Code(err) != tc.want {
				t.Errorf("PutSchema(%s) err = %v, want %v", tc.name, err, tc.want)
			}
		})
	}
	got, err := fc.GetSchema(ctx, &tresorv1.GetSchemaRequest{Schema: "customer"})
	if err != nil || got.GetSchema().GetVersion() != 2 {
		t.Fatalf("GetSchema(customer) = v%d, %v; want v2 (the latest, nothing else stored)", got.GetSchema().GetVersion(), err)
	}
	vs, err := fc.ListSchemaVersions(ctx, &tresorv1.ListSchemaVersionsRequest{Schema: "customer"})
	if err != nil || len(vs.GetSchemas()) != 2 {
		t.Fatalf("ListSchemaVersions(customer) = %d versions, %v; want 2", len(vs.GetSchemas()), err)
	}
	if _, err := fc.GetSchema(ctx, &tresorv1.GetSchemaRequest{Schema: "nobody"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetSchema(nobody) err = %v, want NotFound", err)
	}
}

func TestProtectAndRevealDocument(t *testing.T) {
	ctx := context.Background()
	// Reveal in clear: the owner of the keys; masks only: role masked-reader.
	maskedOnly := `permit (principal in Tresor::Role::"masked-reader", action == Tresor::Action::"RevealMasked", resource is Tresor::Field);`
	ts := startServerWith(t, serverConfig{policies: map[string]string{permitPolicyKey: permitPayments, "masked.cedar": maskedOnly}})
	fieldKeys(t, ts)
	fc := tresorv1.NewFieldServiceClient(ts.conn)
	putSchema(t, fc, schemaWith("report"))

	prot, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: customerDoc, DocumentId: "c-1"})
	if err != nil {
		t.Fatalf("ProtectDocument() err = %v, want nil", err)
	}
	for _, secret := range []string{"123-45-6789", "12345678901234", "ada@example.com", "DE89370400440532013000", "4111 1111 1111 1111"} {
		if strings.Contains(prot.GetDocument(), secret) {
			t.Errorf("ProtectDocument() output holds %q in clear", secret)
		}
	}
	if !strings.Contains(prot.GetDocument(), `"name":"Ada"`) || !strings.Contains(prot.GetDocument(), "1111") {
		t.Errorf("ProtectDocument() = %s, want public fields kept and the card masked to its last 4", prot.GetDocument())
	}
	if len(prot.GetFields()) < 5 {
		t.Errorf("ProtectDocument() fields = %v, want an outcome per classified field", prot.GetFields())
	}
	if rec := ts.calls.last(); rec.Decision != "allow" || rec.Fields.Protected < 4 || len(rec.KeyVersions) == 0 {
		t.Errorf("call record = decision %q, fields %+v, key versions %v; want allow, >= 4 protected, the versions used", rec.Decision, rec.Fields, rec.KeyVersions)
	}

	// The owner reveals everything in clear.
	rev, err := fc.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "customer", Document: prot.GetDocument(), DocumentId: "c-1"})
	if err != nil {
		t.Fatalf("RevealDocument() err = %v, want nil", err)
	}
	for _, clear := range []string{"123-45-6789", "12345678901234", "ada@example.com", "DE89370400440532013000"} {
		if !strings.Contains(rev.GetDocument(), clear) {
			t.Errorf("RevealDocument() = %s, want %q in clear", rev.GetDocument(), clear)
		}
	}

	// A caller allowed only masks sees masks, never the clear values.
	cert := ts.clientCert(t, "spiffe://bank.example/support")
	support := tresorv1.NewFieldServiceClient(ts.dial(t, cert, ts.mint(t, tokenFor("support", cert, "masked-reader"))))
	masked, err := support.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "customer", Document: prot.GetDocument(), DocumentId: "c-1"})
	if err != nil {
		t.Fatalf("RevealDocument(masks only) err = %v, want nil", err)
	}
	for _, clear := range []string{"123-45-6789", "12345678901234", "ada@example.com", "DE89370400440532013000"} {
		if strings.Contains(masked.GetDocument(), clear) {
			t.Errorf("RevealDocument(masks only) = %s, holds %q in clear", masked.GetDocument(), clear)
		}
	}
	if !strings.Contains(masked.GetDocument(), "6789") {
		t.Errorf("RevealDocument(masks only) = %s, want the tax id masked to its last 4", masked.GetDocument())
	}
	outcomes := map[string]string{}
	for _, f := range masked.GetFields() {
		outcomes[f.GetPath()] = f.GetOutcome()
	}
	if outcomes["$.tax_id"] != "masked" {
		t.Errorf("RevealDocument(masks only) outcomes = %v, want $.tax_id masked", outcomes)
	}
	// A caller with no reveal at all gets the document as it was.
	nobodyCert := ts.clientCert(t, "spiffe://bank.example/nobody")
	nobody := tresorv1.NewFieldServiceClient(ts.dial(t, nobodyCert, ts.mint(t, tokenFor("nobody", nobodyCert))))
	withheld, err := nobody.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "customer", Document: prot.GetDocument(), DocumentId: "c-1"})
	if err != nil {
		t.Fatalf("RevealDocument(no permission) err = %v, want nil with every field withheld", err)
	}
	if strings.Contains(withheld.GetDocument(), "123-45-6789") || strings.Contains(withheld.GetDocument(), "6789\"") {
		t.Errorf("RevealDocument(no permission) = %s, want the fields left protected", withheld.GetDocument())
	}

	// Bad input: each a clear error that changes nothing.
	moved := strings.Replace(prot.GetDocument(), `"tax_id"`, `"tax_id_x"`, 1)
	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
		text string
	}{
		{"malformed JSON", func() error {
			_, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: `{"tax_id":`})
			return err
		}, codes.InvalidArgument, ""},
		{"too deep", func() error {
			_, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40)})
			return err
		}, codes.InvalidArgument, "deep"},
		{"FF1 given an object", func() error {
			_, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: `{"account_number":{"n":"1234567"}}`})
			return err
		}, codes.InvalidArgument, "$.account_number"},
		{"unknown schema", func() error {
			_, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "nobody", Document: `{}`})
			return err
		}, codes.NotFound, ""},
		{"a field revealed with another document id", func() error {
			_, err := fc.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "customer", Document: prot.GetDocument(), DocumentId: "c-2"})
			return err
		}, codes.InvalidArgument, "decryption failed"},
		{"a tampered field", func() error {
			_, err := fc.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "customer", Document: tamper(t, prot.GetDocument(), "tax_id"), DocumentId: "c-1"})
			return err
		}, codes.InvalidArgument, "decryption failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.want || !strings.Contains(status.Convert(err).Message(), tc.text) {
				t.Errorf("%s err = %v, want %v mentioning %q", tc.name, err, tc.want, tc.text)
			}
			for _, secret := range []string{"123-45-6789", "1234567"} {
				if strings.Contains(status.Convert(err).Message(), secret) {
					t.Errorf("%s error %q repeats a value", tc.name, err)
				}
			}
		})
	}
	// A protected field moved to another path does not reveal there: it is
	// not classified at its new path, and under the one it was sealed for
	// it would not authenticate.
	rev2, err := fc.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "customer", Document: moved, DocumentId: "c-1"})
	if err == nil && strings.Contains(rev2.GetDocument(), "123-45-6789") {
		t.Errorf("RevealDocument(tax id moved to tax_id_x) revealed it: %s", rev2.GetDocument())
	}

	// REST: the same call through the gateway, and a malformed one.
	code, body := ts.rest(t, http.MethodPost, "/v1/schemas/customer:protect", map[string]any{"document": customerDoc, "document_id": "c-1"})
	if code != http.StatusOK || !strings.Contains(fmt.Sprint(body["document"]), "tresor:") {
		t.Errorf("REST protect = %d %v, want 200 with a protected document", code, body)
	}
	code, body = ts.rest(t, http.MethodPost, "/v1/schemas/customer:protect", map[string]any{"document": `{"tax_id":`})
	if code != http.StatusBadRequest {
		t.Errorf("REST protect(malformed JSON) = %d %v, want 400", code, body)
	}
}

// tamper flips one character of the named field's ciphertext.
func tamper(t *testing.T, doc, field string) string {
	t.Helper()
	i := strings.Index(doc, `"`+field+`":"`)
	if i < 0 {
		t.Fatalf("no field %s in %s", field, doc)
	}
	j := i + len(field) + 4 + 30
	b := []byte(doc)
	if b[j] == 'A' {
		b[j] = 'B'
	} else {
		b[j] = 'A'
	}
	return string(b)
}

func TestInspectionActions(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	fieldKeys(t, ts)
	fc := tresorv1.NewFieldServiceClient(ts.conn)
	// A card number in a field the schema calls public.
	doc := `{"name":"Ada","notes":"card 4111111111111111 please"}`
	for i, tc := range []struct {
		action string
		want   codes.Code
		clear  bool // the card number stays in clear
	}{
		{"report", codes.OK, true},
		{"protect", codes.OK, false},
		{"reject", codes.FailedPrecondition, false},
	} {
		t.Run(tc.action, func(t *testing.T) {
			def := strings.Replace(schemaWith(tc.action), "name: customer", fmt.Sprintf("name: insp-%d", i), 1)
			putSchema(t, fc, def)
			r, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: fmt.Sprintf("insp-%d", i), Document: doc})
			if status.Code(err) != tc.want {
				t.Fatalf("ProtectDocument(inspection %s) err = %v, want %v", tc.action, err, tc.want)
			}
			if strings.Contains(status.Convert(err).Message(), "4111111111111111") {
				t.Errorf("ProtectDocument(inspection %s) error repeats the card number", tc.action)
			}
			if err != nil {
				if !strings.Contains(status.Convert(err).Message(), "$.notes") {
					t.Errorf("reject error %q, want it to name the path", err)
				}
				return
			}
			if got := strings.Contains(r.GetDocument(), "4111111111111111"); got != tc.clear {
				t.Errorf("ProtectDocument(inspection %s) card in clear = %v, want %v", tc.action, got, tc.clear)
			}
			if len(r.GetFindings()) != 1 || r.GetFindings()[0].GetPath() != "$.notes" || r.GetFindings()[0].GetDetector() != "card" {
				t.Errorf("findings = %v, want one card finding at $.notes", r.GetFindings())
			}
		})
	}
}

func TestDocumentStreamsAndBudgets(t *testing.T) {
	ctx := context.Background()
	budgets := []limits.BudgetRule{{Action: "decrypt", Tier: "restricted", Windows: []limits.Window{{Period: time.Hour, Limit: 3}}}}
	ts := startServerWith(t, serverConfig{budgets: budgets})
	fieldKeys(t, ts)
	fc := tresorv1.NewFieldServiceClient(ts.conn)
	putSchema(t, fc, schemaWith("report"))
	stream, err := fc.ProtectDocuments(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var protected []string
	for i := range 3 {
		doc := fmt.Sprintf(`{"tax_id":"123-45-67%02d"}`, i)
		if err := stream.Send(&tresorv1.ProtectDocumentsRequest{Request: &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: doc}}); err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("ProtectDocuments() document %d err = %v, want nil", i, err)
		}
		protected = append(protected, r.GetResponse().GetDocument())
	}
	_ = stream.CloseSend()
	// The budget allows 3 restricted fields an hour: three one-field
	// documents reveal, the fourth is refused before anything is read.
	for i, doc := range append(protected, protected[0]) {
		_, err := fc.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "customer", Document: doc})
		want := codes.OK
		if i == 3 {
			want = codes.ResourceExhausted
		}
		if status.Code(err) != want {
			t.Errorf("RevealDocument #%d err = %v, want %v", i+1, err, want)
		}
	}
}

// tokenFor is a token request for subject, bound to cert, with roles.
func tokenFor(subject string, cert tls.Certificate, roles ...string) devissuer.TokenRequest {
	return devissuer.TokenRequest{Subject: subject, Roles: roles, BindTo: cert.Leaf}
}

// schemaWith is customerSchema with an inspection action.
func schemaWith(action string) string {
	if action == "protect" {
		action += "\n  tier: restricted"
	}
	return fmt.Sprintf(customerSchema, action)
}

// TestFieldReviewFixes covers what a security review of FieldService found.
func TestFieldReviewFixes(t *testing.T) {
	ctx := context.Background()
	// Field reveal in clear for tier levels up to confidential; PutSchema
	// for anyone on any schema, but on keys only for their owner.
	pols := map[string]string{
		permitPolicyKey: permitPayments,
		"fields.cedar": `permit (principal in Tresor::Role::"reader", action == Tresor::Action::"RevealDocument", resource is Tresor::Field) when { resource.tier_level <= 3 };
permit (principal in Tresor::Role::"schema-writer", action == Tresor::Action::"PutSchema", resource is Tresor::Schema);
permit (principal in Tresor::Role::"schema-writer", action == Tresor::Action::"PutSchema", resource is Tresor::Key) when { resource.owner == principal.workload };`,
	}
	ts := startServerWith(t, serverConfig{policies: pols})
	fieldKeys(t, ts) // restricted keys, owned by payments
	fc := tresorv1.NewFieldServiceClient(ts.conn)
	putSchema(t, fc, schemaWith("report"))

	t.Run("PutSchema is decided on every key the schema names", func(t *testing.T) {
		cert := ts.clientCert(t, "spiffe://bank.example/schemas")
		writer := tresorv1.NewFieldServiceClient(ts.dial(t, cert, ts.mint(t, tokenFor("writer", cert, "schema-writer"))))
		def := strings.Replace(schemaWith("report"), "name: customer", "name: stolen", 1)
		if _, err := writer.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: def}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("PutSchema(a schema naming another owner's keys) err = %v, want PermissionDenied", err)
		}
	})

	t.Run("a field is as sensitive as its key at least", func(t *testing.T) {
		// The schema calls the tax id confidential; its key is restricted.
		def := strings.Replace(strings.Replace(schemaWith("report"), "version: 1", "version: 2", 1),
			"{protection: aead, key: pii-aead, sensitivity: restricted,", "{protection: aead, key: pii-aead, sensitivity: confidential,", 1)
		putSchema(t, fc, def)
		prot, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: `{"tax_id":"123-45-6789"}`})
		if err != nil {
			t.Fatal(err)
		}
		cert := ts.clientCert(t, "spiffe://bank.example/reader")
		reader := tresorv1.NewFieldServiceClient(ts.dial(t, cert, ts.mint(t, tokenFor("reader", cert, "reader"))))
		rev, err := reader.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "customer", Document: prot.GetDocument()})
		if err != nil {
			t.Fatalf("RevealDocument() err = %v", err)
		}
		if strings.Contains(rev.GetDocument(), "123-45-6789") || rev.GetFields()[0].GetOutcome() != "withheld" {
			t.Errorf("RevealDocument(restricted key, confidential tier) = %s %v, want the field withheld", rev.GetDocument(), rev.GetFields())
		}
	})

	t.Run("CryptoService refuses field protection's associated data", func(t *testing.T) {
		for name, call := range map[string]func() error{
			"Encrypt": func() error {
				_, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "pii-aead", Plaintext: []byte("x"), AssociatedData: []byte("tresor-fields-v1\x00forged")})
				return err
			},
			"Decrypt": func() error {
				_, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: "tresor:v1:AAAA", AssociatedData: []byte("tresor-fields-v1\x00x")})
				return err
			},
			"BatchEncrypt": func() error {
				_, err := ts.crypto.BatchEncrypt(ctx, &tresorv1.BatchEncryptRequest{Key: "pii-aead", Items: []*tresorv1.BatchEncryptItem{{Plaintext: []byte("x"), AssociatedData: []byte("tresor-fields-")}}})
				return err
			},
		} {
			if err := call(); status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "reserves") {
				t.Errorf("%s with reserved associated data err = %v, want InvalidArgument", name, err)
			}
		}
	})

	t.Run("a document stream fails closed when its event cannot be written", func(t *testing.T) {
		stream, err := fc.ProtectDocuments(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ts.calls.mu.Lock()
		ts.calls.err = errors.New("audit sink full")
		ts.calls.mu.Unlock()
		defer func() {
			ts.calls.mu.Lock()
			ts.calls.err = nil
			ts.calls.mu.Unlock()
		}()
		if err := stream.Send(&tresorv1.ProtectDocumentsRequest{Request: &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: `{"tax_id":"123-45-6789"}`}}); err != nil {
			t.Fatal(err)
		}
		if r, err := stream.Recv(); status.Code(err) != codes.Unavailable {
			t.Errorf("ProtectDocuments() with a failing audit sink = %v, %v; want Unavailable and no document", r, err)
		}
	})
}

// TestSearchableBudget: a caller allowed to protect could protect candidate
// values and match the deterministic ciphertexts, tokens or blind indexes
// against stolen ones; the "searchable" budget bounds how many it gets.
func TestSearchableBudget(t *testing.T) {
	ctx := context.Background()
	budgets := []limits.BudgetRule{{Action: "searchable", Tier: "restricted", Windows: []limits.Window{{Period: time.Hour, Limit: 2}}}}
	ts := startServerWith(t, serverConfig{budgets: budgets})
	fieldKeys(t, ts) // every key restricted
	fc := tresorv1.NewFieldServiceClient(ts.conn)
	putSchema(t, fc, schemaWith("report"))
	for i, tc := range []struct {
		doc  string
		want codes.Code
	}{
		{`{"tax_id":"123-45-6789"}`, codes.OK},            // randomized: not searchable, not counted
		{`{"account_number":"12345678901234"}`, codes.OK}, // 1 token
		{`{"email":"a@example.com"}`, codes.OK},           // 1 deterministic: the budget of 2 is spent
		{`{"account_number":"12345678901299"}`, codes.ResourceExhausted},
		{`{"tax_id":"123-45-6780"}`, codes.OK}, // still not counted
	} {
		r, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "customer", Document: tc.doc})
		if status.Code(err) != tc.want {
			t.Errorf("ProtectDocument #%d (%s) err = %v, want %v", i+1, tc.doc, err, tc.want)
		}
		if err != nil && r.GetDocument() != "" {
			t.Errorf("ProtectDocument #%d refused but returned %s", i+1, r.GetDocument())
		}
	}
}
