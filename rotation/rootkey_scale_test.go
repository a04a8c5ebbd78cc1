package rotation

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/internal/store/pgtest"
)

// Environment of TestRewrapScale.
const (
	// scaleEnv is how many keysets TestRewrapScale re-wraps; unset, the
	// test is skipped (it takes minutes at 100000).
	scaleEnv = "TRESOR_REWRAP_SCALE"
	// scaleRootEnv is "local-file" to use key files instead of the
	// SoftHSM2 token for the fill and the job.
	scaleRootEnv = "TRESOR_REWRAP_SCALE_ROOT"
)

// TestRewrapScale times a whole root-key job (default options) over many
// keysets, on SQLite and on PostgreSQL (pgtest: a fresh database on the
// local server). The store is filled first through a keyring, each keyset
// wrapped by the old root key under its own name; the fill is not timed.
//
//	TRESOR_REWRAP_SCALE=100000 go test -run TestRewrapScale -v -timeout 30m ./rotation
func TestRewrapScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv(scaleEnv))
	if n <= 0 {
		t.Skipf("set %s=100000 to time a root-key job over that many keysets", scaleEnv)
	}
	ctx := context.Background()
	fromURI, toURI := hsm.root1, hsm.root2
	if os.Getenv(scaleRootEnv) == "local-file" {
		fromURI, toURI = keyFile(t), keyFile(t)
	}
	backends := []struct {
		name  string
		open  func(t *testing.T) store.Store
		fills int // goroutines filling the store
	}{
		{"sqlite", func(t *testing.T) store.Store { return openSQLite(t) }, 1},
		{"postgres", func(t *testing.T) store.Store {
			st, err := store.OpenPostgres(ctx, pgtest.NewDatabase(t))
			if err != nil {
				t.Fatalf("OpenPostgres() err = %v", err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}, 8},
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := be.open(t)
			from, err := openKey(ctx, fromURI)
			if err != nil {
				t.Fatal(err)
			}
			defer from.Close()
			roots, err := envelope.NewRootKeys(from)
			if err != nil {
				t.Fatal(err)
			}
			ring, err := envelope.New(st, roots, envelope.Options{})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			var wg sync.WaitGroup
			for g := range be.fills {
				wg.Go(func() {
					for i := g; i < n; i += be.fills {
						if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: benchKeyName(i), Type: store.KeyTypeAES256GCM}); err != nil {
							t.Errorf("CreateKey() err = %v", err)
							return
						}
					}
				})
			}
			wg.Wait()
			if t.Failed() {
				t.FailNow()
			}
			fill := time.Since(start)
			rot, err := NewRootKeyRotator(st, roots, OpenerFunc(openKey), RootKeyOptions{ActiveURI: fromURI, Grace: time.Nanosecond, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			defer rot.Close()
			start = time.Now()
			if _, err := rot.Start(ctx, toURI); err != nil {
				t.Fatalf("Start() err = %v", err)
			}
			if err := rot.step(ctx); err != nil {
				t.Fatalf("job err = %v", err)
			}
			took := time.Since(start)
			job, err := st.LatestRootKeyRotation(ctx)
			if err != nil || job.State != store.RotationDone || job.Rewrapped != int64(n) {
				t.Fatalf("job = %+v, %v; want done with %d re-wrapped", job, err, n)
			}
			// Spot-check: keysets read back with the new root key alone.
			fresh, err := envelope.New(st, mustOpen(t, toURI), envelope.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range []int{0, n / 2, n - 1} {
				if _, _, err := fresh.Encrypt(ctx, benchKeyName(i), []byte("x"), nil); err != nil {
					t.Errorf("Encrypt(%s) with only the new root key err = %v", benchKeyName(i), err)
				}
			}
			t.Logf("%s, %s root keys: %d keysets re-wrapped in %v (%.0f keysets/s, batches of %d); filling the store took %v",
				be.name, rootKind(fromURI), n, took.Round(time.Millisecond), float64(n)/took.Seconds(), DefaultRewrapBatch, fill.Round(time.Millisecond))
		})
	}
}

func mustOpen(t *testing.T, uri string) envelope.KEK {
	t.Helper()
	k, err := openKey(context.Background(), uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

func rootKind(uri string) string {
	if isLocalFile(uri) {
		return "local-file"
	}
	return fmt.Sprintf("SoftHSM2 (%s)", hsm.token.Label)
}
