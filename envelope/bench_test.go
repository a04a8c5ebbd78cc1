package envelope

import (
	"context"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead"

	"github.com/tresorkms/tresor/internal/store"
)

// BenchmarkRatio1KiB interleaves raw Tink and the keyring in batches of 256
// operations and reports each one's ns/op and their throughput ratio
// (tink-ns/op over envelope-ns/op), so that machine noise hits both alike.
//
//	go test -run '^$' -bench Ratio1KiB -benchtime 3s -count 5 ./envelope
func BenchmarkRatio1KiB(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b, Options{Now: time.Now})
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
	ct, _, _ := f.ring.Encrypt(ctx, "bench", pt, aad)
	const batch = 256
	for _, op := range []string{"encrypt", "decrypt"} {
		b.Run("op="+op, func(b *testing.B) {
			var tinkTime, envTime time.Duration
			var n int
			for b.Loop() {
				start := time.Now()
				for range batch {
					if op == "encrypt" {
						_, err = raw.Encrypt(pt, aad)
					} else {
						_, err = raw.Decrypt(rawCT, aad)
					}
				}
				mid := time.Now()
				for range batch {
					if op == "encrypt" {
						_, _, err = f.ring.Encrypt(ctx, "bench", pt, aad)
					} else {
						_, _, err = f.ring.Decrypt(ctx, ct, aad)
					}
				}
				envTime += time.Since(mid)
				tinkTime += mid.Sub(start)
				n += batch
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(tinkTime.Nanoseconds())/float64(n), "tink-ns/op")
			b.ReportMetric(float64(envTime.Nanoseconds())/float64(n), "envelope-ns/op")
			b.ReportMetric(float64(tinkTime)/float64(envTime), "ratio")
		})
	}
}
