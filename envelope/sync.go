package envelope

import (
	"context"
	"fmt"
	"maps"
	"slices"
)

// SyncCache drops every cached key that changed in the store since it was
// cached (a newer revision, say a rotation or a state change made by
// another replica) or that is gone, so that the next use reads it afresh.
// It costs one store round trip per 1000 cached keys and no root-key call.
// Replicas sharing a store call it every few seconds (cache.sync_interval):
// that interval bounds how long one replica's change takes to be used by
// the others. It returns how many entries it dropped.
func (r *Keyring) SyncCache(ctx context.Context) (int, error) {
	cached := r.cache.revisions()
	if len(cached) == 0 {
		return 0, nil
	}
	stored, err := r.store.KeyRevisions(ctx, slices.Sorted(maps.Keys(cached)))
	if err != nil {
		return 0, fmt.Errorf("envelope: sync cache: %w", storeErr("", err))
	}
	dropped := 0
	for name, rev := range cached {
		current, ok := stored[name]
		switch {
		case !ok:
			if lk, ok := r.cache.peek(name); ok && lk.meta.Revision == rev {
				r.cache.remove(name, lk)
				dropped++
			}
		case current > rev:
			// invalidate also keeps a load that read the older revision
			// from putting it back.
			r.cache.invalidate(name, current)
			dropped++
		}
	}
	return dropped, nil
}
