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
	"time"

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

	obj    atomic.Pointer[objRef] // cached key handle; nil means look it up again
	findMu sync.Mutex

	// The session pool: idle holds open sessions; vacant holds one token
	// per session that may still be opened. An idle session is always
	// preferred, so sessions are opened only under concurrent load.
	idle      chan session
	vacant    chan struct{}
	done      chan struct{}
	closed    atomic.Bool
	closeOnce sync.Once
	// life is held for reading by every call and for writing by Close, so
	// that Close never releases the module under a call (or a recovery).
	life sync.RWMutex

	minBackoff, maxBackoff time.Duration

	wraps, unwraps, opened, discarded, recoveries atomic.Uint64
}

// session is a pooled session and when it was opened.
type session struct {
	sh p11.SessionHandle // 0 stands for a vacancy
	stamp
}

// objRef is the key's handle and when it was found.
type objRef struct {
	h p11.ObjectHandle
	stamp
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
	mod.calls.RLock()
	defer mod.calls.RUnlock()
	tok, sh, err := mod.acquireToken(mod.p11, u, pin, p11.CKF_SERIAL_SESSION)
	if err != nil {
		_ = mod.release()
		return nil, err
	}
	k := &RootKey{
		object:     u.Object,
		logger:     o.logger,
		mod:        mod,
		tok:        tok,
		p11:        mod.p11,
		idle:       make(chan session, o.sessions),
		vacant:     make(chan struct{}, o.sessions),
		done:       make(chan struct{}),
		minBackoff: o.minBackoff,
		maxBackoff: o.maxBackoff,
	}
	k.opened.Add(1)
	obj, ckaID, err := findKey(k.p11, sh, tok.label, u.Object, u.ID, false)
	if err != nil {
		_ = k.p11.CloseSession(sh)
		tok.release()
		_ = mod.release()
		return nil, classify(err)
	}
	// The token answered as itself: if it was down, it is back.
	if d := tok.markUp(); d != nil {
		k.logger.InfoContext(ctx, "pkcs11: token available again", "token", tok.label, "down_for", time.Since(d.since).Round(time.Millisecond))
	}
	st := stamp{gen: mod.gen.Load(), epoch: tok.epoch.Load()}
	k.obj.Store(&objRef{h: obj, stamp: st})
	k.keyID = ckaID
	k.id = keyID(tok.label, u.Object, ckaID)
	k.idle <- session{sh: sh, stamp: st}
	for i := 1; i < o.sessions; i++ {
		k.vacant <- struct{}{}
	}
	k.logger.InfoContext(ctx, "pkcs11 root key opened",
		"id", k.id, "module", mod.path, "slot", tok.slotID(), "sessions", o.sessions)
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
// handle and CKA_ID. again says the key was found before (at Open). Its
// errors are not classified.
func findKey(c cryptoki, sh p11.SessionHandle, tokenLabel, object string, id []byte, again bool) (p11.ObjectHandle, []byte, error) {
	objs, err := findObjects(c, sh, keyTemplate(object, id), 2)
	if err != nil {
		return 0, nil, fmt.Errorf("pkcs11: token %q: looking for key %q: %w", tokenLabel, object, err)
	}
	what := fmt.Sprintf("labelled %q", object)
	if len(id) > 0 {
		what += " with id " + escapeAll(id)
	}
	switch len(objs) {
	case 0:
		if again {
			return 0, nil, fmt.Errorf("%w: token %q is present but no longer has the AES secret key %s (was it deleted?)", ErrKeyNotFound, tokenLabel, what)
		}
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
		return 0, nil, fmt.Errorf("pkcs11: token %q: key %q: C_GetAttributeValue: %w", tokenLabel, object, err)
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
		Recoveries: k.recoveries.Load(),
	}
}

// stamp returns the current module generation and token epoch.
func (k *RootKey) stamp() stamp {
	return stamp{gen: k.mod.gen.Load(), epoch: k.tok.epoch.Load()}
}

// call runs op on a session of the pool. It fails at once with
// kms.ErrUnavailable while the token is down (after trying to recover it, if
// an attempt is due) or the module is being re-initialized.
func (k *RootKey) call(ctx context.Context, op func(session) error) error {
	if !k.life.TryRLock() {
		return kms.ErrClosed // Close is waiting for the calls in flight
	}
	defer k.life.RUnlock()
	if k.closed.Load() {
		return kms.ErrClosed
	}
	if err := k.ready(); err != nil {
		return err
	}
	if !k.mod.calls.TryRLock() {
		return fmt.Errorf("%w: pkcs11: token %q: module %s is being re-initialized to recover a token; retry later",
			kms.ErrUnavailable, k.tok.label, k.mod.path)
	}
	defer k.mod.calls.RUnlock()
	s, err := k.acquire(ctx)
	if err != nil {
		return err
	}
	return k.release(s, op(s))
}

// ready returns nil if the token is available. While it is down, it returns
// the outage's error, except that one call at a time, at most once per
// backoff, tries to recover the token first (see [WithRecoveryBackoff]).
func (k *RootKey) ready() error {
	t := k.tok
	d := t.down.Load()
	if d == nil {
		return nil
	}
	if !t.recoverMu.TryLock() {
		return t.unavailable(d.cause) // another call is recovering it
	}
	defer t.recoverMu.Unlock()
	if d = t.down.Load(); d == nil {
		return nil
	}
	now := time.Now()
	if now.Before(d.next) {
		return t.unavailable(d.cause)
	}
	tokenUp, err := k.recover()
	if tokenUp {
		if t.markUp() != nil {
			k.recoveries.Add(1)
			k.logger.Info("pkcs11: token available again", "id", k.id, "token", t.label, "slot", t.slotID(),
				"down_for", time.Since(d.since).Round(time.Millisecond), "attempts", d.attempts+1)
		}
		return err // nil, or the key is missing from a token that is present
	}
	next := &outage{since: d.since, cause: err, attempts: d.attempts + 1}
	next.next = now.Add(k.backoff(next.attempts))
	t.updateOutage(d, next)
	k.logger.Warn("pkcs11: token still unavailable", "id", k.id, "token", t.label, "attempts", next.attempts,
		"next_attempt_in", next.next.Sub(now).Round(time.Millisecond), "err", err)
	return t.unavailable(err)
}

// backoff is the wait after the n-th failed recovery attempt.
func (k *RootKey) backoff(n int) time.Duration {
	d := k.minBackoff
	for i := 1; i < n && d < k.maxBackoff; i++ {
		d *= 2
	}
	return min(d, k.maxBackoff)
}

// recover looks for the token on a fresh slot list, logs in and finds the
// key again. If the token is not found, it re-initializes the module (once
// for every root key on it that saw the same generation fail) and looks
// again. tokenUp reports whether the token answered; err may then still say
// the key is missing.
func (k *RootKey) recover() (tokenUp bool, err error) {
	seen := k.mod.gen.Load()
	tokenUp, err = k.reconnect()
	if tokenUp || !deviceGone(err) {
		return tokenUp, err
	}
	if rerr := k.mod.reinit(seen, k.logger); rerr != nil {
		return false, fmt.Errorf("%w; re-initializing the module failed: %w", err, rerr)
	}
	return k.reconnect()
}

// reconnect finds the token's slot, opens a session and logs in, and finds
// the key; the session joins the pool if it has room.
func (k *RootKey) reconnect() (tokenUp bool, err error) {
	k.mod.calls.RLock()
	defer k.mod.calls.RUnlock()
	gen := k.mod.gen.Load()
	if _, err := k.tok.findSlot(k.p11, gen); err != nil {
		return false, err
	}
	sh, err := k.tok.openSession(k.p11, p11.CKF_SERIAL_SESSION, gen)
	if err != nil {
		return false, err
	}
	k.opened.Add(1)
	st := stamp{gen: gen, epoch: k.tok.epoch.Load()}
	h, ckaID, err := findKey(k.p11, sh, k.tok.label, k.object, k.keyID, true)
	switch {
	case err == nil && !bytes.Equal(ckaID, k.keyID):
		err = fmt.Errorf("%w: token %q: key %q now has another CKA_ID; refusing to use a different key", ErrKeyNotFound, k.tok.label, k.object)
	case err == nil:
		k.obj.Store(&objRef{h: h, stamp: st})
	}
	if err != nil {
		_ = k.p11.CloseSession(sh)
		k.discarded.Add(1)
		if deviceGone(err) || (isUnavailable(err) && k.tok.probe(k.p11) != nil) {
			return false, err
		}
		return true, fmt.Errorf("%w: %w", kms.ErrUnavailable, err)
	}
	select {
	case <-k.vacant:
		k.idle <- session{sh: sh, stamp: st}
	default:
		_ = k.p11.CloseSession(sh)
	}
	return true, nil
}

// acquire takes a session from the pool, opening one if needed. It waits
// for a free session, honoring ctx. The caller holds mod.calls for reading.
func (k *RootKey) acquire(ctx context.Context) (session, error) {
	var s session
	select {
	case s = <-k.idle:
	default:
		select {
		case s = <-k.idle:
		case <-k.vacant:
		case <-ctx.Done():
			return session{}, ctx.Err()
		case <-k.done:
			return session{}, kms.ErrClosed
		}
	}
	if k.closed.Load() {
		k.put(s)
		return session{}, kms.ErrClosed
	}
	cur := k.stamp()
	if s.sh != 0 && s.stamp != cur {
		// Opened before the token went away or the module was
		// re-initialized: it is dead, or no longer ours to close.
		if s.gen == cur.gen {
			_ = k.p11.CloseSession(s.sh)
		}
		k.discarded.Add(1)
		s = session{}
	}
	if s.sh == 0 {
		sh, err := k.tok.openSession(k.p11, p11.CKF_SERIAL_SESSION, cur.gen)
		if err != nil {
			k.vacant <- struct{}{}
			if deviceGone(err) {
				return session{}, k.tokenDown(cur, err)
			}
			if !errors.Is(err, kms.ErrUnavailable) {
				err = fmt.Errorf("%w: %w", kms.ErrUnavailable, err)
			}
			return session{}, err
		}
		k.opened.Add(1)
		s = session{sh: sh, stamp: cur}
	}
	return s, nil
}

// tokenDown marks the token unavailable after a call on something of stamp
// s failed with cause, and returns the call's error.
func (k *RootKey) tokenDown(s stamp, cause error) error {
	if k.tok.markDown(s, cause) {
		k.logger.Warn("pkcs11: token unavailable; calls fail until it is recovered", "id", k.id, "token", k.tok.label,
			"module", k.mod.path, "err", cause)
	}
	return k.tok.unavailable(cause)
}

// put returns a session, or a vacancy, to the pool.
func (k *RootKey) put(s session) {
	if s.sh == 0 {
		k.vacant <- struct{}{}
	} else {
		k.idle <- s
	}
}

// release returns a session to the pool, or discards it if err says it is
// broken, and returns the call's error. If err says the token itself is
// gone, or may be and the token no longer answers, the token is marked
// unavailable. The caller holds mod.calls for reading.
func (k *RootKey) release(s session, err error) error {
	if err == nil {
		k.put(s)
		return nil
	}
	gone := deviceGone(err)
	if !gone && suspect(err) {
		if perr := k.tok.probe(k.p11); perr != nil {
			gone, err = true, fmt.Errorf("%w, and the token no longer answers: %w", err, perr)
		}
	}
	if gone || isUnavailable(err) {
		if staleHandle(err) {
			k.obj.Store(nil)
		}
		_ = k.p11.CloseSession(s.sh)
		k.discarded.Add(1)
		k.logger.Warn("pkcs11: discarding a broken session", "id", k.id, "err", err)
		s.sh = 0
	}
	k.put(s)
	if gone {
		k.drainIdle()
		return k.tokenDown(s.stamp, err)
	}
	return err
}

// drainIdle closes every idle session: after the token itself went away
// they are all dead, and each would otherwise fail one more call. The
// caller holds mod.calls for reading.
func (k *RootKey) drainIdle() {
	gen := k.mod.gen.Load()
	for {
		select {
		case s := <-k.idle:
			if s.gen == gen {
				_ = k.p11.CloseSession(s.sh)
			}
			k.discarded.Add(1)
			k.vacant <- struct{}{}
		default:
			return
		}
	}
}

// handle returns the key's handle, finding it again after the token reported
// the cached one invalid, or after an outage. A key found again must have
// the CKA_ID seen at Open. If it is not found and the token no longer
// answers, the token is gone, not the key.
func (k *RootKey) handle(s session) (p11.ObjectHandle, error) {
	if r := k.obj.Load(); r != nil && r.stamp == s.stamp {
		return r.h, nil
	}
	k.findMu.Lock()
	defer k.findMu.Unlock()
	if r := k.obj.Load(); r != nil && r.stamp == s.stamp {
		return r.h, nil
	}
	h, ckaID, err := findKey(k.p11, s.sh, k.tok.label, k.object, k.keyID, true)
	if err != nil {
		if deviceGone(err) || isUnavailable(err) {
			return 0, err
		}
		if perr := k.tok.probe(k.p11); perr != nil {
			return 0, &tokenGoneError{fmt.Errorf("the token no longer answers: %w", perr)}
		}
		return 0, fmt.Errorf("%w: %w", kms.ErrUnavailable, err)
	}
	if !bytes.Equal(ckaID, k.keyID) {
		return 0, fmt.Errorf("%w: pkcs11: token %q: key %q now has another CKA_ID; refusing to use a different key", kms.ErrUnavailable, k.tok.label, k.object)
	}
	k.obj.Store(&objRef{h: h, stamp: s.stamp})
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
	var ct, usedIV []byte
	err := k.call(ctx, func(s session) (err error) {
		ct, usedIV, err = k.encrypt(s, iv[:], plaintext, associatedData)
		return err
	})
	if err != nil {
		if passThrough(err) {
			return nil, err
		}
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

func (k *RootKey) encrypt(s session, iv, plaintext, aad []byte) (ct, usedIV []byte, err error) {
	params := p11.NewGCMParams(iv, aad, tagSize*8)
	defer params.Free()
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}
	k.wraps.Add(1)
	for retry := true; ; retry = false {
		obj, err := k.handle(s)
		if err != nil {
			return nil, nil, err
		}
		err = k.p11.EncryptInit(s.sh, mech, obj)
		if retry && staleHandle(err) {
			// The token forgot the handle (it logged out when its last
			// session closed, or it was reset): find the key again.
			k.forget(obj)
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("C_EncryptInit: %w", err)
		}
		break
	}
	if ct, err = k.p11.Encrypt(s.sh, plaintext); err != nil {
		return nil, nil, fmt.Errorf("C_Encrypt: %w", err)
	}
	// Some tokens choose the IV themselves and write it back.
	if usedIV = params.IV(); usedIV == nil {
		usedIV = iv
	}
	return ct, usedIV, nil
}

// forget drops the cached key handle h.
func (k *RootKey) forget(h p11.ObjectHandle) {
	if r := k.obj.Load(); r != nil && r.h == h {
		k.obj.CompareAndSwap(r, nil)
	}
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
	var pt []byte
	err := k.call(ctx, func(s session) (err error) {
		pt, err = k.decrypt(s, wrapped[1:1+ivSize], wrapped[1+ivSize:], associatedData)
		return err
	})
	if err != nil {
		switch {
		case passThrough(err):
			return nil, err
		case isUnavailable(err) || errors.Is(err, kms.ErrUnavailable):
			return nil, fmt.Errorf("pkcs11: unwrap: %w", classify(err))
		}
		return nil, fmt.Errorf("pkcs11: %w", kms.ErrUnwrap)
	}
	return pt, nil
}

func (k *RootKey) decrypt(s session, iv, ct, aad []byte) ([]byte, error) {
	params := p11.NewGCMParams(iv, aad, tagSize*8)
	defer params.Free()
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}
	k.unwraps.Add(1)
	for retry := true; ; retry = false {
		obj, err := k.handle(s)
		if err != nil {
			return nil, err
		}
		err = k.p11.DecryptInit(s.sh, mech, obj)
		if retry && staleHandle(err) {
			k.forget(obj)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("C_DecryptInit: %w", err)
		}
		pt, err := k.p11.Decrypt(s.sh, ct)
		if err != nil {
			return nil, fmt.Errorf("C_Decrypt: %w", err)
		}
		return pt, nil
	}
}

// passThrough reports whether a call's error is returned as is: the root
// key was closed, or the caller's context ended while waiting for a session.
func passThrough(err error) bool {
	return errors.Is(err, kms.ErrClosed) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// Close closes the root key's sessions, waiting for calls in flight, and
// releases the token and module (the last root key on a module finalizes
// it). Calls after Close fail with kms.ErrClosed; Close again returns nil.
func (k *RootKey) Close() error {
	var err error
	k.closeOnce.Do(func() {
		k.closed.Store(true)
		close(k.done)
		k.life.Lock() // wait for every call in flight, recoveries included
		defer k.life.Unlock()
		var errs []error
		k.mod.calls.RLock()
		gen := k.mod.gen.Load()
		for range cap(k.idle) {
			select {
			case s := <-k.idle:
				if s.gen != gen {
					continue // the module was re-initialized: the session is gone
				}
				if err := k.p11.CloseSession(s.sh); err != nil && !isUnavailable(err) {
					errs = append(errs, fmt.Errorf("pkcs11: C_CloseSession: %w", err))
				}
			case <-k.vacant:
			}
		}
		k.mod.calls.RUnlock()
		k.tok.release()
		errs = append(errs, k.mod.release())
		err = errors.Join(errs...)
	})
	return err
}
