package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/rotation"
)

// startJobs starts the background jobs of a replica: the key-lifecycle
// scheduler (rotation, retirement, destruction; it works only while this
// replica holds the scheduler lease) and the sync of the keyset cache with
// the store every cache.sync_interval, which bounds how long another
// replica's change takes to be used here. The returned function stops both
// and waits for them.
func startJobs(ctx context.Context, cfg config.Config, ring *envelope.Keyring, st store.Store, logger *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	holder := replicaID()
	sched, err := rotation.NewScheduler(rotation.SchedulerOptions{
		Keyring:  ring,
		Store:    st,
		Holder:   holder,
		Interval: cfg.Scheduler.Interval,
		LeaseTTL: cfg.Scheduler.LeaseTTL,
		Logger:   logger.With("job", "scheduler"),
	})
	if err != nil {
		// Only a missing keyring, store or holder gets here.
		logger.ErrorContext(ctx, "key scheduler not started", "err", err)
	} else {
		wg.Go(func() { _ = sched.Run(ctx) })
		logger.InfoContext(ctx, "key scheduler started", "holder", holder, "interval", cfg.Scheduler.Interval, "lease_ttl", cfg.Scheduler.LeaseTTL)
	}
	wg.Go(func() { syncCache(ctx, ring, cfg.Cache.SyncInterval, logger) })
	return func() {
		cancel()
		wg.Wait()
	}
}

// syncCache runs ring.SyncCache every interval until ctx ends.
func syncCache(ctx context.Context, ring *envelope.Keyring, interval time.Duration, logger *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := ring.SyncCache(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			logger.WarnContext(ctx, "keyset cache sync failed; cached keys stay until the next sync or cache.max_age", "err", err)
		case n > 0:
			logger.DebugContext(ctx, "keyset cache sync dropped changed keys", "dropped", n)
		}
	}
}

// replicaID names this process among the replicas sharing a store: host
// name, process id and a random suffix, so that a restarted process on the
// same host is a new holder.
func replicaID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}
