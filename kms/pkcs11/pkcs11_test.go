//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/softhsm"
)

// uriWith returns tok's URI for object with its pin-source replaced.
func uriWith(tok *softhsm.Token, object, pinSource string) string {
	return "pkcs11:token=" + escape(tok.Label, pchar) + ";object=" + escape(object, pchar) +
		"?module-path=" + escape(tok.ModulePath, qchar) + "&pin-source=" + escape(pinSource, qchar)
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatalf("WriteFile(%s) err = %v, want nil", p, err)
	}
	return p
}

// pins returns the real user PINs of the test tokens.
func pins(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, tok := range []*softhsm.Token{mainToken, pinToken} {
		b, err := os.ReadFile(tok.PINFile)
		if err != nil {
			t.Fatalf("ReadFile(%s) err = %v, want nil", tok.PINFile, err)
		}
		out = append(out, string(b))
	}
	return out
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	const wrongPIN = "wrong-pin-74125896"
	wrongPINFile := writeFile(t, "wrong.pin", wrongPIN+"\n")
	emptyPINFile := writeFile(t, "empty.pin", "\n")
	missingPINFile := filepath.Join(t.TempDir(), "missing.pin")
	notALibrary := writeFile(t, "lib.so", "not an ELF file")
	// A copy of the real PIN that every user may read: refused before use.
	realPIN, err := os.ReadFile(mainToken.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	worldReadable := writeFile(t, "world.pin", string(realPIN))
	if err := os.Chmod(worldReadable, 0o644); err != nil {
		t.Fatal(err)
	}

	// Keep the main token logged in, so that a wrong PIN for it is caught
	// without a C_Login (the token would answer CKR_USER_ALREADY_LOGGED_IN).
	openRoot(t)

	tests := []struct {
		name    string
		uri     string
		wantIs  error
		wantMsg []string
	}{
		{"wrong PIN", uriWith(pinToken, "root-1", wrongPINFile), ErrPINIncorrect,
			[]string{"PIN", `"pin-test"`, wrongPINFile, "CKR_PIN_INCORRECT"}},
		{"wrong PIN, token already logged in", uriWith(mainToken, "root-1", wrongPINFile), ErrPINIncorrect,
			[]string{"PIN", `"tresor"`, wrongPINFile}},
		{"missing token", "pkcs11:token=nope;object=root-1?module-path=" + mainToken.ModulePath + "&pin-source=" + mainToken.PINFile,
			ErrTokenNotFound, []string{`no token with label "nope"`, mainToken.ModulePath, `"tresor"`}},
		{"missing object", mainToken.URI("root-9"), ErrKeyNotFound,
			[]string{`"tresor"`, `labelled "root-9"`}},
		{"wrong id", strings.Replace(rootURI, ";object=root-1", ";object=root-1;id=%00%01", 1), ErrKeyNotFound,
			[]string{`labelled "root-1" with id %00%01`}},
		{"serial mismatch", strings.Replace(rootURI, ";object=", ";serial=0000;object=", 1), ErrTokenNotFound,
			[]string{`"tresor"`, `serial "0000"`}},
		{"missing module", "pkcs11:token=tresor;object=root-1?module-path=/nonexistent/libnope.so&pin-source=" + mainToken.PINFile,
			fs.ErrNotExist, []string{"module-path /nonexistent/libnope.so"}},
		{"module is not a library", "pkcs11:token=tresor;object=root-1?module-path=" + notALibrary + "&pin-source=" + mainToken.PINFile,
			nil, []string{notALibrary, "cannot load it as a PKCS#11 module"}},
		{"missing pin file", uriWith(mainToken, "root-1", missingPINFile), fs.ErrNotExist,
			[]string{"pin-source " + missingPINFile}},
		{"empty pin file", uriWith(pinToken, "root-1", emptyPINFile), nil,
			[]string{"pin-source " + emptyPINFile + " is empty"}},
		{"world-readable pin file", uriWith(mainToken, "root-1", worldReadable), nil,
			[]string{"pin-source " + worldReadable + " is accessible to every user", "chmod 600"}},
		{"pin-value", rootURI + "&pin-value=" + wrongPIN, kms.ErrInvalidURI, []string{"pin-value is refused"}},
		{"bad URI", "pkcs11:object=root-1", kms.ErrInvalidURI, []string{"token="}},
	}
	secrets := append(pins(t), wrongPIN)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := Open(ctx, tt.uri)
			if err == nil {
				k.Close()
				t.Fatalf("Open(%s) err = nil, want an error", tt.uri)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Open(%s) err = %v, want errors.Is %v", tt.uri, err, tt.wantIs)
			}
			for _, m := range tt.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("Open(%s) err = %q, want it to mention %q", tt.uri, err, m)
				}
			}
			for _, s := range secrets {
				if strings.Contains(err.Error(), s) {
					t.Errorf("Open(%s) err = %q, which contains a PIN", tt.uri, err)
				}
			}
		})
	}
}

func TestOpenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Open(ctx, rootURI); !errors.Is(err, context.Canceled) {
		t.Errorf("Open(cancelled ctx) err = %v, want context.Canceled", err)
	}
}

func TestCreateRootKey(t *testing.T) {
	ctx := context.Background()
	// Labels and ids unique to this run, since the token lives as long as
	// the process (go test -count).
	label := "create-" + rand.Text()[:8]
	uri := mainToken.URI(label)
	if err := CreateRootKey(ctx, uri); err != nil {
		t.Fatalf("CreateRootKey(%s) err = %v, want nil", uri, err)
	}
	if err := CreateRootKey(ctx, uri); !errors.Is(err, ErrKeyExists) || !strings.Contains(err.Error(), `"`+label+`"`) {
		t.Errorf("second CreateRootKey(%s) err = %v, want ErrKeyExists naming the label", uri, err)
	}

	id := make([]byte, 4)
	_, _ = rand.Read(id)
	withID := strings.Replace(mainToken.URI(label+"-id"), ";object="+label+"-id", ";object="+label+"-id;id="+escapeAll(id), 1)
	if err := CreateRootKey(ctx, withID); err != nil {
		t.Fatalf("CreateRootKey(%s) err = %v, want nil", withID, err)
	}
	sameID := strings.Replace(withID, label+"-id", label+"-id2", 1)
	if err := CreateRootKey(ctx, sameID); !errors.Is(err, ErrKeyExists) {
		t.Errorf("CreateRootKey(%s) with a used id err = %v, want ErrKeyExists", sameID, err)
	}

	k, err := Open(ctx, withID)
	if err != nil {
		t.Fatalf("Open(%s) err = %v, want nil", withID, err)
	}
	defer k.Close()
	if want := "pkcs11:token=tresor;object=" + label + "-id;id=" + escapeAll(id); k.ID() != want {
		t.Errorf("ID() = %q, want %q", k.ID(), want)
	}
	// The key is sensitive and not extractable.
	sh, err := k.acquire(ctx)
	if err != nil {
		t.Fatalf("acquire err = %v, want nil", err)
	}
	attrs, err := k.p11.GetAttributeValue(sh.sh, k.obj.Load().h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_SENSITIVE, nil), p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
		p11.NewAttribute(p11.CKA_TOKEN, nil), p11.NewAttribute(p11.CKA_PRIVATE, nil),
	})
	k.release(sh, nil)
	if err != nil {
		t.Fatalf("GetAttributeValue err = %v, want nil", err)
	}
	want := map[uint]byte{p11.CKA_SENSITIVE: 1, p11.CKA_EXTRACTABLE: 0, p11.CKA_TOKEN: 1, p11.CKA_PRIVATE: 1}
	for _, a := range attrs {
		if len(a.Value) != 1 || a.Value[0] != want[a.Type] {
			t.Errorf("attribute %#x = %v, want [%d]", a.Type, a.Value, want[a.Type])
		}
	}

	// A different key cannot unwrap what root-1 wrapped.
	root := openRoot(t)
	wrapped, err := root.Wrap(ctx, []byte("keyset"), nil)
	if err != nil {
		t.Fatalf("Wrap(pt, nil) err = %v, want nil", err)
	}
	if _, err := k.Unwrap(ctx, wrapped, nil); !errors.Is(err, kms.ErrUnwrap) {
		t.Errorf("another key: Unwrap(wrapped, nil) err = %v, want kms.ErrUnwrap", err)
	}
	if k.ID() == root.ID() {
		t.Errorf("two keys have the same ID %q", k.ID())
	}
}

