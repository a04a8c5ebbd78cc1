// Package localkms starts a real local-kms process for tests and for
// development: local-kms (github.com/nsmithuk/local-kms) is a Go program that
// serves the AWS KMS API with real AES-GCM, so that kms/awskms runs through
// the real AWS SDK without an AWS account.
//
// Reach for [Start] first: it builds local-kms (see [Build]), runs it on a
// free port with its data under a directory, waits until it listens, and
// returns a [Server] whose [Server.Endpoint] goes into an aws-kms:// URI as
// endpoint=. [Server.ClientEnv] gives the static credentials the SDK needs
// (local-kms checks none) and shields the SDK from the developer's own AWS
// configuration. [Server.Stop] and [Server.Restart] stop and start the same
// server again, on the same port and with the same keys, for fault tests.
//
// local-kms is pinned as a Go tool in the repository's tools/go.mod; [Build]
// compiles that version once and caches the binary under the user's cache
// directory (os.UserCacheDir()/tresor/local-kms-VERSION-GOOS-GOARCH), so
// later test runs start it in milliseconds.
//
// local-kms listens on every interface (it has no bind address setting) and
// does not check request signatures: run it on trusted machines only.
package localkms

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Module is the Go module (and main package) of local-kms.
const Module = "github.com/nsmithuk/local-kms"

// Defaults for [Options].
const (
	DefaultRegion       = "eu-west-2"
	DefaultAccountID    = "111122223333"
	DefaultStartTimeout = 30 * time.Second
)

// Static credentials for local-kms, which accepts any. They are in
// [Server.ClientEnv].
const (
	AccessKeyID     = "TRESORLOCALKMSTEST"
	SecretAccessKey = "tresor-local-kms-test-secret" // not a secret: local-kms checks no signature
)

// ErrNotRunning is returned by calls that need a running server after
// [Server.Stop] or [Server.Close].
var ErrNotRunning = errors.New("localkms: the server is not running")

// Options tune [Start]. The zero value is fine.
type Options struct {
	// Dir holds the server's data (Dir/data) and log (Dir/local-kms.log).
	// Empty means a new temporary directory, removed by Close.
	Dir string
	// Port to listen on; 0 picks a free one.
	Port int
	// Region and AccountID go into the keys' ARNs. Empty means
	// DefaultRegion and DefaultAccountID.
	Region, AccountID string
	// Binary is a local-kms executable to run instead of the one [Build] makes.
	Binary string
	// ToolsDir is the directory of the tools/go.mod that pins local-kms.
	// Empty means the one [FindToolsDir] finds.
	ToolsDir string
	// Log receives local-kms's output. Nil means the file Dir/local-kms.log.
	Log io.Writer
	// StartTimeout bounds each start. Zero means DefaultStartTimeout.
	StartTimeout time.Duration
}

// Server is a running (or stopped) local-kms process. Its methods are safe
// for concurrent use.
type Server struct {
	dir, region, account, binary string
	removeDir                    bool
	timeout                      time.Duration
	log                          io.Writer
	logFile                      *os.File

	mu     sync.Mutex
	port   int
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	closed bool
}

// Start builds local-kms if needed, starts it and waits until it listens.
// The server runs until [Server.Close] (or [Server.Stop]), not until ctx ends.
func Start(ctx context.Context, opts Options) (*Server, error) {
	s := &Server{
		dir:     opts.Dir,
		region:  opts.Region,
		account: opts.AccountID,
		binary:  opts.Binary,
		timeout: opts.StartTimeout,
		log:     opts.Log,
		port:    opts.Port,
	}
	if s.region == "" {
		s.region = DefaultRegion
	}
	if s.account == "" {
		s.account = DefaultAccountID
	}
	if s.timeout <= 0 {
		s.timeout = DefaultStartTimeout
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("localkms: port %d out of range", opts.Port)
	}
	if s.binary == "" {
		bin, err := Build(ctx, opts.ToolsDir)
		if err != nil {
			return nil, err
		}
		s.binary = bin
	}
	if s.dir == "" {
		dir, err := os.MkdirTemp("", "tresor-local-kms-")
		if err != nil {
			return nil, fmt.Errorf("localkms: %w", err)
		}
		s.dir, s.removeDir = dir, true
	} else if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("localkms: %w", err)
	}
	if s.log == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, "local-kms.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			s.cleanup()
			return nil, fmt.Errorf("localkms: %w", err)
		}
		s.log, s.logFile = f, f
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.start(ctx, s.port); err != nil {
		s.cleanup()
		return nil, err
	}
	return s, nil
}

