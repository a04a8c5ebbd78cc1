// Package rotation runs tresor's key-rotation jobs: the scheduler that
// rotates, retires and destroys named keys as time passes, and root-key
// rotation, which re-wraps every stored keyset from one root key to another.
//
// Reach for [NewScheduler] and [NewRootKeyRotator]; each returns a job whose
// Run method works until its context ends. Both run on every replica, and
// both use a lease in the key store so that exactly one replica at a time
// does the work (another takes over when the holder stops renewing it).
// Failures are logged and retried with exponential backoff; neither job
// ever stops for one.
//
// The [Scheduler] scans the keys page by page every interval
// ([SchedulerOptions.Interval]) and, for each key, destroys its material
// once its deletion time has passed ([envelope.Keyring.DestroyIfDue]),
// rotates it once its primary version is older than its rotation period
// ([envelope.Keyring.RotateIfDue]), and advances its minimum decryption
// version as its retention settings ask ([envelope.Keyring.RetireVersions]).
// [Scheduler.Tick] runs one scan and reports what it did; tests drive it
// with a fake clock. Rotation when a version reaches its usage limit is not
// the scheduler's: the keyring does it as it encrypts.
//
// The [RootKeyRotator] starts a root-key rotation to a new root-key URI
// ([RootKeyRotator.Start]), reports its progress ([RootKeyRotator.Status])
// and, in Run, re-wraps keysets in batches inside store transactions,
// recording progress so that it resumes after a crash. No ciphertext and no
// caller's wrapped data key changes. Every job is endorsed by the root key
// it leaves ([Endorse]) and names the job started before it (PrevID, which
// the endorsement covers), and a replica follows only the job after the
// one it followed last, when its endorsement verifies under a root key it
// already trusts ([VerifyEndorsement]): the key store alone can neither
// choose the root key nor roll it back. A replica that meets a
// keyset under a root key it does not hold yet follows at once
// ([envelope.RootKeys.Misses]).
package rotation
