package fields

import (
	"bytes"
	"context"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/secret"
)

// Sealer encrypts under the primary version of a named key; the key's type
// decides randomized (AES-256-GCM) or deterministic (AES-256-SIV).
type Sealer interface {
	Encrypt(ctx context.Context, key string, plaintext, aad []byte) ([]byte, envelope.KeyRef, error)
}

// Opener decrypts a ciphertext that names its own key.
type Opener interface {
	Decrypt(ctx context.Context, ciphertext, aad []byte) (secret.Bytes, envelope.KeyRef, error)
}

// MACer computes a full HMAC-SHA256 under the primary version of a named key.
type MACer interface {
	MAC(ctx context.Context, key string, data []byte) ([]byte, envelope.KeyRef, error)
}

// VersionMACer computes HMAC-SHA256 under one version of a named key; it is
// needed only by Protector.BlindIndexAt.
type VersionMACer interface {
	MACVersion(ctx context.Context, key string, version uint32, data []byte) ([]byte, error)
}

// Tokenizer returns the AES block cipher of a tokenization (FF1) key.
type Tokenizer interface {
	TokenizationCipher(ctx context.Context, key string) (cipher.Block, envelope.KeyRef, error)
}

// Keys is what protection needs from the keyring; *envelope.Keyring
// satisfies it.
type Keys interface {
	Sealer
	Opener
	MACer
	Tokenizer
}

// BatchSealer is optionally implemented by Keys (*envelope.Keyring does):
// Protect then loads each sealing key once per document and seals every
// value of the document through it, with no per-value key lookup.
type BatchSealer interface {
	Sealer(ctx context.Context, key string) (*envelope.KeySealer, error)
}

// BatchOpener is optionally implemented by Keys (*envelope.Keyring does):
// Reveal then opens every value of a document into one buffer.
type BatchOpener interface {
	Opener() *envelope.KeyOpener
}

// ReservedAADPrefix starts the associated data of every protected field.
// Callers of the plain CryptoService must not use it (the server refuses
// such associated data), so that a field's ciphertext cannot be opened, or
// forged, outside field protection and its per-field policy.
const ReservedAADPrefix = "tresor-fields-"

// MaxTokenDigits bounds the digits of a tokenized value: FF1's cost grows
// with the square of its length, so a long one would let a caller spend
// the server's CPU (account and card numbers have at most 34).
const MaxTokenDigits = 64

// Defaults for Options.
const (
	DefaultMaxDocumentBytes = 1 << 20
	DefaultMaxDepth         = 32
)

// Options limits the documents a Protector accepts. Zero values take the
// defaults.
type Options struct {
	MaxDocumentBytes int // refused before parsing; default 1 MiB
	MaxDepth         int // nesting of objects and arrays; default 32
}

// Protector protects and reveals documents. It is safe for concurrent use.
type Protector struct {
	keys   Keys
	opts   Options
	sealer BatchSealer // keys, if it implements BatchSealer
	opener BatchOpener // keys, if it implements BatchOpener
	runs   sync.Pool   // of *run: scratch reused across calls
}

// New returns a Protector over keys.
func New(keys Keys, opts Options) (*Protector, error) {
	if keys == nil {
		return nil, errors.New("fields: New: nil keys")
	}
	if opts.MaxDocumentBytes < 0 || opts.MaxDepth < 0 {
		return nil, errors.New("fields: New: negative limit")
	}
	if opts.MaxDocumentBytes == 0 {
		opts.MaxDocumentBytes = DefaultMaxDocumentBytes
	}
	if opts.MaxDepth == 0 {
		opts.MaxDepth = DefaultMaxDepth
	}
	p := &Protector{keys: keys, opts: opts}
	p.sealer, _ = keys.(BatchSealer)
	p.opener, _ = keys.(BatchOpener)
	p.runs.New = func() any { return new(run) }
	return p, nil
}

// Outcomes in FieldResult.
const (
	OutcomeProtected    = "protected"    // sealed (aead, deterministic, blind_index)
	OutcomeTokenized    = "tokenized"    // FF1 token
	OutcomeMasked       = "masked"       // masked (at protect, or a masked reveal)
	OutcomeRedacted     = "redacted"     // replaced with "[REDACTED]"
	OutcomeClear        = "clear"        // revealed in clear
	OutcomeWithheld     = "withheld"     // left protected by the decide function
	OutcomeIrreversible = "irreversible" // mask or redact: nothing to reveal
)

// FieldResult says what happened to one field. It never holds a value.
type FieldResult struct {
	Path       string // concrete, e.g. $.accounts[2].iban
	Pattern    string // the schema pattern, e.g. $.accounts[*].iban
	Tier       string
	Protection Protection
	Outcome    string
	Key        string // the key used, if any
	Version    uint32 // its version, if known
}

// Finding is sensitive data found by inspection in a public field.
type Finding struct {
	Path     string
	Detector string
	Action   InspectionAction
}

// Result lists what a call did to each field and what inspection found.
type Result struct {
	Fields   []FieldResult
	Findings []Finding
}

