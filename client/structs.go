// Field protection for Go structs: the fields that carry a tier in a
// `tresor:"<tier>"` tag are the ones a classification schema protects.

package client

import (
	"bytes"
	"cmp"
	"context"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// Struct field protection.
//
// A struct marks the fields a schema protects with a tier:
//
//	type Customer struct {
//		Name     string    `json:"name"`
//		TaxID    string    `json:"tax_id" tresor:"restricted"`
//		IBAN     *string   `json:"iban,omitempty" tresor:"indexed"`
//		IBANBidx string    `json:"iban_bidx,omitempty"` // the blind index
//		Accounts []Account `json:"accounts"`            // $.accounts[*]...
//	}
//
// Paths follow encoding/json: member names from json tags (or the Go
// names), embedded structs promoted, pointers followed, slices and arrays
// as [*]. StructPaths lists them, StructSchema writes a schema from them,
// and ProtectStruct and RevealStruct protect and reveal a struct in place.
//
// Tagged fields must be strings or pointers to strings (any string kind
// that has no JSON or text marshaler of its own). A blind index the
// server adds beside a tagged field is written to the field whose JSON
// name is the tagged field's followed by "_bidx", when the struct has one
// (a string or *string); the schema must keep that index_suffix, the
// default. Values behind interfaces, maps and types with their own JSON
// or text marshaler are opaque: tags inside them are refused, since no
// schema path could name them.

// Errors of the struct helpers.
var (
	// ErrInvalidStruct means a value the struct helpers were given cannot
	// be used: not a (non-nil) pointer to a struct, or tresor tags on
	// fields that cannot carry them (not a string, not marshaled, inside a
	// map or a custom marshaler, on a recursive type). The error names the
	// Go field, never its value.
	ErrInvalidStruct = errors.New("tresor: invalid struct for field protection")
	// ErrSchemaMismatch means the schema and the struct's tresor tags
	// disagree: the server changed a field that has no tag, ProtectStruct
	// got back a tagged field the schema did not protect, or StructSchema
	// was given no tier for a tag. The struct is left unchanged.
	ErrSchemaMismatch = errors.New("tresor: the schema and the struct's tresor tags disagree")
)

// tagKey is the struct tag that names a field's tier.
const tagKey = "tresor"

// bidxSuffix is the blind index member's suffix the struct helpers know:
// the schema's default index_suffix.
const bidxSuffix = "_bidx"

// StructPaths returns the schema path of every tagged field of v's type
// (a struct or a pointer to one; v may be a nil pointer), with its tier:
// "$.tax_id" -> "restricted", "$.accounts[*].iban" -> "indexed". The
// paths are in the canonical spelling the server reports. The analysis of
// each type is done once and cached.
func StructPaths(v any) (map[string]string, error) {
	info, err := structInfoOf(v)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(info.paths))
	for _, p := range info.paths {
		out[p.path] = p.tier
	}
	return out, nil
}

// Protection names what a tier does to its fields, as a schema spells it.
type Protection string

// The protections of a schema's tiers. See package fields of the server
// for what each does.
const (
	// ProtectAEAD seals with randomized AES-256-GCM (an AES256_GCM key).
	ProtectAEAD Protection = "aead"
	// ProtectDeterministic seals with AES-SIV (an AES256_SIV key): equal
	// values give equal ciphertexts, for joins and lookups.
	ProtectDeterministic Protection = "deterministic"
	// ProtectBlindIndex seals like aead and adds a keyed blind index
	// (an HMAC_SHA256 IndexKey) in the sibling member <name>_bidx.
	ProtectBlindIndex Protection = "blind_index"
	// ProtectTokenize replaces digits with an FF1 token (an FF1_AES256
	// key), keeping length and separators.
	ProtectTokenize Protection = "tokenize"
	// ProtectMask masks irreversibly, as the tier's Mask says.
	ProtectMask Protection = "mask"
	// ProtectRedact replaces the value with "[REDACTED]", irreversibly.
	ProtectRedact Protection = "redact"
	// ProtectNone leaves the value as is.
	ProtectNone Protection = "none"
)

// SchemaTier is one row of the tier table StructSchema turns into a
// schema's tiers: what the fields tagged with Name get, and with which
// keys.
type SchemaTier struct {
	// Name is the tier, as the tresor tags write it: 1 to 63 of
	// [a-z0-9_-].
	Name string
	// Protection is what the tier does.
	Protection Protection
	// Key protects the values: an AES256_GCM key for aead and
	// blind_index, AES256_SIV for deterministic, FF1_AES256 for tokenize.
	Key string
	// IndexKey is blind_index's HMAC_SHA256 key; IndexBytes the length of
	// its index, 8 to 32 (0: the server's default, 16).
	IndexKey   string
	IndexBytes int
	// Mask is a mask tier's mask, or for the others the mask a caller
	// allowed only masked reveals sees (nil: every character hidden).
	Mask *TierMask
	// Sensitivity is public, internal, confidential or restricted; empty
	// lets the server derive it (the tier's name if it is one of those,
	// else restricted).
	Sensitivity string
}

