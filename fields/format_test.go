package fields

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"sync"
	"testing"

	"github.com/tresorkms/tresor/envelope"
)

// appendCiphertext must write exactly envelope.FormatCiphertext, quoted, and
// appendDecodeCiphertext accept exactly what envelope.DecodeCiphertext does.
func TestCiphertextFormatMatchesEnvelope(t *testing.T) {
	tests := []struct {
		name string
		ct   []byte
	}{
		{"empty", nil},
		{"one byte", []byte{0xff}},
		{"two bytes", []byte{0xfb, 0xef}},
		{"three bytes", []byte{0x01, 0x02, 0x03}},
		{"binary", bytes.Repeat([]byte{0xfa, 0x00, 0x3e, 0x7f}, 17)},
	}
	for _, tt := range tests {
		got := appendCiphertext([]byte("x"), tt.ct)
		want := `x"` + envelope.FormatCiphertext(tt.ct) + `"`
		if string(got) != want {
			t.Errorf("%s: appendCiphertext = %q, want %q", tt.name, got, want)
		}
		dec, ok := appendDecodeCiphertext([]byte("y"), got[2:len(got)-1])
		if !ok || !bytes.Equal(dec, append([]byte("y"), tt.ct...)) {
			t.Errorf("%s: appendDecodeCiphertext = %x, %v; want y+%x, true", tt.name, dec, ok, tt.ct)
		}
	}
	for _, s := range []string{
		"", "tresor:v1:", "tresor:v1:AA", "tresor:v1:AB", "tresor:v1:A", "tresor:v1:AAA=", "tresor:v1:+/8",
		"tresor:v2:AAAA", "tresor:v1:AA\n", "tresor:v1:_-8", "TRESOR:v1:AAAA", "tresor:v1:AQID",
	} {
		want, werr := envelope.DecodeCiphertext(s)
		got, ok := appendDecodeCiphertext(nil, []byte(s))
		if ok != (werr == nil) || (ok && !bytes.Equal(got, want)) {
			t.Errorf("appendDecodeCiphertext(%q) = %x, %v; DecodeCiphertext = %x, %v", s, got, ok, want, werr)
		}
	}
}

// BenchmarkKeyringEncrypt10 is a second baseline, for context: the same 10
// values sealed one Keyring.Encrypt call at a time (key lookup, usage
// accounting, tresor's header), without any document handling.
func BenchmarkKeyringEncrypt10(b *testing.B) {
	ctx := context.Background()
	ring := newKeyring(b)
	aad := []byte("tresor-fields-v1\x00customer$.tax_id\x01doc-1")
	for b.Loop() {
		for _, v := range benchValues {
			if _, _, err := ring.Encrypt(ctx, "pii-aead", v, aad); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// plainKeys hides the keyring's optional batch methods: Protect and Reveal
// then take the per-value path, with the same output.
type plainKeys struct{ Keys }

func TestBatchAndPlainKeysAgree(t *testing.T) {
	ctx := context.Background()
	batch, ring := newProtector(t, Options{})
	plain, err := New(plainKeys{ring}, Options{})
	if err != nil {
		t.Fatalf("New() err = %v, want nil", err)
	}
	s := mustSchema(t, benchSchema)
	for _, tt := range []struct {
		name      string
		protector *Protector
		revealer  *Protector
	}{
		{"batch", batch, batch}, {"plain", plain, plain}, {"batch then plain", batch, plain}, {"plain then batch", plain, batch},
	} {
		// Twice, so that the second call reuses a pooled run.
		for i := range 2 {
			out, res, err := tt.protector.Protect(ctx, s, []byte(benchDoc), "doc-1")
			if err != nil {
				t.Fatalf("%s: Protect() err = %v, want nil", tt.name, err)
			}
			if len(res.Fields) != 10 {
				t.Errorf("%s #%d: Protect() results = %d, want 10", tt.name, i, len(res.Fields))
			}
			back, _, err := tt.revealer.Reveal(ctx, s, out, "doc-1", clearAll)
			if err != nil {
				t.Fatalf("%s: Reveal() err = %v, want nil", tt.name, err)
			}
			// The card is masked irreversibly; the blind index stays.
			var got, want map[string]any
			mustUnmarshal(t, back, &got)
			mustUnmarshal(t, []byte(benchDoc), &want)
			delete(got, "iban_bidx")
			got["card"], want["card"] = nil, nil
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s #%d: Reveal(Protect(doc)) = %s, want the document back", tt.name, i, back)
			}
		}
	}
}

func TestProtectConcurrent(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	s := mustSchema(t, benchSchema)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				out, _, err := p.Protect(ctx, s, []byte(benchDoc), "doc-1")
				if err != nil {
					t.Errorf("goroutine %d: Protect() err = %v", g, err)
					return
				}
				if _, _, err := p.Reveal(ctx, s, out, "doc-1", clearAll); err != nil {
					t.Errorf("goroutine %d: Reveal() err = %v", g, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("json.Unmarshal(%s) err = %v", b, err)
	}
}
