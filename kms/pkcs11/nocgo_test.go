//go:build !cgo

package pkcs11

import (
	"context"
	"errors"
	"testing"

	"github.com/tresorkms/tresor/kms"
)

func TestNoCgo(t *testing.T) {
	ctx := context.Background()
	const uri = "pkcs11:token=t;object=o?module-path=/m.so&pin-source=/p"
	if _, err := Open(ctx, uri); !errors.Is(err, ErrNoCgo) || err.Error() != "tresor was built without cgo; PKCS#11 is unavailable" {
		t.Errorf("Open(%s) err = %v, want ErrNoCgo", uri, err)
	}
	if err := CreateRootKey(ctx, uri); !errors.Is(err, ErrNoCgo) {
		t.Errorf("CreateRootKey(%s) err = %v, want ErrNoCgo", uri, err)
	}
	if _, err := Open(ctx, "pkcs11:object=o"); !errors.Is(err, kms.ErrInvalidURI) {
		t.Errorf("Open(bad URI) err = %v, want kms.ErrInvalidURI", err)
	}
}
