package rotation

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
)

// downKEK is a root key that can be made unreachable, as an HSM whose
// token is pulled out: every call then fails with kms.ErrUnavailable.
type downKEK struct {
	envelope.KEK
	down atomic.Bool
}

func (k *downKEK) Wrap(ctx context.Context, pt, aad []byte) ([]byte, error) {
	if k.down.Load() {
		return nil, fmt.Errorf("test HSM: token not present: %w", kms.ErrUnavailable)
	}
	return k.KEK.Wrap(ctx, pt, aad)
}

func (k *downKEK) Unwrap(ctx context.Context, ct, aad []byte) ([]byte, error) {
	if k.down.Load() {
		return nil, fmt.Errorf("test HSM: token not present: %w", kms.ErrUnavailable)
	}
	return k.KEK.Unwrap(ctx, ct, aad)
}

// TestScheduledRotationDuringRootKeyOutage: a key comes due while the root
// key is unreachable. The scheduler's rotation fails and writes nothing,
// backs off (1m, 2m, ...), and rotates the key exactly once when the root
// key is back; what was sealed before still decrypts.
func TestScheduledRotationDuringRootKeyOutage(t *testing.T) {
	ctx := context.Background()
	clock := &schedClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "keys.db"), store.WithClock(clock.Now))
	if err != nil {
		t.Fatalf("OpenSQLite() err = %v, want nil", err)
	}
	t.Cleanup(func() { st.Close() })
	kek := &downKEK{KEK: newMemKEK(t)}
	ring, err := envelope.New(st, kek, envelope.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	sched, err := NewScheduler(SchedulerOptions{
		Keyring: ring, Store: st, Holder: "replica-0", Interval: time.Minute, MaxBackoff: 4 * time.Minute,
		Now: clock.Now, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatalf("NewScheduler() err = %v, want nil", err)
	}
	mustCreate(t, ring, envelope.KeySpec{Name: "daily", RotationPeriod: 24 * time.Hour})
	ct, _, err := ring.Encrypt(ctx, "daily", []byte("before the outage"), nil)
	if err != nil {
		t.Fatalf("Encrypt() err = %v, want nil", err)
	}
	before := mustGet(t, ring, "daily")

	clock.Advance(24 * time.Hour)
	kek.down.Store(true)
	steps := []struct {
		name       string
		advance    time.Duration
		down       bool
		wantFailed int
		wantSkip   int
		wantRotate int
	}{
		{"due in the outage: fails, retry in 1m", 0, true, 1, 0, 0},
		{"backing off", 30 * time.Second, true, 0, 1, 0},
		{"fails again: retry in 2m", 30 * time.Second, true, 1, 0, 0},
		{"root key back, still backing off", time.Minute, false, 0, 1, 0},
		{"rotated once the backoff ends", time.Minute, false, 0, 0, 1},
		{"not twice", time.Minute, false, 0, 0, 0},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			clock.Advance(s.advance)
			kek.down.Store(s.down)
			rep := tick(t, sched)
			if rep.Failed != s.wantFailed || rep.Skipped != s.wantSkip || rep.Rotated != s.wantRotate {
				t.Errorf("Tick() = %+v, want %d failed, %d skipped, %d rotated", rep, s.wantFailed, s.wantSkip, s.wantRotate)
			}
			if s.down {
				if k := mustGet(t, ring, "daily"); k.Revision != before.Revision || k.PrimaryVersion != 1 {
					t.Errorf("key after a failed rotation = revision %d, primary %d; want revision %d, primary 1 (nothing written)", k.Revision, k.PrimaryVersion, before.Revision)
				}
			}
		})
	}
	if k := mustGet(t, ring, "daily"); k.PrimaryVersion != 2 || len(k.Versions) != 2 {
		t.Errorf("key after the outage = primary %d, %d versions; want 2, 2 (rotated once)", k.PrimaryVersion, len(k.Versions))
	}
	if pt, _, err := ring.Decrypt(ctx, ct, nil); err != nil || string(pt) != "before the outage" {
		t.Errorf("Decrypt(sealed before the outage) = %q, %v, want the plaintext, nil", pt, err)
	}
	if _, _, err := ring.Encrypt(ctx, "daily", []byte("after"), nil); err != nil {
		t.Errorf("Encrypt() after the outage err = %v, want nil", err)
	}
	if !strings.Contains(logs.String(), "provider unavailable") {
		t.Errorf("scheduler log = %q, want the failed rotation's cause", logs.String())
	}
}
