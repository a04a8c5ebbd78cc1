//go:build !noawskms

package awskms

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	sdkkms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// creatorAPI is the part of the SDK's KMS client CreateRootKey uses.
type creatorAPI interface {
	DescribeKey(ctx context.Context, in *sdkkms.DescribeKeyInput, optFns ...func(*sdkkms.Options)) (*sdkkms.DescribeKeyOutput, error)
	CreateKey(ctx context.Context, in *sdkkms.CreateKeyInput, optFns ...func(*sdkkms.Options)) (*sdkkms.CreateKeyOutput, error)
	CreateAlias(ctx context.Context, in *sdkkms.CreateAliasInput, optFns ...func(*sdkkms.Options)) (*sdkkms.CreateAliasOutput, error)
	ScheduleKeyDeletion(ctx context.Context, in *sdkkms.ScheduleKeyDeletionInput, optFns ...func(*sdkkms.Options)) (*sdkkms.ScheduleKeyDeletionOutput, error)
}

var _ creatorAPI = (*sdkkms.Client)(nil)

// CreateRootKey creates a new customer managed KMS key for a root key: a
// symmetric (SYMMETRIC_DEFAULT) ENCRYPT_DECRYPT key, in the region and at
// the endpoint the URI names. If the URI names an alias (alias/NAME or an
// alias ARN), CreateRootKey points that alias at the new key, failing with
// [ErrKeyExists] before it creates anything if the alias exists; with no
// key at all (aws-kms://?region=eu-west-1) it creates the key alone. It
// returns the URI of the new key by its ARN (with the URI's endpoint), which
// [Open] takes; the alias URI opens the same key.
//
// It is a setup step: two concurrent calls for the same alias may both
// create a key, and the loser's key is scheduled for deletion (7 days).
// Automatic yearly rotation of the key material (EnableKeyRotation) is the
// operator's choice; KMS keeps old material, so it is invisible to tresor.
func CreateRootKey(ctx context.Context, uri string, opts ...Option) (string, error) {
	o := newOptions(opts)
	u, err := parseURI(uri, true)
	if err != nil {
		return "", err
	}
	if u.Key != "" && !u.IsAlias() {
		return "", invalidURI("CreateRootKey makes a new key: name an alias (aws-kms://alias/NAME?region=...) or no key (aws-kms://?region=...), not an existing key")
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	c, err := newClient(ctx, u, o)
	if err != nil {
		return "", err
	}
	return createRootKey(ctx, u, c.api, c.endpoint, o)
}

func createRootKey(ctx context.Context, u URI, c creatorAPI, endpoint string, o options) (string, error) {
	alias := u.Key
	if i := strings.Index(alias, ":alias/"); i >= 0 {
		alias = alias[i+1:]
	}
	if alias != "" {
		out, err := c.DescribeKey(ctx, &sdkkms.DescribeKeyInput{KeyId: aws.String(u.Key)})
		switch {
		case err == nil:
			existing := ""
			if out.KeyMetadata != nil && out.KeyMetadata.Arn != nil {
				existing = *out.KeyMetadata.Arn
			}
			return "", fmt.Errorf("%w: %s on %s already names %s", ErrKeyExists, alias, endpoint, existing)
		case ctx.Err() != nil:
			return "", fmt.Errorf("awskms: create: %w", ctx.Err())
		case errorCode(err) != "NotFoundException":
			return "", callError("create", "DescribeKey", endpoint, err, false)
		}
	}
	desc := "tresor root key"
	if alias != "" {
		desc += " " + alias
	}
	out, err := c.CreateKey(ctx, &sdkkms.CreateKeyInput{
		KeySpec:     types.KeySpecSymmetricDefault,
		KeyUsage:    types.KeyUsageTypeEncryptDecrypt,
		Description: aws.String(desc),
	})
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("awskms: create: %w", ctx.Err())
		}
		return "", callError("create", "CreateKey", endpoint, err, false)
	}
	if out.KeyMetadata == nil || out.KeyMetadata.Arn == nil || arnKeyID(*out.KeyMetadata.Arn) == "" {
		return "", fmt.Errorf("awskms: create: KMS CreateKey on %s returned no key ARN", endpoint)
	}
	arn := *out.KeyMetadata.Arn
	if alias != "" {
		if _, err := c.CreateAlias(ctx, &sdkkms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(arn)}); err != nil {
			// Do not leave an unnamed key behind.
			_, derr := c.ScheduleKeyDeletion(context.WithoutCancel(ctx), &sdkkms.ScheduleKeyDeletionInput{KeyId: aws.String(arn), PendingWindowInDays: aws.Int32(7)})
			cleanup := "it is scheduled for deletion"
			if derr != nil {
				cleanup = "scheduling its deletion failed too; delete it by hand"
			}
			if errorCode(err) == "AlreadyExistsException" {
				return "", fmt.Errorf("%w: %s on %s (created key %s meanwhile; %s)", ErrKeyExists, alias, endpoint, arn, cleanup)
			}
			return "", fmt.Errorf("%w (created key %s; %s)", callError("create", "CreateAlias", endpoint, err, false), arn, cleanup)
		}
	}
	created := URI{Key: arn, Endpoint: u.Endpoint}
	o.logger.InfoContext(ctx, "aws kms root key created", "id", Scheme+"://"+arn, "alias", alias, "endpoint", endpoint)
	return created.String(), nil
}
