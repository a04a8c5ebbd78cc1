package envelope

import (
	"context"
	"crypto/cipher"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/tresorkms/tresor/internal/store"
)

// loadedKey is a named key with its keyset unwrapped and its primitive built.
// It is immutable once built, except for its cache bookkeeping.
type loadedKey struct {
	meta   store.Key // WrappedKeyset is kept: rotation re-wraps from it
	handle *keyset.Handle
	// gcm holds each version's AES-256-GCM cipher, for AES256_GCM keys.
	gcm   map[uint32]gcmVersion
	daead tink.DeterministicAEAD // set for AES256_SIV keys
	mac   map[uint32][]byte      // each version's HMAC key, for HMAC_SHA256 keys
	ff1   cipher.Block           // the AES-256 cipher of an FF1_AES256 key
	// tinkIDs maps a version number to its Tink key id.
	tinkIDs  map[uint32]uint32
	loadedAt time.Time
	// usage counts the uses of the primary version reserved and not yet
	// spent; nil for keys that are not counted (see usage.go). A destroyed
	// key's entry has only meta: no handle, primitive or usage.
	usage *versionUsage

	expired    atomic.Bool // set by the expiry timer, at the cache's max age
	referenced atomic.Bool // second-chance bit for eviction
	timers     entryTimers

	// staleUntil (Unix nanoseconds, the cache's clock) is when the stale
	// grace ends: put sets it before the entry is published. retryAt is
	// when an expired entry that failed to reload may be reloaded again;
	// warnedAt is when serving it stale was last logged.
	staleUntil int64
	retryAt    atomic.Int64
	warnedAt   atomic.Int64
}

// entryTimers are the timers of one cache entry: its expiry, then the end
// of its stale grace. Once stopped, a timer added later is stopped at once.
type entryTimers struct {
	mu      sync.Mutex
	stops   []func() bool
	stopped bool
}

func (t *entryTimers) add(stop func() bool) {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		stop()
		return
	}
	t.stops = append(t.stops, stop)
	t.mu.Unlock()
}

func (t *entryTimers) stop() {
	t.mu.Lock()
	t.stopped = true
	stops := t.stops
	t.stops = nil
	t.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
}

// KeysetCache holds unwrapped keysets in memory, bounded in number and age,
// so that the hot path makes no root-key (HSM or KMS) call after the first
// use of a key. It is safe for concurrent use.
//
// A lookup is a hash of the name, one atomic load of an immutable shard map
// and one of the entry's expiry flag: no lock, no clock read, no allocation.
// Writers (a load after a miss, a rotation, an expiry) take a mutex and copy
// one of cacheShards shards. Each entry's age is enforced by a timer that
// marks it expired at the max age. When the cache is full, a put evicts an
// expired entry if there is one, else one not used since the eviction hand
// last passed it (second chance), else the first the hand reaches.
//
// Stale if error: an expired entry is not used while its key reloads, but
// it stays (counted against the max number of keys) for a stale grace after
// the max age. When the reload fails because the root key or the key store
// is unavailable (kms.ErrUnavailable, store.ErrUnavailable, or the load's
// own timeout) and the store, if it could be read, holds the same revision,
// the expired entry serves instead, with a warning logged at most once a
// minute per key; for staleRetry after such a failure the key is served
// stale without another reload, so a dead HSM is not called on every
// request. Once the grace has passed the entry is dropped and calls fail
// with the outage's error. A key changed through this keyring, or dropped
// by SyncCache because another replica changed it, leaves the cache at once
// and is never served stale: a change is not an outage.
type KeysetCache struct {
	maxKeys   int
	maxAge    time.Duration
	grace     time.Duration // 0: expired entries are dropped at once
	now       func() time.Time
	afterFunc func(time.Duration, func()) func() bool
	logger    *slog.Logger
	seed      maphash.Seed
	shards    [cacheShards]atomic.Pointer[map[string]*loadedKey]

	mu   sync.Mutex // serializes writers
	size int
	hand int // shard where the next eviction scan starts
	// floor is, per key name, the lowest revision put may still cache: the
	// newest revision this cache has held or this keyring has written. A
	// load that read an older revision from the store cannot put it back
	// after the change, even once the newer entry is gone.
	floor map[string]int64

	hits, misses, stale atomic.Uint64
	length              atomic.Int64
}

