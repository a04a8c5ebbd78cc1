package policy

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultPollInterval is Run's interval when it is given none.
const DefaultPollInterval = 5 * time.Second

// Reloading holds the current Engine and replaces it when the files change.
// A set that fails to load (a policy that does not validate, a syntax error,
// an empty directory) never replaces the current Engine. It is safe for
// concurrent use.
type Reloading struct {
	opts   Options
	logger *slog.Logger
	engine atomic.Pointer[Engine]

	mu    sync.Mutex // serializes reloads
	stamp string     // the files' stamp when they were last read
}

// NewReloading loads the policies once, failing as Load does.
func NewReloading(opts Options, logger *slog.Logger) (*Reloading, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reloading{opts: opts, logger: logger}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Decide decides req with the current Engine.
func (r *Reloading) Decide(req Request) Decision { return r.engine.Load().Decide(req) }

// Engine returns the current Engine.
func (r *Reloading) Engine() *Engine { return r.engine.Load() }

// Reload loads the files now. On error it keeps the current Engine and
// returns the error.
func (r *Reloading) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reloadLocked()
}

func (r *Reloading) reloadLocked() error {
	// Stamp before reading, so that a change made during the load is seen
	// by the next poll.
	stamp, err := r.filesStamp()
	if err == nil {
		r.stamp = stamp
	}
	e, err := Load(r.opts)
	if err != nil {
		return err
	}
	r.engine.Store(e)
	return nil
}

// Run polls the files' names, sizes and modification times every interval
// until ctx is done, and reloads when they change. It logs each reload and
// each failure; a failure is not retried until the files change again. An
// interval <= 0 means DefaultPollInterval.
func (r *Reloading) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.poll(ctx)
	}
}

func (r *Reloading) poll(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamp, err := r.filesStamp()
	if err != nil {
		if stamp != r.stamp {
			r.stamp = stamp
			r.logger.ErrorContext(ctx, "policy: cannot read policy files; keeping the current policies", "err", err)
		}
		return
	}
	if stamp == r.stamp {
		return
	}
	if err := r.reloadLocked(); err != nil {
		r.logger.ErrorContext(ctx, "policy: reload failed; keeping the current policies", "err", err)
		return
	}
	r.logger.InfoContext(ctx, "policy: reloaded", "policies", len(r.engine.Load().ids), "dir", r.opts.PolicyDir)
}

// filesStamp describes the schema and the *.cedar files by name, size and
// modification time. On error it returns a stamp of the error.
func (r *Reloading) filesStamp() (string, error) {
	schemaFile := r.opts.SchemaFile
	if schemaFile == "" {
		schemaFile = filepath.Join(r.opts.PolicyDir, DefaultSchemaFile)
	}
	var b strings.Builder
	stat := func(path string) error {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s\x00%d\x00%d\n", path, fi.Size(), fi.ModTime().UnixNano())
		return nil
	}
	if err := stat(schemaFile); err != nil {
		return "error: " + err.Error(), err
	}
	entries, err := os.ReadDir(r.opts.PolicyDir)
	if err != nil {
		return "error: " + err.Error(), err
	}
	names := make([]string, 0, len(entries))
	for _, de := range entries {
		if strings.HasSuffix(de.Name(), ".cedar") {
			names = append(names, de.Name())
		}
	}
	slices.Sort(names)
	for _, n := range names {
		if err := stat(filepath.Join(r.opts.PolicyDir, n)); err != nil {
			return "error: " + err.Error(), err
		}
	}
	return b.String(), nil
}