// TierMask is how a mask shows a value.
type TierMask struct {
	// Format is card, iban, email, digits or text.
	Format string
	// KeepLast is how many trailing characters stay visible; 0 hides them
	// all.
	KeepLast int
}

// DefaultTier is the tier StructSchema gives every field without a tag:
// protection none. A tier table may define it, with protection none.
const DefaultTier = "public"

// StructSchema returns a classification schema definition (JSON, as
// PutSchema takes it) named name, at version (from 1), that lists the
// path of every tagged field of v's type with its tier. The tiers the
// tags name come from tiers; untagged fields get DefaultTier, whose
// protection is none, so that ProtectStruct changes only tagged fields.
// The schema has no payload inspection. Only the tiers the tags use (and
// DefaultTier) are written, so only their keys must exist.
//
// A tag naming a tier missing from tiers gives ErrSchemaMismatch; a tier
// table or name the server would refuse (an unknown protection, a missing
// key, a tier listed twice) or a tag naming a tier other than
// DefaultTier whose protection is none (ProtectStruct wants every tagged
// field but DefaultTier's protected) gives ErrInvalidArgument; an unusable struct
// gives ErrInvalidStruct. The server checks the rest when the schema is
// put.
func StructSchema(name string, version int64, v any, tiers ...SchemaTier) ([]byte, error) {
	if !validSchemaName(name) {
		return nil, fmt.Errorf("client: StructSchema: name %q: want 1 to 63 of [a-z0-9-] starting with a letter: %w", name, ErrInvalidArgument)
	}
	if version <= 0 {
		return nil, fmt.Errorf("client: StructSchema: version %d: want 1 or more: %w", version, ErrInvalidArgument)
	}
	info, err := structInfoOf(v)
	if err != nil {
		return nil, err
	}
	table := make(map[string]SchemaTier, len(tiers))
	for _, t := range tiers {
		if _, dup := table[t.Name]; dup {
			return nil, fmt.Errorf("client: StructSchema: tier %q is listed twice: %w", t.Name, ErrInvalidArgument)
		}
		if err := t.check(); err != nil {
			return nil, fmt.Errorf("client: StructSchema: %w", err)
		}
		table[t.Name] = t
	}
	def, ok := table[DefaultTier]
	if !ok {
		def = SchemaTier{Name: DefaultTier, Protection: ProtectNone, Sensitivity: "public"}
	} else if def.Protection != ProtectNone {
		return nil, fmt.Errorf("client: StructSchema: tier %q has protection %s: it is the tier of untagged fields and must be none: %w", DefaultTier, def.Protection, ErrInvalidArgument)
	}
	doc := schemaDefinition{
		Name:        name,
		Version:     version,
		DefaultTier: DefaultTier,
		Tiers:       map[string]schemaTierDoc{DefaultTier: def.doc()},
		Fields:      make([]schemaFieldDoc, 0, len(info.paths)),
	}
	for _, p := range info.paths {
		t, ok := table[p.tier]
		if !ok && p.tier != DefaultTier {
			return nil, fmt.Errorf("client: StructSchema: field %s is tagged with tier %q, which the tier table lacks: %w", p.goField, p.tier, ErrSchemaMismatch)
		}
		if ok && p.tier != DefaultTier && t.Protection == ProtectNone {
			// ProtectStruct would refuse every answer: it wants tagged
			// fields protected.
			return nil, fmt.Errorf("client: StructSchema: field %s is tagged with tier %q, whose protection is none: tag it %q: %w", p.goField, p.tier, DefaultTier, ErrInvalidArgument)
		}
		if ok {
			doc.Tiers[p.tier] = t.doc()
		}
		doc.Fields = append(doc.Fields, schemaFieldDoc{Path: p.path, Tier: p.tier})
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("client: StructSchema: %w", err)
	}
	return b, nil
}

// The schema definition's JSON form (fields.ParseSchema's schemaDoc).
type schemaDefinition struct {
	Name        string                   `json:"name"`
	Version     int64                    `json:"version"`
	DefaultTier string                   `json:"default_tier"`
	Tiers       map[string]schemaTierDoc `json:"tiers"`
	Fields      []schemaFieldDoc         `json:"fields"`
}

