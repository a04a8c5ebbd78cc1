package envelope

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead"

	"github.com/tresorkms/tresor/internal/store"
)

// aeadKEK is a root key backed by a real AES-256-GCM key in memory. It
// behaves like an HSM-held key (random nonce, associated data bound, opaque
// failure) and counts its calls.
type aeadKEK struct {
	id    string
	gcm   cipher.AEAD
	calls atomic.Uint64
}

func newAEADKEK(t testing.TB, id string) *aeadKEK {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return &aeadKEK{id: id, gcm: gcm}
}

func (k *aeadKEK) ID() string { return k.id }

func (k *aeadKEK) Wrap(ctx context.Context, pt, aad []byte) ([]byte, error) {
	k.calls.Add(1)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nonce := make([]byte, k.gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.gcm.Seal(nonce, nonce, pt, aad), nil
}

func (k *aeadKEK) Unwrap(ctx context.Context, ct, aad []byte) ([]byte, error) {
	k.calls.Add(1)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(ct) < k.gcm.NonceSize() {
		return nil, errors.New("unwrap failed")
	}
	pt, err := k.gcm.Open(nil, ct[:k.gcm.NonceSize()], ct[k.gcm.NonceSize():], aad)
	if err != nil {
		return nil, errors.New("unwrap failed")
	}
	return pt, nil
}

type fixture struct {
	ring  *Keyring
	store store.Store
	kek   *aeadKEK
	now   *fakeClock
}

type fakeClock struct {
	mu     sync.Mutex
	t      time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// AfterFunc schedules f at Now()+d on the fake clock.
func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.t.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock and runs the timers that came due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	var due []*fakeTimer
	for _, t := range c.timers {
		if !t.stopped && !t.at.After(c.t) {
			t.stopped = true
			due = append(due, t)
		}
	}
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

func newFixture(t testing.TB, opts Options) *fixture {
	t.Helper()
	ctx := context.Background()
	s, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatalf("OpenSQLite() err = %v, want nil", err)
	}
	t.Cleanup(func() { s.Close() })
	clock := &fakeClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	if opts.Now == nil {
		opts.Now = clock.Now
		opts.AfterFunc = clock.AfterFunc
	}
	kek := newAEADKEK(t, "test-root-1")
	ring, err := New(s, kek, opts)
	if err != nil {
		t.Fatalf("New() err = %v, want nil", err)
	}
	return &fixture{ring: ring, store: s, kek: kek, now: clock}
}

func (f *fixture) createKey(t testing.TB, name string, typ store.KeyType) store.Key {
	t.Helper()
	k, err := f.ring.CreateKey(context.Background(), KeySpec{Name: name, Type: typ})
	if err != nil {
		t.Fatalf("CreateKey(%q) err = %v, want nil", name, err)
	}
	return k
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "gcm", store.KeyTypeAES256GCM)
	f.createKey(t, "siv", store.KeyTypeAES256SIV)
	tests := []struct {
		key       string
		plaintext []byte
		aad       []byte
	}{
		{"gcm", []byte("x"), nil},
		{"gcm", []byte("account 12345678"), []byte("customer=42")},
		{"gcm", bytes.Repeat([]byte{0xa5}, DefaultMaxPlaintextSize), []byte("big")},
		{"siv", []byte("x"), nil},
		{"siv", []byte("DE89370400440532013000"), []byte("table=iban")},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.key, len(tt.plaintext)), func(t *testing.T) {
			ct, ref, err := f.ring.Encrypt(ctx, tt.key, tt.plaintext, tt.aad)
			if err != nil {
				t.Fatalf("Encrypt(%q) err = %v, want nil", tt.key, err)
			}
			if ref.Name != tt.key || ref.Version != 1 {
				t.Errorf("Encrypt(%q) ref = %+v, want %s v1", tt.key, ref, tt.key)
			}
			pt, dref, err := f.ring.Decrypt(ctx, ct, tt.aad)
			if err != nil {
				t.Fatalf("Decrypt(ct, aad) err = %v, want nil", err)
			}
			if !bytes.Equal(pt, tt.plaintext) || dref != ref {
				t.Errorf("Decrypt(ct, aad) = %d bytes, %+v; want the %d plaintext bytes, %+v", len(pt), dref, len(tt.plaintext), ref)
			}
			s := FormatCiphertext(ct)
			if !strings.HasPrefix(s, StringPrefix) {
				t.Errorf("FormatCiphertext() = %q, want prefix %q", s, StringPrefix)
			}
			back, err := DecodeCiphertext(s)
			if err != nil || !bytes.Equal(back, ct) {
				t.Errorf("DecodeCiphertext(FormatCiphertext(ct)) = %x, %v; want ct, nil", back, err)
			}
		})
	}
}

