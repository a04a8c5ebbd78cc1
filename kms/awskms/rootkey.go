//go:build !noawskms

package awskms

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	sdkkms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/tresorkms/tresor/kms"
)

// kmsAPI is the part of the SDK's KMS client a root key uses.
type kmsAPI interface {
	DescribeKey(ctx context.Context, in *sdkkms.DescribeKeyInput, optFns ...func(*sdkkms.Options)) (*sdkkms.DescribeKeyOutput, error)
	GenerateDataKey(ctx context.Context, in *sdkkms.GenerateDataKeyInput, optFns ...func(*sdkkms.Options)) (*sdkkms.GenerateDataKeyOutput, error)
	Decrypt(ctx context.Context, in *sdkkms.DecryptInput, optFns ...func(*sdkkms.Options)) (*sdkkms.DecryptOutput, error)
}

var _ kmsAPI = (*sdkkms.Client)(nil)

// RootKey is a symmetric KMS key in AWS KMS. It implements kms.RootKey and
// is safe for concurrent use.
type RootKey struct {
	id       string // "aws-kms://" + arn
	arn      string // the key ARN DescribeKey returned; every call pins it
	endpoint string // for messages
	api      kmsAPI
	logger   *slog.Logger

	closed                      atomic.Bool
	wraps, unwraps, unavailable atomic.Uint64
}

var _ kms.RootKey = (*RootKey)(nil)

// Open opens the root key the URI names (see [ParseURI]): it loads the AWS
// SDK configuration (credentials and, unless the URI says, the region from
// the default chain), then asks KMS DescribeKey for the key and checks that
// it is an enabled symmetric ENCRYPT_DECRYPT key. Every later call names
// the key by the ARN DescribeKey returned, so retargeting an alias does not
// change the key of an open RootKey. Errors wrap [ErrKeyNotFound],
// [ErrKeyNotUsable], kms.ErrInvalidURI or kms.ErrUnavailable.
func Open(ctx context.Context, uri string, opts ...Option) (*RootKey, error) {
	o := newOptions(opts)
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := newClient(ctx, u, o)
	if err != nil {
		return nil, err
	}
	return open(ctx, u, c.api, c.endpoint, o)
}

// client is an SDK KMS client and the name of its endpoint for messages.
type client struct {
	api      *sdkkms.Client
	endpoint string
}

// newClient makes an SDK KMS client for the URI's region and endpoint.
func newClient(ctx context.Context, u URI, o options) (client, error) {
	var load []func(*config.LoadOptions) error
	if u.Region != "" {
		load = append(load, config.WithRegion(u.Region))
	}
	if o.maxAttempts > 0 {
		load = append(load, config.WithRetryMaxAttempts(o.maxAttempts))
	}
	cfg, err := config.LoadDefaultConfig(ctx, load...)
	if err != nil {
		return client{}, fmt.Errorf("awskms: loading the AWS SDK configuration: %w", err)
	}
	if cfg.Region == "" {
		return client{}, fmt.Errorf("%w: awskms: no AWS region: name the key by its ARN, add region= to the URI, or set AWS_REGION", kms.ErrInvalidURI)
	}
	api := sdkkms.NewFromConfig(cfg, func(ko *sdkkms.Options) {
		if u.Endpoint != "" {
			ko.BaseEndpoint = aws.String(u.Endpoint)
		}
	})
	return client{api: api, endpoint: u.endpointName(cfg.Region)}, nil
}

// open finds the key and makes the RootKey. Tests call it with a fake api.
func open(ctx context.Context, u URI, api kmsAPI, endpoint string, o options) (*RootKey, error) {
	out, err := api.DescribeKey(ctx, &sdkkms.DescribeKeyInput{KeyId: aws.String(u.Key)})
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("awskms: open: DescribeKey on %s: %w", endpoint, cerr)
		}
		if errorCode(err) == "NotFoundException" {
			return nil, fmt.Errorf("%w: KMS at %s has no key %s (create it with CreateRootKey)", ErrKeyNotFound, endpoint, u.Key)
		}
		return nil, callError("open", "DescribeKey", endpoint, err, false)
	}
	md := out.KeyMetadata
	if md == nil || md.Arn == nil || *md.Arn == "" {
		return nil, fmt.Errorf("awskms: DescribeKey on %s returned no key ARN for %s", endpoint, u.Key)
	}
	arn := *md.Arn
	if _, err := checkARN(arn); err != nil || arnKeyID(arn) == "" {
		return nil, fmt.Errorf("awskms: DescribeKey on %s returned a malformed key ARN for %s", endpoint, u.Key)
	}
	switch {
	case md.KeySpec != "" && md.KeySpec != types.KeySpecSymmetricDefault:
		return nil, fmt.Errorf("%w: %s is a %s key; a root key is a SYMMETRIC_DEFAULT key", ErrKeyNotUsable, arn, md.KeySpec)
	case md.KeyUsage != "" && md.KeyUsage != types.KeyUsageTypeEncryptDecrypt:
		return nil, fmt.Errorf("%w: %s has key usage %s; a root key is an ENCRYPT_DECRYPT key", ErrKeyNotUsable, arn, md.KeyUsage)
	case md.KeyState != "" && md.KeyState != types.KeyStateEnabled:
		return nil, fmt.Errorf("%w: %s is %s, not Enabled", ErrKeyNotUsable, arn, md.KeyState)
	case md.KeyState == "" && !md.Enabled:
		return nil, fmt.Errorf("%w: %s is not enabled", ErrKeyNotUsable, arn)
	}
	k := &RootKey{
		id:       Scheme + "://" + arn,
		arn:      arn,
		endpoint: endpoint,
		api:      api,
		logger:   o.logger,
	}
	k.logger.InfoContext(ctx, "aws kms root key opened", "id", k.id, "endpoint", endpoint)
	return k, nil
}

