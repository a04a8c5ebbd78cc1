package envelope

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/secret"
)

// DataKeySize is the size of a data key from GenerateDataKey: AES-256.
const DataKeySize = 32

// KeyRef names one version of a named key.
type KeyRef struct {
	Name    string
	Version uint32
}

// DataKey is a fresh data key for a caller's own envelope encryption: the
// key in plaintext (absent from GenerateDataKeyWithoutPlaintext) and the same
// key encrypted by a named key, a ciphertext that Decrypt opens.
type DataKey struct {
	Plaintext  secret.Bytes
	Ciphertext []byte
	Key        KeyRef
}

// Encrypt seals plaintext under the primary version of the named key with
// associated data aad, and returns the ciphertext in binary form.
func (r *Keyring) Encrypt(ctx context.Context, name string, plaintext, aad []byte) ([]byte, KeyRef, error) {
	if err := checkKeyName(name); err != nil {
		return nil, KeyRef{}, err
	}
	if err := r.checkPlaintext(plaintext); err != nil {
		return nil, KeyRef{}, err
	}
	lk, err := r.load(ctx, name)
	if err != nil {
		return nil, KeyRef{}, err
	}
	return r.seal(ctx, lk, plaintext, aad)
}

// seal encrypts under lk's primary version, after taking one of its uses
// (AES-256-GCM keys); a spent version makes the key rotate first, so the
// ciphertext may come from a newer version than lk's.
func (r *Keyring) seal(ctx context.Context, lk *loadedKey, plaintext, aad []byte) ([]byte, KeyRef, error) {
	if err := stateErr(lk.meta); err != nil {
		return nil, KeyRef{}, err
	}
	if lk.gcm == nil && lk.daead == nil {
		return nil, KeyRef{}, fmt.Errorf("%w: %q is an %s key, not an encryption key", ErrKeyTypeMismatch, lk.meta.Name, lk.meta.Type)
	}
	if lk.usage != nil {
		var err error
		if lk, err = r.reserve(ctx, lk); err != nil {
			return nil, KeyRef{}, err
		}
	}
	ref := KeyRef{Name: lk.meta.Name, Version: lk.meta.PrimaryVersion}
	var hdr [2 + maxKeyNameLen + 4]byte
	header := appendHeader(hdr[:0], ref.Name, ref.Version)
	ad := associatedData(header, aad)
	out := make([]byte, 0, len(header)+tinkOverhead+len(plaintext))
	out, err := lk.appendSealed(append(out, header...), ref.Version, plaintext, ad)
	if err != nil {
		return nil, KeyRef{}, fmt.Errorf("envelope: encrypt with %q: %w", ref.Name, err)
	}
	return out, ref, nil
}

// tinkOverhead is what a Tink ciphertext adds to its plaintext, at most:
// the 5-byte prefix, then a 12-byte nonce and a 16-byte tag (AES-GCM) or a
// 16-byte synthetic IV (AES-SIV).
const tinkOverhead = 5 + gcmNonceSize + gcmTagSize

// appendSealed appends the Tink ciphertext of plaintext under version of
// lk (AES-256-GCM or AES-256-SIV) to dst; ad is header || caller's aad.
func (lk *loadedKey) appendSealed(dst []byte, version uint32, plaintext, ad []byte) ([]byte, error) {
	if lk.gcm != nil {
		return lk.gcm[version].appendSeal(dst, plaintext, ad)
	}
	body, err := lk.daead.EncryptDeterministically(plaintext, ad)
	if err != nil {
		return nil, err
	}
	return append(dst, body...), nil
}

// checkPlaintext refuses an empty plaintext or one over MaxPlaintextSize.
func (r *Keyring) checkPlaintext(plaintext []byte) error {
	if len(plaintext) == 0 {
		return fmt.Errorf("%w: empty plaintext", ErrInvalidArgument)
	}
	if len(plaintext) > r.opts.MaxPlaintextSize {
		return fmt.Errorf("%w: plaintext of %d bytes exceeds the limit of %d", ErrInvalidArgument, len(plaintext), r.opts.MaxPlaintextSize)
	}
	return nil
}

