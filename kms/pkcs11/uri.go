package pkcs11

import (
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/tresorkms/tresor/kms"
)

// URI is a parsed, validated PKCS#11 root-key URI (RFC 7512). Make one with
// [ParseURI]; [URI.String] gives back its canonical form.
//
// Recognized path attributes: token and object (both required), id, serial,
// manufacturer, model, and type (only "secret-key"). Recognized query
// attributes: module-path and pin-source (both required). pin-value is
// refused, and so are module-name, slot-id, slot-*, library-* and vendor
// attributes: tresor names a token by label (serial, manufacturer and model
// narrow it down) because slot numbers change between boots.
type URI struct {
	// Token is the token label (CKA_LABEL of the token, at most 32 bytes).
	Token string
	// Object is the root key's CKA_LABEL.
	Object string
	// ID is the root key's CKA_ID, if the URI names one.
	ID []byte
	// Serial, Manufacturer and Model narrow the token down, if set.
	Serial, Manufacturer, Model string
	// ModulePath is the absolute path of the PKCS#11 module.
	ModulePath string
	// PINSource is the absolute path of the file holding the user PIN.
	PINSource string
}

// pchar reports whether c may appear unencoded in an RFC 7512 path attribute
// value; qchar, in a query attribute value.
func pchar(c byte) bool { return unreserved(c) || strings.IndexByte(":[]@!$'()*+,=&", c) >= 0 }
func qchar(c byte) bool { return unreserved(c) || strings.IndexByte(":[]@!$'()*+,=/?|", c) >= 0 }

func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func invalidURI(format string, args ...any) error {
	return fmt.Errorf("%w: pkcs11: "+format, append([]any{kms.ErrInvalidURI}, args...)...)
}

// ParseURI parses and validates a root-key URI such as
//
//	pkcs11:token=tresor;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tresor/pin
//
// Attribute values are percent-decoded per RFC 7512. pin-source is an
// absolute path or a file: URI (file:/p, file:///p, file://localhost/p; the
// path is taken as is, with no second decoding). Errors wrap
// kms.ErrInvalidURI and never quote attribute values, so a PIN pasted into a
// URI does not reach a log.
func ParseURI(s string) (URI, error) {
	const scheme = "pkcs11:"
	if len(s) < len(scheme) || !strings.EqualFold(s[:len(scheme)], scheme) {
		return URI{}, invalidURI("the URI does not start with %q", scheme)
	}
	rest := s[len(scheme):]
	if strings.IndexByte(rest, '#') >= 0 {
		return URI{}, invalidURI("the URI has a fragment ('#'), which RFC 7512 does not allow")
	}
	path, query, _ := strings.Cut(rest, "?")

	var u URI
	seen := map[string]bool{}
	var haveID bool
	if path != "" {
		for i, attr := range strings.Split(path, ";") {
			name, raw, ok := strings.Cut(attr, "=")
			if !ok || name == "" {
				return URI{}, invalidURI("path attribute %d is not name=value", i+1)
			}
			if seen[name] {
				return URI{}, invalidURI("path attribute %q appears twice", name)
			}
			seen[name] = true
			val, err := decode(name, raw, pchar)
			if err != nil {
				return URI{}, err
			}
			switch name {
			case "token":
				u.Token = val
			case "object":
				u.Object = val
			case "id":
				u.ID, haveID = []byte(val), true
			case "serial":
				u.Serial = val
			case "manufacturer":
				u.Manufacturer = val
			case "model":
				u.Model = val
			case "type":
				if val != "secret-key" {
					return URI{}, invalidURI("type must be secret-key: a root key is an AES secret key")
				}
			case "slot-id", "slot-description", "slot-manufacturer":
				return URI{}, invalidURI("path attribute %q is not supported: slots are renumbered between boots; name the token by label (token=) and, if needed, serial=", name)
			case "library-manufacturer", "library-description", "library-version":
				return URI{}, invalidURI("path attribute %q is not supported: name the module with module-path=", name)
			default:
				return URI{}, invalidURI("unknown path attribute %q", name)
			}
		}
	}
	if query != "" {
		for i, attr := range strings.Split(query, "&") {
			name, raw, ok := strings.Cut(attr, "=")
			if !ok || name == "" {
				return URI{}, invalidURI("query attribute %d is not name=value", i+1)
			}
			if name == "pin-value" {
				return URI{}, invalidURI("pin-value is refused: a PIN in a URI ends up in configuration dumps, logs and process lists; put it in a 0600 file and name it with pin-source=")
			}
			if seen[name] {
				return URI{}, invalidURI("query attribute %q appears twice", name)
			}
			seen[name] = true
			val, err := decode(name, raw, qchar)
			if err != nil {
				return URI{}, err
			}
			switch name {
			case "module-path":
				u.ModulePath = val
			case "pin-source":
				u.PINSource = val
			case "module-name":
				return URI{}, invalidURI("module-name is not supported: give the module's absolute path with module-path=")
			default:
				return URI{}, invalidURI("unknown query attribute %q", name)
			}
		}
	}

	switch {
	case u.Token == "":
		return URI{}, invalidURI("token= (the token label) is required")
	case len(u.Token) > 32:
		return URI{}, invalidURI("token label is %d bytes; PKCS#11 token labels have at most 32", len(u.Token))
	case u.Object == "":
		return URI{}, invalidURI("object= (the root key's label) is required")
	case haveID && len(u.ID) == 0:
		return URI{}, invalidURI("id= is empty; leave it out or give the key's CKA_ID")
	case len(u.Serial) > 16:
		return URI{}, invalidURI("serial is %d bytes; PKCS#11 serial numbers have at most 16", len(u.Serial))
	case len(u.Manufacturer) > 32 || len(u.Model) > 16:
		return URI{}, invalidURI("manufacturer (at most 32 bytes) or model (at most 16) is too long")
	case u.ModulePath == "":
		return URI{}, invalidURI("module-path= (the PKCS#11 module's absolute path) is required")
	case !filepath.IsAbs(u.ModulePath):
		return URI{}, invalidURI("module-path is not an absolute path")
	case u.PINSource == "":
		return URI{}, invalidURI("pin-source= (the absolute path of the user PIN file) is required")
	}
	for _, s := range []struct{ name, val string }{{"token", u.Token}, {"object", u.Object}, {"serial", u.Serial}, {"manufacturer", u.Manufacturer}, {"model", u.Model}} {
		if !utf8.ValidString(s.val) || strings.IndexByte(s.val, 0) >= 0 {
			return URI{}, invalidURI("%s is not valid UTF-8 text", s.name)
		}
	}
	if strings.IndexByte(u.ModulePath, 0) >= 0 {
		return URI{}, invalidURI("module-path contains a NUL byte")
	}
	pin, err := pinPath(u.PINSource)
	if err != nil {
		return URI{}, err
	}
	u.PINSource = pin
	return u, nil
}

