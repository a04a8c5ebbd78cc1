package rotation

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/pkcs11"
)

// Errors of root-key rotation. Match them with errors.Is. Outages are
// reported with the provider's or the store's own error: kms.ErrUnavailable
// or store.ErrUnavailable.
var (
	// ErrInvalidRootKey means the new root key cannot be rotated to: its
	// URI is malformed or names the active root key, or the key cannot be
	// opened or used (no such key, PIN rejected, not allowed to encrypt).
	// Nothing changed.
	ErrInvalidRootKey = errors.New("rotation: invalid new root key")
	// ErrRotationRunning means a root-key rotation is running already.
	ErrRotationRunning = errors.New("rotation: a root-key rotation is running")
	// ErrNoRotation means the root key has never been rotated.
	ErrNoRotation = errors.New("rotation: the root key has never been rotated")
)

// RootKeyLease is the name of the store lease the replica that re-wraps
// keysets holds.
const RootKeyLease = "root-key-rotation"

// Defaults of RootKeyOptions.
const (
	DefaultRewrapBatch = 500
	// MaxAutoWorkers is how many root-key calls run at once, when Workers
	// is automatic, for root keys whose calls are slow (a network HSM, KMS).
	MaxAutoWorkers = 16
	// autoParallelAbove is the time to re-wrap one keyset above which
	// automatic Workers goes parallel: below it, the root keys are local
	// (a PKCS#11 token on the host, a key file) and bound by CPU, where
	// concurrent calls only contend (SoftHSM2: 4 sessions at once re-wrap
	// slower than one).
	autoParallelAbove = 250 * time.Microsecond
	// autoProbe is how many keysets of a batch automatic Workers re-wraps
	// one at a time, to time them.
	autoProbe           = 4
	DefaultPollInterval = 2 * time.Second
	DefaultLeaseTTL     = 30 * time.Second
	DefaultMinBackoff   = 100 * time.Millisecond
	DefaultMaxBackoff   = 30 * time.Second
	// inFlightAllowance is added to the grace period: how long a keyset
	// wrapped by the old root key just before the switch may take to be
	// written to the store.
	inFlightAllowance = 2 * time.Second
	// stragglerCheckPolls is how many poll intervals apart the lease holder
	// looks again for keysets left under a done job's old root key.
	stragglerCheckPolls = 10
)

// RootKeyStore is the part of the key store root-key rotation uses;
// store.Store satisfies it.
type RootKeyStore interface {
	StartRootKeyRotation(ctx context.Context, r store.RootKeyRotation) (store.RootKeyRotation, error)
	LatestRootKeyRotation(ctx context.Context) (store.RootKeyRotation, error)
	ListRootKeyRotations(ctx context.Context) ([]store.RootKeyRotation, error)
	ListKeysByRootKey(ctx context.Context, rootKeyID, afterName string, limit int) ([]store.Key, error)
	CountKeysByRootKey(ctx context.Context, rootKeyID string) (int64, error)
	RewrapKeys(ctx context.Context, jobID string, keys []store.Key) (conflicts []string, err error)
	FinishRootKeyRotation(ctx context.Context, jobID string) (store.RootKeyRotation, error)
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, name, holder string) error
}

// Opener opens the root key a URI names; kms/provider.Open is the real one.
type Opener interface {
	OpenRootKey(ctx context.Context, uri string) (kms.RootKey, error)
}

// OpenerFunc adapts a function to an Opener.
type OpenerFunc func(ctx context.Context, uri string) (kms.RootKey, error)

// OpenRootKey calls f.
func (f OpenerFunc) OpenRootKey(ctx context.Context, uri string) (kms.RootKey, error) {
	return f(ctx, uri)
}

// RootKeyOptions configure a RootKeyRotator.
type RootKeyOptions struct {
	// ActiveURI is the URI of the root key active in the set when the
	// rotator is made. Required: a new job records it as its FromURI.
	ActiveURI string
	// BatchSize is how many keysets one store transaction re-wraps (1 to
	// store.MaxPageSize); 0 means DefaultRewrapBatch.
	BatchSize int
	// Workers is how many root-key calls of a batch run at once. 0 means
	// automatic, per batch: one at a time when a keyset re-wraps in under
	// 250µs (local root keys, bound by CPU), else MaxAutoWorkers (root keys
	// across a network, bound by latency).
	Workers int
	// PollInterval is how often the store is asked for a job another
	// replica started, or one left running by a crash; 0 means
	// DefaultPollInterval.
	PollInterval time.Duration
	// LeaseTTL is how long the job's lease lasts unrenewed; another replica
	// resumes the job when it lapses. 0 means DefaultLeaseTTL.
	LeaseTTL time.Duration
	// Grace is how long after a replica first sees a job it waits before
	// the sweep that may finish it, so that every replica has switched to
	// the new root key and no keyset wrapped by the old one is still on its
	// way to the store. 0 means 2*PollInterval + MaxBackoff + 2s: a replica
	// that failed to follow the job at once retries within MaxBackoff.
	Grace time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff after a
	// failure (a root key or the store unavailable); 0 means the defaults.
	MinBackoff, MaxBackoff time.Duration
	// PKCS11Modules are the PKCS#11 modules (absolute paths) a new root key
	// may be in, besides the modules of the root keys the rotator trusts
	// (the active one, and the old one of the job it followed last): Start
	// refuses any other, so that the API cannot make the server load a
	// library of the caller's choosing.
	PKCS11Modules []string
	// Verified are jobs the caller verified before making the rotator,
	// oldest first: cmd/tresor passes the rotations it walked at start-up
	// from the configured root key, each endorsed by a root key trusted
	// before it and naming the job before it (PrevID). None of them is
	// followed again once a later job is (a job made the latest again would
	// roll the keyring back).
	Verified []store.RootKeyRotation
	// Latest is the store's latest job as the caller read it when it
	// opened the root keys (zero when the store had none); the zero value
	// means the last of Verified. The rotator follows it as long as its
	// ids, URIs and PrevID stay as they are, and a new job only when the
	// job's PrevID is its ID: the jobs form one chain. Its old root key is
	// trusted (to verify a follow-up job, see repair) only when it is the
	// last of Verified.
	Latest store.RootKeyRotation
	// Holder names this replica in the lease; empty means host, pid and a
	// random suffix.
	Holder string
	// Logger receives progress and failures; nil means slog.Default().
	Logger *slog.Logger
}

