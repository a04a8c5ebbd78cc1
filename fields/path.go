package fields

import (
	"encoding/json"
	"errors"
	"strings"
)

// A path pattern is a subset of JSONPath: "$" then segments, each a member
// name (.name, with name made of letters, digits, '_' and '-', or
// ["any name"] as a JSON string) or the array wildcard [*]. The root alone is
// not a field.

// segment is one step of a path pattern; wildcard means [*].
type segment struct {
	name     string
	wildcard bool
}

var errPath = errors.New("invalid path")

func isNameChar(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'
}

// parsePath parses a pattern and returns its segments.
func parsePath(p string) ([]segment, error) {
	if !strings.HasPrefix(p, "$") {
		return nil, errPath
	}
	var segs []segment
	i := 1
	for i < len(p) {
		switch p[i] {
		case '.':
			j := i + 1
			for j < len(p) && isNameChar(p[j]) {
				j++
			}
			if j == i+1 {
				return nil, errPath
			}
			segs = append(segs, segment{name: p[i+1 : j]})
			i = j
		case '[':
			if strings.HasPrefix(p[i:], "[*]") {
				segs = append(segs, segment{wildcard: true})
				i += 3
				continue
			}
			if i+1 >= len(p) || p[i+1] != '"' {
				return nil, errPath
			}
			// A JSON string, then ']'.
			j := i + 2
			for j < len(p) && p[j] != '"' {
				if p[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(p) || j+1 >= len(p) || p[j+1] != ']' {
				return nil, errPath
			}
			var name string
			if err := json.Unmarshal([]byte(p[i+1:j+1]), &name); err != nil || name == "" {
				return nil, errPath
			}
			segs = append(segs, segment{name: name})
			i = j + 2
		default:
			return nil, errPath
		}
	}
	if len(segs) == 0 {
		return nil, errPath
	}
	return segs, nil
}

// appendSegment appends one segment in canonical form.
func appendSegment(dst []byte, s segment) []byte {
	if s.wildcard {
		return append(dst, "[*]"...)
	}
	return appendName(dst, s.name)
}

// appendName appends a member-name step: .name when the name allows it,
// else ["name"].
func appendName[T string | []byte](dst []byte, name T) []byte {
	plain := len(name) > 0
	for i := 0; i < len(name); i++ {
		if !isNameChar(name[i]) {
			plain = false
			break
		}
	}
	if plain {
		dst = append(dst, '.')
		return append(dst, name...)
	}
	dst = append(dst, '[')
	dst = appendString(dst, name)
	return append(dst, ']')
}

// canonicalPath returns the canonical spelling of segments.
func canonicalPath(segs []segment) string {
	b := []byte{'$'}
	for _, s := range segs {
		b = appendSegment(b, s)
	}
	return string(b)
}