type schemaTierDoc struct {
	Protection  Protection     `json:"protection"`
	Key         string         `json:"key,omitempty"`
	IndexKey    string         `json:"index_key,omitempty"`
	IndexBytes  int            `json:"index_bytes,omitempty"`
	Mask        *schemaMaskDoc `json:"mask,omitempty"`
	Sensitivity string         `json:"sensitivity,omitempty"`
}

type schemaMaskDoc struct {
	KeepLast int    `json:"keep_last"`
	Format   string `json:"format"`
}

type schemaFieldDoc struct {
	Path string `json:"path"`
	Tier string `json:"tier"`
}

func (t SchemaTier) doc() schemaTierDoc {
	d := schemaTierDoc{Protection: t.Protection, Key: t.Key, IndexKey: t.IndexKey, IndexBytes: t.IndexBytes, Sensitivity: t.Sensitivity}
	if t.Mask != nil {
		d.Mask = &schemaMaskDoc{KeepLast: t.Mask.KeepLast, Format: t.Mask.Format}
	}
	return d
}

// check refuses what the server would surely refuse of a tier; it leaves
// the finer points (key types, mask lengths) to the server.
func (t SchemaTier) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("tier %q: %s: %w", t.Name, fmt.Sprintf(format, args...), ErrInvalidArgument)
	}
	if !validTierName(t.Name) {
		return bad("want 1 to 63 of [a-z0-9_-]")
	}
	keyed := false
	switch t.Protection {
	case ProtectAEAD, ProtectDeterministic, ProtectBlindIndex, ProtectTokenize:
		keyed = true
	case ProtectMask, ProtectRedact, ProtectNone:
	default:
		return bad("unknown protection %q", t.Protection)
	}
	switch {
	case keyed && t.Key == "":
		return bad("protection %s needs a Key", t.Protection)
	case !keyed && t.Key != "":
		return bad("protection %s takes no Key", t.Protection)
	case t.Protection == ProtectBlindIndex && t.IndexKey == "":
		return bad("protection blind_index needs an IndexKey")
	case t.Protection != ProtectBlindIndex && (t.IndexKey != "" || t.IndexBytes != 0):
		return bad("IndexKey and IndexBytes are only for blind_index")
	case t.Protection == ProtectMask && t.Mask == nil:
		return bad("protection mask needs a Mask")
	case (t.Protection == ProtectNone || t.Protection == ProtectRedact) && t.Mask != nil:
		return bad("protection %s has nothing to mask", t.Protection)
	}
	return nil
}

func validSchemaName(s string) bool {
	if s == "" || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

func validTierName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// ProtectStruct protects the struct v points to with ProtectDocument: v
// is marshaled with encoding/json, protected under the latest version of
// schema (bound to documentID, which RevealStruct must be given too), and
// the result is written back into v. Only the tagged string fields change
// (to ciphertexts, tokens, masks or "[REDACTED]" as their tiers say), and
// the "_bidx" sibling fields that receive blind indexes.
//
// It fails closed: every tagged field that holds a string (not a nil
// pointer) must come back protected, tokenized, masked or redacted, by a
// protection other than none, as the response's Fields say. A schema that
// leaves one as it was (it does not list the path, its default tier
// protects nothing, it is another schema) fails the call with
// ErrSchemaMismatch. The one exception is a field tagged with DefaultTier
// (`tresor:"public"`), which its tag says is public.
//
// v is left unchanged on any error: ErrInvalidStruct for a v that is not
// a non-nil pointer to a struct or whose tags cannot be used, the call's
// error (ErrPermissionDenied, ErrInvalidArgument, ...), or
// ErrSchemaMismatch when the server's answer changes something untagged
// or leaves a tagged field unprotected.
func (c *Client) ProtectStruct(ctx context.Context, schema, documentID string, v any) (*tresorv1.ProtectDocumentResponse, error) {
	rv, info, err := structTarget(v)
	if err != nil {
		return nil, fmt.Errorf("client: ProtectStruct: %w", err)
	}
	doc, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("client: ProtectStruct: marshal: %w", err)
	}
	resp, err := c.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: schema, Document: string(doc), DocumentId: documentID})
	if err != nil {
		return nil, err
	}
	verify := func(tagged []string) error { return checkProtected(tagged, resp.GetFields()) }
	if err := writeBack(info, rv, doc, []byte(resp.GetDocument()), verify); err != nil {
		return nil, fmt.Errorf("client: ProtectStruct: %w", err)
	}
	return resp, nil
}

// protectOutcomes are the outcomes of a field ProtectDocument changed.
var protectOutcomes = map[string]bool{"protected": true, "tokenized": true, "masked": true, "redacted": true}

