package monitor

import (
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Tier is the highest data-sensitivity tier a call touches, as the policies
// number it: 0 none, 1 public, 2 internal, 3 confidential, 4 restricted.
type Tier int

// The tiers.
const (
	TierNone Tier = iota
	TierPublic
	TierInternal
	TierConfidential
	TierRestricted
)

// Observation describes one call for scoring and learning.
type Observation struct {
	// Principal identifies the caller. It is an opaque key (the chain's
	// principal key: workload and subject); the Monitor never logs it.
	Principal string
	// Time is when the call was made; zero means Options.Now().
	Time time.Time
	// Source is the caller's address; the zero Addr when unknown.
	Source netip.Addr
	// Keys are the names of the keys the call touches (none for calls on
	// the service). Only the first maxObservedKeys count.
	Keys []string
	// Tier is the highest tier the call touches.
	Tier Tier
	// Reveal is true for calls that return or move plaintext (Decrypt,
	// ReEncryptFrom, RevealDocument), false for the others.
	Reveal bool
	// TransactionValue is the value the caller declared, when HasValue.
	TransactionValue float64
	HasValue         bool
}

// maxObservedKeys is the number of an observation's keys that count: a
// batch call is judged by its first few keys.
const maxObservedKeys = 4

// Reason names a dimension of the baseline that made a call unusual. The
// names are fixed, so they may be logged and used as metric labels.
type Reason int

// The reasons, one per dimension.
const (
	ReasonRate      Reason = iota // the short-term request rate is far above the principal's usual
	ReasonHour                    // an hour of the day the principal rarely works
	ReasonNewSource               // an address the principal has not called from
	ReasonTierMix                 // a tier and reveal/protect combination it rarely uses
	ReasonNewKey                  // a key it has not used
	ReasonValue                   // a transaction value far above its usual
	numReasons
)

var reasonNames = [numReasons]string{
	ReasonRate:      "rate",
	ReasonHour:      "hour",
	ReasonNewSource: "new_source",
	ReasonTierMix:   "tier_mix",
	ReasonNewKey:    "new_key",
	ReasonValue:     "value",
}

// String returns the reason's name, such as "new_source".
func (r Reason) String() string {
	if r >= 0 && r < numReasons {
		return reasonNames[r]
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

// Reasons returns every reason, in order.
func Reasons() []Reason {
	rs := make([]Reason, numReasons)
	for i := range rs {
		rs[i] = Reason(i)
	}
	return rs
}

// Assessment is the score of one call.
type Assessment struct {
	// Risk is 0 (nothing unusual) to 100.
	Risk int
	// Confidence is how much history the history-based dimensions had,
	// 0 (a new principal) to 1 (warmed up).
	Confidence float64
	points     [numReasons]uint8
}

// Points returns how much reason r contributed to the risk (before the
// total is capped at 100).
func (a Assessment) Points(r Reason) int {
	if r < 0 || r >= numReasons {
		return 0
	}
	return int(a.points[r])
}

// Has reports whether reason r contributed to the risk.
func (a Assessment) Has(r Reason) bool { return a.Points(r) > 0 }

// Reasons returns the reasons that contributed, in order.
func (a Assessment) Reasons() []Reason {
	var rs []Reason
	for r := Reason(0); r < numReasons; r++ {
		if a.points[r] > 0 {
			rs = append(rs, r)
		}
	}
	return rs
}

// String returns the risk and its reasons, like "risk 55 (hour 25, new_source 30)".
func (a Assessment) String() string {
	var b strings.Builder
	b.WriteString("risk ")
	b.WriteString(strconv.Itoa(a.Risk))
	sep := " ("
	for r := Reason(0); r < numReasons; r++ {
		if a.points[r] > 0 {
			b.WriteString(sep)
			b.WriteString(reasonNames[r])
			b.WriteByte(' ')
			b.WriteString(strconv.Itoa(int(a.points[r])))
			sep = ", "
		}
	}
	if sep == ", " {
		b.WriteByte(')')
	}
	return b.String()
}

// LogValue logs the risk and the points of each contributing reason.
func (a Assessment) LogValue() slog.Value {
	attrs := make([]slog.Attr, 0, 1+numReasons)
	attrs = append(attrs, slog.Int("risk", a.Risk))
	for r := Reason(0); r < numReasons; r++ {
		if a.points[r] > 0 {
			attrs = append(attrs, slog.Int(reasonNames[r], int(a.points[r])))
		}
	}
	return slog.GroupValue(attrs...)
}

// Response is what is done about a principal's unusual behaviour, from
// nothing to refusing every call. Stronger responses compare greater.
type Response int

// The responses, weakest first.
const (
	// None: nothing is done.
	None Response = iota
	// Log: the calls are logged as anomalous and go ahead.
	Log
	// StepUp: calls need a certificate-bound access token (RFC 8705);
	// others are refused (ErrStepUpRequired).
	StepUp
	// Throttle: calls are admitted at a reduced rate (ErrThrottled).
	Throttle
	// Block: every call is refused (ErrBlocked).
	Block
	numResponses
)

var responseNames = [numResponses]string{
	None:     "none",
	Log:      "log",
	StepUp:   "step_up",
	Throttle: "throttle",
	Block:    "block",
}

// String returns the response's name: "none", "log", "step_up",
// "throttle" or "block".
func (r Response) String() string {
	if r >= 0 && r < numResponses {
		return responseNames[r]
	}
	return "Response(" + strconv.Itoa(int(r)) + ")"
}

// Action returns the policy action that decides the response, such as
// "AnomalyBlock" (examples/policies/tresor.cedarschema), or "" for None.
func (r Response) Action() string {
	switch r {
	case Log:
		return "AnomalyLog"
	case StepUp:
		return "AnomalyStepUp"
	case Throttle:
		return "AnomalyThrottle"
	case Block:
		return "AnomalyBlock"
	}
	return ""
}

// Responses returns the responses stronger than None, strongest first: the
// order in which to ask the policies.
func Responses() []Response { return []Response{Block, Throttle, StepUp, Log} }
