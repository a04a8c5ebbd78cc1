package envelope

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/tresorkms/tresor/internal/store"
)

func TestKeySealerRoundTrip(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "gcm", store.KeyTypeAES256GCM)
	f.createKey(t, "siv", store.KeyTypeAES256SIV)
	tests := []struct {
		key       string
		prefix    []byte // what dst already holds
		plaintext []byte
		aad       []byte
	}{
		{"gcm", nil, []byte("x"), nil},
		{"gcm", []byte("head"), []byte("4111 1111 1111 1111"), []byte("customer=42")},
		{"siv", nil, []byte("jane@example.com"), []byte("ctx")},
		{"siv", []byte("head"), []byte("x"), nil},
	}
	for _, tt := range tests {
		s, err := f.ring.Sealer(ctx, tt.key)
		if err != nil {
			t.Fatalf("Sealer(%q) err = %v, want nil", tt.key, err)
		}
		dst := append([]byte(nil), tt.prefix...)
		out, ref, err := s.AppendEncrypt(ctx, dst, tt.plaintext, tt.aad)
		if err != nil {
			t.Fatalf("AppendEncrypt(%q) err = %v, want nil", tt.key, err)
		}
		if !bytes.HasPrefix(out, tt.prefix) {
			t.Errorf("AppendEncrypt(%q) lost what dst held", tt.key)
		}
		ct := out[len(tt.prefix):]
		if ref != (KeyRef{Name: tt.key, Version: 1}) {
			t.Errorf("AppendEncrypt(%q) ref = %+v, want %s version 1", tt.key, ref, tt.key)
		}
		pt, dref, err := f.ring.Decrypt(ctx, ct, tt.aad)
		if err != nil || !bytes.Equal(pt, tt.plaintext) || dref != ref {
			t.Errorf("Decrypt(AppendEncrypt(%q)) = %q, %+v, %v; want the plaintext, %+v, nil", tt.key, pt, dref, err, ref)
		}
		// Decrypt's twin opens Encrypt's output and the sealer's alike.
		want, _, err := f.ring.Encrypt(ctx, tt.key, tt.plaintext, tt.aad)
		if err != nil {
			t.Fatalf("Encrypt(%q) err = %v, want nil", tt.key, err)
		}
		if tt.key == "siv" && !bytes.Equal(want, ct) {
			t.Errorf("AppendEncrypt(%q) differs from Encrypt of the same value", tt.key)
		}
		if len(want) != len(ct) {
			t.Errorf("AppendEncrypt(%q) is %d bytes, Encrypt %d", tt.key, len(ct), len(want))
		}
		o := f.ring.Opener()
		for _, c := range [][]byte{ct, want} {
			got, oref, err := o.AppendDecrypt(ctx, []byte("x"), c, tt.aad)
			if err != nil || !bytes.Equal(got, append([]byte("x"), tt.plaintext...)) || oref != ref {
				t.Errorf("AppendDecrypt(%q) = %q, %+v, %v; want x+plaintext, %+v, nil", tt.key, got, oref, err, ref)
			}
		}
		if _, _, err := o.AppendDecrypt(ctx, nil, ct, []byte("other")); !errors.Is(err, ErrDecrypt) {
			t.Errorf("AppendDecrypt(%q, wrong aad) err = %v, want ErrDecrypt", tt.key, err)
		}
		bad := bytes.Clone(ct)
		bad[len(bad)-1] ^= 1
		if _, _, err := o.AppendDecrypt(ctx, nil, bad, tt.aad); !errors.Is(err, ErrDecrypt) {
			t.Errorf("AppendDecrypt(%q, tampered) err = %v, want ErrDecrypt", tt.key, err)
		}
	}
}

