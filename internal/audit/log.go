package audit

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 10 * time.Second
	DefaultQueueSize          = 8192
	DefaultMaxBatch           = 2048
	DefaultWriteTimeout       = 10 * time.Second
)

// MaxAnchors bounds the anchors of a new chain: the chains whose latest
// checkpoints are the most recent. An older chain is then still anchored
// by the chains that started while it was among them.
const MaxAnchors = 256

// Options configure a Log. Chain, RootKeys and Pseudonymizer are required.
type Options struct {
	// Chain names this writer's hash chain: one per process writing a sink
	// (e.g. the replica's name). Printable ASCII without quotes or
	// backslashes, at most MaxChainLen bytes. Two processes must never
	// write one chain to one sink; the store refuses the second's events
	// (store.ErrConflict), a file would hold a broken chain.
	Chain string
	// RootKeys signs checkpoints with its active key.
	RootKeys RootKeys
	// Pseudonymizer replaces Event.Subject and Event.Source.
	Pseudonymizer *Pseudonymizer
	// CheckpointEvery: a checkpoint is written with the batch that brings
	// the events since the last one to this many (a checkpoint ends a
	// batch, so it may cover a batch's worth more); 0 means
	// DefaultCheckpointEvery.
	CheckpointEvery int
	// CheckpointInterval is the longest time between checkpoints while
	// events are written; 0 means DefaultCheckpointInterval.
	CheckpointInterval time.Duration
	// QueueSize bounds the events waiting to be written; Record blocks
	// (until its context ends) while the queue is full. 0 means
	// DefaultQueueSize.
	QueueSize int
	// MaxBatch bounds the events of one write; 0 means DefaultMaxBatch.
	MaxBatch int
	// WriteTimeout bounds each sink write and checkpoint signature; 0 means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// FailOpen makes Record return nil when the event could not be written
	// (it is lost, and OnError is told). The default, fail closed, returns
	// an error wrapping ErrUnavailable, so that the audited call fails.
	FailOpen bool
	// OnError, when set, is called (from the writer's goroutines, maybe
	// concurrently with several sinks; it must not block) with every
	// failed write and checkpoint, fail open or not, and
	// the number of events that write lost (0 for a checkpoint), e.g. to
	// count them in a metric.
	OnError func(err error, events int)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Log writes audit events to its sinks: Record hands an event to one
// writer goroutine, which seals waiting events into the hash chain and
// writes them to every sink in one batch (group commit), then wakes their
// callers. Its methods are safe for concurrent use.
type Log struct {
	opts  Options
	sinks []*sinkState
	queue chan *request

	closeOnce sync.Once
	closing   chan struct{} // closed by Close
	stopped   chan struct{} // closed when the writer returns
	closeErr  error

	lastErr atomic.Pointer[error] // the last write's error; nil after a success
}

// sinkState is the writer's view of one sink: its chain head.
type sinkState struct {
	sink    Sink
	seq     uint64
	hash    Digest
	dirty   bool      // a write failed: read the head again before the next
	sinceCP int       // events since the last checkpoint
	lastCP  time.Time // when the last checkpoint was written (or the log started)
	buf     []byte    // reused for lines
	// anchors is the anchors member of the chain's first event (seq 1),
	// nil when the chain was resumed or the sink held no other chain.
	anchors []byte
	wrote   bool // this log appended events to the sink
}

// request is one Record waiting for its batch.
type request struct {
	e    Event
	body []byte
	done chan error
}

// New starts a Log over sinks, resuming each sink's chain Options.Chain
// from its last event. Close it to write a final checkpoint and stop.
func New(ctx context.Context, opts Options, sinks ...Sink) (*Log, error) {
	switch {
	case opts.RootKeys == nil:
		return nil, fmt.Errorf("%w: no root keys", ErrInvalidOptions)
	case opts.Pseudonymizer == nil:
		return nil, fmt.Errorf("%w: no pseudonymizer", ErrInvalidOptions)
	case len(sinks) == 0:
		return nil, fmt.Errorf("%w: no sinks", ErrInvalidOptions)
	case opts.CheckpointEvery < 0, opts.CheckpointInterval < 0, opts.QueueSize < 0, opts.MaxBatch < 0, opts.WriteTimeout < 0:
		return nil, fmt.Errorf("%w: negative size or duration", ErrInvalidOptions)
	}
	if err := checkChain(opts.Chain); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidOptions, err)
	}
	if opts.CheckpointEvery == 0 {
		opts.CheckpointEvery = DefaultCheckpointEvery
	}
	if opts.CheckpointInterval == 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	if opts.QueueSize == 0 {
		opts.QueueSize = DefaultQueueSize
	}
	if opts.MaxBatch == 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l := &Log{
		opts:    opts,
		queue:   make(chan *request, opts.QueueSize),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
	}
	now := opts.Now()
	for i, s := range sinks {
		if s == nil {
			return nil, fmt.Errorf("%w: sink %d is nil", ErrInvalidOptions, i)
		}
		seq, hash, err := s.Head(ctx, opts.Chain)
		if err != nil {
			return nil, fmt.Errorf("audit: resume chain %q from sink %d: %w: %w", opts.Chain, i, ErrUnavailable, err)
		}
		st := &sinkState{sink: s, seq: seq, hash: hash, lastCP: now}
		if lister, ok := s.(CheckpointLister); ok && seq == 0 {
			cps, err := lister.LatestCheckpoints(ctx)
			if err != nil {
				return nil, fmt.Errorf("audit: anchor new chain %q in sink %d: %w: %w", opts.Chain, i, ErrUnavailable, err)
			}
			st.anchors = appendAnchors(nil, anchorsOf(cps, opts.Chain))
		}
		l.sinks = append(l.sinks, st)
	}
	go l.run()
	return l, nil
}