func TestSharedModuleAndToken(t *testing.T) {
	a, b := openRoot(t), openRoot(t)
	if a.mod != b.mod || a.tok != b.tok {
		t.Fatalf("two opens on one token: modules %p, %p and tokens %p, %p, want shared", a.mod, b.mod, a.tok, b.tok)
	}
	modules.Lock()
	refs := a.mod.refs
	modules.Unlock()
	if refs != 2 {
		t.Errorf("module refs = %d, want 2", refs)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close() err = %v, want nil", err)
	}
	if _, err := b.Wrap(context.Background(), []byte("x"), nil); err != nil {
		t.Errorf("Wrap on the other key after one Close err = %v, want nil", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close() err = %v, want nil", err)
	}
	modules.Lock()
	n := len(modules.m)
	modules.Unlock()
	if n != 0 {
		t.Errorf("after the last Close, %d modules loaded, want 0", n)
	}
}

func TestCalls(t *testing.T) {
	ctx := context.Background()
	k := openRoot(t)
	if got := k.Calls(); got != 0 {
		t.Fatalf("Calls() after Open = %d, want 0", got)
	}
	wrapped, err := k.Wrap(ctx, []byte("keyset"), nil)
	if err != nil {
		t.Fatalf("Wrap(pt, nil) err = %v, want nil", err)
	}
	if _, err := k.Unwrap(ctx, wrapped, nil); err != nil {
		t.Fatalf("Unwrap(wrapped, nil) err = %v, want nil", err)
	}
	if _, err := k.Unwrap(ctx, wrapped, []byte("wrong")); !errors.Is(err, kms.ErrUnwrap) {
		t.Fatalf("Unwrap(wrapped, wrong) err = %v, want kms.ErrUnwrap", err)
	}
	if _, err := k.Unwrap(ctx, wrapped[:10], nil); !errors.Is(err, kms.ErrUnwrap) {
		t.Fatalf("Unwrap(short, nil) err = %v, want kms.ErrUnwrap", err)
	}
	want := Stats{Wraps: 1, Unwraps: 2, SessionsOpened: 1}
	if got := k.Stats(); got != want {
		t.Errorf("Stats() = %+v, want %+v (a short input never reaches the token)", got, want)
	}
	if got := k.Calls(); got != 3 {
		t.Errorf("Calls() = %d, want 3", got)
	}
}

func TestPoolWaitsHonoringContext(t *testing.T) {
	ctx := context.Background()
	k := openRoot(t, WithSessions(1))
	sh, err := k.acquire(ctx)
	if err != nil {
		t.Fatalf("acquire err = %v, want nil", err)
	}
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := k.Wrap(tctx, []byte("x"), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wrap with the only session taken err = %v, want context.DeadlineExceeded", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := k.Wrap(ctx, []byte("x"), nil)
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	k.release(sh, nil)
	if err := <-done; err != nil {
		t.Errorf("Wrap waiting for the session err = %v, want nil", err)
	}
}

func TestPoolIsBounded(t *testing.T) {
	ctx := context.Background()
	k := openRoot(t, WithSessions(3))
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			for range 20 {
				if _, err := k.Wrap(ctx, []byte("x"), nil); err != nil {
					t.Errorf("Wrap err = %v, want nil", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := k.Stats().SessionsOpened; got > 3 {
		t.Errorf("SessionsOpened = %d, want at most 3", got)
	}
}

func TestCloseWhileInUse(t *testing.T) {
	ctx := context.Background()
	k := openRoot(t, WithSessions(2))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				w, err := k.Wrap(ctx, []byte("x"), nil)
				if err == nil {
					_, err = k.Unwrap(ctx, w, nil)
				}
				if errors.Is(err, kms.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Wrap/Unwrap during Close err = %v, want nil or kms.ErrClosed", err)
					return
				}
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	if err := k.Close(); err != nil {
		t.Errorf("Close() err = %v, want nil", err)
	}
	wg.Wait()
}

// faulty wraps the module to play a token that is pulled out and put back.
type faulty struct {
	cryptoki
	mu       sync.Mutex
	down     bool
	failOnce map[string]uint // method name -> CKR it returns once
	calls    map[string]int
}

func newFaulty(c cryptoki) *faulty {
	return &faulty{cryptoki: c, failOnce: map[string]uint{}, calls: map[string]int{}}
}

func (f *faulty) setDown(down bool) { f.mu.Lock(); f.down = down; f.mu.Unlock() }

func (f *faulty) failNext(method string, rv uint) {
	f.mu.Lock()
	f.failOnce[method] = rv
	f.mu.Unlock()
}

func (f *faulty) count(method string) int { f.mu.Lock(); defer f.mu.Unlock(); return f.calls[method] }

// check returns the error method fails with now, if any.
func (f *faulty) check(method string, whenDown uint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	if rv, ok := f.failOnce[method]; ok {
		delete(f.failOnce, method)
		return p11.Error(rv)
	}
	if f.down && whenDown != p11.CKR_OK {
		return p11.Error(whenDown)
	}
	return nil
}

func (f *faulty) GetSlotList(present bool) ([]uint, error) {
	if err := f.check("GetSlotList", p11.CKR_OK); err != nil {
		return nil, err
	}
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down {
		return nil, nil
	}
	return f.cryptoki.GetSlotList(present)
}

func (f *faulty) OpenSession(slot, flags uint) (p11.SessionHandle, error) {
	if err := f.check("OpenSession", p11.CKR_TOKEN_NOT_PRESENT); err != nil {
		return 0, err
	}
	return f.cryptoki.OpenSession(slot, flags)
}

func (f *faulty) Login(sh p11.SessionHandle, userType uint, pin string) error {
	if err := f.check("Login", p11.CKR_DEVICE_REMOVED); err != nil {
		return err
	}
	return f.cryptoki.Login(sh, userType, pin)
}

func (f *faulty) FindObjectsInit(sh p11.SessionHandle, tmpl []*p11.Attribute) error {
	if err := f.check("FindObjectsInit", p11.CKR_DEVICE_REMOVED); err != nil {
		return err
	}
	return f.cryptoki.FindObjectsInit(sh, tmpl)
}

func (f *faulty) EncryptInit(sh p11.SessionHandle, m []*p11.Mechanism, o p11.ObjectHandle) error {
	if err := f.check("EncryptInit", p11.CKR_DEVICE_REMOVED); err != nil {
		return err
	}
	return f.cryptoki.EncryptInit(sh, m, o)
}

// Encrypt and Decrypt end the operation in the real token when they fail,
// as C_Encrypt and C_Decrypt do.
func (f *faulty) Encrypt(sh p11.SessionHandle, pt []byte) ([]byte, error) {
	if err := f.check("Encrypt", p11.CKR_DEVICE_REMOVED); err != nil {
		_, _ = f.cryptoki.Encrypt(sh, pt)
		return nil, err
	}
	return f.cryptoki.Encrypt(sh, pt)
}

func (f *faulty) DecryptInit(sh p11.SessionHandle, m []*p11.Mechanism, o p11.ObjectHandle) error {
	if err := f.check("DecryptInit", p11.CKR_DEVICE_REMOVED); err != nil {
		return err
	}
	return f.cryptoki.DecryptInit(sh, m, o)
}

func (f *faulty) Decrypt(sh p11.SessionHandle, ct []byte) ([]byte, error) {
	if err := f.check("Decrypt", p11.CKR_DEVICE_REMOVED); err != nil {
		_, _ = f.cryptoki.Decrypt(sh, ct)
		return nil, err
	}
	return f.cryptoki.Decrypt(sh, ct)
}

// noBackoff lets every call try to recover a token found unavailable.
var noBackoff = WithRecoveryBackoff(time.Nanosecond, time.Nanosecond)

func TestTokenFailures(t *testing.T) {
	ctx := context.Background()
	var logs bytes.Buffer
	k := openRoot(t, WithSessions(2), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))), noBackoff)
	f := newFaulty(k.p11)
	k.p11 = f
	good, err := k.Wrap(ctx, []byte("keyset"), []byte("aad"))
	if err != nil {
		t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
	}

	tests := []struct {
		name    string
		method  string
		rv      uint
		op      string // "wrap" or "unwrap"
		wantIs  error
		discard bool
	}{
		{"device removed at EncryptInit", "EncryptInit", p11.CKR_DEVICE_REMOVED, "wrap", kms.ErrUnavailable, true},
		{"session handle invalid at Encrypt", "Encrypt", p11.CKR_SESSION_HANDLE_INVALID, "wrap", kms.ErrUnavailable, true},
		{"token not present at Decrypt", "Decrypt", p11.CKR_TOKEN_NOT_PRESENT, "unwrap", kms.ErrUnavailable, true},
		{"session closed at DecryptInit", "DecryptInit", p11.CKR_SESSION_CLOSED, "unwrap", kms.ErrUnavailable, true},
		{"bad tag", "Decrypt", p11.CKR_ENCRYPTED_DATA_INVALID, "unwrap", kms.ErrUnwrap, false},
		{"general error at Decrypt", "Decrypt", p11.CKR_GENERAL_ERROR, "unwrap", kms.ErrUnwrap, false},
		{"data too long at Encrypt", "Encrypt", p11.CKR_DATA_LEN_RANGE, "wrap", nil, false},
		{"no session at open", "OpenSession", p11.CKR_SESSION_COUNT, "", kms.ErrUnavailable, false},
		{"login fails at open", "Login", p11.CKR_DEVICE_MEMORY, "", kms.ErrUnavailable, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := k.Stats()
			f.failNext(tt.method, tt.rv)
			var err error
			switch tt.op {
			case "wrap":
				_, err = k.Wrap(ctx, []byte("keyset"), nil)
			case "unwrap":
				_, err = k.Unwrap(ctx, good, []byte("aad"))
			default:
				// Empty the pool of open sessions (every session closed also
				// logs the token out), so the next call opens one and logs in.
				f.setDown(true)
				for range 4 {
					_, _ = k.Wrap(ctx, []byte("x"), nil)
				}
				f.setDown(false)
				before = k.Stats()
				f.failNext(tt.method, tt.rv)
				_, err = k.Wrap(ctx, []byte("keyset"), nil)
			}
			if err == nil {
				t.Fatalf("%s with %s failing err = nil, want an error", tt.op, tt.method)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("%s with %s failing err = %v, want %v", tt.op, tt.method, err, tt.wantIs)
			}
			if tt.wantIs == kms.ErrUnwrap && err.Error() != "pkcs11: "+kms.ErrUnwrap.Error() {
				t.Errorf("unwrap err = %q, want no detail", err)
			}
			if discarded := k.Stats().SessionsDiscarded - before.SessionsDiscarded; discarded != map[bool]uint64{true: 1}[tt.discard] {
				t.Errorf("sessions discarded = %d, want %d", discarded, map[bool]uint64{true: 1}[tt.discard])
			}
			// The next call works again.
			w, err := k.Wrap(ctx, []byte("keyset"), nil)
			if err != nil {
				t.Fatalf("Wrap after the failure err = %v, want nil", err)
			}
			if _, err := k.Unwrap(ctx, w, nil); err != nil {
				t.Fatalf("Unwrap after the failure err = %v, want nil", err)
			}
		})
	}

	t.Run("key handle found again", func(t *testing.T) {
		finds := f.count("FindObjectsInit")
		f.failNext("DecryptInit", p11.CKR_OBJECT_HANDLE_INVALID)
		if _, err := k.Unwrap(ctx, good, []byte("aad")); err != nil {
			t.Fatalf("Unwrap with a stale key handle err = %v, want nil (found again)", err)
		}
		f.failNext("EncryptInit", p11.CKR_KEY_HANDLE_INVALID)
		if _, err := k.Wrap(ctx, []byte("x"), nil); err != nil {
			t.Fatalf("Wrap with a stale key handle err = %v, want nil (found again)", err)
		}
		if got := f.count("FindObjectsInit") - finds; got != 2 {
			t.Errorf("key looked up %d times, want 2", got)
		}
	})

	t.Run("token pulled out and put back", func(t *testing.T) {
		f.setDown(true)
		for i := range 4 { // more calls than sessions: the pool empties and reopens fail
			if _, err := k.Wrap(ctx, []byte("keyset"), nil); !errors.Is(err, kms.ErrUnavailable) {
				t.Errorf("Wrap %d with the token out err = %v, want kms.ErrUnavailable", i, err)
			}
			if _, err := k.Unwrap(ctx, good, []byte("aad")); !errors.Is(err, kms.ErrUnavailable) {
				t.Errorf("Unwrap %d with the token out err = %v, want kms.ErrUnavailable", i, err)
			}
		}
		f.setDown(false)
		// Every session was closed, so SoftHSM logged the token out: the
		// pool must open a session and log in again.
		logins := f.count("Login")
		got, err := k.Unwrap(ctx, good, []byte("aad"))
		if err != nil || string(got) != "keyset" {
			t.Fatalf("Unwrap with the token back = %q, %v, want \"keyset\", nil", got, err)
		}
		if n := f.count("Login") - logins; n != 1 {
			t.Errorf("C_Login called %d times with the token back, want 1", n)
		}
		if _, err := k.Wrap(ctx, []byte("x"), nil); err != nil {
			t.Fatalf("Wrap with the token back err = %v, want nil", err)
		}
		if n := f.count("Login") - logins; n != 1 {
			t.Errorf("C_Login called %d times after a second call, want still 1", n)
		}
	})

	for _, pin := range pins(t) {
		if strings.Contains(logs.String(), pin) {
			t.Errorf("logs contain a PIN:\n%s", logs.String())
		}
	}
	if !strings.Contains(logs.String(), "discarding a broken session") {
		t.Errorf("logs = %q, want a line for each discarded session", logs.String())
	}
}

// TestTokenGoneDrainsIdleSessions: when the token reports itself gone, every
// idle session is closed at once, not one failed call at a time.
func TestTokenGoneDrainsIdleSessions(t *testing.T) {
	ctx := context.Background()
	const size = 4
	k := openRoot(t, WithSessions(size))
	f := newFaulty(k.p11)
	k.p11 = f
	tests := []struct {
		name          string
		rv            uint
		wantDiscarded uint64
	}{
		{"session handle invalid: only that session", p11.CKR_SESSION_HANDLE_INVALID, 1},
		{"device removed: every session", p11.CKR_DEVICE_REMOVED, size},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Hold every session of the pool at once, so all are open and idle after.
			var held []session
			for range size {
				sh, err := k.acquire(ctx)
				if err != nil {
					t.Fatalf("acquire() err = %v", err)
				}
				held = append(held, sh)
			}
			for _, sh := range held {
				k.put(sh)
			}
			before := k.Stats().SessionsDiscarded
			f.failNext("EncryptInit", tt.rv)
			if _, err := k.Wrap(ctx, []byte("x"), nil); !errors.Is(err, kms.ErrUnavailable) {
				t.Fatalf("Wrap() with %s err = %v, want kms.ErrUnavailable", tt.name, err)
			}
			if got := k.Stats().SessionsDiscarded - before; got != tt.wantDiscarded {
				t.Errorf("sessions discarded after %s = %d, want %d", tt.name, got, tt.wantDiscarded)
			}
			if _, err := k.Wrap(ctx, []byte("x"), nil); err != nil {
				t.Errorf("Wrap() after %s err = %v, want nil", tt.name, err)
			}
		})
	}
}