// RootKeyRotator rotates the root key: [RootKeyRotator.Start] opens the new
// key, records a job endorsed by the old key ([Endorse]) and makes the new
// key active in the keyring's [envelope.RootKeys]; [RootKeyRotator.Run], on
// every replica, follows the store's latest job (opens its keys, switches
// the active key) and, on the one replica that holds the job's lease,
// re-wraps every keyset in batches until none is left under the old key,
// then finishes the job.
//
// The store does not choose the root key. A replica follows a new job only
// when it chains from the job the replica followed last (its PrevID is that
// job's ID), starts from the active root key (or, a follow-up job, repeats
// the last job's keys), its endorsement verifies under its old root key,
// which must be one the replica trusts, and Start would accept its new key
// (no local-file key after another kind, no PKCS#11 module but known ones).
// The replica trusts the active root key and, once it verified the job
// that made that key active, that job's old root key; no earlier one. It
// opens an old root key it does not hold only to verify an endorsement, and
// closes it again unless the job needs it (a running job's old key). It
// refuses any other job, and any job it followed before other than the
// last: it logs an error, keeps its root keys as they are, and looks again
// at the next poll. A replica that missed whole jobs (cut off from the
// store while they ran) verifies them one by one, in the chain's order,
// before it follows the latest. A job recorded without an endorsement (before the
// store kept them) is followed only as the store's latest job at start-up
// (Latest).
//
// A crash at any point loses nothing: each batch is one store transaction
// (a compare-and-swap on every key's revision, progress recorded in the
// same transaction), keysets not yet re-wrapped stay readable with the old
// key, and a restarted replica opens both keys of a running job again and
// carries on. Its methods are safe for concurrent use.
type RootKeyRotator struct {
	st     RootKeyStore
	roots  *envelope.RootKeys
	open   Opener
	opts   RootKeyOptions
	logger *slog.Logger
	kick   chan struct{}

	startMu sync.Mutex // serializes Start and Run's following of the latest job

	mu       sync.Mutex
	opened   map[string]kms.RootKey // keys this rotator opened; Close closes them
	seen     map[string]time.Time   // job id -> when this process first saw it running
	repaired bool                   // the check for keys left behind by a done job ran
	closed   bool
	// chainState is the job followed last and the keys trusted (uris:
	// the active key and, when the job is trusted in full, its old key).
	// followed holds the id of every job followed or verified before
	// (Verified); refused maps a refused job's id to the refusal last
	// logged.
	chainState
	followed map[string]bool
	refused  map[string]string
	// forged maps a record whose endorsement did not verify (verdictKey)
	// to the refusal, so that its old root key is not opened again at
	// every poll to verify it again.
	forged map[[32]byte]error
	active atomic.Pointer[string] // id of the active key last logged
	// checkedAt is when keysets left behind by a done job were last looked
	// for; unopenable is the done job whose old root key could not be
	// opened for them, or is not trusted, so that it is logged once.
	checkedAt  time.Time
	unopenable string
}

// NewRootKeyRotator returns a rotator for the root keys of a keyring,
// whose active key's URI is opts.ActiveURI.
func NewRootKeyRotator(st RootKeyStore, roots *envelope.RootKeys, open Opener, opts RootKeyOptions) (*RootKeyRotator, error) {
	if st == nil || roots == nil || open == nil {
		return nil, errors.New("rotation: NewRootKeyRotator needs a store, the root keys and an opener")
	}
	if opts.ActiveURI == "" {
		return nil, errors.New("rotation: NewRootKeyRotator needs the active root key's URI")
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultRewrapBatch
	}
	opts.BatchSize = min(opts.BatchSize, store.MaxPageSize)
	opts.Workers = max(opts.Workers, 0)
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultLeaseTTL
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.Grace <= 0 {
		// A replica that cannot follow a new job at once retries with
		// backoff; until it follows, it still wraps under the old key. The
		// job waits that long before its final pass.
		opts.Grace = 2*opts.PollInterval + opts.MaxBackoff + inFlightAllowance
	}
	if opts.Holder == "" {
		host, _ := os.Hostname()
		opts.Holder = fmt.Sprintf("%s/%d/%s", host, os.Getpid(), randomHex(4))
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	activeID := roots.Active().ID()
	r := &RootKeyRotator{
		st: st, roots: roots, open: open, opts: opts, logger: opts.Logger,
		kick:     make(chan struct{}, 1),
		opened:   map[string]kms.RootKey{},
		seen:     map[string]time.Time{},
		followed: map[string]bool{},
		refused:  map[string]string{},
		forged:   map[[32]byte]error{},
	}
	for _, job := range opts.Verified {
		r.followed[job.ID] = true
	}
	latest, level := opts.Latest, trustTo
	if n := len(opts.Verified); n > 0 {
		last := opts.Verified[n-1]
		if latest.ID == "" {
			latest = last
		}
		if last.ID == latest.ID && endorsementDigest(last) == endorsementDigest(latest) {
			level = trustFull
		}
	}
	switch {
	case latest.ID == "":
		r.uris = map[string]string{activeID: opts.ActiveURI}
	case latest.ToID != activeID:
		return nil, fmt.Errorf("rotation: NewRootKeyRotator: the active root key %q is not the new root key %q of the latest job %s", activeID, latest.ToID, latest.ID)
	default:
		r.advance(latest, level, opts.ActiveURI, latest.FromURI)
	}
	r.active.Store(&activeID)
	return r, nil
}

// Close closes the root keys the rotator opened. Call it after the keyring
// is no longer used.
func (r *RootKeyRotator) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	var errs []error
	for id, k := range r.opened {
		if err := k.Close(); err != nil {
			errs = append(errs, fmt.Errorf("rotation: close root key %q: %w", id, err))
		}
		delete(r.opened, id)
	}
	return errors.Join(errs...)
}

// Status returns the latest root-key rotation, running or done, or
// ErrNoRotation.
func (r *RootKeyRotator) Status(ctx context.Context) (store.RootKeyRotation, error) {
	job, err := r.st.LatestRootKeyRotation(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return store.RootKeyRotation{}, ErrNoRotation
	}
	if err != nil {
		return store.RootKeyRotation{}, fmt.Errorf("rotation: key store: %w", err)
	}
	return job, nil
}

// probe is wrapped and unwrapped by a new root key before a job starts.
var probeAAD = []byte("tresor-root-key-probe-v1")

