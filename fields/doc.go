// Package fields protects JSON documents field by field according to a
// classification schema, and reveals them again under a caller's policy.
//
// Reach for these first:
//
//   - [ParseSchema] reads a schema (YAML or JSON) and checks it on its own;
//     [Schema.Validate] then checks that every key it names exists and has the
//     right type; [Schema.Marshal] gives the canonical form to store.
//   - [New] builds a [Protector] over the keyring (*envelope.Keyring satisfies
//     [Keys]); [Protector.Protect] protects a document, [Protector.Reveal]
//     reveals one field by field as a caller's decide function allows.
//   - [Protector.BlindIndex] computes the blind index of a lookup value, to
//     search documents protected with the blind_index protection.
//
// # Protections
//
//   - aead: the field's raw JSON bytes sealed with randomized AEAD; the output
//     is the keyring's ciphertext string (envelope.FormatCiphertext). The
//     associated data binds the schema name, the path pattern (for example
//     $.accounts[*].iban, so array elements may be reordered but a value
//     cannot move to another path) and the document id, so a field copied to
//     another path or another document does not reveal.
//   - deterministic: the same with an AES-SIV key, whose ciphertexts are
//     equal for equal values. Its associated data leaves out the document id:
//     equality lookups across documents need that.
//   - blind_index: aead, plus a keyed blind index (truncated HMAC-SHA256 of
//     the schema name, the path pattern and the normalized value) in a
//     sibling member named field+index_suffix, encoded "<key version>.<base64url>".
//   - tokenize: FF1 (NIST SP 800-38G) over the digits of a string, radix 10;
//     separators stay in place. Tokens are deterministic (tweak: schema name
//     and path pattern) and carry no key version: tokenization keys never
//     rotate.
//   - mask: irreversible; keeps the last characters, format-aware (card, iban,
//     email, digits, text).
//   - redact: irreversible; the value becomes the JSON string "[REDACTED]",
//     which keeps the document's shape.
//   - none: left as is, and inspected by the schema's detectors.
//
// The schema version is not bound to ciphertexts: a document protected under
// version 3 reveals under version 4 as long as its paths keep their tiers.
//
// # Documents
//
// A document is a JSON object. One over Options.MaxDocumentBytes is refused
// before it is parsed ([ErrDocumentTooLarge]); nesting deeper than
// Options.MaxDepth is refused as soon as the parser reaches it
// ([ErrDocumentTooDeep]); malformed JSON and duplicate member names give
// [ErrInvalidDocument]. Numbers and untouched strings are copied byte for
// byte and member order is kept; insignificant whitespace is not (the output
// is compact). A path missing from a document is skipped, and so is a null
// value. Unlisted scalar values take the default tier's protection.
//
// # Errors and secrets
//
// Errors and results name paths, tiers, keys and detectors, never values.
// Any failure to reveal a field (tampering, a field moved to another path or
// document, a key error) is the one opaque [ErrReveal], naming the path only.
package fields

import "errors"

var (
	// ErrInvalidSchema means a schema is malformed or inconsistent, or names a
	// key that is missing or of the wrong type.
	ErrInvalidSchema = errors.New("fields: invalid schema")
	// ErrInvalidDocument means a document is not a JSON object, is malformed,
	// or has a duplicate member name.
	ErrInvalidDocument = errors.New("fields: invalid document")
	// ErrDocumentTooLarge means a document exceeds Options.MaxDocumentBytes.
	ErrDocumentTooLarge = errors.New("fields: document too large")
	// ErrDocumentTooDeep means a document nests deeper than Options.MaxDepth.
	ErrDocumentTooDeep = errors.New("fields: document too deep")
	// ErrWrongType means a value does not fit its protection, for example an
	// object or too few digits for tokenize.
	ErrWrongType = errors.New("fields: value does not fit its protection")
	// ErrRejected means payload inspection found sensitive data in a field the
	// schema leaves public and the schema's inspection action is reject.
	ErrRejected = errors.New("fields: document rejected by inspection")
	// ErrReveal is the one opaque error for a field that could not be
	// revealed, whatever the reason.
	ErrReveal = errors.New("fields: field cannot be revealed")
)