// checkProtected fails closed: every tagged field sent with a value (its
// concrete path in tagged) must have an outcome saying that a protection
// other than none protected, tokenized, masked or redacted it. A schema
// that does not classify a tagged field (another schema, an edited one, a
// default tier that protects nothing) would return its value unchanged.
func checkProtected(tagged []string, outcomes []*tresorv1.FieldOutcome) error {
	byPath := make(map[string]*tresorv1.FieldOutcome, len(outcomes))
	for _, f := range outcomes {
		byPath[f.GetPath()] = f
	}
	for _, p := range tagged {
		f := byPath[p]
		switch {
		case f == nil:
			return mismatch([]byte(p), "the schema did not protect tagged")
		case f.GetProtection() == string(ProtectNone) || !protectOutcomes[f.GetOutcome()]:
			return fmt.Errorf("the schema gave tagged %s protection %q, outcome %q: %w", p, f.GetProtection(), f.GetOutcome(), ErrSchemaMismatch)
		}
	}
	return nil
}

// RevealStruct reveals the struct v points to, protected by ProtectStruct
// with the same documentID, with RevealDocument under schemaVersion (0:
// the latest) and writes the result back into v: each tagged field
// becomes its clear text, its mask or stays protected, as the policy
// allows the caller and the response's Fields say. Nothing else changes.
//
// v is left unchanged on any error, as for ProtectStruct; a field that
// does not authenticate fails the whole call with ErrDecryptionFailed.
func (c *Client) RevealStruct(ctx context.Context, schema string, schemaVersion int64, documentID string, v any) (*tresorv1.RevealDocumentResponse, error) {
	rv, info, err := structTarget(v)
	if err != nil {
		return nil, fmt.Errorf("client: RevealStruct: %w", err)
	}
	doc, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("client: RevealStruct: marshal: %w", err)
	}
	resp, err := c.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: schema, SchemaVersion: schemaVersion, Document: string(doc), DocumentId: documentID})
	if err != nil {
		return nil, err
	}
	if err := writeBack(info, rv, doc, []byte(resp.GetDocument()), nil); err != nil {
		return nil, fmt.Errorf("client: RevealStruct: %w", err)
	}
	return resp, nil
}

// structTarget checks that v is a non-nil pointer to a struct and returns
// the struct and its analysis.
func structTarget(v any) (reflect.Value, *structInfo, error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.Type().Elem().Kind() != reflect.Struct {
		return reflect.Value{}, nil, fmt.Errorf("%w: want a pointer to a struct, got %s", ErrInvalidStruct, typeName(v))
	}
	if rv.IsNil() {
		return reflect.Value{}, nil, fmt.Errorf("%w: nil %s", ErrInvalidStruct, rv.Type())
	}
	info, err := structInfoOf(v)
	if err != nil {
		return reflect.Value{}, nil, err
	}
	return rv.Elem(), info, nil
}

func typeName(v any) string {
	if v == nil {
		return "nil"
	}
	return reflect.TypeOf(v).String()
}

// The analysis of a struct type: which JSON members lead to tagged fields.

// structInfo is a struct type's analysis.
type structInfo struct {
	root  *planNode // nil: no tagged field
	paths []taggedPath
}

// taggedPath is one tagged field: its schema path, tier and Go name.
type taggedPath struct {
	path, tier, goField string
}

type planKind uint8

const (
	planTagged planKind = iota + 1 // a tagged string, through any pointers
	planIndex                      // a blind index sibling, a string
	planStruct                     // a struct (through pointers) with tagged fields
	planList                       // a slice or array whose elements have them
)

// planNode is what the analysis keeps of a type on the way to tagged
// fields; types with none below them have no node.
type planNode struct {
	kind    planKind
	tier    string      // planTagged
	goField string      // planTagged, planIndex: for messages
	fields  []planField // planStruct, in index order
	elem    *planNode   // planList
}

// planField is a struct member that leads to tagged fields or is one.
type planField struct {
	name  string // the JSON member name
	index []int  // reflect index sequence, through embedded structs
	node  *planNode
}

// structInfos caches the analysis by reflect.Type: *structInfo or error.
var structInfos sync.Map

