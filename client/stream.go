package client

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// The SDK's stream format, version 1: large payloads sealed in
// authenticated chunks, so that neither side holds more than one chunk.
// Every integer is big-endian.
//
// A stream opens with the header of message.go, of kind 2 (stream), and
// follows it with
//
//	chunkSize  4 bytes   plaintext bytes per chunk, 4096 to 16 MiB
//	                     (EncryptStream uses 64 KiB). Every chunk but the
//	                     last holds exactly chunkSize bytes; the last holds
//	                     0 to chunkSize-1 (an empty last chunk when the
//	                     plaintext length is a multiple of chunkSize,
//	                     including an empty plaintext)
//	salt       32 bytes  random
//	chunks     each chunk's plaintext sealed with AES-256-GCM under the
//	           stream key: plaintext, then the 16-byte tag; no
//	           associated data
//
// The stream key is HKDF-SHA256 (RFC 5869) of the data key with the salt,
// and info "tresor sdk stream v1" followed by SHA-256 of every byte before
// the chunks (header, chunkSize, salt) and the caller's associated data.
// A changed header, chunk size, salt or associated data gives another key:
// the first chunk fails.
//
// A chunk's 12-byte nonce is seven zero bytes, the chunk's index (uint32,
// from 0), and one byte: 1 for the last chunk, 0 for the others (the
// STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár, as in
// Tink's streaming AEAD and age). So a reordered chunk fails (its index),
// a stream cut at a chunk boundary fails (the reader finds no chunk where
// one is due, or a chunk whose last flag is wrong), a stream cut inside a
// chunk fails (its tag), bytes after the last chunk fail, and a stream of
// more than 2^32 chunks is refused. Each stream has its own random salt,
// hence its own key: chunk nonces never repeat under a key.
const (
	streamMinChunk     = 4096
	streamMaxChunk     = 16 << 20
	streamDefaultChunk = 64 << 10
	streamSaltLen      = 32
	streamInfo         = "tresor sdk stream v1"
	// streamPrefixTail is what follows the header before the chunks.
	streamPrefixTail = 4 + streamSaltLen
)

// errStreamTooLong is a stream that would need more than 2^32 chunks.
var errStreamTooLong = errors.New("client: a stream holds at most 2^32 chunks")

// EncryptStream seals everything src holds, up to io.EOF, with aad into a
// stream on dst (see the format above), in chunks of 64 KiB: use it for
// payloads too large to hold in memory, and DecryptStream (of an
// Encryptor for the same key and key context) to open them.
// It returns the number of plaintext bytes read from src.
//
// A stream counts as one message against the CachePolicy's MaxMessages
// and MaxAge, whatever its length. Its bytes do not count against
// MaxBytes: the chunks are sealed under a key derived for this stream
// alone, not under the data key.
//
// ctx bounds the call for a data key and is checked between chunks; a
// canceled ctx gives an error matching ErrCanceled or
// ErrDeadlineExceeded, and an error from src or dst is returned wrapped.
// After any error, what was written to dst is not a stream that opens.
func (e *Encryptor) EncryptStream(ctx context.Context, dst io.Writer, src io.Reader, aad []byte) (int64, error) {
	return e.encryptStream(ctx, dst, src, aad, streamDefaultChunk, rand.Reader)
}

