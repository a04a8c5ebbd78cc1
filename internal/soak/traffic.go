package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// The named keys of a run. Clients encrypt with cryptoKeys (data keys
// come from the AES-256-GCM ones), documents use docKeys through the
// schema, and RotateKey picks from rotatable (FF1 keys never rotate).
var (
	cryptoKeys  = []keySpec{{"soak-gcm-a", tresorv1.KeyType_KEY_TYPE_AES256_GCM}, {"soak-gcm-b", tresorv1.KeyType_KEY_TYPE_AES256_GCM}, {"soak-siv", tresorv1.KeyType_KEY_TYPE_AES256_SIV}}
	dataKeyKeys = []string{"soak-gcm-a", "soak-gcm-b"}
	docKeys     = []keySpec{
		{"soak-doc-pii", tresorv1.KeyType_KEY_TYPE_AES256_GCM},
		{"soak-doc-siv", tresorv1.KeyType_KEY_TYPE_AES256_SIV},
		{"soak-doc-index", tresorv1.KeyType_KEY_TYPE_HMAC_SHA256},
		{"soak-doc-accounts", tresorv1.KeyType_KEY_TYPE_FF1_AES256},
	}
	rotatable = []string{"soak-gcm-a", "soak-gcm-b", "soak-siv", "soak-doc-pii", "soak-doc-siv", "soak-doc-index"}
)

type keySpec struct {
	name string
	typ  tresorv1.KeyType
}

// schemaName and schemaYAML are the run's classification schema: only
// reversible protections, so that every protected document must reveal
// to its original (the blind index stays beside its field).
const (
	schemaName = "soak-customer"
	schemaYAML = `name: soak-customer
version: 1
default_tier: public
tiers:
  restricted: {protection: aead, key: soak-doc-pii, sensitivity: restricted}
  searchable: {protection: deterministic, key: soak-doc-siv, sensitivity: confidential}
  indexed: {protection: blind_index, key: soak-doc-pii, index_key: soak-doc-index, sensitivity: restricted}
  account: {protection: tokenize, key: soak-doc-accounts, sensitivity: confidential}
  public: {protection: none}
fields:
  - {path: "$.tax_id", tier: restricted}
  - {path: "$.email", tier: searchable}
  - {path: "$.accounts[*].iban", tier: indexed}
  - {path: "$.accounts[*].number", tier: account}
inspection:
  action: report
`
	blindIndexMember = "iban_bidx"
)

// maxPlaintext bounds the random plaintexts (log-uniform in 1..maxPlaintext).
const maxPlaintext = 16 << 10

// dial connects to addr with mutual TLS and per-RPC credentials, with a
// reconnect backoff capped at 1s so that a restarted replica is found
// again quickly.
func dial(addr string, id *identity, creds credentials.PerRPCCredentials) (*grpc.ClientConn, error) {
	bo := backoff.DefaultConfig
	bo.MaxDelay = time.Second
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(id.clientTLS)),
		grpc.WithPerRPCCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 2 * time.Second}))
	if err != nil {
		return nil, fmt.Errorf("soak: dial %s: %w", addr, err)
	}
	return conn, nil
}

// stubs are one connection's service clients.
type stubs struct {
	conn   *grpc.ClientConn
	keys   tresorv1.KeyServiceClient
	crypto tresorv1.CryptoServiceClient
	fields tresorv1.FieldServiceClient
	admin  tresorv1.AdminServiceClient
}

func newStubs(conn *grpc.ClientConn) stubs {
	return stubs{conn: conn, keys: tresorv1.NewKeyServiceClient(conn), crypto: tresorv1.NewCryptoServiceClient(conn),
		fields: tresorv1.NewFieldServiceClient(conn), admin: tresorv1.NewAdminServiceClient(conn)}
}

// itemKind is what a remembered item is.
type itemKind uint8

const (
	kindCiphertext itemKind = iota // an Encrypt or ReEncrypt ciphertext and its plaintext
	kindDataKey                    // a wrapped data key and the data key
	kindDocument                   // a protected document and its original
)

