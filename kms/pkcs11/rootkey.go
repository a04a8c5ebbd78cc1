//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	p11 "github.com/miekg/pkcs11"

	"github.com/tresorkms/tresor/kms"
)

// RootKey is an AES-256 key in a PKCS#11 token. It implements kms.RootKey
// and is safe for concurrent use.
type RootKey struct {
	id     string
	object string
	keyID  []byte // CKA_ID read from the token at Open
	logger *slog.Logger

	mod *module
	tok *token
	p11 cryptoki

	obj    atomic.Uint64 // cached object handle; 0 means look it up again
	findMu sync.Mutex

	// The session pool: idle holds open sessions; vacant holds one token
	// per session that may still be opened. An idle session is always
	// preferred, so sessions are opened only under concurrent load.
	idle      chan p11.SessionHandle
	vacant    chan struct{}
	done      chan struct{}
	closed    atomic.Bool
	closeOnce sync.Once

	wraps, unwraps, opened, discarded atomic.Uint64
}

var _ kms.RootKey = (*RootKey)(nil)

// Open opens the root key the URI names (see [ParseURI]): it reads the PIN
// from pin-source, loads and initializes the module (once per process),
// finds the token by label, logs in (once per token) and finds the key: the
// one AES secret key whose CKA_LABEL is the URI's object (and CKA_ID its id,
// if given). Its errors say which file or token is wrong and never hold the
// PIN; see [ErrPINIncorrect], [ErrTokenNotFound] and [ErrKeyNotFound].
func Open(ctx context.Context, uri string, opts ...Option) (*RootKey, error) {
	o := newOptions(opts)
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	pin, perm, err := readPIN(u.PINSource)
	if err != nil {
		return nil, err
	}
	if perm&0o007 != 0 {
		return nil, fmt.Errorf("pkcs11: pin-source %s is accessible to every user (mode %04o); chmod 600 it", u.PINSource, perm)
	}
	if perm&0o070 != 0 {
		o.logger.WarnContext(ctx, "pkcs11: the PIN file is readable by its group; chmod 600 it unless the group is the service's own", "pin_source", u.PINSource, "mode", fmt.Sprintf("%04o", perm))
	}
	mod, err := acquireModule(u.ModulePath)
	if err != nil {
		return nil, err
	}
	tok, sh, err := mod.acquireToken(mod.p11, u, pin, p11.CKF_SERIAL_SESSION)
	if err != nil {
		_ = mod.release()
		return nil, err
	}
	k := &RootKey{
		object: u.Object,
		logger: o.logger,
		mod:    mod,
		tok:    tok,
		p11:    mod.p11,
		idle:   make(chan p11.SessionHandle, o.sessions),
		vacant: make(chan struct{}, o.sessions),
		done:   make(chan struct{}),
	}
	k.opened.Add(1)
	obj, ckaID, err := findKey(k.p11, sh, tok.label, u.Object, u.ID)
	if err != nil {
		_ = k.p11.CloseSession(sh)
		tok.release()
		_ = mod.release()
		return nil, err
	}
	k.obj.Store(uint64(obj))
	k.keyID = ckaID
	k.id = keyID(tok.label, u.Object, ckaID)
	k.idle <- sh
	for i := 1; i < o.sessions; i++ {
		k.vacant <- struct{}{}
	}
	k.logger.InfoContext(ctx, "pkcs11 root key opened",
		"id", k.id, "module", mod.path, "slot", tok.slot.Load(), "sessions", o.sessions)
	return k, nil
}

// keyTemplate matches AES secret keys labelled object (and with CKA_ID id).
func keyTemplate(object string, id []byte) []*p11.Attribute {
	t := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_LABEL, object),
	}
	if len(id) > 0 {
		t = append(t, p11.NewAttribute(p11.CKA_ID, id))
	}
	return t
}

