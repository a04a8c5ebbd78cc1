// Package awskms is tresor's root key in AWS KMS: a symmetric KMS key that
// never leaves KMS, reached through the AWS SDK for Go v2.
//
// Reach for [Open] first (or kms/provider.Open, which dispatches on the URI
// scheme); [CreateRootKey] creates the KMS key (and an alias) once, at setup.
// A root key is named by a URI, parsed by [ParseURI]:
//
//	aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
//	aws-kms://alias/tresor-root?region=eu-west-1
//	aws-kms://alias/tresor-root?region=eu-west-2&endpoint=http://127.0.0.1:4566
//
// The key is a key ARN, an alias ARN, alias/NAME or a key id. The region
// comes from the ARN, else from region=, else from the SDK's default chain
// (AWS_REGION, the shared config profile). endpoint= overrides the KMS
// endpoint (https, or http on a loopback address only: local-kms, a VPC
// endpoint behind a local proxy). Credentials come from the SDK's default
// chain (environment, shared files, SSO, web identity, ECS or EC2 roles) and
// never from the URI.
//
// [RootKey.ID] is "aws-kms://" and the key ARN that KMS's DescribeKey
// returns when the key is opened, so an alias and an ARN of the same key
// give the same id, and the id is itself a URI that opens the key.
//
// # Wrapping
//
// KMS Encrypt takes 1 to 4096 bytes, and a root key must wrap any keyset,
// including an empty one. So Wrap is envelope encryption: KMS
// GenerateDataKey (AES_256, with the key id and the encryption context
// below) gives a fresh data key and its KMS ciphertext; the data key seals
// the plaintext with AES-256-GCM in process and is wiped. Unwrap sends the
// KMS ciphertext to KMS Decrypt with the key id pinned (a ciphertext of
// another KMS key fails) and the same encryption context, then opens the
// AES-GCM ciphertext. Either way it is one KMS call. Wrapped output is:
//
//	1 byte    format version (1)
//	2 bytes   length n of the KMS ciphertext, big-endian
//	n bytes   the KMS ciphertext of the data key
//	12 bytes  the AES-GCM nonce
//	rest      the AES-GCM ciphertext and 16-byte tag
//
// The AES-GCM additional data is the first 3+n bytes followed by the
// associated data, so the header is authenticated too.
//
// # Encryption context
//
// The associated data becomes the KMS encryption context, which KMS binds to
// its ciphertext and logs in CloudTrail (associated data is not secret).
// The encoding is deterministic:
//
//	empty associated data     no encryption context
//	up to 1024 bytes          {"tresor-aad": base64url(aad)}
//	longer                    {"tresor-aad-sha256": base64url(SHA-256(aad))}
//
// base64url is RFC 4648 §5 without padding. The hashed form keeps the
// context small; the full associated data is still bound by AES-GCM.
//
// # Errors
//
// Any failed unwrap (tampered or truncated input, wrong associated data, a
// ciphertext of another key) is kms.ErrUnwrap, with no detail. A KMS that
// cannot be reached, throttles, fails (5xx), or refuses the key (disabled,
// pending deletion, not found, access denied) is kms.ErrUnavailable: the
// message names the operation, the endpoint, and the KMS error code (with
// HTTP status and request id) or the network error, never payload bytes or
// KMS's own error text. A cancelled or expired context is returned as is.
// Calls after Close fail with kms.ErrClosed. [RootKey.Stats] counts calls.
//
// Without the SDK (built with -tags noawskms) the package compiles but
// [Open] and [CreateRootKey] return [ErrNotBuilt].
package awskms

import (
	"errors"
	"log/slog"
)

// Errors from [Open] and [CreateRootKey], wrapped with detail.
var (
	// ErrNotBuilt is returned by Open and CreateRootKey in a build with the
	// noawskms tag.
	ErrNotBuilt = errors.New("tresor was built without AWS KMS support (-tags noawskms)")
	// ErrKeyNotFound means KMS has no key the URI names.
	ErrKeyNotFound = errors.New("awskms: root key not found")
	// ErrKeyNotUsable means the key is not a symmetric ENCRYPT_DECRYPT key,
	// or is not enabled.
	ErrKeyNotUsable = errors.New("awskms: key cannot be a root key")
	// ErrKeyExists means CreateRootKey found the alias taken already.
	ErrKeyExists = errors.New("awskms: alias already exists")
)

// An Option tunes [Open] and [CreateRootKey].
type Option func(*options)

type options struct {
	logger      *slog.Logger
	maxAttempts int
}

// WithLogger logs opens and key creation to l.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithMaxAttempts sets how many times the SDK tries each KMS call (n >= 1;
// 1 means no retries). The default is the SDK's configuration (3 attempts
// with exponential backoff, unless AWS_MAX_ATTEMPTS or the profile says
// otherwise).
func WithMaxAttempts(n int) Option {
	return func(o *options) {
		if n >= 1 {
			o.maxAttempts = n
		}
	}
}

func newOptions(opts []Option) options {
	o := options{logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Stats counts what a root key sent to KMS.
type Stats struct {
	// Wraps and Unwraps count GenerateDataKey and Decrypt calls.
	Wraps, Unwraps uint64
	// Unavailable counts calls that failed with kms.ErrUnavailable.
	Unavailable uint64
}
