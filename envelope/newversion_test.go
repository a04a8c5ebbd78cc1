package envelope

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/tresorkms/tresor/internal/store"
)

// TestDecryptNewerVersionFromOtherReplica: a ciphertext sealed through A
// with a version A just rotated to decrypts on B at once, without waiting
// for B's next SyncCache (found by tresor soak: Decrypt and RevealDocument
// failed with "decryption failed" for up to cache.sync_interval after every
// rotation made through another replica). A version the store does not
// hold still fails, and costs no root-key call.
func TestDecryptNewerVersionFromOtherReplica(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []store.KeyType{store.KeyTypeAES256GCM, store.KeyTypeAES256SIV} {
		t.Run(typ.String(), func(t *testing.T) {
			rings, kek, _ := replicas(t, 2, Options{})
			a, b := rings[0], rings[1]
			if _, err := a.CreateKey(ctx, KeySpec{Name: "k", Type: typ}); err != nil {
				t.Fatal(err)
			}
			pt, aad := []byte("IBAN DE89370400440532013000"), []byte("customer=42")
			ct1, _, err := b.Encrypt(ctx, "k", pt, aad) // B caches version 1
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.RotateKey(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			ct2, ref, err := a.Encrypt(ctx, "k", pt, aad)
			if err != nil || ref.Version != 2 {
				t.Fatalf("A.Encrypt() after rotation = version %d, %v; want 2, nil", ref.Version, err)
			}
			for _, tc := range []struct {
				name string
				ct   []byte
			}{{"version 2 from A", ct2}, {"version 1", ct1}} {
				got, _, err := b.Decrypt(ctx, tc.ct, aad)
				if err != nil || !bytes.Equal(got, pt) {
					t.Errorf("B.Decrypt(%s, aad) = %d bytes, %v; want the %d bytes of the plaintext, nil", tc.name, len(got), err, len(pt))
				}
				out, _, err := b.Opener().AppendDecrypt(ctx, nil, tc.ct, aad)
				if err != nil || !bytes.Equal(out, pt) {
					t.Errorf("B.Opener().AppendDecrypt(%s, aad) = %d bytes, %v; want the %d bytes of the plaintext, nil", tc.name, len(out), err, len(pt))
				}
			}
			// A header naming version 3, which does not exist: one store
			// read, no unwrap, and the one opaque error.
			forged := bytes.Clone(ct2)
			p, ok := parse(forged)
			if !ok {
				t.Fatal("parse(ct2) failed")
			}
			forged[len(p.header)-1] = 3 // the header ends with the big-endian version
			if q, ok := parse(forged); !ok || q.version != 3 {
				t.Fatalf("forged header parses as version %d, %v; want 3", q.version, ok)
			}
			calls := kek.calls.Load()
			if _, _, err := b.Decrypt(ctx, forged, aad); !errors.Is(err, ErrDecrypt) {
				t.Errorf("B.Decrypt(version 3 header) err = %v, want ErrDecrypt", err)
			}
			if n := kek.calls.Load() - calls; n != 0 {
				t.Errorf("B.Decrypt(version 3 header) made %d root-key calls, want 0", n)
			}
		})
	}
}

// revisionCounter counts KeyRevisions reads.
type revisionCounter struct {
	store.Store
	n atomic.Int64
}

func (s *revisionCounter) KeyRevisions(ctx context.Context, names []string) (map[string]int64, error) {
	s.n.Add(1)
	return s.Store.KeyRevisions(ctx, names)
}

// TestMadeUpVersionsCostFewStoreReads: ciphertexts naming versions that do
// not exist read the key's revision at most once per newerCheckInterval, so
// that a caller cannot turn every Decrypt (or batch item) into a query.
func TestMadeUpVersionsCostFewStoreReads(t *testing.T) {
	ctx := context.Background()
	rings, _, clock := replicas(t, 1, Options{})
	r := rings[0]
	if _, err := r.CreateKey(ctx, KeySpec{Name: "k", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatal(err)
	}
	ct, _, err := r.Encrypt(ctx, "k", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := parse(ct)
	forged := bytes.Clone(ct)
	forged[len(p.header)-1] = 9
	counter := &revisionCounter{Store: r.store}
	r.store = counter
	for range 50 {
		if _, _, err := r.Decrypt(ctx, forged, nil); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("Decrypt(version 9) err = %v, want ErrDecrypt", err)
		}
	}
	if n := counter.n.Load(); n != 1 {
		t.Errorf("50 decryptions of a made-up version read revisions %d times, want 1", n)
	}
	clock.Advance(newerCheckInterval)
	if _, _, err := r.Decrypt(ctx, forged, nil); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Decrypt(version 9) err = %v, want ErrDecrypt", err)
	}
	if n := counter.n.Load(); n != 2 {
		t.Errorf("after newerCheckInterval, revision reads = %d, want 2", n)
	}
}