// findObjects returns up to max objects matching tmpl.
func findObjects(c cryptoki, sh p11.SessionHandle, tmpl []*p11.Attribute, max int) ([]p11.ObjectHandle, error) {
	if err := c.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	objs, _, err := c.FindObjects(sh, max)
	if ferr := c.FindObjectsFinal(sh); err == nil {
		err = ferr
	}
	return objs, err
}

// findKey finds the one AES key labelled object (with CKA_ID id, if given),
// checks it is a 256-bit key allowed to encrypt and decrypt, and returns its
// handle and CKA_ID.
func findKey(c cryptoki, sh p11.SessionHandle, tokenLabel, object string, id []byte) (p11.ObjectHandle, []byte, error) {
	objs, err := findObjects(c, sh, keyTemplate(object, id), 2)
	if err != nil {
		return 0, nil, fmt.Errorf("pkcs11: token %q: looking for key %q: %w", tokenLabel, object, classify(err))
	}
	what := fmt.Sprintf("labelled %q", object)
	if len(id) > 0 {
		what += " with id " + escapeAll(id)
	}
	switch len(objs) {
	case 0:
		return 0, nil, fmt.Errorf("%w: token %q has no AES secret key %s (create it with CreateRootKey)", ErrKeyNotFound, tokenLabel, what)
	case 1:
	default:
		return 0, nil, fmt.Errorf("%w: token %q has more than one AES secret key %s; a root key URI must name exactly one (add id= to it)",
			ErrKeyNotFound, tokenLabel, what)
	}
	attrs, err := c.GetAttributeValue(sh, objs[0], []*p11.Attribute{
		p11.NewAttribute(p11.CKA_ID, nil),
		p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
		p11.NewAttribute(p11.CKA_ENCRYPT, nil),
		p11.NewAttribute(p11.CKA_DECRYPT, nil),
	})
	if err != nil {
		return 0, nil, fmt.Errorf("pkcs11: token %q: key %q: C_GetAttributeValue: %w", tokenLabel, object, classify(err))
	}
	var ckaID []byte
	for _, a := range attrs {
		switch a.Type {
		case p11.CKA_ID:
			ckaID = bytes.Clone(a.Value)
		case p11.CKA_VALUE_LEN:
			if n, err := bytesToUint(a.Value); err != nil || n != 32 {
				return 0, nil, fmt.Errorf("%w: token %q: key %q is not an AES-256 key (CKA_VALUE_LEN %d)", ErrKeyNotFound, tokenLabel, object, n)
			}
		case p11.CKA_ENCRYPT, p11.CKA_DECRYPT:
			if len(a.Value) != 1 || a.Value[0] == 0 {
				return 0, nil, fmt.Errorf("%w: token %q: key %q does not allow encryption and decryption (CKA_ENCRYPT, CKA_DECRYPT)", ErrKeyNotFound, tokenLabel, object)
			}
		}
	}
	return objs[0], ckaID, nil
}

// bytesToUint decodes a CK_ULONG attribute (host byte order).
func bytesToUint(b []byte) (uint64, error) {
	switch len(b) {
	case 8:
		return binary.NativeEndian.Uint64(b), nil
	case 4:
		return uint64(binary.NativeEndian.Uint32(b)), nil
	}
	return 0, errors.New("not a CK_ULONG")
}

// ID returns "pkcs11:token=<label>;object=<label>" and ";id=<CKA_ID>" if
// the key has one. It holds neither the module path nor the PIN source.
func (k *RootKey) ID() string { return k.id }

// Calls returns how many wrap and unwrap operations were sent to the token.
func (k *RootKey) Calls() uint64 { return k.wraps.Load() + k.unwraps.Load() }

// Stats returns the counters of operations and sessions.
func (k *RootKey) Stats() Stats {
	return Stats{
		Wraps: k.wraps.Load(), Unwraps: k.unwraps.Load(),
		SessionsOpened: k.opened.Load(), SessionsDiscarded: k.discarded.Load(),
	}
}

