package envelope

import (
	"context"
	"fmt"
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

	expired    atomic.Bool // set by the expiry timer
	referenced atomic.Bool // second-chance bit for eviction
	stopTimer  func() bool
}

// KeysetCache holds unwrapped keysets in memory, bounded in number and age,
// so that the hot path makes no root-key (HSM or KMS) call after the first
// use of a key. It is safe for concurrent use.
//
// A lookup is one atomic load of an immutable map and one of the entry's
// expiry flag: no lock and no clock read. Writers (a load after a miss, a
// rotation) copy the map under a mutex. Each entry's age is enforced by a
// timer that marks it expired and drops it; eviction when the cache is full
// gives recently used entries a second chance (the CLOCK algorithm).
type KeysetCache struct {
	maxKeys   int
	maxAge    time.Duration
	afterFunc func(time.Duration, func()) func() bool

	entries atomic.Pointer[map[string]*loadedKey]

	mu sync.Mutex // serializes writers
	// floor is, per key name, the lowest revision put may still cache: a
	// load that read the store before this keyring changed the key must not
	// put the old revision back once the change has dropped or replaced it.
	floor map[string]int64

	hits, misses atomic.Uint64
}

// CacheStats counts lookups in a KeysetCache.
type CacheStats struct {
	Hits, Misses uint64
	Size         int
}

func newKeysetCache(maxKeys int, maxAge time.Duration, afterFunc func(time.Duration, func()) func() bool) *KeysetCache {
	c := &KeysetCache{maxKeys: maxKeys, maxAge: maxAge, afterFunc: afterFunc, floor: make(map[string]int64)}
	empty := map[string]*loadedKey{}
	c.entries.Store(&empty)
	return c
}

// get returns the cached key if present and not expired.
func (c *KeysetCache) get(name string) (*loadedKey, bool) {
	lk, ok := (*c.entries.Load())[name]
	return c.hit(lk, ok)
}

// getBytes is get for a name in bytes; the map lookup converts without allocating.
func (c *KeysetCache) getBytes(name []byte) (*loadedKey, bool) {
	lk, ok := (*c.entries.Load())[string(name)]
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
// put never replaces a newer revision with an older one.
func (c *KeysetCache) put(lk *loadedKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	name := lk.meta.Name
	cur := *c.entries.Load()
	old, exists := cur[name]
	if exists && old.meta.Revision > lk.meta.Revision || lk.meta.Revision < c.floor[name] {
		return
	}
	next := make(map[string]*loadedKey, len(cur)+1)
	for n, e := range cur {
		next[n] = e
	}
	if exists {
		old.stopTimer()
	} else if len(cur) >= c.maxKeys {
		victim := c.victim(cur)
		cur[victim].stopTimer()
		delete(next, victim)
	}
	lk.referenced.Store(true)
	lk.stopTimer = c.afterFunc(c.maxAge, func() {
		lk.expired.Store(true)
		c.remove(name, lk)
	})
	next[name] = lk
	c.entries.Store(&next)
}

// victim picks the entry to evict: the first not used since the last scan,
// clearing the used bit of those it passes over.
func (c *KeysetCache) victim(m map[string]*loadedKey) string {
	var first string
	for n, e := range m {
		if first == "" {
			first = n
		}
		if !e.referenced.Load() {
			return n
		}
		e.referenced.Store(false)
	}
	return first
}

// invalidate drops name and refuses any later put of a revision below
// revision, the one this keyring just wrote.
func (c *KeysetCache) invalidate(name string, revision int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.floor[name] = max(c.floor[name], revision)
	c.deleteLocked(name, nil)
}

// remove drops name if it still maps to lk (nil: whatever it maps to).
func (c *KeysetCache) remove(name string, lk *loadedKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deleteLocked(name, lk)
}

func (c *KeysetCache) deleteLocked(name string, lk *loadedKey) {
	cur := *c.entries.Load()
	e, ok := cur[name]
	if !ok || (lk != nil && e != lk) {
		return
	}
	e.stopTimer()
	next := make(map[string]*loadedKey, len(cur))
	for n, v := range cur {
		if n != name {
			next[n] = v
		}
	}
	c.entries.Store(&next)
}

// Stats returns the cache's counters.
func (c *KeysetCache) Stats() CacheStats {
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Size: len(*c.entries.Load())}
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
