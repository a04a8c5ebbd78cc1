package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

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
// the keyring needs. The key store's rotations decide the active key, but
// only those the configured root key (root_key.uri, the trust anchor)
// vouches for: the rotations must form one chain, each naming the one
// before it, and each rotation walked must be endorsed by its old root key,
// trusted before it (see walkRotations); a record that is not stops the
// start. The active key is the new key of the latest rotation (or the
// configured key when there is none); a warning names both ids when
// root_key.uri names another. While that rotation runs, or keysets remain
// under its old key, the old key is opened too, so that the keysets not yet
// re-wrapped stay readable. Keysets under any other root key stop the start
// too (rotation.ErrMissingRotation): the records that moved them away were
// deleted or cut, and serving on would roll the keyring back.
func openRootKeys(ctx context.Context, cfg config.Config, st store.Store, logger *slog.Logger) (*serveRootKeys, error) {
	return openInstrumentedRootKeys(ctx, cfg, st, logger, nil)
}

// openInstrumentedRootKeys is openRootKeys with the calls of every root key
// opened, here and by the rotator, recorded in m (nil: not recorded).
func openInstrumentedRootKeys(ctx context.Context, cfg config.Config, st store.Store, logger *slog.Logger, m *rootKeyMetrics) (*serveRootKeys, error) {
	open := m.opener(func(ctx context.Context, uri string) (kms.RootKey, error) { return provider.Open(ctx, uri, logger) })
	jobs, err := st.ListRootKeyRotations(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the root-key rotations: %w", err)
	}
	rk := &serveRootKeys{}
	ok := false
	var chain *trustedChain
	defer func() {
		if !ok {
			_ = rk.Close()
			if chain != nil {
				chain.closeRest()
			}
		}
	}()
	anchor, err := open(ctx, cfg.RootKey.URI)
	if err != nil {
		return nil, err
	}
	if chain, err = walkRotations(ctx, jobs, anchor, cfg.RootKey.URI, open); err != nil {
		return nil, err
	}
	active, activeURI := anchor, cfg.RootKey.URI
	var latest store.RootKeyRotation
	found := len(jobs) > 0
	if found {
		latest = jobs[len(jobs)-1]
		active, activeURI = chain.keys[latest.ToID], chain.uris[latest.ToID]
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
	needFrom := found && (latest.State == store.RotationRunning || stragglers > 0)
	if err := checkRootKeysInUse(ctx, st, active.ID(), latest, needFrom); err != nil {
		return nil, err
	}
	if needFrom && !chain.latestVerified {
		why := "is running"
		if latest.State == store.RotationDone {
			why = fmt.Sprintf("left %d keysets under its old root key", stragglers)
		}
		return nil, fmt.Errorf("%w: root-key rotation %s, from root key %s to %s, %s, and its old root key cannot be verified from root_key.uri, which names root key %s: if the rotation is genuine, set root_key.uri to the URI of the old root key %s until it is done",
			rotation.ErrUnendorsedRotation, latest.ID, latest.FromID, latest.ToID, why, anchor.ID(), latest.FromID)
	}
	rk.opened = append(rk.opened, chain.take(active.ID()))
	if rk.set, err = envelope.NewRootKeys(active); err != nil {
		return nil, err
	}
	if needFrom {
		from := chain.take(latest.FromID)
		rk.opened = append(rk.opened, from)
		if err := rk.set.Add(from); err != nil {
			return nil, err
		}
		if latest.State == store.RotationRunning {
			logger.InfoContext(ctx, "root-key rotation running: serving with both root keys until it is done", "job", latest.ID, "from_root_key", latest.FromID, "to_root_key", latest.ToID, "rewrapped", latest.Rewrapped, "total", latest.Total)
		} else {
			logger.WarnContext(ctx, "keysets remain under the old root key of a finished rotation: serving with both root keys until they are re-wrapped", "job", latest.ID, "from_root_key", latest.FromID, "keysets", stragglers)
		}
	}
	// Keys opened only to walk the chain are closed again.
	chain.closeRest()
	if found && anchor.ID() != latest.ToID {
		logger.WarnContext(ctx, "root_key.uri names another root key than the store's latest root-key rotation; serving with the rotation's root key, reached from root_key.uri's key by endorsed rotations (update root_key.uri to the current root key once the rotation is done: the server does not start while root_key.uri's key cannot be opened)",
			"config_root_key", anchor.ID(), "active_root_key", latest.ToID, "job", latest.ID, "job_state", latest.State.String())
	}
	// The API may rotate to keys in the configured key's module (and in
	// those of the keys the rotator trusts: see rotation.RootKeyOptions).
	var modules []string
	if u, err := pkcs11.ParseURI(cfg.RootKey.URI); err == nil {
		modules = append(modules, u.ModulePath)
	}
	rk.rotator, err = rotation.NewRootKeyRotator(st, rk.set, rotation.OpenerFunc(open), rotation.RootKeyOptions{
		ActiveURI:     activeURI,
		PollInterval:  cfg.Cache.SyncInterval,
		LeaseTTL:      cfg.Scheduler.LeaseTTL,
		PKCS11Modules: modules,
		Verified:      chain.verified,
		Latest:        latest,
		Logger:        logger,
	})
	if err != nil {
		return nil, err
	}
	ok = true
	return rk, nil
}

// trustedChain is what walkRotations trusts: root keys, opened, with their
// URIs, and the rotations endorsed by a trusted root key.
type trustedChain struct {
	keys map[string]kms.RootKey // by id; take moves one out
	uris map[string]string      // by id, of every key trusted
	// verified are the rotations endorsed by a trusted old root key (or,
	// recorded before endorsements were kept, from a trusted key to the
	// configured one), oldest first; latestVerified says whether the
	// latest is one.
	verified       []store.RootKeyRotation
	latestVerified bool
}

// take returns the trusted key id and leaves it to the caller to close.
func (c *trustedChain) take(id string) kms.RootKey {
	k := c.keys[id]
	delete(c.keys, id)
	return k
}

// closeRest closes the keys not taken.
func (c *trustedChain) closeRest() {
	for id, k := range c.keys {
		_ = k.Close()
		delete(c.keys, id)
	}
}

// checkRootKeysInUse refuses to start (rotation.ErrMissingRotation) when
// the store holds keysets under a root key other than the active one and,
// when needFrom, the old root key of the latest rotation: the rotation
// records cannot account for them. Deleting the latest rotations would
// otherwise start the server on an earlier root key, unnoticed.
func checkRootKeysInUse(ctx context.Context, st store.Store, activeID string, latest store.RootKeyRotation, needFrom bool) error {
	ids, err := st.RootKeyIDsInUse(ctx)
	if err != nil {
		return fmt.Errorf("listing the root keys of the stored keysets: %w", err)
	}
	var unknown []string
	for _, id := range ids {
		if id != activeID && (!needFrom || id != latest.FromID) {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	accounted := fmt.Sprintf("the key store has no root-key rotation, so root_key.uri's root key %s is the active one", activeID)
	if latest.ID != "" {
		accounted = fmt.Sprintf("the active root key is %s, the new key of the key store's latest root-key rotation %s (%s)", activeID, latest.ID, latest.State)
		if needFrom {
			accounted += fmt.Sprintf(", and keysets under its old root key %s are being re-wrapped", latest.FromID)
		}
	}
	return fmt.Errorf("%w: keysets in the key store are wrapped by root key %s, but %s: the rotations that moved keysets there are missing from the key store (deleted or cut: the server refuses to start rather than serve on an earlier root key), root_key.uri names a root key this key store never used, or keysets were written under a retired root key",
		rotation.ErrMissingRotation, strings.Join(unknown, ", "), accounted)
}

// checkChain checks that the store's rotations (oldest first) form one
// chain, each naming the one before it (PrevID; the first names none), as
// Start records them: the endorsements cover PrevID, so that the store's
// order, which is not endorsed, cannot be changed unnoticed. Errors wrap
// rotation.ErrUnendorsedRotation and name job ids only.
func checkChain(jobs []store.RootKeyRotation) error {
	prev := ""
	for _, job := range jobs {
		if job.PrevID != prev {
			what := fmt.Sprintf("job %s", prev)
			if prev == "" {
				what = "none (it is the first)"
			}
			return fmt.Errorf("%w: the key store's root-key rotations are not one chain: rotation %s names %q as the rotation before it, but the key store's rotation before it is %s; rotation records were reordered, deleted or inserted (by someone who can write to the key store, or by restoring part of a backup)",
				rotation.ErrUnendorsedRotation, job.ID, job.PrevID, what)
		}
		prev = job.ID
	}
	return nil
}

// walkRotations decides which root keys the store's rotations (jobs, oldest
// first) may use, starting from anchor, the root key root_key.uri names
// (opened from anchorURI), which it trusts. The jobs must form one chain
// (checkChain), so that the walk ends at the latest job. When anchor is
// the latest rotation's new key, nothing else is needed. Otherwise it walks
// the rotations from the last one that moves from or to anchor: each must be
// endorsed by its old root key, trusted already ([rotation.VerifyEndorsement]),
// and then its new key is opened (it must have the recorded id) and
// trusted. A rotation whose old key is not trusted but whose new key is
// adds nothing and is passed over (its old key stays untrusted). A
// rotation recorded without an endorsement (by an earlier tresor) is
// accepted only when its new key is anchor. Any other rotation, or a
// chain that does not reach anchor, stops the walk with an error wrapping
// rotation.ErrUnendorsedRotation that names the job and the root key ids
// (never URIs). The keys it opened, anchor included, are in the result's
// keys, and closed on error.
func walkRotations(ctx context.Context, jobs []store.RootKeyRotation, anchor kms.RootKey, anchorURI string, open func(context.Context, string) (kms.RootKey, error)) (*trustedChain, error) {
	c := &trustedChain{
		keys: map[string]kms.RootKey{anchor.ID(): anchor},
		uris: map[string]string{anchor.ID(): anchorURI},
	}
	if len(jobs) == 0 {
		return c, nil
	}
	fail := func(err error) (*trustedChain, error) {
		c.closeRest()
		return nil, err
	}
	if err := checkChain(jobs); err != nil {
		return fail(err)
	}
	anchorID := anchor.ID()
	latest := jobs[len(jobs)-1]
	hint := fmt.Sprintf("the key store's latest rotation is job %s, to root key %s. If the rotations are genuine and root_key.uri should name a later root key, set root_key.uri to the URI of the current root key, if that is intended; otherwise someone who can write to the key store may have recorded them", latest.ID, latest.ToID)
	from := -1
	for i := len(jobs) - 1; i >= 0 && from < 0; i-- {
		if jobs[i].FromID == anchorID || jobs[i].ToID == anchorID {
			from = i
		}
	}
	if from < 0 {
		return fail(fmt.Errorf("%w: no root-key rotation in the key store moves from or to root key %s, which root_key.uri names, so none can be verified; %s", rotation.ErrUnendorsedRotation, anchorID, hint))
	}
	for _, job := range jobs[from:] {
		_, fromTrusted := c.keys[job.FromID]
		_, toTrusted := c.keys[job.ToID]
		switch {
		case !fromTrusted && toTrusted:
			continue
		case !fromTrusted:
			return fail(fmt.Errorf("%w: root-key rotation %s moves from root key %s, which is not a root key trusted on the way from root_key.uri's root key %s; %s", rotation.ErrUnendorsedRotation, job.ID, job.FromID, anchorID, hint))
		case len(job.Endorsement) == 0 && job.ToID != anchorID:
			return fail(fmt.Errorf("%w: root-key rotation %s, from root key %s to %s, has no endorsement (recorded by an earlier tresor, or not by tresor), and its new root key is not root_key.uri's root key %s; %s", rotation.ErrUnendorsedRotation, job.ID, job.FromID, job.ToID, anchorID, hint))
		case len(job.Endorsement) == 0:
			c.verified = append(c.verified, job)
			continue
		}
		if err := rotation.VerifyEndorsement(ctx, c.keys[job.FromID], job); err != nil {
			if errors.Is(err, rotation.ErrUnendorsedRotation) {
				return fail(fmt.Errorf("root-key rotation %s, from root key %s to %s, is refused: %w; %s", job.ID, job.FromID, job.ToID, err, hint))
			}
			return fail(fmt.Errorf("verifying root-key rotation %s: %w", job.ID, err))
		}
		if isLocalFileURI(job.ToURI) && !isLocalFileURI(c.uris[job.FromID]) {
			return fail(fmt.Errorf("%w: root-key rotation %s moves from root key %s, not a local-file key, to the local-file key %s", rotation.ErrUnendorsedRotation, job.ID, job.FromID, job.ToID))
		}
		if !toTrusted {
			k, err := open(ctx, job.ToURI)
			if err != nil {
				return fail(fmt.Errorf("the root key %s of root-key rotation %s: %w", job.ToID, job.ID, err))
			}
			if k.ID() != job.ToID {
				_ = k.Close()
				return fail(fmt.Errorf("the URI of root key %s (root-key rotation %s) now opens root key %s; refusing to serve with it", job.ToID, job.ID, k.ID()))
			}
			c.keys[job.ToID], c.uris[job.ToID] = k, job.ToURI
		}
		c.verified = append(c.verified, job)
	}
	c.latestVerified = len(c.verified) > 0 && c.verified[len(c.verified)-1].ID == latest.ID
	return c, nil
}

// isLocalFileURI reports whether uri names a local-file root key.
func isLocalFileURI(uri string) bool { return provider.Scheme(uri) == "local-file" }

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