func structInfoOf(v any) (*structInfo, error) {
	t := reflect.TypeOf(v)
	if t == nil {
		return nil, fmt.Errorf("%w: want a struct or a pointer to one, got nil", ErrInvalidStruct)
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if cached, ok := structInfos.Load(t); ok {
		if err, ok := cached.(error); ok {
			return nil, err
		}
		return cached.(*structInfo), nil
	}
	info, err := analyzeStruct(t)
	if err != nil {
		structInfos.Store(t, err)
		return nil, err
	}
	structInfos.Store(t, info)
	return info, nil
}

func analyzeStruct(t reflect.Type) (*structInfo, error) {
	if t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("%w: want a struct or a pointer to one, got %s", ErrInvalidStruct, t)
	}
	if hasJSONMethods(t) {
		return nil, fmt.Errorf("%w: %s has its own JSON or text marshaler", ErrInvalidStruct, t)
	}
	a := &analyzer{inStack: map[reflect.Type]bool{}, recursed: map[reflect.Type]bool{}}
	root, err := a.typ(t)
	if err != nil {
		return nil, err
	}
	info := &structInfo{root: root}
	collectPaths(root, []byte{'$'}, &info.paths)
	slices.SortFunc(info.paths, func(a, b taggedPath) int { return strings.Compare(a.path, b.path) })
	return info, nil
}

func collectPaths(n *planNode, path []byte, out *[]taggedPath) {
	if n == nil {
		return
	}
	switch n.kind {
	case planTagged:
		*out = append(*out, taggedPath{path: string(path), tier: n.tier, goField: n.goField})
	case planStruct:
		for _, f := range n.fields {
			collectPaths(f.node, appendPathName(slices.Clip(path), f.name), out)
		}
	case planList:
		collectPaths(n.elem, append(slices.Clip(path), "[*]"...), out)
	}
}

// appendPathName appends a member step as the server spells it: .name
// when the name is made of letters, digits, '_' and '-', else ["name"].
func appendPathName(dst []byte, name string) []byte {
	plain := name != ""
	for i := range len(name) {
		if c := name[i]; (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			plain = false
			break
		}
	}
	if plain {
		return append(append(dst, '.'), name...)
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(name) // a string always encodes
	dst = append(dst, '[')
	dst = append(dst, bytes.TrimSuffix(b.Bytes(), []byte("\n"))...)
	return append(dst, ']')
}

var (
	jsonMarshalerType = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

// hasJSONMethods reports whether encoding/json encodes t with t's own
// methods rather than by its structure.
func hasJSONMethods(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	return t.Implements(jsonMarshalerType) || pt.Implements(jsonMarshalerType) ||
		t.Implements(textMarshalerType) || pt.Implements(textMarshalerType)
}

type analyzer struct {
	inStack  map[reflect.Type]bool // struct types being analyzed
	recursed map[reflect.Type]bool // struct types met again inside themselves
}

// typ returns the node of t, nil if no tagged field lies below it.
func (a *analyzer) typ(t reflect.Type) (*planNode, error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if hasJSONMethods(t) {
		// Encoded by its own methods: opaque. Tags in it could not be
		// found in the JSON.
		if f, ok := directTag(t); ok {
			return nil, fmt.Errorf("%w: field %s.%s is tagged, but %s has its own JSON or text marshaler", ErrInvalidStruct, t, f, t)
		}
		return nil, nil
	}
	switch t.Kind() {
	case reflect.Struct:
		return a.structType(t)
	case reflect.Slice, reflect.Array:
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			return nil, nil // base64
		}
		elem, err := a.typ(t.Elem())
		if err != nil || elem == nil {
			return nil, err
		}
		return &planNode{kind: planList, elem: elem}, nil
	case reflect.Map:
		elem, err := a.typ(t.Elem())
		if err != nil {
			return nil, err
		}
		if elem != nil {
			return nil, fmt.Errorf("%w: %s holds tagged fields, but a schema path cannot name map members", ErrInvalidStruct, t)
		}
	}
	return nil, nil
}

// directTag returns the name of a field of struct t with a tresor tag.
func directTag(t reflect.Type) (string, bool) {
	if t.Kind() != reflect.Struct {
		return "", false
	}
	for i := range t.NumField() {
		if _, ok := tierTag(t.Field(i)); ok {
			return t.Field(i).Name, true
		}
	}
	return "", false
}

func (a *analyzer) structType(t reflect.Type) (*planNode, error) {
	if a.inStack[t] {
		a.recursed[t] = true
		return nil, nil
	}
	a.inStack[t] = true
	defer delete(a.inStack, t)

	fields, tagged := jsonFields(t)
	byName := make(map[string]*jsonField, len(fields))
	for i := range fields {
		byName[fields[i].name] = &fields[i]
	}
	// Every tagged field must be one encoding/json writes.
	kept := make(map[string]bool, len(fields))
	for _, f := range fields {
		kept[indexKey(f.index)] = true
	}
	for _, f := range tagged {
		if !kept[indexKey(f.index)] {
			return nil, fmt.Errorf("%w: field %s.%s is tagged, but encoding/json does not marshal it (unexported, json:\"-\" or hidden by another field of its name)", ErrInvalidStruct, t, f.goName)
		}
	}

	n := &planNode{kind: planStruct}
	indexes := map[string]bool{} // JSON names of blind index siblings
	for _, f := range fields {
		tier, ok := tierTag(f.sf)
		if !ok {
			continue
		}
		goField := t.String() + "." + f.goName
		if !validTierName(tier) {
			return nil, fmt.Errorf("%w: field %s: tier %q: want 1 to 63 of [a-z0-9_-]", ErrInvalidStruct, goField, tier)
		}
		if !isStringType(f.sf.Type) {
			return nil, fmt.Errorf("%w: field %s is tagged with tier %q but is %s: tagged fields must be strings or *string", ErrInvalidStruct, goField, tier, f.sf.Type)
		}
		if f.quoted {
			return nil, fmt.Errorf("%w: field %s is tagged with tier %q and has the json \",string\" option", ErrInvalidStruct, goField, tier)
		}
		if sib, ok := byName[f.name+bidxSuffix]; ok {
			if _, sibTagged := tierTag(sib.sf); !sibTagged {
				sibField := t.String() + "." + sib.goName
				if !isStringType(sib.sf.Type) {
					return nil, fmt.Errorf("%w: field %s receives the blind index of %s but is %s: want a string or *string", ErrInvalidStruct, sibField, goField, sib.sf.Type)
				}
				if sib.quoted {
					return nil, fmt.Errorf("%w: field %s receives the blind index of %s and has the json \",string\" option", ErrInvalidStruct, sibField, goField)
				}
				indexes[sib.name] = true
			}
		}
	}
	for _, f := range fields {
		var child *planNode
		if tier, ok := tierTag(f.sf); ok {
			child = &planNode{kind: planTagged, tier: tier, goField: t.String() + "." + f.goName}
		} else if indexes[f.name] {
			child = &planNode{kind: planIndex, goField: t.String() + "." + f.goName}
		} else {
			var err error
			if child, err = a.typ(f.sf.Type); err != nil {
				return nil, err
			}
		}
		if child != nil {
			n.fields = append(n.fields, planField{name: f.name, index: f.index, node: child})
		}
	}
	if len(n.fields) == 0 {
		return nil, nil
	}
	if a.recursed[t] {
		return nil, fmt.Errorf("%w: %s is recursive and holds tagged fields: no finite set of schema paths names them", ErrInvalidStruct, t)
	}
	return n, nil
}

func indexKey(index []int) string {
	b := make([]byte, 0, 4*len(index))
	for _, i := range index {
		b = strconv.AppendInt(append(b, '.'), int64(i), 10)
	}
	return string(b)
}

// isStringType reports whether t is a string kind, through pointers,
// that encoding/json writes as a plain JSON string.
func isStringType(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		if hasJSONMethods(t) {
			return false
		}
		t = t.Elem()
	}
	return t.Kind() == reflect.String && !hasJSONMethods(t)
}