// encryptStream is EncryptStream with a chunk size and the source of the
// salt.
func (e *Encryptor) encryptStream(ctx context.Context, dst io.Writer, src io.Reader, aad []byte, chunkSize int, random io.Reader) (int64, error) {
	if chunkSize < streamMinChunk || chunkSize > streamMaxChunk {
		return 0, fmt.Errorf("client: stream chunk size %d is outside %d to %d", chunkSize, streamMinChunk, streamMaxChunk)
	}
	if err := contextError(ctx); err != nil {
		return 0, err
	}
	var prefix []byte
	var sc *streamCipher
	for {
		k, err := e.reserve(ctx, 0)
		if err != nil {
			return 0, err
		}
		hl := len(k.header)
		prefix = make([]byte, hl+streamPrefixTail)
		copy(prefix, k.header)
		prefix[5] = kindStream
		binary.BigEndian.PutUint32(prefix[hl:], uint32(chunkSize))
		if _, err := io.ReadFull(random, prefix[hl+4:]); err != nil {
			return 0, fmt.Errorf("client: stream salt: %w", err)
		}
		sc, err = k.streamCipher(prefix, aad)
		if errors.Is(err, errKeyRetired) {
			continue // replaced since it was reserved: take the new one
		}
		if err != nil {
			return 0, err
		}
		break
	}
	if err := streamWrite(dst, prefix); err != nil {
		return 0, err
	}

	buf := make([]byte, chunkSize+tagLen)
	defer clear(buf)
	var read int64
	for {
		if err := contextError(ctx); err != nil {
			return read, err
		}
		n, err := io.ReadFull(src, buf[:chunkSize])
		read += int64(n)
		last := false
		switch {
		case err == nil:
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			// Short of a full chunk: this is the last one. A full chunk
			// never is, so no read ahead is needed.
			last = true
		default:
			return read, fmt.Errorf("client: EncryptStream: reading the plaintext: %w", err)
		}
		ct, err := sc.seal(buf[:0], buf[:n], last)
		if err != nil {
			return read, err
		}
		if err := streamWrite(dst, ct); err != nil {
			return read, err
		}
		if last {
			return read, nil
		}
	}
}

// DecryptStream opens a stream sealed by EncryptStream of an Encryptor
// of the same key and key context, with the same aad, from src to dst,
// and returns the number of plaintext bytes written to dst. It reads src
// to its end: the stream must be all that src holds. As Decrypt, it opens
// nothing else: a stream whose header carries another key context, or
// whose data key tresor reports was wrapped by another key, fails before
// any chunk is opened or written.
//
// It writes each chunk's plaintext only once the chunk is authenticated,
// but the stream as a whole is authenticated only when DecryptStream
// returns nil: on error, plaintext of the chunks before the failure may
// already have been written to dst and must be discarded.
//
// Any failure to open, from bytes that are not a stream (or are a
// message: use Decrypt for those) to a wrong aad, a tampered, truncated,
// reordered or extended stream, is ErrDecryptionFailed. An error from src
// or dst is returned wrapped, as is a canceled ctx (matching ErrCanceled
// or ErrDeadlineExceeded); a failure to reach tresor or a refusal to
// unwrap the data key keeps its own error (ErrUnavailable,
// ErrPermissionDenied, ...).
func (e *Encryptor) DecryptStream(ctx context.Context, dst io.Writer, src io.Reader, aad []byte) (int64, error) {
	if err := contextError(ctx); err != nil {
		return 0, err
	}
	prefix, h, hl, err := readStreamPrefix(src)
	if err != nil {
		return 0, err
	}
	if !bytes.Equal(h.keyContext, e.keyContext) {
		return 0, ErrDecryptionFailed
	}
	k, err := e.openKey(ctx, prefix[:hl], h)
	if err != nil {
		return 0, err
	}
	sc, err := newStreamCipher(k.raw, prefix, aad)
	if err != nil {
		return 0, ErrDecryptionFailed
	}
	chunkSize := int(binary.BigEndian.Uint32(prefix[hl:]))

	buf := make([]byte, chunkSize+tagLen)
	defer clear(buf)
	var written int64
	for {
		if err := contextError(ctx); err != nil {
			return written, err
		}
		n, err := io.ReadFull(src, buf)
		last := false
		switch {
		case err == nil:
			// A whole sealed chunk: never the last one, which is shorter.
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			last = true
		default:
			return written, fmt.Errorf("client: DecryptStream: reading the stream: %w", err)
		}
		if n < tagLen {
			return written, ErrDecryptionFailed
		}
		pt, err := sc.open(buf[:0], buf[:n], last)
		if err != nil {
			return written, ErrDecryptionFailed
		}
		if err := streamWrite(dst, pt); err != nil {
			return written, err
		}
		written += int64(len(pt))
		if last {
			return written, nil
		}
	}
}

