package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/server"
	"github.com/tresorkms/tresor/kms/pkcs11"
	"github.com/tresorkms/tresor/softhsm"
)

// devCfg is the configuration `tresor dev` made in TestMain: SQLite, a root
// key in a real SoftHSM2 token, a local CA. SoftHSM2 reads its configuration
// once per process, so every test here shares this token's configuration.
var devCfg config.Config

func TestMain(m *testing.M) {
	if path := os.Getenv(serveChildEnv); path != "" {
		os.Exit(serveChild(path)) // the crash test's server process
	}
	os.Exit(func() int {
		if err := softhsm.Available(); err != nil {
			fmt.Fprintln(os.Stderr, "cmd/tresor tests need SoftHSM2 (make test installs it):", err)
			return 1
		}
		dir, err := os.MkdirTemp("", "tresor-cli-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		cfg, hsm, err := devSetup(context.Background(), dir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", false, slog.New(slog.DiscardHandler))
		if err != nil || !hsm {
			fmt.Fprintf(os.Stderr, "devSetup() = hsm %v, err %v; want a SoftHSM2 root key\n", hsm, err)
			return 1
		}
		devCfg = cfg
		return m.Run()
	}())
}

// startDev serves cfg until the test ends and returns the client flags that reach it.
func startDev(t *testing.T, cfg config.Config) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, slog.New(slog.DiscardHandler), func(s *server.Server) {
			g, _ := s.Addrs()
			ready <- g
		})
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("serve() err = %v before listening", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("serve() did not listen within 30s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve() err = %v after shutdown, want nil", err)
		}
	})
	f := devClient(t, cfg, addr, "cli-test")
	return []string{"--addr", f.addr, "--ca", f.ca, "--cert", f.cert, "--key-file", f.key, "--token", f.token}
}

// devClient is the client flags of the development client of cfg's dev
// state, with a 15-minute token for subject.
func devClient(t *testing.T, cfg config.Config, addr, subject string) clientFlags {
	t.Helper()
	tlsDir := filepath.Dir(cfg.TLS.ClientCAFile)
	f := clientFlags{addr: addr, ca: filepath.Join(tlsDir, "ca.pem"), cert: filepath.Join(tlsDir, "client.pem"), key: filepath.Join(tlsDir, "client-key.pem")}
	tok, err := mintDevToken(filepath.Dir(tlsDir), devissuer.TokenRequest{Subject: subject, Audience: devAudience, Lifetime: 15 * time.Minute}, f.cert)
	if err != nil {
		t.Fatalf("mintDevToken() err = %v, want nil", err)
	}
	f.token = tok
	return f
}

