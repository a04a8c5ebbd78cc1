package limits

import (
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Rate is a token bucket: PerSecond tokens are added each second, up to
// Burst. PerSecond <= 0 means unlimited, and then Burst is ignored.
type Rate struct {
	PerSecond float64
	Burst     int
}

func (r Rate) limited() bool { return r.PerSecond > 0 }

func (r Rate) validate() error {
	switch {
	case math.IsNaN(r.PerSecond) || math.IsInf(r.PerSecond, 0):
		return fmt.Errorf("PerSecond is %v, want a finite number (<= 0 for unlimited)", r.PerSecond)
	case r.limited() && r.Burst < 1:
		return fmt.Errorf("Burst is %d with PerSecond %v, want at least 1", r.Burst, r.PerSecond)
	}
	return nil
}

// RateConfig configures a [Limiter].
type RateConfig struct {
	// Global limits all calls together, across all principals.
	Global Rate
	// Classes limits each principal's calls of an action class ("crypto",
	// "admin", "read", ...). A class not listed is unlimited per principal
	// but still under Global.
	Classes map[string]Rate
	// MaxPrincipals bounds the principals whose buckets are kept (default
	// DefaultMaxPrincipals). The least recently used are dropped first (per
	// shard of the table, so approximately); a dropped principal's buckets
	// start full when it comes back.
	MaxPrincipals int
}

// DefaultMaxPrincipals is RateConfig.MaxPrincipals when it is zero.
const DefaultMaxPrincipals = 100000

// Limiter holds the token buckets of a [RateConfig]. Its methods are safe
// for concurrent use.
type Limiter struct {
	now     func() time.Time
	global  *rate.Limiter  // nil when unlimited
	globalR float64        // tokens per second of global
	classes map[string]int // limited class -> index into rates
	rates   []Rate
	seed    maphash.Seed
	shards  []shard // a power of two of them
}

// shard is part of the principal table: a map and its least-recently-used
// order. Its mutex also guards the buckets of its entries, so a principal's
// check-then-take is never interleaved with another call of the same
// principal.
type shard struct {
	mu         sync.Mutex
	m          map[string]*entry
	head, tail *entry // most and least recently used
	max        int
	_          [64]byte // keeps shards' mutexes off one cache line
}

// entry is one principal's buckets, one per limited class, made on first use.
type entry struct {
	principal  string
	buckets    []*rate.Limiter
	prev, next *entry
}

// NewLimiter returns a Limiter enforcing cfg. now is its clock (time.Now
// when nil). It fails with [ErrInvalidConfig] when a rate is not finite, a
// limited rate has a Burst below 1, a class name is empty, or MaxPrincipals
// is negative.
func NewLimiter(cfg RateConfig, now func() time.Time) (*Limiter, error) {
	if now == nil {
		now = time.Now
	}
	if err := cfg.Global.validate(); err != nil {
		return nil, fmt.Errorf("%w: global rate: %v", ErrInvalidConfig, err)
	}
	if cfg.MaxPrincipals < 0 {
		return nil, fmt.Errorf("%w: MaxPrincipals is %d, want >= 0 (0 for %d)", ErrInvalidConfig, cfg.MaxPrincipals, DefaultMaxPrincipals)
	}
	l := &Limiter{now: now, classes: make(map[string]int), seed: maphash.MakeSeed()}
	for class, r := range cfg.Classes {
		if class == "" {
			return nil, fmt.Errorf("%w: empty class name", ErrInvalidConfig)
		}
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("%w: class %q: %v", ErrInvalidConfig, class, err)
		}
		if r.limited() {
			l.classes[class] = len(l.rates)
			l.rates = append(l.rates, r)
		}
	}
	if cfg.Global.limited() {
		l.global = rate.NewLimiter(rate.Limit(cfg.Global.PerSecond), cfg.Global.Burst)
		l.globalR = cfg.Global.PerSecond
	}

	// Shards of at least 16 principals, at most 256 shards; the capacity
	// is spread so that the shards hold exactly maxP together.
	maxP := cfg.MaxPrincipals
	if maxP == 0 {
		maxP = DefaultMaxPrincipals
	}
	n := 1 << (bits.Len(uint(max(1, min(256, maxP/16)))) - 1)
	l.shards = make([]shard, n)
	for i := range l.shards {
		l.shards[i].m = make(map[string]*entry)
		l.shards[i].max = maxP / n
		if i < maxP%n {
			l.shards[i].max++
		}
	}
	return l, nil
}

// Allow takes one token from the principal's bucket of the class and from
// the global bucket. When refused it takes nothing from either and says how
// long until a token is available in both (retryAfter > 0; 0 when allowed).
func (l *Limiter) Allow(principal, class string) (ok bool, retryAfter time.Duration) {
	now := l.now()
	i, limited := l.classes[class]
	if !limited {
		if l.global == nil || l.global.AllowN(now, 1) {
			return true, 0
		}
		return false, l.globalWait(now)
	}

	sh := &l.shards[maphash.String(l.seed, principal)&uint64(len(l.shards)-1)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.bucket(principal, i, l.rates)
	// Under the shard's lock nobody else uses b, so its tokens stay as
	// read until it is taken from: check b, take from global (AllowN takes
	// nothing when it refuses), and only then take from b.
	if tokens := b.TokensAt(now); tokens < 1 {
		return false, max(wait(tokens, l.rates[i].PerSecond), l.globalWait(now))
	}
	if l.global != nil && !l.global.AllowN(now, 1) {
		return false, l.globalWait(now)
	}
	b.AllowN(now, 1) // true: b had a token at now
	return true, 0
}

// globalWait is how long until the global bucket has a token, from now.
func (l *Limiter) globalWait(now time.Time) time.Duration {
	if l.global == nil {
		return 0
	}
	return wait(l.global.TokensAt(now), l.globalR)
}

// wait is how long a bucket that holds tokens takes to hold one at
// perSecond, rounded up; at least a nanosecond.
func wait(tokens, perSecond float64) time.Duration {
	d := math.Ceil((1 - tokens) / perSecond * float64(time.Second))
	switch {
	case d < 1:
		return time.Nanosecond
	case d >= math.MaxInt64:
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(d)
}

// bucket returns the principal's bucket of class i, making the principal the
// most recently used and dropping the least recently used one when the
// shard is full. The caller holds sh.mu.
func (sh *shard) bucket(principal string, i int, rates []Rate) *rate.Limiter {
	e := sh.m[principal]
	switch {
	case e == nil:
		if len(sh.m) >= sh.max {
			old := sh.tail
			sh.unlink(old)
			delete(sh.m, old.principal)
		}
		e = &entry{principal: principal, buckets: make([]*rate.Limiter, len(rates))}
		sh.m[principal] = e
		sh.pushFront(e)
	case e != sh.head:
		sh.unlink(e)
		sh.pushFront(e)
	}
	if e.buckets[i] == nil {
		e.buckets[i] = rate.NewLimiter(rate.Limit(rates[i].PerSecond), rates[i].Burst)
	}
	return e.buckets[i]
}

func (sh *shard) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		sh.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		sh.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (sh *shard) pushFront(e *entry) {
	e.next = sh.head
	if sh.head != nil {
		sh.head.prev = e
	}
	sh.head = e
	if sh.tail == nil {
		sh.tail = e
	}
}
