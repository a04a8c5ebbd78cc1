package client

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"testing"
)

// The ratio: SDK local encryption of 1 KiB messages with a warm
// data-key cache against raw AES-256-GCM in the same run:
//
//	go test -run '^$' -bench 'LocalEncrypt1KiB|LocalAppendEncrypt1KiB|RawAESGCM1KiB' -benchmem -count 5 -cpu 1,2 ./client
//
// Both seal a fresh 1 KiB message into a new buffer with a random nonce,
// in a process that also runs a test server; the SDK adds its header (the
// wrapped data key), the cache's limits and the per-message associated
// data. -cpu 1,2 shows one caller and two in parallel.

func BenchmarkRawAESGCM1KiB(b *testing.B) {
	// The same process as BenchmarkLocalEncrypt1KiB: a tresor server in
	// it, whose heap the garbage collector scans as the allocations of
	// either benchmark drive it.
	StartTestServer(b)
	key := make([]byte, 32)
	rand.Read(key)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	pt := make([]byte, 1024)
	aad := []byte("order-12345")
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			out := make([]byte, nonceLen, nonceLen+len(pt)+tagLen)
			if _, err := rand.Read(out); err != nil {
				b.Fatal(err)
			}
			_ = aead.Seal(out, out[:nonceLen], pt, aad)
		}
	})
}

func BenchmarkLocalEncrypt1KiB(b *testing.B) {
	s := StartTestServer(b)
	c := s.Client(b, nil)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, createKey("payments")); err != nil {
		b.Fatal(err)
	}
	l, err := NewLocalEncryption(c, CachePolicy{MaxMessages: 1 << 32})
	if err != nil {
		b.Fatal(err)
	}
	e, err := l.Encryptor("payments", []byte("tenant=acme"))
	if err != nil {
		b.Fatal(err)
	}
	pt := make([]byte, 1024)
	aad := []byte("order-12345")
	if _, err := e.Encrypt(ctx, pt, aad); err != nil { // warm the cache
		b.Fatal(err)
	}
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.Encrypt(ctx, pt, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.StopTimer()
	if n := l.Stats().DataKeysGenerated; n != 1 {
		b.Errorf("DataKeysGenerated = %d, want 1", n)
	}
}

func BenchmarkLocalDecrypt1KiB(b *testing.B) {
	s := StartTestServer(b)
	c := s.Client(b, nil)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, createKey("payments")); err != nil {
		b.Fatal(err)
	}
	l, err := NewLocalEncryption(c, CachePolicy{})
	if err != nil {
		b.Fatal(err)
	}
	e, _ := l.Encryptor("payments", nil)
	aad := []byte("order-12345")
	msg, err := e.Encrypt(ctx, make([]byte, 1024), aad)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(1024)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.Decrypt(ctx, msg, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The same pair with a reused output buffer: no allocation on either side,
// so the garbage collector drops out and what is left is the SDK's own
// work per message (cache limits, header, associated data).

func BenchmarkRawAESGCM1KiBReused(b *testing.B) {
	StartTestServer(b)
	key := make([]byte, 32)
	rand.Read(key)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	pt := make([]byte, 1024)
	aad := []byte("order-12345")
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]byte, 0, 2048)
		for pb.Next() {
			out = out[:nonceLen]
			if _, err := rand.Read(out); err != nil {
				b.Fatal(err)
			}
			out = aead.Seal(out, out[:nonceLen], pt, aad)
		}
	})
}

func BenchmarkLocalAppendEncrypt1KiB(b *testing.B) {
	s := StartTestServer(b)
	c := s.Client(b, nil)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, createKey("payments")); err != nil {
		b.Fatal(err)
	}
	l, err := NewLocalEncryption(c, CachePolicy{MaxMessages: 1 << 32})
	if err != nil {
		b.Fatal(err)
	}
	e, err := l.Encryptor("payments", []byte("tenant=acme"))
	if err != nil {
		b.Fatal(err)
	}
	pt := make([]byte, 1024)
	aad := []byte("order-12345")
	if _, err := e.Encrypt(ctx, pt, aad); err != nil { // warm the cache
		b.Fatal(err)
	}
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]byte, 0, 2048)
		for pb.Next() {
			var err error
			if out, err = e.AppendEncrypt(ctx, out[:0], pt, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
}