// acquire takes a session from the pool, opening one if needed. It waits
// for a free session, honoring ctx.
func (k *RootKey) acquire(ctx context.Context) (p11.SessionHandle, error) {
	var sh p11.SessionHandle
	select {
	case sh = <-k.idle:
	default:
		select {
		case sh = <-k.idle:
		case <-k.vacant:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-k.done:
			return 0, kms.ErrClosed
		}
	}
	if k.closed.Load() {
		k.put(sh)
		return 0, kms.ErrClosed
	}
	if sh == 0 {
		var err error
		if sh, err = k.tok.openSession(k.p11, p11.CKF_SERIAL_SESSION); err != nil {
			k.vacant <- struct{}{}
			if !errors.Is(err, kms.ErrUnavailable) {
				err = fmt.Errorf("%w: %w", kms.ErrUnavailable, err)
			}
			return 0, err
		}
		k.opened.Add(1)
	}
	return sh, nil
}

// put returns a session, or a vacancy for 0, to the pool.
func (k *RootKey) put(sh p11.SessionHandle) {
	if sh == 0 {
		k.vacant <- struct{}{}
	} else {
		k.idle <- sh
	}
}

// release returns a session to the pool, or discards it if err says it is
// broken.
func (k *RootKey) release(sh p11.SessionHandle, err error) {
	if err != nil && isUnavailable(err) {
		if staleHandle(err) {
			k.obj.Store(0)
		}
		_ = k.p11.CloseSession(sh)
		k.discarded.Add(1)
		k.logger.Warn("pkcs11: discarding a broken session", "id", k.id, "err", err)
		sh = 0
		if deviceGone(err) {
			k.drainIdle()
		}
	}
	k.put(sh)
}

// drainIdle closes every idle session: after the token itself went away
// they are all dead, and each would otherwise fail one more call.
func (k *RootKey) drainIdle() {
	for {
		select {
		case sh := <-k.idle:
			_ = k.p11.CloseSession(sh)
			k.discarded.Add(1)
			k.vacant <- struct{}{}
		default:
			return
		}
	}
}

// handle returns the key's handle, finding it again after the token reported
// the cached one invalid. A key found again must have the CKA_ID seen at Open.
func (k *RootKey) handle(sh p11.SessionHandle) (p11.ObjectHandle, error) {
	if h := k.obj.Load(); h != 0 {
		return p11.ObjectHandle(h), nil
	}
	k.findMu.Lock()
	defer k.findMu.Unlock()
	if h := k.obj.Load(); h != 0 {
		return p11.ObjectHandle(h), nil
	}
	h, ckaID, err := findKey(k.p11, sh, k.tok.label, k.object, k.keyID)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", kms.ErrUnavailable, err)
	}
	if !bytes.Equal(ckaID, k.keyID) {
		return 0, fmt.Errorf("%w: pkcs11: token %q: key %q now has another CKA_ID; refusing to use a different key", kms.ErrUnavailable, k.tok.label, k.object)
	}
	k.obj.Store(uint64(h))
	return h, nil
}

// Wrap encrypts plaintext with AES-256-GCM in the token under a fresh random
// IV, with associatedData as the GCM AAD.
func (k *RootKey) Wrap(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	if k.closed.Load() {
		return nil, kms.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var iv [ivSize]byte
	if _, err := rand.Read(iv[:]); err != nil {
		return nil, fmt.Errorf("pkcs11: wrap: %w", err)
	}
	sh, err := k.acquire(ctx)
	if err != nil {
		return nil, err
	}
	ct, usedIV, err := k.encrypt(sh, iv[:], plaintext, associatedData)
	k.release(sh, err)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: wrap: %w", classify(err))
	}
	if len(usedIV) != ivSize || len(ct) != len(plaintext)+tagSize {
		return nil, fmt.Errorf("pkcs11: wrap: the token returned %d IV bytes and %d ciphertext bytes, want %d and %d",
			len(usedIV), len(ct), ivSize, len(plaintext)+tagSize)
	}
	out := make([]byte, 0, 1+ivSize+len(ct))
	out = append(out, formatV1)
	out = append(out, usedIV...)
	return append(out, ct...), nil
}