var kindNames = [...]string{"ciphertext", "data key", "document"}

// item is something a replica handed back that must still decrypt (or
// reveal) at the end to exactly what was sent. It is never printed.
type item struct {
	kind       itemKind
	key        string
	ciphertext string // the ciphertext, the wrapped data key, or the protected document
	plaintext  []byte // the plaintext, the data key, or the original document
	aad        []byte // the associated data, or the document id
}

// reservoir keeps a uniform sample of at most size items of all it was
// offered (Algorithm R).
type reservoir struct {
	mu    sync.Mutex
	size  int
	seen  int64
	items []item
	rng   *rand.Rand
}

func newReservoir(size int, seed uint64) *reservoir {
	return &reservoir{size: size, rng: rand.New(rand.NewPCG(seed, 0x736f616b))}
}

func (r *reservoir) add(it item) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen++
	if len(r.items) < r.size {
		r.items = append(r.items, it)
		return
	}
	if j := r.rng.Int64N(r.seen); j < int64(r.size) {
		r.items[j] = it
	}
}

// pick returns a random item, if there is one.
func (r *reservoir) pick(rng *rand.Rand) (item, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.items) == 0 {
		return item{}, false
	}
	return r.items[rng.IntN(len(r.items))], true
}

func (r *reservoir) snapshot() ([]item, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]item(nil), r.items...), r.seen
}

// Violation is a call that succeeded with a wrong result: a decryption to
// other bytes than were encrypted, a document that revealed to another
// one, a clear value in a protected document. It names no value.
type Violation struct {
	AtS    float64 `json:"at_s"`
	Method string  `json:"method"`
	Key    string  `json:"key"`
	What   string  `json:"what"`
}

// traffic is what the clients share.
type traffic struct {
	t0          time.Time
	limiter     *rate.Limiter // nil: closed loop
	callTimeout time.Duration
	rotateEvery time.Duration
	lastRotate  atomic.Int64 // nanoseconds from t0 of the last RotateKey
	rotations   atomic.Int64
	calls       atomic.Int64 // for progress lines
	failed      atomic.Int64
	// lastOK is, per replica, the start (nanoseconds from t0) of the
	// latest call that succeeded on it: how the fault injector sees a
	// replica answer again.
	lastOK      []atomic.Int64
	ciphertexts *reservoir
	dataKeys    *reservoir
	documents   *reservoir
	unrecorded  unrecorded

	mu         sync.Mutex
	violations []Violation
	nViolation int64
}

func (t *traffic) violate(m Method, key, what string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nViolation++
	if len(t.violations) < 100 {
		t.violations = append(t.violations, Violation{AtS: time.Since(t.t0).Seconds(), Method: m.String(), Key: key, What: what})
	}
}

// errKey is a method and a code, for the first message of each.
type errKey struct {
	method Method
	code   codes.Code
}

// unrecorded counts the calls past the record bound (maxRecorded): not
// their latency, but when they started (to the second) and how they
// ended, so that the error-rate check still counts every call (see
// [attributeUnrecorded]).
type unrecorded struct {
	mu       sync.Mutex
	n        int64
	byMethod [numMethods]int64
	ok       []int64                 // calls that succeeded, by second of their start
	failed   map[unrecordedKey]int64 // calls that failed, by second of their start, method and code
}

type unrecordedKey struct {
	second int
	errKey
}

func (u *unrecorded) add(start time.Duration, m Method, code codes.Code) {
	sec := max(int(start/time.Second), 0)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.n++
	u.byMethod[m]++
	if code == codes.OK {
		for len(u.ok) <= sec {
			u.ok = append(u.ok, 0)
		}
		u.ok[sec]++
		return
	}
	if u.failed == nil {
		u.failed = map[unrecordedKey]int64{}
	}
	u.failed[unrecordedKey{sec, errKey{m, code}}]++
}

