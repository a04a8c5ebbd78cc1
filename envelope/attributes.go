package envelope

import (
	"context"
	"errors"
	"fmt"
)

// Labels that tresor itself reads. Every other label is the caller's own.
const (
	// LabelOwner names the workload that owns a key, such as
	// "spiffe://bank.example/payments". Authorization policies compare it
	// with the caller's identity.
	LabelOwner = "owner"
	// LabelSensitivity is the sensitivity tier of the data under a key: one
	// of SensitivityTiers. A key without it is treated as restricted.
	LabelSensitivity = "sensitivity"
)

// SensitivityTiers are the values LabelSensitivity may take, least
// sensitive first.
var SensitivityTiers = []string{"public", "internal", "confidential", "restricted"}

// DefaultSensitivity is the tier of a key without a sensitivity label: the
// highest, so that a forgotten label never loosens a policy.
const DefaultSensitivity = "restricted"

func validSensitivity(v string) bool {
	for _, t := range SensitivityTiers {
		if v == t {
			return true
		}
	}
	return false
}

func checkSensitivityLabel(labels map[string]string) error {
	if v, ok := labels[LabelSensitivity]; ok && !validSensitivity(v) {
		return fmt.Errorf("%w: label %q must be one of public, internal, confidential, restricted", ErrInvalidArgument, LabelSensitivity)
	}
	return nil
}

// KeyAttributes are the parts of a key's metadata that authorization reads.
type KeyAttributes struct {
	Name string
	// Owner is the owner label, "" when unset.
	Owner string
	// Sensitivity is the sensitivity label, DefaultSensitivity when unset.
	Sensitivity string
	// Labels are all of the key's labels. The map is shared with the
	// keyset cache: read it, never change it.
	Labels map[string]string
}

// KeyAttributes returns what authorization needs to know about a key: from
// the keyset cache when the key is loaded (no store read, no allocation of
// labels), else from the store, without unwrapping the keyset, so that a
// caller who is then refused has not made tresor call the root key.
func (r *Keyring) KeyAttributes(ctx context.Context, name string) (KeyAttributes, error) {
	if lk, ok := r.cache.get(name); ok {
		return attributes(lk.meta.Name, lk.meta.Labels), nil
	}
	if err := checkKeyName(name); err != nil {
		return KeyAttributes{}, err
	}
	k, err := r.store.GetKey(ctx, name)
	if err != nil {
		err = storeErr(name, err)
		// In a store outage, a key still serving stale (see KeysetCache)
		// is authorized on the labels it serves with.
		if errors.Is(err, ErrStoreUnavailable) {
			if lk, _, ok := r.cache.staleEntry(name); ok {
				return attributes(lk.meta.Name, lk.meta.Labels), nil
			}
		}
		return KeyAttributes{}, err
	}
	return attributes(k.Name, k.Labels), nil
}

// AttributesOf returns the attributes a key named name with labels would
// have: for a key that does not exist yet (CreateKey).
func AttributesOf(name string, labels map[string]string) KeyAttributes {
	return attributes(name, labels)
}

func attributes(name string, labels map[string]string) KeyAttributes {
	a := KeyAttributes{Name: name, Owner: labels[LabelOwner], Sensitivity: labels[LabelSensitivity], Labels: labels}
	if !validSensitivity(a.Sensitivity) {
		a.Sensitivity = DefaultSensitivity
	}
	return a
}