func TestDeterministicAndRandomized(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "gcm", store.KeyTypeAES256GCM)
	f.createKey(t, "siv", store.KeyTypeAES256SIV)
	for _, tt := range []struct {
		key      string
		wantSame bool
	}{{"gcm", false}, {"siv", true}} {
		t.Run(tt.key, func(t *testing.T) {
			a, _, err := f.ring.Encrypt(ctx, tt.key, []byte("same"), []byte("ad"))
			if err != nil {
				t.Fatalf("Encrypt() err = %v", err)
			}
			b, _, err := f.ring.Encrypt(ctx, tt.key, []byte("same"), []byte("ad"))
			if err != nil {
				t.Fatalf("Encrypt() err = %v", err)
			}
			if got := bytes.Equal(a, b); got != tt.wantSame {
				t.Errorf("two Encrypt(%q) of the same input equal = %v, want %v", tt.key, got, tt.wantSame)
			}
		})
	}
}

func TestRotateKeepsOldCiphertexts(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "payments", store.KeyTypeAES256GCM)
	var cts [][]byte
	for v := uint32(1); v <= 3; v++ {
		ct, ref, err := f.ring.Encrypt(ctx, "payments", []byte(fmt.Sprint("msg", v)), nil)
		if err != nil {
			t.Fatalf("Encrypt() err = %v", err)
		}
		if ref.Version != v {
			t.Fatalf("Encrypt() after %d rotations used version %d, want %d", v-1, ref.Version, v)
		}
		cts = append(cts, ct)
		k, err := f.ring.RotateKey(ctx, "payments")
		if err != nil {
			t.Fatalf("RotateKey() err = %v", err)
		}
		if k.PrimaryVersion != v+1 || len(k.Versions) != int(v+1) {
			t.Fatalf("RotateKey() = primary %d with %d versions, want %d and %d", k.PrimaryVersion, len(k.Versions), v+1, v+1)
		}
	}
	for i, ct := range cts {
		pt, ref, err := f.ring.Decrypt(ctx, ct, nil)
		if err != nil || string(pt) != fmt.Sprint("msg", i+1) || ref.Version != uint32(i+1) {
			t.Errorf("Decrypt(v%d ciphertext) = %q, %+v, %v; want msg%d, v%d, nil", i+1, pt, ref, err, i+1, i+1)
		}
	}
	// A fresh keyring over the same store (another replica, or a restart)
	// reads the rotated keyset through the root key.
	other, err := New(f.store, f.kek, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, ct := range cts {
		if _, _, err := other.Decrypt(ctx, ct, nil); err != nil {
			t.Errorf("fresh keyring Decrypt(v%d ciphertext) err = %v, want nil", i+1, err)
		}
	}
}