// Decrypt opens a ciphertext in binary form with associated data aad and
// returns the plaintext and the key version that sealed it. A disabled key
// gives ErrKeyDisabled, a key scheduled for deletion ErrKeyDeletionScheduled
// and a version below the key's minimum ErrVersionNotAllowed, each only for
// a ciphertext that authenticates. A destroyed key gives ErrKeyDestroyed
// for any ciphertext whose header names it. Every other failure gives
// ErrDecrypt.
func (r *Keyring) Decrypt(ctx context.Context, ciphertext, aad []byte) (secret.Bytes, KeyRef, error) {
	pt, lk, version, err := r.decrypt(ctx, ciphertext, aad)
	if err != nil {
		return nil, KeyRef{}, err
	}
	return pt, KeyRef{Name: lk.meta.Name, Version: version}, nil
}

// decrypt is Decrypt returning the loaded key that opened the ciphertext.
func (r *Keyring) decrypt(ctx context.Context, ciphertext, aad []byte) (secret.Bytes, *loadedKey, uint32, error) {
	p, ok := parse(ciphertext)
	if !ok {
		return nil, nil, 0, ErrDecrypt
	}
	lk, err := r.loadFor(ctx, p)
	if errors.Is(err, ErrKeyNotFound) {
		return nil, nil, 0, ErrDecrypt
	}
	if err != nil {
		return nil, nil, 0, err
	}
	pt, err := r.open(lk, p, nil, associatedData(p.header, aad))
	if err != nil {
		return nil, nil, 0, err
	}
	return pt, lk, p.version, nil
}

// loadFor loads the key a parsed ciphertext names. A ciphertext of a
// version newer than every version of the cached keyset (sealed through
// another replica that rotated the key since this one last synced its
// cache) would not open: when the store holds a newer revision of the key,
// the entry is dropped and the key read again, once. A known version costs
// nothing more than load.
func (r *Keyring) loadFor(ctx context.Context, p parsed) (*loadedKey, error) {
	lk, err := r.loadBytes(ctx, p.name)
	if err != nil || !newerVersion(lk, p.version) {
		return lk, err
	}
	name := string(p.name)
	// Anyone may send made-up versions: read the store for a key at most
	// once per newerCheckInterval, so that they cannot turn every call
	// (or every item of a batch) into a query.
	now := r.opts.Now()
	if last, ok := r.newerChecks.Load(name); ok && now.Sub(last.(time.Time)) < newerCheckInterval {
		return lk, nil
	}
	r.newerChecks.Store(name, now)
	revs, err := r.store.KeyRevisions(ctx, []string{name})
	if err != nil || revs[name] <= lk.meta.Revision {
		return lk, nil // opening fails as it would have
	}
	r.cache.invalidate(name, revs[name])
	return r.load(ctx, name)
}

// newerCheckInterval bounds how often loadFor reads a key's revision.
const newerCheckInterval = 100 * time.Millisecond

// newerVersion reports whether version v is newer than every version lk holds.
func newerVersion(lk *loadedKey, v uint32) bool {
	if _, ok := lk.tinkIDs[v]; ok {
		return false
	}
	for _, kv := range lk.meta.Versions {
		if kv.Number >= v {
			return false
		}
	}
	return true
}

