package fields

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/tresorkms/tresor/envelope"
)

// Protection is what a tier does to a field. The zero value is invalid.
type Protection int

const (
	protectionUnspecified Protection = iota
	// ProtectionNone leaves a value as is; it is inspected.
	ProtectionNone
	// ProtectionAEAD seals the value with randomized AEAD.
	ProtectionAEAD
	// ProtectionDeterministic seals the value with deterministic AEAD (AES-SIV).
	ProtectionDeterministic
	// ProtectionBlindIndex seals the value with randomized AEAD and adds a
	// blind index in a sibling member.
	ProtectionBlindIndex
	// ProtectionTokenize replaces the digits of a string with an FF1 token.
	ProtectionTokenize
	// ProtectionMask masks the value irreversibly.
	ProtectionMask
	// ProtectionRedact replaces the value with "[REDACTED]".
	ProtectionRedact
)

var protectionNames = [...]string{"", "none", "aead", "deterministic", "blind_index", "tokenize", "mask", "redact"}

// String returns the protection's name as written in a schema.
func (p Protection) String() string {
	if p <= protectionUnspecified || int(p) >= len(protectionNames) {
		return "unspecified"
	}
	return protectionNames[p]
}

func parseProtection(s string) (Protection, bool) {
	for i, n := range protectionNames {
		if i > 0 && n == s {
			return Protection(i), true
		}
	}
	return protectionUnspecified, false
}

// Key types, as the key store names them, that each protection needs.
const (
	KeyTypeAEAD          = "AES256_GCM"  // aead, and blind_index's key
	KeyTypeDeterministic = "AES256_SIV"  // deterministic
	KeyTypeHMAC          = "HMAC_SHA256" // blind_index's index_key
	KeyTypeFF1           = "FF1_AES256"  // tokenize
)

// Sensitivity is a tier's classification, which the reveal policy uses.
type Sensitivity string

const (
	SensitivityPublic       Sensitivity = "public"
	SensitivityInternal     Sensitivity = "internal"
	SensitivityConfidential Sensitivity = "confidential"
	SensitivityRestricted   Sensitivity = "restricted"
)

func validSensitivity(s string) bool { return slices.Contains(envelope.SensitivityTiers, s) }

// MaskFormat is how a mask treats a value.
type MaskFormat string

const (
	MaskCard   MaskFormat = "card"   // digits masked but the last KeepLast (at most 4), separators kept
	MaskIBAN   MaskFormat = "iban"   // country code and last KeepLast kept
	MaskEmail  MaskFormat = "email"  // first character of the local part, then ***@domain
	MaskDigits MaskFormat = "digits" // digits masked but the last KeepLast, other characters kept
	MaskText   MaskFormat = "text"   // characters masked but the last KeepLast
)

// MaskSpec is a mask: the protection of a mask tier, or the reveal mask of
// a tier whose reveal a policy limits to a mask.
type MaskSpec struct {
	Format   MaskFormat
	KeepLast int
}

// Tier is one tier of a schema, with defaults filled in.
type Tier struct {
	Name        string
	Protection  Protection
	Key         string // aead, deterministic, blind_index (its AEAD key), tokenize
	IndexKey    string // blind_index: the HMAC key
	IndexBytes  int    // blind_index: 8..32
	IndexSuffix string // blind_index: sibling member suffix
	// Mask is the mask of a mask tier, else the reveal mask (zero: none
	// configured; a masked reveal then hides every character).
	Mask        MaskSpec
	Sensitivity Sensitivity
}

// Field is one listed path and its tier.
type Field struct {
	Path string // canonical pattern
	Tier string
}

// InspectionAction is what happens to sensitive data found in public fields.
type InspectionAction string

const (
	InspectReport  InspectionAction = "report"
	InspectProtect InspectionAction = "protect"
	InspectReject  InspectionAction = "reject"
)

// Detector names.
const (
	DetectCard  = "card"
	DetectIBAN  = "iban"
	DetectSSN   = "ssn"
	DetectEIN   = "ein"
	DetectEmail = "email"
	DetectPhone = "phone"
)

var allDetectors = []string{DetectCard, DetectIBAN, DetectSSN, DetectEIN, DetectEmail, DetectPhone}