func TestKeySealerRefuses(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "gcm", store.KeyTypeAES256GCM)
	f.createKey(t, "mac", store.KeyTypeHMACSHA256)
	f.createKey(t, "off", store.KeyTypeAES256GCM)
	if _, err := f.ring.DisableKey(ctx, "off"); err != nil {
		t.Fatalf("DisableKey() err = %v, want nil", err)
	}
	tests := []struct {
		key  string
		want error
	}{
		{"Bad Name", ErrInvalidKeyName},
		{"missing", ErrKeyNotFound},
		{"mac", ErrKeyTypeMismatch},
		{"off", ErrKeyDisabled},
	}
	for _, tt := range tests {
		if _, err := f.ring.Sealer(ctx, tt.key); !errors.Is(err, tt.want) {
			t.Errorf("Sealer(%q) err = %v, want %v", tt.key, err, tt.want)
		}
	}
	s, err := f.ring.Sealer(ctx, "gcm")
	if err != nil {
		t.Fatalf("Sealer() err = %v, want nil", err)
	}
	for _, pt := range [][]byte{nil, make([]byte, f.ring.MaxPlaintextSize()+1)} {
		out, _, err := s.AppendEncrypt(ctx, []byte("x"), pt, nil)
		if !errors.Is(err, ErrInvalidArgument) || string(out) != "x" {
			t.Errorf("AppendEncrypt(%d bytes) = %q, %v; want dst unchanged, ErrInvalidArgument", len(pt), out, err)
		}
	}
}

func TestKeyOpenerStateErrors(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "gcm", store.KeyTypeAES256GCM)
	ct, _, err := f.ring.Encrypt(ctx, "gcm", []byte("pan"), nil)
	if err != nil {
		t.Fatalf("Encrypt() err = %v, want nil", err)
	}
	if _, err := f.ring.DisableKey(ctx, "gcm"); err != nil {
		t.Fatalf("DisableKey() err = %v, want nil", err)
	}
	_, _, want := f.ring.Decrypt(ctx, ct, nil)
	out, _, err := f.ring.Opener().AppendDecrypt(ctx, make([]byte, 0, 64), ct, nil)
	if !errors.Is(err, ErrKeyDisabled) || !errors.Is(want, ErrKeyDisabled) || len(out) != 0 {
		t.Errorf("AppendDecrypt(disabled key) = %q, %v; want nothing, %v", out, err, want)
	}
	if bytes.Contains(out[:cap(out)], []byte("pan")) {
		t.Errorf("AppendDecrypt(disabled key) left the plaintext in dst's spare capacity")
	}
}

// The sealer takes one use per value, so usage limits and rotation behave
// exactly as with Encrypt.
func TestKeySealerCountsUses(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{UsageBlock: 4})
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM, UsageLimit: 10}); err != nil {
		t.Fatalf("CreateKey() err = %v, want nil", err)
	}
	s, err := f.ring.Sealer(ctx, "k")
	if err != nil {
		t.Fatalf("Sealer() err = %v, want nil", err)
	}
	counts := map[uint32]int{}
	for i := range 25 {
		ct, ref, err := s.AppendEncrypt(ctx, nil, []byte("pan"), nil)
		if err != nil {
			t.Fatalf("AppendEncrypt() #%d err = %v, want nil", i, err)
		}
		counts[ref.Version]++
		if _, _, err := f.ring.Decrypt(ctx, ct, nil); err != nil {
			t.Fatalf("Decrypt() #%d err = %v, want nil", i, err)
		}
	}
	if want := map[uint32]int{1: 10, 2: 10, 3: 5}; !equalCounts(counts, want) {
		t.Errorf("ciphertexts per version = %v, want %v", counts, want)
	}
	uses, err := f.ring.Uses(ctx, "k")
	if err != nil {
		t.Fatalf("Uses() err = %v, want nil", err)
	}
	if uses[1] != 10 || uses[2] != 10 {
		t.Errorf("Uses() = %v, want versions 1 and 2 spent (10 each)", uses)
	}
}

func equalCounts(a, b map[uint32]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func BenchmarkKeySealer10(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b, Options{})
	f.createKey(b, "bench", store.KeyTypeAES256GCM)
	pt, aad := []byte(`"4111 1111 1111 1111"`), []byte("customer=42")
	var buf []byte
	for b.Loop() {
		s, err := f.ring.Sealer(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		buf = buf[:0]
		for range 10 {
			if buf, _, err = s.AppendEncrypt(ctx, buf, pt, aad); err != nil {
				b.Fatal(err)
			}
		}
	}
}
