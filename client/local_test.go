package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// localSetup starts a server with key "payments" and returns a client and
// a LocalEncryption under policy.
func localSetup(t *testing.T, policy CachePolicy) (*TestServer, *Client, *LocalEncryption) {
	t.Helper()
	s := StartTestServer(t)
	c := s.Client(t, nil)
	if _, err := c.CreateKey(context.Background(), &tresorv1.CreateKeyRequest{KeyId: "payments", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatalf("CreateKey() err = %v, want nil", err)
	}
	l, err := NewLocalEncryption(c, policy)
	if err != nil {
		t.Fatalf("NewLocalEncryption() err = %v, want nil", err)
	}
	return s, c, l
}

func TestLocalRoundTrip(t *testing.T) {
	s, c, l := localSetup(t, CachePolicy{})
	ctx := context.Background()
	big := make([]byte, 1<<20)
	rand.Read(big)
	tests := []struct {
		name           string
		keyContext     []byte
		plaintext, aad []byte
	}{
		{"empty", nil, nil, nil},
		{"aad", nil, []byte("4111111111111111"), []byte("txn-42")},
		{"key context", []byte("tenant=acme"), []byte("hello"), nil},
		{"1 MiB", []byte("tenant=acme"), big, []byte("blob-7")},
	}
	fresh, err := NewLocalEncryption(c, CachePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := l.Encryptor("payments", tt.keyContext)
			if err != nil {
				t.Fatalf("Encryptor() err = %v", err)
			}
			msg, err := e.Encrypt(ctx, tt.plaintext, tt.aad)
			if err != nil {
				t.Fatalf("Encrypt() err = %v, want nil", err)
			}
			if len(tt.plaintext) > 8 && bytes.Contains(msg, tt.plaintext) {
				t.Errorf("Encrypt() output holds the plaintext")
			}
			for name, local := range map[string]*LocalEncryption{"same": l, "fresh": fresh} {
				opener, err := local.Encryptor("payments", tt.keyContext)
				if err != nil {
					t.Fatal(err)
				}
				got, err := opener.Decrypt(ctx, msg, tt.aad)
				if err != nil || !bytes.Equal(got, tt.plaintext) {
					t.Errorf("%s Decrypt() = %d bytes, %v; want the %d bytes sealed", name, len(got), err, len(tt.plaintext))
				}
			}
			// The wrapped data key opens with the plain Decrypt RPC too,
			// given the key context.
			h, _, err := parseHeader(msg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: string(h.wrapped), AssociatedData: h.keyContext}); err != nil {
				t.Errorf("Decrypt RPC of the wrapped data key err = %v, want nil", err)
			}
		})
	}
	// Two key contexts (none, and tenant=acme): two data keys; the fresh
	// opener unwrapped each once.
	if st := l.Stats(); st.DataKeysGenerated != 2 || st.DataKeysUnwrapped != 0 {
		t.Errorf("Stats() = %+v, want 2 generated, 0 unwrapped (the sealer opens its own messages)", st)
	}
	if st := fresh.Stats(); st.DataKeysUnwrapped != 2 {
		t.Errorf("fresh Stats() = %+v, want 2 unwrapped", st)
	}
	if n := s.Calls(tresorv1.CryptoService_Decrypt_FullMethodName); n != 2+int64(len(tests)) {
		t.Errorf("server saw %d Decrypt calls, want %d (2 unwraps, one RPC per case)", n, 2+len(tests))
	}
}

