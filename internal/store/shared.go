package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// This file holds what both implementations share besides keys (key.go):
// labels as stored, the rules of budgets, use reservations, leases and
// root-key rotations, and the loading and checking of migrations.

// encodeLabels returns labels as the JSON object both schemas store.
func encodeLabels(labels map[string]string) (string, error) {
	if len(labels) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(labels)
	if err != nil {
		return "", fmt.Errorf("labels: %w", err)
	}
	return string(b), nil
}

// decodeLabels is the inverse of encodeLabels; no labels are nil.
func decodeLabels(s string) (map[string]string, error) {
	var labels map[string]string
	if err := json.Unmarshal([]byte(s), &labels); err != nil {
		return nil, fmt.Errorf("labels: %w", err)
	}
	if len(labels) == 0 {
		return nil, nil
	}
	return labels, nil
}

// Budget counters.

// maxBudgetCounter is the longest counter name ConsumeBudget accepts, in bytes.
const maxBudgetCounter = 512

// Sweeping: at most once per budgetSweepInterval of the store's clock, and
// again on the next call while a sweep found a full batch, a successful
// ConsumeBudget deletes up to budgetSweepBatch counts of ended windows. That
// bounds both the table and the time any one call spends on it.
const (
	budgetSweepInterval = time.Minute
	budgetSweepBatch    = 1000
)

// sweepSchedule is when (Unix microseconds, store clock) ConsumeBudget next
// deletes the counts of ended windows.
type sweepSchedule struct{ next atomic.Int64 }

// due reports whether a sweep is due at now.
func (s *sweepSchedule) due(now time.Time) bool { return now.UnixMicro() >= s.next.Load() }

// swept records a sweep at now that deleted n counts: unless it found a
// full batch, the next is due budgetSweepInterval later.
func (s *sweepSchedule) swept(now time.Time, n int64) {
	if n < budgetSweepBatch {
		s.next.Store(now.Add(budgetSweepInterval).UnixMicro())
	}
}

// validateBudget checks the arguments of ConsumeBudget against the rules of
// [ErrInvalidBudget], and also refuses counter names that are not valid UTF-8
// or hold a NUL (which not every backend stores) and windows whose End is not
// after Start once both are truncated to the microsecond. The errors it
// returns wrap ErrInvalidBudget. Every implementation calls it first.
func validateBudget(n int64, windows []BudgetWindow) error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidBudget, fmt.Sprintf(format, args...))
	}
	if n <= 0 {
		return invalid("n = %d, want at least 1", n)
	}
	if len(windows) == 0 {
		return invalid("no windows")
	}
	for i, w := range windows {
		switch {
		case w.Counter == "":
			return invalid("window %d: empty counter name", i)
		case len(w.Counter) > maxBudgetCounter:
			return invalid("window %d: counter name of %d bytes, want at most %d", i, len(w.Counter), maxBudgetCounter)
		case w.Limit <= 0:
			return invalid("window %d (%q): limit %d, want at least 1", i, w.Counter, w.Limit)
		case !storeTime(w.End).After(storeTime(w.Start)):
			return invalid("window %d (%q): end %v is not after start %v (to the microsecond)", i, w.Counter, w.End, w.Start)
		}
		if err := checkText(w.Counter); err != nil {
			return invalid("window %d: counter name: %v", i, err)
		}
	}
	return nil
}

// Use reservations.

// validateReserve checks the arguments of ReserveUses that need no read.
// The errors it returns wrap ErrInvalidKey.
func validateReserve(version uint32, n, limit int64) error {
	switch {
	case n <= 0:
		return fmt.Errorf("%w: n = %d, want at least 1", ErrInvalidKey, n)
	case limit <= 0:
		return fmt.Errorf("%w: limit = %d, want at least 1", ErrInvalidKey, limit)
	case version == 0:
		return fmt.Errorf("%w: version 0 (numbers count from 1)", ErrInvalidKey)
	}
	return nil
}

// Leases.

// maxLeaseName is the longest lease or holder name leases accept, in bytes.
const maxLeaseName = 512

// validateLease checks the arguments of AcquireLease (ttl > 0) or
// ReleaseLease (ttl 0, not checked). The errors it returns wrap
// ErrInvalidLease.
func validateLease(name, holder string, ttl time.Duration, acquire bool) error {
	for _, f := range []struct{ what, s string }{{"lease name", name}, {"holder", holder}} {
		switch {
		case f.s == "":
			return fmt.Errorf("%w: empty %s", ErrInvalidLease, f.what)
		case len(f.s) > maxLeaseName:
			return fmt.Errorf("%w: %s of %d bytes, want at most %d", ErrInvalidLease, f.what, len(f.s), maxLeaseName)
		}
		if err := checkText(f.s); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidLease, f.what, err)
		}
	}
	if acquire && ttl < time.Microsecond {
		return fmt.Errorf("%w: ttl %v, want at least 1µs", ErrInvalidLease, ttl)
	}
	return nil
}

// leaseExpiry returns when a lease taken at now for ttl ends, as stored:
// now+ttl, truncated to the microsecond and capped at the end of year 9999.
func leaseExpiry(now time.Time, ttl time.Duration) time.Time {
	now = storeTime(now)
	if ttl > maxTime.Sub(now) {
		return maxTime
	}
	return storeTime(now.Add(ttl))
}

// Root-key rotations.

