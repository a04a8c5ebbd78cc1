package envelope

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/daead"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
)

// Defaults for Options.
const (
	DefaultMaxPlaintextSize = 64 << 10
	DefaultCacheMaxKeys     = 10_000
	DefaultCacheMaxAge      = 5 * time.Minute
	// DefaultCacheStaleGrace is how long past CacheMaxAge a cached keyset
	// keeps serving while the root key or the key store is unavailable.
	DefaultCacheStaleGrace = 15 * time.Minute
	maxKeyNameLen          = 63
	maxLabels              = 64
	maxLabelValueLen       = 256
	// loadTimeout bounds one load of a keyset from the store and root key.
	loadTimeout = 30 * time.Second
	// updateAttempts bounds the retries of a read-modify-write on a key.
	updateAttempts = 8
)

// NoStaleGrace, as Options.CacheStaleGrace, turns the stale grace off: a
// keyset past CacheMaxAge is dropped whatever happens.
const NoStaleGrace time.Duration = -1

// Options tune a Keyring. The zero value takes every default.
type Options struct {
	// MaxPlaintextSize is the largest plaintext Encrypt accepts, in bytes.
	MaxPlaintextSize int
	// CacheMaxKeys bounds how many unwrapped keysets stay in memory.
	CacheMaxKeys int
	// CacheMaxAge bounds how long an unwrapped keyset stays in memory before
	// it is read and unwrapped again. Without SyncCache it is also how long
	// a change made by another replica can take to be seen here.
	CacheMaxAge time.Duration
	// CacheStaleGrace is how long past CacheMaxAge a cached keyset keeps
	// serving when reloading it fails because the root key (HSM, KMS) or
	// the key store is unavailable (see KeysetCache); 0 means
	// DefaultCacheStaleGrace, NoStaleGrace (or any negative value) none.
	CacheStaleGrace time.Duration
	// DefaultUsageLimit is how many messages one version of an AES-256-GCM
	// key may seal, for keys whose UsageLimit is 0; 0 means
	// DefaultUsageLimit (2^30), and at most MaxUsageLimit (2^32).
	DefaultUsageLimit int64
	// UsageBlock is how many uses the keyring reserves from the store at a
	// time (see Uses); 0 means DefaultUsageBlock.
	UsageBlock int64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AfterFunc runs f once d has passed and returns a function that stops
	// it, as time.AfterFunc does; nil means time.AfterFunc. The keyset cache
	// expires entries with it. Tests pass a fake clock's.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// Logger receives the warnings about keys served stale in an outage;
	// nil means slog.Default().
	Logger *slog.Logger
}

// Keyring manages named keys and encrypts and decrypts under them. Its
// methods are safe for concurrent use.
type Keyring struct {
	store   store.Store
	kek     KEK
	roots   *RootKeys // the same as kek: every root key held, by id
	opts    Options
	cache   *KeysetCache
	flights flight
	// rotations shares one rotation among the callers that find the same
	// key's primary version spent.
	rotations flight
	// newerChecks is when each key's store revision was last read for a
	// ciphertext of an unknown, newer version (loadFor), by key name.
	newerChecks sync.Map
}