func TestLocalDecryptFailures(t *testing.T) {
	s, c, l := localSetup(t, CachePolicy{})
	ctx := context.Background()
	e, err := l.Encryptor("payments", []byte("ctx"))
	if err != nil {
		t.Fatal(err)
	}
	const secret = "4111111111111111"
	msg, err := e.Encrypt(ctx, []byte(secret), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	_, hl, _ := parseHeader(msg)
	flip := func(i int) []byte {
		b := bytes.Clone(msg)
		b[i] ^= 1
		return b
	}
	tests := []struct {
		name string
		msg  []byte
		aad  []byte
	}{
		{"wrong aad", msg, []byte("aae")},
		{"missing aad", msg, nil},
		{"empty", nil, []byte("aad")},
		{"magic", flip(0), []byte("aad")},
		{"version", flip(4), []byte("aad")},
		{"kind", flip(5), []byte("aad")},
		{"key context", flip(hl - 1), []byte("aad")},
		{"nonce", flip(hl), []byte("aad")},
		{"ciphertext", flip(hl + nonceLen), []byte("aad")},
		{"tag", flip(len(msg) - 1), []byte("aad")},
		{"truncated", msg[:len(msg)-1], []byte("aad")},
		{"header only", msg[:hl], []byte("aad")},
		{"trailing byte", append(bytes.Clone(msg), 0), []byte("aad")},
		{"not a message", []byte("tresor:v1:AAAA"), nil},
	}
	fresh, err := NewLocalEncryption(c, CachePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for name, local := range map[string]*LocalEncryption{"cached": l, "fresh": fresh} {
				opener, err := local.Encryptor("payments", []byte("ctx"))
				if err != nil {
					t.Fatal(err)
				}
				got, err := opener.Decrypt(ctx, tt.msg, tt.aad)
				if !errors.Is(err, ErrDecryptionFailed) || got != nil {
					t.Errorf("%s Decrypt() = %q, %v; want nil, ErrDecryptionFailed", name, got, err)
				}
				if err != nil && (err.Error() != ErrDecryptionFailed.Error() || strings.Contains(err.Error(), secret)) {
					t.Errorf("%s Decrypt() err = %q, want exactly %q", name, err, ErrDecryptionFailed)
				}
			}
		})
	}
	// A changed wrapped key is refused by tresor: still the one error.
	t.Run("wrapped key", func(t *testing.T) {
		b := bytes.Clone(msg)
		b[fixedHeaderLen+len(wrappedKeyPrefix)+5] ^= 1
		fe, err := fresh.Encryptor("payments", []byte("ctx"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fe.Decrypt(ctx, b, []byte("aad")); !errors.Is(err, ErrDecryptionFailed) {
			t.Errorf("Decrypt() err = %v, want ErrDecryptionFailed", err)
		}
	})
	// A caller the policy does not allow to unwrap gets PermissionDenied:
	// a refusal, not a failed decryption.
	t.Run("permission denied", func(t *testing.T) {
		other, err := New(Config{Address: s.Addr, TLS: s.OtherTLS, Tokens: s.tokens(t, s.OtherTLS, TestOtherID)})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		ol, err := NewLocalEncryption(other, CachePolicy{})
		if err != nil {
			t.Fatal(err)
		}
		oe, err := ol.Encryptor("payments", []byte("ctx"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := oe.Decrypt(ctx, msg, []byte("aad")); !errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrDecryptionFailed) {
			t.Errorf("Decrypt() by a stranger err = %v, want ErrPermissionDenied", err)
		}
	})
}

func TestCachePolicyLimits(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		policy   CachePolicy
		messages int
		size     int
		advance  time.Duration // clock step after every message
		want     uint64        // GenerateDataKey calls
	}{
		{"defaults", CachePolicy{}, 100, 10, 0, 1},
		{"max messages", CachePolicy{MaxMessages: 3}, 10, 10, 0, 4},
		{"max bytes", CachePolicy{MaxBytes: 100}, 10, 40, 0, 5},
		{"max age", CachePolicy{MaxAge: time.Minute}, 10, 10, 25 * time.Second, 4},
	}
	s, c, _ := localSetup(t, CachePolicy{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := NewLocalEncryption(c, tt.policy)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			var mu sync.Mutex
			l.setClock(func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
			e, err := l.Encryptor("payments", nil)
			if err != nil {
				t.Fatal(err)
			}
			before := s.Calls(tresorv1.CryptoService_GenerateDataKey_FullMethodName)
			headers := map[string]int{}
			for range tt.messages {
				msg, err := e.Encrypt(ctx, make([]byte, tt.size), nil)
				if err != nil {
					t.Fatalf("Encrypt() err = %v", err)
				}
				_, hl, _ := parseHeader(msg)
				headers[string(msg[:hl])]++
				mu.Lock()
				now = now.Add(tt.advance)
				mu.Unlock()
			}
			if got := l.Stats().DataKeysGenerated; got != tt.want {
				t.Errorf("DataKeysGenerated = %d, want %d", got, tt.want)
			}
			if got := s.Calls(tresorv1.CryptoService_GenerateDataKey_FullMethodName) - before; got != int64(tt.want) {
				t.Errorf("server saw %d GenerateDataKey calls, want %d", got, tt.want)
			}
			if len(headers) != int(tt.want) {
				t.Errorf("%d distinct data keys in the messages, want %d", len(headers), tt.want)
			}
		})
	}
	t.Run("message above MaxBytes", func(t *testing.T) {
		l, err := NewLocalEncryption(c, CachePolicy{MaxBytes: 10})
		if err != nil {
			t.Fatal(err)
		}
		e, _ := l.Encryptor("payments", nil)
		if _, err := e.Encrypt(ctx, make([]byte, 11), nil); err == nil {
			t.Errorf("Encrypt() of 11 bytes under MaxBytes 10 err = nil, want an error")
		}
	})
	t.Run("invalid policies", func(t *testing.T) {
		for _, p := range []CachePolicy{{MaxMessages: 1<<32 + 1}, {MaxAge: -1}, {MaxOpenKeys: -1}} {
			if _, err := NewLocalEncryption(c, p); err == nil {
				t.Errorf("NewLocalEncryption(%+v) err = nil, want an error", p)
			}
		}
		l, _ := NewLocalEncryption(c, CachePolicy{})
		if _, err := l.Encryptor("payments", make([]byte, maxKeyContext+1)); err == nil {
			t.Errorf("Encryptor() with an oversized key context err = nil, want an error")
		}
	})
	t.Run("unknown key", func(t *testing.T) {
		l, _ := NewLocalEncryption(c, CachePolicy{})
		e, _ := l.Encryptor("nope", nil)
		if _, err := e.Encrypt(ctx, []byte("x"), nil); !errors.Is(err, ErrNotFound) {
			t.Errorf("Encrypt() under a missing key err = %v, want ErrNotFound", err)
		}
	})
}

// TestCallsPer10000Messages is the figure: tresor calls for 10,000
// messages sealed and then opened by another process (a fresh cache).
func TestCallsPer10000Messages(t *testing.T) {
	s, c, l := localSetup(t, CachePolicy{})
	ctx := context.Background()
	e, err := l.Encryptor("payments", []byte("tenant=acme"))
	if err != nil {
		t.Fatal(err)
	}
	before := s.TotalCalls()
	msgs := make([][]byte, 10000)
	pt := make([]byte, 1024)
	for i := range msgs {
		if msgs[i], err = e.Encrypt(ctx, pt, nil); err != nil {
			t.Fatal(err)
		}
	}
	sealCalls := s.TotalCalls() - before
	reader, err := NewLocalEncryption(c, CachePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	opener, err := reader.Encryptor("payments", []byte("tenant=acme"))
	if err != nil {
		t.Fatal(err)
	}
	before = s.TotalCalls()
	for _, m := range msgs {
		if _, err := opener.Decrypt(ctx, m, nil); err != nil {
			t.Fatal(err)
		}
	}
	openCalls := s.TotalCalls() - before
	t.Logf("tresor calls for 10,000 messages of 1 KiB: %d to seal, %d to open", sealCalls, openCalls)
	if sealCalls != 1 || openCalls != 1 {
		t.Errorf("calls for 10,000 messages: %d to seal, %d to open; want 1 and 1", sealCalls, openCalls)
	}
}

func TestLocalConcurrent(t *testing.T) {
	_, _, l := localSetup(t, CachePolicy{MaxMessages: 100})
	ctx := context.Background()
	e, err := l.Encryptor("payments", nil)
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 250
	var mu sync.Mutex
	perKey := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				pt := []byte{byte(w), byte(i)}
				msg, err := e.Encrypt(ctx, pt, nil)
				if err != nil {
					errs <- err
					return
				}
				got, err := e.Decrypt(ctx, msg, nil)
				if err != nil || !bytes.Equal(got, pt) {
					errs <- errors.Join(errors.New("round trip failed"), err)
					return
				}
				_, hl, _ := parseHeader(msg)
				mu.Lock()
				perKey[string(msg[:hl])]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, n := range perKey {
		if n > 100 {
			t.Errorf("a data key sealed %d messages, want at most MaxMessages 100", n)
		}
	}
	if got, min := l.Stats().DataKeysGenerated, uint64(workers*each/100); got < min || int(got) != len(perKey) {
		t.Errorf("DataKeysGenerated = %d for %d keys seen, want %d keys or more, one call each", got, len(perKey), min)
	}
}

// forgeMessage builds a well-formed message by hand around a data key
// the caller chose and had tresor wrap: what any caller allowed to
// Encrypt under some key can make.
func forgeMessage(t *testing.T, wrapped string, keyContext, dataKey, pt, aad []byte) []byte {
	t.Helper()
	hdr := appendHeader(nil, kindMessage, wrapped, keyContext)
	aead, err := newGCM(dataKey)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, nonceLen)
	rand.Read(nonce)
	return aead.Seal(append(bytes.Clone(hdr), nonce...), nonce, pt, append(bytes.Clone(hdr), aad...))
}

// forgeStream is forgeMessage for a stream of one chunk.
func forgeStream(t *testing.T, wrapped string, keyContext, dataKey, pt, aad []byte) []byte {
	t.Helper()
	prefix := appendHeader(nil, kindStream, wrapped, keyContext)
	prefix = binary.BigEndian.AppendUint32(prefix, streamMinChunk)
	salt := make([]byte, streamSaltLen)
	rand.Read(salt)
	prefix = append(prefix, salt...)
	sc, err := newStreamCipher(dataKey, prefix, aad)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := sc.seal(nil, pt, true)
	if err != nil {
		t.Fatal(err)
	}
	return append(prefix, ct...)
}

// TestLocalForgedMessages: a caller who may Encrypt under a key the
// reader may decrypt wraps a data key of its own choosing, under another
// key or another key context, and builds messages and streams around it.
// The reader's Encryptor("payments", "tenant=acme") opens none of them,
// whether or not its cache already holds that data key.
func TestLocalForgedMessages(t *testing.T) {
	s, c, l := localSetup(t, CachePolicy{})
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, createKey("other")); err != nil {
		t.Fatal(err)
	}
	acme, mallory := []byte("tenant=acme"), []byte("tenant=mallory")
	pt, aad := []byte("pay mallory 1,000,000 EUR"), []byte("txn-1")
	decrypts := func() int64 { return s.Calls(tresorv1.CryptoService_Decrypt_FullMethodName) }
	tests := []struct {
		name       string
		key        string // what the attacker had its data key wrapped under
		keyContext []byte
	}{
		{"wrapped by another key", "other", acme},
		{"wrapped under another key context", "payments", mallory},
		{"wrapped by another key under another key context", "other", mallory},
	}
	for _, tt := range tests {
		dataKey := make([]byte, dataKeyLen)
		rand.Read(dataKey)
		enc, err := c.Encrypt(ctx, &tresorv1.EncryptRequest{Key: tt.key, Plaintext: dataKey, AssociatedData: tt.keyContext})
		if err != nil {
			t.Fatalf("Encrypt() err = %v", err)
		}
		msg := forgeMessage(t, enc.GetCiphertext(), tt.keyContext, dataKey, pt, aad)
		stream := forgeStream(t, enc.GetCiphertext(), tt.keyContext, dataKey, pt, aad)
		for _, warm := range []bool{false, true} {
			name := tt.name
			if warm {
				name += ", data key cached"
			}
			t.Run(name, func(t *testing.T) {
				local, err := NewLocalEncryption(c, CachePolicy{})
				if err != nil {
					t.Fatal(err)
				}
				// The forgery is well formed: an Encryptor of the key and
				// key context it was made under opens it.
				if warm {
					own, _ := local.Encryptor(tt.key, tt.keyContext)
					if got, err := own.Decrypt(ctx, msg, aad); err != nil || !bytes.Equal(got, pt) {
						t.Fatalf("Encryptor(%s, %s).Decrypt(forged) = %q, %v; want it to open", tt.key, tt.keyContext, got, err)
					}
				}
				reader, _ := local.Encryptor("payments", acme)
				before := decrypts()
				if got, err := reader.Decrypt(ctx, msg, aad); err != ErrDecryptionFailed || got != nil {
					t.Errorf("reader Decrypt(forged message) = %q, %v; want nil, ErrDecryptionFailed", got, err)
				}
				var out bytes.Buffer
				if n, err := reader.DecryptStream(ctx, &out, bytes.NewReader(stream), aad); err != ErrDecryptionFailed || n != 0 || out.Len() != 0 {
					t.Errorf("reader DecryptStream(forged stream) = %d, %v and wrote %d bytes; want 0, ErrDecryptionFailed, nothing", n, err, out.Len())
				}
				if !bytes.Equal(tt.keyContext, acme) && decrypts() != before {
					t.Errorf("another key context cost %d Decrypt calls, want none", decrypts()-before)
				}
			})
		}
	}
	t.Run("genuine message", func(t *testing.T) {
		w, _ := l.Encryptor("payments", acme)
		msg, err := w.Encrypt(ctx, pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		local, _ := NewLocalEncryption(c, CachePolicy{})
		reader, _ := local.Encryptor("payments", acme)
		if got, err := reader.Decrypt(ctx, msg, aad); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("reader Decrypt(genuine) = %q, %v; want it to open", got, err)
		}
	})
}