// client is one caller: its own connections to every replica, its own
// token, its own random stream and record of calls.
type client struct {
	t        *traffic
	id       int
	rng      *rand.Rand
	replicas []stubs
	calls    []Call
	maxCalls int // calls past it are counted in t.unrecorded
	firstErr map[errKey]string
	docs     int
}

// run runs the mix until ctx ends.
func (c *client) run(ctx context.Context) {
	for ctx.Err() == nil {
		if c.maybeRotate(ctx) {
			continue
		}
		switch n := c.rng.IntN(100); {
		case n < 35:
			c.encrypt(ctx)
		case n < 50:
			c.decryptRemembered(ctx)
		case n < 65:
			c.dataKey(ctx)
		case n < 85:
			c.document(ctx)
		default:
			c.reEncrypt(ctx)
		}
	}
}

// call runs fn against a replica and records it. A call cut short by the
// end of the run is not recorded.
func (c *client) call(ctx context.Context, m Method, replica int, fn func(context.Context, stubs) error) error {
	if c.t.limiter != nil {
		if err := c.t.limiter.Wait(ctx); err != nil {
			return err
		}
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, c.t.callTimeout)
	err := fn(cctx, c.replicas[replica])
	cancel()
	end := time.Now()
	if err != nil && ctx.Err() != nil {
		return err
	}
	code := status.Code(err)
	c.t.calls.Add(1)
	if err != nil {
		c.t.failed.Add(1)
	} else {
		ok := &c.t.lastOK[replica]
		for s := int64(start.Sub(c.t.t0)); ; {
			last := ok.Load()
			if last >= s || ok.CompareAndSwap(last, s) {
				break
			}
		}
	}
	if len(c.calls) < c.maxCalls {
		c.calls = append(c.calls, Call{Start: start.Sub(c.t.t0), End: end.Sub(c.t.t0), Method: m, Code: code, Replica: int8(replica)})
	} else {
		c.t.unrecorded.add(start.Sub(c.t.t0), m, code)
	}
	if err != nil {
		k := errKey{m, code}
		if _, ok := c.firstErr[k]; !ok {
			c.firstErr[k] = firstLine(status.Convert(err).Message())
		}
	}
	return err
}

func (c *client) replica() int { return c.rng.IntN(len(c.replicas)) }

// maybeRotate rotates a random rotatable key when no client has for
// rotateEvery, and reports whether it did.
func (c *client) maybeRotate(ctx context.Context) bool {
	now := int64(time.Since(c.t.t0))
	last := c.t.lastRotate.Load()
	if now-last < int64(c.t.rotateEvery) || !c.t.lastRotate.CompareAndSwap(last, now) {
		return false
	}
	key := rotatable[c.rng.IntN(len(rotatable))]
	err := c.call(ctx, MethodRotateKey, c.replica(), func(ctx context.Context, s stubs) error {
		_, err := s.keys.RotateKey(ctx, &tresorv1.RotateKeyRequest{Key: key})
		return err
	})
	if err == nil {
		c.t.rotations.Add(1)
	}
	return true
}

func (c *client) encrypt(ctx context.Context) {
	k := cryptoKeys[c.rng.IntN(len(cryptoKeys))].name
	pt, aad := c.bytes(1+int(math.Exp(c.rng.Float64()*math.Log(maxPlaintext)))), c.aad()
	var ct string
	if c.call(ctx, MethodEncrypt, c.replica(), func(ctx context.Context, s stubs) error {
		r, err := s.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: k, Plaintext: pt, AssociatedData: aad})
		ct = r.GetCiphertext()
		return err
	}) != nil {
		return
	}
	it := item{kind: kindCiphertext, key: k, ciphertext: ct, plaintext: pt, aad: aad}
	c.t.ciphertexts.add(it)
	c.decrypt(ctx, it)
}

