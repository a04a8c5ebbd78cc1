//go:build cgo

package pkcs11

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

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
type module struct {
	path string
	ctx  *p11.Ctx
	p11  cryptoki
	refs int  // guarded by modules
	own  bool // this package called C_Initialize, so it calls C_Finalize

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
	if m.own {
		if ferr := m.ctx.Finalize(); ferr != nil {
			err = fmt.Errorf("pkcs11: module %s: C_Finalize: %w", m.path, ferr)
		}
	}
	m.ctx.Destroy()
	return err
}

// token is a token this process logged in to, shared by the root keys on it.
type token struct {
	mod                         *module
	key                         string
	modulePath                  string // as the URI gave it, for messages
	label, serial, manuf, model string
	refs                        int // guarded by mod.mu
	slot                        atomic.Uint64

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
// a logged-in session of the given flags on it.
func (m *module) acquireToken(c cryptoki, u URI, pin secret.String, flags uint) (*token, p11.SessionHandle, error) {
	slot, info, err := findSlot(c, u.ModulePath, u)
	if err != nil {
		return nil, 0, err
	}
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
		t.slot.Store(uint64(slot))
		m.tokens[key] = t
	}
	m.mu.Unlock()
	sh, err := t.openSession(c, flags)
	if err != nil {
		t.release()
		return nil, 0, err
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
		if u.Serial != "" || u.Manufacturer != "" || u.Model != "" {
			what += fmt.Sprintf(", serial %q, manufacturer %q, model %q", u.Serial, u.Manufacturer, u.Model)
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

// openSession opens a session on the token, finding its slot again if the
// token moved, and logs in unless the token already is.
func (t *token) openSession(c cryptoki, flags uint) (p11.SessionHandle, error) {
	sh, err := c.OpenSession(uint(t.slot.Load()), flags)
	if err != nil && (isCKR(err, p11.CKR_SLOT_ID_INVALID) || isCKR(err, p11.CKR_TOKEN_NOT_PRESENT) ||
		isCKR(err, p11.CKR_DEVICE_REMOVED) || isCKR(err, p11.CKR_TOKEN_NOT_RECOGNIZED)) {
		// The token may be back in another slot.
		slot, _, ferr := findSlot(c, t.modulePath, URI{Token: t.label, Serial: t.serial, Manufacturer: t.manuf, Model: t.model})
		if ferr != nil {
			return 0, fmt.Errorf("pkcs11: token %q: %w: %w", t.label, kms.ErrUnavailable, ferr)
		}
		t.slot.Store(uint64(slot))
		sh, err = c.OpenSession(slot, flags)
	}
	if err != nil {
		return 0, fmt.Errorf("pkcs11: token %q: C_OpenSession: %w", t.label, classify(err))
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
		return fmt.Errorf("pkcs11: token %q: C_Login: %w", t.label, classify(err))
	}
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

// deviceGone reports whether err says the token itself went away, which
// kills every session on it, not just the one that saw the error.
func deviceGone(err error) bool {
	var e p11.Error
	if !errors.As(err, &e) {
		return false
	}
	switch uint(e) {
	case p11.CKR_DEVICE_REMOVED, p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_DEVICE_ERROR, p11.CKR_TOKEN_NOT_RECOGNIZED:
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
	if isUnavailable(err) && !errors.Is(err, kms.ErrUnavailable) {
		return fmt.Errorf("%w: %w", kms.ErrUnavailable, err)
	}
	return err
}