// New returns a Keyring over a key store and the root key that wraps its
// keysets. kek may be a [*RootKeys]: the keyring then wraps new keysets with
// its active key and unwraps each stored keyset with the key its RootKeyID
// names, as the set changes during a root-key rotation.
func New(s store.Store, kek KEK, opts Options) (*Keyring, error) {
	if s == nil || kek == nil {
		return nil, fmt.Errorf("%w: envelope.New needs a store and a root key", ErrInvalidArgument)
	}
	if opts.MaxPlaintextSize <= 0 {
		opts.MaxPlaintextSize = DefaultMaxPlaintextSize
	}
	if opts.CacheMaxKeys <= 0 {
		opts.CacheMaxKeys = DefaultCacheMaxKeys
	}
	if opts.CacheMaxAge <= 0 {
		opts.CacheMaxAge = DefaultCacheMaxAge
	}
	if opts.CacheStaleGrace == 0 {
		opts.CacheStaleGrace = DefaultCacheStaleGrace
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.DefaultUsageLimit < 0 || opts.DefaultUsageLimit > MaxUsageLimit || opts.UsageBlock < 0 {
		return nil, fmt.Errorf("%w: envelope.New: default usage limit %d (want 1 to %d) or usage block %d", ErrInvalidArgument, opts.DefaultUsageLimit, int64(MaxUsageLimit), opts.UsageBlock)
	}
	if opts.DefaultUsageLimit == 0 {
		opts.DefaultUsageLimit = DefaultUsageLimit
	}
	if opts.UsageBlock == 0 {
		opts.UsageBlock = DefaultUsageBlock
	}
	if opts.AfterFunc == nil {
		opts.AfterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	roots, ok := kek.(*RootKeys)
	if !ok {
		var err error
		if roots, err = NewRootKeys(kek); err != nil {
			return nil, err
		}
	}
	cache := newKeysetCache(cacheOptions{
		maxKeys: opts.CacheMaxKeys, maxAge: opts.CacheMaxAge, grace: opts.CacheStaleGrace,
		now: opts.Now, afterFunc: opts.AfterFunc, logger: opts.Logger,
	})
	return &Keyring{store: s, kek: roots, roots: roots, opts: opts, cache: cache}, nil
}

// Cache returns the keyring's keyset cache, for its statistics.
func (r *Keyring) Cache() *KeysetCache { return r.cache }

// MaxPlaintextSize returns the largest plaintext Encrypt accepts.
func (r *Keyring) MaxPlaintextSize() int { return r.opts.MaxPlaintextSize }

// ValidKeyName reports whether name follows the naming rule: 1 to 63
// characters, a lowercase letter first, then lowercase letters, digits and
// hyphens.
func ValidKeyName(name string) bool { return validName(name, false) }

// validKeyNameBytes is ValidKeyName for bytes, without a conversion.
func validKeyNameBytes(name []byte) bool { return validName(name, false) }

// validName reports whether name is 1 to 63 characters, a lowercase letter
// first, then lowercase letters, digits, hyphens and, if underscore, '_'.
func validName[T string | []byte](name T, underscore bool) bool {
	if len(name) == 0 || len(name) > maxKeyNameLen || name[0] < 'a' || name[0] > 'z' {
		return false
	}
	for i := 1; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && (!underscore || c != '_') {
			return false
		}
	}
	return true
}

func checkKeyName(name string) error {
	if !ValidKeyName(name) {
		return fmt.Errorf("%w %q: want 1 to 63 characters, a lowercase letter first, then lowercase letters, digits or hyphens", ErrInvalidKeyName, name)
	}
	return nil
}

func validLabelKey(k string) bool { return validName(k, true) }

func checkLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fmt.Errorf("%w: %d labels, at most %d allowed", ErrInvalidArgument, len(labels), maxLabels)
	}
	for k, v := range labels {
		if !validLabelKey(k) {
			return fmt.Errorf("%w: label key %q: want a lowercase letter first, then lowercase letters, digits, '-' or '_', at most 63", ErrInvalidArgument, k)
		}
		if len(v) > maxLabelValueLen {
			return fmt.Errorf("%w: label %q: value longer than %d bytes", ErrInvalidArgument, k, maxLabelValueLen)
		}
	}
	return checkSensitivityLabel(labels)
}

func template(t store.KeyType) (*tinkpb.KeyTemplate, error) {
	switch t {
	case store.KeyTypeAES256GCM:
		return aead.AES256GCMKeyTemplate(), nil
	case store.KeyTypeAES256SIV:
		return daead.AESSIVKeyTemplate(), nil
	case store.KeyTypeHMACSHA256:
		return mac.HMACSHA256Tag256KeyTemplate(), nil
	case store.KeyTypeFF1AES256:
		// Tink has no FF1 key; an AES-256-GCM key is the container of its
		// 32 random bytes, which only the FF1 cipher uses (the key type
		// keeps the two uses apart).
		return aead.AES256GCMKeyTemplate(), nil
	default:
		return nil, fmt.Errorf("%w: key type %v", ErrInvalidArgument, t)
	}
}

