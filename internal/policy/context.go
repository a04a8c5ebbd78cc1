package policy

import (
	"net/netip"
	"sync/atomic"

	"github.com/cedar-policy/cedar-go/types"
)

// contextInputs is everything a context record is built from, as
// contextRecord derives it from a Context and the engine's time zone. Equal
// inputs build equal records: the record depends on nothing else.
type contextInputs struct {
	ip                  netip.Addr // unmapped, without a zone
	millis, localMillis int64      // time and local_time, in milliseconds
	weekday             int64
	sensitivity         Tier
	auth                string
	transactionValue    string
	purpose             string
	risk                int64
}

// contextEntry is a built context record and its inputs. It is immutable.
type contextEntry struct {
	in  contextInputs
	rec types.Record
}

// contextMemoSlots is the number of records a memo remembers.
const contextMemoSlots = 64

// memo remembers an Engine's recently built context records, so that the
// calls made within the same millisecond with the same source,
// authentication and declared values (a busy client's calls) share one
// record instead of each building one (Cedar copies, sorts and hashes a
// record's attributes). A slot holds one entry; a record is returned only
// for inputs equal to its own, and Cedar records are immutable, so a hit is
// exactly what building would return.
type memo [contextMemoSlots]atomic.Pointer[contextEntry]

// slot returns in's slot. The hash only spreads inputs over the slots; an
// entry is used only when its inputs are equal to in.
func (m *memo) slot(in *contextInputs) *atomic.Pointer[contextEntry] {
	a := in.ip.As16()
	h := uint64(in.millis)
	for _, b := range a[12:] {
		h = h*31 + uint64(b)
	}
	h = h*31 + uint64(in.sensitivity)
	h = h*31 + uint64(in.risk)
	h = h*31 + uint64(len(in.auth)+len(in.transactionValue)<<8+len(in.purpose)<<16)
	h *= 0x9e3779b97f4a7c15
	return &m[h>>58] // the top 6 bits: contextMemoSlots is 64
}

// The values of the context attributes auth and sensitivity, made once:
// converting a string to a types.Value on every call would allocate.
var (
	authValues = map[string]types.Value{
		AuthMTLS:       types.String(AuthMTLS),
		AuthToken:      types.String(AuthToken),
		AuthBoundToken: types.String(AuthBoundToken),
	}
	sensitivityValues = [...]types.Value{
		0:                types.String(""),
		TierPublic:       types.String(tierNames[TierPublic]),
		TierInternal:     types.String(tierNames[TierInternal]),
		TierConfidential: types.String(tierNames[TierConfidential]),
		TierRestricted:   types.String(tierNames[TierRestricted]),
	}
)

func authValue(auth string) types.Value {
	if v, ok := authValues[auth]; ok {
		return v
	}
	return types.String(auth)
}
