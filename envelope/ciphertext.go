package envelope

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
)

// Ciphertext format, version 1 (binary):
//
//	offset  size  field
//	0       1     format version, 0x01
//	1       1     length n of the key name, 1..63
//	2       n     key name, ASCII
//	2+n     4     key version, big-endian
//	6+n     ...   Tink ciphertext (5-byte Tink prefix, then the AEAD output)
//
// The header (bytes 0 to 6+n) is authenticated: the AEAD's associated data is
// the header followed by the caller's associated data. The header is
// self-delimiting, so the concatenation is unambiguous.
//
// The string form is StringPrefix followed by the binary form in unpadded
// base64url.
const (
	formatV1 byte = 0x01
	// StringPrefix starts every ciphertext in string form; "v1" is the string
	// form's version.
	StringPrefix = "tresor:v1:"
	// tinkPrefixSize is the size of Tink's output prefix: 0x01 and a key id.
	tinkPrefixSize = 5
	// minTinkCiphertext is the shortest Tink output: prefix, then for SIV a
	// 16-byte tag (GCM adds a 12-byte nonce and a 16-byte tag).
	minTinkCiphertext = tinkPrefixSize + 16
)

// Ciphertext is a parsed ciphertext. Header names the key and version; it is
// not authenticated until the ciphertext is decrypted.
type Ciphertext struct {
	KeyName    string
	KeyVersion uint32
	header     []byte
	body       []byte // Tink ciphertext
}

// appendHeader appends the header for key name and version to dst.
func appendHeader(dst []byte, name string, version uint32) []byte {
	dst = append(dst, formatV1, byte(len(name)))
	dst = append(dst, name...)
	return binary.BigEndian.AppendUint32(dst, version)
}

// ParseCiphertext parses the binary form. It checks structure only; any
// error wraps ErrDecrypt and says nothing more.
func ParseCiphertext(b []byte) (Ciphertext, error) {
	p, ok := parse(b)
	if !ok {
		return Ciphertext{}, ErrDecrypt
	}
	return Ciphertext{KeyName: string(p.name), KeyVersion: p.version, header: p.header, body: p.body}, nil
}

// parsed is a ciphertext's parts, aliasing the input.
type parsed struct {
	name         []byte
	version      uint32
	header, body []byte
}

func parse(b []byte) (parsed, bool) {
	if len(b) < 2 || b[0] != formatV1 {
		return parsed{}, false
	}
	n := int(b[1])
	if n == 0 || n > maxKeyNameLen || len(b) < 2+n+4+minTinkCiphertext {
		return parsed{}, false
	}
	name := b[2 : 2+n]
	if !validKeyNameBytes(name) {
		return parsed{}, false
	}
	return parsed{name: name, version: binary.BigEndian.Uint32(b[2+n:]), header: b[:2+n+4], body: b[2+n+4:]}, true
}

// FormatCiphertext returns the printable string form of a binary ciphertext.
func FormatCiphertext(b []byte) string {
	out := make([]byte, len(StringPrefix)+base64.RawURLEncoding.EncodedLen(len(b)))
	copy(out, StringPrefix)
	base64.RawURLEncoding.Encode(out[len(StringPrefix):], b)
	return string(out)
}

// DecodeCiphertext returns the binary form of a ciphertext in string form.
// Any error wraps ErrDecrypt.
func DecodeCiphertext(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, StringPrefix)
	if !ok {
		return nil, fmt.Errorf("%w", ErrDecrypt)
	}
	// Strict decoding and a length check make the string form canonical:
	// one ciphertext has exactly one spelling, which equality lookups on
	// deterministic ciphertexts rely on.
	b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil || base64.RawURLEncoding.EncodedLen(len(b)) != len(rest) {
		return nil, fmt.Errorf("%w", ErrDecrypt)
	}
	return b, nil
}

// associatedData returns header || aad in a new slice.
func associatedData(header, aad []byte) []byte {
	out := make([]byte, 0, len(header)+len(aad))
	out = append(out, header...)
	return append(out, aad...)
}