// RevealMode is what a caller may see of one field. The zero value is invalid.
type RevealMode int

const (
	revealUnspecified RevealMode = iota
	// RevealClear gives the original value.
	RevealClear
	// RevealMasked gives the value masked by the tier's reveal mask (every
	// character hidden if the tier has none).
	RevealMasked
	// RevealWithheld leaves the field protected.
	RevealWithheld
)

// FieldRef names a protected field for a reveal decision.
type FieldRef struct {
	Path        string
	Pattern     string
	Tier        string
	Sensitivity Sensitivity
	Key         string
}

// maskedNonString stands for a masked value that was not a string or number.
const maskedNonString = "[MASKED]"

// run is one Protect or Reveal call. Runs are pooled: everything but res
// is scratch, reset (and wiped where it held values) by release.
type run struct {
	p      *Protector
	ctx    context.Context
	s      *Schema
	docID  string
	reveal bool
	decide func(FieldRef) (RevealMode, error)
	res    Result
	path   []byte // concrete path of the current value
	pat    []byte // its pattern: array indexes as [*]
	buf    []byte // scratch for associated data, tweaks, index input
	// arena holds the raw bytes of every value written (ciphertexts,
	// tokens, indexes, revealed values); nodes alias it. It may grow: a
	// slice taken earlier keeps the old array.
	arena  []byte
	ct     []byte // scratch: one binary ciphertext
	digits []byte // scratch: the digits of a tokenized value, and its token
	tok    []byte // scratch: a token or a detokenized value
	pq     []byte // scratch: FF1's PRF input
	sibs   []sibling
	// per-call key handles: one keyring load per key per document
	sealers []keySealer
	ff1s    []tokenKey
	opener  *envelope.KeyOpener // kept across calls: it holds no key
	parser  parser
	root    node
	// fresh blind-index siblings, which inspection and the default tier skip
	reject bool
}

// sibling is a blind index to add after member after of an object.
type sibling struct {
	after int
	name  string
	val   node
}

type keySealer struct {
	name string
	s    *envelope.KeySealer
}

type tokenKey struct {
	name string
	f    ff1
	ref  envelope.KeyRef
}

// redactedJSON is the raw value of a redacted field; nodes only read it.
var redactedJSON = []byte(`"` + secret.Redacted + `"`)

func (p *Protector) start(ctx context.Context, s *Schema, doc []byte, docID string) (*run, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: nil schema", ErrInvalidSchema)
	}
	// The size is checked before anything is parsed.
	if len(doc) > p.opts.MaxDocumentBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrDocumentTooLarge, len(doc), p.opts.MaxDocumentBytes)
	}
	r := p.runs.Get().(*run)
	r.p, r.ctx, r.s, r.docID = p, ctx, s, docID
	r.path = append(r.path[:0], '$')
	r.pat = append(r.pat[:0], '$')
	r.res = Result{Fields: make([]FieldResult, 0, len(s.fields))}
	if err := r.parser.parseDocument(doc, p.opts.MaxDepth, &r.root); err != nil {
		p.release(r)
		return nil, err
	}
	return r, nil
}

// release wipes r's scratch and returns it to the pool.
func (p *Protector) release(r *run) {
	clear(r.arena)
	clear(r.buf)
	clear(r.digits)
	clear(r.tok)
	clear(r.pq)
	clear(r.sibs)
	clear(r.sealers)
	clear(r.ff1s)
	r.parser.reset()
	*r = run{
		path: r.path[:0], pat: r.pat[:0], buf: r.buf[:0], arena: r.arena[:0], ct: r.ct[:0],
		digits: r.digits[:0], tok: r.tok[:0], pq: r.pq[:0], sibs: r.sibs[:0],
		sealers: r.sealers[:0], ff1s: r.ff1s[:0], opener: r.opener, parser: r.parser,
	}
	p.runs.Put(r)
}

// Protect protects doc, a JSON object, by schema s; docID (may be empty) is
// bound to every randomized ciphertext, so a field copied into another
// document does not reveal. It returns the protected document (compact JSON,
// member order kept) and what was done. With inspection action reject, a
// finding fails the call with ErrRejected naming paths and detectors.
func (p *Protector) Protect(ctx context.Context, s *Schema, doc []byte, docID string) ([]byte, Result, error) {
	r, err := p.start(ctx, s, doc, docID)
	if err != nil {
		return nil, Result{}, err
	}
	defer p.release(r)
	r.arena = slices.Grow(r.arena[:0], 2*len(doc)+1024)
	if err := r.walk(&r.root, s.root); err != nil {
		return nil, Result{}, err
	}
	if r.reject {
		var b strings.Builder
		for i, f := range r.res.Findings {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(f.Path + " (" + f.Detector + ")")
		}
		return nil, Result{Findings: r.res.Findings}, fmt.Errorf("%w: sensitive data in public fields: %s", ErrRejected, b.String())
	}
	return encode(make([]byte, 0, len(doc)+len(r.arena)+64), &r.root), r.res, nil
}