// arnKeyID returns the key id of a key ARN, or "" for an alias ARN.
func arnKeyID(arn string) string {
	id, ok := strings.CutPrefix(arn[strings.LastIndexByte(arn, ':')+1:], "key/")
	if !ok {
		return ""
	}
	return id
}

// ID returns "aws-kms://" and the key ARN, whatever name the URI used.
func (k *RootKey) ID() string { return k.id }

// ARN returns the key ARN.
func (k *RootKey) ARN() string { return k.arn }

// Stats returns the counters of calls sent to KMS.
func (k *RootKey) Stats() Stats {
	return Stats{Wraps: k.wraps.Load(), Unwraps: k.unwraps.Load(), Unavailable: k.unavailable.Load()}
}

// Wrap asks KMS GenerateDataKey for a fresh AES-256 data key under the root
// key, bound to the encryption context of associatedData, and seals
// plaintext with it in AES-256-GCM (see the package documentation).
func (k *RootKey) Wrap(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	if k.closed.Load() {
		return nil, kms.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("awskms: wrap: %w", err)
	}
	k.wraps.Add(1)
	out, err := k.api.GenerateDataKey(ctx, &sdkkms.GenerateDataKeyInput{
		KeyId:             aws.String(k.arn),
		KeySpec:           types.DataKeySpecAes256,
		EncryptionContext: encryptionContext(associatedData),
	})
	if err != nil {
		return nil, k.callError(ctx, "wrap", "GenerateDataKey", err, false)
	}
	dataKey := out.Plaintext
	defer clear(dataKey)
	switch {
	case len(dataKey) != dataKeySize:
		return nil, fmt.Errorf("awskms: wrap: KMS GenerateDataKey on %s returned a %d-byte data key, want %d", k.endpoint, len(dataKey), dataKeySize)
	case len(out.CiphertextBlob) == 0 || len(out.CiphertextBlob) > maxBlob:
		return nil, fmt.Errorf("awskms: wrap: KMS GenerateDataKey on %s returned a %d-byte ciphertext, want 1 to %d", k.endpoint, len(out.CiphertextBlob), maxBlob)
	case out.KeyId != nil && *out.KeyId != k.arn:
		return nil, fmt.Errorf("awskms: wrap: KMS GenerateDataKey on %s used another key than %s", k.endpoint, k.arn)
	}
	aead, err := newGCM(dataKey)
	if err != nil {
		return nil, fmt.Errorf("awskms: wrap: %w", err)
	}
	h := header(out.CiphertextBlob)
	wrapped := make([]byte, 0, len(h)+nonceSize+len(plaintext)+tagSize)
	wrapped = append(append(wrapped, h...), nonce[:]...)
	return aead.Seal(wrapped, nonce[:], plaintext, additionalData(h, associatedData)), nil
}

// Unwrap sends the data key's KMS ciphertext to KMS Decrypt, pinned to the
// root key and with the encryption context of associatedData, and opens the
// AES-256-GCM ciphertext with the data key. Any failure to parse or decrypt
// is kms.ErrUnwrap; a KMS that cannot serve the call is kms.ErrUnavailable.
func (k *RootKey) Unwrap(ctx context.Context, wrapped, associatedData []byte) ([]byte, error) {
	if k.closed.Load() {
		return nil, kms.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := parse(wrapped)
	if err != nil {
		return nil, errUnwrap
	}
	k.unwraps.Add(1)
	out, err := k.api.Decrypt(ctx, &sdkkms.DecryptInput{
		CiphertextBlob:    p.blob,
		KeyId:             aws.String(k.arn),
		EncryptionContext: encryptionContext(associatedData),
	})
	if err != nil {
		return nil, k.callError(ctx, "unwrap", "Decrypt", err, true)
	}
	dataKey := out.Plaintext
	defer clear(dataKey)
	if len(dataKey) != dataKeySize || out.KeyId != nil && *out.KeyId != k.arn {
		return nil, errUnwrap
	}
	aead, err := newGCM(dataKey)
	if err != nil {
		return nil, errUnwrap
	}
	pt, err := aead.Open(nil, p.nonce, p.ciphertext, additionalData(p.header, associatedData))
	if err != nil {
		return nil, errUnwrap
	}
	return pt, nil
}

var errUnwrap = fmt.Errorf("awskms: %w", kms.ErrUnwrap)

// callError turns a failed KMS call into the error a caller gets.
func (k *RootKey) callError(ctx context.Context, what, op string, err error, unwrap bool) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("awskms: %s: %w", what, cerr)
	}
	err = callError(what, op, k.endpoint, err, unwrap)
	if errors.Is(err, kms.ErrUnavailable) {
		k.unavailable.Add(1)
	}
	return err
}

// Close makes later calls fail with kms.ErrClosed; calls in flight finish.
// There is nothing else to release: the SDK's idle connections close on
// their own. Close again returns nil.
func (k *RootKey) Close() error {
	k.closed.Store(true)
	return nil
}
