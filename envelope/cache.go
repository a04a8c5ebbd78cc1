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
// It is immutable once built, except for lastUsed.
type loadedKey struct {
	meta   store.Key // WrappedKeyset is kept: rotation re-wraps from it
	handle *keyset.Handle
	// gcm holds each version's AES-256-GCM cipher, for AES256_GCM keys.
	gcm   map[uint32]gcmVersion
	daead tink.DeterministicAEAD // set for AES256_SIV keys
	// tinkIDs maps a version number to its Tink key id.
	tinkIDs  map[uint32]uint32
	loadedAt time.Time
	lastUsed atomic.Int64 // unix nanoseconds, for eviction
}

// KeysetCache holds unwrapped keysets in memory, bounded in number and age,
// so that the hot path makes no root-key (HSM or KMS) call after the first
// use of a key. It is safe for concurrent use.
type KeysetCache struct {
	maxKeys int
	maxAge  time.Duration
	now     func() time.Time

	mu      sync.RWMutex
	entries map[string]*loadedKey
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

func newKeysetCache(maxKeys int, maxAge time.Duration, now func() time.Time) *KeysetCache {
	return &KeysetCache{maxKeys: maxKeys, maxAge: maxAge, now: now, entries: make(map[string]*loadedKey), floor: make(map[string]int64)}
}

// get returns the cached key if present and younger than maxAge.
func (c *KeysetCache) get(name string) (*loadedKey, bool) {
	c.mu.RLock()
	lk, ok := c.entries[name]
	c.mu.RUnlock()
	if !ok {
		c.misses.Add(1)
		return nil, false
	}
	now := c.now()
	if now.Sub(lk.loadedAt) > c.maxAge {
		c.misses.Add(1)
		c.remove(name, lk)
		return nil, false
	}
	lk.lastUsed.Store(now.UnixNano())
	c.hits.Add(1)
	return lk, true
}

// put caches lk under its name, evicting the least recently used entry when
// the cache is full. A put never replaces a newer revision with an older one.
func (c *KeysetCache) put(lk *loadedKey) {
	lk.lastUsed.Store(c.now().UnixNano())
	c.mu.Lock()
	defer c.mu.Unlock()
	name := lk.meta.Name
	if old, ok := c.entries[name]; ok && old.meta.Revision > lk.meta.Revision {
		return
	}
	if lk.meta.Revision < c.floor[name] {
		return
	}
	if _, ok := c.entries[name]; !ok && len(c.entries) >= c.maxKeys {
		var victim string
		oldest := int64(1<<63 - 1)
		for n, e := range c.entries {
			if u := e.lastUsed.Load(); u < oldest {
				victim, oldest = n, u
			}
		}
		delete(c.entries, victim)
	}
	c.entries[name] = lk
}

// invalidate drops name and refuses any later put of a revision below
// revision, the one this keyring just wrote.
func (c *KeysetCache) invalidate(name string, revision int64) {
	c.mu.Lock()
	delete(c.entries, name)
	c.floor[name] = max(c.floor[name], revision)
	c.mu.Unlock()
}

// remove drops name if it still maps to lk (nil: whatever it maps to).
func (c *KeysetCache) remove(name string, lk *loadedKey) {
	c.mu.Lock()
	if cur, ok := c.entries[name]; ok && (lk == nil || cur == lk) {
		delete(c.entries, name)
	}
	c.mu.Unlock()
}

// Stats returns the cache's counters.
func (c *KeysetCache) Stats() CacheStats {
	c.mu.RLock()
	n := len(c.entries)
	c.mu.RUnlock()
	return CacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Size: n}
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