// TestSealKeyAdmitConcurrent: however many callers race, a data key
// seals exactly the messages and bytes its limits allow.
func TestSealKeyAdmitConcurrent(t *testing.T) {
	tests := []struct {
		name   string
		policy CachePolicy
		size   uint64
		want   uint64 // messages admitted
	}{
		{"bytes, 1-byte messages", CachePolicy{MaxMessages: 1 << 32, MaxBytes: 1000}, 1, 1000},
		{"bytes, 7-byte messages", CachePolicy{MaxMessages: 1 << 32, MaxBytes: 1000}, 7, 142},
		{"bytes, 300-byte messages", CachePolicy{MaxMessages: 1 << 32, MaxBytes: 1000}, 300, 3},
		{"messages", CachePolicy{MaxMessages: 100, MaxBytes: 1 << 40}, 0, 100},
		{"bytes near 2^64", CachePolicy{MaxMessages: 1 << 32, MaxBytes: math.MaxUint64 - 1}, 1 << 62, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &LocalEncryption{policy: tt.policy, now: time.Now}
			for range 20 {
				k := &sealKey{expires: time.Now().Add(time.Hour)}
				var admitted atomic.Uint64
				var wg sync.WaitGroup
				for range 8 {
					wg.Go(func() {
						for range 2000 {
							if k.admit(l, tt.size) {
								admitted.Add(1)
							}
						}
					})
				}
				wg.Wait()
				if got := admitted.Load(); got != tt.want {
					t.Fatalf("admitted %d messages of %d bytes, want %d", got, tt.size, tt.want)
				}
				if b := k.bytes.Load(); b != tt.want*tt.size {
					t.Fatalf("bytes counted = %d, want %d", b, tt.want*tt.size)
				}
			}
		})
	}
}

