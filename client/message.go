package client

import (
	"encoding/binary"
	"errors"
	"strings"
)

// The SDK's message format, version 1. Every integer is big-endian.
//
// A header opens every message and every stream:
//
//	magic      4 bytes   "TSDK"
//	version    1 byte    1
//	kind       1 byte    1: message, 2: stream
//	suite      1 byte    1: AES-256-GCM
//	wkLen      2 bytes   length of the wrapped data key, 1 to 2048
//	wrapped    wkLen     the data key as tresor returned it from
//	                     GenerateDataKey: its printable ciphertext,
//	                     "tresor:v1:..."; any Decrypt opens it
//	ctxLen     2 bytes   length of the key context, 0 to 8192
//	context    ctxLen    the associated data the data key was generated
//	                     with, which Decrypt needs too
//
// A message (kind 1) follows its header with
//
//	nonce      12 bytes  random
//	sealed     n+16      AES-256-GCM under the data key; its associated
//	                     data is the header followed by the caller's
//	                     associated data
//
// A stream (kind 2) follows its header with the fields that streams add
// (see stream.go) and its chunks.
//
// The header is the writer's claim, and anyone who may Encrypt under some
// key can wrap a data key of its choosing: a reader accepts a message only
// for the key and key context it names (Encryptor.Decrypt), comparing the
// key context before any call and the key tresor's Decrypt reports for the
// wrapped data key before opening.
//
// Many messages share a data key while the cache's limits allow; random
// 96-bit nonces keep them apart, which is why a data key never seals more
// than 2^32 messages (NIST SP 800-38D, section 8.3).
const (
	magic          = "TSDK"
	formatVersion  = 1
	kindMessage    = 1
	kindStream     = 2
	suiteAES256GCM = 1

	maxWrappedKey = 2048
	maxKeyContext = 8192

	fixedHeaderLen = 4 + 1 + 1 + 1 + 2 // through wkLen
	nonceLen       = 12
	tagLen         = 16
	dataKeyLen     = 32

	// wrappedKeyPrefix opens every tresor ciphertext string.
	wrappedKeyPrefix = "tresor:v1:"
)

// errFormat is every malformed header or body. Callers of Decrypt see
// only ErrDecryptionFailed.
var errFormat = errors.New("client: not a tresor SDK message")

// header is a parsed header. wrapped and context alias the input.
type header struct {
	kind       byte
	wrapped    []byte
	keyContext []byte
}

// appendHeader appends the header of kind for a data key and its context.
func appendHeader(b []byte, kind byte, wrapped string, keyContext []byte) []byte {
	b = append(b, magic...)
	b = append(b, formatVersion, kind, suiteAES256GCM)
	b = binary.BigEndian.AppendUint16(b, uint16(len(wrapped)))
	b = append(b, wrapped...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(keyContext)))
	return append(b, keyContext...)
}

// checkWrappedKey reports whether tresor's wrapped data key fits the
// header: printable, within the length, in tresor's string form.
func checkWrappedKey(w string) error {
	if len(w) == 0 || len(w) > maxWrappedKey || !strings.HasPrefix(w, wrappedKeyPrefix) {
		return errFormat
	}
	for i := 0; i < len(w); i++ {
		if w[i] < 0x21 || w[i] > 0x7e {
			return errFormat
		}
	}
	return nil
}

// parseHeader parses the header at the start of b and returns it and its
// length. It checks every field and reads nothing beyond b.
func parseHeader(b []byte) (header, int, error) {
	if len(b) < fixedHeaderLen || string(b[:4]) != magic || b[4] != formatVersion || b[6] != suiteAES256GCM {
		return header{}, 0, errFormat
	}
	h := header{kind: b[5]}
	if h.kind != kindMessage && h.kind != kindStream {
		return header{}, 0, errFormat
	}
	n := fixedHeaderLen
	wkLen := int(binary.BigEndian.Uint16(b[7:9]))
	if wkLen == 0 || wkLen > maxWrappedKey || len(b)-n < wkLen+2 {
		return header{}, 0, errFormat
	}
	h.wrapped = b[n : n+wkLen]
	if checkWrappedKey(string(h.wrapped)) != nil {
		return header{}, 0, errFormat
	}
	n += wkLen
	ctxLen := int(binary.BigEndian.Uint16(b[n : n+2]))
	n += 2
	if ctxLen > maxKeyContext || len(b)-n < ctxLen {
		return header{}, 0, errFormat
	}
	h.keyContext = b[n : n+ctxLen]
	n += ctxLen
	return h, n, nil
}
