package envelope

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/internal/store"
)

// Fuzz targets for the ciphertext format. Run one with
//
//	go test -run '^$' -fuzz '^FuzzParseCiphertext$' -fuzztime 1m -parallel 1 ./envelope
//
// (or `make fuzz`); plain `go test` runs their seeds and any corpus under
// testdata/fuzz.

// fuzzBinarySeeds are binary ciphertexts of every shape the parser tells
// apart: well formed, each length bound, each header field out of range.
func fuzzBinarySeeds() [][]byte {
	body := func(n int) []byte {
		b := make([]byte, n)
		b[0] = 0x01
		for i := 1; i < n; i++ {
			b[i] = byte(i * 7)
		}
		return b
	}
	hdr := func(name string, v uint32) []byte { return appendHeader(nil, name, v) }
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	long := strings.Repeat("k", maxKeyNameLen)
	return [][]byte{
		nil,
		{formatV1},
		{formatV1, 0},
		join(hdr("payments", 1), body(minTinkCiphertext)),                     // shortest SIV shape
		join(hdr("payments", 1), body(minTinkCiphertext-1)),                   // one byte short
		join(hdr("payments", 7), body(tinkPrefixSize+12+16+5)),                // GCM shape
		join(hdr("a", 0xffffffff), body(minTinkCiphertext)),                   // largest version
		join(hdr(long, 2), body(minTinkCiphertext)),                           // longest name
		join([]byte{formatV1, maxKeyNameLen + 1}, []byte(long+"k"), body(40)), // name too long
		join([]byte{0x02, 8}, []byte("payments"), body(40)),                   // unknown format
		join([]byte{formatV1, 8}, []byte("Payments"), body(40)),               // upper case
		join([]byte{formatV1, 8}, []byte("pay_ment"), body(40)),               // underscore
		join([]byte{formatV1, 3}, []byte("1ab"), body(40)),                    // digit first
		join([]byte{formatV1, 4}, []byte("k\xff\x00z"), body(40)),             // not ASCII
		join([]byte{formatV1, 200}, []byte("short")),                          // length past the end
	}
}

// FuzzParseCiphertext: the binary header parser. Whatever parses has a
// valid key name, a header that is exactly the canonical encoding of its
// name and version, and parts that are the input split in two; whatever
// does not parse fails with exactly ErrDecrypt.
func FuzzParseCiphertext(f *testing.F) {
	for _, s := range fuzzBinarySeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		c, err := ParseCiphertext(b)
		if !bytes.Equal(b, in) {
			t.Fatalf("ParseCiphertext(%x) modified its input", in)
		}
		if err != nil {
			if err != ErrDecrypt {
				t.Fatalf("ParseCiphertext(%x) err = %v, want exactly ErrDecrypt", b, err)
			}
			return
		}
		if !ValidKeyName(c.KeyName) {
			t.Fatalf("ParseCiphertext(%x) key name %q, which ValidKeyName refuses", b, c.KeyName)
		}
		want := appendHeader(nil, c.KeyName, c.KeyVersion)
		if !bytes.Equal(c.header, want) {
			t.Fatalf("ParseCiphertext(%x) header = %x, want the canonical %x", b, c.header, want)
		}
		if len(c.header)+len(c.body) != len(b) || !bytes.Equal(append(bytes.Clone(c.header), c.body...), b) {
			t.Fatalf("ParseCiphertext(%x) header %x + body %x is not the input", b, c.header, c.body)
		}
		if len(c.body) < minTinkCiphertext {
			t.Fatalf("ParseCiphertext(%x) body of %d bytes, want at least %d", b, len(c.body), minTinkCiphertext)
		}
		// Through the string form and back: the same ciphertext.
		s := FormatCiphertext(b)
		back, err := DecodeCiphertext(s)
		if err != nil || !bytes.Equal(back, b) {
			t.Fatalf("DecodeCiphertext(FormatCiphertext(%x)) = %x, %v; want the input, nil", b, back, err)
		}
		c2, err := ParseCiphertext(back)
		if err != nil || c2.KeyName != c.KeyName || c2.KeyVersion != c.KeyVersion {
			t.Fatalf("ParseCiphertext(round trip of %x) = %q v%d, %v; want %q v%d", b, c2.KeyName, c2.KeyVersion, err, c.KeyName, c.KeyVersion)
		}
	})
}