// devConn dials addr as the development client, the way the CLI does.
func devConn(t *testing.T, cfg config.Config, addr, subject string) *grpc.ClientConn {
	t.Helper()
	f := devClient(t, cfg, addr, subject)
	conn, err := f.dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// run runs the CLI in process with stdin and returns stdout.
func run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCmd(strings.NewReader(stdin), &out, &errOut)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func mustRun(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := run(t, stdin, args...)
	if err != nil {
		t.Fatalf("tresor %s: err = %v, want nil", strings.Join(redactToken(args), " "), err)
	}
	return out
}

func TestCLITour(t *testing.T) {
	conn := startDev(t, devCfg)
	with := func(args ...string) []string { return append(args, conn...) }

	var key struct {
		Name           string `json:"name"`
		PrimaryVersion int    `json:"primaryVersion"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "", with("keys", "create", "payments")...)), &key); err != nil || key.Name != "keys/payments" {
		t.Fatalf("keys create = %+v, %v; want keys/payments", key, err)
	}
	const iban = "DE89370400440532013000"
	ct1 := mustRun(t, iban, with("encrypt", "--key", "payments", "--aad", "customer=42")...)
	if !strings.HasPrefix(ct1, "tresor:v1:") {
		t.Fatalf("encrypt printed %q, want a tresor:v1: ciphertext", ct1)
	}
	if got := mustRun(t, ct1, with("decrypt", "--aad", "customer=42")...); got != iban {
		t.Errorf("decrypt = %q, want %q", got, iban)
	}
	if err := json.Unmarshal([]byte(mustRun(t, "", with("keys", "rotate", "payments")...)), &key); err != nil || key.PrimaryVersion != 2 {
		t.Fatalf("keys rotate = %+v, %v; want primary version 2", key, err)
	}
	if got := mustRun(t, ct1, with("decrypt", "--aad", "customer=42")...); got != iban {
		t.Errorf("decrypt of a version-1 ciphertext after rotation = %q, want %q", got, iban)
	}
	ct2 := mustRun(t, ct1, with("reencrypt", "--aad", "customer=42")...)
	if ct2 == ct1 || mustRun(t, ct2, with("decrypt", "--aad", "customer=42")...) != iban {
		t.Errorf("reencrypt gave %q, want a new ciphertext that decrypts to the same plaintext", ct2)
	}
	var dk struct{ Plaintext, Ciphertext string }
	if err := json.Unmarshal([]byte(mustRun(t, "", with("datakey", "--key", "payments")...)), &dk); err != nil || dk.Plaintext == "" || dk.Ciphertext == "" {
		t.Errorf("datakey = %+v, %v; want a plaintext and a ciphertext", dk, err)
	}
	if _, err := run(t, ct1, with("decrypt", "--aad", "customer=43")...); err == nil || !strings.Contains(err.Error(), "decryption failed") {
		t.Errorf("decrypt with the wrong --aad err = %v, want decryption failed", err)
	}
	mustRun(t, "", with("keys", "update", "payments", "--min-decryption-version", "2", "--label", "owner=payments")...)
	if _, err := run(t, ct1, with("decrypt", "--aad", "customer=42")...); err == nil || !strings.Contains(err.Error(), "minimum decryption version") {
		t.Errorf("decrypt of version 1 after min-decryption-version 2 err = %v, want a minimum version error", err)
	}
	mustRun(t, "", with("keys", "disable", "payments")...)
	if _, err := run(t, iban, with("encrypt", "--key", "payments")...); err == nil || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("encrypt with a disabled key err = %v, want disabled", err)
	}
	mustRun(t, "", with("keys", "enable", "payments")...)
	if got := mustRun(t, ct2, with("decrypt", "--aad", "customer=42")...); got != iban {
		t.Errorf("decrypt after enable = %q, want %q", got, iban)
	}
	if out := mustRun(t, "", with("keys", "list")...); !strings.Contains(out, "keys/payments") || !strings.Contains(out, `"owner"`) {
		t.Errorf("keys list = %s, want keys/payments with its owner label", out)
	}
	// --in and --out files.
	dir := t.TempDir()
	in, out := filepath.Join(dir, "pt"), filepath.Join(dir, "ct")
	if err := os.WriteFile(in, []byte("from a file"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "", with("encrypt", "--key", "payments", "--in", in, "--out", out)...)
	if got := mustRun(t, "", with("decrypt", "--in", out)...); got != "from a file" {
		t.Errorf("decrypt --in = %q, want %q", got, "from a file")
	}
}

func TestServeRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	const wrongPIN = "wrong-pin-9f3a"
	wrongPINFile := filepath.Join(dir, "wrong.pin")
	if err := os.WriteFile(wrongPINFile, []byte(wrongPIN), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := devCfg.RootKey.URI
	pinSource := uri[strings.Index(uri, "pin-source=")+len("pin-source="):]
	if i := strings.IndexByte(pinSource, '&'); i >= 0 {
		pinSource = pinSource[:i]
	}
	withRoot := func(u string) config.Config {
		c := devCfg
		c.RootKey.URI = u
		return c
	}
	tests := []struct {
		name     string
		cfg      config.Config
		wantErr  error
		wantText string
	}{
		{"wrong PIN", withRoot(strings.Replace(uri, pinSource, wrongPINFile, 1)), pkcs11.ErrPINIncorrect, "PIN"},
		{"missing token", withRoot(strings.Replace(uri, "token="+devTokenLabel, "token=absent", 1)), pkcs11.ErrTokenNotFound, "absent"},
		{"missing root key object", withRoot(strings.Replace(uri, "object="+devRootObject, "object=nope", 1)), pkcs11.ErrKeyNotFound, "nope"},
		{"missing pin file", withRoot(strings.Replace(uri, pinSource, filepath.Join(dir, "no-such.pin"), 1)), nil, "no-such.pin"},
		{"unknown root key provider", withRoot("vault://x"), nil, "unknown root key provider"},
		{"missing TLS certificate", func() config.Config {
			c := devCfg
			c.TLS.CertFile = filepath.Join(dir, "typo.pem")
			c.Store.URL = "sqlite://" + filepath.Join(dir, "must-not-exist.db")
			return c
		}(), nil, "typo.pem"},
		{"no client CA", func() config.Config {
			c := devCfg
			c.TLS.ClientCAFile = ""
			return c
		}(), config.ErrInvalid, "client_ca_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := serve(ctx, tt.cfg, slog.New(slog.DiscardHandler), func(*server.Server) {
				t.Errorf("serve() started listening, want it to refuse")
			})
			if err == nil {
				t.Fatalf("serve() err = nil, want a refusal")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("serve() err = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), "refusing to start") || !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("serve() err = %q, want it to say it refuses to start and mention %q", err, tt.wantText)
			}
			if strings.Contains(err.Error(), wrongPIN) {
				t.Errorf("serve() err = %q contains the PIN", err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "must-not-exist.db")); err == nil {
		t.Errorf("serve() with a TLS typo created the key store; want nothing written")
	}
}

func TestConfigFiles(t *testing.T) {
	dir := t.TempDir()
	// `tresor dev` wrote a config that `tresor serve` and `tresor check` accept.
	devYAML := filepath.Join(filepath.Dir(filepath.Dir(devCfg.TLS.CertFile)), "tresor.yaml")
	if out, err := run(t, "", "check", "--config", devYAML); err != nil || !strings.Contains(out, "configuration OK") {
		t.Errorf("check --config %s = %q, %v; want OK", devYAML, out, err)
	}
	raw, err := os.ReadFile(devYAML)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, append(raw, []byte("unexpected_key: true\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"check", "serve"} {
		if _, err := run(t, "", cmd, "--config", bad); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "unexpected_key") {
			t.Errorf("%s --config with an unknown key: err = %v, want config.ErrInvalid naming unexpected_key", cmd, err)
		}
	}
}

func TestDevWithoutHSM(t *testing.T) {
	dir := t.TempDir()
	cfg, hsm, err := devSetup(context.Background(), dir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", true, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || hsm || !strings.HasPrefix(cfg.RootKey.URI, "local-file://") {
		t.Fatalf("devSetup(--no-hsm) = %q, hsm %v, %v; want a local-file root key", cfg.RootKey.URI, hsm, err)
	}
	conn := startDev(t, cfg)
	mustRun(t, "", append([]string{"keys", "create", "k"}, conn...)...)
	ct := mustRun(t, "x", append([]string{"encrypt", "--key", "k"}, conn...)...)
	if got := mustRun(t, ct, append([]string{"decrypt"}, conn...)...); got != "x" {
		t.Errorf("decrypt = %q, want x", got)
	}
}

// TestTokensFromTheDevIssuer: `tresor token` mints a token the server
// accepts; client commands mint one themselves from TRESOR_DEV_DIR; without
// a token the server refuses.
func TestTokensFromTheDevIssuer(t *testing.T) {
	conn := startDev(t, devCfg)
	noToken := conn[:len(conn)-2] // drop --token
	devDir := filepath.Dir(filepath.Dir(devCfg.TLS.CertFile))
	mustRun(t, "", append([]string{"keys", "create", "tokens"}, conn...)...)

	t.Setenv("TRESOR_DEV_DIR", "")
	if _, err := run(t, "x", append([]string{"encrypt", "--key", "tokens"}, noToken...)...); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Errorf("encrypt without a token err = %v, want Unauthenticated", err)
	}
	tok := strings.TrimSpace(mustRun(t, "", "token", "--dir", devDir, "--sub", "alice", "--role", "analyst"))
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("tresor token printed %q, want a compact JWT", tok)
	}
	claims, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || !strings.Contains(string(claims), `"x5t#S256"`) || !strings.Contains(string(claims), `"alice"`) || !strings.Contains(string(claims), `"analyst"`) {
		t.Errorf("token claims = %s, %v; want sub alice, role analyst and a certificate binding", claims, err)
	}
	if out := mustRun(t, "x", append([]string{"encrypt", "--key", "tokens", "--token", tok}, noToken...)...); !strings.HasPrefix(out, "tresor:v1:") {
		t.Errorf("encrypt with a minted token = %q, want a ciphertext", out)
	}
	if _, err := run(t, "", "token", "--dir", devDir, "--lifetime", "1h"); err == nil {
		t.Errorf("tresor token --lifetime 1h err = nil, want a refusal (at most 15m)")
	}
	t.Setenv("TRESOR_DEV_DIR", devDir)
	if out := mustRun(t, "x", append([]string{"encrypt", "--key", "tokens"}, noToken...)...); !strings.HasPrefix(out, "tresor:v1:") {
		t.Errorf("encrypt with TRESOR_DEV_DIR and no --token = %q, want a ciphertext (minted token)", out)
	}
}

// TestPoliciesRefusedAtStart: a policy that does not validate against the
// schema stops `tresor check` and `tresor serve`.
func TestPoliciesRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	schema, err := os.ReadFile(devCfg.Policy.SchemaFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tresor.cedarschema"), schema, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bad.cedar"), []byte(`@id("bad") permit (principal, action, resource) when { resource.colour == "red" };`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := devCfg
	cfg.Policy.Dir = dir
	cfg.Policy.SchemaFile = filepath.Join(dir, "tresor.cedarschema")
	cfg.Store.URL = "sqlite://" + filepath.Join(dir, "must-not-exist.db")
	err = serve(context.Background(), cfg, slog.New(slog.DiscardHandler), func(*server.Server) {
		t.Errorf("serve() started with a policy that does not validate")
	})
	if err == nil || !strings.Contains(err.Error(), "refusing to start") || !strings.Contains(err.Error(), "bad") {
		t.Errorf("serve() with an invalid policy err = %v, want a refusal naming the policy", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "must-not-exist.db")); err == nil {
		t.Errorf("serve() with an invalid policy created the key store")
	}
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(devCfg.TLS.CertFile)), "tresor.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	yaml := strings.Replace(string(raw), fmt.Sprintf("dir: %q", devCfg.Policy.Dir), fmt.Sprintf("dir: %q", dir), 1)
	yaml = strings.Replace(yaml, fmt.Sprintf("schema_file: %q", devCfg.Policy.SchemaFile), fmt.Sprintf("schema_file: %q", cfg.Policy.SchemaFile), 1)
	path := filepath.Join(dir, "tresor.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, "", "check", "--config", path); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Errorf("check with an invalid policy err = %v, want a refusal naming the policy", err)
	}
}

// redactToken hides the value of --token in a command line shown in a
// failure message.
func redactToken(args []string) []string {
	out := slices.Clone(args)
	for i := range out {
		if out[i] == "--token" && i+1 < len(out) {
			out[i+1] = "[REDACTED]"
		}
	}
	return out
}

// TestKeyLifecycleCLI: keys create with a usage limit and retirement,
// schedule-deletion and cancel-deletion.
func TestKeyLifecycleCLI(t *testing.T) {
	conn := startDev(t, devCfg)
	with := func(args ...string) []string { return append(args, conn...) }
	var key struct {
		State               string
		UsageLimit          string
		RetireAfterVersions int
		DeletionTime        string
	}
	decode := func(out string) {
		t.Helper()
		key.DeletionTime = ""
		if err := json.Unmarshal([]byte(out), &key); err != nil {
			t.Fatalf("output %q: %v", out, err)
		}
	}
	decode(mustRun(t, "", with("keys", "create", "lifecycle", "--usage-limit", "5000", "--retire-after-versions", "3")...))
	if key.UsageLimit != "5000" || key.RetireAfterVersions != 3 {
		t.Errorf("keys create = %+v, want usage limit 5000 and retire after 3 versions", key)
	}
	if _, err := run(t, "", with("keys", "schedule-deletion", "lifecycle", "--wait", "24h")...); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Errorf("schedule-deletion --wait 24h err = %v, want InvalidArgument (7 to 30 days)", err)
	}
	decode(mustRun(t, "", with("keys", "schedule-deletion", "lifecycle", "--wait", "168h")...))
	if key.State != "KEY_STATE_DELETION_SCHEDULED" || key.DeletionTime == "" {
		t.Errorf("schedule-deletion = %+v, want DELETION_SCHEDULED with a deletion time", key)
	}
	if _, err := run(t, "x", with("encrypt", "--key", "lifecycle")...); err == nil || !strings.Contains(err.Error(), "scheduled for deletion") {
		t.Errorf("encrypt with a key scheduled for deletion err = %v, want FailedPrecondition saying so", err)
	}
	decode(mustRun(t, "", with("keys", "cancel-deletion", "lifecycle")...))
	if key.State != "KEY_STATE_DISABLED" {
		t.Errorf("cancel-deletion = %+v, want DISABLED", key)
	}
}
