package envelope

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/tresorkms/tresor/internal/store"
)

// Usage limits.
//
// Every encryption with a version of an AES-256-GCM key draws a random
// 96-bit nonce, so a version may seal only so many messages (see
// DefaultUsageLimit). The limit holds across replicas: uses are reserved in
// the key store (store.ReserveUses), which counts them per version in one
// place. To keep the hot path free of store writes, each loaded primary
// version holds an atomic count of uses reserved but not yet spent; an
// encryption takes one with a compare-and-swap. When the count runs out,
// one caller reserves the next block (Options.UsageBlock) while the others
// for the same version wait for it. To keep that wait off the hot path too,
// an encryption that leaves fewer than a quarter of a block starts a
// prefetch: one goroutine per version at a time reserves the next block in
// the background, with a context of its own bounded by prefetchTimeout, and
// adds it to the count when it lands. The synchronous reservation stays as
// the fallback for a count that runs out first (the caller then waits for
// the prefetch in flight, or reserves itself). A prefetch the store grants
// nothing marks the version spent; the uses still counted are spent first,
// and only then does the key rotate. A prefetch that fails is not retried
// until a synchronous reservation succeeds, so an unreachable store is not
// called once per encryption. A replica that stops holding uses
// (a crash, an evicted cache entry) wastes at most a block, counted as used:
// the error is always on the safe side.
//
// When the store grants nothing the version is spent: the keyring rotates
// the key, once (a compare-and-swap on the key's revision; a caller that
// finds the primary version already moved on, here or on another replica,
// just loads the key again) and encrypts with the new primary version. If
// the rotation fails, so does the encryption: a version never seals more
// than its limit.
//
// AES-256-SIV keys are deterministic: they draw no nonce, have no such
// bound, and are not counted.

// reserveAttempts bounds how many spent primary versions one encryption
// steps over before it gives up. Each step means the key moved on (others
// spent a whole version meanwhile), so only tiny limits under heavy
// concurrency ever take more than one.
const reserveAttempts = 32

// prefetchTimeout bounds one background reservation, so that no prefetch
// outlives its key's cache entry by more than that.
const prefetchTimeout = 10 * time.Second

// versionUsage counts the uses of one key version reserved from the store
// and not yet spent.
type versionUsage struct {
	version uint32
	limit   int64
	// remaining is taken one at a time with a compare-and-swap, never below 0.
	remaining atomic.Int64
	// reserving serializes reservations from the store: a one-slot
	// semaphore, so that a caller waiting for it gives up when its
	// context ends (a slow store must not hold encryptions past their
	// deadlines).
	reserving chan struct{}
	spent     atomic.Bool // the store granted nothing: the version is spent
	// prefetching is set while a background reservation runs (at most one).
	prefetching atomic.Bool
	// noPrefetch stops prefetches: the version is spent, or the last
	// prefetch failed and no synchronous reservation has succeeded since.
	noPrefetch atomic.Bool
	// waits counts the encryptions that found no use reserved and waited
	// for the store.
	waits atomic.Int64
}

// take spends one reserved use, if there is one, and returns how many are
// left.
func (u *versionUsage) take() (left int64, ok bool) {
	for {
		n := u.remaining.Load()
		if n <= 0 {
			return 0, false
		}
		if u.remaining.CompareAndSwap(n, n-1) {
			return n - 1, true
		}
	}
}

// usageLimit is k's usage limit per version, the keyring's default for 0.
func (r *Keyring) usageLimit(k store.Key) int64 { return UsageLimit(k, r.opts.DefaultUsageLimit) }

// UsageLimit is how many encryptions each version of k allows: its own
// limit, else defaultLimit (a keyring's Options.DefaultUsageLimit), else
// DefaultUsageLimit.
func UsageLimit(k store.Key, defaultLimit int64) int64 {
	switch {
	case k.UsageLimit > 0:
		return k.UsageLimit
	case defaultLimit > 0:
		return defaultLimit
	}
	return DefaultUsageLimit
}

// usageFor returns the usage counter of k's primary version for a key being
// built: nil for keys that are not counted, else the counter of the entry
// cached for the same version and limit, so that a key re-cached after a
// change keeps the uses it reserved, or a new one.
func (r *Keyring) usageFor(k store.Key) *versionUsage {
	if k.Type != store.KeyTypeAES256GCM || k.State == store.KeyStateDestroyed {
		return nil
	}
	limit := r.usageLimit(k)
	if old, ok := r.cache.peek(k.Name); ok && old.usage != nil && old.usage.version == k.PrimaryVersion && old.usage.limit == limit {
		if u := old.usage; !u.spent.Load() {
			return u
		}
	}
	return newVersionUsage(k.PrimaryVersion, limit)
}

func newVersionUsage(version uint32, limit int64) *versionUsage {
	return &versionUsage{version: version, limit: limit, reserving: make(chan struct{}, 1)}
}