// hookKMS is a fuzzKMS whose calls may wait at a gate (until it is
// closed, or their ctx ends, as a real call would) and whose
// GenerateDataKey may fail.
type hookKMS struct {
	*fuzzKMS
	genErr           error
	genGate, decGate chan struct{}
	entered          chan string // each call's method, as it starts waiting
}

func newHookLocal(t *testing.T, policy CachePolicy) (*LocalEncryption, *hookKMS) {
	t.Helper()
	kms := &hookKMS{fuzzKMS: newFuzzKMS(t), entered: make(chan string, 100)}
	l, err := newLocalEncryption(kms, kms, policy)
	if err != nil {
		t.Fatal(err)
	}
	return l, kms
}

func (k *hookKMS) wait(ctx context.Context, gate chan struct{}, method string) error {
	if gate == nil {
		return nil
	}
	k.entered <- method
	select {
	case <-gate:
		return nil
	case <-ctx.Done():
		return callError(method, status.FromContextError(ctx.Err()).Err())
	}
}

func (k *hookKMS) GenerateDataKey(ctx context.Context, req *tresorv1.GenerateDataKeyRequest) (*tresorv1.GenerateDataKeyResponse, error) {
	if err := k.wait(ctx, k.genGate, tresorv1.CryptoService_GenerateDataKey_FullMethodName); err != nil {
		return nil, err
	}
	if k.genErr != nil {
		return nil, k.genErr
	}
	return k.fuzzKMS.GenerateDataKey(ctx, req)
}