func TestReEncrypt(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "a", store.KeyTypeAES256GCM)
	f.createKey(t, "b", store.KeyTypeAES256GCM)
	f.createKey(t, "siv", store.KeyTypeAES256SIV)
	aad := []byte("ctx")
	ct, _, err := f.ring.Encrypt(ctx, "a", []byte("secret"), aad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ring.RotateKey(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dest    string
		wantKey KeyRef
		wantErr error
	}{
		{"", KeyRef{"a", 2}, nil},
		{"b", KeyRef{"b", 1}, nil},
		{"siv", KeyRef{}, ErrKeyTypeMismatch},
		{"missing", KeyRef{}, ErrKeyNotFound},
		{"Bad_Name", KeyRef{}, ErrInvalidKeyName},
	}
	for _, tt := range tests {
		t.Run("to "+tt.dest, func(t *testing.T) {
			out, ref, src, err := f.ring.ReEncrypt(ctx, ct, aad, tt.dest)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ReEncrypt(ct, aad, %q) err = %v, want %v", tt.dest, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if ref != tt.wantKey || src != (KeyRef{"a", 1}) {
				t.Errorf("ReEncrypt(ct, aad, %q) = %+v from %+v, want %+v from a v1", tt.dest, ref, src, tt.wantKey)
			}
			pt, _, err := f.ring.Decrypt(ctx, out, aad)
			if err != nil || string(pt) != "secret" {
				t.Errorf("Decrypt(ReEncrypt()) = %q, %v; want secret, nil", pt, err)
			}
			if _, _, err := f.ring.Decrypt(ctx, out, []byte("other")); !errors.Is(err, ErrDecrypt) {
				t.Errorf("Decrypt(ReEncrypt(), other aad) err = %v, want ErrDecrypt: associated data must be kept", err)
			}
		})
	}
	if _, _, _, err := f.ring.ReEncrypt(ctx, ct, []byte("wrong"), ""); !errors.Is(err, ErrDecrypt) {
		t.Errorf("ReEncrypt(ct, wrong aad) err = %v, want ErrDecrypt", err)
	}
}

