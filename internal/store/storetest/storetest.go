// Package storetest is the conformance suite of [store.Store]. Every
// implementation runs [Run] from its own tests:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, opts ...store.Option) store.Store {
//			s, err := store.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "tresor.db"), opts...)
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// The suite holds the contract documented in package store; it uses only the
// Store interface and knows nothing of any backend.
package storetest

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

// Run runs the conformance suite. open returns a fresh, empty store opened
// with opts each time it is called, and arranges (with t.Cleanup) for it to
// be closed. The suite passes [store.WithClock] to the tests that set the
// time. The subtests run in parallel, so open must be safe to call
// concurrently.
func Run(t *testing.T, open func(t *testing.T, opts ...store.Option) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CreateGetRoundTrip", testCreateGetRoundTrip},
		{"CreateDuplicate", testCreateDuplicate},
		{"GetMissing", testGetMissing},
		{"ListEmpty", testListEmpty},
		{"ListPaging", testListPaging},
		{"ListDefaultPageSize", testListDefaultPageSize},
		{"ListMaxPageSize", testListMaxPageSize},
		{"ListInvalidPageToken", testListInvalidPageToken},
		{"Update", testUpdate},
		{"UpdateConflict", testUpdateConflict},
		{"UpdateMissing", testUpdateMissing},
		{"UpdateReplacesVersions", testUpdateReplacesVersions},
		{"CreateInvalid", testCreateInvalid},
		{"UpdateInvalid", testUpdateInvalid},
		{"NoAliasing", testNoAliasing},
		{"ConcurrentUpdatesOneRevision", testConcurrentUpdatesOneRevision},
		{"ConcurrentReadModifyWrite", testConcurrentReadModifyWrite},
		{"ConcurrentCreates", testConcurrentCreates},
		{"ConcurrentCreatesOneName", testConcurrentCreatesOneName},
		{"ConsistentReads", testConsistentReads},
		{"ContextCanceled", testContextCanceled},
		{"BudgetWithinLimit", testBudgetWithinLimit},
		{"BudgetExceededCountsNothing", testBudgetExceededCountsNothing},
		{"BudgetCountersIndependent", testBudgetCountersIndependent},
		{"BudgetNewWindowStartsAtZero", testBudgetNewWindowStartsAtZero},
		{"BudgetManyUses", testBudgetManyUses},
		{"BudgetInvalid", testBudgetInvalid},
		{"BudgetContextCanceled", testBudgetContextCanceled},
		{"BudgetConcurrent", testBudgetConcurrent},
		{"LifecycleRoundTrip", testLifecycleRoundTrip},
		{"ScheduleCancelDestroy", testScheduleCancelDestroy},
		{"DestroyedStaysDestroyed", testDestroyedStaysDestroyed},
		{"ReserveUses", testReserveUses},
		{"ReserveUsesNoOverflow", testReserveUsesNoOverflow},
		{"ReserveUsesInvalid", testReserveUsesInvalid},
		{"ReserveUsesSurviveUpdates", testReserveUsesSurviveUpdates},
		{"ReserveUsesConcurrent", testReserveUsesConcurrent},
		{"LeaseInvalid", testLeaseInvalid},
		{"KeyRevisions", testKeyRevisions},
		{"RotationNone", testRotationNone},
		{"RotationInvalid", testRotationInvalid},
		{"ListKeysByRootKey", testListKeysByRootKey},
		{"RewrapKeysInvalid", testRewrapKeysInvalid},
		{"RewrapKeysConcurrentUpdates", testRewrapKeysConcurrentUpdates},
		{"RotationNoAliasing", testRotationNoAliasing},
		{"RootKeyIDsInUse", testRootKeyIDsInUse},
		{"NewMethodsContextCanceled", testNewMethodsContextCanceled},
	}
	tests = append(tests, auditTests...)
	tests = append(tests, fieldSchemaTests...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open(t))
		})
	}
	// These tests set the store's clock.
	clocked := []struct {
		name string
		fn   func(t *testing.T, s store.Store, c *clock)
	}{
		{"Lease", testLease},
		{"LeaseConcurrent", testLeaseConcurrent},
		{"LeaseLongTTL", testLeaseLongTTL},
		{"Rotation", testRotation},
		{"RotationEndorsement", testRotationEndorsement},
		{"RotationChain", testRotationChain},
	}
	for _, tt := range clocked {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClock()
			tt.fn(t, open(t, store.WithClock(c.Now)), c)
		})
	}
}

// clock is a clock for store.WithClock that moves only when told to.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

// newClock returns a clock set to an instant with nanoseconds, in a zone
// other than UTC, so that the suite sees the store truncate and convert it.
func newClock() *clock {
	return &clock{now: time.Date(2031, 5, 6, 7, 8, 9, 123456789, loc)}
}

// Now returns the clock's time.
func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d.
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// stored returns what the store makes of the clock's time.
func (c *clock) stored() time.Time {
	return c.Now().UTC().Truncate(time.Microsecond)
}

// Fixtures.

// loc is a zone other than UTC, so that the suite sees times converted.
var loc = time.FixedZone("UTC+5:30", 5*3600+30*60)

// fullKey returns a key with every field set, and times and durations with
// nanoseconds, to catch any field or precision a store drops.
func fullKey(name string) store.Key {
	return store.Key{
		Name:                 name,
		Type:                 store.KeyTypeAES256GCM,
		State:                store.KeyStateEnabled,
		PrimaryVersion:       2,
		MinDecryptionVersion: 1,
		RotationPeriod:       90*24*time.Hour + 123456789,
		Labels:               map[string]string{"team": "payments", "env": "prod", "": "empty name", "ü": "ünïcode"},
		Versions: []store.Version{
			{Number: 1, TinkKeyID: 0xFFFFFFFF, CreateTime: time.Date(2024, 2, 29, 23, 59, 59, 999999999, loc)},
			{Number: 2, TinkKeyID: 0x7F000001, CreateTime: time.Date(2025, 1, 2, 3, 4, 5, 678901234, time.UTC)},
		},
		WrappedKeyset:       []byte{0x00, 0x01, 0xFE, 0xFF, 0x00, 'k', 'e', 'y'},
		RootKeyID:           "pkcs11:token=tresor;object=root-1",
		UsageLimit:          1<<40 + 3,
		RetireAfter:         30*24*time.Hour + 987654321,
		RetireAfterVersions: 0xFFFFFFFF,
	}
}

// minimalKey returns a key with only the required fields set.
func minimalKey(name string) store.Key {
	return store.Key{
		Name:           name,
		Type:           store.KeyTypeAES256SIV,
		State:          store.KeyStateDisabled,
		PrimaryVersion: 1,
		Versions:       []store.Version{{Number: 1}},
		WrappedKeyset:  []byte{0x01},
		RootKeyID:      "r",
	}
}