func (k *hookKMS) Decrypt(ctx context.Context, req *tresorv1.DecryptRequest) (*tresorv1.DecryptResponse, error) {
	if err := k.wait(ctx, k.decGate, tresorv1.CryptoService_Decrypt_FullMethodName); err != nil {
		return nil, err
	}
	return k.fuzzKMS.Decrypt(ctx, req)
}

// TestUnwrapSingleFlight: callers opening messages of one data key at
// once make one Decrypt call between them.
func TestUnwrapSingleFlight(t *testing.T) {
	s, c, l := localSetup(t, CachePolicy{})
	ctx := context.Background()
	w, _ := l.Encryptor("payments", []byte("tenant=acme"))
	const n = 16
	msgs := make([][]byte, n)
	for i := range msgs {
		var err error
		if msgs[i], err = w.Encrypt(ctx, []byte{byte(i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	local, _ := NewLocalEncryption(c, CachePolicy{})
	reader, _ := local.Encryptor("payments", []byte("tenant=acme"))
	before := s.Calls(tresorv1.CryptoService_Decrypt_FullMethodName)
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			if pt, err := reader.Decrypt(ctx, msgs[i], nil); err != nil || !bytes.Equal(pt, []byte{byte(i)}) {
				errs <- fmt.Errorf("Decrypt(message %d) = %x, %v", i, pt, err)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := s.Calls(tresorv1.CryptoService_Decrypt_FullMethodName) - before; got != 1 {
		t.Errorf("server saw %d Decrypt calls for %d concurrent opens of one data key, want 1", got, n)
	}
	if st := local.Stats(); st.DataKeysUnwrapped != 1 {
		t.Errorf("Stats() = %+v, want 1 data key unwrapped", st)
	}
}

// TestUnwrapWaiters: a caller waiting for another's unwrap gives up when
// its own ctx ends, and takes over when the other gave up on its ctx.
func TestUnwrapWaiters(t *testing.T) {
	tests := []struct {
		name string
		// cancelFirst ends the first caller's ctx while both wait;
		// otherwise the second caller's ctx has a short deadline.
		cancelFirst bool
		second      error // the second caller's error
		decrypts    int64
	}{
		{"waiter's deadline", false, ErrDeadlineExceeded, 1},
		{"first caller gives up", true, nil, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, kms := newHookLocal(t, CachePolicy{})
			e, _ := l.Encryptor("payments", nil)
			msg, err := e.Encrypt(context.Background(), []byte("x"), nil)
			if err != nil {
				t.Fatal(err)
			}
			reader, _ := newLocalEncryption(kms, kms, CachePolicy{})
			re, _ := reader.Encryptor("payments", nil)
			kms.decGate = make(chan struct{})

			ctx1, cancel1 := context.WithCancel(context.Background())
			defer cancel1()
			first := make(chan error, 1)
			go func() {
				_, err := re.Decrypt(ctx1, msg, nil)
				first <- err
			}()
			<-kms.entered // the first caller's unwrap is in flight

			ctx2 := context.Background()
			if !tt.cancelFirst {
				var cancel2 context.CancelFunc
				ctx2, cancel2 = context.WithTimeout(ctx2, 100*time.Millisecond)
				defer cancel2()
			}
			second := make(chan error, 1)
			start := time.Now()
			go func() {
				_, err := re.Decrypt(ctx2, msg, nil)
				second <- err
			}()
			if tt.cancelFirst {
				time.Sleep(50 * time.Millisecond) // the second caller waits for the first
				cancel1()
				if err := <-first; !errors.Is(err, ErrCanceled) {
					t.Errorf("first Decrypt() err = %v, want ErrCanceled", err)
				}
				<-kms.entered // the second caller's own unwrap
				close(kms.decGate)
			}
			if err := <-second; tt.second == nil && err != nil || tt.second != nil && !errors.Is(err, tt.second) {
				t.Errorf("second Decrypt() err = %v, want %v", err, tt.second)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("second Decrypt() took %v, want well under 1s", d)
			}
			if !tt.cancelFirst {
				close(kms.decGate)
				if err := <-first; err != nil {
					t.Errorf("first Decrypt() err = %v, want nil", err)
				}
			}
			if got := reader.Stats().DataKeysUnwrapped; got != uint64(tt.decrypts) {
				t.Errorf("Decrypt calls = %d, want %d", got, tt.decrypts)
			}
		})
	}
}

// TestEncryptorWaitRespectsContext: a caller waiting for another's
// GenerateDataKey gives up when its ctx ends.
func TestEncryptorWaitRespectsContext(t *testing.T) {
	tests := []struct {
		name string
		seal func(ctx context.Context, e *Encryptor) error
	}{
		{"Encrypt", func(ctx context.Context, e *Encryptor) error {
			_, err := e.Encrypt(ctx, []byte("x"), nil)
			return err
		}},
		{"EncryptStream", func(ctx context.Context, e *Encryptor) error {
			_, err := e.EncryptStream(ctx, io.Discard, bytes.NewReader([]byte("x")), nil)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, kms := newHookLocal(t, CachePolicy{})
			kms.genGate = make(chan struct{})
			e, _ := l.Encryptor("payments", nil)
			first := make(chan error, 1)
			go func() { first <- tt.seal(context.Background(), e) }()
			<-kms.entered // the first caller holds the lock, in GenerateDataKey
			// Released at the latest in 3s, so that a second caller that
			// ignores its ctx fails the test rather than hangs it.
			release := sync.OnceFunc(func() { close(kms.genGate) })
			defer time.AfterFunc(3*time.Second, release).Stop()

			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := tt.seal(ctx, e)
			if !errors.Is(err, ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("second %s() err = %v, want ErrDeadlineExceeded", tt.name, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("second %s() took %v, want well under 1s", tt.name, d)
			}
			release()
			if err := <-first; err != nil {
				t.Errorf("first %s() err = %v, want nil", tt.name, err)
			}
			if got := kms.generated.Load(); got != 1 {
				t.Errorf("GenerateDataKey calls = %d, want 1", got)
			}
		})
	}
}

// TestSealKeyRetired: a data key the Encryptor replaces, or that expired,
// is dropped and zeroed; messages sealed under it still open.
func TestSealKeyRetired(t *testing.T) {
	errDown := &Error{Method: tresorv1.CryptoService_GenerateDataKey_FullMethodName, Code: codes.Unavailable, Message: "down"}
	tests := []struct {
		name    string
		policy  CachePolicy
		advance time.Duration // clock step before the second message
		genErr  error         // GenerateDataKey's error for the second message
		wantCur bool          // a key is cached after the second message
	}{
		{"expired, replaced", CachePolicy{MaxAge: time.Minute}, 2 * time.Minute, nil, true},
		{"spent, replaced", CachePolicy{MaxMessages: 1}, 0, nil, true},
		{"expired, tresor down", CachePolicy{MaxAge: time.Minute}, 2 * time.Minute, errDown, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, kms := newHookLocal(t, tt.policy)
			now := time.Now()
			l.setClock(func() time.Time { return now })
			ctx := context.Background()
			e, _ := l.Encryptor("payments", nil)
			msg, err := e.Encrypt(ctx, []byte("first"), nil)
			if err != nil {
				t.Fatal(err)
			}
			k1 := e.cur.Load()
			raw := k1.raw
			if len(raw) != dataKeyLen || bytes.Equal(raw, make([]byte, dataKeyLen)) {
				t.Fatalf("first data key = %x, want 32 bytes, not all zero", raw)
			}
			now = now.Add(tt.advance)
			kms.genErr = tt.genErr
			_, err = e.Encrypt(ctx, []byte("second"), nil)
			if tt.genErr != nil && !errors.Is(err, ErrUnavailable) || tt.genErr == nil && err != nil {
				t.Fatalf("second Encrypt() err = %v, want %v", err, tt.genErr)
			}
			cur := e.cur.Load()
			if cur == k1 || (cur != nil) != tt.wantCur {
				t.Errorf("cached key after the second message = %p (first %p), want a new one: %v", cur, k1, tt.wantCur)
			}
			if k1.raw != nil || !bytes.Equal(raw, make([]byte, dataKeyLen)) {
				t.Errorf("first data key after replacement = %x, want it dropped and zeroed", raw)
			}
			if _, err := k1.streamCipher(make([]byte, 64), nil); !errors.Is(err, errKeyRetired) {
				t.Errorf("streamCipher() of the retired key err = %v, want errKeyRetired", err)
			}
			if pt, err := e.Decrypt(ctx, msg, nil); err != nil || string(pt) != "first" {
				t.Errorf("Decrypt(first message) = %q, %v; want it to open", pt, err)
			}
		})
	}
}

// TestStreamsWhileKeysAreReplaced: streams sealed while other callers
// replace (and zero) the data key all open.
func TestStreamsWhileKeysAreReplaced(t *testing.T) {
	l, _ := newFuzzLocal(t, CachePolicy{MaxMessages: 2})
	e, _ := l.Encryptor("payments", nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := range 25 {
				pt := []byte{byte(w), byte(i)}
				var b bytes.Buffer
				if _, err := e.EncryptStream(ctx, &b, bytes.NewReader(pt), nil); err != nil {
					errs <- err
					return
				}
				var out bytes.Buffer
				if _, err := e.DecryptStream(ctx, &out, &b, nil); err != nil || !bytes.Equal(out.Bytes(), pt) {
					errs <- fmt.Errorf("stream %d/%d: %x, %v", w, i, out.Bytes(), err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestMaxAgeOnTheRealClock: without a fake clock, a data key's age is
// enforced by its expiry timer.
func TestMaxAgeOnTheRealClock(t *testing.T) {
	_, c, _ := localSetup(t, CachePolicy{})
	l, err := NewLocalEncryption(c, CachePolicy{MaxAge: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e, err := l.Encryptor("payments", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		if _, err := e.Encrypt(ctx, []byte("x"), []byte("aad")); err != nil {
			t.Fatalf("Encrypt() err = %v, want nil", err)
		}
	}
	if n := l.Stats().DataKeysGenerated; n != 1 {
		t.Fatalf("DataKeysGenerated = %d within MaxAge, want 1", n)
	}
	time.Sleep(150 * time.Millisecond)
	msg, err := e.Encrypt(ctx, []byte("x"), []byte("aad"))
	if err != nil {
		t.Fatalf("Encrypt() after MaxAge err = %v, want nil", err)
	}
	if n := l.Stats().DataKeysGenerated; n != 2 {
		t.Errorf("DataKeysGenerated = %d after MaxAge passed, want 2", n)
	}
	if got, err := e.Decrypt(ctx, msg, []byte("aad")); err != nil || string(got) != "x" {
		t.Errorf("Decrypt() = %q, %v; want x", got, err)
	}
}

// TestAppendEncrypt: AppendEncrypt appends to dst without touching what is
// there, reuses its room, and leaves it unchanged on error.
func TestAppendEncrypt(t *testing.T) {
	_, _, l := localSetup(t, CachePolicy{})
	ctx := context.Background()
	e, err := l.Encryptor("payments", nil)
	if err != nil {
		t.Fatal(err)
	}
	prefix := []byte("prefix:")
	dst := make([]byte, len(prefix), 4096)
	copy(dst, prefix)
	out, err := e.AppendEncrypt(ctx, dst, []byte("hello"), []byte("aad"))
	if err != nil {
		t.Fatalf("AppendEncrypt() err = %v, want nil", err)
	}
	if !bytes.HasPrefix(out, prefix) || &out[0] != &dst[0] {
		t.Errorf("AppendEncrypt() did not append in dst's room")
	}
	if got, err := e.Decrypt(ctx, out[len(prefix):], []byte("aad")); err != nil || string(got) != "hello" {
		t.Errorf("Decrypt(appended message) = %q, %v; want hello", got, err)
	}
	missing, err := l.Encryptor("missing", nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err = missing.AppendEncrypt(ctx, dst, []byte("hello"), nil)
	if !errors.Is(err, ErrNotFound) || !bytes.Equal(out, prefix) {
		t.Errorf("AppendEncrypt() under a missing key = %q, %v; want dst unchanged, ErrNotFound", out, err)
	}
}

// TestOpenKeysDropExpired: an expired opening key is dropped when looked
// up, not kept until the cache fills.
func TestOpenKeysDropExpired(t *testing.T) {
	var c openKeys
	c.keys = map[string]*openKey{}
	now := time.Now()
	c.put([]byte("h"), &openKey{expires: now.Add(time.Minute)}, 10, now)
	if c.get([]byte("h"), now) == nil {
		t.Fatal("get() of a live key = nil, want it")
	}
	if k := c.get([]byte("h"), now.Add(2*time.Minute)); k != nil || len(c.keys) != 0 {
		t.Errorf("get() of an expired key = %v with %d keys left, want nil and 0", k, len(c.keys))
	}
}
