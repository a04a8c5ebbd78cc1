package envelope

import (
	"context"
	"errors"
	"fmt"
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
	if err := s.r.checkPlaintext(plaintext); err != nil {
		return dst, KeyRef{}, err
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
	out, err := lk.appendSealed(dst, ref.Version, plaintext, s.ad)
	if err != nil {
		return dst[:start], KeyRef{}, fmt.Errorf("envelope: encrypt with %q: %w", ref.Name, err)
	}
	return out, ref, nil
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
	lk, err := o.r.loadFor(ctx, p)
	if errors.Is(err, ErrKeyNotFound) {
		return dst, KeyRef{}, ErrDecrypt
	}
	if err != nil {
		return dst, KeyRef{}, err
	}
	o.ad = append(append(o.ad[:0], p.header...), aad...)
	out, err := o.r.open(lk, p, dst, o.ad)
	if err != nil {
		return dst, KeyRef{}, err
	}
	return out, KeyRef{Name: lk.meta.Name, Version: p.version}, nil
}
