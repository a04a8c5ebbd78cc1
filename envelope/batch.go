package envelope

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/secret"
)

// KeySealer seals several values under one named key for one unit of work
// (package fields: one document). Keyring.Sealer loads the key and checks
// its state and type once; each AppendEncrypt then takes one use of the
// primary version (AES-256-GCM keys, exactly as Encrypt does, rotating a
// spent version) and appends the ciphertext, in the binary form Encrypt
// returns, to a caller's buffer: no key lookup and no allocation per value
// for AES-256-GCM.
//
// A KeySealer sees the key as it was loaded: a key disabled meanwhile still
// seals through it, as an Encrypt that started before the change would. Keep
// it for one short unit of work, not across requests. It is not safe for
// concurrent use.
type KeySealer struct {
	r     *Keyring
	lk    *loadedKey
	ad    []byte // scratch: header || aad
	adBuf [128]byte
}

// Sealer returns a KeySealer for the named AES-256-GCM or AES-256-SIV key.
// It fails as Encrypt would for that key (ErrInvalidKeyName,
// ErrKeyNotFound, a state error, ErrKeyTypeMismatch).
func (r *Keyring) Sealer(ctx context.Context, name string) (*KeySealer, error) {
	lk, err := r.usableKey(ctx, name)
	if err != nil {
		return nil, err
	}
	if lk.gcm == nil && lk.daead == nil {
		return nil, fmt.Errorf("%w: %q is an %s key, not an encryption key", ErrKeyTypeMismatch, lk.meta.Name, lk.meta.Type)
	}
	s := &KeySealer{r: r, lk: lk}
	s.ad = s.adBuf[:0]
	return s, nil
}

// Encrypt is Keyring.Encrypt through s: it returns the ciphertext in a new
// slice.
func (s *KeySealer) Encrypt(ctx context.Context, plaintext, aad []byte) ([]byte, KeyRef, error) {
	return s.AppendEncrypt(ctx, nil, plaintext, aad)
}

// AppendEncrypt seals plaintext with associated data aad under the key's
// primary version and appends the ciphertext, byte for byte what Encrypt
// would return (Decrypt opens it), to dst. It returns the extended buffer
// and the version that sealed; on error dst is returned unchanged in length.
func (s *KeySealer) AppendEncrypt(ctx context.Context, dst, plaintext, aad []byte) ([]byte, KeyRef, error) {
	if len(plaintext) == 0 {
		return dst, KeyRef{}, fmt.Errorf("%w: empty plaintext", ErrInvalidArgument)
	}
	if len(plaintext) > s.r.opts.MaxPlaintextSize {
		return dst, KeyRef{}, fmt.Errorf("%w: plaintext of %d bytes exceeds the limit of %d", ErrInvalidArgument, len(plaintext), s.r.opts.MaxPlaintextSize)
	}
	lk := s.lk
	if lk.usage != nil {
		// One use, as seal takes it; a spent version gives the key as
		// rotated, which later values use too.
		next, err := s.r.reserve(ctx, lk)
		if err != nil {
			return dst, KeyRef{}, err
		}
		lk, s.lk = next, next
	}
	ref := KeyRef{Name: lk.meta.Name, Version: lk.meta.PrimaryVersion}
	start := len(dst)
	dst = appendHeader(dst, ref.Name, ref.Version)
	s.ad = append(append(s.ad[:0], dst[start:]...), aad...)
	if lk.gcm != nil {
		out, err := lk.gcm[ref.Version].appendSeal(dst, plaintext, s.ad)
		if err != nil {
			return dst[:start], KeyRef{}, fmt.Errorf("envelope: encrypt with %q: %w", ref.Name, err)
		}
		return out, ref, nil
	}
	body, err := lk.daead.EncryptDeterministically(plaintext, s.ad)
	if err != nil {
		return dst[:start], KeyRef{}, fmt.Errorf("envelope: encrypt with %q: %w", ref.Name, err)
	}
	return append(dst, body...), ref, nil
}

// appendSeal is seal appending prefix || nonce || ciphertext || tag to dst
// (which holds the header already), growing it at most once.
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

// KeyOpener opens several ciphertexts for one unit of work, like Decrypt,
// reusing its scratch buffer; it is not safe for concurrent use.
type KeyOpener struct {
	r  *Keyring
	ad []byte // scratch: header || aad
}

// Opener returns a KeyOpener over r.
func (r *Keyring) Opener() *KeyOpener { return &KeyOpener{r: r} }

// AppendDecrypt is Decrypt appending the plaintext to dst: same checks, same
// errors. On error dst is returned unchanged in length, with nothing of the
// plaintext left in its spare capacity. The caller wipes what it appended.
func (o *KeyOpener) AppendDecrypt(ctx context.Context, dst, ciphertext, aad []byte) ([]byte, KeyRef, error) {
	p, ok := parse(ciphertext)
	if !ok {
		return dst, KeyRef{}, ErrDecrypt
	}
	lk, err := o.r.loadBytes(ctx, p.name)
	if errors.Is(err, ErrKeyNotFound) {
		return dst, KeyRef{}, ErrDecrypt
	}
	if err != nil {
		return dst, KeyRef{}, err
	}
	if lk.gcm == nil {
		// Not GCM: Decrypt's own path, with its allocations.
		pt, err := o.r.open(lk, p, aad)
		if err != nil {
			return dst, KeyRef{}, err
		}
		dst = append(dst, pt...)
		secret.Bytes(pt).Wipe()
		return dst, KeyRef{Name: lk.meta.Name, Version: p.version}, nil
	}
	out, err := o.openGCM(lk, p, dst, aad)
	if err != nil {
		return dst, KeyRef{}, err
	}
	return out, KeyRef{Name: lk.meta.Name, Version: p.version}, nil
}

// openGCM is open for an AES-256-GCM key, opening into dst.
func (o *KeyOpener) openGCM(lk *loadedKey, c parsed, dst, aad []byte) ([]byte, error) {
	if lk.meta.State == store.KeyStateDestroyed {
		return nil, stateErr(lk.meta)
	}
	id, ok := lk.tinkIDs[c.version]
	if !ok || c.body[0] != 0x01 || binary.BigEndian.Uint32(c.body[1:5]) != id {
		return nil, ErrDecrypt
	}
	v := lk.gcm[c.version]
	n := len(v.prefix)
	if len(c.body) < n+gcmNonceSize+gcmTagSize {
		return nil, ErrDecrypt
	}
	o.ad = append(append(o.ad[:0], c.header...), aad...)
	ct := c.body[n+gcmNonceSize:]
	start := len(dst)
	out, err := v.aead.Open(dst, c.body[n:n+gcmNonceSize], ct, o.ad)
	if err != nil {
		return nil, ErrDecrypt
	}
	if err := stateErr(lk.meta); err != nil {
		clear(out[start:])
		return nil, err
	}
	if c.version < lk.meta.MinDecryptionVersion {
		clear(out[start:])
		return nil, fmt.Errorf("%w: %q version %d, minimum %d", ErrVersionNotAllowed, lk.meta.Name, c.version, lk.meta.MinDecryptionVersion)
	}
	return out, nil
}
