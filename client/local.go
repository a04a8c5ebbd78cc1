package client

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// CachePolicy bounds how long and how much one data key is used. A data
// key is replaced as soon as any limit is reached. The zero value means
// the defaults.
type CachePolicy struct {
	// MaxAge is how long a data key seals, and how long an unwrapped data
	// key stays cached for opening; default 5 minutes.
	MaxAge time.Duration
	// MaxMessages is how many messages (or streams) one data key seals;
	// default 2^20, at most 2^32.
	MaxMessages uint64
	// MaxBytes is how many plaintext bytes one data key seals in messages;
	// default 2^36 (64 GiB). Streams do not count: their chunks are sealed
	// under a key derived for each stream.
	MaxBytes uint64
	// MaxOpenKeys is how many unwrapped data keys are kept for opening;
	// default 1024. Expired keys go first, then any.
	MaxOpenKeys int
}

const (
	defaultMaxAge      = 5 * time.Minute
	defaultMaxMessages = 1 << 20
	maxMessagesPerKey  = 1 << 32
	defaultMaxBytes    = 1 << 36
	defaultMaxOpenKeys = 1024
)

func (p CachePolicy) withDefaults() (CachePolicy, error) {
	if p.MaxAge < 0 || p.MaxOpenKeys < 0 {
		return p, errors.New("client: CachePolicy: negative MaxAge or MaxOpenKeys")
	}
	if p.MaxMessages > maxMessagesPerKey {
		return p, fmt.Errorf("client: CachePolicy.MaxMessages %d is above 2^32: random nonces would risk repeating", p.MaxMessages)
	}
	if p.MaxAge == 0 {
		p.MaxAge = defaultMaxAge
	}
	if p.MaxMessages == 0 {
		p.MaxMessages = defaultMaxMessages
	}
	if p.MaxBytes == 0 {
		p.MaxBytes = defaultMaxBytes
	}
	if p.MaxOpenKeys == 0 {
		p.MaxOpenKeys = defaultMaxOpenKeys
	}
	return p, nil
}

// The two calls local encryption makes; *Client has both.
type dataKeyGenerator interface {
	GenerateDataKey(context.Context, *tresorv1.GenerateDataKeyRequest) (*tresorv1.GenerateDataKeyResponse, error)
}

type ciphertextDecrypter interface {
	Decrypt(context.Context, *tresorv1.DecryptRequest) (*tresorv1.DecryptResponse, error)
}

// LocalEncryption seals and opens data in this process with data keys
// from tresor (envelope encryption), so that large or frequent data never
// travels to tresor: one GenerateDataKey serves many messages while the
// CachePolicy allows, and one Decrypt of a wrapped data key opens every
// message sealed under it. Encryptor gives the sealer and opener for one
// named key and key context. Safe for concurrent use.
//
// LocalEncryption keeps one Encryptor for every (key, key context) pair
// it has been asked for, for as long as it lives: make one per set of
// pairs a process uses, not one per tenant of an unbounded set. Each
// Encryptor holds at most one data key for sealing; its copy is zeroed
// once the key is replaced or found expired. The same key stays in the
// opening cache (bounded by CachePolicy.MaxOpenKeys, an expired entry
// dropped when next looked up) and, expanded, in its cipher until the
// garbage collector takes them: zeroing narrows where a data key lies in
// memory, it does not erase it.
type LocalEncryption struct {
	gen    dataKeyGenerator
	dec    ciphertextDecrypter
	policy CachePolicy
	now    func() time.Time
	// fakeClock is set by tests that replace now: expiry is then checked
	// against now on every message, instead of by a timer per data key.
	fakeClock bool
	// aadBufs holds buffers for a message's associated data (its header,
	// then the caller's), so that Encrypt allocates only the message.
	aadBufs sync.Pool

	mu         sync.Mutex
	encryptors map[encryptorID]*Encryptor

	open openKeys

	generated, unwrapped atomic.Uint64
}

type encryptorID struct{ key, keyContext string }

// NewLocalEncryption returns local encryption through c under policy.
func NewLocalEncryption(c *Client, policy CachePolicy) (*LocalEncryption, error) {
	return newLocalEncryption(c, c, policy)
}

