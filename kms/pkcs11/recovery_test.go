//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/tresorkms/tresor/kms"
)

// The recovery tests take the outage token's files away, as SoftHSM2's
// stand-in for a token pulled out or an HSM gone, and bring them back.
// SoftHSM2 then answers C_GetTokenInfo with CKR_GENERAL_ERROR and the key's
// handle with CKR_OBJECT_HANDLE_INVALID, finds no objects in the sessions it
// keeps open, and sees the token again only after C_Finalize, C_Initialize.

// fastBackoff keeps the recovery tests short.
var fastBackoff = WithRecoveryBackoff(5*time.Millisecond, 20*time.Millisecond)

// pullOut moves the outage token's directory away until putBack (or the
// end of the test).
func pullOut(t *testing.T) {
	t.Helper()
	gone := filepath.Join(testDir, "pulled-out")
	if err := os.Rename(outageDir, gone); err != nil {
		t.Fatalf("moving the token away: %v", err)
	}
	t.Cleanup(func() { _ = os.Rename(gone, outageDir) })
}

func putBack(t *testing.T) {
	t.Helper()
	if err := os.Rename(filepath.Join(testDir, "pulled-out"), outageDir); err != nil {
		t.Fatalf("putting the token back: %v", err)
	}
}

func openOutage(t *testing.T, object string, opts ...Option) *RootKey {
	t.Helper()
	k, err := Open(context.Background(), outageToken.URI(object), opts...)
	if err != nil {
		t.Fatalf("Open(%s) err = %v, want nil", object, err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// checkOutageErr fails t unless err says the outage token is unavailable,
// without calling the key missing or holding a PIN.
func checkOutageErr(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, kms.ErrUnavailable) {
		t.Errorf("%s with the token gone err = %v, want kms.ErrUnavailable", what, err)
		return
	}
	msg := err.Error()
	if errors.Is(err, ErrKeyNotFound) || strings.Contains(msg, "root key not found") || strings.Contains(msg, "create it") {
		t.Errorf("%s with the token gone err = %q, which calls the key missing", what, msg)
	}
	if !strings.Contains(msg, `token "outage"`) || !strings.Contains(msg, "unavailable") {
		t.Errorf("%s with the token gone err = %q, want it to say token \"outage\" is unavailable", what, msg)
	}
	for _, pin := range append(pins(t), outagePIN(t)) {
		if strings.Contains(msg, pin) {
			t.Errorf("%s err = %q, which holds a PIN", what, msg)
		}
	}
}

func outagePIN(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(outageToken.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTokenOutageRecovers: two root keys on the token (as during a root-key
// rotation) fail with ErrUnavailable while its files are gone and work
// again, the same RootKeys, once they are back; what they wrapped before
// unwraps. A key on another token of the module keeps working.
func TestTokenOutageRecovers(t *testing.T) {
	ctx := context.Background()
	var logs syncBuffer
	logger := WithLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	k1 := openOutage(t, "outage-1", logger, fastBackoff)
	k2 := openOutage(t, "outage-2", logger, fastBackoff, WithSessions(2))
	other := openRoot(t, logger)
	keys := []*RootKey{k1, k2}
	var before [][]byte
	for _, k := range keys {
		w, err := k.Wrap(ctx, []byte("keyset of "+k.ID()), []byte("aad"))
		if err != nil {
			t.Fatalf("Wrap() before the outage err = %v, want nil", err)
		}
		before = append(before, w)
	}
	reinits := k1.mod.reinits.Load()

	pullOut(t)
	for i := range 3 {
		for j, k := range keys {
			_, err := k.Wrap(ctx, []byte("x"), nil)
			checkOutageErr(t, fmt.Sprintf("%s Wrap %d", k.ID(), i), err)
			_, err = k.Unwrap(ctx, before[j], []byte("aad"))
			checkOutageErr(t, fmt.Sprintf("%s Unwrap %d", k.ID(), i), err)
		}
		time.Sleep(25 * time.Millisecond) // let a recovery attempt come due
	}
	if k1.mod.reinits.Load() == reinits {
		t.Errorf("the module was never re-initialized while the token was gone")
	}
	if _, err := other.Wrap(ctx, []byte("x"), nil); err != nil {
		t.Errorf("Wrap() on another token of the module during the outage err = %v, want nil", err)
	}

	putBack(t)
	time.Sleep(25 * time.Millisecond)
	for j, k := range keys {
		got, err := k.Unwrap(ctx, before[j], []byte("aad"))
		if err != nil || string(got) != "keyset of "+k.ID() {
			t.Errorf("%s Unwrap(made before the outage) with the token back = %q, %v, want the keyset", k.ID(), got, err)
		}
		w, err := k.Wrap(ctx, []byte("after"), nil)
		if err != nil {
			t.Errorf("%s Wrap() with the token back err = %v, want nil", k.ID(), err)
			continue
		}
		if got, err := k.Unwrap(ctx, w, nil); err != nil || string(got) != "after" {
			t.Errorf("%s Unwrap(Wrap()) with the token back = %q, %v", k.ID(), got, err)
		}
	}
	if _, err := other.Wrap(ctx, []byte("x"), nil); err != nil {
		t.Errorf("Wrap() on another token of the module after the outage err = %v, want nil", err)
	}
	if n := k1.Stats().Recoveries + k2.Stats().Recoveries; n == 0 {
		t.Errorf("Recoveries = 0, want the token recovered")
	}
	for _, want := range []string{"token unavailable", "re-initializing the module", "token available again"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs hold no %q line:\n%s", want, logs.String())
		}
	}
	for _, pin := range append(pins(t), outagePIN(t)) {
		if strings.Contains(logs.String(), pin) {
			t.Errorf("logs hold a PIN")
		}
	}
}

// TestTokenOutageRateLimited: while the token is gone, one call per backoff
// tries to recover it (re-initializing the module), the backoff doubling;
// the others fail at once.
func TestTokenOutageRateLimited(t *testing.T) {
	ctx := context.Background()
	const lo, hi = 150 * time.Millisecond, 300 * time.Millisecond
	k := openOutage(t, "outage-1", WithRecoveryBackoff(lo, hi))
	reinits := func() uint64 { return k.mod.reinits.Load() }
	base := reinits()
	pullOut(t)
	began := time.Now()
	for i := range 30 {
		_, err := k.Wrap(ctx, []byte("x"), nil)
		checkOutageErr(t, fmt.Sprintf("Wrap %d", i), err)
	}
	if elapsed := time.Since(began); elapsed < lo {
		if n := reinits() - base; n != 1 {
			t.Errorf("30 calls in %v re-initialized the module %d times, want 1 (the first attempt, then none before %v)", elapsed, n, lo)
		}
	}
	d := k.tok.down.Load()
	if d == nil || d.attempts != 1 {
		t.Fatalf("outage = %+v, want one recovery attempt", d)
	}
	time.Sleep(time.Until(d.next) + 5*time.Millisecond)
	_, err := k.Wrap(ctx, []byte("x"), nil)
	checkOutageErr(t, "Wrap after the backoff", err)
	d = k.tok.down.Load()
	if d == nil || d.attempts != 2 {
		t.Fatalf("outage = %+v, want two recovery attempts", d)
	}
	if wait := time.Until(d.next); wait < hi-50*time.Millisecond || wait > hi {
		t.Errorf("next attempt in %v, want about %v (the backoff doubled)", wait, hi)
	}
	putBack(t)
	_, err = k.Wrap(ctx, []byte("x"), nil)
	checkOutageErr(t, "Wrap with the token back before the next attempt is due", err)
	time.Sleep(time.Until(d.next) + 5*time.Millisecond)
	if _, err := k.Wrap(ctx, []byte("x"), nil); err != nil {
		t.Errorf("Wrap with the token back, attempt due: err = %v, want nil", err)
	}
}

// TestRecoveryDoesNotBlockCalls: calls while another call recovers the
// token, or while the module is being re-initialized, fail at once.
func TestRecoveryDoesNotBlockCalls(t *testing.T) {
	ctx := context.Background()
	k := openOutage(t, "outage-1", noBackoff)
	other := openRoot(t)

	quick := func(what string, k *RootKey, want string) {
		t.Helper()
		began := time.Now()
		_, err := k.Wrap(ctx, []byte("x"), nil)
		if !errors.Is(err, kms.ErrUnavailable) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: Wrap err = %v, want kms.ErrUnavailable saying %q", what, err, want)
		}
		if d := time.Since(began); d > 100*time.Millisecond {
			t.Errorf("%s: Wrap took %v, want it to fail at once", what, d)
		}
	}
	k.mod.calls.Lock() // a re-initialization in progress
	quick("module being re-initialized", other, "being re-initialized")
	k.mod.calls.Unlock()

	pullOut(t)
	_, err := k.Wrap(ctx, []byte("x"), nil)
	checkOutageErr(t, "Wrap", err)
	k.tok.recoverMu.Lock() // another call recovering the token
	putBack(t)
	quick("token being recovered", k, `token "outage"`)
	k.tok.recoverMu.Unlock()
	if _, err := k.Wrap(ctx, []byte("x"), nil); err != nil {
		t.Errorf("Wrap after the recovery is free again err = %v, want nil", err)
	}
	if _, err := other.Wrap(ctx, []byte("x"), nil); err != nil {
		t.Errorf("Wrap on another token err = %v, want nil", err)
	}
}

// TestTokenOutageConcurrent takes the token away and back several times
// while callers wrap and unwrap on two keys of the token and one of another
// token of the module. Every call succeeds or fails with ErrUnavailable;
// afterwards every key works and everything wrapped unwraps.
func TestTokenOutageConcurrent(t *testing.T) {
	ctx := context.Background()
	keys := []*RootKey{
		openOutage(t, "outage-1", fastBackoff, WithSessions(3)),
		openOutage(t, "outage-2", fastBackoff, WithSessions(2)),
		openRoot(t, WithSessions(2)),
	}
	type wrapped struct {
		k  *RootKey
		pt string
		ct []byte
	}
	var (
		mu       sync.Mutex
		sealed   []wrapped
		failures = map[string]int{}
	)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 9 {
		k := keys[g%len(keys)]
		wg.Go(func() {
			var mine []wrapped
			for n := 0; ; n++ {
				select {
				case <-done:
					mu.Lock()
					sealed = append(sealed, mine...)
					mu.Unlock()
					return
				default:
				}
				pt := fmt.Sprintf("g%d n%d", g, n)
				ct, err := k.Wrap(ctx, []byte(pt), nil)
				if err == nil {
					mine = append(mine, wrapped{k, pt, ct})
					if len(mine) > 1 {
						w := mine[n%len(mine)]
						var got []byte
						if got, err = k.Unwrap(ctx, w.ct, nil); err == nil && string(got) != w.pt {
							t.Errorf("Unwrap = %q, want %q", got, w.pt)
						}
					}
				}
				if err != nil {
					if !errors.Is(err, kms.ErrUnavailable) || errors.Is(err, kms.ErrUnwrap) {
						t.Errorf("%s call during outages err = %v, want nil or kms.ErrUnavailable", k.ID(), err)
					}
					mu.Lock()
					failures[k.ID()]++
					mu.Unlock()
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	for range 3 {
		time.Sleep(30 * time.Millisecond)
		pullOut(t)
		time.Sleep(30 * time.Millisecond)
		putBack(t)
	}
	time.Sleep(50 * time.Millisecond)
	close(done)
	wg.Wait()
	t.Logf("failed calls by key: %v; %d wrapped", failures, len(sealed))
	if failures[keys[0].ID()] == 0 {
		t.Errorf("no call on the outage token failed: the test tests nothing")
	}
	for _, k := range keys {
		if _, err := k.Wrap(ctx, []byte("x"), nil); err != nil {
			t.Errorf("%s Wrap after the outages err = %v, want nil", k.ID(), err)
		}
	}
	for _, w := range sealed {
		if got, err := w.k.Unwrap(ctx, w.ct, nil); err != nil || string(got) != w.pt {
			t.Errorf("%s Unwrap(%q wrapped during the outages) = %q, %v", w.k.ID(), w.pt, got, err)
		}
	}
}

// TestKeyDeletedTokenPresent: a key deleted from a token that is still
// there is reported missing (ErrKeyNotFound), and the token is not taken
// for unavailable.
func TestKeyDeletedTokenPresent(t *testing.T) {
	ctx := context.Background()
	label := "doomed-" + rand.Text()[:8]
	if err := CreateRootKey(ctx, mainToken.URI(label)); err != nil {
		t.Fatalf("CreateRootKey() err = %v", err)
	}
	k := openRoot(t) // keeps the token logged in
	doomed, err := Open(ctx, mainToken.URI(label), noBackoff)
	if err != nil {
		t.Fatalf("Open() err = %v", err)
	}
	t.Cleanup(func() { _ = doomed.Close() })
	w, err := doomed.Wrap(ctx, []byte("keyset"), nil)
	if err != nil {
		t.Fatalf("Wrap() err = %v", err)
	}

	c := k.mod.ctx
	sh, err := c.OpenSession(k.tok.slotID(), p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := findObjects(c, sh, keyTemplate(label, nil), 2)
	if err != nil || len(objs) != 1 {
		t.Fatalf("finding the key: %v, %v", objs, err)
	}
	if err := c.DestroyObject(sh, objs[0]); err != nil {
		t.Fatalf("C_DestroyObject: %v", err)
	}
	_ = c.CloseSession(sh)

	for i := range 2 {
		_, err := doomed.Wrap(ctx, []byte("x"), nil)
		if !errors.Is(err, ErrKeyNotFound) || !errors.Is(err, kms.ErrUnavailable) {
			t.Errorf("Wrap %d with the key deleted err = %v, want ErrKeyNotFound and kms.ErrUnavailable", i, err)
		} else if msg := err.Error(); !strings.Contains(msg, `token "tresor" is present`) || !strings.Contains(msg, label) {
			t.Errorf("Wrap %d with the key deleted err = %q, want it to name the token and the key", i, msg)
		}
		_, err = doomed.Unwrap(ctx, w, nil)
		if !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("Unwrap %d with the key deleted err = %v, want ErrKeyNotFound", i, err)
		}
	}
	if d := doomed.tok.down.Load(); d != nil {
		t.Errorf("token marked unavailable (%v) after a key was deleted from it", d.cause)
	}
	if _, err := k.Wrap(ctx, []byte("x"), nil); err != nil {
		t.Errorf("Wrap() on another key of the token err = %v, want nil", err)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
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
