package envelope

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/tresorkms/tresor/internal/store"
)

// This file holds a key's life after creation: scheduled deletion and
// destruction, rotation when its period has passed, and the retirement of
// old versions. The scheduler (package rotation) calls the *IfDue methods;
// each decides again, inside the compare-and-swap that writes the change,
// so that two callers never both act on one key.

// Waiting periods of ScheduleKeyDeletion.
const (
	MinDeletionWait     = 7 * 24 * time.Hour
	MaxDeletionWait     = 30 * 24 * time.Hour
	DefaultDeletionWait = MaxDeletionWait
)

// Bounds of a key's usage limit and retention settings.
const (
	// DefaultUsageLimit is Options.DefaultUsageLimit's default, 2^30
	// encryptions per version of an AES-256-GCM key. NIST SP 800-38D
	// (section 8.3) allows at most 2^32 invocations of a GCM key with random
	// 96-bit nonces, which keeps the chance of any nonce repeating below
	// 2^-32; 2^30 stays a factor of four under that bound, a margin for the
	// uses replicas reserve and never spend.
	DefaultUsageLimit = 1 << 30
	// MaxUsageLimit is the NIST SP 800-38D bound itself, 2^32.
	MaxUsageLimit = 1 << 32
	// DefaultUsageBlock is Options.UsageBlock's default.
	DefaultUsageBlock = 1024
	// MaxRetireAfterVersions bounds KeySpec.RetireAfterVersions.
	MaxRetireAfterVersions = 1000
	// maxDuration bounds rotation periods and retirement ages: 3650 days,
	// as the API does.
	maxDuration = 3650 * 24 * time.Hour
)

// errNoChange, returned by a change given to modify, ends it without a
// write: the key is as it should be.
var errNoChange = errors.New("envelope: no change")

// keyStateError says that a key scheduled for deletion or destroyed cannot
// do what was asked, and since when or until when. It matches
// ErrKeyDeletionScheduled or ErrKeyDestroyed with errors.Is.
type keyStateError struct {
	name  string
	state store.KeyState
	at    time.Time
}

func (e *keyStateError) Error() string {
	at := e.at.UTC().Format(time.RFC3339)
	if e.state == store.KeyStateDestroyed {
		return fmt.Sprintf("envelope: key %q was destroyed at %s", e.name, at)
	}
	return fmt.Sprintf("envelope: key %q is scheduled for deletion at %s", e.name, at)
}

func (e *keyStateError) Is(target error) bool {
	switch e.state {
	case store.KeyStateDestroyed:
		return target == ErrKeyDestroyed
	case store.KeyStateDeletionScheduled:
		return target == ErrKeyDeletionScheduled
	}
	return false
}

// stateErr is nil for an enabled key, else the error that says why k
// cannot encrypt or decrypt.
func stateErr(k store.Key) error {
	switch k.State {
	case store.KeyStateEnabled:
		return nil
	case store.KeyStateDeletionScheduled:
		return &keyStateError{name: k.Name, state: k.State, at: k.DeletionTime}
	case store.KeyStateDestroyed:
		return &keyStateError{name: k.Name, state: k.State, at: k.DestroyTime}
	default:
		return fmt.Errorf("%w: %q", ErrKeyDisabled, k.Name)
	}
}

// lifecycleErr is stateErr for changes a key's configuration: nil for an
// enabled or disabled key.
func lifecycleErr(k store.Key) error {
	if k.State == store.KeyStateDisabled {
		return nil
	}
	return stateErr(k)
}

// tombstone is the cache entry of a destroyed key: its metadata and no key
// material, so that calls naming it learn why they fail without a store
// read each.
func (r *Keyring) tombstone(k store.Key) *loadedKey {
	return &loadedKey{meta: k, loadedAt: r.opts.Now()}
}

// checkRetention validates usage limit and retention settings.
func checkRetention(usageLimit *int64, retireAfter *time.Duration, retireAfterVersions *uint32) error {
	if usageLimit != nil && (*usageLimit < 0 || *usageLimit > MaxUsageLimit) {
		return fmt.Errorf("%w: usage limit %d: want 0 (the default) to %d", ErrInvalidArgument, *usageLimit, int64(MaxUsageLimit))
	}
	if retireAfter != nil && (*retireAfter < 0 || *retireAfter > maxDuration) {
		return fmt.Errorf("%w: retire_after %v: want 0 (never) to %v", ErrInvalidArgument, *retireAfter, maxDuration)
	}
	if retireAfterVersions != nil && *retireAfterVersions > MaxRetireAfterVersions {
		return fmt.Errorf("%w: retire_after_versions %d: want 0 (never) to %d", ErrInvalidArgument, *retireAfterVersions, MaxRetireAfterVersions)
	}
	return nil
}

// ScheduleKeyDeletion schedules the destruction of a key's material after
// wait (0 means DefaultDeletionWait; else MinDeletionWait to
// MaxDeletionWait). Until then the key neither encrypts nor decrypts, and
// CancelKeyDeletion restores it, disabled. A key already scheduled or
// destroyed gives ErrKeyDeletionScheduled or ErrKeyDestroyed.
func (r *Keyring) ScheduleKeyDeletion(ctx context.Context, name string, wait time.Duration) (store.Key, error) {
	if err := checkKeyName(name); err != nil {
		return store.Key{}, err
	}
	if wait == 0 {
		wait = DefaultDeletionWait
	}
	if wait < MinDeletionWait || wait > MaxDeletionWait {
		return store.Key{}, fmt.Errorf("%w: waiting period %v: want 7 to 30 days", ErrInvalidArgument, wait)
	}
	return r.modify(ctx, name, func(k *store.Key) (*keyset.Handle, error) {
		if err := lifecycleErr(*k); err != nil {
			return nil, err
		}
		k.State = store.KeyStateDeletionScheduled
		k.DeletionTime = r.opts.Now().Add(wait)
		return nil, nil
	})
}

