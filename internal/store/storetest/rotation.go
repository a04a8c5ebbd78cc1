package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

// Root-key rotation.

// rotation returns a job that re-wraps from root key from to root key to.
func rotation(id, from, to string) store.RootKeyRotation {
	return store.RootKeyRotation{
		ID:      id,
		FromURI: "pkcs11:token=tresor;object=" + from + "?pin-source=/run/secrets/pin",
		ToURI:   "pkcs11:token=tresor;object=" + to + "?pin-source=/run/secrets/pin",
		FromID:  from,
		ToID:    to,
		Total:   5,
	}
}

// keyUnder returns a full key named name whose keyset is wrapped by root.
func keyUnder(name, root string) store.Key {
	k := fullKey(name)
	k.RootKeyID = root
	k.WrappedKeyset = []byte("wrapped by " + root + " for " + name)
	return k
}

// rewrapped returns k re-wrapped to root, as a rotation job would.
func rewrapped(k store.Key, root string) store.Key {
	k.RootKeyID = root
	k.WrappedKeyset = []byte("wrapped by " + root + " for " + k.Name)
	return k
}

// diffRotation describes how got differs from want; "" when they are equal.
func diffRotation(got, want store.RootKeyRotation) string {
	if got.ID != want.ID || got.PrevID != want.PrevID || got.FromURI != want.FromURI || got.ToURI != want.ToURI ||
		got.FromID != want.FromID || got.ToID != want.ToID || got.State != want.State ||
		got.Total != want.Total || got.Rewrapped != want.Rewrapped ||
		!bytes.Equal(got.Endorsement, want.Endorsement) ||
		!sameTime(got.StartTime, want.StartTime) || !sameTime(got.UpdateTime, want.UpdateTime) ||
		!sameTime(got.EndTime, want.EndTime) {
		return fmt.Sprintf("got %+v, want %+v", got, want)
	}
	return ""
}

func mustLatest(t *testing.T, s store.Store, want store.RootKeyRotation) {
	t.Helper()
	got, err := s.LatestRootKeyRotation(t.Context())
	if err != nil {
		t.Fatalf("LatestRootKeyRotation(ctx) err = %v, want nil", err)
	}
	if d := diffRotation(got, want); d != "" {
		t.Errorf("LatestRootKeyRotation(ctx): %s", d)
	}
}

func mustCount(t *testing.T, s store.Store, root string, want int64) {
	t.Helper()
	if got, err := s.CountKeysByRootKey(t.Context(), root); err != nil || got != want {
		t.Errorf("CountKeysByRootKey(ctx, %q) = %d, %v; want %d, nil", root, got, err, want)
	}
}

func mustRewrap(t *testing.T, s store.Store, job string, keys []store.Key, wantConflicts ...string) {
	t.Helper()
	conflicts, err := s.RewrapKeys(t.Context(), job, keys)
	if err != nil {
		t.Fatalf("RewrapKeys(ctx, %q, %d keys) err = %v, want nil", job, len(keys), err)
	}
	slices.Sort(conflicts)
	if !slices.Equal(conflicts, wantConflicts) {
		t.Errorf("RewrapKeys(ctx, %q, %d keys) conflicts = %q, want %q", job, len(keys), conflicts, wantConflicts)
	}
}

func testRotationNone(t *testing.T, s store.Store) {
	k := mustCreate(t, s, keyUnder("k", "old"))
	if _, err := s.LatestRootKeyRotation(t.Context()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LatestRootKeyRotation(ctx) on a new store err = %v, want ErrNotFound", err)
	}
	if jobs, err := s.ListRootKeyRotations(t.Context()); err != nil || len(jobs) != 0 {
		t.Errorf("ListRootKeyRotations(ctx) on a new store = %d jobs, %v; want none, nil", len(jobs), err)
	}
	if _, err := s.FinishRootKeyRotation(t.Context(), "j"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FinishRootKeyRotation(ctx, %q) with no job err = %v, want ErrNotFound", "j", err)
	}
	for _, keys := range [][]store.Key{nil, {rewrapped(k, "new")}} {
		if _, err := s.RewrapKeys(t.Context(), "j", keys); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("RewrapKeys(ctx, %q, %d keys) with no job err = %v, want ErrNotFound", "j", len(keys), err)
		}
	}
	if d := diffKey(mustGet(t, s, "k"), k); d != "" {
		t.Errorf("GetKey(ctx, %q) after RewrapKeys with no job: %s", "k", d)
	}
}