// keysetAAD binds a wrapped keyset to its key name and root key id.
func keysetAAD(name, rootKeyID string) []byte {
	b := make([]byte, 0, 32+len(name)+len(rootKeyID))
	b = append(b, "tresor-keyset-v1"...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rootKeyID)))
	return append(b, rootKeyID...)
}

// kekAEAD adapts a KEK to Tink's AEADWithContext for keyset encryption. It
// keeps the KEK's error, which Tink reports without wrapping, so that an
// outage (kms.ErrUnavailable) stays visible to errors.Is.
type kekAEAD struct {
	kek KEK
	err error
}

func (a *kekAEAD) EncryptWithContext(ctx context.Context, pt, aad []byte) ([]byte, error) {
	ct, err := a.kek.Wrap(ctx, pt, aad)
	a.err = err
	return ct, err
}

func (a *kekAEAD) DecryptWithContext(ctx context.Context, ct, aad []byte) ([]byte, error) {
	pt, err := a.kek.Unwrap(ctx, ct, aad)
	a.err = err
	return pt, err
}

// wrapKeyset wraps h with the active root key and returns it with that
// key's id, which the caller stores as the key's RootKeyID: the active key
// may change at any moment during a root-key rotation, so the id must be
// the one of the key that wrapped.
func (r *Keyring) wrapKeyset(ctx context.Context, name string, h *keyset.Handle) ([]byte, string, error) {
	kek := r.roots.Active()
	id := kek.ID()
	var buf bytes.Buffer
	a := &kekAEAD{kek: kek}
	if err := h.WriteWithContext(ctx, keyset.NewBinaryWriter(&buf), a, keysetAAD(name, id)); err != nil {
		if a.err != nil {
			err = a.err
		}
		return nil, "", fmt.Errorf("envelope: wrap keyset of key %q: %w", name, err)
	}
	return buf.Bytes(), id, nil
}

// unwrapKeyset unwraps k's keyset with the root key its RootKeyID names.
func (r *Keyring) unwrapKeyset(ctx context.Context, k store.Key) (*keyset.Handle, error) {
	kek, ok := r.roots.Get(k.RootKeyID)
	if !ok {
		r.roots.missed()
		return nil, fmt.Errorf("%w: %w: key %q is wrapped by root key %q, which this keyring does not hold (it holds %q)", ErrKeysetUnreadable, ErrRootKeyNotHeld, k.Name, k.RootKeyID, r.roots.IDs())
	}
	a := &kekAEAD{kek: kek}
	h, err := keyset.ReadWithContext(ctx, keyset.NewBinaryReader(bytes.NewReader(k.WrappedKeyset)), a, keysetAAD(k.Name, k.RootKeyID))
	if err != nil {
		if a.err != nil {
			err = a.err
		}
		return nil, fmt.Errorf("%w: key %q: %w", ErrKeysetUnreadable, k.Name, err)
	}
	return h, nil
}