// Reveal reveals doc, protected by Protect under schema s and docID. decide
// is called once for each protected field and says what the caller may see
// of it; an error from decide ends the call. Blind-index members and fields
// left public are returned as they are. A field that cannot be revealed
// (tampered, moved to another path or document, or a key error) gives
// ErrReveal naming only its path.
func (p *Protector) Reveal(ctx context.Context, s *Schema, doc []byte, docID string, decide func(FieldRef) (RevealMode, error)) ([]byte, Result, error) {
	if decide == nil {
		return nil, Result{}, errors.New("fields: Reveal: nil decide")
	}
	r, err := p.start(ctx, s, doc, docID)
	if err != nil {
		return nil, Result{}, err
	}
	defer p.release(r)
	// Revealed values are no longer than their ciphertexts: with this much
	// room the arena never moves, so no copy of a value is left behind.
	r.arena = slices.Grow(r.arena[:0], len(doc)+64)
	r.reveal, r.decide = true, decide
	if err := r.walk(&r.root, s.root); err != nil {
		return nil, Result{}, err
	}
	return encode(make([]byte, 0, len(doc)+64), &r.root), r.res, nil
}

func (r *run) walk(n *node, pn *pnode) error {
	switch n.kind {
	case kindObject:
		return r.walkObject(n, pn)
	case kindArray:
		var child *pnode
		if pn != nil {
			child = pn.wildcard
		}
		mark, pmark := len(r.path), len(r.pat)
		r.pat = append(r.pat, "[*]"...)
		for i := range n.elems {
			r.path = append(r.path, '[')
			r.path = strconv.AppendInt(r.path, int64(i), 10)
			r.path = append(r.path, ']')
			var err error
			if child != nil && child.field != nil {
				_, _, err = r.field(&n.elems[i], child.field.tier, child.field)
			} else {
				err = r.walk(&n.elems[i], child)
			}
			if err != nil {
				return err
			}
			r.path = r.path[:mark]
		}
		r.pat = r.pat[:pmark]
		return nil
	default:
		return r.unlisted(n)
	}
}

func (r *run) walkObject(n *node, pn *pnode) error {
	base := len(r.sibs)
	// Members named like a blind index: on reveal they are the indexes
	// Protect wrote, and stay as they are. On protect they are the
	// caller's, and stay unprotected only if a fresh index replaces them;
	// a value under such a name with no field beside it is walked like
	// any other (the default tier, inspection), after the loop.
	deferred := -1
	for i := range n.members {
		m := &n.members[i]
		mark, pmark := len(r.path), len(r.pat)
		r.path = appendName(r.path, m.key)
		r.pat = appendName(r.pat, m.key)
		var child *pnode
		if pn != nil && pn.children != nil {
			child = pn.children[string(m.key)]
		}
		var err error
		if child != nil && child.field != nil {
			var sib node
			var ok bool
			sib, ok, err = r.field(&m.val, child.field.tier, child.field)
			if ok {
				r.sibs = append(r.sibs, sibling{i, child.field.sibling, sib})
			}
		} else if !r.isSibling(n, i, pn) {
			err = r.walk(&m.val, child)
		} else if !r.reveal && deferred < 0 {
			deferred = i
		}
		if err != nil {
			return err
		}
		r.path, r.pat = r.path[:mark], r.pat[:pmark]
	}
	if deferred >= 0 {
		if err := r.walkUnreplaced(n, pn, deferred, r.sibs[base:]); err != nil {
			return err
		}
	}
	sibs := r.sibs[base:]
	if len(sibs) == 0 {
		return nil
	}
	// A blind index replaces a member of its name, else goes right after its
	// field. The new member list goes to the parser's arena.
	a := &r.parser.marena
	at := len(*a)
	next := 0
	for i := range n.members {
		replaced := false
		for _, sb := range sibs {
			if string(n.members[i].key) == sb.name {
				replaced = true
			}
		}
		if !replaced {
			*a = append(*a, n.members[i])
		}
		for next < len(sibs) && sibs[next].after == i {
			sb := sibs[next]
			k := len(r.arena)
			r.arena = appendString(r.arena, sb.name)
			rawKey := r.arena[k:len(r.arena):len(r.arena)]
			key, _ := decodeKey(rawKey)
			*a = append(*a, member{key: key, rawKey: rawKey, val: sb.val})
			next++
		}
	}
	n.members = (*a)[at:len(*a):len(*a)]
	clear(sibs)
	r.sibs = r.sibs[:base]
	return nil
}

// walkUnreplaced walks, from member first on, the members of n named like
// a blind index that no fresh index in sibs replaces.
func (r *run) walkUnreplaced(n *node, pn *pnode, first int, sibs []sibling) error {
	for i := first; i < len(n.members); i++ {
		m := &n.members[i]
		if !r.isSibling(n, i, pn) || slices.ContainsFunc(sibs, func(sb sibling) bool { return sb.name == string(m.key) }) {
			continue
		}
		mark, pmark := len(r.path), len(r.pat)
		r.path = appendName(r.path, m.key)
		r.pat = appendName(r.pat, m.key)
		err := r.walk(&m.val, nil)
		r.path, r.pat = r.path[:mark], r.pat[:pmark]
		if err != nil {
			return err
		}
	}
	return nil
}

