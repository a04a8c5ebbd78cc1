// Package pkcs11 is tresor's root key in a PKCS#11 token (an HSM, or SoftHSM2
// for tests and development): an AES-256 key that never leaves the token and
// wraps keysets with AES-256-GCM computed inside it.
//
// Reach for [Open] first (or kms/provider.Open, which dispatches on the URI
// scheme); [CreateRootKey] generates the key in the token once, at setup. A
// root key is named by an RFC 7512 URI, parsed by [ParseURI]:
//
//	pkcs11:token=tresor;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tresor/pin
//
// The user PIN is read from the pin-source file; pin-value is refused.
//
// A process initializes each module once (C_Initialize is process-wide) and
// shares it between root keys opened on it, finalizing it when the last one
// closes. It logs in to each token once. Each [RootKey] keeps a bounded pool
// of sessions ([WithSessions]), opened on first use; a session the token
// reports broken (session handle invalid, ...) is discarded, the call fails
// with kms.ErrUnavailable, and the next call opens a new session.
//
// A root key recovers by itself from a token that goes away and comes back.
// A call that finds the token gone (CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT,
// CKR_DEVICE_ERROR, CKR_SLOT_ID_INVALID, CKR_CRYPTOKI_NOT_INITIALIZED, ..., or
// a session or key handle gone while the token no longer answers
// C_GetTokenInfo, as SoftHSM2 does when its files vanish) marks the token
// unavailable: calls on every root key on it fail at once with
// kms.ErrUnavailable naming the token. One call at a time, paced by
// [WithRecoveryBackoff], tries to recover it: it looks for the token by
// label on a fresh slot list and, if it is not there, re-initializes the
// module (C_Finalize, C_Initialize: SoftHSM2 sees a token that came back
// only then; the slot may change), once for all the root keys sharing the
// module, never under a call in flight; calls meanwhile fail at once. Then
// it logs in again and finds the key again by label and CKA_ID.
// Re-initializing ends every session on the module: root keys on its other
// tokens open new ones on their next call. [ErrKeyNotFound] is reported
// only when the token answers and the key is not in it.
//
// Wrapped output is 1 format-version byte, the 12-byte GCM IV, then the
// ciphertext and 16-byte tag. Any failed unwrap is kms.ErrUnwrap, with no
// detail. [RootKey.Stats] counts the operations sent to the token.
//
// The package needs cgo; built without it, it compiles but [Open] and
// [CreateRootKey] return [ErrNoCgo].
package pkcs11

import (
	"errors"
	"log/slog"
	"time"
)

// Errors from [Open] and [CreateRootKey], wrapped with detail (which token,
// which file) and never with a PIN.
var (
	// ErrNoCgo is returned by Open and CreateRootKey in a build without cgo.
	ErrNoCgo = errors.New("tresor was built without cgo; PKCS#11 is unavailable")
	// ErrPINIncorrect means the token rejected the PIN read from pin-source.
	ErrPINIncorrect = errors.New("pkcs11: PIN rejected")
	// ErrTokenNotFound means no token (or more than one) matches the URI.
	ErrTokenNotFound = errors.New("pkcs11: token not found")
	// ErrKeyNotFound means no AES secret key (or more than one) matches the URI.
	ErrKeyNotFound = errors.New("pkcs11: root key not found")
	// ErrKeyExists means CreateRootKey found a key with the label already.
	ErrKeyExists = errors.New("pkcs11: root key already exists")
)

// DefaultSessions is the session pool size unless [WithSessions] says otherwise.
const DefaultSessions = 8

// An Option tunes [Open] and [CreateRootKey].
type Option func(*options)

type options struct {
	sessions               int
	logger                 *slog.Logger
	minBackoff, maxBackoff time.Duration
}

// WithSessions bounds the root key's session pool to n sessions (n < 1
// keeps [DefaultSessions]). Sessions are opened when calls overlap; a call
// finding all n in use waits for one, honoring its context.
func WithSessions(n int) Option {
	return func(o *options) {
		if n >= 1 {
			o.sessions = n
		}
	}
}

// WithLogger logs opens and discarded sessions to l. It never logs a PIN.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// Default recovery backoff; see [WithRecoveryBackoff].
const (
	DefaultRecoveryMinBackoff = 2 * time.Second
	DefaultRecoveryMaxBackoff = 30 * time.Second
)

// WithRecoveryBackoff paces the recovery of a token found unavailable: the
// first call after the failure tries to recover it, then one call tries at
// most every lo, the wait doubling up to hi while the token stays away.
// Other calls fail at once with kms.ErrUnavailable. lo <= 0 keeps
// [DefaultRecoveryMinBackoff]; hi < lo is taken as lo.
func WithRecoveryBackoff(lo, hi time.Duration) Option {
	return func(o *options) {
		if lo > 0 {
			o.minBackoff, o.maxBackoff = lo, max(lo, hi)
		}
	}
}

func newOptions(opts []Option) options {
	o := options{sessions: DefaultSessions, logger: slog.New(slog.DiscardHandler),
		minBackoff: DefaultRecoveryMinBackoff, maxBackoff: DefaultRecoveryMaxBackoff}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Stats counts what a root key sent to its token.
type Stats struct {
	// Wraps and Unwraps count encrypt and decrypt operations sent to the token.
	Wraps, Unwraps uint64
	// SessionsOpened and SessionsDiscarded count the pool's sessions.
	SessionsOpened, SessionsDiscarded uint64
	// Recoveries counts the times this root key found its token available
	// again after an outage.
	Recoveries uint64
}

// Wrapped output format.
const (
	formatV1 = 1
	ivSize   = 12
	tagSize  = 16
	overhead = 1 + ivSize + tagSize
)