const cacheShards = 64

const (
	// staleRetry is how long a key whose reload failed in an outage is
	// served stale before the next reload is tried.
	staleRetry = 5 * time.Second
	// staleWarnEvery is the least time between two warnings about the
	// same key being served stale.
	staleWarnEvery = time.Minute
)

// CacheStats counts lookups in a KeysetCache.
type CacheStats struct {
	Hits, Misses uint64
	// Stale counts the lookups served by an expired entry, within the stale
	// grace, because the root key or the key store was unavailable.
	Stale uint64
	// Size counts the entries, expired ones kept for the grace included.
	Size int
}

// cacheOptions configure a KeysetCache; the keyring fills in every field.
type cacheOptions struct {
	maxKeys   int
	maxAge    time.Duration
	grace     time.Duration
	now       func() time.Time
	afterFunc func(time.Duration, func()) func() bool
	logger    *slog.Logger
}

func newKeysetCache(o cacheOptions) *KeysetCache {
	c := &KeysetCache{
		maxKeys: o.maxKeys, maxAge: o.maxAge, grace: max(o.grace, 0), now: o.now, afterFunc: o.afterFunc, logger: o.logger,
		seed: maphash.MakeSeed(), floor: make(map[string]int64),
	}
	for i := range c.shards {
		empty := map[string]*loadedKey{}
		c.shards[i].Store(&empty)
	}
	return c
}

func (c *KeysetCache) shard(name string) *atomic.Pointer[map[string]*loadedKey] {
	return &c.shards[maphash.String(c.seed, name)%cacheShards]
}

// get returns the cached key if present and not expired.
func (c *KeysetCache) get(name string) (*loadedKey, bool) {
	lk, ok := (*c.shard(name).Load())[name]
	return c.hit(lk, ok)
}

// peek returns the entry cached for name, expired or not, without counting
// a hit or a miss.
func (c *KeysetCache) peek(name string) (*loadedKey, bool) {
	lk, ok := (*c.shard(name).Load())[name]
	return lk, ok
}

// revisions returns the name and revision of every cached key.
func (c *KeysetCache) revisions() map[string]int64 {
	out := make(map[string]int64, c.length.Load())
	for i := range c.shards {
		for name, lk := range *c.shards[i].Load() {
			out[name] = lk.meta.Revision
		}
	}
	return out
}

// getBytes is get for a name in bytes; hashing and the map lookup convert
// without allocating.
func (c *KeysetCache) getBytes(name []byte) (*loadedKey, bool) {
	lk, ok := (*c.shards[maphash.Bytes(c.seed, name)%cacheShards].Load())[string(name)]
	return c.hit(lk, ok)
}

func (c *KeysetCache) hit(lk *loadedKey, ok bool) (*loadedKey, bool) {
	if !ok || lk.expired.Load() {
		c.misses.Add(1)
		return nil, false
	}
	if !lk.referenced.Load() {
		lk.referenced.Store(true)
	}
	c.hits.Add(1)
	return lk, true
}