// isSibling reports whether member i of n is named like the blind index of
// a listed blind_index field of the same object: it is neither inspected
// nor given the default tier.
func (r *run) isSibling(n *node, i int, pn *pnode) bool {
	if pn == nil || pn.siblings == nil {
		return false
	}
	_, ok := pn.siblings[string(n.members[i].key)]
	return ok
}

// unlisted handles a scalar no listed path covers: the default tier applies,
// and a public one is inspected.
func (r *run) unlisted(n *node) error {
	if n.kind == kindNull {
		return nil
	}
	def := r.s.tiers[r.s.defaultTier]
	if def.Protection != ProtectionNone {
		if r.reveal && !isCiphertextString(n) {
			// Only sealed values are revealed; anything else stays.
			return r.revealInspected(n)
		}
		_, _, err := r.field(n, def, nil)
		return err
	}
	if r.reveal {
		return r.revealInspected(n)
	}
	return r.inspect(n)
}

// revealInspected reveals a public value that inspection sealed.
func (r *run) revealInspected(n *node) error {
	in := r.s.inspection
	if in == nil || in.Action != InspectProtect || !isCiphertextString(n) {
		return nil
	}
	t := r.s.tiers[in.Tier]
	if t.Protection != ProtectionAEAD && t.Protection != ProtectionDeterministic {
		return nil
	}
	_, _, err := r.field(n, t, nil)
	return err
}

func isCiphertextString(n *node) bool {
	return n.kind == kindString && len(n.raw) > len(envelope.StringPrefix)+1 && string(n.raw[1:1+len(envelope.StringPrefix)]) == envelope.StringPrefix
}

// inspectTree inspects every scalar under n (a listed public field).
func (r *run) inspectTree(n *node) error { return r.walkScalars(n, r.inspect) }

// walkScalars calls fn with every scalar under n, r.path and r.pat naming
// it (array indexes as [i] in the path, [*] in the pattern).
func (r *run) walkScalars(n *node, fn func(*node) error) error {
	switch n.kind {
	case kindObject:
		for i := range n.members {
			mark, pmark := len(r.path), len(r.pat)
			r.path = appendName(r.path, n.members[i].key)
			r.pat = appendName(r.pat, n.members[i].key)
			if err := r.walkScalars(&n.members[i].val, fn); err != nil {
				return err
			}
			r.path, r.pat = r.path[:mark], r.pat[:pmark]
		}
	case kindArray:
		mark, pmark := len(r.path), len(r.pat)
		r.pat = append(r.pat, "[*]"...)
		for i := range n.elems {
			r.path = strconv.AppendInt(append(r.path, '['), int64(i), 10)
			r.path = append(r.path, ']')
			if err := r.walkScalars(&n.elems[i], fn); err != nil {
				return err
			}
			r.path = r.path[:mark]
		}
		r.pat = r.pat[:pmark]
	default:
		return fn(n)
	}
	return nil
}

// inspect runs the schema's detectors on a public scalar.
func (r *run) inspect(n *node) error {
	in := r.s.inspection
	if in == nil {
		return nil
	}
	var found detectorSet
	switch n.kind {
	case kindString:
		s, ok := decodeString(n.raw)
		if !ok {
			return nil
		}
		found = detect(s, r.s.detectors)
	case kindNumber:
		// A card number sent as a JSON number.
		if r.s.detectors&detCard != 0 && isCard(string(n.raw)) {
			found = detCard
		}
	}
	if found == 0 {
		return nil
	}
	path := string(r.path)
	for i, name := range allDetectors {
		if found&(1<<i) != 0 {
			r.res.Findings = append(r.res.Findings, Finding{Path: path, Detector: name, Action: in.Action})
		}
	}
	switch in.Action {
	case InspectReject:
		r.reject = true
	case InspectProtect:
		_, _, err := r.field(n, r.s.tiers[in.Tier], nil)
		return err
	}
	return nil
}

// names returns the concrete path and the pattern of the current value as
// strings, sharing the schema's pattern string when they are equal (no
// array index on the way): no allocation for most fields.
func (r *run) names(spec *fieldSpec) (path, pattern string) {
	if spec != nil && spec.pattern == string(r.pat) {
		pattern = spec.pattern
	} else {
		pattern = string(r.pat)
	}
	if string(r.path) == pattern {
		return pattern, pattern
	}
	return string(r.path), pattern
}

// rawString appends v as a JSON string that needs no escaping (digits,
// ' ', '-', '.') to the arena and returns it.
func (r *run) rawString(v []byte) []byte {
	k := len(r.arena)
	r.arena = append(r.arena, '"')
	r.arena = append(r.arena, v...)
	r.arena = append(r.arena, '"')
	return r.arena[k:len(r.arena):len(r.arena)]
}

