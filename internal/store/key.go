package store

import (
	"cmp"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// This file holds the rules every Store implementation shares: validation,
// normalization of what is stored, page tokens and page sizes.

// Range of the times a store keeps: what every backend can represent.
var (
	minTime = time.Date(1, time.January, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(9999, time.December, 31, 23, 59, 59, 999999000, time.UTC)
)

// storeTime is t as stored: UTC, truncated to the microsecond, with no
// monotonic clock reading.
func storeTime(t time.Time) time.Time {
	return t.UTC().Truncate(time.Microsecond)
}

// validateKey checks k against the rules of [ErrInvalidKey]. The errors it
// returns wrap ErrInvalidKey.
func validateKey(k Key) error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidKey, fmt.Sprintf(format, args...))
	}
	if k.Name == "" {
		return invalid("empty name")
	}
	if err := checkText(k.Name); err != nil {
		return invalid("name: %v", err)
	}
	if t, err := ParseKeyType(k.Type.String()); err != nil || t != k.Type {
		return invalid("type %d is unspecified or unknown", int(k.Type))
	}
	if s, err := ParseKeyState(k.State.String()); err != nil || s != k.State {
		return invalid("state %d is unspecified or unknown", int(k.State))
	}
	if k.RotationPeriod < 0 {
		return invalid("negative rotation period %v", k.RotationPeriod)
	}
	if k.UsageLimit < 0 {
		return invalid("negative usage limit %d", k.UsageLimit)
	}
	if k.RetireAfter < 0 {
		return invalid("negative retire-after %v", k.RetireAfter)
	}
	if len(k.Versions) == 0 {
		return invalid("no versions")
	}
	if k.State == KeyStateDestroyed {
		if len(k.WrappedKeyset) != 0 {
			return invalid("a destroyed key holds a wrapped keyset")
		}
	} else {
		if len(k.WrappedKeyset) == 0 {
			return invalid("no wrapped keyset")
		}
		if k.RootKeyID == "" {
			return invalid("no root key id")
		}
	}
	for _, t := range []struct {
		name string
		t    time.Time
		want KeyState
	}{
		{"deletion time", k.DeletionTime, KeyStateDeletionScheduled},
		{"destroy time", k.DestroyTime, KeyStateDestroyed},
	} {
		st := storeTime(t.t)
		switch {
		case st.IsZero() && k.State == t.want:
			return invalid("state %v without a %s", k.State, t.name)
		case !st.IsZero() && k.State != t.want:
			return invalid("%s %v set on a key in state %v (only %v keys have one)", t.name, t.t, k.State, t.want)
		case st.Before(minTime) || st.After(maxTime):
			return invalid("%s %v is outside years 1 to 9999", t.name, t.t)
		}
	}
	seen := make(map[uint32]bool, len(k.Versions))
	for _, v := range k.Versions {
		if v.Number == 0 {
			return invalid("version number 0 (numbers count from 1)")
		}
		if seen[v.Number] {
			return invalid("version %d appears twice", v.Number)
		}
		seen[v.Number] = true
		if ct := storeTime(v.CreateTime); ct.Before(minTime) || ct.After(maxTime) {
			return invalid("version %d create time %v is outside years 1 to 9999", v.Number, v.CreateTime)
		}
	}
	if !seen[k.PrimaryVersion] {
		return invalid("primary version %d is not among the versions", k.PrimaryVersion)
	}
	for name, value := range k.Labels {
		if err := checkText(name); err != nil {
			return invalid("label name %q: %v", name, err)
		}
		if err := checkText(value); err != nil {
			return invalid("label %q value: %v", name, err)
		}
	}
	if err := checkText(k.RootKeyID); err != nil {
		return invalid("root key id: %v", err)
	}
	return nil
}

// checkText refuses strings that not every backend stores faithfully.
func checkText(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	if strings.ContainsRune(s, 0) {
		return errors.New("contains a NUL character")
	}
	return nil
}

