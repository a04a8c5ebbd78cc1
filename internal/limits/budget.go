package limits

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tresorkms/tresor/internal/store"
)

// Window is a fixed window of a budget: windows are aligned to multiples of
// Period since the Unix epoch (so a 24h window is a UTC day), and each may
// count up to Limit uses.
type Window struct {
	Period time.Duration
	Limit  int64
}

// BudgetRule limits the uses of an action on data of a tier, per principal,
// in every one of its windows at once.
type BudgetRule struct {
	Action  string // e.g. "decrypt"
	Tier    string // e.g. "restricted"
	Windows []Window
}

// BudgetStore keeps the counts of budget windows. The key store
// (store.Store) is one.
type BudgetStore interface {
	// ConsumeBudget is [store.Store.ConsumeBudget].
	ConsumeBudget(ctx context.Context, n int64, windows []store.BudgetWindow) (int, error)
}

// Budgets enforces budget rules against counts kept in a [BudgetStore]. Its
// methods are safe for concurrent use.
type Budgets struct {
	s     BudgetStore
	rules map[ruleKey]*rule
	now   func() time.Time
}

type ruleKey struct{ action, tier string }

type rule struct {
	windows []window
	room    int // bytes left for the principal in the longest counter name
}

// window is a Window with the fixed part of its counter names.
type window struct {
	Window
	prefix string // action/tier/period/
}

// maxNamePart is the longest action or tier name NewBudgets accepts, in
// bytes; it keeps counter names within the store's 512 bytes even when the
// principal's part is a hash.
const maxNamePart = 64

// maxCounter is the longest counter name the store accepts, in bytes.
const maxCounter = 512

// NewBudgets returns Budgets enforcing rules, with counts kept in s. now is
// its clock (time.Now when nil). It fails with [ErrInvalidConfig] unless
// every rule has a distinct (Action, Tier), an Action and a Tier of 1 to 64
// bytes of UTF-8 with no '/' or NUL, and at least one window, and every
// window has a distinct Period of at least a second and a Limit of at least 1.
func NewBudgets(s BudgetStore, rules []BudgetRule, now func() time.Time) (*Budgets, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: no budget store", ErrInvalidConfig)
	}
	if now == nil {
		now = time.Now
	}
	b := &Budgets{s: s, rules: make(map[ruleKey]*rule, len(rules)), now: now}
	for i, r := range rules {
		invalid := func(format string, args ...any) error {
			return fmt.Errorf("%w: budget rule %d (%q on %q): %s", ErrInvalidConfig, i, r.Action, r.Tier, fmt.Sprintf(format, args...))
		}
		if err := checkNamePart(r.Action); err != nil {
			return nil, invalid("action: %v", err)
		}
		if err := checkNamePart(r.Tier); err != nil {
			return nil, invalid("tier: %v", err)
		}
		k := ruleKey{r.Action, r.Tier}
		if _, dup := b.rules[k]; dup {
			return nil, invalid("a rule for the same action and tier comes first")
		}
		if len(r.Windows) == 0 {
			return nil, invalid("no windows")
		}
		ru := &rule{windows: make([]window, 0, len(r.Windows)), room: maxCounter}
		for j, w := range r.Windows {
			switch {
			case w.Period < time.Second:
				return nil, invalid("window %d: period %v, want at least 1s", j, w.Period)
			case w.Limit < 1:
				return nil, invalid("window %d: limit %d, want at least 1", j, w.Limit)
			}
			for _, prev := range ru.windows {
				if prev.Period == w.Period {
					return nil, invalid("window %d: period %v appears twice", j, w.Period)
				}
			}
			prefix := r.Action + "/" + r.Tier + "/" + w.Period.String() + "/"
			ru.windows = append(ru.windows, window{Window: w, prefix: prefix})
			ru.room = min(ru.room, maxCounter-len(prefix))
		}
		b.rules[k] = ru
	}
	return b, nil
}

func checkNamePart(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > maxNamePart:
		return fmt.Errorf("%d bytes, want at most %d", len(s), maxNamePart)
	case !utf8.ValidString(s):
		return errors.New("not valid UTF-8")
	case strings.ContainsAny(s, "/\x00"):
		return errors.New("contains '/' or NUL")
	}
	return nil
}

// Consume counts n uses of action on data of the tier by principal against
// every window of the matching rule (no rule: always allowed, no store
// call). Refused: ok=false and retryAfter = time until the exceeded window
// ends; nothing counted. Store errors are returned (the caller fails closed).
//
// A call of n greater than a window's Limit is always refused; retryAfter
// is then still the end of the window.
func (b *Budgets) Consume(ctx context.Context, principal, action, tier string, n int64) (ok bool, retryAfter time.Duration, err error) {
	if n < 1 {
		return false, 0, fmt.Errorf("limits: consume %d uses of %s on %s data: want at least 1", n, action, tier)
	}
	ru := b.rules[ruleKey{action, tier}]
	if ru == nil {
		return true, 0, nil
	}
	now := b.now()
	id := principalID(principal, ru.room)
	windows := make([]store.BudgetWindow, len(ru.windows))
	for i, w := range ru.windows {
		start := windowStart(now, w.Period)
		windows[i] = store.BudgetWindow{
			Counter: w.prefix + id,
			Start:   start,
			End:     start.Add(w.Period),
			Limit:   w.Limit,
		}
	}
	exceeded, err := b.s.ConsumeBudget(ctx, n, windows)
	switch {
	case err != nil:
		return false, 0, fmt.Errorf("limits: %s budget of %q on %s data: %w", action, principal, tier, err)
	case exceeded == -1:
		return true, 0, nil
	case exceeded < 0 || exceeded >= len(windows):
		return false, 0, fmt.Errorf("limits: %s budget of %q on %s data: the store reported window %d of %d", action, principal, tier, exceeded, len(windows))
	}
	return false, windows[exceeded].End.Sub(now), nil
}

// principalID is the principal's part of a counter name: "=" and the name
// itself when it fits in room bytes and is UTF-8 with no NUL, else "#" and
// the hex SHA-256 of the name. The prefixes keep the two forms apart, and the
// part comes last in the counter name, so no two principals share a counter.
func principalID(principal string, room int) string {
	if 1+len(principal) <= room && utf8.ValidString(principal) && !strings.ContainsRune(principal, 0) {
		return "=" + principal
	}
	sum := sha256.Sum256([]byte(principal))
	return "#" + hex.EncodeToString(sum[:])
}

// windowStart is the start of the window of period p that holds t: the
// last multiple of p since the Unix epoch not after t.
func windowStart(t time.Time, p time.Duration) time.Time {
	ns := t.UnixNano()
	r := ns % int64(p)
	if r < 0 {
		r += int64(p)
	}
	return time.Unix(0, ns-r).UTC()
}
