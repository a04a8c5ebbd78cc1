package envelope

import (
	"context"
	"errors"
	"testing"

	"github.com/tresorkms/tresor/internal/store"
)

// TestSyncCacheAcrossReplicas: two replicas share a store; a rotation on A
// is used by B after B's next SyncCache, and so is a state change.
func TestSyncCacheAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	rings, kek, _ := replicas(t, 2, Options{})
	a, b := rings[0], rings[1]
	if _, err := a.CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatal(err)
	}
	if _, ref, err := b.Encrypt(ctx, "k", []byte("x"), nil); err != nil || ref.Version != 1 {
		t.Fatalf("B.Encrypt() = version %d, %v; want 1, nil", ref.Version, err)
	}
	if n, err := b.SyncCache(ctx); err != nil || n != 0 {
		t.Errorf("B.SyncCache() with nothing changed = %d, %v; want 0, nil", n, err)
	}
	if _, err := a.RotateKey(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	// Until it syncs, B may go on with version 1: its uses are reserved.
	if _, ref, err := b.Encrypt(ctx, "k", []byte("x"), nil); err != nil || ref.Version != 1 {
		t.Errorf("B.Encrypt() before SyncCache = version %d, %v; want the cached version 1", ref.Version, err)
	}
	calls := kek.calls.Load()
	if n, err := b.SyncCache(ctx); err != nil || n != 1 {
		t.Fatalf("B.SyncCache() after A rotated = %d, %v; want 1 dropped, nil", n, err)
	}
	if kek.calls.Load() != calls {
		t.Errorf("SyncCache made root-key calls")
	}
	if _, ref, err := b.Encrypt(ctx, "k", []byte("x"), nil); err != nil || ref.Version != 2 {
		t.Errorf("B.Encrypt() after SyncCache = version %d, %v; want 2, nil", ref.Version, err)
	}
	if _, err := a.ScheduleKeyDeletion(ctx, "k", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.SyncCache(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Encrypt(ctx, "k", []byte("x"), nil); !errors.Is(err, ErrKeyDeletionScheduled) {
		t.Errorf("B.Encrypt() after A scheduled deletion and B synced err = %v, want ErrKeyDeletionScheduled", err)
	}
}
