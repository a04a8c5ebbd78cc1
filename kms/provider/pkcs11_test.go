//go:build cgo

package provider

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/tresorkms/tresor/kms/pkcs11"
	"github.com/tresorkms/tresor/softhsm"
)

// testToken makes, once per process (SoftHSM2 takes one configuration per
// process), a token under tempDir holding the key root-1.
var testToken = sync.OnceValues(func() (*softhsm.Token, error) {
	if err := softhsm.Available(); err != nil {
		return nil, err
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "tresor-provider-test-")
	if err != nil {
		return nil, err
	}
	tempDirs = append(tempDirs, dir)
	tok, err := softhsm.NewToken(ctx, dir, "provider-test")
	if err != nil {
		return nil, err
	}
	if err := tok.SetProcessEnv(); err != nil {
		return nil, err
	}
	return tok, pkcs11.CreateRootKey(ctx, tok.URI("root-1"))
})

// TestOpenPKCS11 opens a root key in a SoftHSM2 token through Open. It fails,
// not skips, without SoftHSM2.
func TestOpenPKCS11(t *testing.T) {
	ctx := context.Background()
	tok, err := testToken()
	if err != nil {
		t.Fatalf("making a SoftHSM2 token: %v", err)
	}
	uri := tok.URI("root-1")
	k, err := Open(ctx, uri, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Open(%s) err = %v, want nil", uri, err)
	}
	defer k.Close()
	if _, ok := k.(*pkcs11.RootKey); !ok || !strings.HasPrefix(k.ID(), "pkcs11:token=provider-test;object=root-1") {
		t.Errorf("Open(%s) = %T with ID %q, want a *pkcs11.RootKey for provider-test/root-1", uri, k, k.ID())
	}
	w, err := k.Wrap(ctx, []byte("keyset"), []byte("aad"))
	if err != nil {
		t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
	}
	if got, err := k.Unwrap(ctx, w, []byte("aad")); err != nil || string(got) != "keyset" {
		t.Errorf("Unwrap(Wrap(pt, aad), aad) = %q, %v, want \"keyset\", nil", got, err)
	}

	missing := "pkcs11:token=t;object=o?module-path=/nonexistent/lib.so&pin-source=" + tok.PINFile
	if _, err := Open(ctx, missing, nil); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "/nonexistent/lib.so") {
		t.Errorf("Open(%s) err = %v, want fs.ErrNotExist naming the module", missing, err)
	}
}