func testRotationInvalid(t *testing.T, s store.Store) {
	mod := func(f func(r *store.RootKeyRotation)) store.RootKeyRotation {
		r := rotation("j", "old", "new")
		f(&r)
		return r
	}
	tests := []struct {
		name string
		job  store.RootKeyRotation
	}{
		{"empty ID", mod(func(r *store.RootKeyRotation) { r.ID = "" })},
		{"empty FromURI", mod(func(r *store.RootKeyRotation) { r.FromURI = "" })},
		{"empty ToURI", mod(func(r *store.RootKeyRotation) { r.ToURI = "" })},
		{"empty FromID", mod(func(r *store.RootKeyRotation) { r.FromID = "" })},
		{"empty ToID", mod(func(r *store.RootKeyRotation) { r.ToID = "" })},
		{"FromID equals ToID", mod(func(r *store.RootKeyRotation) { r.ToID = r.FromID })},
		{"negative Total", mod(func(r *store.RootKeyRotation) { r.Total = -1 })},
		{"ID not UTF-8", mod(func(r *store.RootKeyRotation) { r.ID = "j\xff" })},
		{"ToID with NUL", mod(func(r *store.RootKeyRotation) { r.ToID = "new\x00" })},
		{"PrevID not UTF-8", mod(func(r *store.RootKeyRotation) { r.PrevID = "p\xff" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.StartRootKeyRotation(t.Context(), tt.job); !errors.Is(err, store.ErrInvalidRotation) {
				t.Errorf("StartRootKeyRotation(ctx, %+v) err = %v, want ErrInvalidRotation", tt.job, err)
			}
		})
	}
	if _, err := s.LatestRootKeyRotation(t.Context()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("LatestRootKeyRotation(ctx) after refused starts err = %v, want ErrNotFound", err)
	}
	// Nothing was recorded: the valid job starts, and URIs may repeat.
	r := rotation("j", "old", "new")
	r.ToURI = r.FromURI
	if _, err := s.StartRootKeyRotation(t.Context(), r); err != nil {
		t.Errorf("StartRootKeyRotation(ctx, %+v) err = %v, want nil", r, err)
	}
}

// testRotation runs a job from start to finish, with conflicts, refusals
// and a second job.
func testRotation(t *testing.T, s store.Store, c *clock) {
	keys := map[string]store.Key{}
	for _, name := range []string{"k1", "k2", "k3", "k4", "k5"} {
		keys[name] = mustCreate(t, s, keyUnder(name, "old"))
	}
	otherRoot := mustCreate(t, s, keyUnder("elsewhere", "other"))
	dead := keyUnder("dead", "old")
	dead.State, dead.DestroyTime, dead.WrappedKeyset = store.KeyStateDestroyed, deletionTime, nil
	dead = mustCreate(t, s, dead) // keeps RootKeyID "old", but has no keyset
	mustCount(t, s, "old", 5)
	mustCount(t, s, "other", 1)
	mustCount(t, s, "new", 0)

	// The store sets the state, count and times.
	start := rotation("j1", "old", "new")
	start.State, start.Rewrapped = store.RotationDone, 7
	start.StartTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	start.UpdateTime, start.EndTime = start.StartTime, start.StartTime
	job, err := s.StartRootKeyRotation(t.Context(), start)
	if err != nil {
		t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", "j1", err)
	}
	want := rotation("j1", "old", "new")
	want.State, want.StartTime, want.UpdateTime = store.RotationRunning, c.stored(), c.stored()
	if d := diffRotation(job, want); d != "" {
		t.Errorf("StartRootKeyRotation(ctx, %q): %s", "j1", d)
	}
	mustLatest(t, s, want)
	for _, id := range []string{"j2", "j1"} {
		if _, err := s.StartRootKeyRotation(t.Context(), rotation(id, "new", "newer")); !errors.Is(err, store.ErrConflict) {
			t.Errorf("StartRootKeyRotation(ctx, %q) while %q runs err = %v, want ErrConflict", id, "j1", err)
		}
	}
	if _, err := s.FinishRootKeyRotation(t.Context(), "j1"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("FinishRootKeyRotation(ctx, %q) with 5 keys left err = %v, want ErrConflict", "j1", err)
	}
	mustLatest(t, s, want)

	// A batch re-wraps: only the keyset, root key id, revision and update
	// time change.
	c.Advance(time.Second)
	mustRewrap(t, s, "j1", []store.Key{rewrapped(keys["k1"], "new"), rewrapped(keys["k2"], "new")})
	for _, name := range []string{"k1", "k2"} {
		w := rewrapped(keys[name], "new")
		w.Revision, w.UpdateTime = keys[name].Revision+1, c.stored()
		if d := diffKey(mustGet(t, s, name), w); d != "" {
			t.Errorf("GetKey(ctx, %q) after RewrapKeys: %s", name, d)
		}
		keys[name] = w
	}
	want.Rewrapped, want.UpdateTime = 2, c.stored()
	mustLatest(t, s, want)
	mustCount(t, s, "old", 3)
	mustCount(t, s, "new", 2)

	// A key changed since it was read, and one that does not exist, are
	// conflicts; the change is kept.
	k3 := keys["k3"]
	k3.Labels = map[string]string{"changed": "meanwhile"}
	changed, err := s.UpdateKey(t.Context(), k3)
	if err != nil {
		t.Fatalf("UpdateKey(ctx, %q) err = %v, want nil", "k3", err)
	}
	c.Advance(time.Second)
	ghost := rewrapped(keyUnder("ghost", "old"), "new")
	ghost.Revision = 1
	mustRewrap(t, s, "j1", []store.Key{rewrapped(keys["k3"], "new"), rewrapped(keys["k4"], "new"), ghost}, "ghost", "k3")
	if d := diffKey(mustGet(t, s, "k3"), changed); d != "" {
		t.Errorf("GetKey(ctx, %q) after a conflicting RewrapKeys: %s", "k3", d)
	}
	if _, err := s.GetKey(t.Context(), "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetKey(ctx, %q) after RewrapKeys of a missing key err = %v, want ErrNotFound", "ghost", err)
	}
	want.Rewrapped, want.UpdateTime = 3, c.stored()
	mustLatest(t, s, want)

	// A destroyed key gets no keyset back, even at its current revision.
	resurrect := dead
	resurrect.WrappedKeyset, resurrect.RootKeyID = []byte("resurrected"), "new"
	mustRewrap(t, s, "j1", []store.Key{resurrect}, "dead")
	if d := diffKey(mustGet(t, s, "dead"), dead); d != "" {
		t.Errorf("GetKey(ctx, %q) after RewrapKeys of a destroyed key: %s", "dead", d)
	}
	want.UpdateTime = c.stored()

	// Batches for another job, or to another root key, change nothing.
	if _, err := s.RewrapKeys(t.Context(), "j2", []store.Key{rewrapped(keys["k5"], "new")}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RewrapKeys(ctx, %q, ...) while %q runs err = %v, want ErrNotFound", "j2", "j1", err)
	}
	if _, err := s.RewrapKeys(t.Context(), "j1", []store.Key{rewrapped(keys["k5"], "other")}); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("RewrapKeys(ctx, %q, [k5 to %q]) for a job to %q err = %v, want ErrInvalidKey", "j1", "other", "new", err)
	}
	if _, err := s.RewrapKeys(t.Context(), "j1", []store.Key{rewrapped(changed, "old")}); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("RewrapKeys(ctx, %q, [k3 to %q]) for a job to %q err = %v, want ErrInvalidKey", "j1", "old", "new", err)
	}
	if d := diffKey(mustGet(t, s, "k5"), keys["k5"]); d != "" {
		t.Errorf("GetKey(ctx, %q) after refused RewrapKeys: %s", "k5", d)
	}
	if d := diffKey(mustGet(t, s, "elsewhere"), otherRoot); d != "" {
		t.Errorf("GetKey(ctx, %q) after RewrapKeys of other keys: %s", "elsewhere", d)
	}
	mustLatest(t, s, want)
	if _, err := s.FinishRootKeyRotation(t.Context(), "j1"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("FinishRootKeyRotation(ctx, %q) with k3 and k5 left err = %v, want ErrConflict", "j1", err)
	}

	// The job reads the conflicts again and finishes.
	left, err := s.ListKeysByRootKey(t.Context(), "old", "", 10)
	if err != nil {
		t.Fatalf("ListKeysByRootKey(ctx, %q, \"\", 10) err = %v, want nil", "old", err)
	}
	if got := keyNames(left); !slices.Equal(got, []string{"k3", "k5"}) {
		t.Fatalf("ListKeysByRootKey(ctx, %q, \"\", 10) = %q, want [k3 k5]", "old", got)
	}
	c.Advance(time.Second)
	mustRewrap(t, s, "j1", []store.Key{rewrapped(left[0], "new"), rewrapped(left[1], "new")})
	mustRewrap(t, s, "j1", nil)
	mustCount(t, s, "old", 0)
	mustCount(t, s, "new", 5)
	c.Advance(time.Second)
	if _, err := s.FinishRootKeyRotation(t.Context(), "j2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FinishRootKeyRotation(ctx, %q) while %q runs err = %v, want ErrNotFound", "j2", "j1", err)
	}
	done, err := s.FinishRootKeyRotation(t.Context(), "j1")
	if err != nil {
		t.Fatalf("FinishRootKeyRotation(ctx, %q) err = %v, want nil", "j1", err)
	}
	want.State, want.Rewrapped, want.UpdateTime, want.EndTime = store.RotationDone, 5, c.stored(), c.stored()
	if d := diffRotation(done, want); d != "" {
		t.Errorf("FinishRootKeyRotation(ctx, %q): %s", "j1", d)
	}
	mustLatest(t, s, want)
	if _, err := s.FinishRootKeyRotation(t.Context(), "j1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FinishRootKeyRotation(ctx, %q) again err = %v, want ErrNotFound", "j1", err)
	}
	if _, err := s.RewrapKeys(t.Context(), "j1", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RewrapKeys(ctx, %q, nil) after it finished err = %v, want ErrNotFound", "j1", err)
	}

	// IDs are not reused; the next job is the latest.
	again := rotation("j1", "new", "newer")
	again.PrevID = "j1"
	if _, err := s.StartRootKeyRotation(t.Context(), again); !errors.Is(err, store.ErrAlreadyExists) {
		t.Errorf("StartRootKeyRotation(ctx, %q) again err = %v, want ErrAlreadyExists", "j1", err)
	}
	mustLatest(t, s, want)
	c.Advance(time.Second)
	next := rotation("j2", "new", "newer")
	next.PrevID = "j1"
	next.Total = 0
	if _, err := s.StartRootKeyRotation(t.Context(), next); err != nil {
		t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", "j2", err)
	}
	next.State, next.StartTime, next.UpdateTime = store.RotationRunning, c.stored(), c.stored()
	mustLatest(t, s, next)
}

