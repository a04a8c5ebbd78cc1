// Package client is tresor's Go SDK.
//
// Reach for [New] first: it connects over mutual TLS and sends an OAuth 2.0
// access token with every call, from [ClientCredentials] or any
// oauth2.TokenSource that fetches a new token each time it is called,
// cached by the Client and refreshed before it expires. The [Client] has
// one typed method per RPC of the KeyService, CryptoService, AdminService
// and FieldService; reads and cryptographic calls that fail with
// UNAVAILABLE are retried with backoff (calls that change state, such as
// CreateKey, RotateKey or PutSchema, are tried once: see [RetryPolicy]),
// each call gets a deadline when its context has none, and every error
// matches a sentinel with errors.Is: [ErrNotFound], [ErrPermissionDenied],
// [ErrDecryptionFailed], and so on.
//
// For large or frequent data, seal in this process instead of sending the
// data to tresor: [NewLocalEncryption] gives envelope encryption with data
// keys from tresor's GenerateDataKey, cached under a [CachePolicy] (age,
// messages and bytes per data key), so that ten thousand messages cost one
// call to seal and one to open. [LocalEncryption.Encryptor] names a key
// and a key context; its [Encryptor.Encrypt] and [Encryptor.Decrypt] seal
// and open messages in a versioned format that carries the wrapped data
// key (see message.go), and [Encryptor.EncryptStream] and
// [Encryptor.DecryptStream] do the same for streams of any length, in
// authenticated chunks. A reader opens only what was sealed under the key
// and key context its Encryptor names: a message whose data key another
// key wrapped fails, even when the reader may unwrap it.
//
// For documents, [Client.ProtectStruct] and [Client.RevealStruct] protect
// and reveal the fields of a Go struct tagged with their tier
// (`tresor:"restricted"`), through the FieldService and a classification
// schema that [StructSchema] writes from the tags.
package client
