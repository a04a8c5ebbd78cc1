package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/pkcs11"
	"github.com/tresorkms/tresor/kms/provider"
	"github.com/tresorkms/tresor/rotation"
)

// serveRootKeys are the root keys a server holds and the rotator that
// follows the store's root-key rotations.
type serveRootKeys struct {
	set     *envelope.RootKeys
	rotator *rotation.RootKeyRotator
	opened  []kms.RootKey
}

// openRootKeys decides which root key is active and opens every root key
// the keyring needs. The store's latest root-key rotation wins over the
// configuration: its ToURI is the active key (root_key.uri only names the
// first root key, before any rotation), and a warning names both ids when
// they differ. While that rotation runs, its old key is opened too, so
// that the keysets not yet re-wrapped stay readable.
func openRootKeys(ctx context.Context, cfg config.Config, st store.Store, logger *slog.Logger) (*serveRootKeys, error) {
	return openInstrumentedRootKeys(ctx, cfg, st, logger, nil)
}

// openInstrumentedRootKeys is openRootKeys with the calls of every root key
// opened, here and by the rotator, recorded in m (nil: not recorded).
func openInstrumentedRootKeys(ctx context.Context, cfg config.Config, st store.Store, logger *slog.Logger, m *rootKeyMetrics) (*serveRootKeys, error) {
	open := m.opener(func(ctx context.Context, uri string) (kms.RootKey, error) { return provider.Open(ctx, uri, logger) })
	activeURI := cfg.RootKey.URI
	latest, err := st.LatestRootKeyRotation(ctx)
	found := err == nil
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("reading the latest root-key rotation: %w", err)
	default:
		activeURI = latest.ToURI
	}
	rk := &serveRootKeys{}
	ok := false
	defer func() {
		if !ok {
			_ = rk.Close()
		}
	}()
	active, err := open(ctx, activeURI)
	if err != nil {
		if found {
			return nil, fmt.Errorf("the root key of the latest root-key rotation (%s, job %s): %w", latest.ToID, latest.ID, err)
		}
		return nil, err
	}
	rk.opened = append(rk.opened, active)
	if found && active.ID() != latest.ToID {
		return nil, fmt.Errorf("the URI of root key %s (root-key rotation %s) now opens root key %s; refusing to serve with it", latest.ToID, latest.ID, active.ID())
	}
	if rk.set, err = envelope.NewRootKeys(active); err != nil {
		return nil, err
	}
	// While a job runs, and after it is done as long as keysets remain
	// under its old root key (a replica that missed the switch wrote
	// them; the rotator's straggler check re-wraps them), the old key
	// must unwrap too.
	stragglers := int64(0)
	if found && latest.State == store.RotationDone {
		if stragglers, err = st.CountKeysByRootKey(ctx, latest.FromID); err != nil {
			return nil, fmt.Errorf("counting keysets under the old root key %s: %w", latest.FromID, err)
		}
	}
	if found && (latest.State == store.RotationRunning || stragglers > 0) {
		from, err := open(ctx, latest.FromURI)
		if err != nil {
			return nil, fmt.Errorf("the old root key %s of the running root-key rotation %s: %w", latest.FromID, latest.ID, err)
		}
		rk.opened = append(rk.opened, from)
		if from.ID() != latest.FromID {
			return nil, fmt.Errorf("the URI of root key %s (root-key rotation %s) now opens root key %s; refusing to serve with it", latest.FromID, latest.ID, from.ID())
		}
		if err := rk.set.Add(from); err != nil {
			return nil, err
		}
		if latest.State == store.RotationRunning {
			logger.InfoContext(ctx, "root-key rotation running: serving with both root keys until it is done", "job", latest.ID, "from_root_key", latest.FromID, "to_root_key", latest.ToID, "rewrapped", latest.Rewrapped, "total", latest.Total)
		} else {
			logger.WarnContext(ctx, "keysets remain under the old root key of a finished rotation: serving with both root keys until they are re-wrapped", "job", latest.ID, "from_root_key", latest.FromID, "keysets", stragglers)
		}
	}
	if found && cfg.RootKey.URI != latest.ToURI {
		warnConfigRootKey(ctx, cfg.RootKey.URI, latest, open, logger)
	}
	var modules []string // the API may rotate to keys in the configured key's module
	if u, err := pkcs11.ParseURI(cfg.RootKey.URI); err == nil {
		modules = append(modules, u.ModulePath)
	}
	rk.rotator, err = rotation.NewRootKeyRotator(st, rk.set, rotation.OpenerFunc(open), rotation.RootKeyOptions{
		ActiveURI:     activeURI,
		PollInterval:  cfg.Cache.SyncInterval,
		LeaseTTL:      cfg.Scheduler.LeaseTTL,
		PKCS11Modules: modules,
		Logger:        logger,
	})
	if err != nil {
		return nil, err
	}
	ok = true
	return rk, nil
}

// warnConfigRootKey warns when root_key.uri names another key than the one
// the store's latest rotation moved to. It learns the configured key's id
// from the job when it can, else by opening it (and closing it again).
func warnConfigRootKey(ctx context.Context, uri string, latest store.RootKeyRotation, open func(context.Context, string) (kms.RootKey, error), logger *slog.Logger) {
	configID := ""
	if uri == latest.FromURI {
		configID = latest.FromID
	} else if k, err := open(ctx, uri); err == nil {
		configID = k.ID()
		_ = k.Close()
	} else {
		configID = "(cannot be opened: " + err.Error() + ")"
	}
	if configID == latest.ToID {
		return
	}
	logger.WarnContext(ctx, "root_key.uri names another root key than the store's latest root-key rotation; serving with the rotation's root key (root_key.uri only names the first root key; update it to avoid confusion)",
		"config_root_key", configID, "active_root_key", latest.ToID, "job", latest.ID, "job_state", latest.State.String())
}

// run runs the rotator until the returned stop is called; stop waits for it.
func (rk *serveRootKeys) run(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = rk.rotator.Run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// Close closes every root key opened here and by the rotator.
func (rk *serveRootKeys) Close() error {
	var errs []error
	if rk.rotator != nil {
		errs = append(errs, rk.rotator.Close())
	}
	for _, k := range rk.opened {
		errs = append(errs, k.Close())
	}
	return errors.Join(errs...)
}
