package envelope

import (
	"context"
	"fmt"
	"hash/maphash"
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
	// tinkIDs maps a version number to its Tink key id.
	tinkIDs  map[uint32]uint32
	loadedAt time.Time
	// usage counts the uses of the primary version reserved and not yet
	// spent; nil for keys that are not counted (see usage.go). A destroyed
	// key's entry has only meta: no handle, primitive or usage.
	usage *versionUsage

	expired    atomic.Bool // set by the expiry timer
	referenced atomic.Bool // second-chance bit for eviction
	stopTimer  func() bool
}

// KeysetCache holds unwrapped keysets in memory, bounded in number and age,
// so that the hot path makes no root-key (HSM or KMS) call after the first
// use of a key. It is safe for concurrent use.
//
// A lookup is a hash of the name, one atomic load of an immutable shard map
// and one of the entry's expiry flag: no lock, no clock read, no allocation.
// Writers (a load after a miss, a rotation, an expiry) take a mutex and copy
// one of cacheShards shards. Each entry's age is enforced by a timer that
// marks it expired and drops it. When the cache is full, a put evicts an
// expired entry if there is one, else one not used since the eviction hand
// last passed it (second chance), else the first the hand reaches.
type KeysetCache struct {
	maxKeys   int
	maxAge    time.Duration
	afterFunc func(time.Duration, func()) func() bool
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

	hits, misses atomic.Uint64
	length       atomic.Int64
}

const cacheShards = 64

// CacheStats counts lookups in a KeysetCache.
type CacheStats struct {
	Hits, Misses uint64
	Size         int
}

func newKeysetCache(maxKeys int, maxAge time.Duration, afterFunc func(time.Duration, func()) func() bool) *KeysetCache {
	c := &KeysetCache{maxKeys: maxKeys, maxAge: maxAge, afterFunc: afterFunc, seed: maphash.MakeSeed(), floor: make(map[string]int64)}
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
	stop := c.afterFunc(c.maxAge, func() {
		lk.expired.Store(true)
		c.remove(name, lk)
	})
	var stale []*loadedKey
	accepted := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if lk.meta.Revision < c.floor[name] || lk.expired.Load() {
			return false
		}
		c.floor[name] = lk.meta.Revision
		lk.stopTimer = stop
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
		stop()
	}
	for _, e := range stale {
		e.stopTimer()
	}
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
		e.stopTimer()
	}
}

// remove drops name if it still maps to lk (nil: whatever it maps to).
func (c *KeysetCache) remove(name string, lk *loadedKey) {
	c.mu.Lock()
	e := c.deleteLocked(name, lk)
	c.mu.Unlock()
	if e != nil {
		e.stopTimer()
	}
}

// deleteLocked removes name if it maps to lk (nil: to anything) and returns
// the removed entry, whose timer the caller stops after unlocking.
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
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Size: int(c.length.Load())}
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

// do runs load once for all concurrent callers with the same name. A caller
// whose ctx ends stops waiting; the load itself goes on for the others. A
// panic in load becomes an error for every caller, and the next call loads
// afresh.
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

	func() {
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
	return c.lk, c.err
}
