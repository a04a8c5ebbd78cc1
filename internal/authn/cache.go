package authn

import "sync"

// tokenCache is a bounded cache of verified tokens keyed by the SHA-256 of
// the raw token. It is sharded to keep lock contention low under many
// concurrent calls; each shard evicts first-in first-out. A nil or
// zero-capacity cache caches nothing.
type tokenCache struct {
	shards []cacheShard
}

type cacheShard struct {
	mu   sync.RWMutex
	m    map[[32]byte]*verifiedToken
	ring [][32]byte // insertion order; ring[next] is the oldest
	used []bool
	next int
}

const maxCacheShards = 16

func newTokenCache(size int) *tokenCache {
	if size <= 0 {
		return &tokenCache{}
	}
	n := maxCacheShards
	for n > 1 && size/n < 64 {
		n /= 2
	}
	c := &tokenCache{shards: make([]cacheShard, n)}
	per := (size + n - 1) / n
	for i := range c.shards {
		c.shards[i] = cacheShard{
			m:    make(map[[32]byte]*verifiedToken),
			ring: make([][32]byte, per),
			used: make([]bool, per),
		}
	}
	return c
}

func (c *tokenCache) shard(k [32]byte) *cacheShard {
	if len(c.shards) == 0 {
		return nil
	}
	return &c.shards[int(k[0])%len(c.shards)]
}

func (c *tokenCache) get(k [32]byte) *verifiedToken {
	s := c.shard(k)
	if s == nil {
		return nil
	}
	s.mu.RLock()
	v := s.m[k]
	s.mu.RUnlock()
	return v
}

func (c *tokenCache) put(k [32]byte, v *verifiedToken) {
	s := c.shard(k)
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[k]; ok {
		s.m[k] = v
		return
	}
	if s.used[s.next] {
		delete(s.m, s.ring[s.next])
	}
	s.ring[s.next], s.used[s.next] = k, true
	s.next = (s.next + 1) % len(s.ring)
	s.m[k] = v
}

func (c *tokenCache) remove(k [32]byte) {
	s := c.shard(k)
	if s == nil {
		return
	}
	s.mu.Lock()
	delete(s.m, k)
	s.mu.Unlock()
}

// len returns the number of cached tokens.
func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

// purge empties the cache.
func (c *tokenCache) purge() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.m)
		clear(s.used)
		s.next = 0
		s.mu.Unlock()
	}
}