func newLocalEncryption(gen dataKeyGenerator, dec ciphertextDecrypter, policy CachePolicy) (*LocalEncryption, error) {
	p, err := policy.withDefaults()
	if err != nil {
		return nil, err
	}
	l := &LocalEncryption{gen: gen, dec: dec, policy: p, now: time.Now, encryptors: make(map[encryptorID]*Encryptor)}
	l.open.keys = make(map[string]*openKey)
	l.open.inflight = make(map[string]*unwrapCall)
	return l, nil
}

// LocalStats counts what LocalEncryption asked of tresor.
type LocalStats struct {
	// DataKeysGenerated counts GenerateDataKey calls, DataKeysUnwrapped
	// Decrypt calls for wrapped data keys.
	DataKeysGenerated, DataKeysUnwrapped uint64
}

// Stats returns the calls made so far.
func (l *LocalEncryption) Stats() LocalStats {
	return LocalStats{DataKeysGenerated: l.generated.Load(), DataKeysUnwrapped: l.unwrapped.Load()}
}

// Encryptor returns the sealer and opener for the named key (its id, as
// in keys/{key}) and key context; the same one for the same pair.
// keyContext is associated data that tresor binds to each data key (its
// policies and audit log see it) and that every message carries in its
// header; per-message associated data is the aad argument of Encrypt
// and Decrypt instead, and stays local.
//
// The pair is what the Encryptor's Decrypt and DecryptStream accept: a
// message whose data key another key wrapped, or that carries another
// key context, does not open, even though the caller may unwrap its data
// key. So a reader names what it expects, and a writer allowed to use
// some other key cannot pass its messages off as this key's.
func (l *LocalEncryption) Encryptor(key string, keyContext []byte) (*Encryptor, error) {
	if len(keyContext) > maxKeyContext {
		return nil, fmt.Errorf("client: key context of %d bytes is above %d", len(keyContext), maxKeyContext)
	}
	id := encryptorID{key, string(keyContext)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.encryptors[id]; ok {
		return e, nil
	}
	e := &Encryptor{l: l, key: key, keyContext: bytes.Clone(keyContext), lock: make(chan struct{}, 1)}
	l.encryptors[id] = e
	return e, nil
}

// Encryptor seals and opens messages and streams under one named key's
// data keys and one key context. Safe for concurrent use.
type Encryptor struct {
	l          *LocalEncryption
	key        string
	keyContext []byte

	cur atomic.Pointer[sealKey]
	// lock is held by the one caller asking tresor for a data key; the
	// others wait for it, or for their ctx.
	lock chan struct{}
}

// sealKey is a data key in use for sealing: its cipher, the header every
// message under it starts with, and what it has sealed so far.
type sealKey struct {
	aead     cipher.AEAD
	header   []byte // the message header
	expires  time.Time
	expired  atomic.Bool // set at expires by the expiry timer
	expiry   *time.Timer // nil with a fake clock
	messages atomic.Uint64
	bytes    atomic.Uint64

	// raw is the data key, for stream keys; never leaves the process.
	// retire zeroes it once the Encryptor has replaced the key; a stream
	// that finds it retired asks for the new key.
	rawMu sync.RWMutex
	raw   []byte
}

// errKeyRetired is a sealKey replaced between its reservation and its
// use for a stream.
var errKeyRetired = errors.New("client: data key retired")

// streamCipher derives a stream's cipher from the data key.
func (k *sealKey) streamCipher(prefix, aad []byte) (*streamCipher, error) {
	k.rawMu.RLock()
	defer k.rawMu.RUnlock()
	if k.raw == nil {
		return nil, errKeyRetired
	}
	return newStreamCipher(k.raw, prefix, aad)
}

// retire zeroes and drops the data key. Messages sealed under the key
// already reserved still seal (their cipher keeps its own schedule);
// streams do not.
func (k *sealKey) retire() {
	k.expired.Store(true)
	if k.expiry != nil {
		k.expiry.Stop()
	}
	k.rawMu.Lock()
	clear(k.raw)
	k.raw = nil
	k.rawMu.Unlock()
}

// Encrypt seals plaintext with aad into a message (see message.go). It
// asks tresor for a data key only when the cached one has reached a
// CachePolicy limit.
func (e *Encryptor) Encrypt(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	return e.AppendEncrypt(ctx, nil, plaintext, aad)
}

// AppendEncrypt is Encrypt appending the message to dst, which it grows
// once if it lacks the room: a caller that reuses dst seals without
// allocating. dst must not overlap plaintext. On error dst is returned
// unchanged.
func (e *Encryptor) AppendEncrypt(ctx context.Context, dst, plaintext, aad []byte) ([]byte, error) {
	k, err := e.reserve(ctx, uint64(len(plaintext)))
	if err != nil {
		return dst, err
	}
	hl := len(k.header)
	out := slices.Grow(dst, hl+nonceLen+len(plaintext)+tagLen)
	out = append(out, k.header...)
	start := len(out)
	out = out[:start+nonceLen]
	nonce := out[start:]
	if _, err := rand.Read(nonce); err != nil {
		return dst, fmt.Errorf("client: nonce: %w", err)
	}
	ad, buf := e.l.messageAAD(k.header, aad)
	out = k.aead.Seal(out, nonce, plaintext, ad)
	e.l.releaseAAD(buf)
	return out, nil
}

// messageAAD is a message's associated data: its header, then the
// caller's; the header alone, without a copy, when the caller gives none,
// else assembled in a pooled buffer (buf) for releaseAAD to give back.
func (l *LocalEncryption) messageAAD(header, aad []byte) (ad []byte, buf *[]byte) {
	if len(aad) == 0 {
		return header, nil
	}
	buf, _ = l.aadBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	*buf = append(append((*buf)[:0], header...), aad...)
	return *buf, buf
}

// releaseAAD gives messageAAD's buffer back; nil is none.
func (l *LocalEncryption) releaseAAD(buf *[]byte) {
	if buf != nil && cap(*buf) <= 64<<10 {
		l.aadBufs.Put(buf)
	}
}

// reserve returns a data key that may seal one more message of n bytes,
// counting it; a new one from tresor when the current one is spent. A
// caller waiting for another's GenerateDataKey gives up when ctx ends.
func (e *Encryptor) reserve(ctx context.Context, n uint64) (*sealKey, error) {
	if k := e.cur.Load(); k != nil && k.admit(e.l, n) {
		return k, nil
	}
	if n > e.l.policy.MaxBytes {
		return nil, fmt.Errorf("client: a message of %d bytes is above CachePolicy.MaxBytes", n)
	}
	select {
	case e.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, contextError(ctx)
	}
	defer func() { <-e.lock }()
	// Another caller may have replaced it meanwhile.
	old := e.cur.Load()
	if old != nil && old.admit(e.l, n) {
		return old, nil
	}
	if old != nil && !e.l.now().Before(old.expires) {
		// Expired: it seals nothing more, whether or not tresor gives a
		// new one now. Only the lock's holder writes cur.
		e.cur.Store(nil)
		old.retire()
		old = nil
	}
	k, err := e.l.generate(ctx, e.key, e.keyContext)
	if err != nil {
		return nil, err
	}
	k.messages.Store(1)
	k.bytes.Store(n)
	e.cur.Store(k)
	if old != nil {
		old.retire()
	}
	return k, nil
}

// admit counts one more message of n bytes if the key's limits allow it.
// The message count may pass MaxMessages (a refused message is counted,
// and refused); the byte count never passes MaxBytes.
func (k *sealKey) admit(l *LocalEncryption, n uint64) bool {
	if k.expired.Load() || l.fakeClock && !l.now().Before(k.expires) {
		return false
	}
	if k.messages.Add(1) > l.policy.MaxMessages {
		return false
	}
	max := l.policy.MaxBytes
	for {
		b := k.bytes.Load()
		if b > max || n > max-b {
			return false
		}
		if k.bytes.CompareAndSwap(b, b+n) {
			return true
		}
	}
}

// generate asks tresor for a data key of the named key and makes it the
// sealing key, and an opening key too: messages sealed here open without
// a call.
func (l *LocalEncryption) generate(ctx context.Context, key string, keyContext []byte) (*sealKey, error) {
	resp, err := l.gen.GenerateDataKey(ctx, &tresorv1.GenerateDataKeyRequest{Key: key, AssociatedData: keyContext})
	l.generated.Add(1)
	if err != nil {
		return nil, err
	}
	raw := resp.GetPlaintext()
	if len(raw) != dataKeyLen || checkWrappedKey(resp.GetCiphertext()) != nil {
		return nil, fmt.Errorf("client: GenerateDataKey returned a %d-byte key or a malformed wrapped key", len(raw))
	}
	aead, err := newGCM(raw)
	if err != nil {
		return nil, err
	}
	now := l.now()
	k := &sealKey{
		aead:    aead,
		raw:     bytes.Clone(raw), // retire zeroes it; the opening cache keeps raw
		header:  appendHeader(nil, kindMessage, resp.GetCiphertext(), keyContext),
		expires: now.Add(l.policy.MaxAge),
	}
	if !l.fakeClock {
		// MaxAge is enforced by a timer, not a clock read per message.
		k.expiry = time.AfterFunc(l.policy.MaxAge, func() { k.expired.Store(true) })
	}
	l.open.put(k.header, &openKey{aead: aead, raw: raw, keyName: key, expires: k.expires}, l.policy.MaxOpenKeys, now)
	return k, nil
}

// setClock makes l read time from now (tests with a fake clock).
func (l *LocalEncryption) setClock(now func() time.Time) {
	l.now, l.fakeClock = now, true
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("client: data key: %w", err)
	}
	return cipher.NewGCM(block)
}

