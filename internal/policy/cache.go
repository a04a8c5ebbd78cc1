package policy

import (
	"slices"
	"strconv"
	"sync"

	"github.com/cedar-policy/cedar-go/types"
)

// entityCacheSize bounds an entityCache; a full cache is emptied.
const entityCacheSize = 4096

// entityCache remembers the entities built for principals and keys, so that
// the common case (the same few callers and keys over and over) builds no
// Cedar records or sets. Entries are keyed by an injective encoding of every
// input the entity is built from, and Cedar entities are immutable, so a hit
// is exactly what building would return.
type entityCache struct {
	mu sync.RWMutex
	m  map[string]types.Entity
}

func (c *entityCache) get(key []byte) (types.Entity, bool) {
	c.mu.RLock()
	e, ok := c.m[string(key)] // no allocation for the lookup
	c.mu.RUnlock()
	return e, ok
}

func (c *entityCache) put(key []byte, e types.Entity) {
	c.mu.Lock()
	if c.m == nil || len(c.m) >= entityCacheSize {
		c.m = make(map[string]types.Entity)
	}
	c.m[string(key)] = e
	c.mu.Unlock()
}

// appendField appends s length-prefixed, so that concatenations of fields
// cannot collide.
func appendField(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

func appendList(b []byte, l []string) []byte {
	b = strconv.AppendInt(b, int64(len(l)), 10)
	b = append(b, '[')
	for _, s := range l {
		b = appendField(b, s)
	}
	return b
}

func principalKey(b []byte, p Principal) []byte {
	b = appendField(b, p.Workload)
	b = appendField(b, p.Subject)
	b = appendList(b, p.Roles)
	return appendList(b, p.Scopes)
}

// resourceKey encodes a resource, its labels in key order.
func resourceKey(b []byte, r Resource) []byte {
	b = strconv.AppendInt(b, int64(r.Kind), 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(r.Tier), 10)
	b = append(b, '/')
	b = appendField(b, r.Name)
	b = appendField(b, r.Owner)
	if r.Kind == ResourceField {
		b = appendField(b, r.Schema)
		b = appendField(b, r.Path)
		b = appendField(b, r.Classification)
	}
	var arr [16]string
	names := arr[:0]
	for k := range r.Labels {
		names = append(names, k)
	}
	slices.Sort(names)
	b = strconv.AppendInt(b, int64(len(names)), 10)
	b = append(b, '{')
	for _, k := range names {
		b = appendField(b, k)
		b = appendField(b, r.Labels[k])
	}
	return b
}

func (e *Engine) principal(p Principal) (types.Entity, error) {
	var arr [256]byte
	key := principalKey(arr[:0], p)
	if ent, ok := e.principals.get(key); ok {
		return ent, nil
	}
	ent, err := principalEntity(p)
	if err != nil {
		return ent, err
	}
	e.principals.put(key, ent)
	return ent, nil
}

func (e *Engine) resource(r Resource) (types.Entity, error) {
	var arr [256]byte
	key := resourceKey(arr[:0], r)
	if ent, ok := e.resources.get(key); ok {
		return ent, nil
	}
	ent, err := resourceEntity(r)
	if err != nil {
		return ent, err
	}
	e.resources.put(key, ent)
	return ent, nil
}