// FuzzDecodeCiphertext: the string form. A string that decodes is the one
// canonical spelling of its bytes (FormatCiphertext gives it back), its
// bytes are shorter than it, and any failure is exactly ErrDecrypt. Every
// byte string survives FormatCiphertext then DecodeCiphertext.
func FuzzDecodeCiphertext(f *testing.F) {
	for _, b := range fuzzBinarySeeds() {
		s := FormatCiphertext(b)
		f.Add(s)
		f.Add(s + "=")
		f.Add(s + "\n")
		f.Add(strings.NewReplacer("-", "+", "_", "/").Replace(s))
		f.Add(StringPrefix + base64.StdEncoding.EncodeToString(b))
		f.Add(strings.ToUpper(StringPrefix) + s[len(StringPrefix):])
	}
	f.Add("")
	f.Add(StringPrefix)
	f.Add("tresor:v2:AQ")
	f.Add(StringPrefix + "A")     // a length no encoding has
	f.Add(StringPrefix + "AB")    // non-zero padding bits
	f.Add(StringPrefix + "AQ\r")  // a carriage return the lax decoder skips
	f.Add(StringPrefix + "A Q==") // space and padding
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeCiphertext(s)
		if err != nil {
			if !errors.Is(err, ErrDecrypt) || err.Error() != ErrDecrypt.Error() {
				t.Fatalf("DecodeCiphertext(%q) err = %v, want ErrDecrypt and nothing more", s, err)
			}
		} else {
			if got := FormatCiphertext(b); got != s {
				t.Fatalf("FormatCiphertext(DecodeCiphertext(%q)) = %q, want the input: the string form must be canonical", s, got)
			}
			if len(b) >= len(s) {
				t.Fatalf("DecodeCiphertext(%q) gave %d bytes from %d characters", s, len(b), len(s))
			}
		}
		// Any bytes, here the input's, round trip through the string form.
		raw := []byte(s)
		back, err := DecodeCiphertext(FormatCiphertext(raw))
		if err != nil || !bytes.Equal(back, raw) {
			t.Fatalf("DecodeCiphertext(FormatCiphertext(%x)) = %x, %v; want the input, nil", raw, back, err)
		}
	})
}

// fuzzRing is a keyring over a real SQLite store and an in-memory AES-GCM
// root key, holding a key of every type and a key in each state a forger
// must not learn about, with one authentic ciphertext for each of those.
type fuzzRing struct {
	ring *Keyring
	// offCT opens under the disabled key "off"; oldCT under version 1 of
	// "old", whose minimum decryption version is 2.
	offCT, oldCT []byte
}

var fuzzAAD = []byte("fuzz-aad")

func newFuzzRing(f *testing.F) *fuzzRing {
	f.Helper()
	ctx := context.Background()
	fx := newFixture(f, Options{})
	for name, typ := range map[string]store.KeyType{
		"gcm": store.KeyTypeAES256GCM,
		"siv": store.KeyTypeAES256SIV,
		"mac": store.KeyTypeHMACSHA256,
		"ff1": store.KeyTypeFF1AES256,
		"off": store.KeyTypeAES256GCM,
		"old": store.KeyTypeAES256GCM,
	} {
		fx.createKey(f, name, typ)
	}
	if _, err := fx.ring.RotateKey(ctx, "gcm"); err != nil {
		f.Fatalf("RotateKey(gcm) err = %v, want nil", err)
	}
	fr := &fuzzRing{ring: fx.ring}
	var err error
	if fr.offCT, _, err = fx.ring.Encrypt(ctx, "off", []byte("disabled"), fuzzAAD); err != nil {
		f.Fatalf("Encrypt(off) err = %v, want nil", err)
	}
	if fr.oldCT, _, err = fx.ring.Encrypt(ctx, "old", []byte("retired"), fuzzAAD); err != nil {
		f.Fatalf("Encrypt(old) err = %v, want nil", err)
	}
	if _, err := fx.ring.DisableKey(ctx, "off"); err != nil {
		f.Fatalf("DisableKey(off) err = %v, want nil", err)
	}
	if _, err := fx.ring.RotateKey(ctx, "old"); err != nil {
		f.Fatalf("RotateKey(old) err = %v, want nil", err)
	}
	two := uint32(2)
	if _, err := fx.ring.UpdateKey(ctx, "old", KeyUpdate{MinDecryptionVersion: &two}); err != nil {
		f.Fatalf("UpdateKey(old, min version 2) err = %v, want nil", err)
	}
	return fr
}

// checkOpaque fails t unless err is exactly the one opaque ErrDecrypt.
func checkOpaque(t *testing.T, what string, ct []byte, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s(%x) err = nil, want ErrDecrypt: a ciphertext that was never sealed opened", what, ct)
	}
	if err != ErrDecrypt {
		t.Fatalf("%s(%x) err = %v, want exactly ErrDecrypt", what, ct, err)
	}
}

