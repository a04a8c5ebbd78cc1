package rotation

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
)

// Endorsements of root-key rotation jobs.
//
// The key store does not choose the root key: anyone who can write to it
// (a database administrator, a stolen database credential, a restored
// backup) could otherwise record a rotation to a root key of their own, and
// the replicas would re-wrap every keyset to it. Start endorses each job
// with the old root key: the endorsement is a digest of the job's ids and
// URIs wrapped by that key (as audit checkpoints are tagged,
// internal/audit). A replica follows a job only when the endorsement
// unwraps, under an old root key it already trusts, to the job's digest; at
// start-up the trust begins with the configured root key (root_key.uri).
//
// The digest covers the job's PrevID, the ID of the job started before it,
// so that the endorsements fix the order of the jobs too: the store's own
// order (its seq column) is not endorsed, and without PrevID a job endorsed
// long ago could be made the latest again, rolling the replicas back to a
// retired root key. A replica follows a new job only when its PrevID is the
// job it followed last; at start-up every job must name the one before it.

// ErrUnendorsedRotation means a root-key rotation job in the key store is
// refused: it is not endorsed by a root key this process trusts (no
// endorsement, an endorsement by another key or of another job, ids, URIs
// or PrevID changed since it was endorsed, or an old root key the process
// does not trust), it is not where the chain of jobs puts it (its PrevID is
// not the job before it, or the job this replica followed last; it was
// followed before), or it names a new root key that Start would refuse. The
// job is not followed: nothing is re-wrapped, and no root key it names is
// added to the keyring (its old root key may be opened, to verify the
// endorsement, and is closed again).
var ErrUnendorsedRotation = errors.New("rotation: root-key rotation not endorsed by a trusted root key")

// ErrMissingRotation means the key store holds keysets under a root key
// that its rotation records do not account for: neither the active root
// key nor the old root key of the latest rotation. Rotation records were
// deleted or cut (which would otherwise roll the replicas back to an
// earlier root key), root_key.uri names a root key the store never used, or
// keysets were written under a retired root key. The server does not
// start.
var ErrMissingRotation = errors.New("rotation: keysets under a root key no root-key rotation accounts for")

const (
	// endorsementDomain starts every endorsed digest.
	endorsementDomain = "tresor root-key rotation v1"
	// endorsementLabel starts the associated data of every endorsement;
	// the old root key's id follows it.
	endorsementLabel = "tresor-root-key-rotation-endorsement-v1"
)

// endorsementDigest is what an endorsement wraps: SHA-256 over the domain,
// ID, PrevID, FromID, FromURI, ToID and ToURI, each preceded by its length
// (8 bytes, big-endian), so that no two jobs have one encoding.
func endorsementDigest(job store.RootKeyRotation) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	for _, f := range []string{endorsementDomain, job.ID, job.PrevID, job.FromID, job.FromURI, job.ToID, job.ToURI} {
		binary.BigEndian.PutUint64(n[:], uint64(len(f)))
		h.Write(n[:])
		io.WriteString(h, f)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// endorsementAAD is the associated data of the endorsements made by the
// root key fromID.
func endorsementAAD(fromID string) []byte {
	aad := make([]byte, 0, len(endorsementLabel)+1+len(fromID))
	aad = append(aad, endorsementLabel...)
	aad = append(aad, 0)
	return append(aad, fromID...)
}

// Endorse returns the endorsement of job by its old root key, from, whose
// id must be job.FromID: job's digest wrapped by from. Store it in
// job.Endorsement. Errors of from (kms.ErrUnavailable, ...) are wrapped.
func Endorse(ctx context.Context, from envelope.KEK, job store.RootKeyRotation) ([]byte, error) {
	if from == nil || from.ID() != job.FromID {
		return nil, fmt.Errorf("rotation: endorse job %s: the key given is not its old root key %q", job.ID, job.FromID)
	}
	d := endorsementDigest(job)
	e, err := from.Wrap(ctx, d[:], endorsementAAD(job.FromID))
	if err != nil {
		return nil, fmt.Errorf("rotation: endorse job %s with root key %q: %w", job.ID, job.FromID, err)
	}
	return e, nil
}

// VerifyEndorsement checks job.Endorsement with from, the root key whose id
// is job.FromID, which the caller trusts: it unwraps the endorsement and
// compares it with job's digest in constant time. It returns an error
// wrapping ErrUnendorsedRotation when the job has no endorsement or it does
// not verify, and one wrapping the key's own error when from cannot be used
// (kms.ErrUnavailable, kms.ErrClosed, the context's error): then the job is
// neither trusted nor known to be forged.
func VerifyEndorsement(ctx context.Context, from envelope.KEK, job store.RootKeyRotation) error {
	if from == nil || from.ID() != job.FromID {
		return fmt.Errorf("%w: job %s: the key given is not its old root key %q", ErrUnendorsedRotation, job.ID, job.FromID)
	}
	if len(job.Endorsement) == 0 {
		return fmt.Errorf("%w: job %s has no endorsement", ErrUnendorsedRotation, job.ID)
	}
	got, err := from.Unwrap(ctx, job.Endorsement, endorsementAAD(job.FromID))
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, kms.ErrUnavailable) || errors.Is(err, kms.ErrClosed) ||
			errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("rotation: verify the endorsement of job %s with root key %q: %w", job.ID, job.FromID, err)
		}
		return fmt.Errorf("%w: job %s: its endorsement does not unwrap with its old root key %q", ErrUnendorsedRotation, job.ID, job.FromID)
	}
	d := endorsementDigest(job)
	if subtle.ConstantTimeCompare(got, d[:]) != 1 {
		return fmt.Errorf("%w: job %s: its endorsement by root key %q is not of this job (its ids, URIs or previous job differ)", ErrUnendorsedRotation, job.ID, job.FromID)
	}
	return nil
}