// build makes a loadedKey from stored metadata and its unwrapped keyset.
func (r *Keyring) build(k store.Key, h *keyset.Handle) (*loadedKey, error) {
	lk := &loadedKey{meta: k, handle: h, tinkIDs: make(map[uint32]uint32, len(k.Versions)), loadedAt: r.opts.Now()}
	for _, v := range k.Versions {
		lk.tinkIDs[v.Number] = v.TinkKeyID
	}
	primary, err := h.Primary()
	if err != nil {
		return nil, fmt.Errorf("%w: key %q: %w", ErrKeysetUnreadable, k.Name, err)
	}
	if id, ok := lk.tinkIDs[k.PrimaryVersion]; !ok || id != primary.KeyID() {
		return nil, fmt.Errorf("%w: key %q: primary version %d does not match the keyset's primary key", ErrKeysetUnreadable, k.Name, k.PrimaryVersion)
	}
	switch k.Type {
	case store.KeyTypeAES256GCM:
		lk.gcm, err = gcmVersions(h, k.Versions)
	case store.KeyTypeAES256SIV:
		lk.daead, err = daead.New(h)
	case store.KeyTypeHMACSHA256:
		lk.mac, err = macVersions(h, k.Versions)
	case store.KeyTypeFF1AES256:
		lk.ff1, err = ff1Cipher(h, primary.KeyID())
	default:
		err = fmt.Errorf("unknown key type %v", k.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: key %q: %w", ErrKeysetUnreadable, k.Name, err)
	}
	lk.usage = r.usageFor(k)
	return lk, nil
}

// loadBytes is load for a name in bytes, as a ciphertext holds it: a cache
// hit converts nothing and allocates nothing.
func (r *Keyring) loadBytes(ctx context.Context, name []byte) (*loadedKey, error) {
	if lk, ok := r.cache.getBytes(name); ok {
		return lk, nil
	}
	return r.loadMissed(ctx, string(name))
}

// load returns the named key with its primitive, from the cache when it
// can. An expired entry serves stale in an outage (see KeysetCache).
func (r *Keyring) load(ctx context.Context, name string) (*loadedKey, error) {
	if lk, ok := r.cache.get(name); ok {
		return lk, nil
	}
	return r.loadMissed(ctx, name)
}

// loadMissed is load after the cache lookup missed (and counted the miss
// once): a recent stale entry in an outage, else one shared load.
func (r *Keyring) loadMissed(ctx context.Context, name string) (*loadedKey, error) {
	if lk, ok := r.cache.staleRecent(name); ok {
		return lk, nil
	}
	return r.flights.do(ctx, name, func() (*loadedKey, error) {
		// A flight that just failed may have ended between the check
		// above and this one.
		if lk, ok := r.cache.staleRecent(name); ok {
			return lk, nil
		}
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
		defer cancel()
		k, err := r.store.GetKey(lctx, name)
		if err != nil {
			err = storeErr(name, err)
			switch {
			case outage(lctx, err):
				if lk, ok := r.cache.serveStale(name, 0, false, err); ok {
					return lk, nil
				}
			case errors.Is(err, ErrKeyNotFound):
				r.cache.remove(name, nil)
			}
			return nil, err
		}
		if k.State == store.KeyStateDestroyed {
			lk := r.tombstone(k)
			r.cache.put(lk)
			return lk, nil
		}
		h, err := r.unwrapKeyset(lctx, k)
		if err != nil {
			if outage(lctx, err) {
				if lk, ok := r.cache.serveStale(name, k.Revision, true, err); ok {
					return lk, nil
				}
			}
			return nil, err
		}
		lk, err := r.build(k, h)
		if err != nil {
			return nil, err
		}
		r.cache.put(lk)
		return lk, nil
	})
}

// outage reports whether a load failed because the root key or the key
// store is unavailable, or took longer than loadTimeout (lctx, the load's
// own context, ended): the cases in which a stale keyset may serve.
func outage(lctx context.Context, err error) bool {
	return errors.Is(err, kms.ErrUnavailable) || errors.Is(err, store.ErrUnavailable) ||
		(errors.Is(err, context.DeadlineExceeded) && lctx.Err() != nil)
}

func storeErr(name string, err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%w: %q", ErrKeyNotFound, name)
	case errors.Is(err, store.ErrAlreadyExists):
		return fmt.Errorf("%w: %q", ErrKeyExists, name)
	case errors.Is(err, store.ErrConflict):
		return fmt.Errorf("%w: %q", ErrConflict, name)
	case errors.Is(err, store.ErrUnavailable):
		return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	default:
		return fmt.Errorf("envelope: key store: %w", err)
	}
}

// public returns k without its wrapped keyset, for callers outside the
// keyring. Labels and versions are copied because k may also be the
// metadata of a cached entry, which callers must not be able to change.
func public(k store.Key) store.Key {
	k.WrappedKeyset = nil
	k.Labels = maps.Clone(k.Labels)
	k.Versions = slices.Clone(k.Versions)
	return k
}