// Start starts re-wrapping every keyset from the active root key to the
// root key at uri, and returns the job. From this moment the keyring wraps
// new keysets with the new key; the old one keeps unwrapping. The re-wrap
// runs in the background, in Run (on this replica or another).
//
// The job is endorsed by the active (old) root key ([Endorse]), so that
// every replica can check that this key chose the new one.
//
// It fails with ErrRotationRunning while a job runs, with
// ErrInvalidRootKey when uri is malformed, names the active key, or names
// a key that cannot be opened or used, with ErrUnendorsedRotation when the
// store's latest job is one this replica refuses to follow, and with an
// error wrapping kms.ErrUnavailable or store.ErrUnavailable when a root
// key or the store cannot be reached. A rotation to a local-file:// key
// (development only) is refused unless the active key is one too. Nothing
// changes when it fails.
func (r *RootKeyRotator) Start(ctx context.Context, uri string) (store.RootKeyRotation, error) {
	r.startMu.Lock()
	defer r.startMu.Unlock()
	if strings.TrimSpace(uri) == "" {
		return store.RootKeyRotation{}, fmt.Errorf("%w: empty URI", ErrInvalidRootKey)
	}
	latest, err := r.st.LatestRootKeyRotation(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if err := r.checkNoneLost(); err != nil {
			return store.RootKeyRotation{}, err
		}
	case err != nil:
		return store.RootKeyRotation{}, fmt.Errorf("rotation: key store: %w", err)
	case latest.State == store.RotationRunning:
		return store.RootKeyRotation{}, fmt.Errorf("%w: job %s, from root key %q to %q, has re-wrapped %d of %d keysets", ErrRotationRunning, latest.ID, latest.FromID, latest.ToID, latest.Rewrapped, latest.Total)
	default:
		// A job done elsewhere may not be followed here yet.
		cs, missed, err := r.catchUp(ctx, latest)
		if err == nil {
			_, err = r.followAfter(ctx, latest, cs, missed)
		}
		if err != nil {
			return store.RootKeyRotation{}, err
		}
	}
	from := r.roots.Active()
	fromID := from.ID()
	fromURI := r.uriOf(fromID)
	if isLocalFile(uri) && !isLocalFile(fromURI) {
		return store.RootKeyRotation{}, fmt.Errorf("%w: a local-file root key is for development only; rotating to one is refused unless the active root key is a local-file key too", ErrInvalidRootKey)
	}
	if err := r.checkModule(uri, r.state().uris); err != nil {
		return store.RootKeyRotation{}, err
	}
	to, err := r.open.OpenRootKey(ctx, uri)
	if err != nil {
		if errors.Is(err, kms.ErrUnavailable) || ctx.Err() != nil {
			return store.RootKeyRotation{}, fmt.Errorf("rotation: open the new root key: %w", err)
		}
		return store.RootKeyRotation{}, fmt.Errorf("%w: cannot open it: %w", ErrInvalidRootKey, err)
	}
	adopted := false
	defer func() {
		if !adopted {
			_ = to.Close()
		}
	}()
	toID := to.ID()
	if toID == fromID {
		return store.RootKeyRotation{}, fmt.Errorf("%w: it is the active root key %q", ErrInvalidRootKey, toID)
	}
	if err := probe(ctx, to); err != nil {
		if errors.Is(err, kms.ErrUnavailable) || ctx.Err() != nil {
			return store.RootKeyRotation{}, fmt.Errorf("rotation: new root key %q: %w", toID, err)
		}
		return store.RootKeyRotation{}, fmt.Errorf("%w: root key %q cannot wrap and unwrap: %w", ErrInvalidRootKey, toID, err)
	}
	total, err := r.st.CountKeysByRootKey(ctx, fromID)
	if err != nil {
		return store.RootKeyRotation{}, fmt.Errorf("rotation: key store: %w", err)
	}
	rec := store.RootKeyRotation{
		ID:      "rkr-" + randomHex(8),
		PrevID:  latest.ID, // "" when there is none
		FromURI: fromURI, ToURI: uri,
		FromID: fromID, ToID: toID,
		Total: total,
	}
	if rec.Endorsement, err = Endorse(ctx, from, rec); err != nil {
		return store.RootKeyRotation{}, err
	}
	job, err := r.st.StartRootKeyRotation(ctx, rec)
	if errors.Is(err, store.ErrConflict) {
		return store.RootKeyRotation{}, fmt.Errorf("%w: started concurrently", ErrRotationRunning)
	}
	if err != nil {
		return store.RootKeyRotation{}, fmt.Errorf("rotation: key store: %w", err)
	}
	adopted = true
	r.adopt(to)
	r.markSeen(job.ID)
	r.setActive(ctx, toID)
	r.advance(job, trustFull, uri, fromURI)
	r.logger.InfoContext(ctx, "root-key rotation started", "job", job.ID, "from_root_key", fromID, "to_root_key", toID, "keysets", total)
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return job, nil
}

// checkModule refuses a pkcs11: URI whose module is neither in
// PKCS11Modules nor the module of a root key in trusted (URIs by root key
// id: the keys the rotator trusts).
func (r *RootKeyRotator) checkModule(uri string, trusted map[string]string) error {
	if !hasScheme(uri, "pkcs11:") {
		return nil
	}
	u, err := pkcs11.ParseURI(uri)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRootKey, err)
	}
	allowed := slices.Clone(r.opts.PKCS11Modules)
	for _, known := range trusted {
		if k, err := pkcs11.ParseURI(known); err == nil && hasScheme(known, "pkcs11:") {
			allowed = append(allowed, k.ModulePath)
		}
	}
	if !slices.Contains(allowed, u.ModulePath) {
		return fmt.Errorf("%w: PKCS#11 module %q is not the module of a root key in use, and the API loads no other module", ErrInvalidRootKey, u.ModulePath)
	}
	return nil
}

// probe checks that k wraps and unwraps.
func probe(ctx context.Context, k kms.RootKey) error {
	pt := []byte("tresor root key probe")
	w, err := k.Wrap(ctx, pt, probeAAD)
	if err != nil {
		return err
	}
	got, err := k.Unwrap(ctx, w, probeAAD)
	if err != nil {
		return err
	}
	if string(got) != string(pt) {
		return errors.New("unwrap returned other bytes than were wrapped")
	}
	return nil
}

// missInterval bounds how often keysets under a root key not held make
// Run poll before its interval.
const missInterval = 100 * time.Millisecond

// Run follows the store's root-key rotations until ctx ends: it polls for
// the latest job, opens its root keys and switches the keyring to the new
// one; while a job runs, it takes the job's lease when it is free and
// re-wraps keysets until the job is done. A job it does not trust is
// refused (see [RootKeyRotator]) and looked at again at the next poll.
// Failures (a root key or the store unavailable) are retried with
// exponential backoff. It returns nil when ctx ends.
func (r *RootKeyRotator) Run(ctx context.Context) error {
	b := backoff{min: r.opts.MinBackoff, max: r.opts.MaxBackoff}
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-r.kick:
		case <-r.roots.Misses():
			// A keyset under a root key not held: another replica has
			// started a rotation; follow it now rather than at the next
			// poll. A burst of misses (or misses of a job this replica
			// refuses) polls at most every missInterval.
			if time.Since(last) < missInterval {
				continue
			}
		}
		last = time.Now()
		err := r.step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := r.opts.PollInterval
		if err != nil {
			wait = b.next()
			r.logger.WarnContext(ctx, "root-key rotation: will retry", "err", err, "retry_in", wait)
		} else {
			b.reset()
		}
		timer.Reset(wait)
	}
}