// FuzzDecrypt: arbitrary bytes through a real keyring. No input was sealed
// by this keyring, so Decrypt, KeyOpener.AppendDecrypt and ReEncrypt must
// all fail with exactly ErrDecrypt (never a panic, never a state error that
// would tell a forger about a key), and AppendDecrypt leaves dst as it was.
func FuzzDecrypt(f *testing.F) {
	fr := newFuzzRing(f)
	ctx := context.Background()
	for _, s := range fuzzBinarySeeds() {
		f.Add(s, []byte(nil))
	}
	for _, ct := range [][]byte{fr.offCT, fr.oldCT} {
		// Real headers and Tink prefixes (the keyring's, in this process),
		// with a garbage body: what a forger would try.
		c, err := ParseCiphertext(ct)
		if err != nil {
			f.Fatalf("ParseCiphertext(authentic) err = %v, want nil", err)
		}
		forged := append(bytes.Clone(ct[:len(c.header)+tinkPrefixSize]), make([]byte, len(ct)-len(c.header)-tinkPrefixSize)...)
		f.Add(forged, fuzzAAD)
	}
	for _, name := range []string{"gcm", "siv", "mac", "ff1", "off", "old", "missing"} {
		for v := uint32(0); v <= 3; v++ {
			f.Add(append(appendHeader(nil, name, v), make([]byte, 44)...), fuzzAAD)
		}
	}
	opener := fr.ring.Opener()
	dst := []byte("prefix")
	f.Fuzz(func(t *testing.T, ct, aad []byte) {
		pt, _, err := fr.ring.Decrypt(ctx, ct, aad)
		if err == nil {
			pt.Wipe()
		}
		checkOpaque(t, "Decrypt", ct, err)
		out, _, err := opener.AppendDecrypt(ctx, dst, ct, aad)
		checkOpaque(t, "AppendDecrypt", ct, err)
		if len(out) != len(dst) || !bytes.Equal(out, dst) {
			t.Fatalf("AppendDecrypt(dst, %x) on error returned %q, want dst %q unchanged", ct, out, dst)
		}
		_, _, _, err = fr.ring.ReEncrypt(ctx, ct, aad, "")
		checkOpaque(t, "ReEncrypt", ct, err)
	})
}

// FuzzDecryptTampered: authentic ciphertexts, then one change: a byte
// flipped, the tail cut, or other associated data. The unchanged one opens
// (or gives the key's state error, for the disabled key and the retired
// version); any changed one gives exactly ErrDecrypt.
func FuzzDecryptTampered(f *testing.F) {
	fr := newFuzzRing(f)
	ctx := context.Background()
	// which: 0 gcm, 1 siv, 2 the disabled key's, 3 the retired version's.
	for which := range uint8(4) {
		f.Add(which, []byte("4111 1111 1111 1111"), []byte("customer=42"), uint16(0), uint8(0), uint16(0), false)
		f.Add(which, []byte("x"), []byte(nil), uint16(2), uint8(1), uint16(0), false)       // key name
		f.Add(which, []byte("x"), []byte(nil), uint16(7), uint8(0x80), uint16(0), false)    // version
		f.Add(which, []byte("pt"), []byte("a"), uint16(9), uint8(0x10), uint16(0), false)   // Tink prefix
		f.Add(which, []byte("pt"), []byte("a"), uint16(0xffff), uint8(1), uint16(0), false) // tag
		f.Add(which, []byte("pt"), []byte("a"), uint16(0), uint8(0), uint16(1), false)      // one byte cut
		f.Add(which, []byte("pt"), []byte("a"), uint16(0), uint8(0), uint16(0xffff), false) // cut to nothing
		f.Add(which, []byte("pt"), []byte("aad"), uint16(0), uint8(0), uint16(0), true)     // other aad
		f.Add(which, []byte("pt"), []byte(nil), uint16(0), uint8(0), uint16(0), true)       // aad added
	}
	f.Fuzz(func(t *testing.T, which uint8, pt, aad []byte, pos uint16, flip uint8, cut uint16, otherAAD bool) {
		var ct []byte
		var wantErr error
		switch which % 4 {
		case 0, 1:
			key := [...]string{"gcm", "siv"}[which%4]
			var err error
			ct, _, err = fr.ring.Encrypt(ctx, key, pt, aad)
			if errors.Is(err, ErrInvalidArgument) {
				return // empty or oversized plaintext
			}
			if err != nil {
				t.Fatalf("Encrypt(%s, %q, %q) err = %v, want nil", key, pt, aad, err)
			}
		case 2:
			ct, pt, aad, wantErr = bytes.Clone(fr.offCT), []byte("disabled"), fuzzAAD, ErrKeyDisabled
		case 3:
			ct, pt, aad, wantErr = bytes.Clone(fr.oldCT), []byte("retired"), fuzzAAD, ErrVersionNotAllowed
		}
		orig := bytes.Clone(ct)
		if n := int(cut) % (len(ct) + 1); n > 0 {
			ct = ct[:len(ct)-n]
		}
		if flip != 0 && len(ct) > 0 {
			ct[int(pos)%len(ct)] ^= flip
		}
		openAAD := aad
		if otherAAD {
			openAAD = append(bytes.Clone(aad), 'x')
		}
		got, _, err := fr.ring.Decrypt(ctx, ct, openAAD)
		if bytes.Equal(ct, orig) && !otherAAD {
			if !errors.Is(err, wantErr) || (wantErr == nil) != (err == nil) {
				t.Fatalf("Decrypt(authentic %x) err = %v, want %v", ct, err, wantErr)
			}
			if err == nil && !bytes.Equal(got, pt) {
				t.Fatalf("Decrypt(authentic %x) = %q, want %q", ct, got, pt)
			}
			return
		}
		if err == nil {
			t.Fatalf("Decrypt(%x, tampered from %x, other aad %v) = %q, nil; want ErrDecrypt", ct, orig, otherAAD, got)
		}
		checkOpaque(t, "Decrypt", ct, err)
	})
}