// open opens c with lk and appends the plaintext to dst; ad is the
// associated data as sealed (the header, then the caller's). On error dst
// keeps its length and nothing of the plaintext is left in its spare
// capacity.
func (r *Keyring) open(lk *loadedKey, c parsed, dst, ad []byte) ([]byte, error) {
	if lk.meta.State == store.KeyStateDestroyed {
		// No material is left to authenticate the ciphertext with, and the
		// state is no secret from a caller allowed to use the key.
		return nil, stateErr(lk.meta)
	}
	// The version must exist and the Tink prefix must name that version's
	// key, so a header that lies about its version fails here.
	id, ok := lk.tinkIDs[c.version]
	if !ok || c.body[0] != 0x01 || binary.BigEndian.Uint32(c.body[1:5]) != id {
		return nil, ErrDecrypt
	}
	start := len(dst)
	var out []byte
	var err error
	switch {
	case lk.gcm != nil:
		out, err = lk.gcm[c.version].open(dst, c.body, ad)
	case lk.daead != nil:
		var pt []byte
		if pt, err = lk.daead.DecryptDeterministically(c.body, ad); err == nil {
			out = append(dst, pt...)
			clear(pt)
		}
	default:
		// A MAC or FF1 key seals nothing: no ciphertext can name it.
		return nil, ErrDecrypt
	}
	if err != nil {
		return nil, ErrDecrypt
	}
	// The key's state is told only to a caller holding an authentic
	// ciphertext, so a forged one learns nothing about the key.
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

// ReEncrypt moves a ciphertext to the primary version of destKey (empty: the
// ciphertext's own key), keeping its associated data. The plaintext never
// leaves the keyring. It returns the new ciphertext, its key and the source's.
func (r *Keyring) ReEncrypt(ctx context.Context, ciphertext, aad []byte, destKey string) ([]byte, KeyRef, KeyRef, error) {
	if destKey != "" {
		if err := checkKeyName(destKey); err != nil {
			return nil, KeyRef{}, KeyRef{}, err
		}
	}
	pt, srcKey, version, err := r.decrypt(ctx, ciphertext, aad)
	if err != nil {
		return nil, KeyRef{}, KeyRef{}, err
	}
	defer pt.Wipe()
	src := KeyRef{Name: srcKey.meta.Name, Version: version}
	dst := srcKey
	if destKey != "" && destKey != src.Name {
		if dst, err = r.load(ctx, destKey); err != nil {
			return nil, KeyRef{}, KeyRef{}, err
		}
	}
	if dst.meta.Type != srcKey.meta.Type {
		return nil, KeyRef{}, KeyRef{}, fmt.Errorf("%w: cannot re-encrypt from %s key %q to %s key %q", ErrKeyTypeMismatch, srcKey.meta.Type, src.Name, dst.meta.Type, dst.meta.Name)
	}
	out, ref, err := r.seal(ctx, dst, pt, aad)
	if err != nil {
		return nil, KeyRef{}, KeyRef{}, err
	}
	return out, ref, src, nil
}

// GenerateDataKey returns a fresh AES-256 data key in plaintext and sealed by
// the named key with associated data aad.
func (r *Keyring) GenerateDataKey(ctx context.Context, name string, aad []byte) (DataKey, error) {
	dk := make(secret.Bytes, DataKeySize)
	if _, err := rand.Read(dk); err != nil {
		return DataKey{}, fmt.Errorf("envelope: data key: %w", err)
	}
	ct, ref, err := r.Encrypt(ctx, name, dk, aad)
	if err != nil {
		dk.Wipe()
		return DataKey{}, err
	}
	return DataKey{Plaintext: dk, Ciphertext: ct, Key: ref}, nil
}

// GenerateDataKeyWithoutPlaintext is GenerateDataKey for a caller that stores
// the sealed data key now and asks Decrypt for it later: the plaintext key is
// wiped before it returns.
func (r *Keyring) GenerateDataKeyWithoutPlaintext(ctx context.Context, name string, aad []byte) (DataKey, error) {
	dk, err := r.GenerateDataKey(ctx, name, aad)
	if err != nil {
		return DataKey{}, err
	}
	dk.Plaintext.Wipe()
	dk.Plaintext = nil
	return dk, nil
}

// CheckUsable reports whether the named key exists and is enabled, as the
// keyring sees it now: ErrInvalidKeyName, ErrKeyNotFound, ErrKeyDisabled,
// ErrKeyDeletionScheduled, ErrKeyDestroyed or nil.
func (r *Keyring) CheckUsable(ctx context.Context, name string) error {
	_, err := r.usableKey(ctx, name)
	return err
}

// usableKey loads the named key if it may be used now: ErrInvalidKeyName,
// ErrKeyNotFound or a state error otherwise.
func (r *Keyring) usableKey(ctx context.Context, name string) (*loadedKey, error) {
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	lk, err := r.load(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := stateErr(lk.meta); err != nil {
		return nil, err
	}
	return lk, nil
}