// Inspection is a schema's payload inspection.
type Inspection struct {
	Action    InspectionAction
	Tier      string   // with InspectProtect
	Detectors []string // in canonical order
}

// Schema is a parsed, self-consistent classification schema. It is
// immutable; accessors return copies.
type Schema struct {
	name        string
	version     int
	defaultTier string
	tiers       map[string]*Tier
	fields      []Field
	inspection  *Inspection
	keys        []KeyUse // see Keys
	detectors   detectorSet
	root        *pnode
}

// pnode is a node of the trie of listed paths.
type pnode struct {
	children map[string]*pnode
	wildcard *pnode
	field    *fieldSpec
	siblings map[string]struct{} // blind index members of this object's fields
}

type fieldSpec struct {
	pattern string
	tier    *Tier
	sibling string // blind_index: the sibling member's name
}

// The document forms of a schema. Unknown fields are refused.
type schemaDoc struct {
	Name        string             `yaml:"name" json:"name"`
	Version     int                `yaml:"version" json:"version"`
	DefaultTier string             `yaml:"default_tier" json:"default_tier"`
	Tiers       map[string]tierDoc `yaml:"tiers" json:"tiers"`
	Fields      []fieldDoc         `yaml:"fields" json:"fields"`
	Inspection  *inspectionDoc     `yaml:"inspection,omitempty" json:"inspection,omitempty"`
}

type tierDoc struct {
	Protection  string   `yaml:"protection" json:"protection"`
	Key         string   `yaml:"key,omitempty" json:"key,omitempty"`
	IndexKey    string   `yaml:"index_key,omitempty" json:"index_key,omitempty"`
	IndexBytes  int      `yaml:"index_bytes,omitempty" json:"index_bytes,omitempty"`
	IndexSuffix string   `yaml:"index_suffix,omitempty" json:"index_suffix,omitempty"`
	Mask        *maskDoc `yaml:"mask,omitempty" json:"mask,omitempty"`
	Sensitivity string   `yaml:"sensitivity,omitempty" json:"sensitivity,omitempty"`
}

type maskDoc struct {
	KeepLast *int   `yaml:"keep_last,omitempty" json:"keep_last,omitempty"`
	Format   string `yaml:"format,omitempty" json:"format,omitempty"`
}

type fieldDoc struct {
	Path string `yaml:"path" json:"path"`
	Tier string `yaml:"tier" json:"tier"`
}

type inspectionDoc struct {
	Action    string   `yaml:"action" json:"action"`
	Tier      string   `yaml:"tier,omitempty" json:"tier,omitempty"`
	Detectors []string `yaml:"detectors,omitempty" json:"detectors,omitempty"`
}

const (
	maxSchemaBytes     = 1 << 20
	defaultIndexBytes  = 16
	defaultIndexSuffix = "_bidx"
	defaultKeepLast    = 4
)

// ParseSchema parses a schema in YAML or JSON (JSON is read as YAML) and
// checks it on its own: name, version, every tier's protection and keys,
// every path, no path listed twice or inside another, the default tier and
// the inspection. Unknown fields are refused. Every problem found is
// reported, each wrapping ErrInvalidSchema. Keys are checked against the
// keyring by Validate.
func ParseSchema(data []byte) (*Schema, error) {
	if len(data) > maxSchemaBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalidSchema, maxSchemaBytes)
	}
	if json.Valid(data) {
		// YAML reads most JSON, but not every JSON escape (\/, surrogate
		// pairs such as Python's json.dumps writes): spell the strings the
		// way YAML reads them. Member names and their order are kept, so
		// duplicates and unknown fields are refused below as in YAML.
		var err error
		if data, err = yamlJSON(data); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var d schemaDoc
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSchema, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%w: more than one document", ErrInvalidSchema)
	}
	return build(&d)
}

func validSchemaName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