// anchorsOf returns the anchors of a new chain to the checkpoints cps of
// the other chains: at most MaxAnchors, the most recent, by chain name.
func anchorsOf(cps []Checkpoint, chain string) []Anchor {
	cps = slices.DeleteFunc(slices.Clone(cps), func(c Checkpoint) bool { return c.Chain == chain || c.Seq == 0 })
	if len(cps) > MaxAnchors {
		slices.SortFunc(cps, func(a, b Checkpoint) int {
			if c := b.Time.Compare(a.Time); c != 0 {
				return c
			}
			return strings.Compare(a.Chain, b.Chain)
		})
		cps = cps[:MaxAnchors]
	}
	anchors := make([]Anchor, len(cps))
	for i, c := range cps {
		anchors[i] = Anchor{Chain: validUTF8(c.Chain), Seq: c.Seq, Hash: c.Hash}
	}
	slices.SortFunc(anchors, func(a, b Anchor) int { return strings.Compare(a.Chain, b.Chain) })
	return anchors
}

// Record writes e to every sink and returns when it is durable in all of
// them. It fills in Chain, Seq, Prev, Hash and, when zero, Time, and
// replaces Subject and Source with their pseudonyms. It fails with an error
// wrapping ErrUnavailable when a sink could not write the event (nil
// instead with Options.FailOpen), ErrClosed after Close, or ctx's error
// when ctx ends first (the event may still be written).
func (l *Log) Record(ctx context.Context, e Event) error {
	if e.Time.IsZero() {
		e.Time = l.opts.Now()
	}
	e.Time = e.Time.UTC().Truncate(time.Microsecond)
	e.Subject = l.opts.Pseudonymizer.Subject(e.Subject)
	e.Source = l.opts.Pseudonymizer.Source(e.Source)
	e.LatencyMicros = max(e.LatencyMicros, 0)
	e.Anchors = nil // the log's to set
	sanitize(&e)
	r := &request{e: e, done: make(chan error, 1)}
	r.body = appendBody(make([]byte, 0, 512), &r.e)

	select {
	case <-l.closing:
		return ErrClosed
	default:
	}
	select {
	case l.queue <- r:
	case <-l.closing:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("audit: record: %w", ctx.Err())
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit: record: %w", ctx.Err())
	case <-l.stopped:
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed
		}
	}
}

