// Package kms opens tresor's root keys. A root key (key-encryption key) wraps
// and unwraps the keysets of named keys and never leaves its provider: a
// PKCS#11 HSM (kms/pkcs11), AWS KMS (kms/awskms), or, for
// development only, a key file (kms/localkek).
//
// This package holds the [RootKey] interface and the errors every provider
// returns. To open a root key from its URI, reach for kms/provider.Open:
//
//	pkcs11:token=tresor;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tresor/pin
//	local-file:///var/lib/tresor/root.key
package kms

import (
	"context"
	"errors"
)

// Errors every provider wraps with %w.
var (
	// ErrClosed is returned by calls on a closed root key.
	ErrClosed = errors.New("kms: root key closed")
	// ErrUnwrap is the one opaque error for any failed unwrap: wrong
	// associated data, tampered input, or the wrong key. It never says which.
	ErrUnwrap = errors.New("kms: unwrap failed")
	// ErrUnavailable means the provider cannot be reached (HSM token gone,
	// KMS endpoint down). The call may succeed later.
	ErrUnavailable = errors.New("kms: provider unavailable")
	// ErrInvalidURI means a root-key URI is malformed or names an unknown provider.
	ErrInvalidURI = errors.New("kms: invalid root key URI")
)

// RootKey is a key-encryption key held by a provider. Implementations are safe
// for concurrent use.
type RootKey interface {
	// ID names the root key stably; it is bound into every keyset it wraps.
	ID() string
	// Wrap encrypts plaintext (a serialized keyset) with associated data.
	Wrap(ctx context.Context, plaintext, associatedData []byte) ([]byte, error)
	// Unwrap decrypts what Wrap returned, given the same associated data.
	Unwrap(ctx context.Context, wrapped, associatedData []byte) ([]byte, error)
	// Close releases sessions and handles. Calls after Close fail with ErrClosed.
	Close() error
}