// put caches lk under its name, evicting an entry when the cache is full. A
// put never caches a revision older than one the cache has seen for the
// name. Timers start and stop outside the lock, so an AfterFunc may run its
// function at once.
func (c *KeysetCache) put(lk *loadedKey) {
	name := lk.meta.Name
	lk.referenced.Store(true)
	lk.staleUntil = c.now().Add(c.maxAge + c.grace).UnixNano()
	lk.timers.add(c.afterFunc(c.maxAge, func() { c.expire(name, lk) }))
	var stale []*loadedKey
	accepted := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if lk.meta.Revision < c.floor[name] || lk.expired.Load() {
			return false
		}
		c.floor[name] = lk.meta.Revision
		sh := c.shard(name)
		if old, ok := (*sh.Load())[name]; ok {
			stale = append(stale, old)
			c.replaceLocked(sh, name, lk)
			return true
		}
		if c.size >= c.maxKeys {
			if v, vname, vsh := c.victimLocked(); v != nil {
				stale = append(stale, v)
				c.replaceLocked(vsh, vname, nil)
			}
		}
		c.replaceLocked(sh, name, lk)
		return true
	}()
	if !accepted {
		lk.timers.stop()
	}
	for _, e := range stale {
		e.timers.stop()
	}
}

// expire marks lk expired at the max age, so that lookups miss and reload
// it, and drops it once the stale grace has passed too.
func (c *KeysetCache) expire(name string, lk *loadedKey) {
	lk.expired.Store(true)
	if c.grace <= 0 {
		c.remove(name, lk)
		return
	}
	lk.timers.add(c.afterFunc(c.grace, func() { c.remove(name, lk) }))
}

// staleEntry returns name's expired entry while its stale grace lasts.
func (c *KeysetCache) staleEntry(name string) (*loadedKey, int64, bool) {
	lk, ok := c.peek(name)
	if !ok || !lk.expired.Load() {
		return nil, 0, false
	}
	now := c.now().UnixNano()
	if now >= lk.staleUntil {
		return nil, 0, false
	}
	return lk, now, true
}

// staleRecent returns name's expired entry if a reload of it failed in an
// outage less than staleRetry ago and the grace lasts: the caller serves it
// without trying the root key or the store again.
func (c *KeysetCache) staleRecent(name string) (*loadedKey, bool) {
	lk, now, ok := c.staleEntry(name)
	if !ok || now >= lk.retryAt.Load() {
		return nil, false
	}
	c.stale.Add(1)
	return lk, true
}

// serveStale is called when reloading name failed with cause, an outage.
// revision is the key's revision in the store, when known (the store
// answered and the root key did not). It returns the expired entry to
// serve instead, if the grace lasts and the entry holds that revision; an
// entry of another revision is dropped, since a change is not an outage.
func (c *KeysetCache) serveStale(name string, revision int64, known bool, cause error) (*loadedKey, bool) {
	if lk, ok := c.peek(name); ok && !lk.expired.Load() && (!known || lk.meta.Revision >= revision) {
		return lk, true // put meanwhile, by a load or a change that got through
	}
	lk, now, ok := c.staleEntry(name)
	if !ok {
		return nil, false
	}
	if known && lk.meta.Revision != revision {
		c.invalidate(name, revision)
		return nil, false
	}
	lk.retryAt.Store(now + int64(staleRetry))
	c.stale.Add(1)
	if last := lk.warnedAt.Load(); (last == 0 || now-last >= int64(staleWarnEvery)) && lk.warnedAt.CompareAndSwap(last, now) {
		c.logger.Warn("serving a cached key past cache.max_age: reloading it failed because the root key or the key store is unavailable; it serves until the stale grace ends, then calls fail",
			"key", name, "revision", lk.meta.Revision, "stale_until", time.Unix(0, lk.staleUntil).UTC(), "err", cause)
	}
	return lk, true
}

// replaceLocked copies shard sh with name mapped to lk (nil: removed).
func (c *KeysetCache) replaceLocked(sh *atomic.Pointer[map[string]*loadedKey], name string, lk *loadedKey) {
	cur := *sh.Load()
	_, had := cur[name]
	next := make(map[string]*loadedKey, len(cur)+1)
	for n, e := range cur {
		if n != name {
			next[n] = e
		}
	}
	if lk != nil {
		next[name] = lk
	}
	switch {
	case had && lk == nil:
		c.size--
	case !had && lk != nil:
		c.size++
	}
	c.length.Store(int64(c.size))
	sh.Store(&next)
}