// probe is the event the writer records to learn whether failed sinks
// are back (ActionProbe); nobody waits for it.
func (l *Log) probe() *request {
	r := &request{e: Event{Time: l.opts.Now().UTC().Truncate(time.Microsecond), Action: ActionProbe}, done: make(chan error, 1)}
	r.body = appendBody(make([]byte, 0, 128), &r.e)
	return r
}

// Ready returns nil when the last write succeeded (or none failed yet), and
// that write's error otherwise; for a readiness check. While it fails, the
// writer records a probe event (ActionProbe) every quarter checkpoint
// interval without traffic, so that Ready recovers with the sinks.
func (l *Log) Ready(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-l.closing:
		return ErrClosed
	default:
	}
	if p := l.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Close writes the events already recorded, then a final checkpoint
// (Checkpoint.Final) of each sink it wrote to, and stops the writer. When a
// sink's head has a checkpoint already, Close first records an event with
// Action ActionClose to carry the final one (one checkpoint per seq).
// Records after Close fail with ErrClosed. It waits until ctx ends at most;
// the sinks stay open (their owner closes them).
func (l *Log) Close(ctx context.Context) error {
	l.closeOnce.Do(func() { close(l.closing) })
	select {
	case <-l.stopped:
		return l.closeErr
	case <-ctx.Done():
		return fmt.Errorf("audit: close: %w", ctx.Err())
	}
}

// run is the writer goroutine.
func (l *Log) run() {
	defer close(l.stopped)
	ticker := time.NewTicker(max(l.opts.CheckpointInterval/4, time.Millisecond))
	defer ticker.Stop()
	batch := make([]*request, 0, l.opts.MaxBatch)
	last := 0 // the size of the previous batch
	for {
		select {
		case r := <-l.queue:
			batch = l.fill(append(batch[:0], r))
			// The callers the previous batch woke are likely about to
			// record again: let them, rather than write a batch of one
			// and make them wait a whole write for the next.
			for i := 0; i < 4 && len(batch) < last; i++ {
				runtime.Gosched()
				batch = l.fill(batch)
			}
			last = len(batch)
			l.commit(batch)
		case <-ticker.C:
			if l.lastErr.Load() != nil && len(l.queue) == 0 {
				// The last write failed and no call is writing: a probe
				// event finds out whether the sinks are back, so that
				// readiness recovers even when no traffic comes (a load
				// balancer sends none to a server that is not ready).
				l.commit([]*request{l.probe()})
			}
			l.checkpointDue(false)
		case <-l.closing:
			for {
				batch = l.fill(batch[:0])
				if len(batch) == 0 {
					break
				}
				l.commit(batch)
			}
			l.closeErr = l.checkpointDue(true)
			return
		}
	}
}