func TestGenerateDataKey(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "dek", store.KeyTypeAES256GCM)
	dk, err := f.ring.GenerateDataKey(ctx, "dek", []byte("file=1"))
	if err != nil {
		t.Fatalf("GenerateDataKey() err = %v", err)
	}
	if len(dk.Plaintext) != DataKeySize || dk.Key != (KeyRef{"dek", 1}) {
		t.Fatalf("GenerateDataKey() = %d-byte key under %+v, want %d bytes under dek v1", len(dk.Plaintext), dk.Key, DataKeySize)
	}
	pt, _, err := f.ring.Decrypt(ctx, dk.Ciphertext, []byte("file=1"))
	if err != nil || !bytes.Equal(pt, dk.Plaintext) {
		t.Errorf("Decrypt(data key ciphertext) = %v, want the data key", err)
	}
	other, err := f.ring.GenerateDataKey(ctx, "dek", []byte("file=1"))
	if err != nil || bytes.Equal(other.Plaintext, dk.Plaintext) {
		t.Errorf("two GenerateDataKey() gave the same key (err %v)", err)
	}
	np, err := f.ring.GenerateDataKeyWithoutPlaintext(ctx, "dek", nil)
	if err != nil || np.Plaintext != nil || len(np.Ciphertext) == 0 {
		t.Fatalf("GenerateDataKeyWithoutPlaintext() = plaintext %d bytes, ciphertext %d bytes, %v; want none, some, nil", len(np.Plaintext), len(np.Ciphertext), err)
	}
	if pt, _, err := f.ring.Decrypt(ctx, np.Ciphertext, nil); err != nil || len(pt) != DataKeySize {
		t.Errorf("Decrypt(data key without plaintext) = %d bytes, %v; want %d, nil", len(pt), err, DataKeySize)
	}
	if _, err := f.ring.GenerateDataKey(ctx, "nope", nil); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("GenerateDataKey(unknown key) err = %v, want ErrKeyNotFound", err)
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{MaxPlaintextSize: 1024})
	f.createKey(t, "good", store.KeyTypeAES256GCM)
	f.createKey(t, "off", store.KeyTypeAES256GCM)
	f.createKey(t, "old", store.KeyTypeAES256GCM)
	offCT, _, _ := f.ring.Encrypt(ctx, "off", []byte("p"), nil)
	if _, err := f.ring.DisableKey(ctx, "off"); err != nil {
		t.Fatal(err)
	}
	oldCT, _, _ := f.ring.Encrypt(ctx, "old", []byte("p"), nil)
	if _, err := f.ring.RotateKey(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	two := uint32(2)
	if _, err := f.ring.UpdateKey(ctx, "old", KeyUpdate{MinDecryptionVersion: &two}); err != nil {
		t.Fatal(err)
	}
	goodCT, _, _ := f.ring.Encrypt(ctx, "good", []byte("p"), []byte("aad"))

	encrypt := func(name string, pt []byte) func() error {
		return func() error { _, _, err := f.ring.Encrypt(ctx, name, pt, nil); return err }
	}
	decrypt := func(ct, aad []byte) func() error {
		return func() error { _, _, err := f.ring.Decrypt(ctx, ct, aad); return err }
	}
	decode := func(s string) func() error {
		return func() error { _, err := DecodeCiphertext(s); return err }
	}
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"encrypt unknown key", encrypt("missing", []byte("p")), ErrKeyNotFound},
		{"encrypt bad key name", encrypt("Not_A_Name", []byte("p")), ErrInvalidKeyName},
		{"encrypt name too long", encrypt(strings.Repeat("a", 64), []byte("p")), ErrInvalidKeyName},
		{"encrypt empty plaintext", encrypt("good", nil), ErrInvalidArgument},
		{"encrypt oversized plaintext", encrypt("good", make([]byte, 1025)), ErrInvalidArgument},
		{"encrypt disabled key", encrypt("off", []byte("p")), ErrKeyDisabled},
		{"decrypt disabled key", decrypt(offCT, nil), ErrKeyDisabled},
		{"decrypt below min version", decrypt(oldCT, nil), ErrVersionNotAllowed},
		{"decrypt wrong aad", decrypt(goodCT, []byte("AAD")), ErrDecrypt},
		{"decrypt missing aad", decrypt(goodCT, nil), ErrDecrypt},
		{"decrypt empty", decrypt(nil, nil), ErrDecrypt},
		{"decrypt garbage", decrypt([]byte("not a ciphertext at all, really not"), nil), ErrDecrypt},
		{"decrypt truncated header", decrypt(goodCT[:5], nil), ErrDecrypt},
		{"decrypt truncated body", decrypt(goodCT[:len(goodCT)-1], nil), ErrDecrypt},
		{"decode no prefix", decode("abc"), ErrDecrypt},
		{"decode bad base64", decode(StringPrefix + "!!!*"), ErrDecrypt},
		{"decode padded base64", decode(FormatCiphertext(goodCT) + "="), ErrDecrypt},
		{"update min version above primary", func() error {
			v := uint32(9)
			_, err := f.ring.UpdateKey(ctx, "good", KeyUpdate{MinDecryptionVersion: &v})
			return err
		}, ErrInvalidArgument},
		{"rotate disabled key", func() error { _, err := f.ring.RotateKey(ctx, "off"); return err }, ErrKeyDisabled},
		{"create existing key", func() error {
			_, err := f.ring.CreateKey(ctx, KeySpec{Name: "good", Type: store.KeyTypeAES256GCM})
			return err
		}, ErrKeyExists},
		{"create unspecified type", func() error {
			_, err := f.ring.CreateKey(ctx, KeySpec{Name: "typeless"})
			return err
		}, ErrInvalidArgument},
		{"create bad label", func() error {
			_, err := f.ring.CreateKey(ctx, KeySpec{Name: "labelled", Type: store.KeyTypeAES256GCM, Labels: map[string]string{"Owner": "x"}})
			return err
		}, ErrInvalidArgument},
		{"get unknown key", func() error { _, err := f.ring.GetKey(ctx, "missing"); return err }, ErrKeyNotFound},
		{"list bad page token", func() error { _, _, err := f.ring.ListKeys(ctx, 10, "garbage!"); return err }, ErrInvalidArgument},
	}
	before := snapshot(t, f.store)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, tt.want) {
				t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
			}
		})
	}
	if after := snapshot(t, f.store); after != before {
		t.Errorf("bad input changed the store:\nbefore %s\nafter  %s", before, after)
	}
	if pt, _, err := f.ring.Decrypt(ctx, goodCT, []byte("aad")); err != nil || string(pt) != "p" {
		t.Errorf("Decrypt(good ciphertext) after bad input = %q, %v; want p, nil", pt, err)
	}
}

