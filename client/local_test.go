package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

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
			for name, opener := range map[string]*LocalEncryption{"same": l, "fresh": fresh} {
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
			for name, opener := range map[string]*LocalEncryption{"cached": l, "fresh": fresh} {
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
		if _, err := fresh.Decrypt(ctx, b, []byte("aad")); !errors.Is(err, ErrDecryptionFailed) {
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
		if _, err := ol.Decrypt(ctx, msg, []byte("aad")); !errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrDecryptionFailed) {
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
			l.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
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
	opener, err := NewLocalEncryption(c, CachePolicy{})
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
				got, err := l.Decrypt(ctx, msg, nil)
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