// normalizeKey returns a deep copy of k in the form a store keeps it: times
// truncated to microseconds in UTC, versions ordered by number, empty labels
// and keyset nil. CreateTime, UpdateTime and Revision are left as they are;
// the store sets them.
func normalizeKey(k Key) Key {
	out := k
	out.Labels = nil
	if len(k.Labels) > 0 {
		out.Labels = maps.Clone(k.Labels)
	}
	out.WrappedKeyset = nil
	if len(k.WrappedKeyset) > 0 {
		out.WrappedKeyset = slices.Clone(k.WrappedKeyset)
	}
	out.Versions = nil
	if len(k.Versions) > 0 {
		out.Versions = make([]Version, len(k.Versions))
		for i, v := range k.Versions {
			v.CreateTime = storeTime(v.CreateTime)
			out.Versions[i] = v
		}
		slices.SortFunc(out.Versions, func(a, b Version) int {
			return cmp.Compare(a.Number, b.Number)
		})
	}
	out.DeletionTime = storeTime(k.DeletionTime)
	out.DestroyTime = storeTime(k.DestroyTime)
	out.CreateTime = storeTime(k.CreateTime)
	out.UpdateTime = storeTime(k.UpdateTime)
	return out
}

// pageSize applies DefaultPageSize and MaxPageSize to a requested page size.
func pageSize(n int) int {
	switch {
	case n <= 0:
		return DefaultPageSize
	case n > MaxPageSize:
		return MaxPageSize
	default:
		return n
	}
}

// pageTokenPrefix marks the tokens ListKeys issues, so that most garbage is
// told apart from a real token.
const pageTokenPrefix = "k1:"

// encodePageToken returns the page token of the page after the key named last.
func encodePageToken(last string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + last))
}

// decodePageToken returns the name of the last key of the previous page; ""
// for the empty token of the first page. Errors wrap ErrInvalidPageToken.
func decodePageToken(token string) (string, error) {
	if token == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidPageToken, err)
	}
	last, ok := strings.CutPrefix(string(b), pageTokenPrefix)
	if !ok || last == "" || checkText(last) != nil {
		return "", fmt.Errorf("%w: %q", ErrInvalidPageToken, token)
	}
	return last, nil
}

// prepareKey validates k for CreateKey or UpdateKey and returns it
// normalized, with its labels as stored. On an error it returns k as given.
func prepareKey(k Key) (Key, string, error) {
	if err := validateKey(k); err != nil {
		return k, "", err
	}
	n := normalizeKey(k)
	labels, err := encodeLabels(n.Labels)
	if err != nil {
		return k, "", err
	}
	return n, labels, nil
}

// decodeKeyColumns sets the fields of k that both schemas store alike from
// the columns of its row: type, state, labels, the wrapped keyset (empty is
// nil) and the durations. k.Name is set; the errors name it.
func decodeKeyColumns(k *Key, typ, state, labels string, rotation, retire int64) error {
	var err error
	if k.Type, err = ParseKeyType(typ); err != nil {
		return fmt.Errorf("key %q: %w", k.Name, err)
	}
	if k.State, err = ParseKeyState(state); err != nil {
		return fmt.Errorf("key %q: %w", k.Name, err)
	}
	if k.Labels, err = decodeLabels(labels); err != nil {
		return fmt.Errorf("key %q: %w", k.Name, err)
	}
	if len(k.WrappedKeyset) == 0 {
		k.WrappedKeyset = nil
	}
	k.RotationPeriod = time.Duration(rotation)
	k.RetireAfter = time.Duration(retire)
	return nil
}

// page cuts items, read with a limit of n+1, to a page of n and returns
// the token of the next page (after the last item's name), or "" when
// there is none.
func page[T any](items []T, n int, name func(T) string) ([]T, string) {
	if len(items) > n {
		items = items[:n:n]
		return items, encodePageToken(name(items[n-1]))
	}
	return items, ""
}

// pageKeys is page for keys.
func pageKeys(keys []Key, n int) ([]Key, string) {
	return page(keys, n, func(k Key) string { return k.Name })
}
