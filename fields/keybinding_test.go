package fields

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
)

// TestRevealRefusesAnotherKey: a value is revealed only when its
// ciphertext names the key its tier names, and nothing is decided or
// opened otherwise. A newer schema version that points the path at another
// key (of another owner, under another policy) must not reveal what the
// old version sealed.
func TestRevealRefusesAnotherKey(t *testing.T) {
	ctx := context.Background()
	p, ring := newProtector(t, Options{})
	if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: "other-aead", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatal(err)
	}
	v1 := mustSchema(t, "name: c\nversion: 1\ndefault_tier: public\ntiers:\n  r: {protection: aead, key: pii-aead}\n  public: {protection: none}\nfields:\n  - {path: \"$.ssn\", tier: r}\n")
	v2 := mustSchema(t, "name: c\nversion: 2\ndefault_tier: public\ntiers:\n  r: {protection: aead, key: other-aead}\n  public: {protection: none}\nfields:\n  - {path: \"$.ssn\", tier: r}\n")
	doc, _, err := p.Protect(ctx, v1, []byte(`{"ssn":"123-45-6789"}`), "d")
	if err != nil {
		t.Fatal(err)
	}
	decided := 0
	out, _, err := p.Reveal(ctx, v2, doc, "d", func(FieldRef) (RevealMode, error) { decided++; return RevealClear, nil })
	if !errors.Is(err, ErrReveal) || strings.Contains(string(out), "6789") {
		t.Errorf("Reveal(v1 document under v2, another key) = %s, %v; want ErrReveal", out, err)
	}
	if decided != 0 {
		t.Errorf("Reveal(another key) asked decide %d times, want 0 (refused before any decision)", decided)
	}
	if _, _, err := p.Reveal(ctx, v1, doc, "d", clearAll); err != nil {
		t.Errorf("Reveal(v1 document under v1) err = %v, want nil", err)
	}
}

func TestTokenizeBoundsDigits(t *testing.T) {
	ctx := context.Background()
	p, _ := newProtector(t, Options{})
	s := mustSchema(t, "name: c\nversion: 1\ndefault_tier: public\ntiers:\n  a: {protection: tokenize, key: acct-ff1}\n  public: {protection: none}\nfields:\n  - {path: \"$.acct\", tier: a}\n")
	for _, tc := range []struct {
		digits int
		want   error
	}{
		{5, ErrWrongType},
		{6, nil},
		{MaxTokenDigits, nil},
		{MaxTokenDigits + 1, ErrWrongType},
		{100_000, ErrWrongType},
	} {
		doc := `{"acct":"` + strings.Repeat("7", tc.digits) + `"}`
		_, _, err := p.Protect(ctx, s, []byte(doc), "")
		if !errors.Is(err, tc.want) {
			t.Errorf("Protect(%d digits) err = %v, want %v", tc.digits, err, tc.want)
		}
	}
}
