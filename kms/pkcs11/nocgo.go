//go:build !cgo

package pkcs11

import (
	"context"

	"github.com/tresorkms/tresor/kms"
)

// RootKey is an AES-256 key in a PKCS#11 token. This build has no cgo, so
// none can be opened.
type RootKey struct{}

var _ kms.RootKey = (*RootKey)(nil)

// Open returns [ErrNoCgo] (after checking the URI): this build has no cgo.
func Open(ctx context.Context, uri string, opts ...Option) (*RootKey, error) {
	if _, err := ParseURI(uri); err != nil {
		return nil, err
	}
	return nil, ErrNoCgo
}

// CreateRootKey returns [ErrNoCgo] (after checking the URI): this build has no cgo.
func CreateRootKey(ctx context.Context, uri string, opts ...Option) error {
	if _, err := ParseURI(uri); err != nil {
		return err
	}
	return ErrNoCgo
}

// ID returns "".
func (k *RootKey) ID() string { return "" }

// Wrap returns [ErrNoCgo].
func (k *RootKey) Wrap(context.Context, []byte, []byte) ([]byte, error) { return nil, ErrNoCgo }

// Unwrap returns [ErrNoCgo].
func (k *RootKey) Unwrap(context.Context, []byte, []byte) ([]byte, error) { return nil, ErrNoCgo }

// Close returns nil.
func (k *RootKey) Close() error { return nil }

// Calls returns 0.
func (k *RootKey) Calls() uint64 { return 0 }

// Stats returns zeros.
func (k *RootKey) Stats() Stats { return Stats{} }