// field protects or reveals one value with tier t. spec is the listed field
// (nil for an unlisted value); the pattern is r.pat. It returns a blind
// index sibling to add, if any.
func (r *run) field(n *node, t *Tier, spec *fieldSpec) (node, bool, error) {
	if n.kind == kindNull {
		return node{}, false, nil
	}
	if r.reveal {
		return node{}, false, r.revealField(n, t, spec)
	}
	if t.Protection == ProtectionNone {
		return node{}, false, r.inspectTree(n)
	}
	var fr FieldResult
	fr.Path, fr.Pattern = r.names(spec)
	fr.Tier, fr.Protection = t.Name, t.Protection
	var sib node
	var hasSib bool
	switch t.Protection {
	case ProtectionAEAD, ProtectionDeterministic, ProtectionBlindIndex:
		var pt []byte
		if n.kind == kindObject || n.kind == kindArray {
			pt = encode(nil, n)
		} else {
			pt = n.raw
		}
		aad := r.aad(t.Protection != ProtectionDeterministic)
		k := len(r.arena)
		ref, err := r.seal(t.Key, pt, aad)
		if err != nil {
			return node{}, false, r.keyErr(fr.Path, t, err)
		}
		ct := r.arena[k:len(r.arena):len(r.arena)]
		if t.Protection == ProtectionBlindIndex {
			idx, err := r.blindIndex(t, n)
			if err != nil {
				return node{}, false, err
			}
			sib, hasSib = node{kind: kindString, raw: idx}, true
		}
		*n = node{kind: kindString, raw: ct}
		fr.Outcome, fr.Key, fr.Version = OutcomeProtected, ref.Name, ref.Version
	case ProtectionTokenize:
		out, ref, err := r.tokenize(n, t, true)
		if err != nil {
			return node{}, false, err
		}
		*n = node{kind: kindString, raw: r.rawString(out)}
		clear(out)
		fr.Outcome, fr.Key, fr.Version = OutcomeTokenized, ref.Name, ref.Version
	case ProtectionMask:
		var s string
		switch n.kind {
		case kindString:
			s, _ = decodeString(n.raw)
		case kindNumber:
			s = string(n.raw)
		default:
			return node{}, false, fmt.Errorf("%w: %s: mask needs a string or a number", ErrWrongType, fr.Path)
		}
		k := len(r.arena)
		r.arena = appendString(r.arena, applyMask(s, t.Mask))
		*n = node{kind: kindString, raw: r.arena[k:len(r.arena):len(r.arena)]}
		fr.Outcome = OutcomeMasked
	case ProtectionRedact:
		*n = node{kind: kindString, raw: redactedJSON}
		fr.Outcome = OutcomeRedacted
	}
	r.res.Fields = append(r.res.Fields, fr)
	return sib, hasSib, nil
}

// seal seals pt under the named key, through the document's sealer for that
// key when the keys batch, and appends the ciphertext's JSON string to the
// arena.
func (r *run) seal(key string, pt, aad []byte) (envelope.KeyRef, error) {
	var ref envelope.KeyRef
	var err error
	if r.p.sealer != nil {
		var ks *envelope.KeySealer
		if ks, err = r.keySealer(key); err != nil {
			return envelope.KeyRef{}, err
		}
		r.ct, ref, err = ks.AppendEncrypt(r.ctx, r.ct[:0], pt, aad)
	} else {
		r.ct, ref, err = r.p.keys.Encrypt(r.ctx, key, pt, aad)
	}
	if err != nil {
		return envelope.KeyRef{}, err
	}
	r.arena = appendCiphertext(r.arena, r.ct)
	return ref, nil
}

// keySealer returns the document's sealer for key, loading it on first use.
func (r *run) keySealer(key string) (*envelope.KeySealer, error) {
	for i := range r.sealers {
		if r.sealers[i].name == key {
			return r.sealers[i].s, nil
		}
	}
	ks, err := r.p.sealer.Sealer(r.ctx, key)
	if err != nil {
		return nil, err
	}
	r.sealers = append(r.sealers, keySealer{key, ks})
	return ks, nil
}

// appendCiphertext appends ct in string form (envelope.FormatCiphertext) as
// a JSON string: it needs no escaping.
func appendCiphertext(dst, ct []byte) []byte {
	dst = append(dst, '"')
	dst = append(dst, envelope.StringPrefix...)
	dst = base64.RawURLEncoding.AppendEncode(dst, ct)
	return append(dst, '"')
}

// appendDecodeCiphertext is envelope.DecodeCiphertext appending to dst: the
// same strict, canonical decoding.
func appendDecodeCiphertext(dst, s []byte) ([]byte, bool) {
	rest, ok := bytes.CutPrefix(s, []byte(envelope.StringPrefix))
	if !ok {
		return dst, false
	}
	k := len(dst)
	out, err := base64.RawURLEncoding.Strict().AppendDecode(dst, rest)
	if err != nil || base64.RawURLEncoding.EncodedLen(len(out)-k) != len(rest) {
		return dst, false
	}
	return out, true
}

