package policy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	encryptPolicy = `@id("encrypt") permit (principal, action == Tresor::Action::"Encrypt", resource);`
	decryptPolicy = `@id("decrypt") permit (principal, action == Tresor::Action::"Decrypt", resource);`
	badPolicy     = `permit (principal, action, resource) when { resource.colour == "red" };`
)

func encryptReq() Request { return req(ledger, "Encrypt", paymentsRef, office()) }
func decryptReq() Request { return req(ledger, "Decrypt", paymentsRef, office()) }

func TestReloadingKeepsTheLastGoodEngine(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.cedar": encryptPolicy})
	r, err := NewReloading(Options{PolicyDir: dir, Location: cet}, nil)
	if err != nil {
		t.Fatalf("NewReloading() err = %v, want nil", err)
	}
	good := r.Engine()
	if !r.Decide(encryptReq()).Allow {
		t.Fatalf("Decide(ledger, Encrypt) = deny, want allow")
	}

	steps := []struct {
		name    string
		change  func()
		wantErr error
		encrypt bool // want Decide(ledger, Encrypt) to allow afterwards
		decrypt bool
	}{
		{"bad file added", func() { writeFile(t, filepath.Join(dir, "q.cedar"), badPolicy) }, ErrInvalidPolicy, true, false},
		{"syntax error in the good file", func() { writeFile(t, filepath.Join(dir, "q.cedar"), "permit (") }, ErrInvalidPolicy, true, false},
		{"every policy file gone", func() {
			os.Remove(filepath.Join(dir, "q.cedar"))
			os.Rename(filepath.Join(dir, "p.cedar"), filepath.Join(dir, "p.cedar.off"))
		}, ErrInvalidPolicy, true, false},
		{"good file changed", func() {
			os.Remove(filepath.Join(dir, "p.cedar.off"))
			writeFile(t, filepath.Join(dir, "p.cedar"), decryptPolicy)
		}, nil, false, true},
	}
	for _, s := range steps {
		s.change()
		before := r.Engine()
		err := r.Reload()
		if !errors.Is(err, s.wantErr) || (s.wantErr == nil) != (err == nil) {
			t.Fatalf("after %s: Reload() err = %v, want %v", s.name, err, s.wantErr)
		}
		if s.wantErr != nil && r.Engine() != before {
			t.Errorf("after %s: Reload() failed but replaced the engine", s.name)
		}
		if got := r.Decide(encryptReq()).Allow; got != s.encrypt {
			t.Errorf("after %s: Decide(ledger, Encrypt) allow = %v, want %v", s.name, got, s.encrypt)
		}
		if got := r.Decide(decryptReq()).Allow; got != s.decrypt {
			t.Errorf("after %s: Decide(ledger, Decrypt) allow = %v, want %v", s.name, got, s.decrypt)
		}
	}
	if r.Engine() == good {
		t.Errorf("Engine() after a good reload is still the first engine")
	}
}

func TestNewReloadingFailsLikeLoad(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.cedar": badPolicy})
	if r, err := NewReloading(Options{PolicyDir: dir}, nil); !errors.Is(err, ErrInvalidPolicy) || r != nil {
		t.Errorf("NewReloading(bad policy) = %v, %v, want nil, ErrInvalidPolicy", r, err)
	}
}

// syncBuffer is a log sink safe for the Run goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReloadingRunPollsFiles(t *testing.T) {
	dir := policyDir(t, map[string]string{"p.cedar": encryptPolicy})
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	r, err := NewReloading(Options{PolicyDir: dir, Location: cet}, logger)
	if err != nil {
		t.Fatalf("NewReloading() err = %v, want nil", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		r.Run(ctx, 5*time.Millisecond)
		close(stopped)
	}()
	defer func() {
		cancel()
		<-stopped
	}()

	// A new file that does not validate: logged, not loaded.
	before := r.Engine()
	writeFile(t, filepath.Join(dir, "q.cedar"), badPolicy)
	eventually(t, "the bad file is logged", func() bool { return strings.Contains(logs.String(), "reload failed") })
	if !strings.Contains(logs.String(), "q.cedar") {
		t.Errorf("log = %q, want it to name q.cedar", logs.String())
	}
	if r.Engine() != before || !r.Decide(encryptReq()).Allow {
		t.Errorf("Run replaced the engine with one that does not validate")
	}

	// Fixed: picked up.
	writeFile(t, filepath.Join(dir, "q.cedar"), decryptPolicy)
	eventually(t, "the fixed file is loaded", func() bool { return r.Decide(decryptReq()).Allow })
	if !r.Decide(encryptReq()).Allow {
		t.Errorf("Decide(ledger, Encrypt) = deny after adding q.cedar, want allow")
	}

	// A removed file is noticed too.
	if err := os.Remove(filepath.Join(dir, "p.cedar")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the removal is loaded", func() bool { return !r.Decide(encryptReq()).Allow })
	if !strings.Contains(logs.String(), "policy: reloaded") {
		t.Errorf("log = %q, want a reload message", logs.String())
	}
}