// KeySpec describes a key to create.
type KeySpec struct {
	Name string
	Type store.KeyType
	// RotationPeriod is zero for a key that rotates only on demand.
	RotationPeriod time.Duration
	Labels         map[string]string
	// UsageLimit is how many messages each version may seal before the key
	// rotates (AES-256-GCM keys only); 0 means the keyring's default. At
	// most MaxUsageLimit.
	UsageLimit int64
	// RetireAfter, when positive, retires each version (advances the
	// minimum decryption version past it) once it has been superseded that
	// long. RetireAfterVersions, when positive, retires each version once
	// that many newer versions exist. The scheduler applies both.
	RetireAfter         time.Duration
	RetireAfterVersions uint32
}

// CreateKey creates an enabled key with one version.
func (r *Keyring) CreateKey(ctx context.Context, spec KeySpec) (store.Key, error) {
	if err := checkKeyName(spec.Name); err != nil {
		return store.Key{}, err
	}
	tmpl, err := template(spec.Type)
	if err != nil {
		return store.Key{}, err
	}
	if spec.RotationPeriod < 0 || spec.RotationPeriod > maxDuration {
		return store.Key{}, fmt.Errorf("%w: rotation period %v: want 0 (on demand only) to %v", ErrInvalidArgument, spec.RotationPeriod, maxDuration)
	}
	if spec.RotationPeriod > 0 && !rotatable(spec.Type) {
		return store.Key{}, fmt.Errorf("%w: an %s key does not rotate, so it takes no rotation period", ErrInvalidArgument, spec.Type)
	}
	if err := checkRetention(&spec.UsageLimit, &spec.RetireAfter, &spec.RetireAfterVersions); err != nil {
		return store.Key{}, err
	}
	if err := checkLabels(spec.Labels); err != nil {
		return store.Key{}, err
	}
	h, err := keyset.NewHandle(tmpl)
	if err != nil {
		return store.Key{}, fmt.Errorf("envelope: new keyset: %w", err)
	}
	primary, err := h.Primary()
	if err != nil {
		return store.Key{}, fmt.Errorf("envelope: new keyset: %w", err)
	}
	wrapped, rootKeyID, err := r.wrapKeyset(ctx, spec.Name, h)
	if err != nil {
		return store.Key{}, err
	}
	now := r.opts.Now()
	k, err := r.store.CreateKey(ctx, store.Key{
		Name:                 spec.Name,
		Type:                 spec.Type,
		State:                store.KeyStateEnabled,
		PrimaryVersion:       1,
		MinDecryptionVersion: 1,
		RotationPeriod:       spec.RotationPeriod,
		UsageLimit:           spec.UsageLimit,
		RetireAfter:          spec.RetireAfter,
		RetireAfterVersions:  spec.RetireAfterVersions,
		Labels:               maps.Clone(spec.Labels),
		Versions:             []store.Version{{Number: 1, TinkKeyID: primary.KeyID(), CreateTime: now}},
		WrappedKeyset:        wrapped,
		RootKeyID:            rootKeyID,
	})
	if err != nil {
		return store.Key{}, storeErr(spec.Name, err)
	}
	if lk, err := r.build(k, h); err == nil {
		r.cache.put(lk)
	}
	return public(k), nil
}

// GetKey returns a key's metadata, read from the store.
func (r *Keyring) GetKey(ctx context.Context, name string) (store.Key, error) {
	if err := checkKeyName(name); err != nil {
		return store.Key{}, err
	}
	k, err := r.store.GetKey(ctx, name)
	if err != nil {
		return store.Key{}, storeErr(name, err)
	}
	return public(k), nil
}

// ListKeys returns a page of keys ordered by name and the next page's token.
func (r *Keyring) ListKeys(ctx context.Context, pageSize int, pageToken string) ([]store.Key, string, error) {
	keys, next, err := r.store.ListKeys(ctx, pageSize, pageToken)
	if err != nil {
		if errors.Is(err, store.ErrInvalidPageToken) {
			return nil, "", fmt.Errorf("%w: page token", ErrInvalidArgument)
		}
		return nil, "", storeErr("", err)
	}
	for i := range keys {
		keys[i] = public(keys[i])
	}
	return keys, next, nil
}

