// Package secret holds values that must never be printed: plaintext, key
// bytes, PINs and tokens. Each type prints as [REDACTED] through fmt, log/slog,
// encoding/json and encoding (text), so a secret passed to a logger or an
// error by mistake stays secret.
//
// Wrap a value with [Bytes] or [String] as soon as it enters the program and
// unwrap it (with a plain conversion) only at the call that needs it.
package secret

import (
	"fmt"
	"log/slog"
)

// Redacted is what every secret prints as.
const Redacted = "[REDACTED]"

// Bytes is secret binary data, such as a data key or a plaintext.
type Bytes []byte

// String returns [REDACTED].
func (Bytes) String() string { return Redacted }

// GoString returns [REDACTED], so %#v hides the value too.
func (Bytes) GoString() string { return Redacted }

// Format prints [REDACTED] for every verb.
func (Bytes) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// LogValue hides the value from log/slog.
func (Bytes) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalJSON encodes the JSON string "[REDACTED]".
func (Bytes) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText returns [REDACTED].
func (Bytes) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// Wipe overwrites the bytes with zeros. Go's garbage collector may have copied
// them earlier; Wipe limits exposure, it does not guarantee erasure.
func (b Bytes) Wipe() { clear(b) }

// String is a secret text, such as a PIN or a bearer token.
type String string

// String returns [REDACTED].
func (String) String() string { return Redacted }

// GoString returns [REDACTED], so %#v hides the value too.
func (String) GoString() string { return Redacted }

// Format prints [REDACTED] for every verb.
func (String) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// LogValue hides the value from log/slog.
func (String) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalJSON encodes the JSON string "[REDACTED]".
func (String) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText returns [REDACTED].
func (String) MarshalText() ([]byte, error) { return []byte(Redacted), nil }
