package fields

import (
	"context"
	"os"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/keyset"
)

// The benchmark's schema protects 10 of a 20-field record: 6 aead, 1
// deterministic, 1 tokenize, 1 blind index, 1 mask. The server's gRPC
// benchmark reads the same files.
var (
	benchSchema = mustRead("testdata/bench-schema.yaml")
	benchDoc    = mustRead("testdata/bench-document.json")
)

func mustRead(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return string(b)
}

var benchValues = [][]byte{
	[]byte(`"123-45-6789"`), []byte(`"Jane Doe"`), []byte(`"1980-01-01"`), []byte(`"+44 20 7946 0958"`), []byte(`"1 Main St"`),
	[]byte(`"12345"`), []byte(`"jane.doe@example.com"`), []byte(`"0012345678901234"`), []byte(`"DE89370400440532013000"`), []byte(`"4111 1111 1111 1111"`),
}

// The target: BenchmarkProtectDocument docs/s >= 0.5 x BenchmarkRawTinkAEAD10
// ops/s (each op seals the same 10 values with raw Tink).
//
//	go test -run '^$' -bench 'ProtectDocument|RevealDocument|RawTinkAEAD10|FF1Tokenize' -benchmem ./fields
func BenchmarkProtectDocument(b *testing.B) {
	ctx := context.Background()
	p, _ := newProtector(b, Options{})
	s := mustSchema(b, benchSchema)
	doc := []byte(benchDoc)
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		if _, _, err := p.Protect(ctx, s, doc, "doc-1"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRevealDocument(b *testing.B) {
	ctx := context.Background()
	p, _ := newProtector(b, Options{})
	s := mustSchema(b, benchSchema)
	out, _, err := p.Protect(ctx, s, []byte(benchDoc), "doc-1")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(out)))
	for b.Loop() {
		if _, _, err := p.Reveal(ctx, s, out, "doc-1", clearAll); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawTinkAEAD10(b *testing.B) {
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		b.Fatal(err)
	}
	a, err := aead.New(h)
	if err != nil {
		b.Fatal(err)
	}
	aad := []byte("tresor-fields-v1\x00customer$.tax_id\x01doc-1")
	for b.Loop() {
		for _, v := range benchValues {
			if _, err := a.Encrypt(v, aad); err != nil {
				b.Fatal(err)
			}
		}
	}
}
