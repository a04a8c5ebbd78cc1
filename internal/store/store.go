// Package store keeps tresor's named keys: their metadata, their versions and
// their keysets, wrapped by a root key. It holds no plaintext key material.
//
// Open a store with [OpenSQLite] (the embedded default, one process) or
// [OpenPostgres] (several replicas sharing one database). Both satisfy [Store]
// and pass the conformance suite in store/storetest.
//
// Besides keys, a store keeps what replicas must agree on: usage budgets
// ([Store.ConsumeBudget]), the encryptions reserved of each key version
// against its usage limit ([Store.ReserveUses]), leases that let exactly one
// replica run each scheduled job ([Store.AcquireLease]), the revisions that
// tell a replica which cached keys another one changed ([Store.KeyRevisions]),
// and root-key rotation jobs, which re-wrap every keyset from one root key to
// another in batches ([Store.StartRootKeyRotation], [Store.RewrapKeys]).
//
// Every implementation keeps the same contract beyond what [Store] says:
//
//   - Writes are validated first: a key with no name, an unspecified type or
//     state, no versions, or a primary version that is not among its versions
//     is refused with [ErrInvalidKey], and nothing is written. So is a key
//     whose DeletionTime or DestroyTime does not match its state, and a
//     DESTROYED key that holds a wrapped keyset.
//   - A DESTROYED key stays destroyed: UpdateKey refuses to move it to any
//     other state ([ErrInvalidKey]), and RewrapKeys never gives it a keyset.
//     Destroying a key overwrites its wrapped keyset in the row; see each
//     implementation for what remains elsewhere on disk.
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
//   - Errors that mean the database cannot be reached now wrap
//     [ErrUnavailable]; the call may be retried.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Implementations wrap them with %w; callers match with errors.Is.
var (
	// ErrNotFound means no key has the given name. The root-key rotation
	// methods also return it when there is no such (running) job.
	ErrNotFound = errors.New("store: key not found")
	// ErrAlreadyExists means a key with the given name, or a root-key
	// rotation job with the given ID, exists already.
	ErrAlreadyExists = errors.New("store: key already exists")
	// ErrConflict means the key changed since it was read: its revision is not
	// the one the caller expected. Read it again and retry. The root-key
	// rotation methods also return it when the job cannot start or finish now
	// (see StartRootKeyRotation and FinishRootKeyRotation).
	ErrConflict = errors.New("store: key changed concurrently")
	// ErrInvalidKey means a key given to CreateKey, UpdateKey or RewrapKeys
	// breaks a rule of the store (no name, unspecified type, no versions,
	// ...), that ReserveUses got n or limit below 1 or a version the key does
	// not have, or that ListKeysByRootKey got an afterName no key could have
	// (not UTF-8, or with a NUL). The wrapping error says which; nothing was
	// written.
	ErrInvalidKey = errors.New("store: invalid key")
	// ErrUnavailable means the store cannot be reached (connection refused
	// or dropped, server shutting down, a read-only standby, or, for SQLite,
	// a lock another process held past the busy timeout). The call may
	// succeed later. A write that failed so may or may not have been
	// committed; a retry of a compare-and-swap then fails with ErrConflict.
	ErrUnavailable = errors.New("store: database unavailable")
	// ErrInvalidRotation means StartRootKeyRotation got a job with a missing
	// ID, URI or root key id, an ID, PrevID, URI or root key id that is not
	// UTF-8 or holds a NUL, FromID equal to ToID, or a negative Total.
	// Nothing was written.
	ErrInvalidRotation = errors.New("store: invalid root key rotation")
	// ErrInvalidLease means AcquireLease or ReleaseLease got an empty or
	// over-long (512 bytes) lease or holder name, or a ttl below one
	// microsecond. Nothing was written.
	ErrInvalidLease = errors.New("store: invalid lease")
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
	// KeyTypeHMACSHA256 is a MAC key, HMAC-SHA256 with a 32-byte key: blind
	// indexes of protected fields.
	KeyTypeHMACSHA256
	// KeyTypeFF1AES256 is an AES-256 key for format-preserving tokenization
	// with FF1 (NIST SP 800-38G). It has one version: a token carries none.
	KeyTypeFF1AES256
)