// mustList checks that ListRootKeyRotations returns want, in order.
func mustList(t *testing.T, s store.Store, want ...store.RootKeyRotation) {
	t.Helper()
	got, err := s.ListRootKeyRotations(t.Context())
	if err != nil {
		t.Fatalf("ListRootKeyRotations(ctx) err = %v, want nil", err)
	}
	if len(got) != len(want) {
		t.Fatalf("ListRootKeyRotations(ctx) = %d jobs, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if d := diffRotation(got[i], want[i]); d != "" {
			t.Errorf("ListRootKeyRotations(ctx)[%d]: %s", i, d)
		}
	}
}

// testRotationEndorsement round-trips each job's endorsement (bytes of
// every value, kept apart from the caller's slice; none stays none) and
// lists the jobs oldest first, running and done.
func testRotationEndorsement(t *testing.T, s store.Store, c *clock) {
	endorsement := make([]byte, 256)
	for i := range endorsement {
		endorsement[i] = byte(i)
	}
	var want []store.RootKeyRotation
	for i, e := range [][]byte{endorsement, nil, {}, {0}} {
		id := fmt.Sprintf("j%d", i+1)
		from, to := fmt.Sprintf("root-%d", i), fmt.Sprintf("root-%d", i+1)
		prev := ""
		if i > 0 {
			prev = fmt.Sprintf("j%d", i)
		}
		r := rotation(id, from, to)
		r.PrevID = prev
		r.Endorsement = bytes.Clone(e)
		job, err := s.StartRootKeyRotation(t.Context(), r)
		if err != nil {
			t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", id, err)
		}
		if len(r.Endorsement) > 0 {
			r.Endorsement[0] ^= 0xff // the store keeps its own copy
		}
		w := rotation(id, from, to)
		w.PrevID = prev
		if len(e) > 0 {
			w.Endorsement = bytes.Clone(e)
		}
		w.State, w.StartTime, w.UpdateTime = store.RotationRunning, c.stored(), c.stored()
		if d := diffRotation(job, w); d != "" {
			t.Errorf("StartRootKeyRotation(ctx, %q): %s", id, d)
		}
		mustLatest(t, s, w)
		mustList(t, s, append(want, w)...)
		c.Advance(time.Second)
		done, err := s.FinishRootKeyRotation(t.Context(), id)
		if err != nil {
			t.Fatalf("FinishRootKeyRotation(ctx, %q) err = %v, want nil", id, err)
		}
		w.State, w.UpdateTime, w.EndTime = store.RotationDone, c.stored(), c.stored()
		if d := diffRotation(done, w); d != "" {
			t.Errorf("FinishRootKeyRotation(ctx, %q): %s", id, d)
		}
		want = append(want, w)
		c.Advance(time.Second)
	}
	mustLatest(t, s, want[len(want)-1])
	mustList(t, s, want...)
	got, err := s.ListRootKeyRotations(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got[0].Endorsement[0] ^= 0xff
	mustList(t, s, want...) // the store's copy is not the caller's
}

// testRotationChain: each job names the job started before it (PrevID),
// which the store keeps and checks: a job whose PrevID is not the latest
// job's ID is refused with ErrConflict and nothing is recorded, so that
// the jobs form one chain in the order they were started.
func testRotationChain(t *testing.T, s store.Store, c *clock) {
	chained := func(id, prev, from, to string) store.RootKeyRotation {
		r := rotation(id, from, to)
		r.PrevID = prev
		return r
	}
	var want []store.RootKeyRotation
	start := func(r store.RootKeyRotation) {
		t.Helper()
		job, err := s.StartRootKeyRotation(t.Context(), r)
		if err != nil {
			t.Fatalf("StartRootKeyRotation(ctx, %q after %q) err = %v, want nil", r.ID, r.PrevID, err)
		}
		w := r
		w.State, w.StartTime, w.UpdateTime = store.RotationRunning, c.stored(), c.stored()
		if d := diffRotation(job, w); d != "" {
			t.Errorf("StartRootKeyRotation(ctx, %q): %s", r.ID, d)
		}
		c.Advance(time.Second)
		done, err := s.FinishRootKeyRotation(t.Context(), r.ID)
		if err != nil {
			t.Fatalf("FinishRootKeyRotation(ctx, %q) err = %v, want nil", r.ID, err)
		}
		w.State, w.UpdateTime, w.EndTime = store.RotationDone, c.stored(), c.stored()
		if d := diffRotation(done, w); d != "" {
			t.Errorf("FinishRootKeyRotation(ctx, %q): %s", r.ID, d)
		}
		want = append(want, w)
		mustLatest(t, s, w)
		mustList(t, s, want...)
		c.Advance(time.Second)
	}
	refused := func(r store.RootKeyRotation) {
		t.Helper()
		if _, err := s.StartRootKeyRotation(t.Context(), r); !errors.Is(err, store.ErrConflict) {
			t.Errorf("StartRootKeyRotation(ctx, %q after %q) with %d jobs err = %v, want ErrConflict", r.ID, r.PrevID, len(want), err)
		}
		mustList(t, s, want...)
	}
	// The first job has no previous one.
	refused(chained("j1", "j0", "a", "b"))
	start(chained("j1", "", "a", "b"))
	tests := []struct {
		name string
		job  store.RootKeyRotation
	}{
		{"no PrevID after the first job", chained("j2", "", "b", "c")},
		{"PrevID of no job", chained("j2", "j9", "b", "c")},
		{"PrevID differing in case", chained("j2", "J1", "b", "c")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { refused(tt.job) })
	}
	start(chained("j2", "j1", "b", "c"))
	// A job after one that is not the latest forks the chain.
	for _, prev := range []string{"j1", ""} {
		refused(chained("j3", prev, "c", "a"))
	}
	start(chained("j3", "j2", "c", "a"))
	// Running, the latest job is the one to follow; the running one
	// refuses every other start first.
	running := chained("j4", "j3", "a", "b")
	if _, err := s.StartRootKeyRotation(t.Context(), running); err != nil {
		t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", "j4", err)
	}
	running.State, running.StartTime, running.UpdateTime = store.RotationRunning, c.stored(), c.stored()
	want = append(want, running)
	refused(chained("j5", "j4", "b", "c"))
	mustLatest(t, s, running)
}

// testRootKeyIDsInUse: the root key ids of the keys that hold a keyset,
// each once, in bytewise order; a destroyed key's is not in use.
func testRootKeyIDsInUse(t *testing.T, s store.Store) {
	wantIDs := func(want ...string) {
		t.Helper()
		got, err := s.RootKeyIDsInUse(t.Context())
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("RootKeyIDsInUse(ctx) = %q, %v; want %q, nil", got, err, want)
		}
	}
	wantIDs()
	for i, root := range []string{"root-b", "root-a", "root-b", "Root-c", "root-b"} {
		mustCreate(t, s, keyUnder(fmt.Sprintf("k%d", i), root))
	}
	dead := keyUnder("dead", "root-gone")
	dead.State, dead.DestroyTime, dead.WrappedKeyset = store.KeyStateDestroyed, deletionTime, nil
	mustCreate(t, s, dead)
	wantIDs("Root-c", "root-a", "root-b")
	// Re-wrapping moves a key's root key id.
	if _, err := s.StartRootKeyRotation(t.Context(), rotation("j", "root-a", "root-d")); err != nil {
		t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", "j", err)
	}
	mustRewrap(t, s, "j", []store.Key{rewrapped(mustGet(t, s, "k1"), "root-d")})
	wantIDs("Root-c", "root-b", "root-d")
}