// step follows the latest job once and, holding its lease, works on it.
func (r *RootKeyRotator) step(ctx context.Context) error {
	job, running, err := r.followLatest(ctx)
	if err != nil || !running {
		return err
	}
	ok, err := r.st.AcquireLease(ctx, RootKeyLease, r.opts.Holder, r.opts.LeaseTTL)
	if err != nil {
		return fmt.Errorf("rotation: lease: %w", err)
	}
	if !ok {
		return nil // another replica works on it
	}
	return r.work(ctx, job)
}

// followLatest follows the store's latest job and, when it is done, looks
// for keysets left under its old root key (repair); running says whether
// the job runs, for step to work on it. It is serialized with Start, so
// that neither reads the store's latest job before the other records a
// new one and then follows that stale read (the job before the one
// followed last, which check refuses).
func (r *RootKeyRotator) followLatest(ctx context.Context) (job store.RootKeyRotation, running bool, err error) {
	r.startMu.Lock()
	defer r.startMu.Unlock()
	job, err = r.st.LatestRootKeyRotation(ctx)
	if errors.Is(err, store.ErrNotFound) {
		if err := r.checkNoneLost(); err != nil {
			r.reportRefusal(ctx, r.headJob(), err)
		}
		return job, false, nil
	}
	if err != nil {
		return job, false, fmt.Errorf("rotation: key store: %w", err)
	}
	cs, missed, err := r.catchUp(ctx, job)
	level := trustNone
	if err == nil {
		level, err = r.followAfter(ctx, job, cs, missed)
	}
	if errors.Is(err, ErrUnendorsedRotation) {
		return job, false, nil // logged; looked at again at the next poll
	}
	if err != nil {
		return job, false, err
	}
	if job.State == store.RotationDone {
		return job, false, r.repair(ctx, job, level == trustFull)
	}
	return job, job.State == store.RotationRunning, nil
}

// repair looks once per process for keysets a done job left behind under
// its old root key (a write that raced the job's last sweep) and, finding
// some, starts a job from the same old key to the same new key for them.
// Afterwards it looks again every stragglerCheckPolls poll intervals, on
// the replica that takes the lease, for keysets written under the old key
// since (a replica that missed the switch beyond the grace period). When
// the rotator does not trust the job's old root key (trusted is false: it
// could not verify the job's endorsement, as when it started with the new
// key configured), it re-wraps nothing and reports keysets left behind
// once.
func (r *RootKeyRotator) repair(ctx context.Context, job store.RootKeyRotation, trusted bool) error {
	r.mu.Lock()
	checked := r.repaired
	r.mu.Unlock()
	if checked {
		return r.checkStragglers(ctx, job, trusted)
	}
	n, err := r.st.CountKeysByRootKey(ctx, job.FromID)
	if err != nil {
		return fmt.Errorf("rotation: key store: %w", err)
	}
	if n > 0 && !trusted {
		r.reportLeftBehind(ctx, job, n, untrustedOldKey, nil)
	} else if n > 0 {
		if err := r.ensure(ctx, job.FromID, r.trustedURI(job.FromID, job.FromURI)); err != nil {
			return err
		}
		if err := r.startFollowUp(ctx, job, n); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.repaired = true
	r.checkedAt = time.Now()
	r.mu.Unlock()
	return nil
}

// checkStragglers is repair's periodic check: due every
// stragglerCheckPolls poll intervals, run by the replica that takes the
// lease, and only while the old root key can still be opened (a key
// retired since cannot re-wrap anything; the keysets left under it are
// reported once).
func (r *RootKeyRotator) checkStragglers(ctx context.Context, job store.RootKeyRotation, trusted bool) error {
	r.mu.Lock()
	due := time.Since(r.checkedAt) >= stragglerCheckPolls*r.opts.PollInterval
	if due {
		r.checkedAt = time.Now()
	}
	r.mu.Unlock()
	if !due {
		return nil
	}
	if !trusted {
		// Only report: the lease is for the replicas that can re-wrap.
		n, err := r.st.CountKeysByRootKey(ctx, job.FromID)
		if err != nil {
			return fmt.Errorf("rotation: key store: %w", err)
		}
		if n > 0 {
			r.reportLeftBehind(ctx, job, n, untrustedOldKey, nil)
		}
		return nil
	}
	ok, err := r.st.AcquireLease(ctx, RootKeyLease, r.opts.Holder, r.opts.LeaseTTL)
	if err != nil {
		return fmt.Errorf("rotation: lease: %w", err)
	}
	if !ok {
		return nil // another replica checks, or works on a job
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := r.st.ReleaseLease(rctx, RootKeyLease, r.opts.Holder); err != nil {
			r.logger.WarnContext(ctx, "root-key rotation: release lease", "err", err)
		}
	}()
	n, err := r.st.CountKeysByRootKey(ctx, job.FromID)
	if err != nil {
		return fmt.Errorf("rotation: key store: %w", err)
	}
	if n == 0 {
		return nil
	}
	if err := r.ensure(ctx, job.FromID, r.trustedURI(job.FromID, job.FromURI)); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		r.reportLeftBehind(ctx, job, n, "which cannot be opened to re-wrap them", err)
		return nil
	}
	r.mu.Lock()
	r.unopenable = ""
	r.mu.Unlock()
	return r.startFollowUp(ctx, job, n)
}

// untrustedOldKey says why keysets left under an old root key the rotator
// does not trust are not re-wrapped.
const untrustedOldKey = "which this replica does not trust (it cannot verify the job's endorsement with the root keys it holds): it re-wraps nothing; a replica that holds the old root key does"

// reportLeftBehind logs once per job that n keysets remain under the old
// root key of the done job and why they are not re-wrapped here.
func (r *RootKeyRotator) reportLeftBehind(ctx context.Context, job store.RootKeyRotation, n int64, why string, err error) {
	r.mu.Lock()
	first := r.unopenable != job.ID
	r.unopenable = job.ID
	r.mu.Unlock()
	if !first {
		return
	}
	args := []any{"job", job.ID, "from_root_key", job.FromID, "keysets", n}
	if err != nil {
		args = append(args, "err", err)
	}
	r.logger.ErrorContext(ctx, "root-key rotation: keysets remain under the old root key of a finished job, "+why, args...)
}