// validateRotation checks a job given to StartRootKeyRotation against the
// rules of [ErrInvalidRotation]. The errors it returns wrap
// ErrInvalidRotation.
func validateRotation(r RootKeyRotation) error {
	for _, f := range []struct{ what, s string }{
		{"ID", r.ID}, {"FromURI", r.FromURI}, {"ToURI", r.ToURI}, {"FromID", r.FromID}, {"ToID", r.ToID},
	} {
		if f.s == "" {
			return fmt.Errorf("%w: empty %s", ErrInvalidRotation, f.what)
		}
		if err := checkText(f.s); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidRotation, f.what, err)
		}
	}
	if err := checkText(r.PrevID); err != nil {
		return fmt.Errorf("%w: PrevID: %v", ErrInvalidRotation, err)
	}
	if r.FromID == r.ToID {
		return fmt.Errorf("%w: FromID and ToID are both %q", ErrInvalidRotation, r.FromID)
	}
	if r.Total < 0 {
		return fmt.Errorf("%w: negative Total %d", ErrInvalidRotation, r.Total)
	}
	return nil
}

// startedRotation returns r as StartRootKeyRotation records it at now.
func startedRotation(r RootKeyRotation, now time.Time) RootKeyRotation {
	r.State, r.Rewrapped = RotationRunning, 0
	r.Endorsement = nullBytes(r.Endorsement)
	r.StartTime, r.UpdateTime, r.EndTime = now, now, time.Time{}
	return r
}

// nullBytes returns a copy of b, or nil (stored as NULL) when b is empty.
func nullBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return bytes.Clone(b)
}

// blobArg is b as a statement argument: NULL when b is empty, since
// drivers may bind a nil slice as an empty value.
func blobArg(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// finishedRotation returns job as FinishRootKeyRotation leaves it at now.
func finishedRotation(job RootKeyRotation, now time.Time) RootKeyRotation {
	job.State, job.UpdateTime, job.EndTime = RotationDone, now, now
	return job
}

// validateRewrap checks the keys given to RewrapKeys: named, each once,
// with a keyset, and all with one RootKeyID. That it is the job's ToID needs
// the job (checkRewrapRoot). The errors it returns wrap ErrInvalidKey.
func validateRewrap(keys []Key) error {
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		switch {
		case k.Name == "":
			return fmt.Errorf("%w: key %d: empty name", ErrInvalidKey, i)
		case checkText(k.Name) != nil:
			return fmt.Errorf("%w: key %d: name %q: %v", ErrInvalidKey, i, k.Name, checkText(k.Name))
		case seen[k.Name]:
			return fmt.Errorf("%w: key %q given twice", ErrInvalidKey, k.Name)
		case len(k.WrappedKeyset) == 0:
			return fmt.Errorf("%w: key %q: no wrapped keyset", ErrInvalidKey, k.Name)
		case k.RootKeyID == "":
			return fmt.Errorf("%w: key %q: no root key id", ErrInvalidKey, k.Name)
		case k.RootKeyID != keys[0].RootKeyID:
			return fmt.Errorf("%w: key %q: root key id %q, but key %q has %q: a batch goes to one root key", ErrInvalidKey, k.Name, k.RootKeyID, keys[0].Name, keys[0].RootKeyID)
		}
		seen[k.Name] = true
	}
	return nil
}

// checkRewrapRoot checks that every key is wrapped by the job's ToID. The
// error it returns wraps ErrInvalidKey.
func checkRewrapRoot(keys []Key, toID string) error {
	for _, k := range keys {
		if k.RootKeyID != toID {
			return fmt.Errorf("%w: key %q: root key id %q, but the job re-wraps to %q", ErrInvalidKey, k.Name, k.RootKeyID, toID)
		}
	}
	return nil
}

// maxRevisionsPerQuery is how many names KeyRevisions looks up per query.
const maxRevisionsPerQuery = 1000

// revisionNames returns the distinct names of KeyRevisions that a key could
// have, in chunks of at most maxRevisionsPerQuery; names no backend stores
// faithfully are left out, since no key has them.
func revisionNames(names []string) [][]string {
	seen := make(map[string]bool, len(names))
	var chunks [][]string
	for _, name := range names {
		if name == "" || seen[name] || checkText(name) != nil {
			continue
		}
		seen[name] = true
		if len(chunks) == 0 || len(chunks[len(chunks)-1]) == maxRevisionsPerQuery {
			chunks = append(chunks, make([]string, 0, min(maxRevisionsPerQuery, len(names))))
		}
		chunks[len(chunks)-1] = append(chunks[len(chunks)-1], name)
	}
	return chunks
}

// Migrations.

type migration struct {
	version int
	name    string // file name
	sql     string
}

// loadMigrations returns the migrations in directory dir of fsys, in order.
// Their file names are NNNN_what.sql, numbered from 0001 without gaps.
func loadMigrations(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	var ms []migration
	for i, e := range entries { // ReadDir sorts by name
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v != i+1 {
			return nil, fmt.Errorf("migration %s: want a name starting %04d_", e.Name(), i+1)
		}
		b, err := fs.ReadFile(fsys, dir+"/"+e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(b)})
	}
	return ms, nil
}

// appliedMigration is a row of schema_migrations.
type appliedMigration struct {
	version int
	name    string
}

// checkApplied returns the number of migrations applied to a database, given
// its schema_migrations rows ordered by version, after checking that they
// are the first ones of ms. It fails with ErrSchemaTooNew on a database that
// a newer binary migrated.
func checkApplied(rows []appliedMigration, ms []migration) (int, error) {
	applied := 0
	for _, r := range rows {
		switch {
		case r.version > len(ms):
			return 0, fmt.Errorf("%w: database has schema version %d, this binary knows up to %d", ErrSchemaTooNew, r.version, len(ms))
		case r.version != applied+1:
			return 0, fmt.Errorf("schema_migrations lists version %d after %d", r.version, applied)
		case r.name != ms[r.version-1].name:
			return 0, fmt.Errorf("schema version %d was applied as %q, this binary has %q", r.version, r.name, ms[r.version-1].name)
		}
		applied = r.version
	}
	return applied, nil
}
