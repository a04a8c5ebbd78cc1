//go:build cgo

package pkcs11

import (
	"context"
	"testing"

	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/kmstest"
)

func openRoot(t testing.TB, opts ...Option) *RootKey {
	t.Helper()
	k, err := Open(context.Background(), rootURI, opts...)
	if err != nil {
		t.Fatalf("Open(%s) err = %v, want nil", rootURI, err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

func TestConformance(t *testing.T) {
	kmstest.Run(t, func(t *testing.T) kms.RootKey { return openRoot(t) })
}