// Endpoint returns the server's URL, http://127.0.0.1:PORT. It changes only
// if [Server.Restart] could not take the old port again.
func (s *Server) Endpoint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Region returns the region in the server's key ARNs.
func (s *Server) Region() string { return s.region }

// AccountID returns the account in the server's key ARNs.
func (s *Server) AccountID() string { return s.account }

// Dir returns the directory holding the server's data and log.
func (s *Server) Dir() string { return s.dir }

// ClientEnv returns the environment (KEY=value) for an AWS SDK client of
// this server: the static [AccessKeyID] and [SecretAccessKey], no EC2
// metadata lookups, shared config and credentials files that do not exist
// (so a developer's ~/.aws profile cannot change region, endpoint or
// credentials), and endpoints from the environment or profile ignored, so
// only an explicit endpoint (the aws-kms:// endpoint= parameter) reaches the
// server. It sets no region. Tests apply it with t.Setenv.
func (s *Server) ClientEnv() []string {
	none := filepath.Join(s.dir, "no-such-aws-config")
	return []string{
		"AWS_ACCESS_KEY_ID=" + AccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + SecretAccessKey,
		"AWS_SESSION_TOKEN=",
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=" + none,
		"AWS_SHARED_CREDENTIALS_FILE=" + none,
		"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true",
	}
}

// Running reports whether the process is running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// Stop stops the process and waits for it to exit, keeping its data: calls
// to the endpoint fail until [Server.Restart]. Stopping a stopped server
// does nothing.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stop()
	return nil
}

// Restart starts a stopped server again (or stops a running one first) with
// the same data, on the same port if it is still free, else on a new one
// ([Server.Endpoint] says which). Keys created and ciphertexts made before
// work again.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrNotRunning
	}
	s.stop()
	err := s.start(ctx, s.port)
	if err != nil && ctx.Err() == nil && !errors.Is(err, errExecFailed) {
		// Most likely another process took the port meanwhile.
		if err2 := s.start(ctx, 0); err2 == nil {
			return nil
		}
	}
	return err
}

// Close stops the server and removes its directory if [Start] created it.
// Close again does nothing.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.stop()
	return s.cleanup()
}

func (s *Server) cleanup() error {
	var errs []error
	if s.logFile != nil {
		errs = append(errs, s.logFile.Close())
		s.logFile = nil
	}
	if s.removeDir {
		errs = append(errs, os.RemoveAll(s.dir))
	}
	return errors.Join(errs...)
}

var errExecFailed = errors.New("localkms: cannot run local-kms")

// started matches the line local-kms logs once it listens; it names the
// port it bound, which tells us the port when we asked for port 0.
var started = regexp.MustCompile(`Local KMS started on [^ ]*:([0-9]+)`)

// start runs the process on port (0: any) and waits for it to listen.
// s.mu is held.
func (s *Server) start(ctx context.Context, port int) error {
	dataDir := filepath.Join(s.dir, "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("localkms: %w", err)
	}
	cmd := exec.Command(s.binary)
	cmd.Dir = s.dir
	cmd.Env = []string{
		"PORT=" + strconv.Itoa(port),
		"KMS_REGION=" + s.region,
		"KMS_ACCOUNT_ID=" + s.account,
		"KMS_DATA_PATH=" + dataDir,
		// Not the default /init/seed.yaml, which may exist on the host.
		"KMS_SEED_PATH=" + filepath.Join(s.dir, "seed.yaml"),
	}
	if tz, ok := os.LookupEnv("TZ"); ok {
		cmd.Env = append(cmd.Env, "TZ="+tz)
	}
	setDeathSignal(cmd)
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("localkms: %w", err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("%w %s: %w", errExecFailed, s.binary, err)
	}
	pw.Close()

	portc := make(chan int, 1)
	tail := &tailBuffer{max: 4 << 10}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := append(sc.Bytes()[:len(sc.Bytes()):len(sc.Bytes())], '\n') // a copy
			tail.Write(line)
			if s.log != nil {
				s.log.Write(line)
			}
			if !found {
				if m := started.FindSubmatch(line); m != nil {
					if p, err := strconv.Atoi(string(m[1])); err == nil {
						found = true
						portc <- p
					}
				}
			}
		}
		io.Copy(io.Discard, pr) // a line too long for the scanner
		pr.Close()
		waitErr = cmd.Wait()
		close(exited)
	}()

	timer := time.NewTimer(s.timeout)
	defer timer.Stop()
	fail := func(format string, args ...any) error {
		_ = cmd.Process.Kill()
		<-exited
		msg := fmt.Sprintf(format, args...)
		return fmt.Errorf("localkms: %s (port %d, data %s); its output ends:\n%s", msg, port, dataDir, tail.String())
	}
	select {
	case p := <-portc:
		if port != 0 && p != port {
			return fail("local-kms listens on port %d, want %d", p, port)
		}
		if err := waitListening(ctx, p, exited, s.timeout); err != nil {
			return fail("%v", err)
		}
		s.port, s.cmd, s.exited = p, cmd, exited
		return nil
	case <-exited:
		return fmt.Errorf("localkms: local-kms exited before it listened (port %d, data %s): %v; its output ends:\n%s", port, dataDir, waitErr, tail.String())
	case <-timer.C:
		return fail("local-kms did not start within %v", s.timeout)
	case <-ctx.Done():
		return fail("%v", ctx.Err())
	}
}

