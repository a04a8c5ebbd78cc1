package fields

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/tresorkms/tresor/internal/jsontext"
	"unicode/utf8"
)

// kind is a JSON value's type.
type kind uint8

const (
	kindNull kind = iota + 1
	kindBool
	kindNumber
	kindString
	kindObject
	kindArray
	// kindRaw is a revealed value, written verbatim; it is never walked.
	kindRaw
)

// node is one JSON value, parsed into an ordered tree. Scalars keep their
// raw bytes (a string with its quotes and escapes), so numbers and untouched
// strings are written back byte for byte.
type node struct {
	kind    kind
	raw     []byte
	members []member
	elems   []node
}

type member struct {
	key    []byte // decoded; aliases rawKey when it has no escapes
	rawKey []byte // as written, with quotes
	val    node
}

// parser is a strict JSON parser (RFC 8259) that refuses duplicate member
// names and nesting deeper than maxDepth as soon as it meets them.
//
// Members and elements are gathered on a stack while their container is
// parsed, then moved to one arena, so that a document costs a few growing
// slices rather than a slice per container; a pooled parser reuses them.
type parser struct {
	data     []byte
	pos      int
	depth    int
	maxDepth int
	mstack   []member
	marena   []member
	estack   []node
	earena   []node
}

// parseDocument parses data, a JSON object, into n.
func (p *parser) parseDocument(data []byte, maxDepth int, n *node) error {
	p.data, p.pos, p.depth, p.maxDepth = data, 0, 0, maxDepth
	p.skipSpace()
	if p.pos >= len(p.data) || p.data[p.pos] != '{' {
		return fmt.Errorf("%w: the top level is not an object", ErrInvalidDocument)
	}
	if err := p.value(n); err != nil {
		return err
	}
	p.skipSpace()
	if p.pos != len(p.data) {
		return p.syntax("after the top-level value")
	}
	return nil
}

// reset drops every reference to the last document, keeping the capacity.
func (p *parser) reset() {
	clear(p.mstack[:cap(p.mstack)])
	clear(p.marena[:cap(p.marena)])
	clear(p.estack[:cap(p.estack)])
	clear(p.earena[:cap(p.earena)])
	*p = parser{mstack: p.mstack[:0], marena: p.marena[:0], estack: p.estack[:0], earena: p.earena[:0]}
}

func parseDocument(data []byte, maxDepth int) (node, error) {
	var p parser
	var n node
	if err := p.parseDocument(data, maxDepth, &n); err != nil {
		return node{}, err
	}
	return n, nil
}

func (p *parser) syntax(what string) error {
	return fmt.Errorf("%w: syntax error at byte %d (%s)", ErrInvalidDocument, p.pos, what)
}

func (p *parser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// value parses a value into n.
func (p *parser) value(n *node) error {
	v, err := p.valueOf()
	*n = v
	return err
}

// valueOf parses a value and returns it; the nested members and elements
// go on the stacks above the caller's, which it leaves as it found them.
// Values are returned, never pointed to, so that none escapes to the heap.
func (p *parser) valueOf() (node, error) {
	p.skipSpace()
	if p.pos >= len(p.data) {
		return node{}, p.syntax("unexpected end")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		ms, err := p.object()
		return node{kind: kindObject, members: ms}, err
	case c == '[':
		es, err := p.array()
		return node{kind: kindArray, elems: es}, err
	case c == '"':
		start := p.pos
		if err := p.str(); err != nil {
			return node{}, err
		}
		return node{kind: kindString, raw: p.data[start:p.pos]}, nil
	case c == '-' || (c >= '0' && c <= '9'):
		start := p.pos
		if err := p.number(); err != nil {
			return node{}, err
		}
		return node{kind: kindNumber, raw: p.data[start:p.pos]}, nil
	default:
		for _, lit := range [...]struct {
			s string
			k kind
		}{{"true", kindBool}, {"false", kindBool}, {"null", kindNull}} {
			if len(p.data)-p.pos >= len(lit.s) && string(p.data[p.pos:p.pos+len(lit.s)]) == lit.s {
				n := node{kind: lit.k, raw: p.data[p.pos : p.pos+len(lit.s)]}
				p.pos += len(lit.s)
				return n, nil
			}
		}
		return node{}, p.syntax("invalid value")
	}
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > p.maxDepth {
		return fmt.Errorf("%w: nesting exceeds %d levels", ErrDocumentTooDeep, p.maxDepth)
	}
	return nil
}

// object parses an object's members.
func (p *parser) object() ([]member, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	p.pos++ // '{'
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		p.depth--
		return nil, nil
	}
	base := len(p.mstack)
	var seen map[string]struct{}
	for {
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return nil, p.syntax("want a member name")
		}
		start := p.pos
		if err := p.str(); err != nil {
			return nil, err
		}
		rawKey := p.data[start:p.pos]
		key, ok := decodeKey(rawKey)
		if !ok {
			return nil, p.syntax("invalid member name")
		}
		// Duplicate names are ambiguous: parsers disagree on which one wins.
		if ms := p.mstack[base:]; len(ms) < 32 {
			for i := range ms {
				if string(ms[i].key) == string(key) {
					return nil, fmt.Errorf("%w: duplicate member name at byte %d", ErrInvalidDocument, start)
				}
			}
		} else {
			if seen == nil {
				seen = make(map[string]struct{}, 2*len(ms))
				for i := range ms {
					seen[string(ms[i].key)] = struct{}{}
				}
			}
			if _, dup := seen[string(key)]; dup {
				return nil, fmt.Errorf("%w: duplicate member name at byte %d", ErrInvalidDocument, start)
			}
			seen[string(key)] = struct{}{}
		}
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return nil, p.syntax("want ':'")
		}
		p.pos++
		// The value is parsed apart: nested members go on the stack above.
		p.mstack = append(p.mstack, member{key: key, rawKey: rawKey})
		v, err := p.valueOf()
		if err != nil {
			return nil, err
		}
		p.mstack[len(p.mstack)-1].val = v
		p.skipSpace()
		if p.pos >= len(p.data) {
			return nil, p.syntax("unexpected end in object")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			p.depth--
			at := len(p.marena)
			p.marena = append(p.marena, p.mstack[base:]...)
			ms := p.marena[at:len(p.marena):len(p.marena)]
			clear(p.mstack[base:])
			p.mstack = p.mstack[:base]
			return ms, nil
		default:
			return nil, p.syntax("want ',' or '}'")
		}
	}
}

