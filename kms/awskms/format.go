package awskms

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
)

// Wrapped output format (see the package documentation).
const (
	formatV1    = 1
	dataKeySize = 32 // AES_256
	nonceSize   = 12
	tagSize     = 16
	// maxBlob bounds the KMS ciphertext of a data key: KMS Decrypt takes
	// at most 6144 bytes.
	maxBlob = 6144
)

// Encryption context keys (see the package documentation).
const (
	contextAAD       = "tresor-aad"
	contextAADSHA256 = "tresor-aad-sha256"
	// maxContextAAD is the longest associated data put in the encryption
	// context as is; longer associated data is hashed.
	maxContextAAD = 1024
)

// encryptionContext returns the KMS encryption context for associated data:
// none for empty, {"tresor-aad": base64url(aad)} up to maxContextAAD bytes,
// else {"tresor-aad-sha256": base64url(SHA-256(aad))}.
func encryptionContext(aad []byte) map[string]string {
	switch {
	case len(aad) == 0:
		return nil
	case len(aad) <= maxContextAAD:
		return map[string]string{contextAAD: base64.RawURLEncoding.EncodeToString(aad)}
	default:
		sum := sha256.Sum256(aad)
		return map[string]string{contextAADSHA256: base64.RawURLEncoding.EncodeToString(sum[:])}
	}
}

// header returns the start of a wrapped value: version, blob length, blob.
func header(blob []byte) []byte {
	h := make([]byte, 3, 3+len(blob)+nonceSize)
	h[0] = formatV1
	binary.BigEndian.PutUint16(h[1:3], uint16(len(blob)))
	return append(h, blob...)
}

// parsed is a wrapped value split into its parts.
type parsed struct {
	header, blob, nonce, ciphertext []byte
}

var errFormat = errors.New("malformed wrapped value")

// parse splits a wrapped value, checking only its framing.
func parse(wrapped []byte) (parsed, error) {
	if len(wrapped) < 3 || wrapped[0] != formatV1 {
		return parsed{}, errFormat
	}
	n := int(binary.BigEndian.Uint16(wrapped[1:3]))
	if n == 0 || n > maxBlob || len(wrapped) < 3+n+nonceSize+tagSize {
		return parsed{}, errFormat
	}
	return parsed{
		header:     wrapped[:3+n],
		blob:       wrapped[3 : 3+n],
		nonce:      wrapped[3+n : 3+n+nonceSize],
		ciphertext: wrapped[3+n+nonceSize:],
	}, nil
}

// additionalData is the AES-GCM additional data: header || aad.
func additionalData(header, aad []byte) []byte {
	ad := make([]byte, 0, len(header)+len(aad))
	return append(append(ad, header...), aad...)
}

func newGCM(dataKey []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(dataKey)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