// Decrypt opens a message sealed by an Encryptor of the same key and key
// context, with the same aad. It opens nothing else: a message whose
// header carries another key context, or whose data key tresor reports
// was wrapped by another key, fails before any opening, even when the
// caller may unwrap that data key.
//
// Any failure to open, from a malformed message to a wrong aad, is
// ErrDecryptionFailed; a failure to reach tresor or a refusal keeps its
// own error (ErrUnavailable, ErrPermissionDenied, ...).
func (e *Encryptor) Decrypt(ctx context.Context, message, aad []byte) ([]byte, error) {
	h, n, err := parseHeader(message)
	if err != nil || h.kind != kindMessage || len(message)-n < nonceLen+tagLen || !bytes.Equal(h.keyContext, e.keyContext) {
		return nil, ErrDecryptionFailed
	}
	k, err := e.openKey(ctx, message[:n], h)
	if err != nil {
		return nil, err
	}
	nonce := message[n : n+nonceLen]
	ad, buf := e.l.messageAAD(message[:n], aad)
	pt, err := k.aead.Open(nil, nonce, message[n+nonceLen:], ad)
	e.l.releaseAAD(buf)
	if err != nil {
		return nil, ErrDecryptionFailed
	}
	return pt, nil
}

// openKey returns the data key of a header whose key context the caller
// has checked, if e's key wrapped it: else ErrDecryptionFailed.
func (e *Encryptor) openKey(ctx context.Context, hdr []byte, h header) (*openKey, error) {
	k, err := e.l.openKey(ctx, hdr, h)
	if err != nil {
		return nil, err
	}
	if k.keyName != e.key {
		return nil, ErrDecryptionFailed
	}
	return k, nil
}

