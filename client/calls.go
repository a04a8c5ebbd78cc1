// One method per RPC of the four services; TestEveryRPCHasAMethod keeps
// the list in step with the protos.

package client

import (
	"context"

	"google.golang.org/grpc"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// CreateKey creates a new key with a first key version that becomes the primary
// version.
//
// Fails with ALREADY_EXISTS if a key with the same id exists.
func (c *Client) CreateKey(ctx context.Context, req *tresorv1.CreateKeyRequest) (*tresorv1.Key, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.keys.CreateKey(ctx, req)
}

// GetKey gets a key, including the metadata of all its versions.
//
// Fails with NOT_FOUND if the key does not exist.
func (c *Client) GetKey(ctx context.Context, req *tresorv1.GetKeyRequest) (*tresorv1.Key, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.keys.GetKey(ctx, req)
}

// ListKeys lists keys, ordered by key id, one page at a time.
func (c *Client) ListKeys(ctx context.Context, req *tresorv1.ListKeysRequest) (*tresorv1.ListKeysResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.keys.ListKeys(ctx, req)
}

// UpdateKey updates the mutable configuration of a key: its rotation period, its
// minimum decryption version and its labels. Only the fields named in
// `update_mask` are changed.
//
// Fails with NOT_FOUND if the key does not exist, and with
// INVALID_ARGUMENT if `min_decryption_version` is not an existing version
// or is newer than the primary version.
func (c *Client) UpdateKey(ctx context.Context, req *tresorv1.UpdateKeyRequest) (*tresorv1.Key, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.keys.UpdateKey(ctx, req)
}

// RotateKey creates a new key version and makes it the primary version. Data
// encrypted with earlier versions remains decryptable as long as those
// versions are not older than the key's `min_decryption_version`.
//
// Fails with NOT_FOUND if the key does not exist, and with
// FAILED_PRECONDITION if the key is disabled.
func (c *Client) RotateKey(ctx context.Context, req *tresorv1.RotateKeyRequest) (*tresorv1.Key, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.keys.RotateKey(ctx, req)
}

// DisableKey disables a key. A disabled key cannot be used for any cryptographic
// operation (encryption or decryption) until it is enabled again. Disabling
// a disabled key is a no-op.
//
// Fails with NOT_FOUND if the key does not exist.
func (c *Client) DisableKey(ctx context.Context, req *tresorv1.DisableKeyRequest) (*tresorv1.Key, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.keys.DisableKey(ctx, req)
}

// EnableKey enables a disabled key. Enabling an enabled key is a no-op.
//
// Fails with NOT_FOUND if the key does not exist, and with
// FAILED_PRECONDITION if the key is scheduled for deletion or destroyed.
func (c *Client) EnableKey(ctx context.Context, req *tresorv1.EnableKeyRequest) (*tresorv1.Key, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.keys.EnableKey(ctx, req)
}

// ScheduleKeyDeletion schedules a key for destruction after a waiting period of 7 to 30 days
// (30 by default). Until then the key cannot be used for any
// cryptographic operation and CancelKeyDeletion can restore it (as
// disabled). When the period ends, the key's material is destroyed: every
// ciphertext and wrapped data key under it becomes undecryptable, and
// calls that name it fail with FAILED_PRECONDITION saying so.
//
// Fails with NOT_FOUND if the key does not exist, and with
// FAILED_PRECONDITION if it is already scheduled or destroyed.
func (c *Client) ScheduleKeyDeletion(ctx context.Context, req *tresorv1.ScheduleKeyDeletionRequest) (*tresorv1.Key, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.keys.ScheduleKeyDeletion(ctx, req)
}

// CancelKeyDeletion cancels a scheduled deletion. The key comes back disabled; enable it to
// use it again.
//
// Fails with NOT_FOUND if the key does not exist, and with
// FAILED_PRECONDITION if no deletion is scheduled (or the key is already
// destroyed).
func (c *Client) CancelKeyDeletion(ctx context.Context, req *tresorv1.CancelKeyDeletionRequest) (*tresorv1.Key, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.keys.CancelKeyDeletion(ctx, req)
}

// Encrypt encrypts a plaintext with the primary version of a key.
func (c *Client) Encrypt(ctx context.Context, req *tresorv1.EncryptRequest) (*tresorv1.EncryptResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.crypto.Encrypt(ctx, req)
}

// Decrypt decrypts a ciphertext produced by Encrypt, ReEncrypt, BatchEncrypt,
// GenerateDataKey or GenerateDataKeyWithoutPlaintext. The key is the one
// recorded in the ciphertext.
func (c *Client) Decrypt(ctx context.Context, req *tresorv1.DecryptRequest) (*tresorv1.DecryptResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.crypto.Decrypt(ctx, req)
}

// ReEncrypt decrypts a ciphertext and encrypts the plaintext again, with the primary
// version of the same key or of another key, without exposing the
// plaintext to the caller. Used to migrate ciphertexts to a newer key
// version after a rotation, or to another key.
func (c *Client) ReEncrypt(ctx context.Context, req *tresorv1.ReEncryptRequest) (*tresorv1.ReEncryptResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.crypto.ReEncrypt(ctx, req)
}

// GenerateDataKey generates a random 256-bit data key for envelope encryption and returns
// it both in plaintext and encrypted with the primary version of a key.
// The caller encrypts its data locally with the plaintext data key,
// discards it, and stores the encrypted data key next to the data; Decrypt
// recovers the data key later.
func (c *Client) GenerateDataKey(ctx context.Context, req *tresorv1.GenerateDataKeyRequest) (*tresorv1.GenerateDataKeyResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.crypto.GenerateDataKey(ctx, req)
}

// GenerateDataKeyWithoutPlaintext is like GenerateDataKey, but returns only the encrypted data key. For
// callers that store a data key now and use it later (after Decrypt).
func (c *Client) GenerateDataKeyWithoutPlaintext(ctx context.Context, req *tresorv1.GenerateDataKeyWithoutPlaintextRequest) (*tresorv1.GenerateDataKeyWithoutPlaintextResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.crypto.GenerateDataKeyWithoutPlaintext(ctx, req)
}

// BatchEncrypt encrypts up to 1000 plaintexts with the primary version of one key.
//
// The call fails as a whole only if the request is invalid or the key
// cannot be used (not found, disabled); otherwise each item gets its own
// result, in request order, and one item's failure does not affect the
// others. The whole request is also bounded by the server's maximum
// message size.
func (c *Client) BatchEncrypt(ctx context.Context, req *tresorv1.BatchEncryptRequest) (*tresorv1.BatchEncryptResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.crypto.BatchEncrypt(ctx, req)
}

// BatchDecrypt decrypts up to 1000 ciphertexts, which may have been produced by
// different keys.
//
// The call fails as a whole only if the request is invalid; otherwise each
// item gets its own result, in request order, and one item's failure (for
// example an unknown key or a tampered ciphertext) does not affect the
// others. The whole request is also bounded by the server's maximum
// message size.
func (c *Client) BatchDecrypt(ctx context.Context, req *tresorv1.BatchDecryptRequest) (*tresorv1.BatchDecryptResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.crypto.BatchDecrypt(ctx, req)
}

// RotateRootKey starts re-wrapping every stored keyset from the current root key to the
// root key at `root_key_uri`: a new key in the same HSM, or a key of
// another provider (PKCS#11 or AWS KMS). The job runs in the background,
// in batches, and resumes after a restart; GetRootKeyRotation reports its
// progress. The old root key stays in use until the job finishes. No
// ciphertext and no wrapped data key held by a caller changes.
//
// Fails with FAILED_PRECONDITION if a rotation is already running, with
// INVALID_ARGUMENT if the URI is malformed or names the current root key,
// and with UNAVAILABLE if the new root key cannot be reached.
func (c *Client) RotateRootKey(ctx context.Context, req *tresorv1.RotateRootKeyRequest) (*tresorv1.RotateRootKeyResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.admin.RotateRootKey(ctx, req)
}

// GetRootKeyRotation returns the most recent root-key rotation.
//
// Fails with NOT_FOUND if the root key has never been rotated.
func (c *Client) GetRootKeyRotation(ctx context.Context, req *tresorv1.GetRootKeyRotationRequest) (*tresorv1.GetRootKeyRotationResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.admin.GetRootKeyRotation(ctx, req)
}

// VerifyAudit verifies the audit log in the store: every event's hash chain and
// every checkpoint's MAC under the root key. A modified, removed,
// inserted or reordered event, or a forged checkpoint, is reported with
// the first bad event; the call itself succeeds.
func (c *Client) VerifyAudit(ctx context.Context, req *tresorv1.VerifyAuditRequest) (*tresorv1.VerifyAuditResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.admin.VerifyAudit(ctx, req)
}

// QueryAudit returns audit events from the store that match every filter given,
// oldest first.
func (c *Client) QueryAudit(ctx context.Context, req *tresorv1.QueryAuditRequest) (*tresorv1.QueryAuditResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.admin.QueryAudit(ctx, req)
}

// PutSchema stores a new version of a classification schema. The definition (YAML
// or JSON) names the schema; its version must be one more than the latest
// stored, or 1 for a new schema.
//
// Fails with INVALID_ARGUMENT if the definition does not parse, names an
// unknown tier, a tier without a key, an invalid path, or a path twice;
// with FAILED_PRECONDITION if a key it names does not exist or has the
// wrong type; with ALREADY_EXISTS if the version is taken.
func (c *Client) PutSchema(ctx context.Context, req *tresorv1.PutSchemaRequest) (*tresorv1.PutSchemaResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.fields.PutSchema(ctx, req)
}

// GetSchema gets a schema: its latest version, or the version asked for.
//
// Fails with NOT_FOUND if the schema or the version does not exist.
func (c *Client) GetSchema(ctx context.Context, req *tresorv1.GetSchemaRequest) (*tresorv1.GetSchemaResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.fields.GetSchema(ctx, req)
}

// ListSchemas lists the latest version of every schema, ordered by name.
func (c *Client) ListSchemas(ctx context.Context, req *tresorv1.ListSchemasRequest) (*tresorv1.ListSchemasResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.fields.ListSchemas(ctx, req)
}

// ListSchemaVersions lists every version of a schema, newest first.
//
// Fails with NOT_FOUND if the schema does not exist.
func (c *Client) ListSchemaVersions(ctx context.Context, req *tresorv1.ListSchemaVersionsRequest) (*tresorv1.ListSchemaVersionsResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.fields.ListSchemaVersions(ctx, req)
}

// ProtectDocument protects one JSON document as the schema classifies it, and inspects
// the fields the schema leaves public for card numbers, IBANs, tax
// identifiers, e-mail addresses and phone numbers.
//
// Fails with INVALID_ARGUMENT if the document is not JSON, is too large
// or too deep, or holds a value of the wrong type for its protection (the
// message names the path, never the value); with FAILED_PRECONDITION if
// inspection found sensitive data and the schema says reject.
func (c *Client) ProtectDocument(ctx context.Context, req *tresorv1.ProtectDocumentRequest) (*tresorv1.ProtectDocumentResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.fields.ProtectDocument(ctx, req)
}

// RevealDocument reveals one protected document field by field: each field is shown in
// clear text (RevealDocument allowed on it), masked (RevealMasked
// allowed), or left protected; the response says which, field by field.
// Revealed fields count against the caller's decrypt budgets.
//
// Fails with INVALID_ARGUMENT if the document is not JSON, and with
// INVALID_ARGUMENT "decryption failed" if a protected field does not
// authenticate (tampered, or moved from another path or document).
func (c *Client) RevealDocument(ctx context.Context, req *tresorv1.RevealDocumentRequest) (*tresorv1.RevealDocumentResponse, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.fields.RevealDocument(ctx, req)
}

// ProtectDocuments is ProtectDocument for a stream of documents: one response per request,
// in order. An error in one document ends the stream.
//
// The stream lives as long as ctx: the Client's default timeout does not
// apply. Errors from Send and Recv are *Error, as from every other method.
func (c *Client) ProtectDocuments(ctx context.Context) (grpc.BidiStreamingClient[tresorv1.ProtectDocumentsRequest, tresorv1.ProtectDocumentsResponse], error) {
	return c.fields.ProtectDocuments(ctx)
}

// RevealDocuments is RevealDocument for a stream of documents: one response per request,
// in order. An error in one document ends the stream.
//
// The stream lives as long as ctx: the Client's default timeout does not
// apply. Errors from Send and Recv are *Error, as from every other method.
func (c *Client) RevealDocuments(ctx context.Context) (grpc.BidiStreamingClient[tresorv1.RevealDocumentsRequest, tresorv1.RevealDocumentsResponse], error) {
	return c.fields.RevealDocuments(ctx)
}
