// Package store keeps tresor's named keys: their metadata, their versions and
// their keysets, wrapped by a root key. It holds no plaintext key material.
//
// Open a store with [OpenSQLite] (the embedded default). Every implementation
// satisfies [Store] and passes the conformance suite in store/storetest.
//
// Every implementation keeps the same contract beyond what [Store] says:
//
//   - Writes are validated first: a key with no name, an unspecified type or
//     state, no versions, or a primary version that is not among its versions
//     is refused with [ErrInvalidKey], and nothing is written.
//   - The store sets CreateTime, UpdateTime and Revision; the caller's values
//     are ignored. All times, Version.CreateTime included, are kept in UTC to
//     the microsecond: the store truncates them, and the Key that CreateKey and
//     UpdateKey return is exactly what a later GetKey returns.
//   - Versions come back ordered by Number. Empty Labels and WrappedKeyset
//     come back nil.
//   - ListKeys orders names bytewise (as Go compares strings). Its page token
//     is opaque; a token it did not issue fails with [ErrInvalidPageToken].
//   - Returned keys never share memory with the store or with the caller's
//     arguments.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Implementations wrap them with %w; callers match with errors.Is.
var (
	// ErrNotFound means no key has the given name.
	ErrNotFound = errors.New("store: key not found")
	// ErrAlreadyExists means a key with the given name exists already.
	ErrAlreadyExists = errors.New("store: key already exists")
	// ErrConflict means the key changed since it was read: its revision is not
	// the one the caller expected. Read it again and retry.
	ErrConflict = errors.New("store: key changed concurrently")
	// ErrInvalidKey means a key given to CreateKey or UpdateKey breaks a rule
	// of the store (no name, unspecified type, no versions, ...). The wrapping
	// error says which; nothing was written.
	ErrInvalidKey = errors.New("store: invalid key")
	// ErrInvalidPageToken means ListKeys got a page token it did not issue.
	ErrInvalidPageToken = errors.New("store: invalid page token")
	// ErrSchemaTooNew means the database was migrated by a newer tresor than
	// this one; it is refused rather than misread. Upgrade the binary.
	ErrSchemaTooNew = errors.New("store: database schema is newer than this binary")
)

// ErrInvalidBudget means ConsumeBudget got no windows, a non-positive n or limit, an empty or over-long (512 bytes) counter name, or End not after Start. Nothing was counted.
var ErrInvalidBudget = errors.New("store: invalid budget")

// BudgetWindow is one fixed window of a usage budget.
type BudgetWindow struct {
	Counter    string    // names the counter, e.g. "decrypt/restricted/spiffe://bank.example/payments/1s"
	Start, End time.Time // the window; counts are kept per (Counter, Start)
	Limit      int64     // the most the window may count
}

// Page sizes of ListKeys.
const (
	// DefaultPageSize is used when ListKeys gets a pageSize <= 0.
	DefaultPageSize = 100
	// MaxPageSize caps the pageSize of ListKeys; larger values are lowered to it.
	MaxPageSize = 1000
)

// KeyType says which primitive a named key's keyset holds. The zero value is invalid.
type KeyType int

const (
	// KeyTypeUnspecified is invalid.
	KeyTypeUnspecified KeyType = iota
	// KeyTypeAES256GCM is randomized AEAD, AES-256-GCM.
	KeyTypeAES256GCM
	// KeyTypeAES256SIV is deterministic AEAD, AES-256-SIV.
	KeyTypeAES256SIV
)

// String returns the key type's stable name, as stored and shown.
func (t KeyType) String() string {
	switch t {
	case KeyTypeAES256GCM:
		return "AES256_GCM"
	case KeyTypeAES256SIV:
		return "AES256_SIV"
	default:
		return "UNSPECIFIED"
	}
}

// ParseKeyType is the inverse of KeyType.String.
func ParseKeyType(s string) (KeyType, error) {
	switch s {
	case "AES256_GCM":
		return KeyTypeAES256GCM, nil
	case "AES256_SIV":
		return KeyTypeAES256SIV, nil
	default:
		return KeyTypeUnspecified, errors.New("store: unknown key type")
	}
}

// KeyState says whether a key may be used. The zero value is invalid.
type KeyState int

const (
	// KeyStateUnspecified is invalid.
	KeyStateUnspecified KeyState = iota
	// KeyStateEnabled keys encrypt and decrypt.
	KeyStateEnabled
	// KeyStateDisabled keys do neither until enabled again.
	KeyStateDisabled
)

// String returns the state's stable name, as stored and shown.
func (s KeyState) String() string {
	switch s {
	case KeyStateEnabled:
		return "ENABLED"
	case KeyStateDisabled:
		return "DISABLED"
	default:
		return "UNSPECIFIED"
	}
}

// ParseKeyState is the inverse of KeyState.String.
func ParseKeyState(s string) (KeyState, error) {
	switch s {
	case "ENABLED":
		return KeyStateEnabled, nil
	case "DISABLED":
		return KeyStateDisabled, nil
	default:
		return KeyStateUnspecified, errors.New("store: unknown key state")
	}
}

// Version is one version of a named key: one Tink key in its keyset.
type Version struct {
	// Number counts from 1 and never repeats within a key.
	Number uint32
	// TinkKeyID is the id of this version's key inside the Tink keyset.
	TinkKeyID uint32
	// CreateTime is when the version was added.
	CreateTime time.Time
}

// Key is a named key as stored: metadata and the keyset wrapped by a root key.
type Key struct {
	Name                 string
	Type                 KeyType
	State                KeyState
	PrimaryVersion       uint32
	MinDecryptionVersion uint32
	// RotationPeriod is zero when the key does not rotate on a schedule.
	RotationPeriod time.Duration
	Labels         map[string]string
	Versions       []Version
	// WrappedKeyset is the serialized Tink keyset, encrypted by the root key
	// named RootKeyID with associated data that binds it to Name and RootKeyID.
	WrappedKeyset []byte
	RootKeyID     string
	CreateTime    time.Time
	UpdateTime    time.Time
	// Revision increases by one on every successful write. The store sets it;
	// UpdateKey succeeds only when the caller's value matches the stored one.
	Revision int64
}

// Store is the key store. Every implementation passes storetest.Run.
type Store interface {
	// CreateKey stores a new key with Revision 1. It returns ErrAlreadyExists
	// when the name is taken.
	CreateKey(ctx context.Context, k Key) (Key, error)
	// GetKey returns the key with the given name, or ErrNotFound.
	GetKey(ctx context.Context, name string) (Key, error)
	// ListKeys returns up to pageSize keys ordered by name, starting after the
	// name in pageToken (empty for the first page), and the token of the next
	// page (empty on the last page).
	ListKeys(ctx context.Context, pageSize int, pageToken string) ([]Key, string, error)
	// UpdateKey replaces the stored key whose Name and Revision match k, in
	// one transaction, and returns it with the next revision. It returns
	// ErrNotFound when there is no such key and ErrConflict when the revision
	// differs.
	UpdateKey(ctx context.Context, k Key) (Key, error)
	// ConsumeBudget adds n to the count of every window, in one transaction, if every count stays within its Limit; otherwise it counts nothing and returns the index of the first window that would exceed its limit. It returns -1 when n was counted. Counts of windows whose End has passed may be deleted by the store at any time.
	ConsumeBudget(ctx context.Context, n int64, windows []BudgetWindow) (exceeded int, err error)
	// Close releases the store's resources.
	Close() error
}
