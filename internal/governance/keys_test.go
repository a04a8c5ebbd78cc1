package governance

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

func TestCheckKeys(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	tests := []struct {
		name     string
		key      keySpec
		severity Severity // of the one finding wanted; 0: no finding
		contains string
		summary  func(KeySummary) int // the counter the finding adds to, want 1
	}{
		{name: "healthy", key: keySpec{owner: "payments", created: now.Add(-10 * day), rotation: 90 * day, used: 10, usageLimit: 1000}},
		{name: "no owner", key: keySpec{created: now}, severity: SeverityWarning, contains: `no "owner" label`,
			summary: func(s KeySummary) int { return s.NoOwner }},
		{name: "empty owner", key: keySpec{owner: "", created: now}, severity: SeverityWarning, contains: "owner"},
		{name: "rotation overdue", key: keySpec{owner: "o", created: now.Add(-100 * day), rotation: 90 * day}, severity: SeverityWarning,
			contains: "rotation overdue by 10 days", summary: func(s KeySummary) int { return s.RotationOverdue }},
		{name: "rotation due within the grace", key: keySpec{owner: "o", created: now.Add(-90*day - 30*time.Minute), rotation: 90 * day}},
		{name: "rotation on demand only", key: keySpec{owner: "o", created: now.Add(-1000 * day)}},
		{name: "usage at 95%", key: keySpec{owner: "o", created: now, usageLimit: 1000, used: 950}, severity: SeverityWarning,
			contains: "95% of its usage limit", summary: func(s KeySummary) int { return s.NearUsageLimit }},
		{name: "usage at 89%", key: keySpec{owner: "o", created: now, usageLimit: 1000, used: 899}},
		{name: "usage spent", key: keySpec{owner: "o", created: now, usageLimit: 1000, used: 1000}, severity: SeverityWarning,
			contains: "is spent", summary: func(s KeySummary) int { return s.UsageSpent }},
		{name: "default usage limit applies", key: keySpec{owner: "o", created: now, used: 95}, severity: SeverityWarning,
			contains: "95 of 100 encryptions"},
		{name: "SIV keys are not counted", key: keySpec{owner: "o", created: now, typ: store.KeyTypeAES256SIV, usageLimit: 0, used: 0}},
		{name: "pending deletion", key: keySpec{owner: "o", created: now, state: store.KeyStateDeletionScheduled, deletion: now.Add(5 * day)},
			severity: SeverityWarning, contains: "deletion scheduled", summary: func(s KeySummary) int { return s.DeletionScheduled }},
		{name: "pending deletion without owner is only pending", key: keySpec{created: now, state: store.KeyStateDeletionScheduled, deletion: now.Add(day)},
			severity: SeverityWarning, contains: "destroyed on"},
		{name: "disabled", key: keySpec{owner: "o", created: now, state: store.KeyStateDisabled}, severity: SeverityInfo, contains: "disabled",
			summary: func(s KeySummary) int { return s.Disabled }},
		{name: "disabled keys are not rotated", key: keySpec{owner: "o", created: now.Add(-100 * day), rotation: 90 * day, state: store.KeyStateDisabled},
			severity: SeverityInfo, contains: "disabled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := openStore(t)
			tc.key.name = "k"
			createKey(t, st, tc.key)
			keys, err := ReadKeys(context.Background(), st, st)
			if err != nil || len(keys) != 1 {
				t.Fatalf("ReadKeys() = %d keys, %v; want 1, nil", len(keys), err)
			}
			fs, sum := CheckKeys(keys, KeyRules{Now: now, RotationGrace: time.Hour, DefaultUsageLimit: 100})
			if tc.severity == 0 {
				if len(fs) != 0 {
					t.Fatalf("CheckKeys(%s) = %+v, want no finding", tc.name, fs)
				}
				return
			}
			if len(fs) != 1 || fs[0].Severity != tc.severity || fs[0].Subject != "k" || fs[0].Check != KeysCheck {
				t.Fatalf("CheckKeys(%s) = %+v, want one %s finding about k", tc.name, fs, tc.severity)
			}
			if !hasFinding(fs, KeysCheck, tc.severity, "k", tc.contains) {
				t.Errorf("CheckKeys(%s) message = %q, want it to contain %q", tc.name, fs[0].Message, tc.contains)
			}
			if tc.summary != nil {
				if got := tc.summary(sum); got != 1 {
					t.Errorf("CheckKeys(%s) summary %+v: counter = %d, want 1", tc.name, sum, got)
				}
			}
			if sum.Total != 1 {
				t.Errorf("CheckKeys(%s) summary total = %d, want 1", tc.name, sum.Total)
			}
		})
	}
}

// pagedLister serves keys two per page and counts the calls.
type pagedLister struct {
	keys  []store.Key
	calls int
	uses  map[string]map[uint32]int64
	err   error
}

func (p *pagedLister) ListKeys(_ context.Context, _ int, token string) ([]store.Key, string, error) {
	p.calls++
	if p.err != nil {
		return nil, "", p.err
	}
	start := 0
	if token != "" {
		fmt.Sscan(token, &start)
	}
	end := min(start+2, len(p.keys))
	next := ""
	if end < len(p.keys) {
		next = fmt.Sprint(end)
	}
	return p.keys[start:end], next, nil
}

func (p *pagedLister) Uses(_ context.Context, name string) (map[uint32]int64, error) {
	return p.uses[name], nil
}

func TestReadKeysPages(t *testing.T) {
	p := &pagedLister{uses: map[string]map[uint32]int64{"b": {1: 5}}}
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		p.keys = append(p.keys, store.Key{Name: n, Type: store.KeyTypeAES256GCM, State: store.KeyStateEnabled, PrimaryVersion: 1, WrappedKeyset: []byte("x")})
	}
	keys, err := ReadKeys(context.Background(), p, p)
	if err != nil || len(keys) != 5 || p.calls != 3 {
		t.Fatalf("ReadKeys() = %d keys in %d calls, %v; want 5 keys in 3 calls, nil", len(keys), p.calls, err)
	}
	for _, k := range keys {
		if k.Key.WrappedKeyset != nil {
			t.Errorf("ReadKeys() key %s WrappedKeyset = %q, want nil (no key material in the inventory)", k.Key.Name, k.Key.WrappedKeyset)
		}
	}
	if keys[1].Uses[1] != 5 {
		t.Errorf("ReadKeys() uses of b = %v, want {1: 5}", keys[1].Uses)
	}
	p.err = store.ErrUnavailable
	if _, err := ReadKeys(context.Background(), p, p); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("ReadKeys() on a failing store err = %v, want store.ErrUnavailable", err)
	}
}

func TestReadKeysWritesNothing(t *testing.T) {
	st, _ := openStore(t)
	ctx := context.Background()
	k := createKey(t, st, keySpec{name: "payments", owner: "o", created: time.Now(), used: 3, usageLimit: 10})
	if _, err := ReadKeys(ctx, st, st); err != nil {
		t.Fatalf("ReadKeys() err = %v, want nil", err)
	}
	got, err := st.GetKey(ctx, "payments")
	if err != nil || got.Revision != k.Revision {
		t.Errorf("GetKey(payments) after ReadKeys = revision %d, %v; want %d (unchanged)", got.Revision, err, k.Revision)
	}
	uses, err := st.Uses(ctx, "payments")
	if err != nil || uses[1] != 3 {
		t.Errorf("Uses(payments) after ReadKeys = %v, %v; want {1: 3}", uses, err)
	}
}