func build(d *schemaDoc) (*Schema, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidSchema}, args...)...))
	}
	s := &Schema{name: d.Name, version: d.Version, defaultTier: d.DefaultTier, tiers: make(map[string]*Tier, len(d.Tiers))}
	if !validSchemaName(d.Name) {
		bad("name %q: want 1 to 63 of [a-z0-9-]", d.Name)
	}
	if d.Version <= 0 {
		bad("version %d: want a positive integer", d.Version)
	}
	if len(d.Tiers) == 0 {
		bad("no tiers")
	}
	names := make([]string, 0, len(d.Tiers))
	for n := range d.Tiers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t, err := buildTier(n, d.Tiers[n])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.tiers[n] = t
	}
	// A key holds one type: one used by two protections needing different
	// types cannot work.
	keyTypes := map[string]string{}
	for _, n := range names {
		t, ok := s.tiers[n]
		if !ok {
			continue
		}
		for _, u := range tierKeys(t) {
			if prev, ok := keyTypes[u.name]; ok && prev != u.typ {
				bad("key %q is used both as %s and as %s", u.name, prev, u.typ)
			}
			keyTypes[u.name] = u.typ
		}
	}

	if d.DefaultTier == "" {
		bad("default_tier is missing")
	} else if t, ok := s.tiers[d.DefaultTier]; !ok {
		if _, declared := d.Tiers[d.DefaultTier]; !declared {
			bad("default_tier %q: unknown tier", d.DefaultTier)
		}
	} else {
		switch t.Protection {
		case ProtectionNone, ProtectionAEAD, ProtectionDeterministic, ProtectionRedact:
		default:
			bad("default_tier %q: protection %s cannot apply to every unlisted value (want none, aead, deterministic or redact)", d.DefaultTier, t.Protection)
		}
	}

	s.root = &pnode{}
	seen := map[string]bool{}
	type listed struct {
		segs []segment
		spec *fieldSpec
	}
	var all []listed
	for i, f := range d.Fields {
		segs, err := parsePath(f.Path)
		if err != nil {
			bad("fields[%d]: path %q: want $ then .name, [\"name\"] or [*] steps", i, f.Path)
			continue
		}
		pattern := canonicalPath(segs)
		if seen[pattern] {
			bad("fields[%d]: path %s is listed twice", i, pattern)
			continue
		}
		seen[pattern] = true
		t, ok := s.tiers[f.Tier]
		if !ok {
			if _, declared := d.Tiers[f.Tier]; !declared {
				bad("fields[%d]: path %s: unknown tier %q", i, pattern, f.Tier)
			}
			continue
		}
		spec := &fieldSpec{pattern: pattern, tier: t}
		if t.Protection == ProtectionBlindIndex {
			last := segs[len(segs)-1]
			if last.wildcard {
				bad("fields[%d]: path %s: blind_index needs an object member, not an array element, for its sibling index", i, pattern)
				continue
			}
			spec.sibling = last.name + t.IndexSuffix
		}
		s.fields = append(s.fields, Field{Path: pattern, Tier: f.Tier})
		all = append(all, listed{segs, spec})
	}
	// Paths inside one another are ambiguous (the outer one's protection
	// swallows the inner one); so is a listed path where a blind index goes.
	for _, a := range all {
		for _, b := range all {
			if a.spec != b.spec && len(a.segs) < len(b.segs) && slices.Equal(a.segs, b.segs[:len(a.segs)]) {
				bad("path %s lies inside path %s", b.spec.pattern, a.spec.pattern)
			}
		}
		if a.spec.sibling != "" {
			sib := append(slices.Clone(a.segs[:len(a.segs)-1]), segment{name: a.spec.sibling})
			if seen[canonicalPath(sib)] {
				bad("path %s: its blind index member %s is listed too", a.spec.pattern, canonicalPath(sib))
			}
		}
	}
	for _, l := range all {
		n, parent := s.root, s.root
		for _, sg := range l.segs {
			parent = n
			if sg.wildcard {
				if n.wildcard == nil {
					n.wildcard = &pnode{}
				}
				n = n.wildcard
				continue
			}
			if n.children == nil {
				n.children = map[string]*pnode{}
			}
			c := n.children[sg.name]
			if c == nil {
				c = &pnode{}
				n.children[sg.name] = c
			}
			n = c
		}
		n.field = l.spec
		if l.spec.sibling != "" {
			if parent.siblings == nil {
				parent.siblings = map[string]struct{}{}
			}
			parent.siblings[l.spec.sibling] = struct{}{}
		}
	}

	if d.Inspection != nil {
		in := &Inspection{Action: InspectionAction(d.Inspection.Action), Tier: d.Inspection.Tier}
		switch in.Action {
		case InspectReport, InspectReject:
			if in.Tier != "" {
				bad("inspection: tier is only for action protect")
			}
		case InspectProtect:
			t, ok := s.tiers[in.Tier]
			switch {
			case in.Tier == "":
				bad("inspection: action protect needs a tier")
			case !ok:
				if _, declared := d.Tiers[in.Tier]; !declared {
					bad("inspection: unknown tier %q", in.Tier)
				}
			default:
				switch t.Protection {
				case ProtectionAEAD, ProtectionDeterministic, ProtectionRedact, ProtectionMask:
				default:
					bad("inspection: tier %q: protection %s cannot protect findings (want aead, deterministic, mask or redact)", in.Tier, t.Protection)
				}
			}
		default:
			bad("inspection: action %q: want report, protect or reject", d.Inspection.Action)
		}
		dets := d.Inspection.Detectors
		if len(dets) == 0 {
			dets = allDetectors
		}
		for _, name := range dets {
			bit, ok := detectorBit(name)
			if !ok {
				bad("inspection: unknown detector %q", name)
				continue
			}
			if s.detectors&bit != 0 {
				bad("inspection: detector %q is listed twice", name)
			}
			s.detectors |= bit
		}
		for _, name := range allDetectors {
			if bit, _ := detectorBit(name); s.detectors&bit != 0 {
				in.Detectors = append(in.Detectors, name)
			}
		}
		s.inspection = in
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.keys = s.keyUses()
	return s, nil
}