// snapshot summarises every key's revision, so a test can tell that nothing changed.
func snapshot(t *testing.T, s store.Store) string {
	t.Helper()
	keys, _, err := s.ListKeys(context.Background(), 1000, "")
	if err != nil {
		t.Fatalf("ListKeys() err = %v", err)
	}
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s@%d ", k.Name, k.Revision)
	}
	return b.String()
}

func TestEveryFlippedByteFails(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	for _, typ := range []store.KeyType{store.KeyTypeAES256GCM, store.KeyTypeAES256SIV} {
		name := strings.ToLower(strings.ReplaceAll(typ.String(), "_", "-"))
		f.createKey(t, name, typ)
		ct, _, err := f.ring.Encrypt(ctx, name, []byte("attack at dawn"), []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		t.Run(name, func(t *testing.T) {
			for i := range ct {
				for _, mask := range []byte{0x01, 0x80} {
					bad := bytes.Clone(ct)
					bad[i] ^= mask
					if _, _, err := f.ring.Decrypt(ctx, bad, []byte("aad")); !errors.Is(err, ErrDecrypt) {
						t.Errorf("Decrypt(ct with byte %d ^ %#x) err = %v, want ErrDecrypt", i, mask, err)
					}
				}
			}
		})
	}
}

func TestDecryptErrorIsOpaque(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "k", store.KeyTypeAES256GCM)
	ct, _, _ := f.ring.Encrypt(ctx, "k", []byte("p"), []byte("a"))
	flipped := bytes.Clone(ct)
	flipped[len(flipped)-1] ^= 1
	unknown := bytes.Clone(ct)
	unknown[2] = 'z' // key name "z"
	inputs := map[string][]byte{"wrong aad": ct, "flipped tag": flipped, "unknown key": unknown, "short": ct[:3]}
	var msgs []string
	for name, in := range inputs {
		aad := []byte("b")
		_, _, err := f.ring.Decrypt(ctx, in, aad)
		if err == nil {
			t.Fatalf("Decrypt(%s) err = nil, want ErrDecrypt", name)
		}
		msgs = append(msgs, err.Error())
	}
	for _, m := range msgs {
		if m != ErrDecrypt.Error() {
			t.Errorf("Decrypt failure message = %q, want exactly %q for every failure", m, ErrDecrypt.Error())
		}
	}
}

func TestWarmKeyMakesNoRootKeyCall(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "hot", store.KeyTypeAES256GCM)
	ct, _, err := f.ring.Encrypt(ctx, "hot", []byte("payload"), nil)
	if err != nil {
		t.Fatal(err)
	}
	before := f.kek.calls.Load()
	const n = 100_000
	for i := range n {
		if _, _, err := f.ring.Decrypt(ctx, ct, nil); err != nil {
			t.Fatalf("Decrypt #%d err = %v", i, err)
		}
	}
	if got := f.kek.calls.Load() - before; got != 0 {
		t.Errorf("%d Decrypt calls on a warm key made %d root-key calls, want 0", n, got)
	}
	if st := f.ring.Cache().Stats(); st.Hits < n {
		t.Errorf("cache hits = %d after %d decrypts, want at least %d", st.Hits, n, n)
	}
}