func keyNames(keys []store.Key) []string {
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
	}
	return names
}

func testListKeysByRootKey(t *testing.T, s store.Store) {
	var want []string
	for i := range 23 {
		name := fmt.Sprintf("k%02d", i)
		root := "old"
		switch i % 4 {
		case 1:
			root = "other"
		case 3:
			root = "old-" // a prefix of no other
		}
		mustCreate(t, s, keyUnder(name, root))
		if root == "old" {
			want = append(want, name)
		}
	}
	dead := keyUnder("k99", "old")
	dead.State, dead.DestroyTime, dead.WrappedKeyset = store.KeyStateDestroyed, deletionTime, nil
	mustCreate(t, s, dead)
	mustCount(t, s, "old", int64(len(want)))
	mustCount(t, s, "", 0)
	mustCount(t, s, "OLD", 0)

	for _, limit := range []int{1, 2, 5, len(want), len(want) + 1} {
		var got []string
		after := ""
		for range 100 {
			keys, err := s.ListKeysByRootKey(t.Context(), "old", after, limit)
			if err != nil {
				t.Fatalf("ListKeysByRootKey(ctx, %q, %q, %d) err = %v, want nil", "old", after, limit, err)
			}
			if len(keys) > limit {
				t.Fatalf("ListKeysByRootKey(ctx, %q, %q, %d) = %d keys, want at most %d", "old", after, limit, len(keys), limit)
			}
			if len(keys) == 0 {
				break
			}
			for _, k := range keys {
				if d := diffKey(k, mustGet(t, s, k.Name)); d != "" {
					t.Errorf("ListKeysByRootKey key %q differs from GetKey: %s", k.Name, d)
				}
			}
			got = append(got, keyNames(keys)...)
			after = keys[len(keys)-1].Name
		}
		if !slices.Equal(got, want) {
			t.Errorf("ListKeysByRootKey(ctx, %q, ..., %d) over all pages = %q, want %q", "old", limit, got, want)
		}
	}
	// Starting after a name that is no key's; limits as ListKeys's.
	keys, err := s.ListKeysByRootKey(t.Context(), "old", "k04a", 2)
	if err != nil || !slices.Equal(keyNames(keys), []string{"k06", "k08"}) {
		t.Errorf("ListKeysByRootKey(ctx, %q, %q, 2) = %q, %v; want [k06 k08], nil", "old", "k04a", keyNames(keys), err)
	}
	for _, limit := range []int{0, -1} {
		keys, err := s.ListKeysByRootKey(t.Context(), "old", "", limit)
		if err != nil || len(keys) != len(want) {
			t.Errorf("ListKeysByRootKey(ctx, %q, \"\", %d) = %d keys, %v; want %d (the default page size is larger), nil", "old", limit, len(keys), err, len(want))
		}
	}
	for _, after := range []string{"k\xff", "k\x00"} {
		if _, err := s.ListKeysByRootKey(t.Context(), "old", after, 10); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("ListKeysByRootKey(ctx, %q, %q, 10) err = %v, want ErrInvalidKey", "old", after, err)
		}
	}
	for _, root := range []string{"", "missing", "old\xff"} {
		keys, err := s.ListKeysByRootKey(t.Context(), root, "", 10)
		if err != nil || len(keys) != 0 {
			t.Errorf("ListKeysByRootKey(ctx, %q, \"\", 10) = %d keys, %v; want none, nil", root, len(keys), err)
		}
	}
}