// openKey returns the data key of a header: cached, or unwrapped by
// tresor. The cache is keyed by the whole header with the kind byte set to
// message, so that a stream and a message under one data key share it.
// One unwrap of a header is in flight at a time: concurrent callers wait
// for its result, or for their ctx.
func (l *LocalEncryption) openKey(ctx context.Context, hdr []byte, h header) (*openKey, error) {
	id := cacheID(hdr)
	for {
		now := l.now()
		if k := l.open.get(id, now); k != nil {
			return k, nil
		}
		u, leader := l.open.join(id, now)
		if u == nil {
			continue // cached meanwhile
		}
		if leader {
			k, err := l.unwrap(ctx, h, now)
			l.open.finish(id, u, k, err, l.policy.MaxOpenKeys, now)
			return k, err
		}
		select {
		case <-u.done:
		case <-ctx.Done():
			return nil, contextError(ctx)
		}
		if u.err != nil && isContextFailure(u.err) && ctx.Err() == nil {
			continue // the leader gave up on its own ctx; this caller has not
		}
		return u.k, u.err
	}
}

// unwrap asks tresor for the data key of h.
func (l *LocalEncryption) unwrap(ctx context.Context, h header, now time.Time) (*openKey, error) {
	resp, err := l.dec.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: string(h.wrapped), AssociatedData: h.keyContext})
	l.unwrapped.Add(1)
	if err != nil {
		if errors.Is(err, ErrDecryptionFailed) || errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrNotFound) {
			return nil, ErrDecryptionFailed
		}
		return nil, err
	}
	raw := resp.GetPlaintext()
	if len(raw) != dataKeyLen {
		return nil, ErrDecryptionFailed
	}
	aead, err := newGCM(raw)
	if err != nil {
		return nil, ErrDecryptionFailed
	}
	return &openKey{aead: aead, raw: raw, keyName: resp.GetKey(), expires: now.Add(l.policy.MaxAge)}, nil
}

