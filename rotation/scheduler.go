package rotation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
)

// SchedulerLease is the name of the store lease the replica that runs the
// scheduler holds.
const SchedulerLease = "scheduler"

// Defaults of SchedulerOptions.
const (
	DefaultSchedulerInterval = time.Minute
	DefaultSchedulerLeaseTTL = 30 * time.Second
	// DefaultSchedulerPageSize is how many keys one ListKeys page holds.
	DefaultSchedulerPageSize = 100
	// schedulerFirstRetry is the wait after the first failed tick; each
	// further failure doubles it, up to SchedulerOptions.MaxBackoff.
	schedulerFirstRetry = time.Second
	// releaseTimeout bounds the release of the lease when Run stops.
	releaseTimeout = 5 * time.Second
)

// SchedulerKeyring is what the scheduler needs of an [envelope.Keyring]:
// to list the keys, and to rotate, retire and destroy one when it is due.
// Each *IfDue method decides again inside the write, so a key listed a
// moment ago is never acted on twice.
type SchedulerKeyring interface {
	ListKeys(ctx context.Context, pageSize int, pageToken string) ([]store.Key, string, error)
	RotateIfDue(ctx context.Context, name string) (store.Key, bool, error)
	RetireVersions(ctx context.Context, name string) (store.Key, bool, error)
	DestroyIfDue(ctx context.Context, name string) (store.Key, bool, error)
}

// Leaser hands out the lease that lets one replica at a time run the
// scheduler; store.Store satisfies it.
type Leaser interface {
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, name, holder string) error
}

// SchedulerOptions configure a Scheduler. Keyring, Store and Holder are
// required.
type SchedulerOptions struct {
	Keyring SchedulerKeyring
	Store   Leaser
	// Holder names this replica in the lease: unique among the replicas
	// sharing the store (cmd/tresor uses host, pid and a random suffix).
	Holder string
	// Interval is the time between two ticks; 0 means
	// DefaultSchedulerInterval.
	Interval time.Duration
	// LeaseTTL is how long the lease lasts unrenewed; a tick renews it
	// before every page of keys, and another replica takes over when it
	// lapses. 0 means DefaultSchedulerLeaseTTL.
	LeaseTTL time.Duration
	// MaxBackoff caps the wait after failures: after n failed ticks in a
	// row Run waits min(1s * 2^(n-1), MaxBackoff), and a key whose change
	// failed n times in a row is skipped for min(Interval * 2^(n-1),
	// MaxBackoff). 0 means 10 * Interval.
	MaxBackoff time.Duration
	// PageSize is how many keys one ListKeys page holds; 0 means
	// DefaultSchedulerPageSize.
	PageSize int
	// Now is the clock that decides what is due; nil means time.Now. The
	// keyring decides again with its own clock, and the lease runs on the
	// store's: tests give all three the same fake clock.
	Now func() time.Time
	// After waits as time.After does; nil means time.After. Tests of Run
	// pass a fake.
	After func(time.Duration) <-chan time.Time
	// Logger receives what each tick did and every failure; nil means
	// slog.Default(). It never sees key material.
	Logger *slog.Logger
}

// Scheduler runs the jobs of a key's life that come due with time: it
// rotates keys whose rotation period has passed, advances the minimum
// decryption version of keys with retention settings, and destroys the
// material of keys whose deletion time has come. One replica at a time
// works (the holder of SchedulerLease); on the others a tick does nothing.
type Scheduler struct {
	opts   SchedulerOptions
	logger *slog.Logger
	// failures counts, per key, its failed changes in a row, and retry
	// says when it is tried again. Only Tick touches them, and ticks do not
	// overlap (Run is sequential; callers of Tick must not run two at once).
	failures map[string]int
	retry    map[string]time.Time
}

// TickReport says what one tick did.
type TickReport struct {
	// Leader is true when this replica held the lease and did the work.
	Leader bool
	// Scanned counts the keys listed; Rotated, Retired and Destroyed the
	// keys changed; Failed the keys whose change failed (logged, retried
	// with backoff); Skipped the keys still backing off.
	Scanned, Rotated, Retired, Destroyed, Failed, Skipped int
}

func (r TickReport) changed() bool { return r.Rotated+r.Retired+r.Destroyed+r.Failed > 0 }