// KeyUpdate lists the changes UpdateKey makes; nil fields stay as they are.
type KeyUpdate struct {
	RotationPeriod       *time.Duration
	MinDecryptionVersion *uint32
	// Labels, when non-nil, replace all of the key's labels.
	Labels map[string]string
	// UsageLimit, RetireAfter and RetireAfterVersions: see KeySpec.
	UsageLimit          *int64
	RetireAfter         *time.Duration
	RetireAfterVersions *uint32
}

// UpdateKey changes a key's rotation period, minimum decryption version,
// labels, usage limit or retention. A key scheduled for deletion or
// destroyed gives ErrKeyDeletionScheduled or ErrKeyDestroyed.
func (r *Keyring) UpdateKey(ctx context.Context, name string, u KeyUpdate) (store.Key, error) {
	if err := checkKeyName(name); err != nil {
		return store.Key{}, err
	}
	if u.RotationPeriod != nil && (*u.RotationPeriod < 0 || *u.RotationPeriod > maxDuration) {
		return store.Key{}, fmt.Errorf("%w: rotation period %v: want 0 (on demand only) to %v", ErrInvalidArgument, *u.RotationPeriod, maxDuration)
	}
	if err := checkRetention(u.UsageLimit, u.RetireAfter, u.RetireAfterVersions); err != nil {
		return store.Key{}, err
	}
	if u.Labels != nil {
		if err := checkLabels(u.Labels); err != nil {
			return store.Key{}, err
		}
	}
	return r.modify(ctx, name, func(k *store.Key) (*keyset.Handle, error) {
		if err := lifecycleErr(*k); err != nil {
			return nil, err
		}
		if u.UsageLimit != nil {
			k.UsageLimit = *u.UsageLimit
		}
		if u.RetireAfter != nil {
			k.RetireAfter = *u.RetireAfter
		}
		if u.RetireAfterVersions != nil {
			k.RetireAfterVersions = *u.RetireAfterVersions
		}
		if v := u.MinDecryptionVersion; v != nil && (*v < 1 || *v > k.PrimaryVersion) {
			return nil, fmt.Errorf("%w: min_decryption_version %d: want 1 to the primary version %d", ErrInvalidArgument, *v, k.PrimaryVersion)
		}
		if u.RotationPeriod != nil {
			k.RotationPeriod = *u.RotationPeriod
		}
		if u.MinDecryptionVersion != nil {
			k.MinDecryptionVersion = *u.MinDecryptionVersion
		}
		if u.Labels != nil {
			k.Labels = maps.Clone(u.Labels)
		}
		return nil, nil
	})
}

// DisableKey stops a key from encrypting and decrypting until EnableKey.
func (r *Keyring) DisableKey(ctx context.Context, name string) (store.Key, error) {
	return r.setState(ctx, name, store.KeyStateDisabled)
}

// EnableKey lets a disabled key encrypt and decrypt again. Neither it nor
// DisableKey applies to a key scheduled for deletion (CancelKeyDeletion
// first) or destroyed: they give ErrKeyDeletionScheduled or ErrKeyDestroyed.
func (r *Keyring) EnableKey(ctx context.Context, name string) (store.Key, error) {
	return r.setState(ctx, name, store.KeyStateEnabled)
}

func (r *Keyring) setState(ctx context.Context, name string, s store.KeyState) (store.Key, error) {
	if err := checkKeyName(name); err != nil {
		return store.Key{}, err
	}
	return r.modify(ctx, name, func(k *store.Key) (*keyset.Handle, error) {
		if err := lifecycleErr(*k); err != nil {
			return nil, err
		}
		k.State = s
		return nil, nil
	})
}

// RotateKey adds a version to an enabled key and makes it primary. Earlier
// versions keep decrypting down to the key's minimum decryption version.
func (r *Keyring) RotateKey(ctx context.Context, name string) (store.Key, error) {
	if err := checkKeyName(name); err != nil {
		return store.Key{}, err
	}
	return r.modify(ctx, name, func(k *store.Key) (*keyset.Handle, error) {
		return r.addVersion(ctx, k)
	})
}