func TestCacheBounds(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{CacheMaxKeys: 2, CacheMaxAge: time.Minute})
	for _, n := range []string{"k1", "k2", "k3"} {
		f.createKey(t, n, store.KeyTypeAES256GCM)
		if _, _, err := f.ring.Encrypt(ctx, n, []byte("p"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if st := f.ring.Cache().Stats(); st.Size > 2 {
		t.Errorf("cache size = %d with CacheMaxKeys 2, want at most 2", st.Size)
	}
	// k3 is warm; once older than CacheMaxAge it is unwrapped again.
	before := f.kek.calls.Load()
	if _, _, err := f.ring.Encrypt(ctx, "k3", []byte("p"), nil); err != nil {
		t.Fatal(err)
	}
	if got := f.kek.calls.Load() - before; got != 0 {
		t.Errorf("warm Encrypt made %d root-key calls, want 0", got)
	}
	f.now.Advance(time.Minute + time.Second)
	if _, _, err := f.ring.Encrypt(ctx, "k3", []byte("p"), nil); err != nil {
		t.Fatal(err)
	}
	if got := f.kek.calls.Load() - before; got != 1 {
		t.Errorf("Encrypt after CacheMaxAge made %d root-key calls, want 1 unwrap", got)
	}
}

func TestKeysetBoundToNameAndRootKey(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "alpha", store.KeyTypeAES256GCM)
	f.createKey(t, "beta", store.KeyTypeAES256GCM)
	ct, _, _ := f.ring.Encrypt(ctx, "beta", []byte("p"), nil)
	a, _ := f.store.GetKey(ctx, "alpha")
	b, _ := f.store.GetKey(ctx, "beta")
	// Move alpha's wrapped keyset into beta: a keyset must not open under another name.
	b.WrappedKeyset, b.Versions, b.PrimaryVersion = a.WrappedKeyset, a.Versions, a.PrimaryVersion
	if _, err := f.store.UpdateKey(ctx, b); err != nil {
		t.Fatal(err)
	}
	fresh, _ := New(f.store, f.kek, Options{})
	if _, _, err := fresh.Encrypt(ctx, "beta", []byte("p"), nil); !errors.Is(err, ErrKeysetUnreadable) {
		t.Errorf("Encrypt with a keyset moved from another key err = %v, want ErrKeysetUnreadable", err)
	}
	other, _ := New(f.store, newAEADKEK(t, "test-root-2"), Options{})
	if _, _, err := other.Decrypt(ctx, ct, nil); !errors.Is(err, ErrKeysetUnreadable) {
		t.Errorf("Decrypt with another root key err = %v, want ErrKeysetUnreadable", err)
	}
}

func TestConcurrentRotations(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "busy", store.KeyTypeAES256GCM)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			if _, err := f.ring.RotateKey(ctx, "busy"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent RotateKey() err = %v", err)
	}
	k, err := f.ring.GetKey(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	if k.PrimaryVersion != n+1 || len(k.Versions) != n+1 {
		t.Errorf("after %d concurrent rotations: primary %d, %d versions; want %d and %d", n, k.PrimaryVersion, len(k.Versions), n+1, n+1)
	}
	if _, _, err := f.ring.Encrypt(ctx, "busy", []byte("p"), nil); err != nil {
		t.Errorf("Encrypt after concurrent rotations err = %v", err)
	}
}

// TestTinkCompatible proves that the body of an AES256_GCM ciphertext is
// Tink's AES-GCM output for the key's keyset, in both directions.
func TestTinkCompatible(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "tink", store.KeyTypeAES256GCM)
	if _, err := f.ring.RotateKey(ctx, "tink"); err != nil {
		t.Fatal(err)
	}
	lk, err := f.ring.load(ctx, "tink")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := aead.New(lk.handle)
	if err != nil {
		t.Fatal(err)
	}
	aad := []byte("ctx")
	ct, _, err := f.ring.Encrypt(ctx, "tink", []byte("both ways"), aad)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCiphertext(ct)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := raw.Decrypt(c.body, associatedData(c.header, aad)); err != nil || string(pt) != "both ways" {
		t.Errorf("Tink Decrypt(envelope body) = %q, %v; want %q, nil", pt, err, "both ways")
	}
	body, err := raw.Encrypt([]byte("from tink"), associatedData(c.header, aad))
	if err != nil {
		t.Fatal(err)
	}
	pt, ref, err := f.ring.Decrypt(ctx, append(bytes.Clone(c.header), body...), aad)
	if err != nil || string(pt) != "from tink" || ref.Version != 2 {
		t.Errorf("Decrypt(header || Tink ciphertext) = %q, %+v, %v; want %q at version 2", pt, ref, err, "from tink")
	}
}

// hookKEK wraps a root key and runs a hook before each Unwrap.
type hookKEK struct {
	KEK
	beforeUnwrap func()
}

func (k hookKEK) Unwrap(ctx context.Context, ct, aad []byte) ([]byte, error) {
	if k.beforeUnwrap != nil {
		k.beforeUnwrap()
	}
	return k.KEK.Unwrap(ctx, ct, aad)
}

