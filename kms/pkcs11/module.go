//go:build cgo

package pkcs11

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/secret"
)

// cryptoki is the part of *p11.Ctx this package calls. Tests wrap it to
// inject token failures.
type cryptoki interface {
	GetSlotList(tokenPresent bool) ([]uint, error)
	GetTokenInfo(slotID uint) (p11.TokenInfo, error)
	OpenSession(slotID uint, flags uint) (p11.SessionHandle, error)
	CloseSession(sh p11.SessionHandle) error
	GetSessionInfo(sh p11.SessionHandle) (p11.SessionInfo, error)
	Login(sh p11.SessionHandle, userType uint, pin string) error
	FindObjectsInit(sh p11.SessionHandle, temp []*p11.Attribute) error
	FindObjects(sh p11.SessionHandle, max int) ([]p11.ObjectHandle, bool, error)
	FindObjectsFinal(sh p11.SessionHandle) error
	GetAttributeValue(sh p11.SessionHandle, o p11.ObjectHandle, a []*p11.Attribute) ([]*p11.Attribute, error)
	GenerateKey(sh p11.SessionHandle, m []*p11.Mechanism, temp []*p11.Attribute) (p11.ObjectHandle, error)
	EncryptInit(sh p11.SessionHandle, m []*p11.Mechanism, o p11.ObjectHandle) error
	Encrypt(sh p11.SessionHandle, message []byte) ([]byte, error)
	DecryptInit(sh p11.SessionHandle, m []*p11.Mechanism, o p11.ObjectHandle) error
	Decrypt(sh p11.SessionHandle, cipher []byte) ([]byte, error)
}

// modules holds the process's initialized PKCS#11 modules by canonical path.
// A module is process-global state (C_Initialize is once per process), so
// this registry is too.
var modules = struct {
	sync.Mutex
	m map[string]*module
}{m: map[string]*module{}}

// module is one loaded and initialized PKCS#11 library, shared by every root
// key opened on it.
//
// A module can be re-initialized (C_Finalize, C_Initialize) to find a token
// that came back: some modules, SoftHSM2 among them, see a token that went
// away again only then. Every call into the module holds calls for reading
// and re-initializing holds it for writing, so the module is never finalized
// under a call in flight. Re-initializing ends every session and login on
// every token of the module and may renumber slots, so it bumps gen: a
// session, slot or key handle obtained at an older gen is dropped (never
// closed: the number may name a newer session) and obtained again.
type module struct {
	path string
	ctx  *p11.Ctx
	p11  cryptoki
	refs int  // guarded by modules
	own  bool // this package called C_Initialize, so it calls C_Finalize

	calls       sync.RWMutex // read: any call into the module; write: re-initializing it
	gen         atomic.Uint64
	reinitMu    sync.Mutex // serializes re-initializations
	initialized atomic.Bool
	reinits     atomic.Uint64

	mu     sync.Mutex
	tokens map[string]*token // by serial and label
}

// acquireModule loads and initializes the module at path, or shares the one
// already loaded. Pair it with release.
func acquireModule(path string) (*module, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: module-path %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("pkcs11: module-path %s is not a regular file", path)
	}
	canonical, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: module-path %s: %w", path, err)
	}
	modules.Lock()
	defer modules.Unlock()
	if m := modules.m[canonical]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := p11.New(canonical)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11: module-path %s: cannot load it as a PKCS#11 module (dlopen failed or C_GetFunctionList is missing)", path)
	}
	own := true
	if err := ctx.Initialize(); err != nil {
		if !isCKR(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			ctx.Destroy()
			return nil, fmt.Errorf("pkcs11: module %s: C_Initialize: %w", path, err)
		}
		own = false // another part of the process initialized it
	}
	m := &module{path: canonical, ctx: ctx, p11: ctx, refs: 1, own: own, tokens: map[string]*token{}}
	m.gen.Store(1)
	m.initialized.Store(true)
	modules.m[canonical] = m
	return m, nil
}

// release drops a reference; the last one finalizes and unloads the module.
func (m *module) release() error {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return nil
	}
	delete(modules.m, m.path)
	var err error
	if m.own && m.initialized.Load() {
		if ferr := m.ctx.Finalize(); ferr != nil && !isCKR(ferr, p11.CKR_CRYPTOKI_NOT_INITIALIZED) {
			err = fmt.Errorf("pkcs11: module %s: C_Finalize: %w", m.path, ferr)
		}
	}
	m.ctx.Destroy()
	return err
}