// isContextFailure reports whether err is a call's ctx ending.
func isContextFailure(err error) bool {
	return errors.Is(err, ErrCanceled) || errors.Is(err, ErrDeadlineExceeded) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// contextError is nil while ctx is live, else an error matching
// ErrCanceled or ErrDeadlineExceeded, and ctx's own error.
func contextError(ctx context.Context) error {
	err := ctx.Err()
	if err == nil {
		return nil
	}
	sentinel := ErrCanceled
	if errors.Is(err, context.DeadlineExceeded) {
		sentinel = ErrDeadlineExceeded
	}
	return fmt.Errorf("client: %w: %w", sentinel, err)
}

// cacheID is the opening cache's key for a header: the header itself for
// a message, a copy with the kind byte set to message for a stream.
func cacheID(hdr []byte) []byte {
	if hdr[5] == kindMessage {
		return hdr
	}
	b := bytes.Clone(hdr)
	b[5] = kindMessage
	return b
}

// openKey is an unwrapped data key kept for opening, with the id of the
// named key that wrapped it (tresor's answer to Decrypt, or the key
// GenerateDataKey was asked for).
type openKey struct {
	aead    cipher.AEAD
	raw     []byte
	keyName string
	expires time.Time
}

// openKeys is the opening cache: header -> data key, bounded, expiring;
// and the unwraps in flight.
type openKeys struct {
	mu       sync.RWMutex
	keys     map[string]*openKey
	inflight map[string]*unwrapCall
}

// unwrapCall is an unwrap in flight; k and err are set before done is
// closed.
type unwrapCall struct {
	done chan struct{}
	k    *openKey
	err  error
}

func (c *openKeys) get(id []byte, now time.Time) *openKey {
	c.mu.RLock()
	k := c.keys[string(id)]
	c.mu.RUnlock()
	if k == nil {
		return nil
	}
	if !now.Before(k.expires) {
		// Expired: drop it now rather than when the cache fills.
		c.mu.Lock()
		if c.keys[string(id)] == k {
			delete(c.keys, string(id))
		}
		c.mu.Unlock()
		return nil
	}
	return k
}

// join returns the unwrap in flight for id, or starts one (leader true);
// nil if id is cached by now.
func (c *openKeys) join(id []byte, now time.Time) (u *unwrapCall, leader bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k := c.keys[string(id)]; k != nil && now.Before(k.expires) {
		return nil, false
	}
	if u := c.inflight[string(id)]; u != nil {
		return u, false
	}
	u = &unwrapCall{done: make(chan struct{})}
	c.inflight[string(id)] = u
	return u, true
}

// finish ends the unwrap u of id: caches its key, if any, and wakes its
// waiters.
func (c *openKeys) finish(id []byte, u *unwrapCall, k *openKey, err error, max int, now time.Time) {
	u.k, u.err = k, err
	c.mu.Lock()
	if err == nil {
		c.putLocked(id, k, max, now)
	}
	delete(c.inflight, string(id))
	c.mu.Unlock()
	close(u.done)
}

func (c *openKeys) put(hdr []byte, k *openKey, max int, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(hdr, k, max, now)
}

func (c *openKeys) putLocked(hdr []byte, k *openKey, max int, now time.Time) {
	if len(c.keys) >= max {
		for id, old := range c.keys {
			if !now.Before(old.expires) {
				delete(c.keys, id)
			}
		}
		for id := range c.keys {
			if len(c.keys) < max {
				break
			}
			delete(c.keys, id)
		}
	}
	c.keys[string(hdr)] = k
}
