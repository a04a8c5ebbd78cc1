package governance

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
)

// OwnerLabel is the label that names a key's owner.
const OwnerLabel = "owner"

// DefaultRotationGrace is how long past its due time a scheduled rotation
// may be before a key is reported overdue: the scheduler rotates within
// scheduler.interval of the due time, so a key this late means it is not
// running.
const DefaultRotationGrace = time.Hour

// Usage thresholds, as fractions of a version's usage limit.
const (
	// UsageWarnPercent: the primary version has reserved at least this
	// share of its limit.
	UsageWarnPercent = 90
)

// KeyLister pages through the key store (store.Store satisfies it).
type KeyLister interface {
	ListKeys(ctx context.Context, pageSize int, pageToken string) ([]store.Key, string, error)
}

// UsageReader reads how many encryptions each version of a key has
// reserved (store.Store satisfies it).
type UsageReader interface {
	Uses(ctx context.Context, name string) (map[uint32]int64, error)
}

// KeyInfo is a key's metadata with the uses of its versions. WrappedKeyset
// is always nil: the inventory holds no key material, wrapped or not.
type KeyInfo struct {
	Key store.Key
	// Uses counts the encryptions reserved per version; read only for
	// AES-256-GCM keys that may encrypt (enabled or disabled), nil otherwise.
	Uses map[uint32]int64
}

// ReadKeys reads every key's metadata from the store, page by page, and the
// usage counts of the keys whose usage is limited. It only reads.
func ReadKeys(ctx context.Context, keys KeyLister, uses UsageReader) ([]KeyInfo, error) {
	var out []KeyInfo
	token := ""
	for {
		page, next, err := keys.ListKeys(ctx, store.MaxPageSize, token)
		if err != nil {
			return nil, fmt.Errorf("governance: list keys: %w", err)
		}
		for _, k := range page {
			k.WrappedKeyset = nil
			info := KeyInfo{Key: k}
			if usageCounted(k) {
				u, err := uses.Uses(ctx, k.Name)
				if err != nil {
					return nil, fmt.Errorf("governance: uses of key %s: %w", k.Name, err)
				}
				info.Uses = u
			}
			out = append(out, info)
		}
		if next == "" {
			return out, nil
		}
		token = next
	}
}

// usageCounted reports whether k's versions have a usage limit that still
// matters: AES-256-GCM keys that may encrypt again.
func usageCounted(k store.Key) bool {
	return k.Type == store.KeyTypeAES256GCM && (k.State == store.KeyStateEnabled || k.State == store.KeyStateDisabled)
}

// KeyRules are the thresholds of CheckKeys.
type KeyRules struct {
	// Now is the time keys are checked at.
	Now time.Time
	// RotationGrace is how late a scheduled rotation may be; 0 means none.
	RotationGrace time.Duration
	// DefaultUsageLimit applies to keys whose UsageLimit is 0, as
	// keys.default_usage_limit does in the server; 0 means
	// config.DefaultUsageLimit.
	DefaultUsageLimit int64
}

// KeySummary counts the key inventory.
type KeySummary struct {
	Total             int `json:"total"`
	Enabled           int `json:"enabled"`
	Disabled          int `json:"disabled"`
	DeletionScheduled int `json:"deletion_scheduled"`
	Destroyed         int `json:"destroyed"`
	// ByType counts keys by type name (AES256_GCM, ...).
	ByType          map[string]int `json:"by_type"`
	RotationOverdue int            `json:"rotation_overdue"`
	NoOwner         int            `json:"no_owner"`
	// NearUsageLimit counts primary versions at UsageWarnPercent of their
	// limit or more, UsageSpent those at 100%.
	NearUsageLimit int `json:"near_usage_limit"`
	UsageSpent     int `json:"usage_spent"`
}

func (s *KeySummary) line() string {
	types := slices.Sorted(maps.Keys(s.ByType))
	line := fmt.Sprintf("%d keys: %d enabled, %d disabled, %d pending deletion, %d destroyed", s.Total, s.Enabled, s.Disabled, s.DeletionScheduled, s.Destroyed)
	for _, t := range types {
		line += fmt.Sprintf("; %d %s", s.ByType[t], t)
	}
	return line
}

// CheckKeys checks the inventory against rules. Warnings: an enabled key
// whose scheduled rotation is more than RotationGrace overdue; an enabled
// or disabled key with no owner label; an AES-256-GCM primary version that
// has reserved UsageWarnPercent or more of its usage limit, or all of it
// ("spent": the next encryption rotates the key); a key pending deletion,
// with its deletion time. A disabled key is an informational finding.
// Older versions are not checked for usage: they no longer encrypt.
func CheckKeys(keys []KeyInfo, rules KeyRules) ([]Finding, KeySummary) {
	sum := KeySummary{ByType: map[string]int{}}
	var out []Finding
	add := func(k store.Key, s Severity, format string, args ...any) {
		out = append(out, Finding{Check: KeysCheck, Severity: s, Subject: k.Name, Message: fmt.Sprintf(format, args...)})
	}
	for _, ki := range keys {
		k := ki.Key
		sum.Total++
		sum.ByType[k.Type.String()]++
		switch k.State {
		case store.KeyStateEnabled:
			sum.Enabled++
		case store.KeyStateDisabled:
			sum.Disabled++
			add(k, SeverityInfo, "disabled: it neither encrypts nor decrypts until enabled")
		case store.KeyStateDeletionScheduled:
			sum.DeletionScheduled++
			add(k, SeverityWarning, "deletion scheduled: its key material is destroyed on %s (in %s), and data under it becomes unreadable; cancel the deletion to keep it",
				day(k.DeletionTime), human(k.DeletionTime.Sub(rules.Now)))
		case store.KeyStateDestroyed:
			sum.Destroyed++
		}
		if k.State != store.KeyStateEnabled && k.State != store.KeyStateDisabled {
			continue
		}
		if k.Labels[OwnerLabel] == "" {
			sum.NoOwner++
			add(k, SeverityWarning, "no %q label: every key needs an accountable owner", OwnerLabel)
		}
		if due, ok := envelope.NextRotationTime(k); ok && rules.Now.After(due.Add(rules.RotationGrace)) {
			sum.RotationOverdue++
			add(k, SeverityWarning, "rotation overdue by %s: version %d was created on %s and the key rotates every %s (is the scheduler running?)",
				human(rules.Now.Sub(due)), k.PrimaryVersion, day(due.Add(-k.RotationPeriod)), human(k.RotationPeriod))
		}
		if usageCounted(k) {
			limit := envelope.UsageLimit(k, rules.DefaultUsageLimit)
			used := ki.Uses[k.PrimaryVersion]
			switch {
			case used >= limit:
				sum.UsageSpent++
				sum.NearUsageLimit++
				add(k, SeverityWarning, "primary version %d is spent: %d of its %d encryptions are reserved; the next encryption rotates the key",
					k.PrimaryVersion, used, limit)
			case used*100 >= limit*UsageWarnPercent:
				sum.NearUsageLimit++
				add(k, SeverityWarning, "primary version %d has reserved %d%% of its usage limit (%d of %d encryptions); the key rotates when it is spent",
					k.PrimaryVersion, used*100/limit, used, limit)
			}
		}
	}
	return out, sum
}
