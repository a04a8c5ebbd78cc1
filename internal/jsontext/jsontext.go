// Package jsontext writes JSON strings without encoding/json: one escaping,
// byte for byte stable, shared by the writers whose output is hashed or
// compared (the audit log's canonical lines, the field-protection document
// writer). Reach for AppendString.
//
// The escaping must never change: audit lines already written are hashed
// as this package spells them.
package jsontext

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string: quotes, backslashes and control
// characters escaped (\n, \r, \t by name, the others as \u00XX), every
// other byte as is. s must be valid UTF-8 for the result to be valid JSON.
func AppendString[T string | []byte](dst []byte, s T) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
