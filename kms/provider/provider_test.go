package provider

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/localkek"
)

// tempDirs are removed after the tests.
var tempDirs []string

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	keyPath := filepath.Join(t.TempDir(), "root.key")
	k, err := localkek.OpenOrCreate(ctx, keyPath, logger)
	if err != nil {
		t.Fatalf("localkek.OpenOrCreate(%s) err = %v, want nil", keyPath, err)
	}
	k.Close()

	tests := []struct {
		name    string
		uri     string
		wantErr error  // nil: want success
		wantMsg string // in the error
	}{
		{"local-file", localkek.URI(keyPath), nil, ""},
		{"local-file upper-case scheme", "LOCAL-FILE://" + keyPath, nil, ""},
		{"local-file missing", "local-file:///nonexistent/root.key", errors.New(""), "/nonexistent/root.key"},
		{"local-file relative", "local-file:root.key", kms.ErrInvalidURI, "localkek"},
		{"pkcs11 bad URI", "pkcs11:object=root-1", kms.ErrInvalidURI, "token="},
		{"pkcs11 pin-value", "pkcs11:token=t;object=o?module-path=/m.so&pin-value=1234", kms.ErrInvalidURI, "pin-value is refused"},
		{"aws-kms bad key id", "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/abcd", kms.ErrInvalidURI, "awskms: the ARN's key id"},
		{"aws-kms upper-case scheme, plain http", "AWS-KMS://alias/root?endpoint=http://kms.example.com", kms.ErrInvalidURI, "plain http"},
		{"unknown scheme", "vault://secret/root", kms.ErrInvalidURI, `"vault"; want pkcs11:, aws-kms:// or local-file://`},
		{"no scheme", "/var/lib/tresor/root.key", kms.ErrInvalidURI, "no scheme"},
		{"empty", "", kms.ErrInvalidURI, "no scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := Open(ctx, tt.uri, logger)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Open(%q) err = %v, want nil", tt.uri, err)
				}
				if !strings.HasPrefix(k.ID(), "local-file:") {
					t.Errorf("Open(%q).ID() = %q, want a local-file: ID", tt.uri, k.ID())
				}
				if err := k.Close(); err != nil {
					t.Errorf("Close() err = %v, want nil", err)
				}
				return
			}
			if err == nil {
				k.Close()
				t.Fatalf("Open(%q) err = nil, want an error", tt.uri)
			}
			if errors.Is(tt.wantErr, kms.ErrInvalidURI) != errors.Is(err, kms.ErrInvalidURI) {
				t.Errorf("Open(%q) err = %v, errors.Is(err, kms.ErrInvalidURI) = %t, want %t",
					tt.uri, err, errors.Is(err, kms.ErrInvalidURI), errors.Is(tt.wantErr, kms.ErrInvalidURI))
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Open(%q) err = %q, want it to mention %q", tt.uri, err, tt.wantMsg)
			}
		})
	}
}

func TestScheme(t *testing.T) {
	tests := []struct{ in, want string }{
		{"pkcs11:token=x", "pkcs11"},
		{"PKCS11:token=x", "pkcs11"},
		{"local-file:///x", "local-file"},
		{"aws-kms://k", "aws-kms"},
		{"/abs/path", ""},
		{":x", ""},
		{"1abc:x", ""},
		{"a b:x", ""},
		{"", ""},
	}
	for _, tt := range tests {
		if got := Scheme(tt.in); got != tt.want {
			t.Errorf("Scheme(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