// startFollowUp starts a job re-wrapping the n keysets left under done
// job's old root key to its new one, endorsed by the old key (which the
// caller opened), and wakes Run to work on it.
func (r *RootKeyRotator) startFollowUp(ctx context.Context, job store.RootKeyRotation, n int64) error {
	r.logger.WarnContext(ctx, "root-key rotation: keysets remain under the old root key of a finished job; re-wrapping them", "job", job.ID, "from_root_key", job.FromID, "to_root_key", job.ToID, "keysets", n)
	rec := store.RootKeyRotation{
		ID:      "rkr-" + randomHex(8),
		PrevID:  job.ID,
		FromURI: job.FromURI, ToURI: job.ToURI,
		FromID: job.FromID, ToID: job.ToID,
		Total: n,
	}
	from, ok := r.roots.Get(job.FromID)
	if !ok {
		return fmt.Errorf("rotation: root key %q is not open", job.FromID)
	}
	var err error
	if rec.Endorsement, err = Endorse(ctx, from, rec); err != nil {
		return err
	}
	fromURI, toURI := r.trustedURI(job.FromID, job.FromURI), r.trustedURI(job.ToID, job.ToURI)
	started, err := r.st.StartRootKeyRotation(ctx, rec)
	switch {
	case err == nil:
		r.advance(started, trustFull, toURI, fromURI)
	case !errors.Is(err, store.ErrConflict):
		return fmt.Errorf("rotation: key store: %w", err)
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return nil
}

// trust says how far the rotator trusts a job of the store.
type trust int

const (
	// trustNone: the job is refused.
	trustNone trust = iota
	// trustTo: the job is not verified, but its new root key is one the
	// rotator trusts already: the keyring may switch to it, and nothing
	// else of the job is used (its old key is neither opened nor
	// re-wrapped from).
	trustTo
	// trustFull: the job was started here, given in Verified, or endorsed
	// by a trusted old root key: both its keys are trusted.
	trustFull
)

// follow makes the keyring match job, once it is trusted: its new key
// active and, while it runs, its old key held; job is then the one
// followed last (head). It refuses (an error wrapping
// ErrUnendorsedRotation, logged here) a job it does not trust, and a
// running job whose old root key it does not trust.
func (r *RootKeyRotator) follow(ctx context.Context, job store.RootKeyRotation) (trust, error) {
	return r.followAfter(ctx, job, r.state(), nil)
}

// missedJob is a job catchUp verified, with the URIs of its root keys.
type missedJob struct {
	job            store.RootKeyRotation
	toURI, fromURI string
}

// followAfter is follow with cs as the chain state: the rotator's, or, when
// this replica missed jobs, the state after them (catchUp), which it then
// records as followed, in order, before job.
func (r *RootKeyRotator) followAfter(ctx context.Context, job store.RootKeyRotation, cs chainState, missed []missedJob) (trust, error) {
	level, from, err := r.check(ctx, job, cs)
	defer func() {
		if from != nil {
			_ = from.Close() // opened only to verify the endorsement
		}
	}()
	if err == nil && level == trustTo && job.State == store.RotationRunning {
		err = fmt.Errorf("%w: job %s runs from root key %q, which this replica neither holds nor trusts, so it cannot verify the job's endorsement", ErrUnendorsedRotation, job.ID, job.FromID)
	}
	if err != nil {
		if errors.Is(err, ErrUnendorsedRotation) {
			r.reportRefusal(ctx, job, err)
		}
		return trustNone, err
	}
	toURI, fromURI := cs.trustedURI(job.ToID, job.ToURI), cs.trustedURI(job.FromID, job.FromURI)
	if err := r.ensure(ctx, job.ToID, toURI); err != nil {
		return trustNone, err
	}
	for _, m := range missed {
		r.advance(m.job, trustFull, m.toURI, m.fromURI)
	}
	if len(missed) > 0 {
		r.logger.WarnContext(ctx, "root-key rotation: verified root-key rotations this replica missed", "jobs", len(missed), "last_missed_job", missed[len(missed)-1].job.ID, "latest_job", job.ID)
	}
	r.setActive(ctx, job.ToID)
	r.advance(job, level, toURI, fromURI)
	if job.State != store.RotationRunning {
		return level, nil
	}
	r.markSeen(job.ID)
	if from != nil && from.ID() == job.FromID {
		r.adopt(from) // the running job needs its old key
		from = nil
		return level, nil
	}
	return level, r.ensure(ctx, job.FromID, fromURI)
}

// check decides how far job, the store's latest, is trusted. The job
// followed last (head) is trusted as before, as long as its ids, URIs and
// PrevID are unchanged; a job followed before it is refused (made the
// latest again, it would roll the keyring back). Any other job must be
// the next in the chain: its PrevID is head's ID, it is endorsed, and it
// moves from the active root key (a new rotation) or repeats head's keys
// (a follow-up job for keysets left under head's old key, whose old key is
// trusted once head is verified). Its endorsement must verify under its
// old root key, opened from the URI the rotator trusts when it is not held
// (that handle is returned, to close or adopt, and never added to the
// keyring here), and its new key must pass Start's checks unless it is
// held. Refusals wrap ErrUnendorsedRotation; an old root key that cannot
// be reached returns its error, for Run to retry.
func (r *RootKeyRotator) check(ctx context.Context, job store.RootKeyRotation, cs chainState) (trust, kms.RootKey, error) {
	d := endorsementDigest(job)
	head, headDigest, headTrust := cs.head, cs.headDigest, cs.headTrust
	r.mu.Lock()
	followedBefore := r.followed[job.ID]
	r.mu.Unlock()
	fromURI, fromTrusted := cs.uris[job.FromID]
	active := r.roots.ID()
	if head.ID != "" {
		active = head.ToID // the same, unless check runs ahead of the keyring (catchUp)
	}
	switch {
	case head.ID != "" && job.ID == head.ID && d == headDigest:
		return headTrust, nil, nil
	case head.ID != "" && job.ID == head.ID:
		return trustNone, nil, fmt.Errorf("%w: job %s changed since this replica followed it: its ids, URIs or previous job differ", ErrUnendorsedRotation, job.ID)
	case followedBefore:
		return trustNone, nil, fmt.Errorf("%w: job %s was followed before, and job %s after it: made the latest again, it would roll the keyring back to an earlier root key", ErrUnendorsedRotation, job.ID, head.ID)
	case job.PrevID != head.ID:
		return trustNone, nil, fmt.Errorf("%w: job %s names %q as the job before it, not job %q, which this replica followed last: the key store's rotation records were reordered, deleted or inserted (no chain of jobs leads from that one to it)", ErrUnendorsedRotation, job.ID, job.PrevID, head.ID)
	case len(job.Endorsement) == 0:
		return trustNone, nil, fmt.Errorf("%w: job %s has no endorsement (recorded before endorsements were kept, or not by tresor)", ErrUnendorsedRotation, job.ID)
	}
	followUp := head.ID != "" && job.FromID == head.FromID && job.ToID == head.ToID
	switch {
	case job.FromID != active && !followUp:
		return trustNone, nil, fmt.Errorf("%w: job %s moves from root key %q to %q, but a new job starts from the active root key %q (or, re-wrapping keysets left behind, repeats the root keys of job %s)", ErrUnendorsedRotation, job.ID, job.FromID, job.ToID, active, head.ID)
	case !fromTrusted:
		return trustNone, nil, fmt.Errorf("%w: job %s: its old root key %q is not one this replica trusts, so its endorsement cannot be verified", ErrUnendorsedRotation, job.ID, job.FromID)
	}
	vk := verdictKey(job)
	r.mu.Lock()
	refusal, seen := r.forged[vk]
	r.mu.Unlock()
	if seen {
		return trustNone, nil, refusal
	}
	from, opened, err := r.keyToVerify(ctx, job.FromID, fromURI)
	if err != nil {
		return trustNone, nil, err
	}
	fail := func(err error) (trust, kms.RootKey, error) {
		if opened != nil {
			_ = opened.Close()
		}
		return trustNone, nil, err
	}
	if err := VerifyEndorsement(ctx, from, job); err != nil {
		if errors.Is(err, ErrUnendorsedRotation) {
			r.mu.Lock()
			if len(r.forged) >= maxForged {
				clear(r.forged)
			}
			r.forged[vk] = err
			r.mu.Unlock()
		}
		return fail(err)
	}
	if _, toHeld := r.roots.Get(job.ToID); !toHeld {
		// Start's checks: it refused such a key, so no endorsed job names
		// one; they are kept here all the same.
		if isLocalFile(job.ToURI) && !isLocalFile(fromURI) {
			return fail(fmt.Errorf("%w: job %s moves from a root key that is not a local-file key to a local-file key", ErrUnendorsedRotation, job.ID))
		}
		if err := r.checkModule(job.ToURI, cs.uris); err != nil {
			return fail(fmt.Errorf("%w: job %s: %v", ErrUnendorsedRotation, job.ID, strings.TrimPrefix(err.Error(), ErrInvalidRootKey.Error()+": ")))
		}
	}
	return trustFull, opened, nil
}

// maxForged bounds the refusals RootKeyRotator.forged keeps.
const maxForged = 64

// verdictKey names a record as verified: its digest and its endorsement.
func verdictKey(job store.RootKeyRotation) [32]byte {
	d := endorsementDigest(job)
	return sha256.Sum256(append(d[:], job.Endorsement...))
}

// keyToVerify returns the root key id, from the keyring when it holds it,
// else opened from uri (and returned as opened too, for the caller to close
// or adopt): only to verify an endorsement, never added to the keyring
// here.
func (r *RootKeyRotator) keyToVerify(ctx context.Context, id, uri string) (envelope.KEK, kms.RootKey, error) {
	if k, ok := r.roots.Get(id); ok {
		return k, nil, nil
	}
	k, err := r.open.OpenRootKey(ctx, uri)
	if err != nil {
		return nil, nil, fmt.Errorf("rotation: open root key %q to verify an endorsement: %w", id, err)
	}
	if k.ID() != id {
		_ = k.Close()
		return nil, nil, fmt.Errorf("rotation: the URI trusted for root key %q now opens root key %q; refusing to use it", id, k.ID())
	}
	return k, k, nil
}

// chainState is where the rotator is in the chain of jobs: the job it
// followed last (head; zero ID: none), the digest of its ids, URIs and
// PrevID then, how far it is trusted, and the URIs of the root keys it
// trusts, by id.
type chainState struct {
	head       store.RootKeyRotation
	headDigest [32]byte
	headTrust  trust
	uris       map[string]string
}

// advance makes job the one followed last, trusted to level, with the
// URIs of its new root key (active from now on) and old one. Then the
// trusted keys are the new one and, when level is trustFull, job's old
// one (for a follow-up job and the keysets left under it): no root key of
// an earlier job.
func (cs *chainState) advance(job store.RootKeyRotation, level trust, toURI, fromURI string) {
	cs.head, cs.headDigest, cs.headTrust = job, endorsementDigest(job), level
	cs.uris = map[string]string{job.ToID: toURI}
	if level == trustFull {
		cs.uris[job.FromID] = fromURI
	}
}

// trustedURI returns the URI cs trusts for root key id, else uri.
func (cs chainState) trustedURI(id, uri string) string {
	if known, ok := cs.uris[id]; ok {
		return known
	}
	return uri
}

// state returns a copy of the rotator's chainState.
func (r *RootKeyRotator) state() chainState {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs := r.chainState
	cs.uris = maps.Clone(cs.uris)
	return cs
}

// advance records job as the one followed last (chainState.advance).
func (r *RootKeyRotator) advance(job store.RootKeyRotation, level trust, toURI, fromURI string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.chainState.advance(job, level, toURI, fromURI)
	r.followed[job.ID] = true
	delete(r.refused, job.ID)
}

// catchUp returns the chain state to follow latest from, and the jobs
// between the one followed last and latest when latest does not name the
// one followed last because this replica missed whole jobs (cut off from
// the store while they ran). From the one after head, each must name the
// one before it, be done, and verify as check verifies a new job, under
// the new root key of the job before it, which is opened only to verify
// and closed again. Nothing is recorded or changed here: followAfter
// records them once latest is followed. When latest is not further down
// the chain from head, it returns the rotator's state (follow refuses
// latest then). Refusals wrap ErrUnendorsedRotation and are logged.
func (r *RootKeyRotator) catchUp(ctx context.Context, latest store.RootKeyRotation) (chainState, []missedJob, error) {
	cs := r.state()
	r.mu.Lock()
	followedBefore := r.followed[latest.ID]
	r.mu.Unlock()
	if latest.ID == cs.head.ID || latest.PrevID == cs.head.ID || followedBefore {
		return cs, nil, nil
	}
	jobs, err := r.st.ListRootKeyRotations(ctx)
	if err != nil {
		return cs, nil, fmt.Errorf("rotation: key store: %w", err)
	}
	start := 0
	if cs.head.ID != "" {
		i := slices.IndexFunc(jobs, func(j store.RootKeyRotation) bool { return j.ID == cs.head.ID })
		if i < 0 {
			return cs, nil, nil
		}
		start = i + 1
	}
	n := slices.IndexFunc(jobs[start:], func(j store.RootKeyRotation) bool { return j.ID == latest.ID })
	if n <= 0 {
		return cs, nil, nil
	}
	var missed []missedJob
	for _, job := range jobs[start : start+n] {
		level, opened, err := r.check(ctx, job, cs)
		if opened != nil {
			_ = opened.Close()
		}
		if err == nil && (level != trustFull || job.State != store.RotationDone) {
			err = fmt.Errorf("%w: job %s, before the latest job %s, is not done", ErrUnendorsedRotation, job.ID, latest.ID)
		}
		if err != nil {
			if errors.Is(err, ErrUnendorsedRotation) {
				r.reportRefusal(ctx, job, err)
			}
			return cs, nil, err
		}
		m := missedJob{job: job, toURI: cs.trustedURI(job.ToID, job.ToURI), fromURI: cs.trustedURI(job.FromID, job.FromURI)}
		cs.advance(job, trustFull, m.toURI, m.fromURI)
		missed = append(missed, m)
	}
	return cs, missed, nil
}

// headJob returns the job followed last (zero: none).
func (r *RootKeyRotator) headJob() store.RootKeyRotation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.head
}

