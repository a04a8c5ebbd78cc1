package monitor

import (
	"errors"
	"math"
	"time"
)

// The refusals Admit returns. The messages name no principal; a server maps
// them to status codes with errors.Is.
var (
	// ErrBlocked: the principal is blocked (PERMISSION_DENIED).
	ErrBlocked = errors.New("monitor: calls refused after anomalous activity")
	// ErrThrottled: the principal is throttled and over its reduced rate
	// (RESOURCE_EXHAUSTED, with the retry delay).
	ErrThrottled = errors.New("monitor: call rate reduced after anomalous activity")
	// ErrStepUpRequired: the principal must use a certificate-bound access
	// token (UNAUTHENTICATED or PERMISSION_DENIED).
	ErrStepUpRequired = errors.New("monitor: a certificate-bound access token is required after anomalous activity")
)

// Apply puts the principal under response r from now until its expiry
// (Options.Expiry[r]), and returns the principal's active response. A
// response already in force is never weakened or shortened: applying a
// weaker one leaves the stronger in force, and applying one again extends
// it to now plus its expiry. Applying None, or a value that is no
// Response, changes nothing.
//
// A response includes the weaker ones: a throttled principal needs a
// certificate-bound token too.
func (m *Monitor) Apply(principal string, r Response, now time.Time) Response {
	ns := now.UnixNano()
	if r <= None || r >= numResponses {
		return m.Active(principal, now)
	}
	st := m.get(principal, ns)
	st.mu.Lock()
	defer st.mu.Unlock()
	if r == Throttle && st.until[Throttle] <= ns && st.until[Block] <= ns {
		// A new throttle starts with a full bucket.
		st.tokens, st.tokensAt = m.throttleBurst(st), ns
	}
	until := ns + m.expiry[r]
	if until > st.until[r] {
		st.until[r] = until
	}
	if until > st.activeUntil.Load() {
		st.activeUntil.Store(until)
	}
	return st.active(ns)
}

// Active returns the principal's strongest response in force at now, None
// for a principal the Monitor does not track.
func (m *Monitor) Active(principal string, now time.Time) Response {
	st := m.lookup(principal)
	if st == nil {
		return None
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.active(now.UnixNano())
}

func (st *state) active(ns int64) Response {
	for r := Block; r > None; r-- {
		if st.until[r] > ns {
			return r
		}
	}
	return None
}

// Allow reports whether a throttled principal may make a call at now, and
// takes a token from its bucket if so; when not, it says how long until it
// may. An unthrottled principal is always allowed; a blocked one never,
// until the block ends.
func (m *Monitor) Allow(principal string, now time.Time) (ok bool, retryAfter time.Duration) {
	st := m.lookup(principal)
	if st == nil {
		return true, 0
	}
	ns := now.UnixNano()
	st.mu.Lock()
	defer st.mu.Unlock()
	switch st.active(ns) {
	case Block:
		return false, time.Duration(st.until[Block] - ns)
	case Throttle:
		return m.take(st, ns)
	}
	return true, 0
}

// Admit applies the principal's active response to a call at now by a
// caller that holds a certificate-bound token or not. It returns the active
// response (to pass to Observe and to log) and nil when the call may go
// ahead; else an error wrapping ErrBlocked, ErrStepUpRequired or
// ErrThrottled, with the delay after which a retry may succeed (until the
// block ends, or until the bucket refills; 0 for a step-up).
func (m *Monitor) Admit(principal string, now time.Time, boundToken bool) (active Response, retryAfter time.Duration, err error) {
	st := m.lookup(principal)
	if st == nil {
		return None, 0, nil
	}
	ns := now.UnixNano()
	st.mu.Lock()
	defer st.mu.Unlock()
	active = st.active(ns)
	switch {
	case active == Block:
		return active, time.Duration(st.until[Block] - ns), ErrBlocked
	case active >= StepUp && !boundToken:
		return active, 0, ErrStepUpRequired
	case active == Throttle:
		if ok, retry := m.take(st, ns); !ok {
			return active, retry, ErrThrottled
		}
	}
	return active, 0, nil
}

// Lift ends every response in force for the principal (an operator's
// decision after review). Its baseline is kept.
func (m *Monitor) Lift(principal string) {
	st := m.lookup(principal)
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.until = [numResponses]int64{}
	st.activeUntil.Store(0)
}

// throttleRateOf is the rate, per second, a throttled principal may call at.
func (m *Monitor) throttleRateOf(st *state) float64 {
	r := m.throttleRate
	if st.rateW > 0 {
		r = max(r, m.throttleShare*math.Exp(st.rateMu))
	}
	return r
}

func (m *Monitor) throttleBurst(st *state) float64 { return max(1, m.throttleRateOf(st)) }

// take takes a token from st's bucket at ns.
func (m *Monitor) take(st *state, ns int64) (bool, time.Duration) {
	rate := m.throttleRateOf(st)
	if ns > st.tokensAt {
		st.tokens = min(m.throttleBurst(st), st.tokens+rate*float64(ns-st.tokensAt)/1e9)
		st.tokensAt = ns
	}
	if st.tokens >= 1 {
		st.tokens--
		return true, 0
	}
	return false, time.Duration(math.Ceil((1 - st.tokens) / rate * 1e9))
}