// reinit finalizes and initializes the module again, unless it was
// re-initialized since generation seen (another root key did it: the caller
// just looks for its token again). It waits for the calls in flight; calls
// that start meanwhile fail at once (see [RootKey.Wrap]).
func (m *module) reinit(seen uint64, logger *slog.Logger) error {
	m.reinitMu.Lock()
	defer m.reinitMu.Unlock()
	if m.gen.Load() != seen {
		return nil
	}
	if !m.own {
		return fmt.Errorf("pkcs11: module %s was initialized by another part of this process; not re-initializing it", m.path)
	}
	m.calls.Lock()
	defer m.calls.Unlock()
	logger.Warn("pkcs11: re-initializing the module (C_Finalize, C_Initialize) to find its tokens again; every session on it ends", "module", m.path)
	if err := m.ctx.Finalize(); err != nil && !isCKR(err, p11.CKR_CRYPTOKI_NOT_INITIALIZED) {
		logger.Warn("pkcs11: C_Finalize failed; initializing again anyway", "module", m.path, "err", err)
	}
	m.gen.Add(1)
	m.reinits.Add(1)
	if err := m.ctx.Initialize(); err != nil && !isCKR(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		m.initialized.Store(false)
		return fmt.Errorf("pkcs11: module %s: C_Initialize: %w", m.path, err)
	}
	m.initialized.Store(true)
	return nil
}

// stamp says when a session or key handle was obtained: at which module
// generation and token epoch. One from an older stamp is not used.
type stamp struct{ gen, epoch uint64 }

// slotRef is a token's slot as found at a module generation.
type slotRef struct {
	id  uint
	gen uint64
}

// outage is the state of a token found unavailable.
type outage struct {
	since    time.Time
	cause    error     // the failure that took it down, then the last recovery attempt's
	attempts int       // recovery attempts made
	next     time.Time // no recovery attempt before this
}

// token is a token this process logged in to, shared by the root keys on it.
type token struct {
	mod                         *module
	key                         string
	modulePath                  string // as the URI gave it, for messages
	label, serial, manuf, model string
	refs                        int // guarded by mod.mu
	slot                        atomic.Pointer[slotRef]

	// epoch is bumped when the token is found unavailable: sessions and
	// key handles from before are not used again. down is nil while the
	// token is available. stateMu serializes their changes; recoverMu is
	// held by the one call trying to recover the token.
	epoch     atomic.Uint64
	down      atomic.Pointer[outage]
	stateMu   sync.Mutex
	recoverMu sync.Mutex

	loginMu   sync.Mutex // guards the fields below
	pin       secret.String
	pinSource string
	// pinRefused is set when the token refused pin at a login after Open
	// (the PIN was changed, say). No login is tried again until a root key
	// is opened on the token, since a token locks its PIN after a few
	// wrong tries.
	pinRefused bool
}

// acquireToken finds the token u names, shares or registers it, and returns
// a logged-in session of the given flags on it. The caller holds m.calls
// for reading.
func (m *module) acquireToken(c cryptoki, u URI, pin secret.String, flags uint) (*token, p11.SessionHandle, error) {
	slot, info, err := findSlot(c, u.ModulePath, u)
	if err != nil {
		return nil, 0, err
	}
	gen := m.gen.Load()
	key := info.SerialNumber + "\x00" + info.Label
	m.mu.Lock()
	t := m.tokens[key]
	if t != nil {
		t.loginMu.Lock()
		switch {
		case t.pinRefused:
			// An explicit open is the one retry allowed after a refusal.
			t.pin, t.pinSource, t.pinRefused = pin, u.PINSource, false
		case subtle.ConstantTimeCompare([]byte(t.pin), []byte(pin)) != 1:
			src := t.pinSource
			t.loginMu.Unlock()
			m.mu.Unlock()
			return nil, 0, fmt.Errorf("%w: token %q: the PIN read from pin-source %s differs from the PIN this process logged in with (from %s)",
				ErrPINIncorrect, info.Label, u.PINSource, src)
		}
		t.loginMu.Unlock()
		t.refs++
	} else {
		t = &token{mod: m, key: key, modulePath: u.ModulePath, label: info.Label, serial: info.SerialNumber,
			manuf: u.Manufacturer, model: u.Model, refs: 1, pin: pin, pinSource: u.PINSource}
		m.tokens[key] = t
	}
	t.slot.Store(&slotRef{id: slot, gen: gen})
	m.mu.Unlock()
	sh, err := t.openSession(c, flags, gen)
	if err != nil {
		t.release()
		return nil, 0, classify(err)
	}
	return t, sh, nil
}