// String returns the key type's stable name, as stored and shown.
func (t KeyType) String() string {
	switch t {
	case KeyTypeAES256GCM:
		return "AES256_GCM"
	case KeyTypeAES256SIV:
		return "AES256_SIV"
	case KeyTypeHMACSHA256:
		return "HMAC_SHA256"
	case KeyTypeFF1AES256:
		return "FF1_AES256"
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
	case "HMAC_SHA256":
		return KeyTypeHMACSHA256, nil
	case "FF1_AES256":
		return KeyTypeFF1AES256, nil
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
	// KeyStateDeletionScheduled keys have no cryptographic use until
	// CancelKeyDeletion (which the keyring turns into DISABLED) or
	// destruction at their DeletionTime.
	KeyStateDeletionScheduled
	// KeyStateDestroyed keys had their key material erased: WrappedKeyset
	// is nil and stays nil. The metadata is kept as a tombstone, so that
	// callers learn the key was destroyed.
	KeyStateDestroyed
)

// String returns the state's stable name, as stored and shown.
func (s KeyState) String() string {
	switch s {
	case KeyStateEnabled:
		return "ENABLED"
	case KeyStateDisabled:
		return "DISABLED"
	case KeyStateDeletionScheduled:
		return "DELETION_SCHEDULED"
	case KeyStateDestroyed:
		return "DESTROYED"
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
	case "DELETION_SCHEDULED":
		return KeyStateDeletionScheduled, nil
	case "DESTROYED":
		return KeyStateDestroyed, nil
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
	// Every state but DESTROYED requires both; a DESTROYED key has no keyset
	// (and RootKeyID may be empty).
	WrappedKeyset []byte
	RootKeyID     string
	// DeletionTime is when the material of a DELETION_SCHEDULED key is
	// destroyed. It is set (non-zero) exactly when State is
	// KeyStateDeletionScheduled.
	DeletionTime time.Time
	// DestroyTime is when the key was destroyed. It is set (non-zero)
	// exactly when State is KeyStateDestroyed.
	DestroyTime time.Time
	// UsageLimit is how many encryptions each version allows; 0 means the
	// keyring's default. Never negative.
	UsageLimit int64
	// RetireAfter, when positive, retires a version (MinDecryptionVersion
	// moves past it) once it has been superseded this long; 0 means never.
	// Never negative.
	RetireAfter time.Duration
	// RetireAfterVersions, when positive, retires a version once this many
	// newer versions exist; 0 means never.
	RetireAfterVersions uint32
	CreateTime          time.Time
	UpdateTime          time.Time
	// Revision increases by one on every successful write. The store sets it;
	// UpdateKey succeeds only when the caller's value matches the stored one.
	Revision int64
}

// Store is the key store. Every implementation passes storetest.Run.
type Store interface {
	AuditLog     // the audit log's events and checkpoints (audit.go)
	FieldSchemas // classification schemas of FieldService (fieldschema.go)

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

	// ReserveUses reserves up to n encryptions of version of key name against
	// limit (> 0), atomically across processes: it adds min(n, limit-used) to
	// the version's count and returns how many it added, 0 when the version
	// is spent. It returns ErrNotFound when the key does not exist, and
	// ErrInvalidKey for n <= 0, limit <= 0 or a version the key does not have.
	ReserveUses(ctx context.Context, name string, version uint32, n, limit int64) (granted int64, err error)
	// Uses returns how many encryptions have been reserved of each version
	// of the key (versions never reserved are absent), or ErrNotFound.
	Uses(ctx context.Context, name string) (map[uint32]int64, error)

	// AcquireLease makes holder the holder of the named lease until now+ttl
	// (the store's clock, WithClock) and returns true, when the lease is
	// free, expired or already held by holder (a renewal). It returns false,
	// changing nothing, while another holder's lease runs. Scheduled jobs use
	// it so that exactly one replica runs each.
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	// ReleaseLease ends holder's lease early; releasing a lease one does not
	// hold changes nothing.
	ReleaseLease(ctx context.Context, name, holder string) error

	// KeyRevisions returns the current Revision of each named key that
	// exists (absent names are missing from the map), in one round trip per
	// up to 1000 names. Replicas use it to drop cached keys another replica
	// changed.
	KeyRevisions(ctx context.Context, names []string) (map[string]int64, error)

	// StartRootKeyRotation records a new running job: the store sets State
	// (RotationRunning), Rewrapped (0), StartTime and UpdateTime, and clears
	// EndTime. It keeps the Endorsement as given (an empty one as none) and
	// does not check it. The jobs form one chain: r.PrevID must be the ID of
	// the latest job ("" when there is none), and no two jobs have one
	// PrevID. It returns ErrConflict when a job is running or r.PrevID is
	// not the latest job's ID (another job was started since the caller
	// read it), ErrAlreadyExists when the ID was used before, and
	// ErrInvalidRotation for missing fields, FromID == ToID or a negative
	// Total.
	StartRootKeyRotation(ctx context.Context, r RootKeyRotation) (RootKeyRotation, error)
	// LatestRootKeyRotation returns the most recently started job, running
	// or done, or ErrNotFound when there has been none. The active root key
	// is the latest job's ToURI, once its Endorsement is verified (package
	// rotation: the store alone never chooses the root key).
	LatestRootKeyRotation(ctx context.Context) (RootKeyRotation, error)
	// ListRootKeyRotations returns every job, running or done, in the order
	// they were started (oldest first; the last is LatestRootKeyRotation's),
	// and no error when there has been none.
	ListRootKeyRotations(ctx context.Context) ([]RootKeyRotation, error)
	// ListKeysByRootKey returns up to limit keys (whole, WrappedKeyset
	// included) whose keyset is wrapped by rootKeyID, ordered by name,
	// starting after afterName. DESTROYED keys hold no keyset and are never
	// listed. limit is bounded as ListKeys bounds its page size.
	ListKeysByRootKey(ctx context.Context, rootKeyID, afterName string, limit int) ([]Key, error)
	// CountKeysByRootKey counts the keys ListKeysByRootKey would list.
	CountKeysByRootKey(ctx context.Context, rootKeyID string) (int64, error)
	// RootKeyIDsInUse returns the distinct RootKeyID of the keys that hold
	// a keyset (every key but DESTROYED ones, as ListKeysByRootKey lists
	// them), ordered bytewise, and no error when there is none. A server
	// checks at start-up that the rotation records account for each.
	RootKeyIDsInUse(ctx context.Context) ([]string, error)
	// RewrapKeys stores each key's new WrappedKeyset and RootKeyID (nothing
	// else of the key changes; Revision and UpdateTime advance) where the
	// stored Revision still equals the key's Revision, and adds the number
	// stored to the running job's Rewrapped, all in one transaction. Keys
	// whose revision changed (or that were destroyed, or do not exist) are
	// left alone and their names returned, for the job to read again. It returns ErrNotFound
	// when jobID is not the running job, and ErrInvalidKey, writing nothing,
	// when a key has no name or keyset, is given twice, or names a RootKeyID
	// other than the job's ToID.
	RewrapKeys(ctx context.Context, jobID string, keys []Key) (conflicts []string, err error)
	// FinishRootKeyRotation marks the running job done (EndTime set). It
	// returns ErrConflict when keys are still wrapped by its FromID, and
	// ErrNotFound when jobID is not the running job.
	FinishRootKeyRotation(ctx context.Context, jobID string) (RootKeyRotation, error)

	// Close releases the store's resources.
	Close() error
}

// RotationState says where a root-key rotation job is. The zero value is invalid.
type RotationState int

const (
	// RotationUnspecified is invalid.
	RotationUnspecified RotationState = iota
	// RotationRunning jobs are re-wrapping keysets.
	RotationRunning
	// RotationDone jobs have re-wrapped every keyset.
	RotationDone
)

// String returns the state's stable name, as stored and shown.
func (s RotationState) String() string {
	switch s {
	case RotationRunning:
		return "RUNNING"
	case RotationDone:
		return "DONE"
	default:
		return "UNSPECIFIED"
	}
}

// ParseRotationState is the inverse of RotationState.String.
func ParseRotationState(s string) (RotationState, error) {
	switch s {
	case "RUNNING":
		return RotationRunning, nil
	case "DONE":
		return RotationDone, nil
	default:
		return RotationUnspecified, errors.New("store: unknown rotation state")
	}
}

// RootKeyRotation is a job that re-wraps every keyset from one root key to
// another.
type RootKeyRotation struct {
	ID string // chosen by the caller, unique
	// PrevID is the ID of the job started before this one, "" for the
	// first: the jobs form one chain, in the order they were started.
	// The caller sets it (rotation.Start: the latest job's ID), the
	// endorsement covers it, and the store refuses a job whose PrevID is
	// not the latest job's ID. Jobs recorded before schema migration 9 got
	// theirs from the order they were stored in.
	PrevID         string
	FromURI, ToURI string        // root key URIs (no secrets: PINs come from pin-source files)
	FromID, ToID   string        // root key ids, as in Key.RootKeyID
	State          RotationState // RotationRunning or RotationDone
	Total          int64         // keys to re-wrap when the job started
	Rewrapped      int64         // keys re-wrapped so far
	// Endorsement is a digest of ID, PrevID, FromID, FromURI, ToID and
	// ToURI wrapped by the old root key (rotation.Endorse): replicas follow
	// the job only when it unwraps to that digest. It is empty for jobs
	// recorded before the store kept it (schema migration 9).
	Endorsement []byte
	// StartTime and UpdateTime are set by the store; EndTime is zero while
	// the job runs.
	StartTime, UpdateTime, EndTime time.Time
}
