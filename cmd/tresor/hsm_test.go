package main

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms/pkcs11"
)

// TestWarmKeyMakesNoHSMCall counts the operations sent to a real SoftHSM2
// token: after the first use of a key, 100,000 Decrypt calls make none.
func TestWarmKeyMakesNoHSMCall(t *testing.T) {
	ctx := context.Background()
	rk, err := pkcs11.Open(ctx, devCfg.RootKey.URI)
	if err != nil {
		t.Fatalf("pkcs11.Open() err = %v", err)
	}
	defer rk.Close()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ring, err := envelope.New(st, rk, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: "hot", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatalf("CreateKey() err = %v", err)
	}
	// A second keyring over the same store starts cold: its first use unwraps.
	cold, err := envelope.New(st, rk, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ct, _, err := ring.Encrypt(ctx, "hot", []byte("card 4111"), nil)
	if err != nil {
		t.Fatal(err)
	}
	before := rk.Calls()
	if _, _, err := cold.Decrypt(ctx, ct, nil); err != nil {
		t.Fatalf("first Decrypt() err = %v", err)
	}
	if got := rk.Calls() - before; got != 1 {
		t.Errorf("first Decrypt on a cold keyring made %d HSM calls, want 1 unwrap", got)
	}
	before = rk.Calls()
	const n = 100_000
	for i := range n {
		if _, _, err := cold.Decrypt(ctx, ct, nil); err != nil {
			t.Fatalf("Decrypt #%d err = %v", i, err)
		}
	}
	if got := rk.Calls() - before; got != 0 {
		t.Errorf("%d Decrypt calls on a warm key made %d HSM calls, want 0", n, got)
	}
	t.Logf("%d Decrypt calls on a warm key: %d HSM calls (token counter), cache %+v", n, rk.Calls()-before, cold.Cache().Stats())
}