func (r *run) keyErr(path string, t *Tier, err error) error {
	if ce := r.ctx.Err(); ce != nil {
		return ce
	}
	return fmt.Errorf("fields: %s: tier %q: %w", path, t.Name, err)
}

// appendBinding appends the domain, the schema name and the pattern, each
// length-prefixed.
func appendBinding[T string | []byte](dst []byte, domain, schema string, pattern T) []byte {
	dst = append(dst, domain...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(schema)))
	dst = append(dst, schema...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(pattern)))
	return append(dst, pattern...)
}

// aad returns the associated data of a sealed field: the schema name, the
// path pattern and (randomized protections) the document id.
func (r *run) aad(withDoc bool) []byte {
	r.buf = appendBinding(r.buf[:0], ReservedAADPrefix+"v1\x00", r.s.name, r.pat)
	if withDoc {
		r.buf = append(r.buf, 1)
		r.buf = binary.BigEndian.AppendUint32(r.buf, uint32(len(r.docID)))
		r.buf = append(r.buf, r.docID...)
	} else {
		r.buf = append(r.buf, 0)
	}
	return r.buf
}

// blindIndexInput is the MAC input: domain, schema, pattern, then the
// normalized value: a string lower-cased without white space, any other
// value as its compact JSON text, each with its own type byte.
func blindIndexInput[T string | []byte](dst []byte, schema string, pattern T, n *node) []byte {
	dst = appendBinding(dst, "tresor-bidx-v1\x00", schema, pattern)
	if n.kind == kindString {
		s, _ := decodeString(n.raw)
		return appendNormalized(append(dst, 's'), s)
	}
	return encode(append(dst, 'j'), n)
}

func appendNormalized(dst []byte, s string) []byte {
	for _, c := range s {
		if unicode.IsSpace(c) {
			continue
		}
		dst = append(dst, string(unicode.ToLower(c))...)
	}
	return dst
}

func formatIndex(mac []byte, size int, version uint32) []byte {
	return appendIndex(make([]byte, 0, 16+base64.RawURLEncoding.EncodedLen(size)), mac, size, version)
}

// appendIndex appends a blind index as a JSON string.
func appendIndex(dst, mac []byte, size int, version uint32) []byte {
	dst = append(dst, '"')
	dst = strconv.AppendUint(dst, uint64(version), 10)
	dst = append(dst, '.')
	dst = base64.RawURLEncoding.AppendEncode(dst, mac[:size])
	return append(dst, '"')
}

func (r *run) blindIndex(t *Tier, n *node) ([]byte, error) {
	r.buf = blindIndexInput(r.buf[:0], r.s.name, r.pat, n)
	mac, ref, err := r.p.keys.MAC(r.ctx, t.IndexKey, r.buf)
	clear(r.buf)
	if err != nil {
		return nil, r.keyErr(string(r.path), t, err)
	}
	if len(mac) < t.IndexBytes {
		return nil, fmt.Errorf("fields: %s: tier %q: MAC of %d bytes, want at least %d", r.path, t.Name, len(mac), t.IndexBytes)
	}
	k := len(r.arena)
	r.arena = appendIndex(r.arena, mac, t.IndexBytes, ref.Version)
	return r.arena[k:len(r.arena):len(r.arena)], nil
}

// BlindIndex returns the blind index, under the index key's primary version,
// of a string value at pattern path of schema s, as Protect writes it
// ("<version>.<base64url>"), for an equality lookup.
func (p *Protector) BlindIndex(ctx context.Context, s *Schema, path, value string) (string, error) {
	t, pattern, err := blindIndexTier(s, path)
	if err != nil {
		return "", err
	}
	in := blindIndexInput(nil, s.name, pattern, ptrTo(stringNode(value)))
	mac, ref, err := p.keys.MAC(ctx, t.IndexKey, in)
	if err != nil {
		return "", fmt.Errorf("fields: blind index %s: %w", pattern, err)
	}
	idx := formatIndex(mac, t.IndexBytes, ref.Version)
	return string(idx[1 : len(idx)-1]), nil
}

// BlindIndexAt is BlindIndex under one version of the index key, to look up
// documents indexed before a rotation. p's keys must implement VersionMACer.
func (p *Protector) BlindIndexAt(ctx context.Context, s *Schema, path, value string, version uint32) (string, error) {
	vm, ok := p.keys.(VersionMACer)
	if !ok {
		return "", errors.New("fields: BlindIndexAt: the keys cannot MAC under a given version")
	}
	t, pattern, err := blindIndexTier(s, path)
	if err != nil {
		return "", err
	}
	in := blindIndexInput(nil, s.name, pattern, ptrTo(stringNode(value)))
	mac, err := vm.MACVersion(ctx, t.IndexKey, version, in)
	if err != nil {
		return "", fmt.Errorf("fields: blind index %s: %w", pattern, err)
	}
	if len(mac) < t.IndexBytes {
		return "", fmt.Errorf("fields: blind index %s: MAC too short", pattern)
	}
	idx := formatIndex(mac, t.IndexBytes, version)
	return string(idx[1 : len(idx)-1]), nil
}