func testRewrapKeysInvalid(t *testing.T, s store.Store) {
	a := mustCreate(t, s, keyUnder("a", "old"))
	b := mustCreate(t, s, keyUnder("b", "old"))
	if _, err := s.StartRootKeyRotation(t.Context(), rotation("j", "old", "new")); err != nil {
		t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", "j", err)
	}
	mod := func(k store.Key, f func(k *store.Key)) store.Key {
		k = rewrapped(k, "new")
		f(&k)
		return k
	}
	tests := []struct {
		name string
		keys []store.Key
	}{
		{"empty name", []store.Key{rewrapped(a, "new"), mod(b, func(k *store.Key) { k.Name = "" })}},
		{"given twice", []store.Key{rewrapped(a, "new"), rewrapped(b, "new"), rewrapped(a, "new")}},
		{"no keyset", []store.Key{rewrapped(a, "new"), mod(b, func(k *store.Key) { k.WrappedKeyset = nil })}},
		{"empty keyset", []store.Key{rewrapped(a, "new"), mod(b, func(k *store.Key) { k.WrappedKeyset = []byte{} })}},
		{"no root key id", []store.Key{rewrapped(a, "new"), mod(b, func(k *store.Key) { k.RootKeyID = "" })}},
		{"two root keys", []store.Key{rewrapped(a, "new"), rewrapped(b, "newer")}},
		{"not the job's root key", []store.Key{rewrapped(a, "newer"), rewrapped(b, "newer")}},
		{"name not UTF-8", []store.Key{rewrapped(a, "new"), mod(b, func(k *store.Key) { k.Name = "b\xff" })}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.RewrapKeys(t.Context(), "j", tt.keys); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("RewrapKeys(ctx, %q, %s) err = %v, want ErrInvalidKey", "j", tt.name, err)
			}
		})
	}
	for _, k := range []store.Key{a, b} {
		if d := diffKey(mustGet(t, s, k.Name), k); d != "" {
			t.Errorf("GetKey(ctx, %q) after refused RewrapKeys: %s", k.Name, d)
		}
	}
	job, err := s.LatestRootKeyRotation(t.Context())
	if err != nil || job.Rewrapped != 0 {
		t.Errorf("LatestRootKeyRotation(ctx) after refused RewrapKeys = Rewrapped %d, %v; want 0, nil", job.Rewrapped, err)
	}
}