func (t *token) release() {
	t.mod.mu.Lock()
	defer t.mod.mu.Unlock()
	t.refs--
	if t.refs == 0 {
		delete(t.mod.tokens, t.key)
	}
}

// findSlot returns the one slot whose token matches u.
func findSlot(c cryptoki, modulePath string, u URI) (uint, p11.TokenInfo, error) {
	slots, err := c.GetSlotList(true)
	if err != nil {
		return 0, p11.TokenInfo{}, fmt.Errorf("pkcs11: module %s: C_GetSlotList: %w", modulePath, err)
	}
	var (
		found   []uint
		info    p11.TokenInfo
		present []string
	)
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil {
			continue // the token went away between the two calls
		}
		if ti.Flags&p11.CKF_TOKEN_INITIALIZED != 0 {
			present = append(present, fmt.Sprintf("%q", ti.Label))
		}
		if ti.Label == u.Token && (u.Serial == "" || ti.SerialNumber == u.Serial) &&
			(u.Manufacturer == "" || ti.ManufacturerID == u.Manufacturer) && (u.Model == "" || ti.Model == u.Model) {
			found = append(found, s)
			info = ti
		}
	}
	switch len(found) {
	case 1:
		return found[0], info, nil
	case 0:
		what := fmt.Sprintf("label %q", u.Token)
		for _, a := range [][2]string{{"serial", u.Serial}, {"manufacturer", u.Manufacturer}, {"model", u.Model}} {
			if a[1] != "" {
				what += fmt.Sprintf(", %s %q", a[0], a[1])
			}
		}
		list := "none"
		if len(present) > 0 {
			list = strings.Join(present, ", ")
		}
		return 0, p11.TokenInfo{}, fmt.Errorf("%w: no token with %s in module %s (tokens present: %s)", ErrTokenNotFound, what, modulePath, list)
	default:
		return 0, p11.TokenInfo{}, fmt.Errorf("%w: %d tokens labelled %q in module %s; add serial= to the URI to pick one",
			ErrTokenNotFound, len(found), u.Token, modulePath)
	}
}

// uri is what findSlot needs to find the token again.
func (t *token) uri() URI {
	return URI{Token: t.label, Serial: t.serial, Manufacturer: t.manuf, Model: t.model}
}

// slotID returns the token's slot as last found.
func (t *token) slotID() uint { return t.slot.Load().id }

// findSlot finds the token's slot again on a fresh slot list, at module
// generation gen. The caller holds mod.calls for reading.
func (t *token) findSlot(c cryptoki, gen uint64) (uint, error) {
	slot, _, err := findSlot(c, t.modulePath, t.uri())
	if err != nil {
		return 0, &tokenGoneError{err}
	}
	t.slot.Store(&slotRef{id: slot, gen: gen})
	return slot, nil
}

// openSession opens a session on the token at module generation gen,
// finding its slot again if the module was re-initialized since it was
// found or the token moved, and logs in unless the token already is. The
// caller holds mod.calls for reading. Its errors are not classified.
func (t *token) openSession(c cryptoki, flags uint, gen uint64) (p11.SessionHandle, error) {
	ref := t.slot.Load()
	slot := ref.id
	if ref.gen != gen {
		var err error
		if slot, err = t.findSlot(c, gen); err != nil {
			return 0, err
		}
	}
	sh, err := c.OpenSession(slot, flags)
	if err != nil && (isCKR(err, p11.CKR_SLOT_ID_INVALID) || isCKR(err, p11.CKR_TOKEN_NOT_PRESENT) ||
		isCKR(err, p11.CKR_DEVICE_REMOVED) || isCKR(err, p11.CKR_TOKEN_NOT_RECOGNIZED)) {
		// The token may be back in another slot.
		if slot, err = t.findSlot(c, gen); err != nil {
			return 0, err
		}
		sh, err = c.OpenSession(slot, flags)
	}
	if err != nil {
		return 0, fmt.Errorf("pkcs11: token %q: C_OpenSession: %w", t.label, err)
	}
	if err := t.login(c, sh); err != nil {
		_ = c.CloseSession(sh)
		return 0, err
	}
	return sh, nil
}