// NewScheduler returns a scheduler; start it with Run.
func NewScheduler(opts SchedulerOptions) (*Scheduler, error) {
	if opts.Keyring == nil || opts.Store == nil || opts.Holder == "" {
		return nil, errors.New("rotation: NewScheduler needs a keyring, a store and a holder name")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultSchedulerInterval
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultSchedulerLeaseTTL
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 10 * opts.Interval
	}
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultSchedulerPageSize
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.After == nil {
		opts.After = time.After
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Scheduler{opts: opts, logger: opts.Logger, failures: map[string]int{}, retry: map[string]time.Time{}}, nil
}

// Run ticks every Interval until ctx ends, then releases the lease so that
// another replica takes over at once, and returns nil. A failed tick (the
// store unreachable, say) is logged and retried after an exponential
// backoff; Run never stops for one.
func (s *Scheduler) Run(ctx context.Context) error {
	failed := 0
	for {
		rep, err := s.Tick(ctx)
		if ctx.Err() != nil {
			return s.release(ctx)
		}
		wait := s.opts.Interval
		switch {
		case err != nil:
			failed++
			wait = min(schedulerFirstRetry<<min(failed-1, 30), s.opts.MaxBackoff)
			s.logger.WarnContext(ctx, "scheduler: tick failed; will retry", "err", err, "failures", failed, "retry_in", wait)
		case rep.changed():
			failed = 0
			s.logger.InfoContext(ctx, "scheduler: tick", "rotated", rep.Rotated, "retired", rep.Retired, "destroyed", rep.Destroyed, "failed", rep.Failed, "scanned", rep.Scanned)
		default:
			failed = 0
		}
		select {
		case <-ctx.Done():
			return s.release(ctx)
		case <-s.opts.After(wait):
		}
	}
}

// release gives the lease up, so that another replica need not wait for
// it to lapse. It returns nil: Run's result.
func (s *Scheduler) release(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := s.opts.Store.ReleaseLease(rctx, SchedulerLease, s.opts.Holder); err != nil {
		s.logger.WarnContext(ctx, "scheduler: release lease", "err", err)
	}
	return nil
}

// Tick takes or renews the lease and, holding it, scans every key once:
// it destroys keys whose deletion time has come, rotates keys whose
// rotation period has passed, then retires versions as retention settings
// ask. Without the lease it does nothing. It returns an error only when it
// could not work at all (the lease or a page of keys could not be read);
// failures on single keys are logged, counted in the report and retried on
// later ticks with backoff.
func (s *Scheduler) Tick(ctx context.Context) (TickReport, error) {
	var rep TickReport
	token := ""
	for {
		held, err := s.opts.Store.AcquireLease(ctx, SchedulerLease, s.opts.Holder, s.opts.LeaseTTL)
		if err != nil {
			return rep, fmt.Errorf("rotation: scheduler lease: %w", err)
		}
		if !held {
			if rep.Leader {
				s.logger.WarnContext(ctx, "scheduler: lost the lease during a tick; stopping", "holder", s.opts.Holder)
			}
			return rep, nil
		}
		rep.Leader = true
		keys, next, err := s.opts.Keyring.ListKeys(ctx, s.opts.PageSize, token)
		if err != nil {
			return rep, fmt.Errorf("rotation: scheduler: list keys: %w", err)
		}
		renewed := s.opts.Now()
		for _, k := range keys {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			// Slow keys (an HSM call each) must not outlast the lease:
			// renew it once a third of its TTL has passed.
			if s.opts.Now().Sub(renewed) > s.opts.LeaseTTL/3 {
				held, err := s.opts.Store.AcquireLease(ctx, SchedulerLease, s.opts.Holder, s.opts.LeaseTTL)
				if err != nil {
					return rep, fmt.Errorf("rotation: scheduler lease: %w", err)
				}
				if !held {
					s.logger.WarnContext(ctx, "scheduler: lost the lease during a tick; stopping", "holder", s.opts.Holder)
					return rep, nil
				}
				renewed = s.opts.Now()
			}
			rep.Scanned++
			s.visit(ctx, k, &rep)
		}
		if next == "" {
			return rep, nil
		}
		token = next
	}
}

// visit applies to one key whatever has come due.
func (s *Scheduler) visit(ctx context.Context, k store.Key, rep *TickReport) {
	now := s.opts.Now()
	if at, ok := s.retry[k.Name]; ok && now.Before(at) {
		rep.Skipped++
		return
	}
	fail := func(what string, err error) {
		n := s.failures[k.Name] + 1
		s.failures[k.Name] = n
		wait := min(s.opts.Interval<<min(n-1, 30), s.opts.MaxBackoff)
		s.retry[k.Name] = now.Add(wait)
		rep.Failed++
		s.logger.ErrorContext(ctx, "scheduler: "+what+" failed", "key", k.Name, "err", err, "failures", n, "retry_in", wait)
	}
	if envelope.DestructionDue(k, now) {
		if _, done, err := s.opts.Keyring.DestroyIfDue(ctx, k.Name); err != nil {
			fail("destroy", err)
			return
		} else if done {
			rep.Destroyed++
			s.logger.InfoContext(ctx, "scheduler: key material destroyed", "key", k.Name, "deletion_time", k.DeletionTime)
		}
		s.succeeded(k.Name)
		return
	}
	if envelope.RotationDue(k, now) {
		nk, done, err := s.opts.Keyring.RotateIfDue(ctx, k.Name)
		if err != nil {
			fail("rotate", err)
			return
		}
		if done {
			rep.Rotated++
			s.logger.InfoContext(ctx, "scheduler: key rotated", "key", k.Name, "primary_version", nk.PrimaryVersion)
		}
		k = nk
	}
	if envelope.RetirementVersion(k, now) > k.MinDecryptionVersion {
		nk, done, err := s.opts.Keyring.RetireVersions(ctx, k.Name)
		if err != nil {
			fail("retire versions", err)
			return
		}
		if done {
			rep.Retired++
			s.logger.InfoContext(ctx, "scheduler: versions retired", "key", k.Name, "min_decryption_version", nk.MinDecryptionVersion)
		}
	}
	s.succeeded(k.Name)
}

func (s *Scheduler) succeeded(name string) {
	delete(s.failures, name)
	delete(s.retry, name)
}