// TestChangeDuringColdLoad changes a key while another call is loading it
// from the root key: the load that read the old revision must not put it
// back in the cache, even once the newer entry has been evicted, so the next
// call sees the key disabled.
func TestChangeDuringColdLoad(t *testing.T) {
	tests := []struct {
		name    string
		maxKeys int
		change  func(t *testing.T, r *Keyring)
	}{
		{"disable", 0, func(t *testing.T, r *Keyring) {
			if _, err := r.DisableKey(context.Background(), "switch"); err != nil {
				t.Fatalf("DisableKey() err = %v", err)
			}
		}},
		{"rotate, disable, then evict", 1, func(t *testing.T, r *Keyring) {
			ctx := context.Background()
			if _, err := r.RotateKey(ctx, "switch"); err != nil {
				t.Fatalf("RotateKey() err = %v", err)
			}
			if _, err := r.DisableKey(ctx, "switch"); err != nil {
				t.Fatalf("DisableKey() err = %v", err)
			}
			if _, _, err := r.Encrypt(ctx, "other", []byte("p"), nil); err != nil {
				t.Fatalf("Encrypt(other) err = %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, Options{})
			f.createKey(t, "switch", store.KeyTypeAES256GCM)
			f.createKey(t, "other", store.KeyTypeAES256GCM)
			inUnwrap, release := make(chan struct{}), make(chan struct{})
			var first atomic.Bool
			cold, err := New(f.store, hookKEK{KEK: f.kek, beforeUnwrap: func() {
				if first.CompareAndSwap(false, true) {
					close(inUnwrap)
					<-release
				}
			}}, Options{CacheMaxKeys: tt.maxKeys})
			if err != nil {
				t.Fatal(err)
			}
			loaded := make(chan error, 1)
			go func() {
				_, _, err := cold.Encrypt(ctx, "switch", []byte("p"), nil)
				loaded <- err
			}()
			<-inUnwrap
			tt.change(t, cold)
			close(release)
			<-loaded // it started before the change; either outcome is fine
			if _, _, err := cold.Encrypt(ctx, "switch", []byte("p"), nil); !errors.Is(err, ErrKeyDisabled) {
				t.Errorf("Encrypt() after the change raced a cold load: err = %v, want ErrKeyDisabled", err)
			}
		})
	}
}

// TestPanicDuringLoad proves that a panic while loading a key (a faulty HSM
// driver, say) fails that call and leaves the key loadable.
func TestPanicDuringLoad(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "fragile", store.KeyTypeAES256GCM)
	var panicked atomic.Bool
	ring, err := New(f.store, hookKEK{KEK: f.kek, beforeUnwrap: func() {
		if panicked.CompareAndSwap(false, true) {
			panic("driver fault")
		}
	}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ring.Encrypt(ctx, "fragile", []byte("p"), nil); err == nil {
		t.Fatalf("Encrypt() during a panicking load err = nil, want an error")
	}
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, _, err := ring.Encrypt(tctx, "fragile", []byte("p"), nil); err != nil {
		t.Errorf("Encrypt() after a panicking load err = %v, want nil", err)
	}
}

// TestForgedCiphertextLearnsNothing: a forged ciphertext (a real header and
// Tink prefix, then garbage) gets ErrDecrypt even for a disabled key or a
// version below the minimum, so the key's state is not told to a forger.
func TestForgedCiphertextLearnsNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "off", store.KeyTypeAES256GCM)
	f.createKey(t, "old", store.KeyTypeAES256SIV)
	offCT, _, _ := f.ring.Encrypt(ctx, "off", []byte("some plaintext"), nil)
	oldCT, _, _ := f.ring.Encrypt(ctx, "old", []byte("some plaintext"), nil)
	if _, err := f.ring.DisableKey(ctx, "off"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ring.RotateKey(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	two := uint32(2)
	if _, err := f.ring.UpdateKey(ctx, "old", KeyUpdate{MinDecryptionVersion: &two}); err != nil {
		t.Fatal(err)
	}
	for name, ct := range map[string][]byte{"disabled key": offCT, "below minimum": oldCT} {
		c, err := ParseCiphertext(ct)
		if err != nil {
			t.Fatal(err)
		}
		prefixLen := len(c.header) + tinkPrefixSize
		forged := append(bytes.Clone(ct[:prefixLen]), make([]byte, len(ct)-prefixLen)...)
		if _, _, err := f.ring.Decrypt(ctx, forged, nil); !errors.Is(err, ErrDecrypt) {
			t.Errorf("Decrypt(forged, %s) err = %v, want ErrDecrypt", name, err)
		}
		for i := range ct {
			bad := bytes.Clone(ct)
			bad[i] ^= 0x10
			if _, _, err := f.ring.Decrypt(ctx, bad, nil); !errors.Is(err, ErrDecrypt) {
				t.Errorf("Decrypt(%s ciphertext with byte %d flipped) err = %v, want ErrDecrypt", name, i, err)
			}
		}
	}
}

// TestStringFormIsCanonical: one ciphertext has one string form.
func TestStringFormIsCanonical(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "det", store.KeyTypeAES256SIV)
	ct, _, err := f.ring.Encrypt(ctx, "det", []byte("DE89370400440532013000"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := FormatCiphertext(ct)
	// Flip the lowest bit of the last character: when the binary length is
	// not a multiple of 3 that bit is padding, so a lax decoder would return
	// the same bytes.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	lastBit := s[:len(s)-1] + string(alphabet[strings.IndexByte(alphabet, s[len(s)-1])^1])
	tests := map[string]string{
		"newline inside":       s[:20] + "\n" + s[20:],
		"carriage return":      s + "\r",
		"padding":              s + "==",
		"last character bit 0": lastBit,
		"no prefix":            strings.TrimPrefix(s, StringPrefix),
	}
	if std := strings.NewReplacer("-", "+", "_", "/").Replace(s); std != s {
		tests["standard alphabet"] = std
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if b, err := DecodeCiphertext(in); err == nil && bytes.Equal(b, ct) {
				t.Errorf("DecodeCiphertext(%s variant) decoded to the same ciphertext as the canonical form; want ErrDecrypt", name)
			}
		})
	}
	if len(ct)%3 != 0 {
		if _, err := DecodeCiphertext(lastBit); !errors.Is(err, ErrDecrypt) {
			t.Errorf("DecodeCiphertext(non-zero padding bits) err = %v, want ErrDecrypt", err)
		}
	}
}

// TestCacheExpiresOnTheRealClock runs the default timers: a keyset leaves
// memory once CacheMaxAge and CacheStaleGrace have passed, without any call
// touching it.
func TestCacheExpiresOnTheRealClock(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{Now: time.Now, CacheMaxAge: 20 * time.Millisecond, CacheStaleGrace: 20 * time.Millisecond})
	f.createKey(t, "brief", store.KeyTypeAES256GCM)
	if st := f.ring.Cache().Stats(); st.Size != 1 {
		t.Fatalf("cache size after CreateKey = %d, want 1", st.Size)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.ring.Cache().Stats().Size != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("cache still holds the keyset 10s after a 20ms CacheMaxAge and a 20ms CacheStaleGrace")
		}
		time.Sleep(5 * time.Millisecond)
	}
	before := f.kek.calls.Load()
	if _, _, err := f.ring.Encrypt(ctx, "brief", []byte("p"), nil); err != nil {
		t.Fatal(err)
	}
	if got := f.kek.calls.Load() - before; got != 1 {
		t.Errorf("Encrypt after expiry made %d root-key calls, want 1 unwrap", got)
	}
}

func TestColdDecryptCountsOneMiss(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "cold", store.KeyTypeAES256GCM)
	ct, _, err := f.ring.Encrypt(ctx, "cold", []byte("payload"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.ring.Cache().invalidate("cold", 0)
	before := f.ring.Cache().Stats().Misses
	if _, _, err := f.ring.Decrypt(ctx, ct, nil); err != nil {
		t.Fatal(err)
	}
	if got := f.ring.Cache().Stats().Misses - before; got != 1 {
		t.Errorf("a Decrypt of a key not in the cache counted %d misses, want 1", got)
	}
}
