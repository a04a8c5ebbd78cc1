//go:build noawskms

package awskms

import (
	"context"

	"github.com/tresorkms/tresor/kms"
)

// RootKey is a symmetric KMS key in AWS KMS. This build has no AWS SDK, so
// none can be opened.
type RootKey struct{}

var _ kms.RootKey = (*RootKey)(nil)

// Open returns [ErrNotBuilt] (after checking the URI): this build has no AWS SDK.
func Open(ctx context.Context, uri string, opts ...Option) (*RootKey, error) {
	if _, err := ParseURI(uri); err != nil {
		return nil, err
	}
	return nil, ErrNotBuilt
}

// CreateRootKey returns [ErrNotBuilt] (after checking the URI): this build has no AWS SDK.
func CreateRootKey(ctx context.Context, uri string, opts ...Option) (string, error) {
	if _, err := parseURI(uri, true); err != nil {
		return "", err
	}
	return "", ErrNotBuilt
}

// ID returns "".
func (k *RootKey) ID() string { return "" }

// ARN returns "".
func (k *RootKey) ARN() string { return "" }

// Wrap returns [ErrNotBuilt].
func (k *RootKey) Wrap(context.Context, []byte, []byte) ([]byte, error) { return nil, ErrNotBuilt }

// Unwrap returns [ErrNotBuilt].
func (k *RootKey) Unwrap(context.Context, []byte, []byte) ([]byte, error) { return nil, ErrNotBuilt }

// Close returns nil.
func (k *RootKey) Close() error { return nil }

// Stats returns zeros.
func (k *RootKey) Stats() Stats { return Stats{} }