// stored returns k as the store keeps it: times in UTC truncated to the
// microsecond, versions ordered by number, empty labels and keyset nil.
// CreateTime, UpdateTime and Revision are the store's and are left out.
func stored(k store.Key) store.Key {
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
	for _, v := range k.Versions {
		v.CreateTime = v.CreateTime.UTC().Truncate(time.Microsecond)
		out.Versions = append(out.Versions, v)
	}
	slices.SortFunc(out.Versions, func(a, b store.Version) int { return cmp.Compare(a.Number, b.Number) })
	out.DeletionTime = k.DeletionTime.UTC().Truncate(time.Microsecond)
	out.DestroyTime = k.DestroyTime.UTC().Truncate(time.Microsecond)
	out.CreateTime, out.UpdateTime, out.Revision = time.Time{}, time.Time{}, 0
	return out
}

// diffKey describes how got differs from want, field by field; "" when they
// are equal. Times must be equal instants and in UTC.
func diffKey(got, want store.Key) string {
	var d []string
	field := func(name string, g, w any) {
		d = append(d, fmt.Sprintf("%s = %v, want %v", name, g, w))
	}
	if got.Name != want.Name {
		field("Name", fmt.Sprintf("%q", got.Name), fmt.Sprintf("%q", want.Name))
	}
	if got.Type != want.Type {
		field("Type", got.Type, want.Type)
	}
	if got.State != want.State {
		field("State", got.State, want.State)
	}
	if got.PrimaryVersion != want.PrimaryVersion {
		field("PrimaryVersion", got.PrimaryVersion, want.PrimaryVersion)
	}
	if got.MinDecryptionVersion != want.MinDecryptionVersion {
		field("MinDecryptionVersion", got.MinDecryptionVersion, want.MinDecryptionVersion)
	}
	if got.RotationPeriod != want.RotationPeriod {
		field("RotationPeriod", int64(got.RotationPeriod), int64(want.RotationPeriod))
	}
	if !maps.Equal(got.Labels, want.Labels) || (got.Labels == nil) != (want.Labels == nil) {
		field("Labels", fmt.Sprintf("%#v", got.Labels), fmt.Sprintf("%#v", want.Labels))
	}
	if !bytes.Equal(got.WrappedKeyset, want.WrappedKeyset) || (got.WrappedKeyset == nil) != (want.WrappedKeyset == nil) {
		field("WrappedKeyset", fmt.Sprintf("%#v", got.WrappedKeyset), fmt.Sprintf("%#v", want.WrappedKeyset))
	}
	if got.RootKeyID != want.RootKeyID {
		field("RootKeyID", fmt.Sprintf("%q", got.RootKeyID), fmt.Sprintf("%q", want.RootKeyID))
	}
	if !sameTime(got.DeletionTime, want.DeletionTime) {
		field("DeletionTime", got.DeletionTime, want.DeletionTime)
	}
	if !sameTime(got.DestroyTime, want.DestroyTime) {
		field("DestroyTime", got.DestroyTime, want.DestroyTime)
	}
	if got.UsageLimit != want.UsageLimit {
		field("UsageLimit", got.UsageLimit, want.UsageLimit)
	}
	if got.RetireAfter != want.RetireAfter {
		field("RetireAfter", int64(got.RetireAfter), int64(want.RetireAfter))
	}
	if got.RetireAfterVersions != want.RetireAfterVersions {
		field("RetireAfterVersions", got.RetireAfterVersions, want.RetireAfterVersions)
	}
	if !sameTime(got.CreateTime, want.CreateTime) {
		field("CreateTime", got.CreateTime, want.CreateTime)
	}
	if !sameTime(got.UpdateTime, want.UpdateTime) {
		field("UpdateTime", got.UpdateTime, want.UpdateTime)
	}
	if got.Revision != want.Revision {
		field("Revision", got.Revision, want.Revision)
	}
	if len(got.Versions) != len(want.Versions) {
		field("Versions", fmtVersions(got.Versions), fmtVersions(want.Versions))
	} else {
		for i := range got.Versions {
			g, w := got.Versions[i], want.Versions[i]
			if g.Number != w.Number || g.TinkKeyID != w.TinkKeyID || !sameTime(g.CreateTime, w.CreateTime) {
				field("Versions", fmtVersions(got.Versions), fmtVersions(want.Versions))
				break
			}
		}
	}
	return strings.Join(d, "; ")
}

func sameTime(got, want time.Time) bool {
	return got.Equal(want) && got.Location() == time.UTC
}