func ptrTo[T any](v T) *T { return &v }

func blindIndexTier(s *Schema, path string) (*Tier, string, error) {
	segs, err := parsePath(path)
	if err != nil {
		return nil, "", fmt.Errorf("%w: path %q", ErrInvalidSchema, path)
	}
	pattern := canonicalPath(segs)
	n := s.root
	for _, sg := range segs {
		if n == nil {
			break
		}
		if sg.wildcard {
			n = n.wildcard
		} else {
			n = n.children[sg.name]
		}
	}
	if n == nil || n.field == nil || n.field.tier.Protection != ProtectionBlindIndex {
		return nil, "", fmt.Errorf("%w: %s is not a blind_index field of schema %q", ErrInvalidSchema, pattern, s.name)
	}
	return n.field.tier, pattern, nil
}

// revealError is the error of a field that did not open: the one opaque
// ErrReveal, naming the path only; but the call's own end, and a key that
// could not be reached (the root key, the key store, a root key this
// replica has not followed yet), keep their errors: they say nothing about
// the ciphertext, and the caller should retry rather than suspect
// tampering.
func (r *run) revealError(path string, err error) error {
	if ce := r.ctx.Err(); ce != nil {
		return ce
	}
	if errors.Is(err, kms.ErrUnavailable) || errors.Is(err, envelope.ErrStoreUnavailable) || errors.Is(err, envelope.ErrRootKeyNotHeld) {
		return fmt.Errorf("fields: %s: %w", path, err)
	}
	return fmt.Errorf("%w: %s", ErrReveal, path)
}

// tokenize enciphers (or deciphers) the digits of a string value, keeping
// every other character, and returns the result in r.tok (no quotes), for
// the caller to copy and wipe.
func (r *run) tokenize(n *node, t *Tier, enc bool) ([]byte, envelope.KeyRef, error) {
	if n.kind != kindString {
		return nil, envelope.KeyRef{}, fmt.Errorf("%w: %s: tokenize needs a string of digits", ErrWrongType, r.path)
	}
	s := n.raw[1 : len(n.raw)-1]
	if bytes.IndexByte(s, '\\') >= 0 {
		d, _ := decodeString(n.raw)
		s = []byte(d)
	}
	digits := r.digits[:0]
	for _, c := range s {
		switch {
		case isDigit(c):
			digits = append(digits, c-'0')
		case c == ' ' || c == '-' || c == '.':
		default:
			return nil, envelope.KeyRef{}, fmt.Errorf("%w: %s: tokenize needs digits (spaces, '-' and '.' allowed)", ErrWrongType, r.path)
		}
	}
	r.digits = digits
	defer clear(digits)
	if len(digits) < 6 || len(digits) > MaxTokenDigits {
		return nil, envelope.KeyRef{}, fmt.Errorf("%w: %s: tokenize needs 6 to %d digits", ErrWrongType, r.path, MaxTokenDigits)
	}
	tk, err := r.tokenKey(t)
	if err != nil {
		return nil, envelope.KeyRef{}, err
	}
	r.buf = appendBinding(r.buf[:0], "tresor-ff1-v1\x00", r.s.name, r.pat)
	// The output numerals go after the input's in one scratch buffer.
	nd := len(digits)
	var out []byte
	out, r.pq, err = tk.f.appendCipher(digits, r.pq, r.buf, digits, enc)
	if err != nil {
		return nil, envelope.KeyRef{}, fmt.Errorf("%w: %s: tokenize failed", ErrWrongType, r.path)
	}
	r.digits = out
	res := append(r.tok[:0], s...)
	j := nd
	for i := range res {
		if isDigit(res[i]) {
			res[i] = '0' + out[j]
			j++
		}
	}
	r.tok = res
	clear(out)
	return res, tk.ref, nil
}

func (r *run) tokenKey(t *Tier) (*tokenKey, error) {
	for i := range r.ff1s {
		if r.ff1s[i].name == t.Key {
			return &r.ff1s[i], nil
		}
	}
	block, ref, err := r.p.keys.TokenizationCipher(r.ctx, t.Key)
	if err != nil {
		return nil, r.keyErr(string(r.path), t, err)
	}
	f, err := newFF1(block, 10)
	if err != nil {
		return nil, fmt.Errorf("fields: %s: tier %q: key %q is not an AES key", r.path, t.Name, t.Key)
	}
	r.ff1s = append(r.ff1s, tokenKey{name: t.Key, f: *f, ref: ref})
	return &r.ff1s[len(r.ff1s)-1], nil
}