// login logs the user in once per token: sessions share the login, so it is
// skipped when the new session is already in a user state.
func (t *token) login(c cryptoki, sh p11.SessionHandle) error {
	t.loginMu.Lock()
	defer t.loginMu.Unlock()
	if info, err := c.GetSessionInfo(sh); err == nil &&
		(info.State == p11.CKS_RO_USER_FUNCTIONS || info.State == p11.CKS_RW_USER_FUNCTIONS) {
		return nil
	}
	if t.pinRefused {
		return fmt.Errorf("%w: token %q refused the PIN read from pin-source %s; not trying it again (the token would lock the PIN): fix the PIN file and open the root key again",
			ErrPINIncorrect, t.label, t.pinSource)
	}
	err := c.Login(sh, p11.CKU_USER, string(t.pin))
	switch {
	case err == nil, isCKR(err, p11.CKR_USER_ALREADY_LOGGED_IN):
		return nil
	case isCKR(err, p11.CKR_PIN_INCORRECT), isCKR(err, p11.CKR_PIN_INVALID), isCKR(err, p11.CKR_PIN_LEN_RANGE):
		t.pinRefused = true
		return fmt.Errorf("%w: token %q refused the PIN read from pin-source %s: %w", ErrPINIncorrect, t.label, t.pinSource, err)
	case isCKR(err, p11.CKR_PIN_LOCKED), isCKR(err, p11.CKR_PIN_EXPIRED):
		t.pinRefused = true
		return fmt.Errorf("%w: token %q: the user PIN is locked or expired (pin-source %s): %w", ErrPINIncorrect, t.label, t.pinSource, err)
	default:
		return fmt.Errorf("pkcs11: token %q: C_Login: %w", t.label, err)
	}
}

// probe reports whether the token still answers in its slot, as itself. A
// token whose files are gone answers C_GetTokenInfo with CKR_GENERAL_ERROR
// in SoftHSM2, while its sessions stay open and find no objects. The caller
// holds mod.calls for reading.
func (t *token) probe(c cryptoki) error {
	slot := t.slotID()
	ti, err := c.GetTokenInfo(slot)
	switch {
	case err != nil:
		return fmt.Errorf("C_GetTokenInfo(slot %d): %w", slot, err)
	case ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 || ti.Label != t.label || ti.SerialNumber != t.serial:
		return fmt.Errorf("slot %d now holds token %q (serial %q)", slot, ti.Label, ti.SerialNumber)
	}
	return nil
}

// unavailable returns the error of a call while the token is down.
func (t *token) unavailable(cause error) error {
	return fmt.Errorf("%w: pkcs11: token %q (module %s) is unavailable: %w", kms.ErrUnavailable, t.label, t.modulePath, cause)
}

// markDown records that the token is unavailable, as seen by a call on a
// session or key handle of stamp s. It reports whether this call took it
// down: a call on something from before the last outage or re-initialization
// says nothing about the token now.
func (t *token) markDown(s stamp, cause error) bool {
	t.stateMu.Lock()
	defer t.stateMu.Unlock()
	if t.down.Load() != nil || s.epoch != t.epoch.Load() || s.gen != t.mod.gen.Load() {
		return false
	}
	t.epoch.Add(1)
	now := time.Now()
	t.down.Store(&outage{since: now, cause: cause, next: now})
	return true
}

// markUp records that the token is available again, and returns the
// outage it ends, if any.
func (t *token) markUp() *outage {
	t.stateMu.Lock()
	defer t.stateMu.Unlock()
	return t.down.Swap(nil)
}

// updateOutage replaces outage d, unless the token came back meanwhile.
func (t *token) updateOutage(d, next *outage) {
	t.stateMu.Lock()
	defer t.stateMu.Unlock()
	t.down.CompareAndSwap(d, next)
}