// testRewrapKeysConcurrentUpdates re-wraps keys in batches while other
// goroutines update the same keys: no update is lost, no key is re-wrapped
// twice, and every key ends re-wrapped and updated.
func testRewrapKeysConcurrentUpdates(t *testing.T, s store.Store) {
	const (
		n       = 60
		batch   = 7
		writers = 4
	)
	var names []string
	for i := range n {
		name := fmt.Sprintf("k%03d", i)
		mustCreate(t, s, keyUnder(name, "old"))
		names = append(names, name)
	}
	if _, err := s.StartRootKeyRotation(t.Context(), rotation("j", "old", "new")); err != nil {
		t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", "j", err)
	}

	var wg sync.WaitGroup
	// Writers label every key, each with its own label, reading again on
	// a conflict.
	for w := range writers {
		wg.Go(func() {
			label := "writer-" + strconv.Itoa(w)
			for i := range names {
				name := names[(i*7+w*13)%n]
				for attempt := 0; ; attempt++ {
					if attempt > 1000 {
						t.Errorf("UpdateKey(ctx, %q) conflicts 1000 times in a row", name)
						return
					}
					k, err := s.GetKey(t.Context(), name)
					if err != nil {
						t.Errorf("GetKey(ctx, %q) err = %v, want nil", name, err)
						return
					}
					k.Labels[label] = "done"
					_, err = s.UpdateKey(t.Context(), k)
					if errors.Is(err, store.ErrConflict) {
						continue
					}
					if err != nil {
						t.Errorf("UpdateKey(ctx, %q) err = %v, want nil or ErrConflict", name, err)
						return
					}
					break
				}
			}
		})
	}
	// The job re-wraps in batches until no key is left under "old".
	var stored int64
	wg.Go(func() {
		for pass := 0; ; pass++ {
			if pass > 10000 {
				t.Errorf("the rotation job does not end")
				return
			}
			keys, err := s.ListKeysByRootKey(t.Context(), "old", "", batch)
			if err != nil {
				t.Errorf("ListKeysByRootKey(ctx, %q, \"\", %d) err = %v, want nil", "old", batch, err)
				return
			}
			if len(keys) == 0 {
				return
			}
			for i := range keys {
				keys[i] = rewrapped(keys[i], "new")
			}
			conflicts, err := s.RewrapKeys(t.Context(), "j", keys)
			if err != nil {
				t.Errorf("RewrapKeys(ctx, %q, %d keys) err = %v, want nil", "j", len(keys), err)
				return
			}
			stored += int64(len(keys) - len(conflicts))
		}
	})
	wg.Wait()

	for _, name := range names {
		k := mustGet(t, s, name)
		if want := rewrapped(k, "new"); k.RootKeyID != "new" || !bytes.Equal(k.WrappedKeyset, want.WrappedKeyset) {
			t.Errorf("GetKey(ctx, %q) = root key %q, keyset %q; want re-wrapped to %q", name, k.RootKeyID, k.WrappedKeyset, "new")
		}
		for w := range writers {
			if k.Labels["writer-"+strconv.Itoa(w)] != "done" {
				t.Errorf("GetKey(ctx, %q).Labels = %v: writer %d's update was lost", name, k.Labels, w)
			}
		}
	}
	if stored != n {
		t.Errorf("RewrapKeys stored %d keys in all, want %d (each once)", stored, n)
	}
	job, err := s.LatestRootKeyRotation(t.Context())
	if err != nil || job.Rewrapped != n {
		t.Errorf("LatestRootKeyRotation(ctx) = Rewrapped %d, %v; want %d, nil", job.Rewrapped, err, n)
	}
	if _, err := s.FinishRootKeyRotation(t.Context(), "j"); err != nil {
		t.Errorf("FinishRootKeyRotation(ctx, %q) err = %v, want nil", "j", err)
	}
}

