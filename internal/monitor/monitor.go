// Package monitor detects unusual behaviour of tresor's callers and holds the
// graduated responses that policy chooses for it.
//
// For every principal it learns, online, a baseline of its calls: the
// request rate, the hours of the day it works, the addresses it calls from,
// the keys it uses, the mix of tiers and reveal/protect calls, and the size
// of the transaction values it declares. [Monitor.Score] rates one call
// against that baseline with a risk from 0 (nothing unusual) to 100 and
// names the dimensions that contributed. The risk enters the Cedar context
// (context.risk); the policies decide which response it deserves, and
// [Monitor.Apply] holds that response for the principal until it expires:
// [Log] < [StepUp] (calls need a certificate-bound token) < [Throttle]
// (calls are rate-limited) < [Block] (every call is refused).
//
// Reach for [New], then, for each call:
//
//	a := m.Score(obs)                          // risk, against the baseline
//	if a.Risk > 0 {                            // 0: nothing to decide
//		m.Apply(obs.Principal, decide(a.Risk), obs.Time)
//	}
//	active, retry, err := m.Admit(obs.Principal, obs.Time, bound)
//	if err != nil { refuse(err, retry) }       // ErrBlocked, ErrThrottled, ErrStepUpRequired
//	m.Observe(obs, active)                     // learn from an admitted call
//
// [Simulate] replays synthetic normal traffic and an exfiltration through a
// Monitor and a [ResponseDecider] (the policies) and reports how both fared.
//
// The Monitor keeps everything in memory, sharded by principal, with at
// most Options.MaxPrincipals principals; idle ones are evicted first, and
// one under an active response only when nothing else can go. A restarted
// server learns again from scratch (see Options.WarmUpCalls for what that
// costs). Principal keys are opaque to the package and never leave it:
// nothing it returns, logs or counts names a principal, key or address.
package monitor

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// ErrInvalidOptions means New was given an option out of its range.
var ErrInvalidOptions = errors.New("monitor: invalid options")

// Options configures a Monitor. The zero value of every field means its
// default.
type Options struct {
	// Now is the clock for observations without a time. Default: time.Now.
	Now func() time.Time
	// Location is the business time zone, for the hour-of-day baseline.
	// Default: UTC.
	Location *time.Location
	// MaxPrincipals bounds the number of principals tracked (about 2 KiB
	// each). Default: 10000.
	MaxPrincipals int
	// WarmUpCalls and WarmUpSpan are how much history a principal needs
	// before the history-based dimensions (hour, source, key, tier mix,
	// value) count in full: they are scaled by the smaller of
	// calls/WarmUpCalls and age/WarmUpSpan. Defaults: 200 calls, 24h.
	//
	// The trade-off: a new principal (or one evicted while idle) is not
	// flagged for calling at a new hour, from a new address or with a new
	// key, since everything is new on its first day; an attacker with a
	// fresh identity gets that grace too. The rate dimension has no grace:
	// until a principal has its own rate baseline it is compared with
	// PriorRate.
	WarmUpCalls int
	WarmUpSpan  time.Duration
	// PriorRate is the request rate, per second, assumed for a principal
	// whose own rate is not learned yet. Default: 10.
	PriorRate float64
	// HalfLife is how fast old behaviour is forgotten: the hour, source,
	// key and tier counts halve over it. Default: 7 days.
	HalfLife time.Duration
	// Expiry is how long each response lasts after it was last applied,
	// indexed by Response. Defaults: Log 5m, StepUp 15m, Throttle 10m,
	// Block 30m.
	Expiry [numResponses]time.Duration
	// ThrottleRate and ThrottleFraction set the rate a throttled principal
	// may call at, per second: the larger of ThrottleRate and
	// ThrottleFraction times its learned rate. Defaults: 1 and 0.5.
	ThrottleRate     float64
	ThrottleFraction float64
}

// The defaults of Options.
const (
	DefaultMaxPrincipals    = 10000
	DefaultWarmUpCalls      = 200
	DefaultWarmUpSpan       = 24 * time.Hour
	DefaultPriorRate        = 10.0
	DefaultHalfLife         = 7 * 24 * time.Hour
	DefaultThrottleRate     = 1.0
	DefaultThrottleFraction = 0.5
)

// DefaultExpiry is the default of Options.Expiry.
var DefaultExpiry = [numResponses]time.Duration{
	Log:      5 * time.Minute,
	StepUp:   15 * time.Minute,
	Throttle: 10 * time.Minute,
	Block:    30 * time.Minute,
}

// Monitor holds the principals' baselines and active responses. Its methods
// are safe for concurrent use; calls for different principals rarely share
// a lock.
type Monitor struct {
	now      func() time.Time
	loc      *time.Location
	seed     maphash.Seed
	shards   []shard
	perShard int // principals per shard

	warmCalls     float64
	warmSpan      int64 // ns
	lnPrior       float64
	decayPerHour  float64 // factor applied to the counts per hour
	expiry        [numResponses]int64
	throttleRate  float64
	throttleShare float64

	evicted atomic.Uint64
}

type shard struct {
	mu sync.RWMutex
	m  map[string]*state
	_  [40]byte // keep shards' locks on separate cache lines
}