func buildTier(name string, d tierDoc) (*Tier, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: tier %q: "+format, append([]any{ErrInvalidSchema, name}, args...)...))
	}
	if !validTierName(name) {
		bad("name: want 1 to 63 of [a-z0-9_-]")
	}
	p, ok := parseProtection(d.Protection)
	if !ok {
		bad("unknown protection %q", d.Protection)
		return nil, errors.Join(errs...)
	}
	t := &Tier{Name: name, Protection: p, Key: d.Key, IndexKey: d.IndexKey, IndexBytes: d.IndexBytes, IndexSuffix: d.IndexSuffix}
	needsKey := p == ProtectionAEAD || p == ProtectionDeterministic || p == ProtectionBlindIndex || p == ProtectionTokenize
	switch {
	case needsKey && d.Key == "":
		bad("protection %s needs a key", p)
	case needsKey && !envelope.ValidKeyName(d.Key):
		bad("key %q: invalid key name", d.Key)
	case !needsKey && d.Key != "":
		bad("protection %s takes no key", p)
	}
	if p == ProtectionBlindIndex {
		switch {
		case d.IndexKey == "":
			bad("protection blind_index needs an index_key")
		case !envelope.ValidKeyName(d.IndexKey):
			bad("index_key %q: invalid key name", d.IndexKey)
		}
		if t.IndexBytes == 0 {
			t.IndexBytes = defaultIndexBytes
		}
		if t.IndexBytes < 8 || t.IndexBytes > 32 {
			bad("index_bytes %d: want 8 to 32", d.IndexBytes)
		}
		if t.IndexSuffix == "" {
			t.IndexSuffix = defaultIndexSuffix
		}
		for i := 0; i < len(t.IndexSuffix); i++ {
			if !isNameChar(t.IndexSuffix[i]) {
				bad("index_suffix %q: want letters, digits, '_' or '-'", d.IndexSuffix)
				break
			}
		}
	} else if d.IndexKey != "" || d.IndexBytes != 0 || d.IndexSuffix != "" {
		bad("index_key, index_bytes and index_suffix are only for blind_index")
	}
	if d.Mask != nil {
		t.Mask = MaskSpec{Format: MaskFormat(d.Mask.Format), KeepLast: defaultKeepLast}
		if t.Mask.Format == "" {
			t.Mask.Format = MaskText
		}
		if d.Mask.KeepLast != nil {
			t.Mask.KeepLast = *d.Mask.KeepLast
		}
		switch t.Mask.Format {
		case MaskCard:
			if t.Mask.KeepLast < 0 || t.Mask.KeepLast > 4 {
				bad("mask keep_last %d: a card mask keeps 0 to 4 digits", t.Mask.KeepLast)
			}
		case MaskIBAN, MaskDigits, MaskText, MaskEmail:
			if t.Mask.KeepLast < 0 || t.Mask.KeepLast > 64 {
				bad("mask keep_last %d: want 0 to 64", t.Mask.KeepLast)
			}
		default:
			bad("mask format %q: want card, iban, email, digits or text", d.Mask.Format)
		}
		if p == ProtectionNone || p == ProtectionRedact {
			bad("protection %s has nothing to mask", p)
		}
	} else if p == ProtectionMask {
		bad("protection mask needs a mask")
	}
	switch {
	case d.Sensitivity != "":
		if !validSensitivity(d.Sensitivity) {
			bad("sensitivity %q: want public, internal, confidential or restricted", d.Sensitivity)
		}
		t.Sensitivity = Sensitivity(d.Sensitivity)
	case validSensitivity(name):
		t.Sensitivity = Sensitivity(name)
	default:
		t.Sensitivity = SensitivityRestricted
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return t, nil
}