// revealField reveals one protected value as decide allows.
func (r *run) revealField(n *node, t *Tier, spec *fieldSpec) error {
	if t.Protection == ProtectionNone {
		// A listed public field: only what inspection sealed inside it.
		return r.revealPublicTree(n)
	}
	var fr FieldResult
	fr.Path, fr.Pattern = r.names(spec)
	path := fr.Path
	fr.Tier, fr.Protection, fr.Key = t.Name, t.Protection, t.Key
	switch t.Protection {
	case ProtectionMask, ProtectionRedact:
		fr.Outcome, fr.Key = OutcomeIrreversible, ""
		r.res.Fields = append(r.res.Fields, fr)
		return nil
	}
	var ct []byte
	if t.Protection != ProtectionTokenize {
		// The ciphertext must name the key the tier names: the decision
		// below is made on that key, so a value sealed under another key
		// (an older schema version's, another owner's) is refused before
		// anything is decided or opened.
		if n.kind != kindString {
			return fmt.Errorf("%w: %s", ErrReveal, path)
		}
		s := n.raw[1 : len(n.raw)-1]
		if bytes.IndexByte(s, '\\') >= 0 {
			d, ok := decodeString(n.raw)
			if !ok {
				return fmt.Errorf("%w: %s", ErrReveal, path)
			}
			s = []byte(d)
		}
		var ok bool
		if ct, ok = appendDecodeCiphertext(r.ct[:0], s); !ok {
			return fmt.Errorf("%w: %s", ErrReveal, path)
		}
		r.ct = ct
		if c, err := envelope.ParseCiphertext(ct); err != nil || c.KeyName != t.Key {
			return fmt.Errorf("%w: %s", ErrReveal, path)
		}
	}
	mode, err := r.decide(FieldRef{Path: path, Pattern: fr.Pattern, Tier: t.Name, Sensitivity: t.Sensitivity, Key: t.Key})
	if err != nil {
		return fmt.Errorf("fields: %s: %w", path, err)
	}
	switch mode {
	case RevealWithheld:
		fr.Outcome = OutcomeWithheld
		r.res.Fields = append(r.res.Fields, fr)
		return nil
	case RevealClear, RevealMasked:
	default:
		return fmt.Errorf("fields: %s: decide returned an invalid reveal mode %d", path, mode)
	}
	if t.Protection == ProtectionTokenize {
		out, ref, err := r.tokenize(n, t, false)
		if err != nil {
			return r.revealError(path, err)
		}
		fr.Version = ref.Version
		if mode == RevealClear {
			*n = node{kind: kindString, raw: r.rawString(out)}
		} else {
			*n = stringNode(applyMask(string(out), t.Mask))
		}
		clear(out)
	} else {
		pt, ref, err := r.open(ct, r.aad(t.Protection != ProtectionDeterministic))
		if err != nil {
			return r.revealError(path, err)
		}
		if !json.Valid(pt) {
			clear(pt)
			r.arena = r.arena[:len(r.arena)-len(pt)]
			return fmt.Errorf("%w: %s", ErrReveal, path)
		}
		fr.Key, fr.Version = ref.Name, ref.Version
		if mode == RevealClear {
			*n = node{kind: kindRaw, raw: pt}
		} else {
			*n = stringNode(maskJSON(pt, t.Mask))
			clear(pt)
			r.arena = r.arena[:len(r.arena)-len(pt)]
		}
	}
	if mode == RevealClear {
		fr.Outcome = OutcomeClear
	} else {
		fr.Outcome = OutcomeMasked
	}
	r.res.Fields = append(r.res.Fields, fr)
	return nil
}

// open opens ct and appends the plaintext to the arena, returning it there.
func (r *run) open(ct, aad []byte) ([]byte, envelope.KeyRef, error) {
	k := len(r.arena)
	if r.p.opener != nil {
		if r.opener == nil {
			r.opener = r.p.opener.Opener()
		}
		out, ref, err := r.opener.AppendDecrypt(r.ctx, r.arena, ct, aad)
		if err != nil {
			return nil, envelope.KeyRef{}, err
		}
		r.arena = out
		return out[k:len(out):len(out)], ref, nil
	}
	pt, ref, err := r.p.keys.Decrypt(r.ctx, ct, aad)
	if err != nil {
		return nil, envelope.KeyRef{}, err
	}
	r.arena = append(r.arena, pt...)
	pt.Wipe()
	return r.arena[k:len(r.arena):len(r.arena)], ref, nil
}

// maskJSON masks a revealed JSON value: a string or a number by the mask,
// anything else as a whole.
func maskJSON(v []byte, spec MaskSpec) string {
	if spec.Format == "" {
		spec = MaskSpec{Format: MaskText}
	}
	switch {
	case len(v) > 0 && v[0] == '"':
		s, ok := decodeString(v)
		if !ok {
			return maskedNonString
		}
		return applyMask(s, spec)
	case len(v) > 0 && (v[0] == '-' || isDigit(v[0])):
		return applyMask(string(v), spec)
	}
	return maskedNonString
}

// revealPublicTree reveals what inspection sealed under a listed public field.
func (r *run) revealPublicTree(n *node) error { return r.walkScalars(n, r.revealInspected) }