// fill adds waiting requests to batch, up to MaxBatch.
func (l *Log) fill(batch []*request) []*request {
	for len(batch) < l.opts.MaxBatch {
		select {
		case r := <-l.queue:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// commit writes batch to every sink and answers its requests.
func (l *Log) commit(batch []*request) {
	now := l.opts.Now()
	var err error
	if len(l.sinks) == 1 {
		err = l.write(l.sinks[0], batch, now, false)
	} else {
		errs := make([]error, len(l.sinks))
		var wg sync.WaitGroup
		for i, s := range l.sinks {
			wg.Go(func() { errs[i] = l.write(s, batch, now, false) })
		}
		wg.Wait()
		err = errors.Join(errs...)
	}
	var result error
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		l.lastErr.Store(&err)
		if l.opts.OnError != nil {
			l.opts.OnError(err, len(batch))
		}
		if !l.opts.FailOpen {
			result = err
		}
	} else {
		l.lastErr.Store(nil)
	}
	for _, r := range batch {
		r.done <- result
	}
}

// write seals batch onto the chain of sink s and appends it, with a
// checkpoint when one is due, or final. The head advances only when the
// sink wrote. The first event of a new chain carries the anchors, and is
// checkpointed at once so that they are covered.
func (l *Log) write(s *sinkState, batch []*request, now time.Time, final bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.WriteTimeout)
	defer cancel()
	if s.dirty {
		seq, hash, err := s.sink.Head(ctx, l.opts.Chain)
		if err != nil {
			return err
		}
		s.seq, s.hash, s.dirty = seq, hash, false
	}
	entries := make([]Entry, len(batch))
	s.buf = s.buf[:0]
	seq, hash := s.seq, s.hash
	offsets := make([]int, len(batch)+1)
	for i, r := range batch {
		seq++
		body := r.body
		if seq == 1 && s.anchors != nil {
			body = append(body[:len(body):len(body)], s.anchors...)
		}
		s.buf, hash = seal(s.buf, l.opts.Chain, seq, hash, body)
		offsets[i+1] = len(s.buf)
		entries[i] = Entry{Chain: l.opts.Chain, Seq: seq, Time: r.e.Time, Hash: hash}
	}
	for i := range entries { // s.buf may have moved while it grew
		entries[i].Line = s.buf[offsets[i]:offsets[i+1]:offsets[i+1]]
	}
	var cp *Checkpoint
	if final || (s.seq == 0 && s.anchors != nil) ||
		s.sinceCP+len(batch) >= l.opts.CheckpointEvery || now.Sub(s.lastCP) >= l.opts.CheckpointInterval {
		var err error
		if cp, err = signCheckpointFinal(ctx, l.opts.RootKeys, l.opts.Chain, seq, hash, now, final); err != nil {
			if final {
				return err
			}
			// The events are written without it; the next batch tries again.
			if l.opts.OnError != nil {
				l.opts.OnError(err, 0)
			}
			cp = nil
		}
	}
	if err := s.sink.Append(ctx, entries, cp); err != nil {
		s.dirty = true
		return err
	}
	s.seq, s.hash, s.wrote = seq, hash, true
	s.sinceCP += len(batch)
	if cp != nil {
		s.sinceCP, s.lastCP = 0, now
	}
	return nil
}

// checkpointDue writes a checkpoint to every sink that has events since
// its last one, when the interval has passed; or, when final is set, a
// final checkpoint to every sink this log wrote to, after a close event
// when the head has a checkpoint already.
func (l *Log) checkpointDue(final bool) error {
	now := l.opts.Now()
	var errs []error
	for _, s := range l.sinks {
		if s.dirty || (!final && (s.sinceCP == 0 || now.Sub(s.lastCP) < l.opts.CheckpointInterval)) {
			continue
		}
		var err error
		switch {
		case s.sinceCP > 0:
			err = l.writeCheckpoint(s, now, final)
		case final && s.wrote:
			err = l.writeClose(s, now)
		}
		if err != nil {
			if l.opts.OnError != nil {
				l.opts.OnError(err, 0)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (l *Log) writeCheckpoint(s *sinkState, now time.Time, final bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.WriteTimeout)
	defer cancel()
	cp, err := signCheckpointFinal(ctx, l.opts.RootKeys, l.opts.Chain, s.seq, s.hash, now, final)
	if err != nil {
		return err
	}
	if err := s.sink.Append(ctx, nil, cp); err != nil {
		s.dirty = true
		return fmt.Errorf("audit: checkpoint of chain %q at seq %d: %w", l.opts.Chain, s.seq, err)
	}
	s.sinceCP, s.lastCP = 0, now
	return nil
}

// writeClose records a close event in sink s, with a final checkpoint.
func (l *Log) writeClose(s *sinkState, now time.Time) error {
	r := &request{e: Event{Time: now.UTC().Truncate(time.Microsecond), Action: ActionClose}}
	r.body = appendBody(nil, &r.e)
	if err := l.write(s, []*request{r}, now, true); err != nil {
		return fmt.Errorf("audit: close event of chain %q: %w", l.opts.Chain, err)
	}
	return nil
}