func fmtVersions(vs []store.Version) string {
	var s []string
	for _, v := range vs {
		s = append(s, fmt.Sprintf("{%d %#x %s}", v.Number, v.TinkKeyID, v.CreateTime.Format(time.RFC3339Nano)))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// checkStoreTime fails t unless got is a time the store could have set
// between before and after.
func checkStoreTime(t *testing.T, what string, got, before, after time.Time) {
	t.Helper()
	if got.Location() != time.UTC || got.Before(before.Truncate(time.Microsecond)) || got.After(after) ||
		!got.Equal(got.Truncate(time.Microsecond)) {
		t.Errorf("%s = %v, want a UTC time to the microsecond within [%v, %v]", what, got, before, after)
	}
}

func mustCreate(t *testing.T, s store.Store, k store.Key) store.Key {
	t.Helper()
	got, err := s.CreateKey(t.Context(), k)
	if err != nil {
		t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", k.Name, err)
	}
	return got
}

func mustGet(t *testing.T, s store.Store, name string) store.Key {
	t.Helper()
	got, err := s.GetKey(t.Context(), name)
	if err != nil {
		t.Fatalf("GetKey(ctx, %q) err = %v, want nil", name, err)
	}
	return got
}

// listAll pages through every key with the given page size.
func listAll(t *testing.T, s store.Store, size int) []store.Key {
	t.Helper()
	var all []store.Key
	token := ""
	for pages := 0; ; pages++ {
		if pages > 10000 {
			t.Fatalf("ListKeys(ctx, %d, ...) does not end", size)
		}
		keys, next, err := s.ListKeys(t.Context(), size, token)
		if err != nil {
			t.Fatalf("ListKeys(ctx, %d, %q) err = %v, want nil", size, token, err)
		}
		all = append(all, keys...)
		if next == "" {
			return all
		}
		token = next
	}
}

// Tests.

func testCreateGetRoundTrip(t *testing.T, s store.Store) {
	outOfOrder := fullKey("versions-out-of-order")
	outOfOrder.Versions = []store.Version{
		{Number: 3, TinkKeyID: 3, CreateTime: time.Date(2025, 3, 1, 0, 0, 0, 1, time.UTC)},
		{Number: 1, TinkKeyID: 1, CreateTime: time.Date(2025, 1, 1, 0, 0, 0, 999, time.UTC)},
		{Number: 2, TinkKeyID: 2, CreateTime: time.Date(2025, 2, 1, 0, 0, 0, 1000, time.UTC)},
	}
	outOfOrder.PrimaryVersion = 3
	ignored := fullKey("store-sets-times-and-revision")
	ignored.CreateTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	ignored.UpdateTime = time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	ignored.Revision = 42
	emptyLabels := minimalKey("empty-labels")
	emptyLabels.Labels = map[string]string{}
	zeroTime := minimalKey("zero-version-time")
	zeroTime.Versions[0].CreateTime = time.Time{}
	manyVersions := minimalKey("many-versions")
	manyVersions.Versions = nil
	for i := uint32(1); i <= 200; i++ {
		manyVersions.Versions = append(manyVersions.Versions, store.Version{
			Number: i, TinkKeyID: 1000 + i, CreateTime: time.Unix(int64(i), int64(i)),
		})
	}
	manyVersions.PrimaryVersion = 150
	bigKeyset := minimalKey("big-keyset")
	bigKeyset.WrappedKeyset = bytes.Repeat([]byte{0xA5, 0x00}, 32<<10)

	tests := []struct {
		name string
		key  store.Key
	}{
		{"full", fullKey("payments/card-pan")},
		{"minimal", minimalKey("minimal")},
		{"versions out of order", outOfOrder},
		{"caller's times and revision ignored", ignored},
		{"empty labels", emptyLabels},
		{"zero version time", zeroTime},
		{"many versions", manyVersions},
		{"big keyset", bigKeyset},
		{"unicode name", fullKey("clé/ключ/鍵 ✓")},
		{"odd characters in name", fullKey(`a'b"c;--%_?*#\`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			created, err := s.CreateKey(t.Context(), tt.key)
			after := time.Now()
			if err != nil {
				t.Fatalf("CreateKey(ctx, %q) err = %v, want nil", tt.key.Name, err)
			}
			checkStoreTime(t, "CreateKey(...).CreateTime", created.CreateTime, before, after)
			if !created.UpdateTime.Equal(created.CreateTime) {
				t.Errorf("CreateKey(...).UpdateTime = %v, want CreateTime %v", created.UpdateTime, created.CreateTime)
			}
			want := stored(tt.key)
			want.CreateTime, want.UpdateTime, want.Revision = created.CreateTime, created.CreateTime, 1
			if d := diffKey(created, want); d != "" {
				t.Errorf("CreateKey(ctx, %q) returned %s", tt.key.Name, d)
			}
			got := mustGet(t, s, tt.key.Name)
			if d := diffKey(got, created); d != "" {
				t.Errorf("GetKey(ctx, %q) after CreateKey: %s", tt.key.Name, d)
			}
		})
	}
}

func testCreateDuplicate(t *testing.T, s store.Store) {
	first := mustCreate(t, s, fullKey("dup"))
	second := minimalKey("dup")
	_, err := s.CreateKey(t.Context(), second)
	if !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("CreateKey(ctx, %q) again err = %v, want ErrAlreadyExists", "dup", err)
	}
	if d := diffKey(mustGet(t, s, "dup"), first); d != "" {
		t.Errorf("GetKey(ctx, %q) after duplicate CreateKey: %s", "dup", d)
	}
}

func testGetMissing(t *testing.T, s store.Store) {
	mustCreate(t, s, fullKey("present"))
	for _, name := range []string{"missing", "Present", "present ", "presen", ""} {
		_, err := s.GetKey(t.Context(), name)
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetKey(ctx, %q) err = %v, want ErrNotFound", name, err)
		}
	}
}

func testListEmpty(t *testing.T, s store.Store) {
	for _, size := range []int{-1, 0, 1, 10} {
		keys, next, err := s.ListKeys(t.Context(), size, "")
		if err != nil || len(keys) != 0 || next != "" {
			t.Errorf("ListKeys(ctx, %d, \"\") on an empty store = %d keys, %q, %v; want 0 keys, \"\", nil", size, len(keys), next, err)
		}
	}
}

// listNames are created in this order; ListKeys returns them sorted bytewise.
var listNames = []string{
	"m", "a", "B", "Z", "a0", "a/", "b", "ab", "aa", "a", "é", "z", "A", "0", "~", "a.b", "a-b", "a_b",
	"payments/card", "payments/iban", "payments", "payments0", "ü",
}

func testListPaging(t *testing.T, s store.Store) {
	var want []string
	for _, name := range listNames {
		if slices.Contains(want, name) {
			continue
		}
		k := fullKey(name)
		k.Labels = map[string]string{"name": name}
		mustCreate(t, s, k)
		want = append(want, name)
	}
	slices.Sort(want)
	n := len(want)

	for _, size := range []int{1, 2, 3, 5, n - 1, n, n + 1, 0, -1} {
		t.Run(fmt.Sprintf("size %d", size), func(t *testing.T) {
			per := size
			if size <= 0 {
				per = store.DefaultPageSize
			}
			var got []string
			token := ""
			for page := 0; ; page++ {
				keys, next, err := s.ListKeys(t.Context(), size, token)
				if err != nil {
					t.Fatalf("ListKeys(ctx, %d, %q) err = %v, want nil", size, token, err)
				}
				rest := n - len(got)
				if len(keys) != min(per, rest) {
					t.Fatalf("ListKeys(ctx, %d, ...) page %d has %d keys, want %d", size, page, len(keys), min(per, rest))
				}
				for _, k := range keys {
					got = append(got, k.Name)
					if d := diffKey(k, mustGet(t, s, k.Name)); d != "" {
						t.Errorf("ListKeys(ctx, %d, ...) key %q differs from GetKey: %s", size, k.Name, d)
					}
				}
				if (next == "") != (len(got) == n) {
					t.Fatalf("ListKeys(ctx, %d, ...) page %d: next token %q after %d of %d keys; want empty exactly on the last page", size, page, next, len(got), n)
				}
				if next == "" {
					break
				}
				token = next
			}
			if !slices.Equal(got, want) {
				t.Errorf("ListKeys(ctx, %d, ...) names = %q, want %q", size, got, want)
			}
		})
	}
}

// createMany creates n minimal keys named key-0000 ... concurrently.
func createMany(t *testing.T, s store.Store, n int) []string {
	t.Helper()
	names := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		names[i] = fmt.Sprintf("key-%04d", i)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			_, errs[i] = s.CreateKey(t.Context(), minimalKey(names[i]))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("CreateKey(ctx, ...) err = %v, want nil", err)
	}
	return names
}

func testListDefaultPageSize(t *testing.T, s store.Store) {
	names := createMany(t, s, store.DefaultPageSize+1)
	for _, size := range []int{0, -1, -1000} {
		keys, next, err := s.ListKeys(t.Context(), size, "")
		if err != nil || len(keys) != store.DefaultPageSize || next == "" {
			t.Fatalf("ListKeys(ctx, %d, \"\") = %d keys, %q, %v; want %d keys, a next token, nil", size, len(keys), next, err, store.DefaultPageSize)
		}
		keys, next, err = s.ListKeys(t.Context(), size, next)
		if err != nil || len(keys) != 1 || keys[0].Name != names[len(names)-1] || next != "" {
			t.Fatalf("ListKeys(ctx, %d, next) = %d keys, %q, %v; want key %q alone, \"\", nil", size, len(keys), next, err, names[len(names)-1])
		}
	}
}

func testListMaxPageSize(t *testing.T, s store.Store) {
	if testing.Short() {
		t.Skip("creates more than MaxPageSize keys")
	}
	createMany(t, s, store.MaxPageSize+1)
	for _, size := range []int{store.MaxPageSize + 1, 1 << 30} {
		keys, next, err := s.ListKeys(t.Context(), size, "")
		if err != nil || len(keys) != store.MaxPageSize || next == "" {
			t.Fatalf("ListKeys(ctx, %d, \"\") = %d keys, %q, %v; want %d keys, a next token, nil", size, len(keys), next, err, store.MaxPageSize)
		}
	}
	if got := listAll(t, s, store.MaxPageSize); len(got) != store.MaxPageSize+1 {
		t.Errorf("ListKeys(ctx, %d, ...) over all pages = %d keys, want %d", store.MaxPageSize, len(got), store.MaxPageSize+1)
	}
}

func testListInvalidPageToken(t *testing.T, s store.Store) {
	mustCreate(t, s, fullKey("a"))
	mustCreate(t, s, fullKey("b"))
	for _, token := range []string{"garbage", "!!!", "%zz", "a", "b", " ", "\x00", "key-a", "eyJ0b2tlbiI6MX0="} {
		keys, next, err := s.ListKeys(t.Context(), 1, token)
		if !errors.Is(err, store.ErrInvalidPageToken) {
			t.Errorf("ListKeys(ctx, 1, %q) = %d keys, %q, %v; want ErrInvalidPageToken", token, len(keys), next, err)
		}
	}
}

func testUpdate(t *testing.T, s store.Store) {
	created := mustCreate(t, s, fullKey("k"))

	k := created
	k.Type = store.KeyTypeAES256SIV
	k.State = store.KeyStateDisabled
	k.Versions = append(slices.Clone(k.Versions), store.Version{
		Number: 3, TinkKeyID: 33, CreateTime: time.Date(2026, 6, 7, 8, 9, 10, 111222333, loc),
	})
	k.PrimaryVersion = 3
	k.MinDecryptionVersion = 2
	k.RotationPeriod = time.Hour + 1
	k.Labels = map[string]string{"team": "cards"}
	k.WrappedKeyset = []byte("rewrapped")
	k.RootKeyID = "pkcs11:token=tresor;object=root-2"
	k.UsageLimit = 5
	k.RetireAfter = time.Minute + 1
	k.RetireAfterVersions = 3
	k.CreateTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC) // ignored
	k.UpdateTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC) // ignored

	before := time.Now()
	updated, err := s.UpdateKey(t.Context(), k)
	after := time.Now()
	if err != nil {
		t.Fatalf("UpdateKey(ctx, %q rev 1) err = %v, want nil", k.Name, err)
	}
	checkStoreTime(t, "UpdateKey(...).UpdateTime", updated.UpdateTime, before, after)
	if updated.UpdateTime.Before(created.UpdateTime) {
		t.Errorf("UpdateKey(...).UpdateTime = %v, before the CreateTime %v", updated.UpdateTime, created.CreateTime)
	}
	want := stored(k)
	want.CreateTime, want.UpdateTime, want.Revision = created.CreateTime, updated.UpdateTime, 2
	if d := diffKey(updated, want); d != "" {
		t.Errorf("UpdateKey(ctx, %q rev 1) returned %s", k.Name, d)
	}
	if d := diffKey(mustGet(t, s, "k"), updated); d != "" {
		t.Errorf("GetKey(ctx, %q) after UpdateKey: %s", "k", d)
	}

	// An update of the returned key, unchanged, is another revision.
	again, err := s.UpdateKey(t.Context(), updated)
	if err != nil || again.Revision != 3 {
		t.Fatalf("UpdateKey(ctx, %q rev 2) = rev %d, %v; want rev 3, nil", k.Name, again.Revision, err)
	}
	want.UpdateTime, want.Revision = again.UpdateTime, 3
	if d := diffKey(mustGet(t, s, "k"), want); d != "" {
		t.Errorf("GetKey(ctx, %q) after second UpdateKey: %s", "k", d)
	}
}

func testUpdateConflict(t *testing.T, s store.Store) {
	created := mustCreate(t, s, fullKey("k"))
	k := created
	k.State = store.KeyStateDisabled
	current, err := s.UpdateKey(t.Context(), k) // revision 2
	if err != nil {
		t.Fatalf("UpdateKey(ctx, %q rev 1) err = %v, want nil", k.Name, err)
	}
	for _, rev := range []int64{1, 0, -1, 3, 42} {
		stale := current
		stale.Revision = rev
		stale.Labels = map[string]string{"lost": "update"}
		if _, err := s.UpdateKey(t.Context(), stale); !errors.Is(err, store.ErrConflict) {
			t.Errorf("UpdateKey(ctx, %q rev %d) with stored rev 2 err = %v, want ErrConflict", k.Name, rev, err)
		}
	}
	if d := diffKey(mustGet(t, s, "k"), current); d != "" {
		t.Errorf("GetKey(ctx, %q) after conflicting updates: %s", "k", d)
	}
}

func testUpdateMissing(t *testing.T, s store.Store) {
	mustCreate(t, s, fullKey("present"))
	for _, rev := range []int64{0, 1, 2} {
		k := fullKey("missing")
		k.Revision = rev
		if _, err := s.UpdateKey(t.Context(), k); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("UpdateKey(ctx, %q rev %d) err = %v, want ErrNotFound", k.Name, rev, err)
		}
	}
	if _, err := s.GetKey(t.Context(), "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetKey(ctx, %q) after UpdateKey of a missing key err = %v, want ErrNotFound", "missing", err)
	}
}

func testUpdateReplacesVersions(t *testing.T, s store.Store) {
	k := fullKey("k")
	k.Versions = []store.Version{
		{Number: 1, TinkKeyID: 11, CreateTime: time.Unix(1, 0)},
		{Number: 2, TinkKeyID: 22, CreateTime: time.Unix(2, 0)},
		{Number: 3, TinkKeyID: 33, CreateTime: time.Unix(3, 0)},
	}
	k.PrimaryVersion = 3
	mustCreate(t, s, fullKey("other")) // must keep its versions
	cur := mustCreate(t, s, k)

	steps := []struct {
		name     string
		versions []store.Version
		primary  uint32
	}{
		{"drop and add", []store.Version{
			{Number: 4, TinkKeyID: 44, CreateTime: time.Unix(4, 0)},
			{Number: 2, TinkKeyID: 22, CreateTime: time.Unix(2, 0)},
		}, 4},
		{"change in place", []store.Version{
			{Number: 2, TinkKeyID: 2222, CreateTime: time.Unix(22, 0)},
			{Number: 4, TinkKeyID: 44, CreateTime: time.Unix(4, 0)},
		}, 2},
		{"down to one", []store.Version{{Number: 9, TinkKeyID: 99}}, 9},
	}
	for _, step := range steps {
		k := cur
		k.Versions, k.PrimaryVersion = step.versions, step.primary
		updated, err := s.UpdateKey(t.Context(), k)
		if err != nil {
			t.Fatalf("%s: UpdateKey(ctx, %q) err = %v, want nil", step.name, k.Name, err)
		}
		got := mustGet(t, s, "k")
		if d := diffKey(got, updated); d != "" {
			t.Errorf("%s: GetKey(ctx, %q) after UpdateKey: %s", step.name, "k", d)
		}
		if want := stored(k).Versions; fmtVersions(got.Versions) != fmtVersions(want) {
			t.Errorf("%s: GetKey(ctx, %q).Versions = %s, want %s", step.name, "k", fmtVersions(got.Versions), fmtVersions(want))
		}
		cur = updated
	}
	if got, want := mustGet(t, s, "other"), stored(fullKey("other")); fmtVersions(got.Versions) != fmtVersions(want.Versions) {
		t.Errorf("GetKey(ctx, %q).Versions = %s after updates of another key, want %s", "other", fmtVersions(got.Versions), fmtVersions(want.Versions))
	}
}

// invalidKeys are keys the store refuses with ErrInvalidKey, each made from
// a valid key named name.
func invalidKeys(name string) []struct {
	name string
	key  store.Key
} {
	mod := func(f func(k *store.Key)) store.Key {
		k := fullKey(name)
		f(&k)
		return k
	}
	return []struct {
		name string
		key  store.Key
	}{
		{"empty name", mod(func(k *store.Key) { k.Name = "" })},
		{"unspecified type", mod(func(k *store.Key) { k.Type = store.KeyTypeUnspecified })},
		{"unknown type", mod(func(k *store.Key) { k.Type = 99 })},
		{"unspecified state", mod(func(k *store.Key) { k.State = store.KeyStateUnspecified })},
		{"unknown state", mod(func(k *store.Key) { k.State = -1 })},
		{"nil versions", mod(func(k *store.Key) { k.Versions = nil })},
		{"no wrapped keyset", mod(func(k *store.Key) { k.WrappedKeyset = nil })},
		{"no root key id", mod(func(k *store.Key) { k.RootKeyID = "" })},
		{"empty versions", mod(func(k *store.Key) { k.Versions = []store.Version{} })},
		{"primary not among versions", mod(func(k *store.Key) { k.PrimaryVersion = 3 })},
		{"primary zero", mod(func(k *store.Key) { k.PrimaryVersion = 0 })},
		{"version number zero", mod(func(k *store.Key) { k.Versions[0].Number = 0 })},
		{"version number twice", mod(func(k *store.Key) { k.Versions[0].Number = 2 })},
		{"negative rotation period", mod(func(k *store.Key) { k.RotationPeriod = -time.Second })},
		{"name not UTF-8", mod(func(k *store.Key) { k.Name = name + "\xff" })},
		{"label not UTF-8", mod(func(k *store.Key) { k.Labels["bad"] = "\xc3\x28" })},
		{"state after the last", mod(func(k *store.Key) { k.State = store.KeyStateDestroyed + 1 })},
		{"negative usage limit", mod(func(k *store.Key) { k.UsageLimit = -1 })},
		{"negative retire after", mod(func(k *store.Key) { k.RetireAfter = -time.Nanosecond })},
		{"deletion time on an enabled key", mod(func(k *store.Key) { k.DeletionTime = deletionTime })},
		{"destroy time on an enabled key", mod(func(k *store.Key) { k.DestroyTime = deletionTime })},
		{"deletion scheduled without deletion time", mod(func(k *store.Key) { k.State = store.KeyStateDeletionScheduled })},
		{"deletion scheduled with deletion time of 1ns", mod(func(k *store.Key) {
			k.State, k.DeletionTime = store.KeyStateDeletionScheduled, time.Time{}.Add(time.Nanosecond)
		})},
		{"deletion scheduled with destroy time too", mod(func(k *store.Key) {
			k.State, k.DeletionTime, k.DestroyTime = store.KeyStateDeletionScheduled, deletionTime, deletionTime
		})},
		{"deletion scheduled without keyset", mod(func(k *store.Key) {
			k.State, k.DeletionTime, k.WrappedKeyset = store.KeyStateDeletionScheduled, deletionTime, nil
		})},
		{"deletion scheduled without root key id", mod(func(k *store.Key) {
			k.State, k.DeletionTime, k.RootKeyID = store.KeyStateDeletionScheduled, deletionTime, ""
		})},
		{"deletion time after year 9999", mod(func(k *store.Key) {
			k.State, k.DeletionTime = store.KeyStateDeletionScheduled, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
		})},
		{"deletion time before year 1", mod(func(k *store.Key) {
			k.State, k.DeletionTime = store.KeyStateDeletionScheduled, time.Time{}.Add(-time.Second)
		})},
		{"destroyed without destroy time", mod(func(k *store.Key) { k.State, k.WrappedKeyset = store.KeyStateDestroyed, nil })},
		{"destroyed with keyset", mod(func(k *store.Key) { k.State, k.DestroyTime = store.KeyStateDestroyed, deletionTime })},
		{"destroyed with deletion time", mod(func(k *store.Key) {
			k.State, k.DestroyTime, k.DeletionTime, k.WrappedKeyset = store.KeyStateDestroyed, deletionTime, deletionTime, nil
		})},
	}
}

// deletionTime is a time with nanoseconds in a zone other than UTC, for
// DeletionTime and DestroyTime.
var deletionTime = time.Date(2031, 12, 31, 23, 59, 59, 999999999, loc)

func testCreateInvalid(t *testing.T, s store.Store) {
	for _, tt := range invalidKeys("k") {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.CreateKey(t.Context(), tt.key)
			if !errors.Is(err, store.ErrInvalidKey) {
				t.Fatalf("CreateKey(ctx, %q) err = %v, want ErrInvalidKey", tt.key.Name, err)
			}
			if _, err := s.GetKey(t.Context(), tt.key.Name); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("GetKey(ctx, %q) after refused CreateKey err = %v, want ErrNotFound", tt.key.Name, err)
			}
		})
	}
	if keys := listAll(t, s, 0); len(keys) != 0 {
		t.Errorf("ListKeys after refused CreateKey calls = %d keys, want 0", len(keys))
	}
}

func testUpdateInvalid(t *testing.T, s store.Store) {
	created := mustCreate(t, s, fullKey("k"))
	for _, tt := range invalidKeys("k") {
		t.Run(tt.name, func(t *testing.T) {
			k := tt.key
			k.Revision = created.Revision
			_, err := s.UpdateKey(t.Context(), k)
			if !errors.Is(err, store.ErrInvalidKey) {
				t.Fatalf("UpdateKey(ctx, %q) err = %v, want ErrInvalidKey", k.Name, err)
			}
			if d := diffKey(mustGet(t, s, "k"), created); d != "" {
				t.Errorf("GetKey(ctx, %q) after refused UpdateKey: %s", "k", d)
			}
		})
	}
}

// scribble overwrites every slice and map a key holds.
func scribble(k *store.Key) {
	for i := range k.Versions {
		k.Versions[i] = store.Version{Number: 77, TinkKeyID: 77}
	}
	for name := range k.Labels {
		k.Labels[name] = "scribbled"
	}
	if k.Labels != nil {
		k.Labels["added"] = "scribbled"
	}
	for i := range k.WrappedKeyset {
		k.WrappedKeyset[i] ^= 0xFF
	}
}

func testNoAliasing(t *testing.T, s store.Store) {
	in := fullKey("k")
	created := mustCreate(t, s, in)
	want := created
	want.Versions = slices.Clone(created.Versions)
	want.Labels = maps.Clone(created.Labels)
	want.WrappedKeyset = slices.Clone(created.WrappedKeyset)
	check := func(what string) {
		t.Helper()
		if d := diffKey(mustGet(t, s, "k"), want); d != "" {
			t.Fatalf("GetKey(ctx, %q) after %s: %s", "k", what, d)
		}
	}

	scribble(&in)
	check("changing CreateKey's argument")
	if d := diffKey(created, want); d != "" {
		t.Fatalf("CreateKey's result after changing its argument: %s", d)
	}
	scribble(&created)
	check("changing CreateKey's result")
	got := mustGet(t, s, "k")
	scribble(&got)
	check("changing GetKey's result")
	keys, _, err := s.ListKeys(t.Context(), 10, "")
	if err != nil || len(keys) != 1 {
		t.Fatalf("ListKeys(ctx, 10, \"\") = %d keys, %v; want 1, nil", len(keys), err)
	}
	scribble(&keys[0])
	check("changing ListKeys's result")

	up := mustGet(t, s, "k")
	updated, err := s.UpdateKey(t.Context(), up)
	if err != nil {
		t.Fatalf("UpdateKey(ctx, %q) err = %v, want nil", "k", err)
	}
	want.Revision, want.UpdateTime = updated.Revision, updated.UpdateTime
	scribble(&up)
	check("changing UpdateKey's argument")
	scribble(&updated)
	check("changing UpdateKey's result")
}

// goroutines is how many goroutines the concurrency tests run at once.
const goroutines = 16

func testConcurrentUpdatesOneRevision(t *testing.T, s store.Store) {
	created := mustCreate(t, s, fullKey("k"))
	errs := make([]error, goroutines)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Go(func() {
			k := created
			k.Labels = map[string]string{"writer": strconv.Itoa(i)}
			<-start
			_, errs[i] = s.UpdateKey(t.Context(), k)
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("UpdateKey(ctx, %q rev 1) succeeded in goroutines %d and %d, want exactly one", "k", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("UpdateKey(ctx, %q rev 1) err = %v, want nil or ErrConflict", "k", err)
		}
	}
	if winner < 0 {
		t.Fatalf("UpdateKey(ctx, %q rev 1) from %d goroutines: none succeeded, want exactly one", "k", goroutines)
	}
	got := mustGet(t, s, "k")
	if got.Revision != 2 || got.Labels["writer"] != strconv.Itoa(winner) {
		t.Errorf("GetKey(ctx, %q) = rev %d, writer %q; want rev 2, writer %d", "k", got.Revision, got.Labels["writer"], winner)
	}
}

func testConcurrentReadModifyWrite(t *testing.T, s store.Store) {
	const attempts = 20
	k := fullKey("counter")
	k.Labels = map[string]string{"n": "0"}
	mustCreate(t, s, k)

	var (
		mu        sync.Mutex
		revisions = map[int64]int{} // revision written -> goroutine
		wins      int
	)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for range attempts {
				cur, err := s.GetKey(t.Context(), "counter")
				if err != nil {
					t.Errorf("GetKey(ctx, %q) err = %v, want nil", "counter", err)
					return
				}
				n, err := strconv.Atoi(cur.Labels["n"])
				if err != nil {
					t.Errorf("GetKey(ctx, %q) label n = %q, want a number", "counter", cur.Labels["n"])
					return
				}
				cur.Labels["n"] = strconv.Itoa(n + 1)
				updated, err := s.UpdateKey(t.Context(), cur)
				if errors.Is(err, store.ErrConflict) {
					continue
				}
				if err != nil {
					t.Errorf("UpdateKey(ctx, %q rev %d) err = %v, want nil or ErrConflict", "counter", cur.Revision, err)
					return
				}
				mu.Lock()
				if updated.Revision != cur.Revision+1 {
					t.Errorf("UpdateKey(ctx, %q rev %d) returned rev %d, want %d", "counter", cur.Revision, updated.Revision, cur.Revision+1)
				}
				if other, dup := revisions[updated.Revision]; dup {
					t.Errorf("revision %d written by goroutines %d and %d, want one writer per revision", updated.Revision, other, g)
				}
				revisions[updated.Revision] = g
				wins++
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	got := mustGet(t, s, "counter")
	if wins == 0 {
		t.Fatalf("no UpdateKey of %d attempts succeeded", goroutines*attempts)
	}
	if got.Revision != int64(wins)+1 || got.Labels["n"] != strconv.Itoa(wins) {
		t.Errorf("GetKey(ctx, %q) = rev %d, n %q after %d successful updates; want rev %d, n %d", "counter", got.Revision, got.Labels["n"], wins, wins+1, wins)
	}
}

func testConcurrentCreates(t *testing.T, s store.Store) {
	names := createMany(t, s, 4*goroutines)
	var got []string
	for _, k := range listAll(t, s, 7) {
		got = append(got, k.Name)
	}
	if !slices.Equal(got, names) {
		t.Errorf("ListKeys after concurrent CreateKey = %q, want %q", got, names)
	}
}

func testConcurrentCreatesOneName(t *testing.T, s store.Store) {
	errs := make([]error, goroutines)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Go(func() {
			k := fullKey("same")
			k.Labels = map[string]string{"writer": strconv.Itoa(i)}
			<-start
			_, errs[i] = s.CreateKey(t.Context(), k)
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("CreateKey(ctx, %q) succeeded in goroutines %d and %d, want exactly one", "same", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrAlreadyExists):
			t.Errorf("CreateKey(ctx, %q) err = %v, want nil or ErrAlreadyExists", "same", err)
		}
	}
	if winner < 0 {
		t.Fatalf("CreateKey(ctx, %q) from %d goroutines: none succeeded, want exactly one", "same", goroutines)
	}
	if got := mustGet(t, s, "same"); got.Revision != 1 || got.Labels["writer"] != strconv.Itoa(winner) {
		t.Errorf("GetKey(ctx, %q) = rev %d, writer %q; want rev 1, writer %d", "same", got.Revision, got.Labels["writer"], winner)
	}
}

// testConsistentReads checks that a read never sees half of a write: while
// one goroutine rewrites a key so that revision r has r versions, primary
// version r and label rev=r, readers must see all three agree.
func testConsistentReads(t *testing.T, s store.Store) {
	const writes = 50
	shaped := func(k store.Key, rev int64) store.Key {
		k.Versions = nil
		for i := range rev {
			k.Versions = append(k.Versions, store.Version{Number: uint32(i + 1), TinkKeyID: uint32(rev*1000 + i)})
		}
		k.PrimaryVersion = uint32(rev)
		k.Labels = map[string]string{"rev": strconv.FormatInt(rev, 10)}
		return k
	}
	consistent := func(k store.Key) bool {
		if int64(len(k.Versions)) != k.Revision || k.PrimaryVersion != uint32(k.Revision) ||
			k.Labels["rev"] != strconv.FormatInt(k.Revision, 10) {
			return false
		}
		for i, v := range k.Versions {
			if v.TinkKeyID != uint32(k.Revision*1000+int64(i)) {
				return false
			}
		}
		return true
	}
	cur := mustCreate(t, s, shaped(fullKey("k"), 1))

	done := make(chan struct{})
	var wg sync.WaitGroup
	for range goroutines / 2 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				k, err := s.GetKey(t.Context(), "k")
				if err != nil {
					t.Errorf("GetKey(ctx, %q) err = %v, want nil", "k", err)
					return
				}
				if !consistent(k) {
					t.Errorf("GetKey(ctx, %q) = rev %d, primary %d, %d versions, label rev %q: a torn read", "k", k.Revision, k.PrimaryVersion, len(k.Versions), k.Labels["rev"])
					return
				}
				keys, _, err := s.ListKeys(t.Context(), 10, "")
				if err != nil || len(keys) != 1 || !consistent(keys[0]) {
					t.Errorf("ListKeys(ctx, 10, \"\") = %d keys, %v during updates; want 1 consistent key", len(keys), err)
					return
				}
			}
		})
	}
	for range writes {
		next, err := s.UpdateKey(t.Context(), shaped(cur, cur.Revision+1))
		if err != nil {
			t.Errorf("UpdateKey(ctx, %q rev %d) err = %v, want nil", "k", cur.Revision, err)
			break
		}
		cur = next
	}
	close(done)
	wg.Wait()
}

func testContextCanceled(t *testing.T, s store.Store) {
	existing := mustCreate(t, s, fullKey("existing"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	if _, err := s.CreateKey(ctx, fullKey("new")); !errors.Is(err, context.Canceled) {
		t.Errorf("CreateKey(canceled ctx, %q) err = %v, want context.Canceled", "new", err)
	}
	if _, err := s.GetKey(t.Context(), "new"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetKey(ctx, %q) after CreateKey with a canceled context err = %v, want ErrNotFound", "new", err)
	}
	if _, err := s.GetKey(ctx, "existing"); !errors.Is(err, context.Canceled) {
		t.Errorf("GetKey(canceled ctx, %q) err = %v, want context.Canceled", "existing", err)
	}
	if _, _, err := s.ListKeys(ctx, 10, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("ListKeys(canceled ctx, 10, \"\") err = %v, want context.Canceled", err)
	}
	k := existing
	k.State = store.KeyStateDisabled
	if _, err := s.UpdateKey(ctx, k); !errors.Is(err, context.Canceled) {
		t.Errorf("UpdateKey(canceled ctx, %q) err = %v, want context.Canceled", "existing", err)
	}
	if d := diffKey(mustGet(t, s, "existing"), existing); d != "" {
		t.Errorf("GetKey(ctx, %q) after UpdateKey with a canceled context: %s", "existing", d)
	}
}

// Budgets.

// budgetWindow returns a window of counter with the given limit that starts
// at the beginning of the current hour and lasts two days, so that it does
// not end (and may not be deleted) while the suite runs. Window i of the
// counter is the i-th such window after it.
func budgetWindow(counter string, i int, limit int64) store.BudgetWindow {
	start := time.Now().UTC().Truncate(time.Hour).Add(time.Duration(i) * 48 * time.Hour)
	return store.BudgetWindow{Counter: counter, Start: start, End: start.Add(48 * time.Hour), Limit: limit}
}

// fmtWindows shows windows as they appear in failure messages.
func fmtWindows(ws []store.BudgetWindow) string {
	var s []string
	for _, w := range ws {
		s = append(s, fmt.Sprintf("{%q %s+%v %d}", w.Counter, w.Start.Format(time.RFC3339Nano), w.End.Sub(w.Start), w.Limit))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// consume calls ConsumeBudget and fails t unless it returns want and no error.
func consume(t *testing.T, s store.Store, n int64, want int, windows ...store.BudgetWindow) {
	t.Helper()
	got, err := s.ConsumeBudget(t.Context(), n, windows)
	if err != nil {
		t.Fatalf("ConsumeBudget(ctx, %d, %s) err = %v, want nil", n, fmtWindows(windows), err)
	}
	if got != want {
		t.Fatalf("ConsumeBudget(ctx, %d, %s) = %d, want %d", n, fmtWindows(windows), got, want)
	}
}

// wantCount fails t unless the count of w is want. It finds out by
// consuming, which the Store interface allows only as far as the limit given
// with each call: one more use is refused under a limit of want and counted
// under a limit of want+1. It leaves the count at want+1.
func wantCount(t *testing.T, s store.Store, w store.BudgetWindow, want int64) {
	t.Helper()
	if want > 0 {
		w.Limit = want
		if got, err := s.ConsumeBudget(t.Context(), 1, []store.BudgetWindow{w}); err != nil || got != 0 {
			t.Fatalf("count of %s is below %d: ConsumeBudget(ctx, 1, %s) = %d, %v; want 0, nil", fmtWindows([]store.BudgetWindow{w}), want, fmtWindows([]store.BudgetWindow{w}), got, err)
		}
	}
	w.Limit = want + 1
	if got, err := s.ConsumeBudget(t.Context(), 1, []store.BudgetWindow{w}); err != nil || got != -1 {
		t.Fatalf("count of %s is above %d: ConsumeBudget(ctx, 1, %s) = %d, %v; want -1, nil", fmtWindows([]store.BudgetWindow{w}), want, fmtWindows([]store.BudgetWindow{w}), got, err)
	}
}

func testBudgetWithinLimit(t *testing.T, s store.Store) {
	w := budgetWindow("decrypt/restricted/alice/1s", 0, 3)
	for range 3 {
		consume(t, s, 1, -1, w)
	}
	consume(t, s, 1, 0, w)
	consume(t, s, 1, 0, w)
	wantCount(t, s, w, 3)

	// The limit is the caller's on every call: a higher one lets more in.
	w.Limit = 10
	consume(t, s, 6, -1, w)
	consume(t, s, 1, 0, w)

	// The same instant given in another zone is the same window.
	inZone := budgetWindow("zones", 0, 2)
	inZone.Start, inZone.End = inZone.Start.In(loc), inZone.End.In(loc)
	consume(t, s, 1, -1, budgetWindow("zones", 0, 2))
	consume(t, s, 1, -1, inZone)
	consume(t, s, 1, 0, budgetWindow("zones", 0, 2))
}

func testBudgetExceededCountsNothing(t *testing.T, s store.Store) {
	a := budgetWindow("a", 0, 10)
	b := budgetWindow("b", 0, 2)
	c := budgetWindow("c", 0, 10)
	d := budgetWindow("d", 0, 2)
	consume(t, s, 1, -1, a, b, c, d)
	consume(t, s, 1, -1, a, b, c, d)
	// b and d are full; b, the first of them, is reported.
	consume(t, s, 1, 1, a, b, c, d)
	consume(t, s, 1, 1, a, b, c, d)
	consume(t, s, 1, 0, d, a, b)
	// A fresh window that n alone would overfill, after counted ones.
	e := budgetWindow("e", 0, 3)
	consume(t, s, 5, 2, a, c, e)
	for _, w := range []store.BudgetWindow{a, b, c, d} {
		wantCount(t, s, w, 2)
	}
	wantCount(t, s, e, 0)
}

func testBudgetCountersIndependent(t *testing.T, s store.Store) {
	counters := []string{"k", "K", "k/", "k ", "kk", "/k", "ü", "decrypt/restricted/spiffe://bank.example/payments/1s"}
	for _, c := range counters {
		consume(t, s, 1, -1, budgetWindow(c, 0, 1))
	}
	for _, c := range counters {
		consume(t, s, 1, 0, budgetWindow(c, 0, 1))
	}
	consume(t, s, 1, -1, budgetWindow("other", 0, 1))
	for _, c := range counters {
		wantCount(t, s, budgetWindow(c, 0, 1), 1)
	}
}

func testBudgetNewWindowStartsAtZero(t *testing.T, s store.Store) {
	first := budgetWindow("c", 0, 2)
	consume(t, s, 2, -1, first)
	consume(t, s, 1, 0, first)
	next := budgetWindow("c", 1, 2)
	consume(t, s, 2, -1, next)
	consume(t, s, 1, 0, next)
	// A window that starts a second later is another window, overlapping
	// or not; counts are kept per (Counter, Start).
	shifted := first
	shifted.Start = shifted.Start.Add(time.Second)
	consume(t, s, 2, -1, shifted)
	wantCount(t, s, first, 2)
}

func testBudgetManyUses(t *testing.T, s store.Store) {
	w := budgetWindow("c", 0, 10)
	steps := []struct {
		n    int64
		want int
	}{{4, -1}, {4, -1}, {4, 0}, {3, 0}, {2, -1}, {1, 0}}
	for _, st := range steps {
		consume(t, s, st.n, st.want, w)
	}
	big := budgetWindow("big", 0, 1<<62)
	consume(t, s, 1<<62, -1, big)
	consume(t, s, 1<<62, 0, big)
	consume(t, s, 1, 0, big)
	big.Limit = 1<<63 - 1
	consume(t, s, 1<<62, 0, big)
	consume(t, s, 1<<62-1, -1, big)
	consume(t, s, 1, 0, big)
}

func testBudgetInvalid(t *testing.T, s store.Store) {
	valid := budgetWindow("valid", 0, 5)
	mod := func(f func(w *store.BudgetWindow)) store.BudgetWindow {
		w := budgetWindow("w", 0, 5)
		f(&w)
		return w
	}
	tests := []struct {
		name    string
		n       int64
		windows []store.BudgetWindow
	}{
		{"n zero", 0, []store.BudgetWindow{valid}},
		{"n negative", -1, []store.BudgetWindow{valid}},
		{"nil windows", 1, nil},
		{"empty windows", 1, []store.BudgetWindow{}},
		{"limit zero", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.Limit = 0 })}},
		{"limit negative", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.Limit = -5 })}},
		{"empty counter", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.Counter = "" })}},
		{"counter of 513 bytes", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.Counter = strings.Repeat("x", 513) })}},
		{"counter of 513 bytes in 257 runes", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.Counter = strings.Repeat("é", 256) + "x" })}},
		{"counter not UTF-8", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.Counter = "c\xff" })}},
		{"counter with NUL", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.Counter = "c\x00d" })}},
		{"end equals start", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.End = w.Start })}},
		{"end before start", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.End = w.Start.Add(-time.Second) })}},
		{"zero times", 1, []store.BudgetWindow{valid, mod(func(w *store.BudgetWindow) { w.Start, w.End = time.Time{}, time.Time{} })}},
		{"invalid first", 1, []store.BudgetWindow{mod(func(w *store.BudgetWindow) { w.Limit = 0 }), valid}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.ConsumeBudget(t.Context(), tt.n, tt.windows)
			if !errors.Is(err, store.ErrInvalidBudget) {
				t.Fatalf("ConsumeBudget(ctx, %d, %s) = %d, %v; want ErrInvalidBudget", tt.n, fmtWindows(tt.windows), got, err)
			}
		})
	}
	// Nothing was counted, and the limits are inclusive of 512 bytes.
	wantCount(t, s, valid, 0)
	consume(t, s, 1, -1, budgetWindow(strings.Repeat("x", 512), 0, 1))
	consume(t, s, 1, -1, budgetWindow(strings.Repeat("é", 256), 0, 1))
}

func testBudgetContextCanceled(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	w := budgetWindow("c", 0, 5)
	if _, err := s.ConsumeBudget(ctx, 1, []store.BudgetWindow{w}); !errors.Is(err, context.Canceled) {
		t.Errorf("ConsumeBudget(canceled ctx, 1, %s) err = %v, want context.Canceled", fmtWindows([]store.BudgetWindow{w}), err)
	}
	wantCount(t, s, w, 0)
}

func testBudgetConcurrent(t *testing.T, s store.Store) {
	const (
		calls = 50
		limit = 300
	)
	tight := budgetWindow("tight", 0, limit)
	loose := budgetWindow("loose", 0, goroutines*calls)
	var ok, refused [goroutines]int
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			<-start
			for range calls {
				// Half the goroutines give the windows in the other order.
				windows := []store.BudgetWindow{loose, tight}
				want := 1
				if g%2 == 1 {
					windows[0], windows[1] = tight, loose
					want = 0
				}
				got, err := s.ConsumeBudget(t.Context(), 1, windows)
				switch {
				case err != nil:
					t.Errorf("ConsumeBudget(ctx, 1, %s) err = %v, want nil", fmtWindows(windows), err)
					return
				case got == -1:
					ok[g]++
				case got == want:
					refused[g]++
				default:
					t.Errorf("ConsumeBudget(ctx, 1, %s) = %d, want -1 or %d", fmtWindows(windows), got, want)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	okTotal, refusedTotal := 0, 0
	for g := range goroutines {
		okTotal += ok[g]
		refusedTotal += refused[g]
	}
	if okTotal != limit || refusedTotal != goroutines*calls-limit {
		t.Fatalf("%d goroutines × %d ConsumeBudget(ctx, 1, ...) against limit %d: %d counted, %d refused; want %d, %d",
			goroutines, calls, limit, okTotal, refusedTotal, limit, goroutines*calls-limit)
	}
	wantCount(t, s, tight, limit)
	wantCount(t, s, loose, limit)
}