func validTierName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

type keyUse struct{ name, typ string }

func tierKeys(t *Tier) []keyUse {
	switch t.Protection {
	case ProtectionAEAD:
		return []keyUse{{t.Key, KeyTypeAEAD}}
	case ProtectionDeterministic:
		return []keyUse{{t.Key, KeyTypeDeterministic}}
	case ProtectionBlindIndex:
		return []keyUse{{t.Key, KeyTypeAEAD}, {t.IndexKey, KeyTypeHMAC}}
	case ProtectionTokenize:
		return []keyUse{{t.Key, KeyTypeFF1}}
	}
	return nil
}

// Name returns the schema's name, which protection binds.
func (s *Schema) Name() string { return s.name }

// Version returns the schema's version.
func (s *Schema) Version() int { return s.version }

// DefaultTier returns the name of the tier of unlisted values.
func (s *Schema) DefaultTier() string { return s.defaultTier }

// Tiers returns the tiers, sorted by name.
func (s *Schema) Tiers() []Tier {
	out := make([]Tier, 0, len(s.tiers))
	for _, t := range s.tiers {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Tier returns the named tier.
func (s *Schema) Tier(name string) (Tier, bool) {
	t, ok := s.tiers[name]
	if !ok {
		return Tier{}, false
	}
	return *t, true
}

// Fields returns the listed paths (canonical patterns) in schema order.
func (s *Schema) Fields() []Field { return slices.Clone(s.fields) }

// Inspection returns the schema's payload inspection, if it has one.
func (s *Schema) Inspection() (Inspection, bool) {
	if s.inspection == nil {
		return Inspection{}, false
	}
	in := *s.inspection
	in.Detectors = slices.Clone(in.Detectors)
	return in, true
}

// KeyUse is one key a schema uses: its name, the key type it must have, and
// the protections and tiers that use it.
type KeyUse struct {
	Name        string
	KeyType     string
	Protections []Protection
	Tiers       []string
}

// Keys returns the keys the schema uses, sorted by name. The schema is
// immutable, so they are worked out once, when it is built; callers must
// not modify what Keys returns.
func (s *Schema) Keys() []KeyUse { return s.keys }

func (s *Schema) keyUses() []KeyUse {
	byName := map[string]*KeyUse{}
	for _, t := range s.Tiers() {
		for _, u := range tierKeys(&t) {
			k := byName[u.name]
			if k == nil {
				k = &KeyUse{Name: u.name, KeyType: u.typ}
				byName[u.name] = k
			}
			if !slices.Contains(k.Protections, t.Protection) {
				k.Protections = append(k.Protections, t.Protection)
			}
			if !slices.Contains(k.Tiers, t.Name) {
				k.Tiers = append(k.Tiers, t.Name)
			}
		}
	}
	out := make([]KeyUse, 0, len(byName))
	for _, k := range byName {
		slices.Sort(k.Protections)
		out = append(out, *k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// KeyTyper tells a key's type (as the key store names it, for example
// "AES256_GCM"), or an error if the key does not exist or cannot be read.
type KeyTyper interface {
	KeyType(ctx context.Context, name string) (string, error)
}

// KeyTyperFunc adapts a function to KeyTyper.
type KeyTyperFunc func(ctx context.Context, name string) (string, error)

// KeyType calls f.
func (f KeyTyperFunc) KeyType(ctx context.Context, name string) (string, error) {
	return f(ctx, name)
}

// Validate checks that every key the schema uses exists and has the type its
// protection needs. Every problem is reported, each wrapping
// ErrInvalidSchema (and the lookup's own error, if any). A cancelled context
// is returned as is.
func (s *Schema) Validate(ctx context.Context, keys KeyTyper) error {
	var errs []error
	for _, k := range s.Keys() {
		typ, err := keys.KeyType(ctx, k.Name)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			errs = append(errs, fmt.Errorf("%w: key %q (tiers %s): %w", ErrInvalidSchema, k.Name, strings.Join(k.Tiers, ", "), err))
			continue
		}
		if typ != k.KeyType {
			errs = append(errs, fmt.Errorf("%w: key %q (tiers %s) is %s, want %s", ErrInvalidSchema, k.Name, strings.Join(k.Tiers, ", "), typ, k.KeyType))
		}
	}
	return errors.Join(errs...)
}

// Marshal returns the schema's canonical form, JSON with defaults filled in,
// tiers sorted by name and paths in canonical spelling. ParseSchema reads it
// back into an equal schema; equal schemas marshal to equal bytes.
func (s *Schema) Marshal() ([]byte, error) {
	d := schemaDoc{Name: s.name, Version: s.version, DefaultTier: s.defaultTier, Tiers: make(map[string]tierDoc, len(s.tiers)), Fields: make([]fieldDoc, 0, len(s.fields))}
	for n, t := range s.tiers {
		td := tierDoc{Protection: t.Protection.String(), Key: t.Key, IndexKey: t.IndexKey, IndexBytes: t.IndexBytes, IndexSuffix: t.IndexSuffix, Sensitivity: string(t.Sensitivity)}
		if t.Mask.Format != "" {
			keep := t.Mask.KeepLast
			td.Mask = &maskDoc{KeepLast: &keep, Format: string(t.Mask.Format)}
		}
		d.Tiers[n] = td
	}
	for _, f := range s.fields {
		d.Fields = append(d.Fields, fieldDoc(f))
	}
	if s.inspection != nil {
		d.Inspection = &inspectionDoc{Action: string(s.inspection.Action), Tier: s.inspection.Tier, Detectors: s.inspection.Detectors}
	}
	b, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	return yamlSafe(b), nil
}

// yamlSafe escapes, as \uXXXX, the characters of JSON text b that a YAML
// reader refuses (DEL, the C1 controls, U+FFFE, U+FFFF) or reads as a line
// break (NEL; encoding/json already escapes U+2028 and U+2029). ParseSchema
// reads JSON as YAML, and must read Marshal's output back as written. Such
// characters occur only inside strings, where an escape means the same.
func yamlSafe(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0xfffe || r == 0xffff {
			if out == nil {
				out = append(make([]byte, 0, len(b)+16), b[:i]...)
			}
			out = fmt.Appendf(out, `\u%04x`, r)
		} else if out != nil {
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	if out == nil {
		return b
	}
	return out
}

// yamlJSON writes valid JSON text b again, token by token, with every
// string re-encoded by encoding/json (no \/, no surrogate escapes) and
// made yamlSafe: the same JSON value, in a spelling YAML reads the same.
func yamlJSON(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	out := make([]byte, 0, len(b))
	// Per open container: whether it is an object, and how many tokens
	// (members' names and values, or elements) it has had.
	type level struct {
		object bool
		n      int
	}
	var stack []level
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			out = append(out, byte(d))
			continue
		}
		if len(stack) > 0 {
			top := &stack[len(stack)-1]
			switch {
			case top.object && top.n%2 == 1:
				out = append(out, ':')
			case top.n > 0:
				out = append(out, ',')
			}
			top.n++
		}
		switch v := tok.(type) {
		case json.Delim:
			stack = append(stack, level{object: v == '{'})
			out = append(out, byte(v))
		case string:
			q, err := json.Marshal(v)
			if err != nil {
				return nil, err
			}
			out = append(out, q...)
		case json.Number:
			out = append(out, v...)
		case bool:
			out = fmt.Append(out, v)
		case nil:
			out = append(out, "null"...)
		}
	}
	return yamlSafe(out), nil
}
