package envelope

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"

	"github.com/tresorkms/tresor/internal/store"
)

// RootKeys is the set of root keys a Keyring holds, by id. The active one
// wraps every new keyset; each one unwraps the keysets stored with its id
// (store.Key.RootKeyID). During a root-key rotation the set holds the old
// key and the new one: the new one is active from the moment the job
// starts, and the old one keeps unwrapping until every keyset is re-wrapped.
//
// A RootKeys is itself a [KEK] for its active key, so it can be given to
// [New] wherever a KEK is. Its methods are safe for concurrent use; reads
// take no lock.
type RootKeys struct {
	mu  sync.Mutex // serializes changes; readers load set
	set atomic.Pointer[rootKeySet]
	// misses is signalled (without blocking) when a keyset names a root
	// key the set does not hold; see Misses.
	misses chan struct{}
}

// rootKeySet is one immutable state of a RootKeys.
type rootKeySet struct {
	active KEK
	byID   map[string]KEK
}

var _ KEK = (*RootKeys)(nil)

// NewRootKeys returns a set holding active, which wraps new keysets, and
// others, which only unwrap. Every key needs a non-empty id, and no two
// keys may share one.
func NewRootKeys(active KEK, others ...KEK) (*RootKeys, error) {
	if active == nil || active.ID() == "" {
		return nil, fmt.Errorf("%w: NewRootKeys needs an active root key with an id", ErrInvalidArgument)
	}
	byID := map[string]KEK{active.ID(): active}
	for _, k := range others {
		if k == nil || k.ID() == "" {
			return nil, fmt.Errorf("%w: NewRootKeys: a root key without an id", ErrInvalidArgument)
		}
		if _, dup := byID[k.ID()]; dup {
			return nil, fmt.Errorf("%w: NewRootKeys: root key %q given twice", ErrInvalidArgument, k.ID())
		}
		byID[k.ID()] = k
	}
	s := &RootKeys{misses: make(chan struct{}, 1)}
	s.set.Store(&rootKeySet{active: active, byID: byID})
	return s, nil
}

// Misses receives a value after a keyset was found wrapped by a root key
// the set does not hold: another replica has rotated the root key. The
// root-key rotator waits on it to follow at once rather than at its next
// poll. Misses close together are signalled once.
func (s *RootKeys) Misses() <-chan struct{} { return s.misses }

// missed signals Misses.
func (s *RootKeys) missed() {
	select {
	case s.misses <- struct{}{}:
	default:
	}
}

// Active returns the root key that wraps new keysets.
func (s *RootKeys) Active() KEK { return s.set.Load().active }

// Get returns the root key with the given id.
func (s *RootKeys) Get(id string) (KEK, bool) {
	k, ok := s.set.Load().byID[id]
	return k, ok
}

// IDs returns the ids of the keys held, sorted.
func (s *RootKeys) IDs() []string {
	return slices.Sorted(maps.Keys(s.set.Load().byID))
}

