package localkek

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/kmstest"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func writeKey(t *testing.T, content []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "root.key")
	if err := os.WriteFile(p, content, mode); err != nil {
		t.Fatalf("WriteFile(%s) err = %v, want nil", p, err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask may have cut bits
		t.Fatalf("Chmod(%s) err = %v, want nil", p, err)
	}
	return p
}

func TestConformance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "root.key")
	k, err := OpenOrCreate(context.Background(), path, discard())
	if err != nil {
		t.Fatalf("OpenOrCreate(%s) err = %v, want nil", path, err)
	}
	k.Close()
	kmstest.Run(t, func(t *testing.T) kms.RootKey {
		k, err := Open(context.Background(), path, discard())
		if err != nil {
			t.Fatalf("Open(%s) err = %v, want nil", path, err)
		}
		return k
	})
}

func TestOpenOrCreate(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", "root.key")
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	a, err := OpenOrCreate(ctx, path, logger)
	if err != nil {
		t.Fatalf("OpenOrCreate(%s) err = %v, want nil", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("Stat(%s) err = %v, want nil", path, err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() != KeySize {
		t.Errorf("key file mode %#o, size %d, want 0600, %d", st.Mode().Perm(), st.Size(), KeySize)
	}
	key, _ := os.ReadFile(path)
	sum := sha256.Sum256(key)
	if want := "local-file:" + hex.EncodeToString(sum[:8]); a.ID() != want {
		t.Errorf("ID() = %q, want %q", a.ID(), want)
	}
	if strings.Contains(a.ID(), hex.EncodeToString(key)) || strings.Contains(logs.String(), hex.EncodeToString(key)) {
		t.Error("the ID or the log holds the key")
	}

	b, err := OpenOrCreate(ctx, path, logger) // exists: opened, not replaced
	if err != nil {
		t.Fatalf("second OpenOrCreate(%s) err = %v, want nil", path, err)
	}
	if a.ID() != b.ID() {
		t.Errorf("second OpenOrCreate ID() = %q, want %q (same key)", b.ID(), a.ID())
	}
	if n := strings.Count(logs.String(), "DEVELOPMENT ONLY: the root key is a plain file"); n != 2 {
		t.Errorf("logged the development-only warning %d times for 2 opens, want 2:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "created a new root key file"); n != 1 {
		t.Errorf("logged creation %d times, want 1", n)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("logs = %q, want WARN level", logs.String())
	}

	// A different key cannot unwrap.
	other, err := OpenOrCreate(ctx, filepath.Join(t.TempDir(), "other.key"), discard())
	if err != nil {
		t.Fatalf("OpenOrCreate(other) err = %v, want nil", err)
	}
	wrapped, err := a.Wrap(ctx, []byte("keyset"), nil)
	if err != nil {
		t.Fatalf("Wrap(pt, nil) err = %v, want nil", err)
	}
	if _, err := other.Unwrap(ctx, wrapped, nil); !errors.Is(err, kms.ErrUnwrap) {
		t.Errorf("other key: Unwrap(wrapped, nil) err = %v, want kms.ErrUnwrap", err)
	}
}

func TestOpenErrors(t *testing.T) {
	good := bytes.Repeat([]byte{7}, KeySize)
	tests := []struct {
		name    string
		path    string
		wantIs  error
		wantMsg string
	}{
		{"missing", filepath.Join(t.TempDir(), "nope.key"), fs.ErrNotExist, "nope.key"},
		{"short", writeKey(t, good[:31], 0o600), nil, "exactly 32 bytes"},
		{"long", writeKey(t, append(good, '\n'), 0o600), nil, "exactly 32 bytes"},
		{"empty", writeKey(t, nil, 0o600), nil, "exactly 32 bytes"},
		{"readable by others", writeKey(t, good, 0o644), nil, "chmod 600"},
		{"directory", t.TempDir(), nil, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(context.Background(), tt.path, discard())
			if err == nil {
				t.Fatalf("Open(%s) err = nil, want an error", tt.path)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Open(%s) err = %v, want %v", tt.path, err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Open(%s) err = %q, want it to mention %q", tt.path, err, tt.wantMsg)
			}
		})
	}
}

func TestParseURI(t *testing.T) {
	good := []struct{ in, want string }{
		{"local-file:///var/lib/tresor/root.key", "/var/lib/tresor/root.key"},
		{"LOCAL-FILE:///x", "/x"},
		{"local-file://localhost/x/y", "/x/y"},
		{"local-file:///my%20keys/root.key", "/my keys/root.key"},
		{"local-file:///a/../b//c", "/b/c"},
	}
	for _, tt := range good {
		got, err := ParseURI(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseURI(%q) = %q, %v, want %q, nil", tt.in, got, err, tt.want)
		}
		if again, err := ParseURI(URI(got)); err != nil || again != got {
			t.Errorf("ParseURI(URI(%q)) = %q, %v, want %q, nil", got, again, err, got)
		}
	}
	bad := []string{
		"", "local-file:", "local-file:root.key", "local-file:/abs/no-slashes", "local-file://", "local-file:///",
		"local-file://host/x", "local-file:///x?create=1", "local-file:///x#f", "local-file://u@/x",
		"file:///x", "local-file:///x%00y", "local-file:///x%zz",
	}
	for _, in := range bad {
		if _, err := ParseURI(in); !errors.Is(err, kms.ErrInvalidURI) {
			t.Errorf("ParseURI(%q) err = %v, want kms.ErrInvalidURI", in, err)
		}
	}
}

func TestCreateKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "root.key")
	for i, want := range []bool{true, false} {
		created, err := CreateKeyFile(path)
		if err != nil || created != want {
			t.Fatalf("CreateKeyFile() call %d = %v, %v; want %v, nil", i+1, created, err, want)
		}
	}
	st, err := os.Stat(path)
	if err != nil || st.Size() != KeySize || st.Mode().Perm() != 0o600 {
		t.Errorf("key file = %v, %v; want %d bytes, mode 0600", st, err, KeySize)
	}
}
