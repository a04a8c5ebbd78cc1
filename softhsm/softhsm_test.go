package softhsm_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/kms/pkcs11"
	"github.com/tresorkms/tresor/softhsm"
)

// These tests fail, not skip, when SoftHSM2 is missing.

func TestAvailable(t *testing.T) {
	if err := softhsm.Available(); err != nil {
		t.Fatalf("Available() err = %v, want nil (this machine needs softhsm2)", err)
	}
	p, err := softhsm.FindModule()
	if err != nil || !filepath.IsAbs(p) {
		t.Fatalf("FindModule() = %q, %v, want an absolute path, nil", p, err)
	}
}

func TestNewToken(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	tok, err := softhsm.NewToken(ctx, dir, "test token")
	if err != nil {
		t.Fatalf("NewToken(ctx, dir, %q) err = %v, want nil", "test token", err)
	}
	if tok.Label != "test token" || tok.ConfigPath != filepath.Join(dir, "softhsm2.conf") {
		t.Errorf("NewToken = %+v, want label %q and config in %s", tok, "test token", dir)
	}
	st, err := os.Stat(tok.PINFile)
	if err != nil {
		t.Fatalf("Stat(PINFile) err = %v, want nil", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("PINFile mode = %#o, want 0600", st.Mode().Perm())
	}
	pin, _ := os.ReadFile(tok.PINFile)
	if len(pin) < 16 || strings.ContainsAny(string(pin), "\n ") {
		t.Errorf("PIN file holds %d bytes, want a random PIN of 16+ characters without newline", len(pin))
	}
	conf, err := os.ReadFile(tok.ConfigPath)
	if err != nil || !strings.Contains(string(conf), "directories.tokendir = "+filepath.Join(dir, "tokens")) {
		t.Errorf("config = %q, %v, want tokendir under %s", conf, err, dir)
	}

	// The token is visible to softhsm2-util with Env, and its user PIN works.
	out, err := run(tok, "softhsm2-util", "--show-slots")
	if err != nil || !strings.Contains(out, "test token") {
		t.Errorf("softhsm2-util --show-slots = %q, %v, want the token listed", out, err)
	}

	u, err := pkcs11.ParseURI(tok.URI("root key/1"))
	if err != nil {
		t.Fatalf("pkcs11.ParseURI(URI(%q)) err = %v, want nil", "root key/1", err)
	}
	want := pkcs11.URI{Token: "test token", Object: "root key/1", ModulePath: tok.ModulePath, PINSource: tok.PINFile}
	if u.Token != want.Token || u.Object != want.Object || u.ModulePath != want.ModulePath || u.PINSource != want.PINSource {
		t.Errorf("URI parses to %+v, want %+v", u, want)
	}

	// A second token under the same dir shares the config.
	second, err := softhsm.NewToken(ctx, dir, "second")
	if err != nil {
		t.Fatalf("NewToken(second) err = %v, want nil", err)
	}
	if second.ConfigPath != tok.ConfigPath || second.PINFile == tok.PINFile {
		t.Errorf("second token config %s, pin file %s; want the shared config and its own pin file", second.ConfigPath, second.PINFile)
	}
	out, err = run(tok, "softhsm2-util", "--show-slots")
	if err != nil || !strings.Contains(out, "test token") || !strings.Contains(out, "second") {
		t.Errorf("softhsm2-util --show-slots = %q, %v, want both tokens", out, err)
	}
}

func run(tok *softhsm.Token, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), tok.Env()...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestNewTokenErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := softhsm.NewToken(ctx, dir, "dup"); err != nil {
		t.Fatalf("NewToken(dup) err = %v, want nil", err)
	}
	tests := []struct {
		name    string
		dir     string
		label   string
		opts    softhsm.Options
		wantMsg string
	}{
		{"duplicate label", dir, "dup", softhsm.Options{}, "already exists"},
		{"empty label", dir, "", softhsm.Options{}, "1 to 32 bytes"},
		{"long label", dir, strings.Repeat("x", 33), softhsm.Options{}, "1 to 32 bytes"},
		{"missing module", dir, "m", softhsm.Options{ModulePath: "/nonexistent/libsofthsm2.so"}, "/nonexistent/libsofthsm2.so"},
		{"missing util", dir, "u", softhsm.Options{UtilPath: "/nonexistent/softhsm2-util"}, "/nonexistent/softhsm2-util"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := softhsm.NewTokenWithOptions(ctx, tt.dir, tt.label, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("NewTokenWithOptions(%q) err = %v, want it to mention %q", tt.label, err, tt.wantMsg)
			}
		})
	}
}

func TestSetProcessEnv(t *testing.T) {
	t.Setenv(softhsm.ConfEnv, "") // restored after the test
	softhsm.ResetProcessEnv()
	t.Cleanup(softhsm.ResetProcessEnv)
	ctx := context.Background()
	a, err := softhsm.NewToken(ctx, t.TempDir(), "a")
	if err != nil {
		t.Fatalf("NewToken(a) err = %v, want nil", err)
	}
	b, err := softhsm.NewToken(ctx, t.TempDir(), "b")
	if err != nil {
		t.Fatalf("NewToken(b) err = %v, want nil", err)
	}
	if err := a.SetProcessEnv(); err != nil {
		t.Fatalf("a.SetProcessEnv() err = %v, want nil", err)
	}
	if got := os.Getenv(softhsm.ConfEnv); got != a.ConfigPath {
		t.Errorf("%s = %q, want %q", softhsm.ConfEnv, got, a.ConfigPath)
	}
	if err := a.SetProcessEnv(); err != nil {
		t.Errorf("a.SetProcessEnv() again err = %v, want nil", err)
	}
	if err := b.SetProcessEnv(); err == nil || !strings.Contains(err.Error(), "one process uses one") {
		t.Errorf("b.SetProcessEnv() err = %v, want an error (one config per process)", err)
	}
}
