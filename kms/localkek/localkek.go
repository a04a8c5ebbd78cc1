// Package localkek is a root key kept in a plain file, for development and
// tests only: the key sits on disk, readable by anyone who can read the file,
// so it protects nothing against a local attacker. Production uses a PKCS#11
// token (kms/pkcs11).
//
// Reach for [Open] (or kms/provider.Open with a local-file:///abs/path URI);
// [OpenOrCreate] first writes a new random key file (mode 0600) if there is
// none. Every open logs a loud warning. Wrapping is AES-256-GCM in process;
// the output is 1 format-version byte, the 12-byte nonce, then the ciphertext
// and 16-byte tag, as kms/pkcs11 writes it.
package localkek

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/tresorkms/tresor/kms"
)

// KeySize is the size of a key file: 32 random bytes.
const KeySize = 32

const (
	formatV1  = 1
	nonceSize = 12
	overhead  = 1 + nonceSize + 16
)

// RootKey is a development-only root key read from a file. It implements
// kms.RootKey and is safe for concurrent use.
type RootKey struct {
	id   string
	aead atomic.Pointer[cipher.AEAD] // nil once closed
}

var _ kms.RootKey = (*RootKey)(nil)

// Open reads the key file at path (exactly 32 bytes, no group or other
// permissions) and logs a warning that this root key is for development
// only. A nil logger means slog.Default().
func Open(ctx context.Context, path string, logger *slog.Logger) (*RootKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	key, err := readKey(path)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("localkek: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("localkek: %w", err)
	}
	sum := sha256.Sum256(key)
	k := &RootKey{id: "local-file:" + hex.EncodeToString(sum[:8])}
	k.aead.Store(&aead)
	logger.WarnContext(ctx, "DEVELOPMENT ONLY: the root key is a plain file on disk and protects nothing; use a PKCS#11 root key (pkcs11:...) in production",
		"root_key", k.id, "path", path)
	return k, nil
}

// OpenOrCreate is [Open], after writing a new random key file at path
// (mode 0600, parent directories 0700) if none exists.
func OpenOrCreate(ctx context.Context, path string, logger *slog.Logger) (*RootKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	created, err := CreateKeyFile(path)
	if err != nil {
		return nil, err
	}
	if created {
		logger.WarnContext(ctx, "DEVELOPMENT ONLY: created a new root key file", "path", path)
	}
	return Open(ctx, path, logger)
}

// CreateKeyFile writes a new random key file at path (mode 0600, parent
// directories 0700) unless one exists, and reports whether it wrote one.
func CreateKeyFile(path string) (created bool, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, fmt.Errorf("localkek: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("localkek: %w", err)
	}
	key := make([]byte, KeySize)
	defer clear(key)
	_, _ = rand.Read(key) // never fails (crypto/rand)
	_, werr := f.Write(key)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(path)
		return false, fmt.Errorf("localkek: writing key file %s: %w", path, err)
	}
	return true, nil
}

func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("localkek: key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("localkek: key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("localkek: key file %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("localkek: key file %s has mode %#o; other users must not read it (chmod 600 %s)", path, perm, path)
	}
	key := make([]byte, KeySize+1)
	n, err := io.ReadFull(f, key)
	if n != KeySize || !errors.Is(err, io.ErrUnexpectedEOF) {
		clear(key)
		return nil, fmt.Errorf("localkek: key file %s must hold exactly %d bytes", path, KeySize)
	}
	return key[:KeySize], nil
}

// ID returns "local-file:" and the first 8 bytes of the key's SHA-256, in hex.
func (k *RootKey) ID() string { return k.id }

// Wrap encrypts plaintext with AES-256-GCM under a random nonce, with
// associatedData as the GCM additional data.
func (k *RootKey) Wrap(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	aead := k.aead.Load()
	if aead == nil {
		return nil, kms.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]byte, 1+nonceSize, overhead+len(plaintext))
	out[0] = formatV1
	_, _ = rand.Read(out[1:]) // never fails (crypto/rand)
	return (*aead).Seal(out, out[1:], plaintext, associatedData), nil
}

// Unwrap decrypts what Wrap returned. Any failure is kms.ErrUnwrap.
func (k *RootKey) Unwrap(ctx context.Context, wrapped, associatedData []byte) ([]byte, error) {
	aead := k.aead.Load()
	if aead == nil {
		return nil, kms.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(wrapped) < overhead || wrapped[0] != formatV1 {
		return nil, fmt.Errorf("localkek: %w", kms.ErrUnwrap)
	}
	pt, err := (*aead).Open(nil, wrapped[1:1+nonceSize], wrapped[1+nonceSize:], associatedData)
	if err != nil {
		return nil, fmt.Errorf("localkek: %w", kms.ErrUnwrap)
	}
	return pt, nil
}

// Close drops the key. Calls after Close fail with kms.ErrClosed.
func (k *RootKey) Close() error {
	k.aead.Store(nil)
	return nil
}

// ParseURI returns the absolute key-file path of a local-file:///abs/path URI
// (percent-decoded; local-file://localhost/abs/path also works). Errors wrap
// kms.ErrInvalidURI.
func ParseURI(uri string) (string, error) {
	const scheme = "local-file:"
	if len(uri) < len(scheme) || !strings.EqualFold(uri[:len(scheme)], scheme) {
		return "", fmt.Errorf("%w: localkek: the URI does not start with %q", kms.ErrInvalidURI, scheme)
	}
	u, err := url.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("%w: localkek: %w", kms.ErrInvalidURI, err)
	}
	switch {
	case u.Opaque != "" || !strings.HasPrefix(uri[len(scheme):], "//"):
		return "", fmt.Errorf("%w: localkek: want local-file:///absolute/path", kms.ErrInvalidURI)
	case u.Host != "" && !strings.EqualFold(u.Host, "localhost"):
		return "", fmt.Errorf("%w: localkek: host %q: key files are local (local-file:///absolute/path)", kms.ErrInvalidURI, u.Host)
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", fmt.Errorf("%w: localkek: local-file URIs take no user, query or fragment", kms.ErrInvalidURI)
	case u.Path == "" || !filepath.IsAbs(u.Path):
		return "", fmt.Errorf("%w: localkek: want local-file:///absolute/path", kms.ErrInvalidURI)
	case strings.HasSuffix(u.Path, "/"):
		return "", fmt.Errorf("%w: localkek: the path names a directory, want a key file", kms.ErrInvalidURI)
	case strings.IndexByte(u.Path, 0) >= 0:
		return "", fmt.Errorf("%w: localkek: the path contains a NUL byte", kms.ErrInvalidURI)
	}
	return filepath.Clean(u.Path), nil
}

// URI returns the local-file URI of the absolute path.
func URI(path string) string {
	return (&url.URL{Scheme: "local-file", Path: path}).String()
}