// jsonField is a member encoding/json writes for a struct.
type jsonField struct {
	name   string
	tag    bool  // the name came from a json tag
	index  []int // through embedded structs
	sf     reflect.StructField
	goName string // Outer.Inner.Field through embedded structs
	quoted bool   // the ",string" option, on a type that takes it
}

// jsonFields returns the members encoding/json writes for struct t, in
// index order (encoding/json's typeFields, less what encoding needs), and
// every field with a tresor tag met on the way, written or not.
func jsonFields(t reflect.Type) (fields, tagged []jsonField) {
	type level struct {
		typ    reflect.Type
		index  []int
		goName string
	}
	var current []level
	next := []level{{typ: t}}
	var count, nextCount map[reflect.Type]int
	visited := map[reflect.Type]bool{}
	for len(next) > 0 {
		current, next = next, current[:0]
		count, nextCount = nextCount, map[reflect.Type]int{}
		for _, f := range current {
			if visited[f.typ] {
				continue
			}
			visited[f.typ] = true
			for i := range f.typ.NumField() {
				sf := f.typ.Field(i)
				index := append(slices.Clip(f.index), i)
				goName := sf.Name
				if f.goName != "" {
					goName = f.goName + "." + sf.Name
				}
				if _, ok := tierTag(sf); ok {
					tagged = append(tagged, jsonField{index: index, goName: goName})
				}
				if sf.Anonymous {
					et := sf.Type
					if et.Kind() == reflect.Pointer {
						et = et.Elem()
					}
					if !sf.IsExported() && et.Kind() != reflect.Struct {
						continue
					}
				} else if !sf.IsExported() {
					continue
				}
				tag := sf.Tag.Get("json")
				if tag == "-" {
					continue
				}
				name, opts, _ := strings.Cut(tag, ",")
				if !validJSONName(name) {
					name = ""
				}
				ft := sf.Type
				if ft.Name() == "" && ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				quoted := false
				if slices.Contains(strings.Split(opts, ","), "string") {
					switch ft.Kind() {
					case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
						reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
						reflect.Float32, reflect.Float64, reflect.String:
						quoted = true
					}
				}
				if name != "" || !sf.Anonymous || ft.Kind() != reflect.Struct {
					jf := jsonField{name: name, tag: name != "", index: index, sf: sf, goName: goName, quoted: quoted}
					if jf.name == "" {
						jf.name = sf.Name
					}
					fields = append(fields, jf)
					if count[f.typ] > 1 {
						// Two copies make the duplicate visible below.
						fields = append(fields, fields[len(fields)-1])
					}
					continue
				}
				nextCount[ft]++
				if nextCount[ft] == 1 {
					next = append(next, level{typ: ft, index: index, goName: goName})
				}
			}
		}
	}
	slices.SortFunc(fields, func(a, b jsonField) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		if c := cmp.Compare(len(a.index), len(b.index)); c != 0 {
			return c
		}
		if a.tag != b.tag {
			if a.tag {
				return -1
			}
			return +1
		}
		return slices.Compare(a.index, b.index)
	})
	// Go's rules for embedded fields, except that a json tag promotes.
	out := fields[:0]
	for advance, i := 0, 0; i < len(fields); i += advance {
		for advance = 1; i+advance < len(fields) && fields[i+advance].name == fields[i].name; advance++ {
		}
		same := fields[i : i+advance]
		if len(same) > 1 && len(same[0].index) == len(same[1].index) && same[0].tag == same[1].tag {
			continue // ambiguous: encoding/json drops them all
		}
		out = append(out, same[0])
	}
	slices.SortFunc(out, func(a, b jsonField) int { return slices.Compare(a.index, b.index) })
	return out, tagged
}

