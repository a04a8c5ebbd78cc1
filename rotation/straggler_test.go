package rotation

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
)

// waitLatest waits until the latest job satisfies ok.
func waitLatest(t *testing.T, st store.Store, timeout time.Duration, ok func(store.RootKeyRotation) bool) store.RootKeyRotation {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		job, err := st.LatestRootKeyRotation(context.Background())
		if err == nil && ok(job) {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("latest root-key rotation after %v = %+v, %v; not the one awaited", timeout, job, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStragglerAfterDone: a replica that missed the switch writes a keyset
// under the old root key after the job finished; the running replicas
// find it without a restart, and exactly one starts a follow-up job that
// re-wraps it.
func TestStragglerAfterDone(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	uri1, uri2 := keyFile(t), keyFile(t)
	a := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	b := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	stale := newReplica(t, st, nil, uri1, nil, fastOptions(t)) // holds the old key only, does not run
	items := seal(t, a.ring, "k", 5)
	job, err := a.rot.Start(ctx, uri2)
	if err != nil {
		t.Fatalf("Start() err = %v, want nil", err)
	}
	a.run(t)
	b.run(t)
	done := waitDone(t, st, 30*time.Second)
	if done.ID != job.ID {
		t.Fatalf("done job = %s, want %s", done.ID, job.ID)
	}
	// Past the startup check of both replicas: only the periodic one can
	// find the straggler now.
	time.Sleep(100 * time.Millisecond)
	items = append(items, seal(t, stale.ring, "straggler", 1)...)
	if n, err := st.CountKeysByRootKey(ctx, job.FromID); err != nil || n != 2 {
		t.Fatalf("CountKeysByRootKey(old) after the straggler wrote = %d, %v; want 2", n, err)
	}
	followUp := waitLatest(t, st, 30*time.Second, func(j store.RootKeyRotation) bool {
		return j.ID != job.ID && j.State == store.RotationDone
	})
	if followUp.FromID != job.FromID || followUp.ToID != job.ToID || followUp.Total != 2 || followUp.Rewrapped != 2 {
		t.Errorf("follow-up job = %+v; want 2 of 2 keysets re-wrapped from %q to %q", followUp, job.FromID, job.ToID)
	}
	if n, err := st.CountKeysByRootKey(ctx, job.FromID); err != nil || n != 0 {
		t.Errorf("CountKeysByRootKey(old) after the follow-up = %d, %v; want 0", n, err)
	}
	// Exactly one follow-up: the next checks find nothing left.
	time.Sleep(500 * time.Millisecond)
	if latest, err := st.LatestRootKeyRotation(ctx); err != nil || latest.ID != followUp.ID {
		t.Errorf("latest job = %+v, %v; want still the follow-up %s", latest, err, followUp.ID)
	}
	fresh := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	if got := fresh.roots.IDs(); !slices.Equal(got, []string{job.ToID}) {
		t.Errorf("root keys of a replica started now = %q, want only %q", got, job.ToID)
	}
	check(t, fresh.ring, items)
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Count(s.b.Bytes(), []byte(sub))
}

// TestStragglerOldKeyGone: when the old root key can no longer be opened
// (retired after the job), the periodic check starts no job, keeps Run
// out of backoff and reports the keysets left behind once.
func TestStragglerOldKeyGone(t *testing.T) {
	ctx := context.Background()
	st := openSQLite(t)
	uri1, uri2 := keyFile(t), keyFile(t)
	a := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	stale := newReplica(t, st, nil, uri1, nil, fastOptions(t))
	seal(t, a.ring, "k", 2)
	job, err := a.rot.Start(ctx, uri2)
	if err != nil {
		t.Fatal(err)
	}
	stopA := a.run(t)
	waitDone(t, st, 30*time.Second)
	stopA()
	// b starts after the job: it holds the new key only, and the old one
	// is gone.
	retired := OpenerFunc(func(ctx context.Context, uri string) (kms.RootKey, error) {
		if uri == uri1 {
			return nil, errors.New("root key retired")
		}
		return openKey(ctx, uri)
	})
	var logs syncBuffer
	opts := fastOptions(t)
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b := newReplica(t, st, nil, uri2, retired, opts)
	b.run(t)
	time.Sleep(100 * time.Millisecond) // past b's startup check
	seal(t, stale.ring, "straggler", 1)
	time.Sleep(time.Second) // some 5 periodic checks
	if latest, err := st.LatestRootKeyRotation(ctx); err != nil || latest.ID != job.ID {
		t.Errorf("latest job = %+v, %v; want still %s: the old key cannot re-wrap", latest, err, job.ID)
	}
	if n := logs.count("which cannot be opened"); n != 1 {
		t.Errorf("keysets under the retired root key reported %d times, want once; log:\n%s", n, logs.String())
	}
	if n := logs.count("will retry"); n != 0 {
		t.Errorf("Run backed off %d times, want none; log:\n%s", n, logs.String())
	}
}