// checkNoneLost is called when the store has no job: it refuses (an error
// wrapping ErrUnendorsedRotation) when the rotator followed one, as the
// records were deleted.
func (r *RootKeyRotator) checkNoneLost() error {
	if head := r.headJob(); head.ID != "" {
		return fmt.Errorf("%w: the key store holds no root-key rotation, but this replica followed job %s: the rotation records were deleted", ErrUnendorsedRotation, head.ID)
	}
	return nil
}

// reportRefusal logs a refused job, once per job and reason: the store may
// hold a forged record, or a transient read returned one.
func (r *RootKeyRotator) reportRefusal(ctx context.Context, job store.RootKeyRotation, err error) {
	r.mu.Lock()
	first := r.refused[job.ID] != err.Error()
	r.refused[job.ID] = err.Error()
	r.mu.Unlock()
	if first {
		r.logger.ErrorContext(ctx, "root-key rotation refused: the key store's job is not endorsed by a root key this replica trusts, or not where the chain of jobs puts it; serving on with the root keys held, and looking again at the next poll",
			"job", job.ID, "from_root_key", job.FromID, "to_root_key", job.ToID, "active_root_key", r.roots.ID(), "err", err)
	}
}

// trustedURI returns the URI the rotator trusts for root key id, else uri.
func (r *RootKeyRotator) trustedURI(id, uri string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.chainState.trustedURI(id, uri)
}

