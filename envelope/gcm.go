package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"

	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	tinkkey "github.com/tink-crypto/tink-go/v2/key"
	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/tresorkms/tresor/internal/store"
)

const (
	gcmNonceSize = 12
	gcmTagSize   = 16
)

// gcmVersion seals and opens with one version of an AES256_GCM key. Its
// output is byte for byte Tink's AES-GCM output for that key (the 5-byte
// Tink prefix, a random 12-byte nonce, the ciphertext and a 16-byte tag), so
// Tink's own primitive opens it and the other way round; what it adds is
// sealing into one buffer that already holds tresor's header, which saves an
// allocation and a copy of every ciphertext on the hot path.
type gcmVersion struct {
	prefix []byte // Tink output prefix: 0x01 and the Tink key id
	aead   cipher.AEAD
}

// gcmVersions builds each version's cipher from an unwrapped keyset.
func gcmVersions(h *keyset.Handle, versions []store.Version) (map[uint32]gcmVersion, error) {
	return eachVersion(h, versions, func(number uint32, key tinkkey.Key) (gcmVersion, error) {
		k, ok := key.(*aesgcm.Key)
		if !ok {
			return gcmVersion{}, fmt.Errorf("version %d is %T, not an AES-GCM key", number, key)
		}
		p, ok := k.Parameters().(*aesgcm.Parameters)
		if !ok || p.KeySizeInBytes() != 32 || p.IVSizeInBytes() != gcmNonceSize || p.TagSizeInBytes() != gcmTagSize || p.Variant() != aesgcm.VariantTink {
			return gcmVersion{}, fmt.Errorf("version %d is not AES-256-GCM with a 12-byte nonce, a 16-byte tag and a Tink prefix", number)
		}
		block, err := aes.NewCipher(k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
		if err != nil {
			return gcmVersion{}, err
		}
		a, err := cipher.NewGCM(block)
		if err != nil {
			return gcmVersion{}, err
		}
		return gcmVersion{prefix: k.OutputPrefix(), aead: a}, nil
	})
}

// eachVersion builds one value per version of a key from the version's
// Tink key, and fails unless every version has one.
func eachVersion[T any](h *keyset.Handle, versions []store.Version, build func(number uint32, k tinkkey.Key) (T, error)) (map[uint32]T, error) {
	byID := make(map[uint32]uint32, len(versions))
	for _, v := range versions {
		byID[v.TinkKeyID] = v.Number
	}
	out := make(map[uint32]T, len(versions))
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return nil, err
		}
		number, ok := byID[e.KeyID()]
		if !ok {
			continue
		}
		if out[number], err = build(number, e.Key()); err != nil {
			return nil, err
		}
	}
	if len(out) != len(versions) {
		return nil, errors.New("the keyset lacks a key for some version")
	}
	return out, nil
}

// appendSeal appends prefix || nonce || ciphertext || tag to dst.
func (v gcmVersion) appendSeal(dst, plaintext, ad []byte) ([]byte, error) {
	dst = slices.Grow(dst, len(v.prefix)+gcmNonceSize+len(plaintext)+gcmTagSize)
	dst = append(dst, v.prefix...)
	n := len(dst)
	dst = dst[:n+gcmNonceSize]
	nonce := dst[n:]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return v.aead.Seal(dst, nonce, plaintext, ad), nil
}

// open opens what seal wrote after the header (the Tink ciphertext),
// appending the plaintext to dst. The caller has checked the prefix.
func (v gcmVersion) open(dst, body, ad []byte) ([]byte, error) {
	n := len(v.prefix)
	if len(body) < n+gcmNonceSize+gcmTagSize {
		return nil, ErrDecrypt
	}
	ct := body[n+gcmNonceSize:]
	if dst == nil {
		dst = make([]byte, 0, len(ct)-gcmTagSize)
	}
	return v.aead.Open(dst, body[n:n+gcmNonceSize], ct, ad)
}
