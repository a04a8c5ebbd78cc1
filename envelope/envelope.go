// Package envelope is tresor's key hierarchy below the root key: named keys
// (Tink keysets with one key per version, stored wrapped by a root key) and
// the data encrypted under them.
//
// Reach for [New] to build a [Keyring] from a key store and a root key, then
// call its methods: CreateKey and RotateKey to manage keys, Encrypt, Decrypt,
// ReEncrypt and GenerateDataKey to use them. Ciphertexts are self-describing
// (see [ParseCiphertext] and [FormatCiphertext]): Decrypt needs no key name.
//
// Every failed decryption returns the one opaque [ErrDecrypt], whatever went
// wrong: a malformed or truncated ciphertext, a flipped byte, the wrong
// associated data, or an unknown key or version. A key's state (disabled,
// scheduled for deletion, a version below the minimum) is told only to a
// caller whose ciphertext authenticates. The one exception is a destroyed
// key ([ErrKeyDestroyed]): nothing can authenticate any more, and its state
// is metadata that any caller allowed to use the key can read with GetKey,
// so Decrypt says the key was destroyed, and when.
//
// A key's life after creation: each version of an AES-256-GCM key seals at
// most a usage limit of messages (see [DefaultUsageLimit]; counted across
// replicas in the key store, see [Keyring.Uses]) and the key rotates itself
// when its primary version is spent. [Keyring.ScheduleKeyDeletion] and
// [Keyring.CancelKeyDeletion] manage deletion; the scheduler in package
// rotation calls [Keyring.RotateIfDue], [Keyring.RetireVersions] and
// [Keyring.DestroyIfDue]. Replicas sharing a store call [Keyring.SyncCache]
// every few seconds so that one replica's changes reach the others' caches
// in bounded time.
package envelope

import (
	"context"
	"errors"
)

// Sentinel errors. Methods wrap them with %w; match them with errors.Is.
var (
	// ErrInvalidArgument means a request is malformed: an empty or oversized
	// plaintext, an invalid key type, a bad page token, a bad update.
	ErrInvalidArgument = errors.New("envelope: invalid argument")
	// ErrInvalidKeyName means a key name breaks the naming rule (see ValidKeyName).
	ErrInvalidKeyName = errors.New("envelope: invalid key name")
	// ErrKeyNotFound means no key has the given name.
	ErrKeyNotFound = errors.New("envelope: key not found")
	// ErrKeyExists means a key with the given name exists already.
	ErrKeyExists = errors.New("envelope: key already exists")
	// ErrKeyDisabled means the key is disabled: it neither encrypts nor decrypts.
	ErrKeyDisabled = errors.New("envelope: key is disabled")
	// ErrVersionNotAllowed means the ciphertext's key version is below the
	// key's min_decryption_version.
	ErrVersionNotAllowed = errors.New("envelope: key version is below the minimum decryption version")
	// ErrKeyTypeMismatch means an operation needs a key of another type, for
	// example ReEncrypt from an AES-256-GCM key to an AES-256-SIV key.
	ErrKeyTypeMismatch = errors.New("envelope: key type mismatch")
	// ErrNotRotatable means the key's type has exactly one version: an FF1
	// token carries no key version, so a second version could never be
	// told apart from the first when a token is revealed.
	ErrNotRotatable = errors.New("envelope: key type does not rotate")
	// ErrConflict means the key changed concurrently too often to apply an update.
	ErrConflict = errors.New("envelope: key changed concurrently")
	// ErrDecrypt is the one opaque error for any failed decryption.
	ErrDecrypt = errors.New("envelope: decryption failed")
	// ErrKeysetUnreadable means a stored keyset could not be unwrapped by its
	// root key, or was wrapped by a root key this keyring does not hold.
	ErrKeysetUnreadable = errors.New("envelope: stored keyset cannot be unwrapped")
	// ErrRootKeyNotHeld means a stored keyset is wrapped by a root key this
	// keyring does not hold (yet): another replica rotated the root key and
	// this one has not followed. It comes with ErrKeysetUnreadable, and
	// passes once the rotation is followed.
	ErrRootKeyNotHeld = errors.New("envelope: root key not held")
	// ErrKeyDeletionScheduled means the key is scheduled for deletion: it
	// neither encrypts nor decrypts, and its configuration is frozen, until
	// CancelKeyDeletion. The message says when the material goes.
	ErrKeyDeletionScheduled = errors.New("envelope: key is scheduled for deletion")
	// ErrKeyDestroyed means the key's material was destroyed: nothing under
	// it can be decrypted again. The message says when.
	ErrKeyDestroyed = errors.New("envelope: key was destroyed")
	// ErrKeyNotScheduled means CancelKeyDeletion found no deletion scheduled.
	ErrKeyNotScheduled = errors.New("envelope: key is not scheduled for deletion")
	// ErrUsageLimitReached means the key's primary version has sealed as many
	// messages as its usage limit allows and the key could not be rotated;
	// the wrapped error says why. Nothing was encrypted.
	ErrUsageLimitReached = errors.New("envelope: key version reached its usage limit")
	// ErrStoreUnavailable means the key store cannot be reached now; the
	// call may succeed later.
	ErrStoreUnavailable = errors.New("envelope: key store unavailable")
)

// KEK is the root key (key-encryption key) that wraps keysets. It lives in an
// HSM or a cloud KMS; kms/provider.Open returns one.
type KEK interface {
	// ID names the root key stably; it is stored with every keyset it wraps.
	ID() string
	// Wrap encrypts a serialized keyset with associated data.
	Wrap(ctx context.Context, plaintext, associatedData []byte) ([]byte, error)
	// Unwrap decrypts what Wrap returned, given the same associated data.
	Unwrap(ctx context.Context, wrapped, associatedData []byte) ([]byte, error)
}
