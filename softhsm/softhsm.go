// Package softhsm provisions throw-away SoftHSM2 tokens for tests and for
// tresor's development mode, so that the PKCS#11 root key (kms/pkcs11) runs
// against a real token without an HSM.
//
// Reach for [NewToken] first: it initializes a fresh token under a directory,
// writes its user PIN to a 0600 file and returns a [Token] whose [Token.URI]
// is a root-key URI ready for kms/pkcs11.Open or kms/pkcs11.CreateRootKey.
// [Available] says whether SoftHSM2 is installed, and if not, what is missing.
//
// SoftHSM2 reads the SOFTHSM2_CONF environment variable once, when the module
// is initialized (C_Initialize), and a process initializes a module once. So
// one process uses one SoftHSM2 configuration: create every token of a process
// under the same directory (they then share one softhsm2.conf) before the
// first root key is opened, and call [Token.SetProcessEnv] before that open.
// Child processes (softhsm2-util, pkcs11-tool) take [Token.Env] instead.
package softhsm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// ConfEnv is the environment variable SoftHSM2 reads its configuration path from.
const ConfEnv = "SOFTHSM2_CONF"

// ErrNotInstalled is wrapped by [Available], [FindModule] and [NewToken] when
// SoftHSM2 is missing.
var ErrNotInstalled = errors.New("softhsm2 is not installed: apt-get install softhsm2")

// ModulePaths are the places [FindModule] probes for libsofthsm2.so, in order.
func ModulePaths() []string {
	paths := []string{"/usr/lib/softhsm/libsofthsm2.so"}
	if triplet, ok := debianTriplets[runtime.GOARCH]; ok {
		paths = append(paths, "/usr/lib/"+triplet+"/softhsm/libsofthsm2.so")
	}
	return append(paths,
		"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/local/lib/softhsm/libsofthsm2.so",
		"/usr/lib64/pkcs11/libsofthsm2.so",
		"/usr/lib/pkcs11/libsofthsm2.so",
	)
}

var debianTriplets = map[string]string{
	"amd64":   "x86_64-linux-gnu",
	"arm64":   "aarch64-linux-gnu",
	"386":     "i386-linux-gnu",
	"arm":     "arm-linux-gnueabihf",
	"ppc64le": "powerpc64le-linux-gnu",
	"s390x":   "s390x-linux-gnu",
	"riscv64": "riscv64-linux-gnu",
}

// FindModule returns the first of [ModulePaths] that exists.
func FindModule() (string, error) {
	for _, p := range ModulePaths() {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w (no libsofthsm2.so in %s)", ErrNotInstalled, strings.Join(ModulePaths(), ", "))
}

// Available reports whether SoftHSM2 is installed: the PKCS#11 module and
// softhsm2-util. Its error says precisely what is missing.
func Available() error {
	var missing []string
	if _, err := FindModule(); err != nil {
		missing = append(missing, "no libsofthsm2.so in "+strings.Join(ModulePaths(), ", "))
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		missing = append(missing, "no softhsm2-util in PATH")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w (%s)", ErrNotInstalled, strings.Join(missing, "; "))
	}
	return nil
}

// Options tune [NewTokenWithOptions]. The zero value is fine.
type Options struct {
	// ModulePath overrides the probed libsofthsm2.so (see [FindModule]).
	ModulePath string
	// UtilPath overrides softhsm2-util found in PATH.
	UtilPath string
}

// Token is an initialized SoftHSM2 token. It holds no PIN: the user PIN is in
// PINFile only.
type Token struct {
	// ModulePath is the SoftHSM2 PKCS#11 module.
	ModulePath string
	// ConfigPath is the softhsm2.conf to export as SOFTHSM2_CONF.
	ConfigPath string
	// Label is the token label.
	Label string
	// PINFile holds the user PIN (mode 0600, no trailing newline).
	PINFile string
}

// NewToken initializes a new token labelled label in the SoftHSM2
// configuration under dir (dir/softhsm2.conf, tokens in dir/tokens), with
// random user and SO PINs; the user PIN is written to a 0600 file in dir. All
// tokens of a process must share one dir (see the package documentation).
// NewToken fails if a token with the same label already exists there.
//
// The PINs are passed to softhsm2-util as arguments, so other local users may
// see them in the process list: these tokens are for tests and development.
func NewToken(ctx context.Context, dir, label string) (*Token, error) {
	return NewTokenWithOptions(ctx, dir, label, Options{})
}

// NewTokenWithOptions is [NewToken] with options.
func NewTokenWithOptions(ctx context.Context, dir, label string, opts Options) (*Token, error) {
	if label == "" || len(label) > 32 {
		return nil, fmt.Errorf("softhsm: token label %q must be 1 to 32 bytes", label)
	}
	module := opts.ModulePath
	if module == "" {
		var err error
		if module, err = FindModule(); err != nil {
			return nil, err
		}
	} else if _, err := os.Stat(module); err != nil {
		return nil, fmt.Errorf("softhsm: module: %w", err)
	}
	util := opts.UtilPath
	if util == "" {
		var err error
		if util, err = exec.LookPath("softhsm2-util"); err != nil {
			return nil, fmt.Errorf("%w (no softhsm2-util in PATH)", ErrNotInstalled)
		}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	conf, err := writeConfig(dir)
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(), ConfEnv+"="+conf)

	labels, err := tokenLabels(ctx, util, env)
	if err != nil {
		return nil, err
	}
	for _, l := range labels {
		if l == label {
			return nil, fmt.Errorf("softhsm: a token labelled %q already exists in %s", label, dir)
		}
	}

	userPIN, soPIN := randomPIN(), randomPIN()
	pinFile, err := writePINFile(dir, label, userPIN)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, util, "--init-token", "--free", "--label", label, "--so-pin", soPIN, "--pin", userPIN)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(pinFile)
		msg := strings.TrimSpace(strings.NewReplacer(userPIN, "[REDACTED]", soPIN, "[REDACTED]").Replace(string(out)))
		return nil, fmt.Errorf("softhsm: softhsm2-util --init-token --label %q: %w: %s", label, err, msg)
	}
	return &Token{ModulePath: module, ConfigPath: conf, Label: label, PINFile: pinFile}, nil
}

