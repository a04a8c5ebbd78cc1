package envelope

import (
	"context"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"

	"github.com/tresorkms/tresor/internal/store"
)

// BenchmarkEncrypt1KiB compares Keyring.Encrypt and Decrypt of 1 KiB with
// raw Tink AEAD on the same keyset. Run:
//
//	go test -run '^$' -bench 'Encrypt1KiB|Decrypt1KiB' -count 5 ./envelope
func BenchmarkEncrypt1KiB(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b, Options{})
	f.createKey(b, "bench", store.KeyTypeAES256GCM)
	pt, aad := make([]byte, 1024), []byte("customer=42")
	lk, err := f.ring.load(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	raw, err := aead.New(lk.handle)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("impl=tink", func(b *testing.B) {
		b.SetBytes(int64(len(pt)))
		for b.Loop() {
			if _, err := raw.Encrypt(pt, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("impl=envelope", func(b *testing.B) {
		b.SetBytes(int64(len(pt)))
		for b.Loop() {
			if _, _, err := f.ring.Encrypt(ctx, "bench", pt, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkDecrypt1KiB(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b, Options{})
	f.createKey(b, "bench", store.KeyTypeAES256GCM)
	pt, aad := make([]byte, 1024), []byte("customer=42")
	lk, err := f.ring.load(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	raw, err := aead.New(lk.handle)
	if err != nil {
		b.Fatal(err)
	}
	rawCT, _ := raw.Encrypt(pt, aad)
	ct, _, err := f.ring.Encrypt(ctx, "bench", pt, aad)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("impl=tink", func(b *testing.B) {
		b.SetBytes(int64(len(pt)))
		for b.Loop() {
			if _, err := raw.Decrypt(rawCT, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("impl=envelope", func(b *testing.B) {
		b.SetBytes(int64(len(pt)))
		for b.Loop() {
			if _, _, err := f.ring.Decrypt(ctx, ct, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
}
