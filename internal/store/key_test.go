package store

import (
	"errors"
	"math"
	"slices"
	"strconv"
	"testing"
	"time"
)

func TestPageToken(t *testing.T) {
	for _, name := range []string{"a", "payments/card-pan", "clé ✓", "k1:", "a b?c#d"} {
		t.Run(name, func(t *testing.T) {
			token := encodePageToken(name)
			got, err := decodePageToken(token)
			if err != nil || got != name {
				t.Errorf("decodePageToken(%q) = %q, %v; want %q, nil", token, got, err, name)
			}
		})
	}
}

func TestDecodePageTokenInvalid(t *testing.T) {
	tests := []struct {
		name  string
		token string
	}{
		{"not base64", "!!!"},
		{"padded", encodePageToken("a") + "="},
		{"no prefix", "YWJj"},                // "abc"
		{"prefix only", encodePageToken("")}, // "k1:"
		{"not UTF-8", "azE6_w"},              // "k1:\xff"
		{"standard alphabet", "azE6+/8"},     // '+' and '/' are not base64url
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := decodePageToken(tt.token); !errors.Is(err, ErrInvalidPageToken) {
				t.Errorf("decodePageToken(%q) = %q, %v; want ErrInvalidPageToken", tt.token, got, err)
			}
		})
	}
}

func TestPageSize(t *testing.T) {
	tests := []struct{ in, want int }{
		{-5, DefaultPageSize}, {0, DefaultPageSize}, {1, 1}, {MaxPageSize, MaxPageSize}, {MaxPageSize + 1, MaxPageSize},
	}
	for _, tt := range tests {
		if got := pageSize(tt.in); got != tt.want {
			t.Errorf("pageSize(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestStateNames(t *testing.T) {
	for _, s := range []KeyState{KeyStateEnabled, KeyStateDisabled, KeyStateDeletionScheduled, KeyStateDestroyed} {
		if got, err := ParseKeyState(s.String()); err != nil || got != s {
			t.Errorf("ParseKeyState(%q) = %v, %v; want %v, nil", s.String(), got, err, s)
		}
	}
	for _, name := range []string{"DELETION_SCHEDULED", "DESTROYED"} {
		if s, err := ParseKeyState(name); err != nil || s.String() != name {
			t.Errorf("ParseKeyState(%q) = %v, %v; want the state named so", name, s, err)
		}
	}
	for _, s := range []RotationState{RotationRunning, RotationDone} {
		if got, err := ParseRotationState(s.String()); err != nil || got != s {
			t.Errorf("ParseRotationState(%q) = %v, %v; want %v, nil", s.String(), got, err, s)
		}
	}
	for _, name := range []string{"UNSPECIFIED", "", "running"} {
		if _, err := ParseRotationState(name); err == nil {
			t.Errorf("ParseRotationState(%q) err = nil, want an error", name)
		}
	}
	if got := RotationState(0).String(); got != "UNSPECIFIED" {
		t.Errorf("RotationState(0).String() = %q, want UNSPECIFIED", got)
	}
}

func TestLeaseExpiry(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 6789, time.UTC)
	tests := []struct {
		now  time.Time
		ttl  time.Duration
		want time.Time
	}{
		{now, time.Second, time.Date(2030, 1, 2, 3, 4, 6, 6000, time.UTC)},
		{now, time.Microsecond, time.Date(2030, 1, 2, 3, 4, 5, 7000, time.UTC)},
		{now, math.MaxInt64, storeTime(storeTime(now).Add(math.MaxInt64))},
		{maxTime.Add(-time.Hour), 2 * time.Hour, maxTime},
		{maxTime, math.MaxInt64, maxTime},
	}
	for _, tt := range tests {
		if got := leaseExpiry(tt.now, tt.ttl); !got.Equal(tt.want) {
			t.Errorf("leaseExpiry(%v, %v) = %v, want %v", tt.now, tt.ttl, got, tt.want)
		}
	}
}

func TestRevisionNames(t *testing.T) {
	var names []string
	for i := range 2500 {
		names = append(names, strconv.Itoa(i%2100))
	}
	names = append(names, "", "a\xff", "a\x00")
	chunks := revisionNames(names)
	var sizes []int
	seen := map[string]bool{}
	for _, c := range chunks {
		sizes = append(sizes, len(c))
		for _, n := range c {
			if seen[n] {
				t.Errorf("revisionNames: %q appears twice", n)
			}
			seen[n] = true
		}
	}
	if want := []int{1000, 1000, 100}; !slices.Equal(sizes, want) {
		t.Errorf("revisionNames(2100 distinct names and 3 impossible ones) chunk sizes = %v, want %v", sizes, want)
	}
	if got := revisionNames(nil); len(got) != 0 {
		t.Errorf("revisionNames(nil) = %q, want no chunks", got)
	}
}