// decrypt decrypts a remembered ciphertext or data key on a random
// replica and checks what comes back.
func (c *client) decrypt(ctx context.Context, it item) {
	var got []byte
	if c.call(ctx, MethodDecrypt, c.replica(), func(ctx context.Context, s stubs) error {
		r, err := s.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: it.ciphertext, AssociatedData: it.aad})
		got = r.GetPlaintext()
		return err
	}) == nil && !bytes.Equal(got, it.plaintext) {
		c.t.violate(MethodDecrypt, it.key, fmt.Sprintf("a %s decrypted to %d other bytes than the %d sent", kindNames[it.kind], len(got), len(it.plaintext)))
	}
}

func (c *client) decryptRemembered(ctx context.Context) {
	r := c.t.ciphertexts
	if c.rng.IntN(3) == 0 {
		r = c.t.dataKeys
	}
	if it, ok := r.pick(c.rng); ok {
		c.decrypt(ctx, it)
		return
	}
	c.encrypt(ctx)
}

func (c *client) dataKey(ctx context.Context) {
	k := dataKeyKeys[c.rng.IntN(len(dataKeyKeys))]
	aad := c.aad()
	var it item
	if c.call(ctx, MethodGenerateDataKey, c.replica(), func(ctx context.Context, s stubs) error {
		r, err := s.crypto.GenerateDataKey(ctx, &tresorv1.GenerateDataKeyRequest{Key: k, AssociatedData: aad})
		it = item{kind: kindDataKey, key: k, ciphertext: r.GetCiphertext(), plaintext: r.GetPlaintext(), aad: aad}
		return err
	}) != nil {
		return
	}
	if len(it.plaintext) != 32 {
		c.t.violate(MethodGenerateDataKey, k, fmt.Sprintf("a data key of %d bytes, want 32", len(it.plaintext)))
	}
	c.t.dataKeys.add(it)
	c.decrypt(ctx, it)
}

func (c *client) reEncrypt(ctx context.Context) {
	it, ok := c.t.ciphertexts.pick(c.rng)
	if !ok {
		c.encrypt(ctx)
		return
	}
	var ct, key string
	if c.call(ctx, MethodReEncrypt, c.replica(), func(ctx context.Context, s stubs) error {
		r, err := s.crypto.ReEncrypt(ctx, &tresorv1.ReEncryptRequest{Ciphertext: it.ciphertext, AssociatedData: it.aad})
		ct, key = r.GetCiphertext(), r.GetKey()
		return err
	}) != nil {
		return
	}
	if key != it.key {
		c.t.violate(MethodReEncrypt, it.key, "re-encrypted under another key than the source's")
	}
	n := item{kind: kindCiphertext, key: it.key, ciphertext: ct, plaintext: it.plaintext, aad: it.aad}
	c.t.ciphertexts.add(n)
	c.decrypt(ctx, n)
}

func (c *client) document(ctx context.Context) {
	c.docs++
	id := fmt.Sprintf("doc-%d-%d", c.id, c.docs)
	doc, classified := c.genDocument(id)
	var protected string
	if c.call(ctx, MethodProtectDocument, c.replica(), func(ctx context.Context, s stubs) error {
		r, err := s.fields.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: schemaName, Document: doc, DocumentId: id})
		protected = r.GetDocument()
		return err
	}) != nil {
		return
	}
	if clear := inClear(protected, classified); len(clear) > 0 {
		c.t.violate(MethodProtectDocument, schemaName, fmt.Sprintf("a protected document holds %d of its %d classified values in clear: %s",
			len(clear), len(classified), strings.Join(clear, ", ")))
	}
	it := item{kind: kindDocument, key: schemaName, ciphertext: protected, plaintext: []byte(doc), aad: []byte(id)}
	c.t.documents.add(it)
	c.reveal(ctx, it)
}

// reveal reveals a remembered document on a random replica and checks it.
func (c *client) reveal(ctx context.Context, it item) {
	var got string
	if c.call(ctx, MethodRevealDocument, c.replica(), func(ctx context.Context, s stubs) error {
		r, err := s.fields.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: schemaName, Document: it.ciphertext, DocumentId: string(it.aad)})
		got = r.GetDocument()
		return err
	}) == nil {
		if err := sameDocument(got, string(it.plaintext)); err != nil {
			c.t.violate(MethodRevealDocument, schemaName, err.Error())
		}
	}
}

