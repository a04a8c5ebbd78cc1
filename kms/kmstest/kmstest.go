// Package kmstest is the conformance suite every kms.RootKey provider
// passes. Call [Run] from the provider's tests with a function that opens a
// fresh root key:
//
//	func TestConformance(t *testing.T) {
//		kmstest.Run(t, func(t *testing.T) kms.RootKey { return openKey(t) })
//	}
//
// Each subtest opens its own key and closes it when done (Close must accept
// a second call). Every key newKey returns must be the same root key, so
// that its ID is stable across opens.
package kmstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tresorkms/tresor/kms"
)

// Run runs the conformance suite against the root keys newKey opens.
func Run(t *testing.T, newKey func(t *testing.T) kms.RootKey) {
	t.Helper()
	open := func(t *testing.T) kms.RootKey {
		t.Helper()
		k := newKey(t)
		if k == nil {
			t.Fatal("newKey returned nil")
		}
		t.Cleanup(func() { _ = k.Close() })
		return k
	}
	ctx := context.Background()

	t.Run("RoundTrip", func(t *testing.T) {
		k := open(t)
		tests := []struct {
			name string
			pt   []byte
			aad  []byte
		}{
			{"empty plaintext, nil aad", nil, nil},
			{"empty plaintext and aad", []byte{}, []byte{}},
			{"1 byte", []byte{0x42}, []byte("aad")},
			{"keyset-sized, empty aad", random(t, 150), nil},
			{"keyset-sized", random(t, 150), []byte("tenant=acme;key=payments")},
			{"block-aligned", random(t, 256), random(t, 32)},
			{"64 KiB", random(t, 64<<10), []byte("big")},
			{"large aad", random(t, 16), random(t, 4096)},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				wrapped, err := k.Wrap(ctx, tt.pt, tt.aad)
				if err != nil {
					t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
				}
				if bytes.Contains(wrapped, tt.pt) && len(tt.pt) >= 16 {
					t.Errorf("Wrap(pt, aad) output contains the plaintext")
				}
				got, err := k.Unwrap(ctx, wrapped, tt.aad)
				if err != nil {
					t.Fatalf("Unwrap(Wrap(pt, aad), aad) err = %v, want nil", err)
				}
				if !bytes.Equal(got, tt.pt) {
					t.Errorf("Unwrap(Wrap(pt, aad), aad) = %d bytes, want the %d plaintext bytes", len(got), len(tt.pt))
				}
			})
		}
	})

	t.Run("WrongAssociatedData", func(t *testing.T) {
		k := open(t)
		pt := random(t, 100)
		wrapped, err := k.Wrap(ctx, pt, []byte("key=a"))
		if err != nil {
			t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
		}
		for _, aad := range [][]byte{nil, []byte("key=b"), []byte("key=a "), []byte("key="), []byte("Key=a")} {
			if _, err := k.Unwrap(ctx, wrapped, aad); !errors.Is(err, kms.ErrUnwrap) {
				t.Errorf("Unwrap(wrapped, %q) err = %v, want kms.ErrUnwrap", aad, err)
			}
		}
	})

	t.Run("FlippedByte", func(t *testing.T) {
		k := open(t)
		aad := []byte("aad")
		wrapped, err := k.Wrap(ctx, []byte("short secret"), aad)
		if err != nil {
			t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
		}
		for i := range wrapped {
			for _, mask := range []byte{0x01, 0x80} {
				bad := bytes.Clone(wrapped)
				bad[i] ^= mask
				if _, err := k.Unwrap(ctx, bad, aad); !errors.Is(err, kms.ErrUnwrap) {
					t.Errorf("Unwrap(wrapped with byte %d ^ %#x, aad) err = %v, want kms.ErrUnwrap", i, mask, err)
				}
			}
		}
	})

	t.Run("Truncated", func(t *testing.T) {
		k := open(t)
		wrapped, err := k.Wrap(ctx, []byte("short secret"), nil)
		if err != nil {
			t.Fatalf("Wrap(pt, nil) err = %v, want nil", err)
		}
		for n := range len(wrapped) {
			if _, err := k.Unwrap(ctx, wrapped[:n], nil); !errors.Is(err, kms.ErrUnwrap) {
				t.Errorf("Unwrap(first %d of %d bytes, nil) err = %v, want kms.ErrUnwrap", n, len(wrapped), err)
			}
		}
		if _, err := k.Unwrap(ctx, append(bytes.Clone(wrapped), 0), nil); !errors.Is(err, kms.ErrUnwrap) {
			t.Errorf("Unwrap(wrapped + 1 byte, nil) err = %v, want kms.ErrUnwrap", err)
		}
	})

	t.Run("Empty", func(t *testing.T) {
		k := open(t)
		for _, in := range [][]byte{nil, {}} {
			if _, err := k.Unwrap(ctx, in, nil); !errors.Is(err, kms.ErrUnwrap) {
				t.Errorf("Unwrap(%#v, nil) err = %v, want kms.ErrUnwrap", in, err)
			}
		}
	})

	t.Run("ErrorHoldsNoSecret", func(t *testing.T) {
		k := open(t)
		pt := []byte("plaintext-canary-0123456789")
		aad := []byte("aad-canary")
		wrapped, err := k.Wrap(ctx, pt, aad)
		if err != nil {
			t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
		}
		_, err = k.Unwrap(ctx, wrapped, []byte("other"))
		if err == nil {
			t.Fatal("Unwrap(wrapped, other aad) err = nil, want kms.ErrUnwrap")
		}
		for _, s := range [][]byte{pt, aad} {
			if msg := err.Error(); bytes.Contains([]byte(msg), s) {
				t.Errorf("Unwrap error %q contains %q", msg, s)
			}
		}
	})

	t.Run("Randomized", func(t *testing.T) {
		k := open(t)
		pt := []byte("same plaintext")
		a, err := k.Wrap(ctx, pt, nil)
		if err != nil {
			t.Fatalf("Wrap(pt, nil) err = %v, want nil", err)
		}
		b, err := k.Wrap(ctx, pt, nil)
		if err != nil {
			t.Fatalf("Wrap(pt, nil) err = %v, want nil", err)
		}
		if bytes.Equal(a, b) {
			t.Error("two Wrap(pt, nil) returned the same bytes, want different (fresh IV)")
		}
	})

	t.Run("ID", func(t *testing.T) {
		k := open(t)
		id := k.ID()
		if id == "" {
			t.Fatal("ID() = \"\", want non-empty")
		}
		if again := k.ID(); again != id {
			t.Errorf("ID() = %q then %q, want stable", id, again)
		}
		if other := open(t).ID(); other != id {
			t.Errorf("ID() of a second open = %q, want %q", other, id)
		}
	})

	t.Run("CrossOpen", func(t *testing.T) {
		a, b := open(t), open(t)
		wrapped, err := a.Wrap(ctx, []byte("keyset"), []byte("aad"))
		if err != nil {
			t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
		}
		if err := a.Close(); err != nil {
			t.Fatalf("Close() err = %v, want nil", err)
		}
		got, err := b.Unwrap(ctx, wrapped, []byte("aad"))
		if err != nil || string(got) != "keyset" {
			t.Errorf("second open: Unwrap(wrapped, aad) = %q, %v, want \"keyset\", nil", got, err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		k := open(t)
		const goroutines, rounds = 16, 50
		var wg sync.WaitGroup
		errs := make(chan error, goroutines)
		for g := range goroutines {
			wg.Go(func() {
				for i := range rounds {
					pt := fmt.Appendf(nil, "goroutine %d round %d", g, i)
					aad := fmt.Appendf(nil, "aad %d", g)
					wrapped, err := k.Wrap(ctx, pt, aad)
					if err != nil {
						errs <- fmt.Errorf("Wrap(pt, aad) err = %w, want nil", err)
						return
					}
					got, err := k.Unwrap(ctx, wrapped, aad)
					if err != nil {
						errs <- fmt.Errorf("Unwrap(wrapped, aad) err = %w, want nil", err)
						return
					}
					if !bytes.Equal(got, pt) {
						errs <- fmt.Errorf("Unwrap(Wrap(%q)) = %q", pt, got)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		k := open(t)
		wrapped, err := k.Wrap(ctx, []byte("pt"), nil)
		if err != nil {
			t.Fatalf("Wrap(pt, nil) err = %v, want nil", err)
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := k.Wrap(cctx, []byte("pt"), nil); !errors.Is(err, context.Canceled) {
			t.Errorf("Wrap(cancelled ctx) err = %v, want context.Canceled", err)
		}
		if _, err := k.Unwrap(cctx, wrapped, nil); !errors.Is(err, context.Canceled) {
			t.Errorf("Unwrap(cancelled ctx) err = %v, want context.Canceled", err)
		}
	})

	t.Run("Closed", func(t *testing.T) {
		k := open(t)
		wrapped, err := k.Wrap(ctx, []byte("pt"), nil)
		if err != nil {
			t.Fatalf("Wrap(pt, nil) err = %v, want nil", err)
		}
		if err := k.Close(); err != nil {
			t.Fatalf("Close() err = %v, want nil", err)
		}
		if _, err := k.Wrap(ctx, []byte("pt"), nil); !errors.Is(err, kms.ErrClosed) {
			t.Errorf("Wrap after Close err = %v, want kms.ErrClosed", err)
		}
		if _, err := k.Unwrap(ctx, wrapped, nil); !errors.Is(err, kms.ErrClosed) {
			t.Errorf("Unwrap after Close err = %v, want kms.ErrClosed", err)
		}
		if err := k.Close(); err != nil {
			t.Errorf("second Close() err = %v, want nil", err)
		}
	})
}

func random(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("rand.Read err = %v, want nil", err)
	}
	return b
}