// readPIN reads the user PIN from path, without a trailing newline, and
// returns the file's permission bits.
func readPIN(path string) (pin secret.String, perm os.FileMode, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("pkcs11: pin-source %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, fmt.Errorf("pkcs11: pin-source %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return "", 0, fmt.Errorf("pkcs11: pin-source %s is not a regular file", path)
	}
	const maxPIN = 1 << 10
	buf := make([]byte, maxPIN+1)
	defer clear(buf)
	n, err := io.ReadFull(f, buf)
	switch {
	case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
		return "", 0, fmt.Errorf("pkcs11: pin-source %s: %w", path, err)
	case n > maxPIN:
		return "", 0, fmt.Errorf("pkcs11: pin-source %s is larger than %d bytes; it must hold only the PIN", path, maxPIN)
	}
	s := strings.TrimRight(string(buf[:n]), "\r\n")
	if s == "" {
		return "", 0, fmt.Errorf("pkcs11: pin-source %s is empty", path)
	}
	return secret.String(s), st.Mode().Perm(), nil
}

// isCKR reports whether err is the PKCS#11 return value rv.
func isCKR(err error, rv uint) bool {
	var e p11.Error
	return errors.As(err, &e) && uint(e) == rv
}

// tokenGoneError says the token itself cannot be reached, not just one
// session: it is not in any slot, or it no longer answers in its own.
type tokenGoneError struct{ err error }

func (e *tokenGoneError) Error() string { return e.err.Error() }
func (e *tokenGoneError) Unwrap() error { return e.err }

// unavailable are the return values that say the token, not the input, is
// the problem: the session is discarded and the call may succeed later.
var unavailable = map[uint]bool{
	p11.CKR_HOST_MEMORY:               true,
	p11.CKR_GENERAL_ERROR:             false, // some tokens report a bad tag this way
	p11.CKR_DEVICE_ERROR:              true,
	p11.CKR_DEVICE_MEMORY:             true,
	p11.CKR_DEVICE_REMOVED:            true,
	p11.CKR_TOKEN_NOT_PRESENT:         true,
	p11.CKR_TOKEN_NOT_RECOGNIZED:      true,
	p11.CKR_SESSION_CLOSED:            true,
	p11.CKR_SESSION_COUNT:             true,
	p11.CKR_SESSION_HANDLE_INVALID:    true,
	p11.CKR_SLOT_ID_INVALID:           true,
	p11.CKR_USER_NOT_LOGGED_IN:        true,
	p11.CKR_CRYPTOKI_NOT_INITIALIZED:  true,
	p11.CKR_KEY_HANDLE_INVALID:        true,
	p11.CKR_OBJECT_HANDLE_INVALID:     true,
	p11.CKR_OPERATION_ACTIVE:          true,
	p11.CKR_OPERATION_NOT_INITIALIZED: true,
	p11.CKR_FUNCTION_CANCELED:         true,
}

// deviceGone reports whether err says the token itself went away (or the
// module lost it), which kills every session on it, not just the one that
// saw the error.
func deviceGone(err error) bool {
	var gone *tokenGoneError
	if errors.As(err, &gone) {
		return true
	}
	var e p11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch uint(e) {
	case p11.CKR_DEVICE_REMOVED, p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_DEVICE_ERROR, p11.CKR_TOKEN_NOT_RECOGNIZED,
		p11.CKR_SLOT_ID_INVALID, p11.CKR_CRYPTOKI_NOT_INITIALIZED:
		return true
	}
	return false
}

// suspect reports whether err may mean the token went away, which a token
// that lost its files or was reset reports as a session or handle gone.
func suspect(err error) bool {
	var e p11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch uint(e) {
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_USER_NOT_LOGGED_IN,
		p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

// isUnavailable reports whether err says the token or session is broken.
func isUnavailable(err error) bool {
	var e p11.Error
	return errors.As(err, &e) && unavailable[uint(e)]
}

// classify wraps err with kms.ErrUnavailable when the token is the problem.
func classify(err error) error {
	if (isUnavailable(err) || deviceGone(err)) && !errors.Is(err, kms.ErrUnavailable) {
		return fmt.Errorf("%w: %w", kms.ErrUnavailable, err)
	}
	return err
}