// ensure opens the root key uri names unless the set holds id already, and
// checks that uri still names the key with that id.
func (r *RootKeyRotator) ensure(ctx context.Context, id, uri string) error {
	if _, ok := r.roots.Get(id); ok {
		return nil
	}
	k, err := r.open.OpenRootKey(ctx, uri)
	if err != nil {
		return fmt.Errorf("rotation: open root key %q: %w", id, err)
	}
	if k.ID() != id {
		_ = k.Close()
		return fmt.Errorf("rotation: the URI recorded for root key %q now opens root key %q; refusing to use it", id, k.ID())
	}
	r.adopt(k)
	r.logger.InfoContext(ctx, "root-key rotation: opened root key", "root_key", id)
	return nil
}

// adopt adds k, which the rotator opened, to the set.
func (r *RootKeyRotator) adopt(k kms.RootKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := k.ID()
	if _, held := r.roots.Get(id); held || r.closed {
		_ = k.Close()
		return
	}
	_ = r.roots.Add(k) // k has an id: Add cannot fail
	r.opened[id] = k
}

func (r *RootKeyRotator) setActive(ctx context.Context, id string) {
	if err := r.roots.SetActive(id); err != nil {
		return // not held: ensure failed and was reported
	}
	if prev := r.active.Swap(&id); *prev != id {
		r.logger.InfoContext(ctx, "root key switched: new keysets are wrapped by the new root key", "root_key", id, "previous_root_key", *prev)
	}
}

func (r *RootKeyRotator) uriOf(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.uris[id]
}

func (r *RootKeyRotator) markSeen(jobID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.seen[jobID]; !ok {
		r.seen[jobID] = time.Now()
	}
}

func (r *RootKeyRotator) seenAt(jobID string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.seen[jobID]; ok {
		return t
	}
	t := time.Now()
	r.seen[jobID] = t
	return t
}

var errLeaseLost = errors.New("rotation: lost the root-key rotation lease")

// work re-wraps job's keysets while holding its lease, and finishes it.
func (r *RootKeyRotator) work(ctx context.Context, job store.RootKeyRotation) error {
	jctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.renew(jctx, cancel) })
	defer func() {
		cancel(nil)
		wg.Wait()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer rcancel()
		if err := r.st.ReleaseLease(rctx, RootKeyLease, r.opts.Holder); err != nil {
			r.logger.WarnContext(ctx, "root-key rotation: release lease", "err", err)
		}
	}()
	err := r.rewrapAll(jctx, job)
	if cause := context.Cause(jctx); cause != nil && ctx.Err() == nil && errors.Is(cause, errLeaseLost) {
		return cause
	}
	return err
}

// renew renews the lease every third of its TTL until ctx ends, and cancels
// the job when the lease is lost or cannot be renewed before it lapses.
func (r *RootKeyRotator) renew(ctx context.Context, cancel context.CancelCauseFunc) {
	every := max(r.opts.LeaseTTL/3, time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := r.st.AcquireLease(ctx, RootKeyLease, r.opts.Holder, r.opts.LeaseTTL)
		switch {
		case err == nil && ok:
			last = time.Now()
		case err == nil && !ok:
			cancel(errLeaseLost)
			return
		case time.Since(last) >= r.opts.LeaseTTL-every:
			cancel(fmt.Errorf("%w: %w", errLeaseLost, err))
			return
		}
	}
}