// lock takes the reservation slot, or gives up when ctx ends.
func (u *versionUsage) lock(ctx context.Context) error {
	select {
	case u.reserving <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (u *versionUsage) unlock() { <-u.reserving }

// reserve takes one use of lk's primary version and returns the key to
// seal with: lk, or the key as loaded after the spent version was rotated.
func (r *Keyring) reserve(ctx context.Context, lk *loadedKey) (*loadedKey, error) {
	for range reserveAttempts {
		if err := stateErr(lk.meta); err != nil {
			return nil, err
		}
		u := lk.usage
		if u == nil {
			return lk, nil
		}
		if left, ok := u.take(); ok {
			r.maybePrefetch(lk.meta.Name, u, left)
			return lk, nil
		}
		u.waits.Add(1)
		left, ok, err := r.refill(ctx, lk.meta.Name, u)
		if err != nil {
			return nil, err
		}
		if ok {
			r.maybePrefetch(lk.meta.Name, u, left)
			return lk, nil
		}
		next, err := r.rotateSpent(ctx, lk.meta.Name, u.version)
		if err != nil {
			return nil, fmt.Errorf("%w: key %q version %d has sealed its limit of %d messages and the key could not be rotated: %w", ErrUsageLimitReached, lk.meta.Name, u.version, u.limit, err)
		}
		lk = next
	}
	return nil, fmt.Errorf("%w: key %q: %d new versions in a row were spent at once", ErrUsageLimitReached, lk.meta.Name, reserveAttempts)
}

// refill reserves the next block of uses of u's version from the store
// and takes one of them, returning how many are left. It returns false
// when the version is spent.
func (r *Keyring) refill(ctx context.Context, name string, u *versionUsage) (int64, bool, error) {
	if err := u.lock(ctx); err != nil {
		return 0, false, err
	}
	defer u.unlock()
	if left, ok := u.take(); ok {
		return left, true, nil // another caller or a prefetch refilled meanwhile
	}
	if u.spent.Load() {
		return 0, false, nil
	}
	granted, err := r.store.ReserveUses(ctx, name, u.version, r.opts.UsageBlock, u.limit)
	if err != nil {
		return 0, false, storeErr(name, err)
	}
	if granted <= 0 {
		u.spent.Store(true)
		u.noPrefetch.Store(true)
		return 0, false, nil
	}
	// Holding the reservation slot, no one else adds, and take never goes below 0: remaining
	// is 0 here.
	u.remaining.Store(granted - 1)
	u.noPrefetch.Store(false) // the store answers again
	return granted - 1, true, nil
}

// prefetchBelow is how few reserved uses start a prefetch of the next
// block: a quarter of a block (none for blocks under 4).
func (r *Keyring) prefetchBelow() int64 { return r.opts.UsageBlock / 4 }

// maybePrefetch starts a background reservation of u's next block when
// left, the uses still reserved, is below prefetchBelow and none runs.
func (r *Keyring) maybePrefetch(name string, u *versionUsage, left int64) {
	if left >= r.prefetchBelow() || u.noPrefetch.Load() || !u.prefetching.CompareAndSwap(false, true) {
		return
	}
	go r.prefetch(name, u)
}

// prefetch reserves the next block of u's version and adds it to the uses
// reserved. It holds the reservation slot while the store answers, so a caller that runs
// out meanwhile waits for this block rather than reserving another.
func (r *Keyring) prefetch(name string, u *versionUsage) {
	defer u.prefetching.Store(false)
	// Detached from any caller: the block serves every caller of the
	// version, and ends within prefetchTimeout whatever happens to the key.
	ctx, cancel := context.WithTimeout(context.Background(), prefetchTimeout)
	defer cancel()
	if err := u.lock(ctx); err != nil {
		return
	}
	defer u.unlock()
	if u.spent.Load() || u.remaining.Load() >= r.prefetchBelow() {
		return // a synchronous reservation came first
	}
	granted, err := r.store.ReserveUses(ctx, name, u.version, r.opts.UsageBlock, u.limit)
	if err != nil {
		u.noPrefetch.Store(true)
		r.opts.Logger.Warn("envelope: reserving the next block of uses in the background failed; encryptions will reserve it themselves", "key", name, "version", u.version, "err", err)
		return
	}
	if granted <= 0 {
		// Spent: the uses still counted are spent first, then refill
		// reports the version spent and the key rotates.
		u.spent.Store(true)
		u.noPrefetch.Store(true)
		return
	}
	u.remaining.Add(granted)
}

// rotateSpent rotates key name because its primary version, version, is
// spent, unless that version is no longer primary (another caller or
// replica rotated first), and returns the key as loaded afterwards.
// Concurrent callers for the same key share one rotation.
func (r *Keyring) rotateSpent(ctx context.Context, name string, version uint32) (*loadedKey, error) {
	return r.rotations.do(ctx, name, func() (*loadedKey, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
		defer cancel()
		var moved int64 // revision seen with another primary version
		_, err := r.modify(rctx, name, func(k *store.Key) (*keyset.Handle, error) {
			moved = 0
			if k.PrimaryVersion != version {
				moved = k.Revision
				return nil, errNoChange
			}
			return r.addVersion(rctx, k)
		})
		if err != nil {
			return nil, err
		}
		if moved != 0 {
			if lk, ok := r.cache.get(name); ok && lk.meta.Revision >= moved {
				return lk, nil // cached already, with the uses it reserved
			}
			// Drop the stale entry, so that the load below reads the
			// store.
			r.cache.invalidate(name, moved)
		}
		return r.load(rctx, name)
	})
}

// Uses returns how many encryptions have been reserved of each version of
// the named key, across all replicas: at least how many each has sealed.
// Versions never counted (all of an AES-256-SIV key's) are absent.
func (r *Keyring) Uses(ctx context.Context, name string) (map[uint32]int64, error) {
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	uses, err := r.store.Uses(ctx, name)
	if err != nil {
		return nil, storeErr(name, err)
	}
	return uses, nil
}
