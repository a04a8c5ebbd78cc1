package monitor

import (
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// The scoring model. Each dimension gives points from 0 to its weight; the
// risk is their sum, capped at 100. The weights are chosen so that no one
// dimension alone reaches the usual throttle threshold (65 in
// examples/policies/anomaly.cedar) except the rate, and that one alone
// reaches only step-up: blocking takes two unusual things at once.
const (
	wRate   = 50
	wHour   = 25
	wSource = 25
	wMix    = 25
	wKey    = 15
	wValue  = 25
)

const (
	// ringSize is the number of recent calls the short-term rate is taken
	// over: the rate is ringSize calls divided by the time since the
	// ringSize-th last one. 16 keeps the noise of a steady (Poisson)
	// caller low (its estimate exceeds 3 times its rate once in 10^4
	// calls) and sees a burst after 16 calls.
	ringSize = 16
	// rateWarm is the number of rate samples after which the principal's
	// own rate baseline fully replaces PriorRate.
	rateWarm = 32
	// The rate counts as unusual above a threshold: the larger of
	// minRateRatio times the principal's usual rate (the mean of the log
	// of the short-term rate) and the rate it exceeds in only 1 -
	// rateQuantile of its calls (its bursts); from rateMargin times the
	// threshold, the points ramp up over a further factor of rateRamp.
	// The quantile moves by rateQStep (in log units) at a sample above it.
	minRateRatio = 3.0
	rateQuantile = 0.995
	rateQStep    = 0.05
	rateMargin   = 1.5
	rateRamp     = 3.0
	// rateMemory is the time over which the rate baseline adapts, once
	// warmed up; rateMaxAlpha bounds one sample's weight.
	rateMemory   = 6 * time.Hour
	rateMaxAlpha = 0.01
	// An hour h counts as unusual when its share of the principal's calls
	// (with half of each neighbouring hour's, so a late hour is forgiven)
	// is below 1/24 by a factor of e^hourFrom; full points e^hourSpan
	// further down.
	hourFrom = 1.5
	hourSpan = 2.5
	// maxSources addresses are remembered per principal; one is known
	// after knownWeight calls. An unknown address in the same /24 (IPv4)
	// or /64 (IPv6) as a known one scores nearFactor of the points.
	maxSources  = 8
	maxKeys     = 16
	knownWeight = 2.0
	nearFactor  = 0.4
	// novelty is an average, over about 1/noveltyAlpha calls, of how often
	// the principal used a new source (or key); a principal that often
	// does gets fewer points for it, down to noveltyFloor of them at
	// noveltyTolerance.
	noveltyAlpha     = 0.01
	noveltyTolerance = 0.1
	noveltyFloor     = 0.25
	// A tier and reveal/protect combination counts as unusual below a
	// share of 1/mixFrom of the calls, with full points at a further
	// 1/mixSpan.
	mixCells = 10
	mixFrom  = 50.0
	mixSpan  = 20.0
	// A transaction value counts as unusual valueZ standard deviations
	// (of the log of the values) above the mean, with full points
	// valueSpan further, after valueWarm values.
	valueWarm     = 20
	valueZ        = 3.0
	valueSpan     = 3.0
	minValueSD    = 0.25
	valueMinAlpha = 0.005
)

// learnWeight is how much a call admitted under each response teaches the
// baseline: fully without a response, slowly under one, and not at all
// when blocked, so that an attacker cannot train the baseline to accept it
// by being flagged or blocked.
var learnWeight = [numResponses]float64{
	None:     1,
	Log:      0.1,
	StepUp:   0.05,
	Throttle: 0.02,
	Block:    0,
}

type source struct {
	addr [16]byte
	w    float64
}

type keyEntry struct {
	h uint64
	w float64
}

// state is one principal's baseline and responses. Its fields are guarded
// by mu, except the atomics, which eviction reads under the shard's lock.
type state struct {
	mu          sync.Mutex
	lastSeen    atomic.Int64 // ns of the latest call scored
	activeUntil atomic.Int64 // ns when the latest-ending response ends

	first   int64   // ns of the first call
	learned float64 // sum of learning weights, not decayed

	// Short-term rate: the times of the last ringSize calls, refused ones
	// included; pending is the log rate the last Score measured, for
	// Observe to learn.
	ring      [ringSize]int64
	ringLen   int
	ringPos   int
	pending   float64
	pendingOK bool

	// Rate baseline: mean and upper quantile of the log rate.
	rateW, rateMu, rateQ float64
	rateAt               int64

	decayedAt  int64 // hours since the epoch at the last decay
	hours      [24]float64
	hoursTotal float64
	mix        [mixCells]float64
	mixTotal   float64
	srcs       [maxSources]source
	novelSrc   float64
	keys       [maxKeys]keyEntry
	novelKey   float64

	valW, valMu, valVar float64

	// Responses: until[r] is when response r ends (ns).
	until    [numResponses]int64
	tokens   float64
	tokensAt int64
}

func newState(now int64) *state {
	st := &state{first: now, decayedAt: now / int64(time.Hour)}
	st.lastSeen.Store(now)
	return st
}

// Score returns the risk of the call obs, measured against the principal's
// baseline as it was before the call, and records the call's time for the
// short-term rate (refused calls count towards the rate too). It learns
// nothing else: call Observe for the calls that go ahead.
//
// A principal never seen before starts being tracked, possibly evicting an
// idle one.
func (m *Monitor) Score(obs Observation) Assessment {
	t := obs.Time
	if t.IsZero() {
		t = m.now()
	}
	now := t.UnixNano()
	hour := t.In(m.loc).Hour()
	var kh [maxObservedKeys]uint64
	keys := m.hashKeys(obs.Keys, &kh)

	st := m.get(obs.Principal, now)
	st.lastSeen.Store(now)
	st.mu.Lock()
	a := m.score(st, &obs, now, hour, keys)
	st.ring[st.ringPos] = now
	st.ringPos = (st.ringPos + 1) % ringSize
	if st.ringLen < ringSize {
		st.ringLen++
	}
	st.mu.Unlock()
	return a
}

func (m *Monitor) hashKeys(names []string, out *[maxObservedKeys]uint64) []uint64 {
	n := min(len(names), maxObservedKeys)
	for i := range n {
		out[i] = maphash.String(m.seed, names[i])
	}
	return out[:n]
}

// confidence is how much history st has, 0 to 1.
func (m *Monitor) confidence(st *state, now int64) float64 {
	return clamp01(st.learned/m.warmCalls) * clamp01(float64(now-st.first)/float64(m.warmSpan))
}

func (m *Monitor) score(st *state, obs *Observation, now int64, hour int, keys []uint64) Assessment {
	var pts [numReasons]float64

	st.pendingOK = false
	if st.ringLen == ringSize {
		elapsed := max(float64(now-st.ring[st.ringPos])/1e9, 1e-3)
		x := math.Log(ringSize / elapsed)
		st.pending, st.pendingOK = x, true
		excess := x - m.rateThreshold(st) - math.Log(rateMargin)
		pts[ReasonRate] = wRate * clamp01(excess/math.Log(rateRamp))
	}

	conf := m.confidence(st, now)
	if conf > 0 {
		c := st.hours[hour] + 0.5*(st.hours[(hour+23)%24]+st.hours[(hour+1)%24])
		p := (c + 0.5) / (2*st.hoursTotal + 12)
		pts[ReasonHour] = wHour * conf * clamp01((-math.Log(24*p)-hourFrom)/hourSpan)

		if obs.Source.IsValid() {
			known, near := st.knownSource(obs.Source.Unmap().As16())
			if !known {
				f := 1.0
				if near {
					f = nearFactor
				}
				pts[ReasonNewSource] = wSource * conf * f * adapt(st.novelSrc)
			}
		}

		tier := clampTier(obs.Tier)
		p = (st.mix[mixCell(tier, obs.Reveal)] + 0.5) / (st.mixTotal + 5)
		sens := 0.5 + float64(tier)/8 // restricted counts in full, no tier half
		pts[ReasonTierMix] = wMix * conf * sens * clamp01((-math.Log(p)-math.Log(mixFrom))/math.Log(mixSpan))

		for _, h := range keys {
			if !st.knownKey(h) {
				pts[ReasonNewKey] = wKey * conf * adapt(st.novelKey)
				break
			}
		}

		if obs.HasValue && obs.TransactionValue > 0 && st.valW >= valueWarm {
			z := (math.Log(obs.TransactionValue) - st.valMu) / max(math.Sqrt(st.valVar), minValueSD)
			pts[ReasonValue] = wValue * conf * clamp01((z-valueZ)/valueSpan)
		}
	}

	a := Assessment{Confidence: conf}
	for r, p := range pts {
		v := math.Round(p)
		if !(v > 0) { // also NaN
			continue
		}
		a.points[r] = uint8(v)
		a.Risk += int(v)
	}
	a.Risk = min(a.Risk, 100)
	return a
}

// rateThreshold returns the log rate above which st's rate is unusual,
// blended with the prior's while st has few samples.
func (m *Monitor) rateThreshold(st *state) float64 {
	c := clamp01(st.rateW / rateWarm)
	lnMin := math.Log(minRateRatio)
	own := max(st.rateQ, st.rateMu+lnMin)
	return c*own + (1-c)*(m.lnPrior+lnMin)
}

// Observe learns from the call obs, which was admitted under response
// applied (the active response Admit returned). A call admitted under a
// response teaches little, and one under Block nothing; refused calls
// should not be observed at all. Call Score for the call first: Observe
// learns the rate Score measured.
func (m *Monitor) Observe(obs Observation, applied Response) {
	if applied < None || applied >= numResponses {
		return
	}
	w := learnWeight[applied]
	if w == 0 {
		return
	}
	t := obs.Time
	if t.IsZero() {
		t = m.now()
	}
	now := t.UnixNano()
	hour := t.In(m.loc).Hour()
	var kh [maxObservedKeys]uint64
	keys := m.hashKeys(obs.Keys, &kh)

	st := m.get(obs.Principal, now)
	st.mu.Lock()
	defer st.mu.Unlock()
	st.learned += w
	m.decay(st, now)

	if st.pendingOK {
		st.pendingOK = false
		x := st.pending
		alpha := w
		if st.rateW > 0 {
			x = max(x, st.rateMu-2) // a call after a quiet night is not a new normal
			dt := float64(now-st.rateAt) / float64(rateMemory)
			alpha = max(w/(st.rateW+w), w*clamp(dt, 0, rateMaxAlpha))
		} else {
			st.rateMu, st.rateQ = x, x+math.Log(minRateRatio)
		}
		st.rateW += w
		st.rateAt = now
		st.rateMu += alpha * (x - st.rateMu)
		if x > st.rateQ {
			st.rateQ += w * rateQStep * rateQuantile
		} else {
			st.rateQ -= w * rateQStep * (1 - rateQuantile)
		}
	}

	st.hours[hour] += w
	st.hoursTotal += w
	tier := clampTier(obs.Tier)
	st.mix[mixCell(tier, obs.Reveal)] += w
	st.mixTotal += w

	if obs.Source.IsValid() {
		a := obs.Source.Unmap().As16()
		known, _ := st.knownSource(a)
		st.novelSrc += noveltyAlpha * w * (b2f(!known) - st.novelSrc)
		st.learnSource(a, w)
	}
	novelKey := false
	for _, h := range keys {
		if !st.knownKey(h) {
			novelKey = true
		}
		st.learnKey(h, w)
	}
	if len(keys) > 0 {
		st.novelKey += noveltyAlpha * w * (b2f(novelKey) - st.novelKey)
	}

	if obs.HasValue && obs.TransactionValue > 0 && !math.IsInf(obs.TransactionValue, 0) {
		x := math.Log(obs.TransactionValue)
		if st.valW == 0 {
			st.valMu = x
		}
		st.valW += w
		alpha := max(w/st.valW, w*valueMinAlpha)
		d := x - st.valMu
		st.valMu += alpha * d
		st.valVar = (1 - alpha) * (st.valVar + alpha*d*d)
	}
}

// decay ages st's counts by the hours since the last decay.
func (m *Monitor) decay(st *state, now int64) {
	h := now / int64(time.Hour)
	if h <= st.decayedAt {
		return
	}
	f := math.Pow(m.decayPerHour, float64(h-st.decayedAt))
	st.decayedAt = h
	for i := range st.hours {
		st.hours[i] *= f
	}
	st.hoursTotal *= f
	for i := range st.mix {
		st.mix[i] *= f
	}
	st.mixTotal *= f
	for i := range st.srcs {
		st.srcs[i].w *= f
	}
	for i := range st.keys {
		st.keys[i].w *= f
	}
}

// knownSource reports whether a is a known source, or near one.
func (st *state) knownSource(a [16]byte) (known, near bool) {
	for i := range st.srcs {
		s := &st.srcs[i]
		if s.w < knownWeight {
			continue
		}
		if s.addr == a {
			return true, true
		}
		near = near || samePrefix(s.addr, a)
	}
	return false, near
}

func (st *state) learnSource(a [16]byte, w float64) {
	low := 0
	for i := range st.srcs {
		if st.srcs[i].addr == a && st.srcs[i].w > 0 {
			st.srcs[i].w += w
			return
		}
		if st.srcs[i].w < st.srcs[low].w {
			low = i
		}
	}
	st.srcs[low] = source{addr: a, w: w}
}

func (st *state) knownKey(h uint64) bool {
	for i := range st.keys {
		if st.keys[i].h == h && st.keys[i].w >= knownWeight {
			return true
		}
	}
	return false
}

func (st *state) learnKey(h uint64, w float64) {
	low := 0
	for i := range st.keys {
		if st.keys[i].h == h && st.keys[i].w > 0 {
			st.keys[i].w += w
			return
		}
		if st.keys[i].w < st.keys[low].w {
			low = i
		}
	}
	st.keys[low] = keyEntry{h: h, w: w}
}

// samePrefix reports whether a and b are in the same /24 (IPv4, which As16
// maps to ::ffff:a.b.c.d) or /64 (IPv6).
func samePrefix(a, b [16]byte) bool {
	if isV4(a) && isV4(b) {
		return [15]byte(a[:15]) == [15]byte(b[:15])
	}
	return [8]byte(a[:8]) == [8]byte(b[:8])
}

func isV4(a [16]byte) bool {
	return [12]byte(a[:12]) == [12]byte{10: 0xff, 11: 0xff}
}

func mixCell(t Tier, reveal bool) int {
	c := int(t) * 2
	if reveal {
		c++
	}
	return c
}

func clampTier(t Tier) Tier { return min(max(t, TierNone), TierRestricted) }

// adapt lowers the points of a new source or key for a principal that often
// uses new ones.
func adapt(novelty float64) float64 {
	return clamp(1-novelty/noveltyTolerance, noveltyFloor, 1)
}

func clamp01(x float64) float64 { return clamp(x, 0, 1) }

func clamp(x, lo, hi float64) float64 {
	if !(x > lo) { // also NaN
		return lo
	}
	return min(x, hi)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