// validJSONName is encoding/json's isValidTag.
func validJSONName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c):
		case !unicode.IsLetter(c) && !unicode.IsDigit(c):
			return false
		}
	}
	return true
}

// Writing the server's answer back.

// assignment is one field to set once the whole answer is checked.
type assignment struct {
	dst, val reflect.Value
}

// writeBack checks the server's document got against the document sent,
// sent: equal but for tagged fields (strings, or null where null was
// sent) and blind index siblings; and, when verify is not nil, gives it
// the concrete path of every field sent as a string that is tagged with
// a tier other than DefaultTier. Then, and
// only then, it sets those fields of rv (the struct) to got's values.
func writeBack(info *structInfo, rv reflect.Value, sent, got []byte, verify func(tagged []string) error) error {
	orig, err := decodeJSON(sent)
	if err != nil {
		return fmt.Errorf("the document sent does not decode: %w", err)
	}
	answer, err := decodeJSON(got)
	if err != nil {
		// The decoder's error may quote the document: not repeated.
		return errors.New("the server's document is not JSON")
	}
	w := &writer{}
	if err := w.value(info.root, rv, orig, answer, []byte{'$'}); err != nil {
		return err
	}
	if verify != nil {
		if err := verify(w.tagged); err != nil {
			return err
		}
	}
	for _, a := range w.set {
		a.dst.Set(a.val)
	}
	return nil
}

func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("data after the document")
	}
	return v, nil
}

type writer struct {
	set    []assignment
	tagged []string // the paths of the tagged fields sent as strings, but DefaultTier's
}

func mismatch(path []byte, what string) error {
	return fmt.Errorf("%s %s: %w", what, path, ErrSchemaMismatch)
}

// value checks got against orig at path, where n (nil: nothing tagged)
// describes the Go value fv.
func (w *writer) value(n *planNode, fv reflect.Value, orig, got any, path []byte) error {
	if n == nil {
		if !reflect.DeepEqual(orig, got) {
			return mismatch(path, "the server changed untagged")
		}
		return nil
	}
	switch n.kind {
	case planTagged, planIndex:
		switch o := orig.(type) {
		case nil:
			if got != nil {
				return mismatch(path, "the server filled the null")
			}
			return nil
		case string:
			g, ok := got.(string)
			if !ok {
				return mismatch(path, "the server returned a non-string for")
			}
			if n.kind == planTagged && n.tier != DefaultTier {
				w.tagged = append(w.tagged, string(path))
			}
			if g != o {
				return w.stage(fv, g, path)
			}
			return nil
		default:
			return mismatch(path, "a tagged field is not a JSON string:")
		}
	}
	for fv.Kind() == reflect.Pointer {
		if fv.IsNil() {
			break
		}
		fv = fv.Elem()
	}
	if orig == nil || fv.Kind() == reflect.Pointer {
		if orig != nil || got != nil {
			return mismatch(path, "the server changed untagged")
		}
		return nil
	}
	switch n.kind {
	case planList:
		o, ok1 := orig.([]any)
		g, ok2 := got.([]any)
		if !ok1 || !ok2 || len(o) != len(g) || fv.Len() != len(o) {
			return mismatch(path, "the server changed the array")
		}
		for i := range o {
			p := strconv.AppendInt(append(slices.Clip(path), '['), int64(i), 10)
			if err := w.value(n.elem, fv.Index(i), o[i], g[i], append(p, ']')); err != nil {
				return err
			}
		}
		return nil
	case planStruct:
		return w.object(n, fv, orig, got, path)
	}
	return mismatch(path, "unexpected value at")
}