// CancelKeyDeletion cancels a scheduled deletion; the key comes back
// disabled. A key not scheduled gives ErrKeyNotScheduled, a destroyed one
// ErrKeyDestroyed.
func (r *Keyring) CancelKeyDeletion(ctx context.Context, name string) (store.Key, error) {
	if err := checkKeyName(name); err != nil {
		return store.Key{}, err
	}
	return r.modify(ctx, name, func(k *store.Key) (*keyset.Handle, error) {
		switch k.State {
		case store.KeyStateDeletionScheduled:
		case store.KeyStateDestroyed:
			return nil, stateErr(*k)
		default:
			return nil, fmt.Errorf("%w: %q", ErrKeyNotScheduled, name)
		}
		k.State = store.KeyStateDisabled
		k.DeletionTime = time.Time{}
		return nil, nil
	})
}

// DestructionDue reports whether k is scheduled for deletion and its
// deletion time has come at now.
func DestructionDue(k store.Key, now time.Time) bool {
	return k.State == store.KeyStateDeletionScheduled && !now.Before(k.DeletionTime)
}

// DestroyIfDue destroys the material of a key whose deletion time has
// passed: the stored keyset is erased, the key becomes DESTROYED for good
// and leaves the cache. It reports whether it destroyed the key; a key not
// due is left alone.
func (r *Keyring) DestroyIfDue(ctx context.Context, name string) (store.Key, bool, error) {
	var done bool
	k, err := r.modify(ctx, name, func(k *store.Key) (*keyset.Handle, error) {
		done = false
		now := r.opts.Now()
		if !DestructionDue(*k, now) {
			return nil, errNoChange
		}
		k.State = store.KeyStateDestroyed
		k.DestroyTime = now
		k.DeletionTime = time.Time{}
		k.WrappedKeyset = nil
		k.RootKeyID = ""
		done = true
		return nil, nil
	})
	return k, done && err == nil, err
}

// NextRotationTime returns when an enabled key with a rotation period is
// due for rotation: its primary version's CreateTime plus the period.
func NextRotationTime(k store.Key) (time.Time, bool) {
	if k.RotationPeriod <= 0 || k.State != store.KeyStateEnabled {
		return time.Time{}, false
	}
	for _, v := range k.Versions {
		if v.Number == k.PrimaryVersion {
			return v.CreateTime.Add(k.RotationPeriod), true
		}
	}
	return time.Time{}, false
}

// RotationDue reports whether k's rotation period has passed at now.
func RotationDue(k store.Key, now time.Time) bool {
	t, ok := NextRotationTime(k)
	return ok && !now.Before(t)
}

// RotateIfDue rotates an enabled key whose rotation period has passed since
// its primary version was created, and reports whether it did.
func (r *Keyring) RotateIfDue(ctx context.Context, name string) (store.Key, bool, error) {
	var done bool
	k, err := r.modify(ctx, name, func(k *store.Key) (*keyset.Handle, error) {
		done = false
		if !RotationDue(*k, r.opts.Now()) {
			return nil, errNoChange
		}
		done = true
		return r.addVersion(ctx, k)
	})
	return k, done && err == nil, err
}

// RetirementVersion returns the minimum decryption version k's retention
// settings call for at now: the oldest version, not below the current
// minimum, that neither has RetireAfterVersions newer versions nor was
// superseded (by the next version's creation) RetireAfter or longer ago.
// It never passes the primary version.
func RetirementVersion(k store.Key, now time.Time) uint32 {
	minVersion := k.MinDecryptionVersion
	if k.RetireAfter <= 0 && k.RetireAfterVersions == 0 {
		return minVersion
	}
	// Versions come from the store ordered by number.
	for i, v := range k.Versions {
		if v.Number < minVersion {
			continue
		}
		if v.Number >= k.PrimaryVersion || i+1 == len(k.Versions) {
			return max(minVersion, min(v.Number, k.PrimaryVersion))
		}
		newer := len(k.Versions) - i - 1
		byCount := k.RetireAfterVersions > 0 && newer >= int(k.RetireAfterVersions)
		byAge := k.RetireAfter > 0 && !now.Before(k.Versions[i+1].CreateTime.Add(k.RetireAfter))
		if !byCount && !byAge {
			return v.Number
		}
		minVersion = k.Versions[i+1].Number
	}
	return min(minVersion, k.PrimaryVersion)
}

// RetireVersions advances the key's minimum decryption version to what its
// retention settings call for (see RetirementVersion), and reports whether
// it did. Keys scheduled for deletion or destroyed are left alone.
func (r *Keyring) RetireVersions(ctx context.Context, name string) (store.Key, bool, error) {
	var done bool
	k, err := r.modify(ctx, name, func(k *store.Key) (*keyset.Handle, error) {
		done = false
		if lifecycleErr(*k) != nil {
			return nil, errNoChange
		}
		v := RetirementVersion(*k, r.opts.Now())
		if v <= k.MinDecryptionVersion {
			return nil, errNoChange
		}
		k.MinDecryptionVersion = v
		done = true
		return nil, nil
	})
	return k, done && err == nil, err
}