// waitListening dials the port until it accepts a connection.
func waitListening(ctx context.Context, port int, exited <-chan struct{}, timeout time.Duration) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(timeout)
	for {
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("local-kms exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing answers on %s: %w", addr, err)
		}
	}
}

// stop kills the process and waits for it. s.mu is held.
func (s *Server) stop() {
	if s.cmd == nil {
		return
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		_ = s.cmd.Process.Kill()
	}
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd, s.exited = nil, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// FindToolsDir walks up from the working directory to the first directory
// holding tools/go.mod and returns that tools directory.
func FindToolsDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("localkms: %w", err)
	}
	for dir := wd; ; {
		tools := filepath.Join(dir, "tools")
		if st, err := os.Stat(filepath.Join(tools, "go.mod")); err == nil && st.Mode().IsRegular() {
			return tools, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("localkms: no tools/go.mod in %s or any parent; run from inside the tresor repository or set Options.ToolsDir", wd)
		}
		dir = parent
	}
}

// Version returns the local-kms version tools/go.mod (in toolsDir) pins.
func Version(toolsDir string) (string, error) {
	gomod := filepath.Join(toolsDir, "go.mod")
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("localkms: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "require" {
			f = f[1:]
		}
		if len(f) >= 2 && f[0] == Module {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("localkms: %s does not require %s; pin it with: cd tools && go get -tool %s@VERSION", gomod, Module, Module)
}

var buildMu sync.Mutex

// Build returns the path of a local-kms binary at the version tools/go.mod
// (in toolsDir; empty means [FindToolsDir]) pins, building it with
// "go build" in toolsDir the first time. The binary is cached under
// os.UserCacheDir()/tresor/local-kms-VERSION-GOOS-GOARCH, so one build serves
// every later test run; the go command must be on PATH for that first build.
func Build(ctx context.Context, toolsDir string) (string, error) {
	if toolsDir == "" {
		var err error
		if toolsDir, err = FindToolsDir(); err != nil {
			return "", err
		}
	}
	version, err := Version(toolsDir)
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "tresor", "local-kms-"+safeName(version)+"-"+runtime.GOOS+"-"+runtime.GOARCH)
	bin := filepath.Join(dir, "local-kms")
	if isExecutable(bin) {
		return bin, nil
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("localkms: %w", err)
	}
	gocmd, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("localkms: building local-kms needs the go command on PATH: %w", err)
	}
	// Build beside the final name and rename, so that concurrent builds
	// (test binaries of several packages) never see a partial file.
	tmp, err := os.CreateTemp(dir, "local-kms-build-*")
	if err != nil {
		return "", fmt.Errorf("localkms: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.CommandContext(ctx, gocmd, "build", "-trimpath", "-o", tmp.Name(), Module)
	cmd.Dir = toolsDir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly", "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("localkms: go build %s@%s in %s: %w: %s", Module, version, toolsDir, err, bytes.TrimSpace(out.Bytes()))
	}
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return "", fmt.Errorf("localkms: %w", err)
	}
	if err := os.Rename(tmp.Name(), bin); err != nil {
		return "", fmt.Errorf("localkms: %w", err)
	}
	return bin, nil
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o100 != 0
}

// safeName keeps a module version usable as a file name.
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' || r == '+' {
			return r
		}
		return '_'
	}, s)
}