// sameDocument reports whether a revealed document equals the original,
// but for the blind indexes beside the IBANs. Its error names no value.
func sameDocument(revealed, original string) error {
	var got, want any
	if err := decodeJSON(revealed, &got); err != nil {
		return fmt.Errorf("the revealed document is not JSON: %w", err)
	}
	if err := decodeJSON(original, &want); err != nil {
		return fmt.Errorf("the original document is not JSON: %w", err)
	}
	if m, ok := got.(map[string]any); ok {
		accounts, _ := m["accounts"].([]any)
		for _, a := range accounts {
			if am, ok := a.(map[string]any); ok {
				if _, ok := am[blindIndexMember]; !ok {
					return fmt.Errorf("an account revealed without its blind index %s", blindIndexMember)
				}
				delete(am, blindIndexMember)
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		return fmt.Errorf("a document revealed to another document (%d bytes, the original %d)", len(revealed), len(original))
	}
	return nil
}

func decodeJSON(s string, v any) error {
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	return d.Decode(v)
}

// bytes returns n random bytes.
func (c *client) bytes(n int) []byte {
	n = min(max(n, 1), maxPlaintext)
	b := make([]byte, n+7)
	for i := 0; i < n; i += 8 {
		v := c.rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b[:n:n]
}

// aad returns random associated data: none a quarter of the time, else
// a customer reference or up to 64 random bytes.
func (c *client) aad() []byte {
	switch c.rng.IntN(4) {
	case 0:
		return nil
	case 1, 2:
		return fmt.Appendf(nil, "customer=%d", c.rng.IntN(1_000_000))
	default:
		return c.bytes(1 + c.rng.IntN(64))
	}
}

// classifiedValue is a value of a document the schema classifies (not
// public): it must not appear in clear once the document is protected.
type classifiedValue struct {
	path  string // where it is, e.g. $.accounts[1].iban: printable
	value string // never printed
}

// inClear returns the paths of the classified values that appear in clear
// anywhere in a protected document. It names no value.
func inClear(protected string, classified []classifiedValue) []string {
	var paths []string
	for _, v := range classified {
		if strings.Contains(protected, v.value) {
			paths = append(paths, v.path)
		}
	}
	return paths
}

// genDocument returns a random customer document with id, and its
// classified values: the tax id, the email, and each account's IBAN and
// number.
func (c *client) genDocument(id string) (doc string, classified []classifiedValue) {
	digits := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte('0' + c.rng.IntN(10))
		}
		return string(b)
	}
	letters := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte('a' + c.rng.IntN(26))
		}
		return string(b)
	}
	taxID := digits(3) + "-" + digits(2) + "-" + digits(4)
	type account struct {
		IBAN   string `json:"iban"`
		Number string `json:"number"`
	}
	accounts := make([]account, c.rng.IntN(4))
	for i := range accounts {
		accounts[i] = account{IBAN: "DE" + digits(20), Number: digits(10)}
	}
	email := letters(6) + "@" + letters(5) + ".example"
	b, _ := json.Marshal(struct {
		ID       string    `json:"id"`
		Name     string    `json:"name"`
		TaxID    string    `json:"tax_id"`
		Email    string    `json:"email"`
		Accounts []account `json:"accounts"`
		Balance  float64   `json:"balance"`
	}{id, letters(3 + c.rng.IntN(10)), taxID, email, accounts, float64(c.rng.IntN(10_000_000)) / 100})
	classified = []classifiedValue{{"$.tax_id", taxID}, {"$.email", email}}
	for i, a := range accounts {
		classified = append(classified, classifiedValue{fmt.Sprintf("$.accounts[%d].iban", i), a.IBAN}, classifiedValue{fmt.Sprintf("$.accounts[%d].number", i), a.Number})
	}
	return string(b), classified
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