// readStreamPrefix reads a stream's header, chunk size and salt from src,
// a field at a time, never past them, and checks them. It returns them,
// the parsed header (aliasing prefix) and the header's length.
// A malformed or cut prefix is ErrDecryptionFailed; src's errors are
// returned wrapped.
func readStreamPrefix(src io.Reader) ([]byte, header, int, error) {
	b := make([]byte, fixedHeaderLen, 256)
	if err := streamReadFull(src, b); err != nil {
		return nil, header{}, 0, err
	}
	// What parseHeader would refuse anyway, refused before reading more.
	if string(b[:4]) != magic || b[4] != formatVersion || b[5] != kindStream || b[6] != suiteAES256GCM {
		return nil, header{}, 0, ErrDecryptionFailed
	}
	wkLen := int(binary.BigEndian.Uint16(b[7:9]))
	if wkLen == 0 || wkLen > maxWrappedKey {
		return nil, header{}, 0, ErrDecryptionFailed
	}
	b, err := streamReadMore(src, b, wkLen+2)
	if err != nil {
		return nil, header{}, 0, err
	}
	ctxLen := int(binary.BigEndian.Uint16(b[len(b)-2:]))
	if ctxLen > maxKeyContext {
		return nil, header{}, 0, ErrDecryptionFailed
	}
	if b, err = streamReadMore(src, b, ctxLen+streamPrefixTail); err != nil {
		return nil, header{}, 0, err
	}
	h, hl, err := parseHeader(b)
	if err != nil || h.kind != kindStream || len(b)-hl != streamPrefixTail {
		return nil, header{}, 0, ErrDecryptionFailed
	}
	if cs := binary.BigEndian.Uint32(b[hl:]); cs < streamMinChunk || cs > streamMaxChunk {
		return nil, header{}, 0, ErrDecryptionFailed
	}
	return b, h, hl, nil
}

// streamReadMore appends n bytes read from src to b.
func streamReadMore(src io.Reader, b []byte, n int) ([]byte, error) {
	l := len(b)
	b = append(b, make([]byte, n)...)
	return b, streamReadFull(src, b[l:])
}

// streamReadFull fills b from src: a stream that ends first is
// ErrDecryptionFailed, src's own errors are returned wrapped.
func streamReadFull(src io.Reader, b []byte) error {
	if _, err := io.ReadFull(src, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return ErrDecryptionFailed
		}
		return fmt.Errorf("client: DecryptStream: reading the stream: %w", err)
	}
	return nil
}

// streamWrite writes all of b to dst.
func streamWrite(dst io.Writer, b []byte) error {
	n, err := dst.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("client: stream: writing: %w", err)
	}
	return nil
}

// streamCipher seals or opens one stream's chunks in order.
type streamCipher struct {
	aead  cipher.AEAD
	nonce [nonceLen]byte
	next  uint64 // the index of the next chunk
}

// newStreamCipher derives the stream key from the data key, the stream's
// prefix (header, chunk size, salt) and the caller's aad.
func newStreamCipher(dataKey, prefix, aad []byte) (*streamCipher, error) {
	h := sha256.New()
	h.Write(prefix)
	h.Write(aad)
	info := string(h.Sum([]byte(streamInfo)))
	salt := prefix[len(prefix)-streamSaltLen:]
	key, err := hkdf.Key(sha256.New, dataKey, salt, info, dataKeyLen)
	if err != nil {
		return nil, fmt.Errorf("client: stream key: %w", err)
	}
	aead, err := newGCM(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	return &streamCipher{aead: aead}, nil
}

// nextNonce sets the nonce of the next chunk and counts it.
func (s *streamCipher) nextNonce(last bool) error {
	if s.next > math.MaxUint32 {
		return errStreamTooLong
	}
	binary.BigEndian.PutUint32(s.nonce[7:11], uint32(s.next))
	s.nonce[11] = 0
	if last {
		s.nonce[11] = 1
	}
	s.next++
	return nil
}

// seal appends the next chunk, sealed, to dst; dst may be pt[:0].
func (s *streamCipher) seal(dst, pt []byte, last bool) ([]byte, error) {
	if err := s.nextNonce(last); err != nil {
		return nil, err
	}
	return s.aead.Seal(dst, s.nonce[:], pt, nil), nil
}

// open appends the next chunk's plaintext to dst; dst may be ct[:0].
func (s *streamCipher) open(dst, ct []byte, last bool) ([]byte, error) {
	if err := s.nextNonce(last); err != nil {
		return nil, err
	}
	return s.aead.Open(dst, s.nonce[:], ct, nil)
}