// New returns a Monitor configured by opts. It fails, with an error wrapping
// ErrInvalidOptions, when an option is negative or not a number.
func New(opts Options) (*Monitor, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	m := &Monitor{
		now:           opts.Now,
		loc:           opts.Location,
		seed:          maphash.MakeSeed(),
		warmCalls:     float64(orDefault(opts.WarmUpCalls, DefaultWarmUpCalls)),
		warmSpan:      int64(orDefault(opts.WarmUpSpan, DefaultWarmUpSpan)),
		lnPrior:       math.Log(orDefault(opts.PriorRate, DefaultPriorRate)),
		throttleRate:  orDefault(opts.ThrottleRate, DefaultThrottleRate),
		throttleShare: orDefault(opts.ThrottleFraction, DefaultThrottleFraction),
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.loc == nil {
		m.loc = time.UTC
	}
	halfLife := orDefault(opts.HalfLife, DefaultHalfLife)
	m.decayPerHour = math.Exp2(-float64(time.Hour) / float64(halfLife))
	for r := Log; r < numResponses; r++ {
		m.expiry[r] = int64(orDefault(opts.Expiry[r], DefaultExpiry[r]))
	}

	// Up to 64 shards, with at least 8 principals each, so that small
	// limits are still exact.
	max := orDefault(opts.MaxPrincipals, DefaultMaxPrincipals)
	n := 1
	for n < 64 && max/(2*n) >= 8 {
		n *= 2
	}
	m.shards = make([]shard, n)
	m.perShard = max / n
	for i := range m.shards {
		m.shards[i].m = make(map[string]*state)
	}
	return m, nil
}

func (o *Options) check() error {
	bad := func(name string) error { return fmt.Errorf("%w: %s out of range", ErrInvalidOptions, name) }
	switch {
	case o.MaxPrincipals < 0:
		return bad("MaxPrincipals")
	case o.WarmUpCalls < 0:
		return bad("WarmUpCalls")
	case o.WarmUpSpan < 0:
		return bad("WarmUpSpan")
	case !(o.PriorRate >= 0) || math.IsInf(o.PriorRate, 0):
		return bad("PriorRate")
	case o.HalfLife < 0:
		return bad("HalfLife")
	case !(o.ThrottleRate >= 0) || math.IsInf(o.ThrottleRate, 0):
		return bad("ThrottleRate")
	case !(o.ThrottleFraction >= 0) || math.IsInf(o.ThrottleFraction, 0):
		return bad("ThrottleFraction")
	}
	for r, d := range o.Expiry {
		if d < 0 {
			return bad("Expiry[" + Response(r).String() + "]")
		}
	}
	return nil
}

func orDefault[T int | float64 | time.Duration](v, def T) T {
	if v == 0 {
		return def
	}
	return v
}

// Stats are counts for metrics. They name no principal.
type Stats struct {
	// Principals is the number of principals tracked now.
	Principals int
	// Evicted counts the principals evicted to stay within MaxPrincipals.
	Evicted uint64
}

// Stats returns the current counts.
func (m *Monitor) Stats() Stats {
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return Stats{Principals: n, Evicted: m.evicted.Load()}
}

func (m *Monitor) shardOf(principal string) *shard {
	if len(m.shards) == 1 {
		return &m.shards[0]
	}
	return &m.shards[maphash.String(m.seed, principal)&uint64(len(m.shards)-1)]
}

// lookup returns the principal's state, or nil.
func (m *Monitor) lookup(principal string) *state {
	s := m.shardOf(principal)
	s.mu.RLock()
	st := s.m[principal]
	s.mu.RUnlock()
	return st
}

// get returns the principal's state, creating it (and evicting another
// principal of its shard if the shard is full) if there is none.
func (m *Monitor) get(principal string, now int64) *state {
	s := m.shardOf(principal)
	s.mu.RLock()
	st := s.m[principal]
	s.mu.RUnlock()
	if st != nil {
		return st
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st = s.m[principal]; st != nil {
		return st
	}
	if len(s.m) >= m.perShard {
		m.evictLocked(s, now)
	}
	st = newState(now)
	s.m[principal] = st
	return st
}

// evictSample is how many principals eviction compares. Go's map iteration
// starts at a random place, so they are a cheap sample of the shard.
const evictSample = 8

// evictLocked removes one principal from the full shard s: the idlest of a
// sample among those without an active response, else the idlest without
// one in the whole shard, else the one whose response ends first.
func (m *Monitor) evictLocked(s *shard, now int64) {
	victim, ok := pickIdle(s, now, evictSample)
	if !ok {
		victim, ok = pickIdle(s, now, len(s.m))
	}
	if !ok {
		first := int64(math.MaxInt64)
		for k, st := range s.m {
			if u := st.activeUntil.Load(); u < first {
				victim, first = k, u
			}
		}
	}
	delete(s.m, victim)
	m.evicted.Add(1)
}

func pickIdle(s *shard, now int64, sample int) (string, bool) {
	var victim string
	oldest := int64(math.MaxInt64)
	found := false
	n := 0
	for k, st := range s.m {
		if n == sample {
			break
		}
		n++
		if st.activeUntil.Load() > now {
			continue
		}
		if seen := st.lastSeen.Load(); seen < oldest {
			victim, oldest, found = k, seen, true
		}
	}
	return victim, found
}