// TestNoPINInOutput runs failing calls with a logger and checks that neither
// the log nor any error holds a PIN.
func TestNoPINInOutput(t *testing.T) {
	ctx := context.Background()
	var logs bytes.Buffer
	logger := WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	const wrongPIN = "not-the-pin-31415926"
	wrong := writeFile(t, "wrong.pin", wrongPIN)

	var errs []error
	_, err := Open(ctx, uriWith(pinToken, "root-1", wrong), logger)
	errs = append(errs, err)
	_, err = Open(ctx, uriWith(mainToken, "root-1", wrong), logger)
	errs = append(errs, err)
	err = CreateRootKey(ctx, uriWith(pinToken, "x", wrong), logger)
	errs = append(errs, err)
	_, err = Open(ctx, pinToken.URI("nope"), logger)
	errs = append(errs, err)

	k := openRoot(t, logger)
	f := newFaulty(k.p11)
	k.p11 = f
	_, err = k.Unwrap(ctx, []byte{1, 2, 3}, nil)
	errs = append(errs, err)
	f.setDown(true)
	_, err = k.Wrap(ctx, []byte("x"), nil)
	errs = append(errs, err)
	_, err = k.Wrap(ctx, []byte("x"), nil)
	errs = append(errs, err)

	secrets := append(pins(t), wrongPIN)
	for i, err := range errs {
		if err == nil {
			t.Errorf("call %d err = nil, want an error", i)
			continue
		}
		for _, s := range secrets {
			if strings.Contains(err.Error(), s) {
				t.Errorf("call %d err = %q, which contains a PIN", i, err)
			}
		}
	}
	for _, s := range secrets {
		if strings.Contains(logs.String(), s) {
			t.Errorf("logs contain a PIN:\n%s", logs.String())
		}
	}
	if logs.Len() == 0 {
		t.Error("no log output, want some (the test checks it)")
	}
}

