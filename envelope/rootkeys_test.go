package envelope

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/tresorkms/tresor/internal/store"
)

func TestNewRootKeys(t *testing.T) {
	a, b := newAEADKEK(t, "root-a"), newAEADKEK(t, "root-b")
	tests := []struct {
		name    string
		active  KEK
		others  []KEK
		wantErr bool
		wantIDs []string
	}{
		{"one", a, nil, false, []string{"root-a"}},
		{"two", a, []KEK{b}, false, []string{"root-a", "root-b"}},
		{"nil active", nil, nil, true, nil},
		{"no id", newAEADKEK(t, ""), nil, true, nil},
		{"twice", a, []KEK{a}, true, nil},
		{"nil other", a, []KEK{nil}, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewRootKeys(tt.active, tt.others...)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidArgument) {
					t.Errorf("NewRootKeys() err = %v, want ErrInvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewRootKeys() err = %v, want nil", err)
			}
			if got := s.IDs(); !slices.Equal(got, tt.wantIDs) || s.ID() != "root-a" {
				t.Errorf("IDs() = %q, ID() = %q; want %q, root-a", got, s.ID(), tt.wantIDs)
			}
		})
	}
}

func TestRootKeysChanges(t *testing.T) {
	a, b := newAEADKEK(t, "root-a"), newAEADKEK(t, "root-b")
	s, err := NewRootKeys(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetActive("root-b"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("SetActive(not held) err = %v, want ErrInvalidArgument", err)
	}
	if err := s.Add(b); err != nil {
		t.Fatalf("Add(b) err = %v, want nil", err)
	}
	if err := s.Add(newAEADKEK(t, "root-b")); err != nil || mustGet(t, s, "root-b") != b {
		t.Errorf("Add(another key with b's id) err = %v or replaced b; want nil and b kept", err)
	}
	if s.Active() != a {
		t.Errorf("Active() after Add = %q, want root-a", s.Active().ID())
	}
	if err := s.SetActive("root-b"); err != nil || s.Active() != b || s.ID() != "root-b" {
		t.Errorf("SetActive(root-b) err = %v, Active() = %q; want nil, root-b", err, s.Active().ID())
	}
	if _, ok := s.Remove("root-b"); ok {
		t.Error("Remove(active) = ok, want refused")
	}
	if k, ok := s.Remove("root-a"); !ok || k != a {
		t.Errorf("Remove(root-a) = %v, %v; want a, true", k, ok)
	}
	if _, ok := s.Get("root-a"); ok {
		t.Error("Get(root-a) after Remove = ok, want gone")
	}
}

func mustGet(t *testing.T, s *RootKeys, id string) KEK {
	t.Helper()
	k, ok := s.Get(id)
	if !ok {
		t.Fatalf("Get(%q) = not held", id)
	}
	return k
}

// TestKeyringOverRootKeys walks a root-key rotation at the keyring's level:
// keys wrapped by the old key, a switch to the new one, keys created after
// it, a re-wrap of the old ones, and a keyring holding only the new key.
func TestKeyringOverRootKeys(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	a, b := f.kek, newAEADKEK(t, "test-root-2")
	roots, err := NewRootKeys(a)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := New(f.store, roots, Options{Now: f.now.Now, AfterFunc: f.now.AfterFunc})
	if err != nil {
		t.Fatal(err)
	}
	type sealed struct{ key, pt, aad, ct []byte }
	var cts []sealed
	seal := func(name string, typ store.KeyType) {
		t.Helper()
		if _, err := ring.CreateKey(ctx, KeySpec{Name: name, Type: typ}); err != nil {
			t.Fatalf("CreateKey(%q) err = %v, want nil", name, err)
		}
		pt, aad := []byte("secret of "+name), []byte("aad "+name)
		ct, _, err := ring.Encrypt(ctx, name, pt, aad)
		if err != nil {
			t.Fatalf("Encrypt(%q) err = %v, want nil", name, err)
		}
		cts = append(cts, sealed{[]byte(name), pt, aad, ct})
	}
	seal("old-gcm", store.KeyTypeAES256GCM)
	seal("old-siv", store.KeyTypeAES256SIV)
	dk, err := ring.GenerateDataKey(ctx, "old-gcm", []byte("dk"))
	if err != nil {
		t.Fatalf("GenerateDataKey() err = %v, want nil", err)
	}

	if err := roots.Add(b); err != nil {
		t.Fatal(err)
	}
	if err := roots.SetActive(b.ID()); err != nil {
		t.Fatal(err)
	}
	seal("new-gcm", store.KeyTypeAES256GCM)
	if _, err := ring.RotateKey(ctx, "old-siv"); err != nil {
		t.Fatalf("RotateKey(old-siv) err = %v, want nil", err)
	}
	wantRoot := map[string]string{"old-gcm": a.ID(), "old-siv": b.ID(), "new-gcm": b.ID()}
	for name, want := range wantRoot {
		k, err := f.store.GetKey(ctx, name)
		if err != nil || k.RootKeyID != want {
			t.Errorf("GetKey(%q).RootKeyID = %q, %v; want %q (new keysets are wrapped by the active key)", name, k.RootKeyID, err, want)
		}
	}

	k, err := f.store.GetKey(ctx, "old-gcm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RewrapKeyset(ctx, k, b, a); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("RewrapKeyset(from the wrong key) err = %v, want ErrInvalidArgument", err)
	}
	bad := k
	bad.WrappedKeyset = bytes.Clone(k.WrappedKeyset)
	bad.WrappedKeyset[len(bad.WrappedKeyset)-1] ^= 1
	if _, err := RewrapKeyset(ctx, bad, a, b); !errors.Is(err, ErrKeysetUnreadable) {
		t.Errorf("RewrapKeyset(tampered) err = %v, want ErrKeysetUnreadable", err)
	}
	renamed := k
	renamed.Name = "other"
	if _, err := RewrapKeyset(ctx, renamed, a, b); !errors.Is(err, ErrKeysetUnreadable) {
		t.Errorf("RewrapKeyset(under another name) err = %v, want ErrKeysetUnreadable (the name is bound)", err)
	}
	nk, err := RewrapKeyset(ctx, k, a, b)
	if err != nil {
		t.Fatalf("RewrapKeyset() err = %v, want nil", err)
	}
	if nk.RootKeyID != b.ID() || nk.Revision != k.Revision || nk.Name != k.Name || bytes.Equal(nk.WrappedKeyset, k.WrappedKeyset) {
		t.Errorf("RewrapKeyset() = root %q revision %d; want root %q, revision %d, a new wrapped keyset", nk.RootKeyID, nk.Revision, b.ID(), k.Revision)
	}
	if _, err := f.store.UpdateKey(ctx, nk); err != nil {
		t.Fatalf("UpdateKey(re-wrapped) err = %v, want nil", err)
	}

	// A keyring holding only the new key reads everything: the keyring
	// of a replica started after the rotation.
	onlyB, err := New(f.store, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cts {
		pt, _, err := onlyB.Decrypt(ctx, c.ct, c.aad)
		if err != nil || !bytes.Equal(pt, c.pt) {
			t.Errorf("Decrypt(ct of %s) with only the new root key = %q, %v; want the plaintext", c.key, pt, err)
		}
	}
	if pt, _, err := onlyB.Decrypt(ctx, dk.Ciphertext, []byte("dk")); err != nil || !bytes.Equal(pt, dk.Plaintext) {
		t.Errorf("Decrypt(wrapped data key) with only the new root key err = %v, want the data key", err)
	}
	// And a keyring holding only the old key no longer reads them.
	onlyA, err := New(f.store, a, Options{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-onlyA.roots.Misses():
		t.Error("Misses() signalled before any keyset named a root key not held")
	default:
	}
	if _, _, err := onlyA.Decrypt(ctx, cts[0].ct, cts[0].aad); !errors.Is(err, ErrKeysetUnreadable) || !errors.Is(err, ErrRootKeyNotHeld) {
		t.Errorf("Decrypt with only the old root key after the re-wrap err = %v, want ErrKeysetUnreadable and ErrRootKeyNotHeld", err)
	}
	// The miss is signalled, once, for the rotator to follow at once.
	select {
	case <-onlyA.roots.Misses():
	default:
		t.Error("Misses() not signalled after a keyset named a root key not held")
	}
}