// Add adds a root key that unwraps the keysets stored with its id. Adding a
// key whose id is held already changes nothing.
func (s *RootKeys) Add(k KEK) error {
	if k == nil || k.ID() == "" {
		return fmt.Errorf("%w: RootKeys.Add: a root key without an id", ErrInvalidArgument)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.set.Load()
	if _, ok := cur.byID[k.ID()]; ok {
		return nil
	}
	byID := maps.Clone(cur.byID)
	byID[k.ID()] = k
	s.set.Store(&rootKeySet{active: cur.active, byID: byID})
	return nil
}

// SetActive makes the held root key with the given id the one that wraps
// new keysets. The previous active key stays held and keeps unwrapping.
func (s *RootKeys) SetActive(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.set.Load()
	k, ok := cur.byID[id]
	if !ok {
		return fmt.Errorf("%w: RootKeys.SetActive: root key %q is not held", ErrInvalidArgument, id)
	}
	if cur.active.ID() != id {
		s.set.Store(&rootKeySet{active: k, byID: cur.byID})
	}
	return nil
}

// Remove drops the root key with the given id, which must not be the
// active one, and returns it for the caller to close. Keysets still
// stored with its id become unreadable to the Keyring.
func (s *RootKeys) Remove(id string) (KEK, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.set.Load()
	k, ok := cur.byID[id]
	if !ok || cur.active.ID() == id {
		return nil, false
	}
	byID := maps.Clone(cur.byID)
	delete(byID, id)
	s.set.Store(&rootKeySet{active: cur.active, byID: byID})
	return k, true
}

// ID returns the active root key's id.
func (s *RootKeys) ID() string { return s.Active().ID() }

// Wrap wraps with the active root key.
func (s *RootKeys) Wrap(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	return s.Active().Wrap(ctx, plaintext, associatedData)
}

// Unwrap unwraps with the active root key. To unwrap with the key that
// wrapped a given keyset, Get it by the keyset's root key id.
func (s *RootKeys) Unwrap(ctx context.Context, wrapped, associatedData []byte) ([]byte, error) {
	return s.Active().Unwrap(ctx, wrapped, associatedData)
}

// RewrapKeyset returns k with its keyset re-wrapped: unwrapped by from,
// which must be the root key k.RootKeyID names, and wrapped by to, bound to
// k.Name and to's id. Only WrappedKeyset and RootKeyID change; the keyset
// itself, and so every ciphertext and data key under it, stays the same.
// The unwrapped keyset never leaves this function.
//
// A keyset from cannot unwrap fails with [ErrKeysetUnreadable]; errors of
// the root keys are wrapped with %w, so errors.Is(err, kms.ErrUnavailable)
// tells an outage from a bad keyset.
func RewrapKeyset(ctx context.Context, k store.Key, from, to KEK) (store.Key, error) {
	if from == nil || to == nil {
		return store.Key{}, fmt.Errorf("%w: RewrapKeyset needs two root keys", ErrInvalidArgument)
	}
	if k.RootKeyID != from.ID() {
		return store.Key{}, fmt.Errorf("%w: key %q is wrapped by root key %q, not by %q", ErrInvalidArgument, k.Name, k.RootKeyID, from.ID())
	}
	var enc tinkpb.EncryptedKeyset
	if err := proto.Unmarshal(k.WrappedKeyset, &enc); err != nil || len(enc.GetEncryptedKeyset()) == 0 {
		return store.Key{}, fmt.Errorf("%w: key %q: malformed wrapped keyset", ErrKeysetUnreadable, k.Name)
	}
	pt, err := from.Unwrap(ctx, enc.GetEncryptedKeyset(), keysetAAD(k.Name, k.RootKeyID))
	if err != nil {
		return store.Key{}, fmt.Errorf("%w: key %q: %w", ErrKeysetUnreadable, k.Name, err)
	}
	defer clear(pt)
	// The keyset must parse, so that no re-wrap ever stores what Tink
	// could not read back.
	var ks tinkpb.Keyset
	if err := proto.Unmarshal(pt, &ks); err != nil || len(ks.GetKey()) == 0 {
		return store.Key{}, fmt.Errorf("%w: key %q: the unwrapped keyset does not parse", ErrKeysetUnreadable, k.Name)
	}
	toID := to.ID()
	wrapped, err := to.Wrap(ctx, pt, keysetAAD(k.Name, toID))
	if err != nil {
		return store.Key{}, fmt.Errorf("envelope: wrap keyset of key %q with root key %q: %w", k.Name, toID, err)
	}
	out, err := proto.Marshal(&tinkpb.EncryptedKeyset{EncryptedKeyset: wrapped})
	if err != nil {
		return store.Key{}, fmt.Errorf("envelope: key %q: %w", k.Name, err)
	}
	k.WrappedKeyset = out
	k.RootKeyID = toID
	k.Labels = maps.Clone(k.Labels)
	k.Versions = slices.Clone(k.Versions)
	return k, nil
}
