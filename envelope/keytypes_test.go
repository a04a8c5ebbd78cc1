package envelope

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

func TestMAC(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "bidx", store.KeyTypeHMACSHA256)
	f.createKey(t, "gcm", store.KeyTypeAES256GCM)

	tag1, ref1, err := f.ring.MAC(ctx, "bidx", []byte("DE89370400440532013000"))
	if err != nil {
		t.Fatalf("MAC(bidx) err = %v, want nil", err)
	}
	if len(tag1) != sha256.Size || ref1 != (KeyRef{Name: "bidx", Version: 1}) {
		t.Fatalf("MAC(bidx) = %d bytes, %+v; want 32 bytes, bidx v1", len(tag1), ref1)
	}
	again, _, err := f.ring.MAC(ctx, "bidx", []byte("DE89370400440532013000"))
	if err != nil || !hmac.Equal(again, tag1) {
		t.Fatalf("MAC(bidx) twice differs (err %v): a blind index must be deterministic", err)
	}
	other, _, _ := f.ring.MAC(ctx, "bidx", []byte("DE89370400440532013001"))
	if hmac.Equal(other, tag1) {
		t.Fatal("MAC of two values is equal")
	}
	if _, err := f.ring.RotateKey(ctx, "bidx"); err != nil {
		t.Fatalf("RotateKey(bidx) err = %v, want nil", err)
	}
	tag2, ref2, err := f.ring.MAC(ctx, "bidx", []byte("DE89370400440532013000"))
	if err != nil || ref2.Version != 2 || hmac.Equal(tag2, tag1) {
		t.Fatalf("MAC after rotation = v%d (err %v), equal to v1: %v; want v2, a new tag", ref2.Version, err, hmac.Equal(tag2, tag1))
	}
	old, err := f.ring.MACVersion(ctx, "bidx", 1, []byte("DE89370400440532013000"))
	if err != nil || !hmac.Equal(old, tag1) {
		t.Fatalf("MACVersion(bidx, 1) err = %v, equal to the v1 tag: %v; want nil, true", err, hmac.Equal(old, tag1))
	}
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"MAC with a GCM key", func() error { _, _, err := f.ring.MAC(ctx, "gcm", []byte("x")); return err }, ErrKeyTypeMismatch},
		{"MACVersion of a missing version", func() error { _, err := f.ring.MACVersion(ctx, "bidx", 9, []byte("x")); return err }, ErrVersionNotAllowed},
		{"MAC with a missing key", func() error { _, _, err := f.ring.MAC(ctx, "nope", []byte("x")); return err }, ErrKeyNotFound},
		{"Encrypt with an HMAC key", func() error { _, _, err := f.ring.Encrypt(ctx, "bidx", []byte("x"), nil); return err }, ErrKeyTypeMismatch},
		{"GenerateDataKey with an HMAC key", func() error { _, err := f.ring.GenerateDataKey(ctx, "bidx", nil); return err }, ErrKeyTypeMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, tc.want) {
				t.Errorf("%s err = %v, want %v", tc.name, err, tc.want)
			}
		})
	}
	if _, err := f.ring.DisableKey(ctx, "bidx"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.ring.MAC(ctx, "bidx", []byte("x")); !errors.Is(err, ErrKeyDisabled) {
		t.Errorf("MAC(disabled key) err = %v, want ErrKeyDisabled", err)
	}
}

func TestTokenizationCipher(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "acct", store.KeyTypeFF1AES256)
	f.createKey(t, "gcm", store.KeyTypeAES256GCM)

	b, ref, err := f.ring.TokenizationCipher(ctx, "acct")
	if err != nil || ref != (KeyRef{Name: "acct", Version: 1}) || b.BlockSize() != 16 {
		t.Fatalf("TokenizationCipher(acct) = %v, %+v, %v; want an AES cipher, acct v1, nil", b, ref, err)
	}
	in := []byte("0123456789abcdef")
	out1, out2 := make([]byte, 16), make([]byte, 16)
	b.Encrypt(out1, in)
	// A keyring that loads the key again (another replica) gets the same
	// cipher: the material is the stored keyset's.
	other, err := New(f.store, f.kek, Options{Now: f.now.Now, AfterFunc: f.now.AfterFunc})
	if err != nil {
		t.Fatal(err)
	}
	b2, _, err := other.TokenizationCipher(ctx, "acct")
	if err != nil {
		t.Fatalf("TokenizationCipher(acct) on a second keyring err = %v", err)
	}
	b2.Encrypt(out2, in)
	if !bytes.Equal(out1, out2) || bytes.Equal(out1, in) {
		t.Fatal("two keyrings' FF1 ciphers differ, or the cipher is the identity")
	}

	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"rotate an FF1 key", func() error { _, err := f.ring.RotateKey(ctx, "acct"); return err }, ErrNotRotatable},
		{"create an FF1 key with a rotation period", func() error {
			_, err := f.ring.CreateKey(ctx, KeySpec{Name: "acct2", Type: store.KeyTypeFF1AES256, RotationPeriod: 24 * time.Hour})
			return err
		}, ErrInvalidArgument},
		{"FF1 cipher of a GCM key", func() error { _, _, err := f.ring.TokenizationCipher(ctx, "gcm"); return err }, ErrKeyTypeMismatch},
		{"Encrypt with an FF1 key", func() error { _, _, err := f.ring.Encrypt(ctx, "acct", []byte("x"), nil); return err }, ErrKeyTypeMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, tc.want) {
				t.Errorf("%s err = %v, want %v", tc.name, err, tc.want)
			}
		})
	}
	// A ciphertext forged to name the FF1 key does not open.
	ct, _, err := f.ring.Encrypt(ctx, "gcm", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	forged := appendHeader(nil, "acct", 1)
	p, _ := parse(ct)
	forged = append(forged, p.body...)
	if _, _, err := f.ring.Decrypt(ctx, forged, nil); !errors.Is(err, ErrDecrypt) {
		t.Errorf("Decrypt(ciphertext naming an FF1 key) err = %v, want ErrDecrypt", err)
	}
}