const configTemplate = `# Written by tresor's softhsm package for throw-away tokens.
directories.tokendir = %s
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
`

func writeConfig(dir string) (string, error) {
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	want := fmt.Sprintf(configTemplate, tokens)
	if got, err := os.ReadFile(conf); err == nil && string(got) == want {
		return conf, nil
	}
	if err := os.WriteFile(conf, []byte(want), 0o600); err != nil {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	return conf, nil
}

func writePINFile(dir, label, pin string) (string, error) {
	safe := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, label)
	f, err := os.CreateTemp(dir, "pin-"+safe+"-*") // mode 0600
	if err != nil {
		return "", fmt.Errorf("softhsm: pin file: %w", err)
	}
	_, werr := f.WriteString(pin)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(f.Name())
		return "", fmt.Errorf("softhsm: pin file %s: %w", f.Name(), err)
	}
	return f.Name(), nil
}

// tokenLabels lists the labels of the initialized tokens.
func tokenLabels(ctx context.Context, util string, env []string) ([]string, error) {
	cmd := exec.CommandContext(ctx, util, "--show-slots")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("softhsm: softhsm2-util --show-slots: %w: %s", err, bytes.TrimSpace(out))
	}
	var labels []string
	for line := range strings.Lines(string(out)) {
		if l, ok := strings.CutPrefix(strings.TrimSpace(line), "Label:"); ok {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
	}
	return labels, nil
}

// randomPIN returns 26 base32 characters (128 bits) from crypto/rand.
func randomPIN() string { return rand.Text() }

// URI returns the kms/pkcs11 root-key URI of the AES key labelled object in
// this token, with the module path and the PIN file as pin-source.
func (t *Token) URI(object string) string {
	return "pkcs11:token=" + escape(t.Label, false) + ";object=" + escape(object, false) +
		"?module-path=" + escape(t.ModulePath, true) + "&pin-source=" + escape(t.PINFile, true)
}

// escape percent-encodes s for an RFC 7512 path (query=false) or query
// attribute value.
func escape(s string, query bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("-._~:[]@!$'()*+,", c) >= 0 || query && c == '/' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// Env returns the environment entry that points SoftHSM2 at this token's
// configuration, for child processes (cmd.Env = append(os.Environ(), t.Env()...)).
func (t *Token) Env() []string {
	return []string{ConfEnv + "=" + t.ConfigPath}
}

var processEnv struct {
	sync.Mutex
	conf string
}

// SetProcessEnv sets SOFTHSM2_CONF for this process to the token's
// configuration. Call it before the first root key on the token is opened:
// SoftHSM2 reads the variable at C_Initialize only. It fails if an earlier
// call set a different configuration, since one process uses one.
func (t *Token) SetProcessEnv() error {
	processEnv.Lock()
	defer processEnv.Unlock()
	if processEnv.conf != "" && processEnv.conf != t.ConfigPath {
		return fmt.Errorf("softhsm: this process already uses the SoftHSM2 configuration %s; one process uses one (create its tokens under one directory)", processEnv.conf)
	}
	if err := os.Setenv(ConfEnv, t.ConfigPath); err != nil {
		return fmt.Errorf("softhsm: %w", err)
	}
	processEnv.conf = t.ConfigPath
	return nil
}