// victimLocked picks the entry to evict, scanning the shards from the hand:
// an expired entry, else one not used since the hand last passed it
// (clearing the used bit of those it passes), else the first it saw.
func (c *KeysetCache) victimLocked() (*loadedKey, string, *atomic.Pointer[map[string]*loadedKey]) {
	var first *loadedKey
	var firstName string
	var firstShard *atomic.Pointer[map[string]*loadedKey]
	var unused *loadedKey
	var unusedName string
	var unusedShard *atomic.Pointer[map[string]*loadedKey]
	for i := range cacheShards {
		sh := &c.shards[(c.hand+i)%cacheShards]
		for n, e := range *sh.Load() {
			if e.expired.Load() {
				c.hand = (c.hand + i + 1) % cacheShards
				return e, n, sh
			}
			if first == nil {
				first, firstName, firstShard = e, n, sh
			}
			if unused == nil && !e.referenced.Load() {
				unused, unusedName, unusedShard = e, n, sh
			}
			e.referenced.Store(false)
		}
	}
	c.hand = (c.hand + 1) % cacheShards
	if unused != nil {
		return unused, unusedName, unusedShard
	}
	return first, firstName, firstShard
}

// invalidate drops name and refuses any later put of a revision below
// revision, the one this keyring just wrote.
func (c *KeysetCache) invalidate(name string, revision int64) {
	c.mu.Lock()
	c.floor[name] = max(c.floor[name], revision)
	e := c.deleteLocked(name, nil)
	c.mu.Unlock()
	if e != nil {
		e.timers.stop()
	}
}

// remove drops name if it still maps to lk (nil: whatever it maps to).
func (c *KeysetCache) remove(name string, lk *loadedKey) {
	c.mu.Lock()
	e := c.deleteLocked(name, lk)
	c.mu.Unlock()
	if e != nil {
		e.timers.stop()
	}
}

// deleteLocked removes name if it maps to lk (nil: to anything) and returns
// the removed entry, whose timers the caller stops after unlocking.
func (c *KeysetCache) deleteLocked(name string, lk *loadedKey) *loadedKey {
	sh := c.shard(name)
	e, ok := (*sh.Load())[name]
	if !ok || (lk != nil && e != lk) {
		return nil
	}
	c.replaceLocked(sh, name, nil)
	return e
}

// Stats returns the cache's counters.
func (c *KeysetCache) Stats() CacheStats {
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Stale: c.stale.Load(), Size: int(c.length.Load())}
}

// flight deduplicates concurrent loads of the same key, so that a burst of
// requests for a cold key makes one root-key call, not one per request.
type flight struct {
	mu    sync.Mutex
	calls map[string]*flightCall
}

type flightCall struct {
	done chan struct{}
	lk   *loadedKey
	err  error
}

// do runs load once for all concurrent callers with the same name. Every
// caller whose ctx ends stops waiting, the one that started the load
// included; the load itself goes on (load must use a context of its own,
// bounded, detached from any caller's) and fills the cache for the next
// callers. A panic in load becomes an error for every caller, and the next
// call loads afresh.
func (f *flight) do(ctx context.Context, name string, load func() (*loadedKey, error)) (*loadedKey, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = make(map[string]*flightCall)
	}
	if c, ok := f.calls[name]; ok {
		f.mu.Unlock()
		select {
		case <-c.done:
			return c.lk, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &flightCall{done: make(chan struct{})}
	f.calls[name] = c
	f.mu.Unlock()

	go func() {
		defer func() {
			if r := recover(); r != nil {
				c.lk, c.err = nil, fmt.Errorf("envelope: loading key %q panicked", name)
			}
			f.mu.Lock()
			delete(f.calls, name)
			f.mu.Unlock()
			close(c.done)
		}()
		c.lk, c.err = load()
	}()
	select {
	case <-c.done:
		return c.lk, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