// decode validates raw against allowed and percent-decodes it.
func decode(name, raw string, allowed func(byte) bool) (string, error) {
	if strings.IndexByte(raw, '%') < 0 {
		for i := 0; i < len(raw); i++ {
			if !allowed(raw[i]) {
				return "", invalidURI("attribute %q: character %d must be percent-encoded", name, i+1)
			}
		}
		return raw, nil
	}
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '%':
			if i+2 >= len(raw) || !ishex(raw[i+1]) || !ishex(raw[i+2]) {
				return "", invalidURI("attribute %q: malformed percent-encoding at character %d", name, i+1)
			}
			b.WriteByte(unhex(raw[i+1])<<4 | unhex(raw[i+2]))
			i += 2
		case allowed(c):
			b.WriteByte(c)
		default:
			return "", invalidURI("attribute %q: character %d must be percent-encoded", name, i+1)
		}
	}
	return b.String(), nil
}

func ishex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// pinPath turns a pin-source value into an absolute file path.
func pinPath(src string) (string, error) {
	p := src
	if len(p) >= 5 && strings.EqualFold(p[:5], "file:") {
		p = p[5:]
		switch {
		case strings.HasPrefix(p, "///"):
			p = p[2:]
		case len(p) >= 11 && strings.EqualFold(p[:11], "//localhost") && strings.HasPrefix(p[11:], "/"):
			p = p[11:]
		case strings.HasPrefix(p, "//"):
			return "", invalidURI("pin-source: file: URIs on other hosts are not supported")
		}
	} else if strings.HasPrefix(p, "|") {
		return "", invalidURI("pin-source: commands (|...) are not supported; give the absolute path of a PIN file")
	} else if i := strings.IndexByte(p, ':'); i > 0 && !strings.ContainsRune(p[:i], '/') {
		return "", invalidURI("pin-source: only file paths and file: URIs are supported")
	}
	if !filepath.IsAbs(p) {
		return "", invalidURI("pin-source is not an absolute path: it names the file holding the PIN, not the PIN")
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", invalidURI("pin-source contains a NUL byte")
	}
	return filepath.Clean(p), nil
}

// String returns the canonical URI: token, serial, manufacturer, model,
// object and id in the path (id always fully percent-encoded), module-path
// and pin-source in the query. ParseURI(u.String()) gives u back.
func (u URI) String() string {
	var b strings.Builder
	b.WriteString("pkcs11:")
	b.WriteString(u.keyPath())
	b.WriteString("?module-path=")
	b.WriteString(escape(u.ModulePath, qchar))
	b.WriteString("&pin-source=")
	b.WriteString(escape(u.PINSource, qchar))
	return b.String()
}

// keyPath is the path part naming the key, without the scheme.
func (u URI) keyPath() string {
	var b strings.Builder
	b.WriteString("token=")
	b.WriteString(escape(u.Token, pchar))
	for _, a := range []struct{ name, val string }{{"serial", u.Serial}, {"manufacturer", u.Manufacturer}, {"model", u.Model}} {
		if a.val != "" {
			b.WriteString(";" + a.name + "=")
			b.WriteString(escape(a.val, pchar))
		}
	}
	b.WriteString(";object=")
	b.WriteString(escape(u.Object, pchar))
	if len(u.ID) > 0 {
		b.WriteString(";id=")
		b.WriteString(escapeAll(u.ID))
	}
	return b.String()
}

// keyID is the stable identifier of a key: token label, object label and
// CKA_ID, never the module path or PIN source, which are deployment details
// that may change without changing the key.
func keyID(token, object string, id []byte) string {
	s := "pkcs11:token=" + escape(token, pchar) + ";object=" + escape(object, pchar)
	if len(id) > 0 {
		s += ";id=" + escapeAll(id)
	}
	return s
}

const upperhex = "0123456789ABCDEF"

func escape(s string, allowed func(byte) bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; allowed(c) && c != '%' {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(upperhex[c>>4])
			b.WriteByte(upperhex[c&15])
		}
	}
	return b.String()
}

func escapeAll(p []byte) string {
	var b strings.Builder
	for _, c := range p {
		b.WriteByte('%')
		b.WriteByte(upperhex[c>>4])
		b.WriteByte(upperhex[c&15])
	}
	return b.String()
}