func testRotationNoAliasing(t *testing.T, s store.Store) {
	a := mustCreate(t, s, keyUnder("a", "old"))
	b := mustCreate(t, s, keyUnder("b", "old"))
	listed, err := s.ListKeysByRootKey(t.Context(), "old", "", 10)
	if err != nil || len(listed) != 2 {
		t.Fatalf("ListKeysByRootKey(ctx, %q, \"\", 10) = %d keys, %v; want 2, nil", "old", len(listed), err)
	}
	for i := range listed {
		scribble(&listed[i])
	}
	for _, k := range []store.Key{a, b} {
		if d := diffKey(mustGet(t, s, k.Name), k); d != "" {
			t.Fatalf("GetKey(ctx, %q) after changing ListKeysByRootKey's result: %s", k.Name, d)
		}
	}
	if _, err := s.StartRootKeyRotation(t.Context(), rotation("j", "old", "new")); err != nil {
		t.Fatalf("StartRootKeyRotation(ctx, %q) err = %v, want nil", "j", err)
	}
	batch := []store.Key{rewrapped(a, "new")}
	want := rewrapped(a, "new")
	want.WrappedKeyset = slices.Clone(want.WrappedKeyset)
	want.Labels = maps.Clone(want.Labels)
	mustRewrap(t, s, "j", batch)
	scribble(&batch[0])
	got := mustGet(t, s, "a")
	if !bytes.Equal(got.WrappedKeyset, want.WrappedKeyset) || !maps.Equal(got.Labels, want.Labels) {
		t.Errorf("GetKey(ctx, %q) after changing RewrapKeys's argument = keyset %q, labels %v; want %q, %v", "a", got.WrappedKeyset, got.Labels, want.WrappedKeyset, want.Labels)
	}
}