func (w *writer) object(n *planNode, fv reflect.Value, orig, got any, path []byte) error {
	o, ok1 := orig.(map[string]any)
	g, ok2 := got.(map[string]any)
	if !ok1 || !ok2 {
		return mismatch(path, "the server changed the object")
	}
	planned := make(map[string]*planField, len(n.fields))
	for i := range n.fields {
		f := &n.fields[i]
		planned[f.name] = f
		p := appendPathName(slices.Clip(path), f.name)
		ov, inOrig := o[f.name]
		gv, inGot := g[f.name]
		switch {
		case !inOrig && !inGot:
			continue
		case !inOrig:
			// Left out (omitempty, or a nil embedded pointer): only a
			// blind index may appear there.
			if f.node.kind != planIndex {
				return mismatch(p, "the server added")
			}
			ff, ok := fieldByIndex(fv, f.index)
			if !ok {
				continue // behind a nil embedded pointer: nowhere to put it
			}
			s, ok := gv.(string)
			if !ok {
				return mismatch(p, "the server returned a non-string for")
			}
			if err := w.stage(ff, s, p); err != nil {
				return err
			}
			continue
		case !inGot:
			return mismatch(p, "the server removed")
		}
		ff, ok := fieldByIndex(fv, f.index)
		if !ok {
			return mismatch(p, "no Go field holds")
		}
		if err := w.value(f.node, ff, ov, gv, p); err != nil {
			return err
		}
	}
	for k, ov := range o {
		if _, ok := planned[k]; ok {
			continue
		}
		if gv, ok := g[k]; !ok || !reflect.DeepEqual(ov, gv) {
			return mismatch(appendPathName(slices.Clip(path), k), "the server changed untagged")
		}
	}
	for k := range g {
		if _, ok := o[k]; ok {
			continue
		}
		if _, ok := planned[k]; ok {
			continue
		}
		// A member the struct has no field for is harmless only as the
		// blind index of a tagged field (with another index_suffix).
		if !w.isIndexOf(n, k) {
			return mismatch(appendPathName(slices.Clip(path), k), "the server added")
		}
	}
	return nil
}

// isIndexOf reports whether member k could be the blind index of a
// tagged field of n: its name followed by a suffix.
func (w *writer) isIndexOf(n *planNode, k string) bool {
	for _, f := range n.fields {
		if f.node.kind == planTagged && len(k) > len(f.name) && strings.HasPrefix(k, f.name) {
			return true
		}
	}
	return false
}

// stage records that string field fv (through any pointers) becomes s.
// Pointers are replaced, never written through: the caller's other
// references to the old string keep it.
func (w *writer) stage(fv reflect.Value, s string, path []byte) error {
	if !fv.CanSet() {
		return mismatch(path, "cannot set the Go field of")
	}
	w.set = append(w.set, assignment{dst: fv, val: stringValue(fv.Type(), s)})
	return nil
}

// stringValue returns a value of type t (a string kind through pointers)
// holding s.
func stringValue(t reflect.Type, s string) reflect.Value {
	if t.Kind() == reflect.Pointer {
		p := reflect.New(t.Elem())
		p.Elem().Set(stringValue(t.Elem(), s))
		return p
	}
	return reflect.ValueOf(s).Convert(t)
}

// fieldByIndex is v.FieldByIndex that reports a nil embedded pointer
// instead of panicking.
func fieldByIndex(v reflect.Value, index []int) (reflect.Value, bool) {
	for i, x := range index {
		if i > 0 {
			for v.Kind() == reflect.Pointer {
				if v.IsNil() {
					return reflect.Value{}, false
				}
				v = v.Elem()
			}
		}
		v = v.Field(x)
	}
	return v, true
}

// tierTag returns the tier a struct field's tresor tag names; ok is false
// for an untagged field, and for an empty or "-" tag.
func tierTag(sf reflect.StructField) (tier string, ok bool) {
	tier, ok = sf.Tag.Lookup(tagKey)
	return tier, ok && tier != "" && tier != "-"
}