func (k *RootKey) encrypt(sh p11.SessionHandle, iv, plaintext, aad []byte) (ct, usedIV []byte, err error) {
	params := p11.NewGCMParams(iv, aad, tagSize*8)
	defer params.Free()
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}
	k.wraps.Add(1)
	for retry := true; ; retry = false {
		obj, err := k.handle(sh)
		if err != nil {
			return nil, nil, err
		}
		err = k.p11.EncryptInit(sh, mech, obj)
		if retry && staleHandle(err) {
			// The token forgot the handle (it logged out when its last
			// session closed, or it was reset): find the key again.
			k.obj.CompareAndSwap(uint64(obj), 0)
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		break
	}
	if ct, err = k.p11.Encrypt(sh, plaintext); err != nil {
		return nil, nil, err
	}
	// Some tokens choose the IV themselves and write it back.
	if usedIV = params.IV(); usedIV == nil {
		usedIV = iv
	}
	return ct, usedIV, nil
}

// staleHandle reports whether err says the cached key handle is invalid.
func staleHandle(err error) bool {
	return isCKR(err, p11.CKR_KEY_HANDLE_INVALID) || isCKR(err, p11.CKR_OBJECT_HANDLE_INVALID)
}

// Unwrap decrypts what Wrap returned in the token. Any failure to parse or
// decrypt is kms.ErrUnwrap; a broken token or session is kms.ErrUnavailable.
func (k *RootKey) Unwrap(ctx context.Context, wrapped, associatedData []byte) ([]byte, error) {
	if k.closed.Load() {
		return nil, kms.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(wrapped) < overhead || wrapped[0] != formatV1 {
		return nil, fmt.Errorf("pkcs11: %w", kms.ErrUnwrap)
	}
	sh, err := k.acquire(ctx)
	if err != nil {
		return nil, err
	}
	pt, err := k.decrypt(sh, wrapped[1:1+ivSize], wrapped[1+ivSize:], associatedData)
	k.release(sh, err)
	if err != nil {
		if isUnavailable(err) || errors.Is(err, kms.ErrUnavailable) {
			return nil, fmt.Errorf("pkcs11: unwrap: %w", classify(err))
		}
		return nil, fmt.Errorf("pkcs11: %w", kms.ErrUnwrap)
	}
	return pt, nil
}

func (k *RootKey) decrypt(sh p11.SessionHandle, iv, ct, aad []byte) ([]byte, error) {
	params := p11.NewGCMParams(iv, aad, tagSize*8)
	defer params.Free()
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}
	k.unwraps.Add(1)
	for retry := true; ; retry = false {
		obj, err := k.handle(sh)
		if err != nil {
			return nil, err
		}
		err = k.p11.DecryptInit(sh, mech, obj)
		if retry && staleHandle(err) {
			k.obj.CompareAndSwap(uint64(obj), 0)
			continue
		}
		if err != nil {
			return nil, err
		}
		return k.p11.Decrypt(sh, ct)
	}
}

// Close closes the root key's sessions, waiting for calls in flight, and
// releases the token and module (the last root key on a module finalizes
// it). Calls after Close fail with kms.ErrClosed; Close again returns nil.
func (k *RootKey) Close() error {
	var err error
	k.closeOnce.Do(func() {
		k.closed.Store(true)
		close(k.done)
		var errs []error
		for range cap(k.idle) { // wait for every session in flight
			select {
			case sh := <-k.idle:
				if err := k.p11.CloseSession(sh); err != nil && !isUnavailable(err) {
					errs = append(errs, fmt.Errorf("pkcs11: C_CloseSession: %w", err))
				}
			case <-k.vacant:
			}
		}
		k.tok.release()
		errs = append(errs, k.mod.release())
		err = errors.Join(errs...)
	})
	return err
}
