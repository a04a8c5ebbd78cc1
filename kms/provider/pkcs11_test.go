//go:build cgo

package provider

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/kms/pkcs11"
	"github.com/tresorkms/tresor/softhsm"
)

// TestOpenPKCS11 opens a root key in a SoftHSM2 token through Open. It fails,
// not skips, without SoftHSM2.
func TestOpenPKCS11(t *testing.T) {
	if err := softhsm.Available(); err != nil {
		t.Fatalf("softhsm.Available() err = %v, want nil", err)
	}
	ctx := context.Background()
	tok, err := softhsm.NewToken(ctx, t.TempDir(), "provider-test")
	if err != nil {
		t.Fatalf("softhsm.NewToken err = %v, want nil", err)
	}
	if err := tok.SetProcessEnv(); err != nil {
		t.Fatalf("SetProcessEnv() err = %v, want nil", err)
	}
	uri := tok.URI("root-1")
	if err := pkcs11.CreateRootKey(ctx, uri); err != nil {
		t.Fatalf("pkcs11.CreateRootKey(%s) err = %v, want nil", uri, err)
	}
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
}