// TestPINRefusedAtReloginIsNotRetried: a token that refuses the PIN when the
// pool logs in again (after every session was closed) is not sent the PIN
// again on each call, which would lock it; opening the root key again retries.
func TestPINRefusedAtReloginIsNotRetried(t *testing.T) {
	ctx := context.Background()
	k := openRoot(t, WithSessions(1))
	f := newFaulty(k.p11)
	k.p11 = f

	f.setDown(true) // the only session is discarded: the token logs out
	if _, err := k.Wrap(ctx, []byte("x"), nil); !errors.Is(err, kms.ErrUnavailable) {
		t.Fatalf("Wrap with the token out err = %v, want kms.ErrUnavailable", err)
	}
	f.setDown(false)
	f.failNext("Login", p11.CKR_PIN_INCORRECT)
	_, err := k.Wrap(ctx, []byte("x"), nil)
	if !errors.Is(err, ErrPINIncorrect) || !errors.Is(err, kms.ErrUnavailable) {
		t.Fatalf("Wrap with the PIN refused err = %v, want ErrPINIncorrect and kms.ErrUnavailable", err)
	}
	logins := f.count("Login")
	for range 3 {
		if _, err := k.Wrap(ctx, []byte("x"), nil); !errors.Is(err, ErrPINIncorrect) {
			t.Errorf("Wrap after the PIN was refused err = %v, want ErrPINIncorrect", err)
		}
	}
	if n := f.count("Login") - logins; n != 0 {
		t.Errorf("C_Login called %d more times after the token refused the PIN, want 0", n)
	}

	// Opening the root key again tries the PIN once more; then both work.
	again := openRoot(t)
	for _, key := range []*RootKey{again, k} {
		if _, err := key.Wrap(ctx, []byte("x"), nil); err != nil {
			t.Errorf("Wrap after reopening err = %v, want nil", err)
		}
	}
}