// rewrapAll sweeps the old key's keysets until a sweep that began after
// the grace period finds none, then finishes the job.
func (r *RootKeyRotator) rewrapAll(ctx context.Context, job store.RootKeyRotation) error {
	from, ok := r.roots.Get(job.FromID)
	if !ok {
		return fmt.Errorf("rotation: root key %q is not open", job.FromID)
	}
	to, ok := r.roots.Get(job.ToID)
	if !ok {
		return fmt.Errorf("rotation: root key %q is not open", job.ToID)
	}
	graceEnd := r.seenAt(job.ID).Add(r.opts.Grace)
	r.logger.InfoContext(ctx, "root-key rotation: re-wrapping", "job", job.ID, "from_root_key", job.FromID, "to_root_key", job.ToID, "rewrapped", job.Rewrapped, "total", job.Total)
	for {
		sweepStart := time.Now()
		res, err := r.sweep(ctx, job, from, to)
		if err != nil {
			return err
		}
		if res.unreadable > 0 {
			return fmt.Errorf("rotation: job %s: %d keysets cannot be unwrapped by root key %q (see the log); the job cannot finish until they are repaired or destroyed", job.ID, res.unreadable, job.FromID)
		}
		if res.rewrapped > 0 || res.conflicts > 0 {
			continue
		}
		if sweepStart.Before(graceEnd) {
			if err := sleep(ctx, time.Until(graceEnd)); err != nil {
				return err
			}
			continue
		}
		done, err := r.st.FinishRootKeyRotation(ctx, job.ID)
		if errors.Is(err, store.ErrConflict) {
			// A keyset arrived under the old key: sweep again, after a
			// pause, as the writer may still be at it.
			if err := sleep(ctx, r.opts.PollInterval); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("rotation: key store: %w", err)
		}
		r.logger.InfoContext(ctx, "root-key rotation done", "job", done.ID, "from_root_key", done.FromID, "to_root_key", done.ToID, "rewrapped", done.Rewrapped, "total", done.Total)
		_, err = r.follow(ctx, done)
		return err
	}
}

type sweepResult struct {
	rewrapped, conflicts, unreadable int
}

// sweep re-wraps, batch by batch in name order, every keyset still under
// the old key. It is a pipeline of three stages, so that the store and the
// HSM or KMS work at the same time: one goroutine lists the next batch,
// this one re-wraps a batch with the root keys, and another commits the
// batch before (one store transaction each, whole or nothing). A failure
// stops the sweep once the commit in flight has ended.
func (r *RootKeyRotator) sweep(ctx context.Context, job store.RootKeyRotation, from, to envelope.KEK) (sweepResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	batches := make(chan []store.Key, 1)
	listed := make(chan error, 1)
	go func() {
		defer close(batches)
		after := ""
		for {
			keys, err := r.st.ListKeysByRootKey(ctx, job.FromID, after, r.opts.BatchSize)
			if err != nil {
				listed <- fmt.Errorf("rotation: key store: %w", err)
				return
			}
			if len(keys) == 0 {
				listed <- nil
				return
			}
			after = keys[len(keys)-1].Name
			select {
			case batches <- keys:
			case <-ctx.Done():
				listed <- ctx.Err()
				return
			}
			if len(keys) < r.opts.BatchSize {
				listed <- nil
				return
			}
		}
	}()

	var res sweepResult
	type commit struct {
		stored, conflicts int
		err               error
	}
	var inFlight chan commit // the previous batch's commit, if any
	wait := func() error {
		if inFlight == nil {
			return nil
		}
		c := <-inFlight
		inFlight = nil
		res.rewrapped += c.stored
		res.conflicts += c.conflicts
		return c.err
	}
	defer func() {
		_ = wait()
		cancel()
		for range batches { // let the lister end
		}
	}()
	for keys := range batches {
		out, unreadable, err := r.rewrapBatch(ctx, keys, from, to)
		if err != nil {
			return res, err
		}
		if err := wait(); err != nil {
			return res, err
		}
		res.unreadable += unreadable
		if len(out) > 0 {
			inFlight = make(chan commit, 1)
			go func(ch chan<- commit) {
				conflicts, err := r.st.RewrapKeys(ctx, job.ID, out)
				if err != nil {
					ch <- commit{err: fmt.Errorf("rotation: key store: %w", err)}
					return
				}
				ch <- commit{stored: len(out) - len(conflicts), conflicts: len(conflicts)}
			}(inFlight)
		}
	}
	if err := wait(); err != nil {
		return res, err
	}
	return res, <-listed
}

// rewrapBatch re-wraps keys on Workers goroutines. A keyset the old key
// cannot unwrap is logged and left out; an unavailable root key or an
// ended context fails the whole batch.
func (r *RootKeyRotator) rewrapBatch(ctx context.Context, keys []store.Key, from, to envelope.KEK) ([]store.Key, int, error) {
	out := make([]store.Key, len(keys))
	errs := make([]error, len(keys))
	var next atomic.Int64
	workers := r.opts.Workers
	if workers == 0 {
		// Automatic: time the first few one at a time.
		n := min(autoProbe, len(keys))
		start := time.Now()
		for i := range n {
			out[i], errs[i] = envelope.RewrapKeyset(ctx, keys[i], from, to)
		}
		next.Store(int64(n))
		workers = 1
		if n > 0 && time.Since(start)/time.Duration(n) >= autoParallelAbove {
			workers = MaxAutoWorkers
		}
	}
	do := func() {
		for {
			i := int(next.Add(1)) - 1
			if i >= len(keys) || ctx.Err() != nil {
				return
			}
			out[i], errs[i] = envelope.RewrapKeyset(ctx, keys[i], from, to)
		}
	}
	if w := min(workers, len(keys)-int(next.Load())); w <= 1 {
		do()
	} else {
		var wg sync.WaitGroup
		for range w {
			wg.Go(do)
		}
		wg.Wait()
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	kept := out[:0]
	unreadable := 0
	for i, err := range errs {
		switch {
		case err == nil:
			kept = append(kept, out[i])
		case errors.Is(err, kms.ErrUnavailable), errors.Is(err, kms.ErrClosed), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return nil, 0, fmt.Errorf("rotation: re-wrap: %w", err)
		case errors.Is(err, envelope.ErrKeysetUnreadable):
			unreadable++
			r.logger.ErrorContext(ctx, "root-key rotation: a stored keyset cannot be unwrapped by its root key; it stays as it is", "key", keys[i].Name, "root_key", keys[i].RootKeyID, "err", err)
		default:
			return nil, 0, fmt.Errorf("rotation: re-wrap: %w", err)
		}
	}
	return kept, unreadable, nil
}

// backoff is exponential backoff with full jitter.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	// Jitter in [cur/2, cur): replicas that failed together retry apart.
	half := b.cur / 2
	return half + rand.N(max(half, 1))
}

func (b *backoff) reset() { b.cur = 0 }

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

func isLocalFile(uri string) bool { return hasScheme(uri, "local-file:") }

// hasScheme reports whether uri starts with scheme (which ends in ':'), in
// any case.
func hasScheme(uri, scheme string) bool {
	return len(uri) >= len(scheme) && strings.EqualFold(uri[:len(scheme)], scheme)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = crand.Read(b) // never fails
	return hex.EncodeToString(b)
}