// addVersion is the change RotateKey makes to k: a new Tink key, made
// primary, and the keyset wrapped again. It returns the new handle.
func (r *Keyring) addVersion(ctx context.Context, k *store.Key) (*keyset.Handle, error) {
	name := k.Name
	if k.State != store.KeyStateEnabled {
		if err := lifecycleErr(*k); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %q cannot be rotated", ErrKeyDisabled, name)
	}
	if !rotatable(k.Type) {
		return nil, fmt.Errorf("%w: %q is an %s key", ErrNotRotatable, name, k.Type)
	}
	tmpl, err := template(k.Type)
	if err != nil {
		return nil, err
	}
	h, err := r.handleFor(ctx, *k)
	if err != nil {
		return nil, err
	}
	m := keyset.NewManagerFromHandle(h)
	id, err := m.Add(tmpl)
	if err != nil {
		return nil, fmt.Errorf("envelope: rotate %q: %w", name, err)
	}
	if err := m.SetPrimary(id); err != nil {
		return nil, fmt.Errorf("envelope: rotate %q: %w", name, err)
	}
	nh, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("envelope: rotate %q: %w", name, err)
	}
	wrapped, rootKeyID, err := r.wrapKeyset(ctx, name, nh)
	if err != nil {
		return nil, err
	}
	next := k.PrimaryVersion + 1
	for _, v := range k.Versions {
		next = max(next, v.Number+1)
	}
	k.Versions = append(slices.Clone(k.Versions), store.Version{Number: next, TinkKeyID: id, CreateTime: r.opts.Now()})
	k.PrimaryVersion = next
	k.WrappedKeyset = wrapped
	k.RootKeyID = rootKeyID
	return nh, nil
}

// handleFor returns k's unwrapped keyset, from the cache when the cached
// revision is k's, else from the root key.
func (r *Keyring) handleFor(ctx context.Context, k store.Key) (*keyset.Handle, error) {
	if lk, ok := r.cache.get(k.Name); ok && lk.meta.Revision == k.Revision && lk.handle != nil {
		return lk.handle, nil
	}
	return r.unwrapKeyset(ctx, k)
}

// modify reads a key, applies change and writes it back with a
// compare-and-swap on its revision, retrying when another writer got there
// first. change returns the new keyset handle when it changed the keyset,
// or errNoChange to return the key as read, writing nothing.
func (r *Keyring) modify(ctx context.Context, name string, change func(*store.Key) (*keyset.Handle, error)) (store.Key, error) {
	if err := checkKeyName(name); err != nil {
		return store.Key{}, err
	}
	for range updateAttempts {
		k, err := r.store.GetKey(ctx, name)
		if err != nil {
			return store.Key{}, storeErr(name, err)
		}
		h, err := change(&k)
		if errors.Is(err, errNoChange) {
			return public(k), nil
		}
		if err != nil {
			return store.Key{}, err
		}
		updated, err := r.store.UpdateKey(ctx, k)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return store.Key{}, storeErr(name, err)
		}
		r.recache(updated, k.Revision, h)
		return public(updated), nil
	}
	return store.Key{}, fmt.Errorf("%w: %q: gave up after %d attempts", ErrConflict, name, updateAttempts)
}

// recache puts an updated key into the cache without a root-key call: with
// the new keyset handle when the update changed it, else with the handle
// cached for the revision the update replaced. Failing both, it drops the
// entry so the next use loads the key afresh. A destroyed key's material
// leaves the cache at once.
func (r *Keyring) recache(updated store.Key, prevRevision int64, h *keyset.Handle) {
	if updated.State == store.KeyStateDestroyed {
		r.cache.invalidate(updated.Name, updated.Revision)
		return
	}
	if h == nil {
		if lk, ok := r.cache.get(updated.Name); ok && lk.meta.Revision == prevRevision {
			h = lk.handle
		}
	}
	if h != nil {
		if lk, err := r.build(updated, h); err == nil {
			r.cache.put(lk)
			return
		}
	}
	r.cache.invalidate(updated.Name, updated.Revision)
}