// array parses an array's elements.
func (p *parser) array() ([]node, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	p.pos++ // '['
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		p.depth--
		return nil, nil
	}
	base := len(p.estack)
	for {
		v, err := p.valueOf()
		if err != nil {
			return nil, err
		}
		p.estack = append(p.estack, v)
		p.skipSpace()
		if p.pos >= len(p.data) {
			return nil, p.syntax("unexpected end in array")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			p.depth--
			at := len(p.earena)
			p.earena = append(p.earena, p.estack[base:]...)
			es := p.earena[at:len(p.earena):len(p.earena)]
			clear(p.estack[base:])
			p.estack = p.estack[:base]
			return es, nil
		default:
			return nil, p.syntax("want ',' or ']'")
		}
	}
}

// str consumes a string starting at '"'.
func (p *parser) str() error {
	p.pos++
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			return nil
		case c == '\\':
			if p.pos+1 >= len(p.data) {
				return p.syntax("unexpected end in string")
			}
			switch p.data[p.pos+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				p.pos += 2
			case 'u':
				if p.pos+6 > len(p.data) {
					return p.syntax("unexpected end in string")
				}
				for _, h := range p.data[p.pos+2 : p.pos+6] {
					if !isHex(h) {
						return p.syntax("invalid \\u escape")
					}
				}
				p.pos += 6
			default:
				return p.syntax("invalid escape")
			}
		case c < 0x20:
			return p.syntax("control character in string")
		case c < utf8.RuneSelf:
			p.pos++
		default:
			r, size := utf8.DecodeRune(p.data[p.pos:])
			if r == utf8.RuneError && size == 1 {
				return p.syntax("invalid UTF-8")
			}
			p.pos += size
		}
	}
	return p.syntax("unexpected end in string")
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func (p *parser) number() error {
	d := p.data
	if d[p.pos] == '-' {
		p.pos++
	}
	switch {
	case p.pos < len(d) && d[p.pos] == '0':
		p.pos++
	case p.pos < len(d) && d[p.pos] >= '1' && d[p.pos] <= '9':
		for p.pos < len(d) && isDigit(d[p.pos]) {
			p.pos++
		}
	default:
		return p.syntax("invalid number")
	}
	if p.pos < len(d) && d[p.pos] == '.' {
		p.pos++
		if p.pos >= len(d) || !isDigit(d[p.pos]) {
			return p.syntax("invalid number")
		}
		for p.pos < len(d) && isDigit(d[p.pos]) {
			p.pos++
		}
	}
	if p.pos < len(d) && (d[p.pos] == 'e' || d[p.pos] == 'E') {
		p.pos++
		if p.pos < len(d) && (d[p.pos] == '+' || d[p.pos] == '-') {
			p.pos++
		}
		if p.pos >= len(d) || !isDigit(d[p.pos]) {
			return p.syntax("invalid number")
		}
		for p.pos < len(d) && isDigit(d[p.pos]) {
			p.pos++
		}
	}
	return nil
}

// decodeString decodes a raw JSON string (with quotes) that the parser
// accepted. Strings without escapes take the fast path.
func decodeString(raw []byte) (string, bool) {
	if len(raw) < 2 {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	for _, c := range inner {
		if c == '\\' {
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return "", false
			}
			return s, true
		}
	}
	return string(inner), true
}

// decodeKey is decodeString for a member name, aliasing raw when it has no
// escapes.
func decodeKey(raw []byte) ([]byte, bool) {
	if len(raw) < 2 {
		return nil, false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner, true
	}
	s, ok := decodeString(raw)
	return []byte(s), ok
}

// encode appends n's compact JSON form to dst.
func encode(dst []byte, n *node) []byte {
	switch n.kind {
	case kindObject:
		dst = append(dst, '{')
		for i := range n.members {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, n.members[i].rawKey...)
			dst = append(dst, ':')
			dst = encode(dst, &n.members[i].val)
		}
		return append(dst, '}')
	case kindArray:
		dst = append(dst, '[')
		for i := range n.elems {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = encode(dst, &n.elems[i])
		}
		return append(dst, ']')
	default:
		return append(dst, n.raw...)
	}
}

// appendString appends s as a JSON string.
func appendString[T string | []byte](dst []byte, s T) []byte { return jsontext.AppendString(dst, s) }

// stringNode returns a string node holding s.
func stringNode(s string) node {
	return node{kind: kindString, raw: appendString(make([]byte, 0, len(s)+2), s)}
}
