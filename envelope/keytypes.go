package envelope

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"

	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	tinkkey "github.com/tink-crypto/tink-go/v2/key"
	"github.com/tink-crypto/tink-go/v2/keyset"
	tinkhmac "github.com/tink-crypto/tink-go/v2/mac/hmac"

	"github.com/tresorkms/tresor/internal/store"
)

// rotatable reports whether keys of type t may get a second version.
func rotatable(t store.KeyType) bool { return t != store.KeyTypeFF1AES256 }

// macVersions returns each version's HMAC-SHA256 key bytes.
func macVersions(h *keyset.Handle, versions []store.Version) (map[uint32][]byte, error) {
	return eachVersion(h, versions, func(number uint32, key tinkkey.Key) ([]byte, error) {
		k, ok := key.(*tinkhmac.Key)
		if !ok {
			return nil, fmt.Errorf("version %d is %T, not an HMAC key", number, key)
		}
		p, ok := k.Parameters().(*tinkhmac.Parameters)
		if !ok || p.HashType() != tinkhmac.SHA256 || p.KeySizeInBytes() != 32 {
			return nil, fmt.Errorf("version %d is not HMAC-SHA256 with a 32-byte key", number)
		}
		return k.KeyBytes().Data(insecuresecretdataaccess.Token{}), nil
	})
}

// ff1Cipher returns the AES-256 cipher of the keyset's primary key, the one
// version of an FF1_AES256 key.
func ff1Cipher(h *keyset.Handle, primaryID uint32) (cipher.Block, error) {
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return nil, err
		}
		if e.KeyID() != primaryID {
			continue
		}
		k, ok := e.Key().(*aesgcm.Key)
		if !ok {
			return nil, fmt.Errorf("the FF1 key is %T, not an AES key container", e.Key())
		}
		b := k.KeyBytes().Data(insecuresecretdataaccess.Token{})
		if len(b) != 32 {
			return nil, fmt.Errorf("the FF1 key has %d bytes, want 32", len(b))
		}
		return aes.NewCipher(b)
	}
	return nil, fmt.Errorf("the keyset has no primary key")
}

// MAC returns HMAC-SHA256 of data (32 bytes) under the primary version of
// the named HMAC_SHA256 key, and that version. Field protection writes blind
// indexes with it. Another key type gives ErrKeyTypeMismatch.
func (r *Keyring) MAC(ctx context.Context, name string, data []byte) ([]byte, KeyRef, error) {
	lk, err := r.macKey(ctx, name)
	if err != nil {
		return nil, KeyRef{}, err
	}
	v := lk.meta.PrimaryVersion
	return hmacSHA256(lk.mac[v], data), KeyRef{Name: lk.meta.Name, Version: v}, nil
}

// MACVersion is MAC under a given version, down to the key's minimum
// decryption version: a lookup by blind index recomputes the index of
// every version still in use. A version the key does not have, or one below
// its minimum, gives ErrVersionNotAllowed.
func (r *Keyring) MACVersion(ctx context.Context, name string, version uint32, data []byte) ([]byte, error) {
	lk, err := r.macKey(ctx, name)
	if err != nil {
		return nil, err
	}
	k, ok := lk.mac[version]
	if !ok || version < lk.meta.MinDecryptionVersion {
		return nil, fmt.Errorf("%w: %q has no usable version %d", ErrVersionNotAllowed, name, version)
	}
	return hmacSHA256(k, data), nil
}

func (r *Keyring) macKey(ctx context.Context, name string) (*loadedKey, error) {
	lk, err := r.usableKey(ctx, name)
	if err != nil {
		return nil, err
	}
	if lk.mac == nil {
		return nil, fmt.Errorf("%w: %q is an %s key, not an HMAC_SHA256 key", ErrKeyTypeMismatch, name, lk.meta.Type)
	}
	return lk, nil
}

func hmacSHA256(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

// TokenizationCipher returns the AES-256 block cipher of the named
// FF1_AES256 key, for format-preserving tokenization (package fields holds
// FF1 itself). The cipher never exposes its key. Another key type gives
// ErrKeyTypeMismatch; a disabled key, ErrKeyDisabled.
func (r *Keyring) TokenizationCipher(ctx context.Context, name string) (cipher.Block, KeyRef, error) {
	lk, err := r.usableKey(ctx, name)
	if err != nil {
		return nil, KeyRef{}, err
	}
	if lk.ff1 == nil {
		return nil, KeyRef{}, fmt.Errorf("%w: %q is an %s key, not an FF1_AES256 key", ErrKeyTypeMismatch, name, lk.meta.Type)
	}
	return lk.ff1, KeyRef{Name: lk.meta.Name, Version: lk.meta.PrimaryVersion}, nil
}
