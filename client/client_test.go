package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// triedOnce are the methods whose repetition would change state again; a
// test keeps retried and triedOnce together covering every unary RPC.
var triedOnce = map[string]bool{
	tresorv1.KeyService_CreateKey_FullMethodName:           true,
	tresorv1.KeyService_UpdateKey_FullMethodName:           true,
	tresorv1.KeyService_RotateKey_FullMethodName:           true,
	tresorv1.KeyService_DisableKey_FullMethodName:          true,
	tresorv1.KeyService_EnableKey_FullMethodName:           true,
	tresorv1.KeyService_ScheduleKeyDeletion_FullMethodName: true,
	tresorv1.KeyService_CancelKeyDeletion_FullMethodName:   true,
	tresorv1.AdminService_RotateRootKey_FullMethodName:     true,
	tresorv1.FieldService_PutSchema_FullMethodName:         true,
}

// TestEveryRPCHasAMethod keeps calls.go in step with the protos.
func TestEveryRPCHasAMethod(t *testing.T) {
	ct := reflect.TypeOf(&Client{})
	files := []protoreflect.FileDescriptor{
		tresorv1.File_tresor_v1_key_proto, tresorv1.File_tresor_v1_crypto_proto,
		tresorv1.File_tresor_v1_admin_proto, tresorv1.File_tresor_v1_field_proto,
	}
	n := 0
	for _, f := range files {
		for i := range f.Services().Len() {
			svc := f.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				name := string(m.Name())
				n++
				if _, ok := ct.MethodByName(name); !ok {
					t.Errorf("Client has no method %s (%s)", name, svc.FullName())
				}
				// Every unary RPC is classed: safe to retry, or tried once.
				full := "/" + string(svc.FullName()) + "/" + name
				if !m.IsStreamingClient() && !m.IsStreamingServer() && retried[full] == triedOnce[full] {
					t.Errorf("%s is in retried %v and triedOnce %v, want exactly one", full, retried[full], triedOnce[full])
				}
			}
		}
	}
	if n < 28 {
		t.Errorf("found %d RPCs in the protos, want at least 28", n)
	}
}

func TestCallErrors(t *testing.T) {
	s := StartTestServer(t)
	c := s.Client(t, nil)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "payments", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatalf("CreateKey() err = %v, want nil", err)
	}
	const secret = "4111111111111111"
	other, err := New(Config{Address: s.Addr, TLS: s.OtherTLS, Tokens: s.tokens(t, s.OtherTLS, TestOtherID)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	noToken, err := New(Config{Address: s.Addr, TLS: s.TLS})
	if err != nil {
		t.Fatal(err)
	}
	defer noToken.Close()
	tests := []struct {
		name string
		call func() error
		want []error
		code codes.Code
	}{
		{"missing key", func() error {
			_, err := c.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "nope"})
			return err
		}, []error{ErrNotFound}, codes.NotFound},
		{"duplicate key", func() error {
			_, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "payments", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM})
			return err
		}, []error{ErrAlreadyExists}, codes.AlreadyExists},
		{"invalid key name", func() error {
			_, err := c.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "Not A Name", Plaintext: []byte(secret)})
			return err
		}, []error{ErrInvalidArgument}, codes.InvalidArgument},
		{"tampered ciphertext", func() error {
			enc, err := c.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "payments", Plaintext: []byte(secret)})
			if err != nil {
				return err
			}
			ct := []byte(enc.GetCiphertext())
			ct[len(ct)-3] ^= 'A' ^ 'B'
			_, err = c.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: string(ct)})
			return err
		}, []error{ErrDecryptionFailed, ErrInvalidArgument}, codes.InvalidArgument},
		{"policy denies", func() error {
			_, err := other.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "payments", Plaintext: []byte(secret)})
			return err
		}, []error{ErrPermissionDenied}, codes.PermissionDenied},
		{"no token", func() error {
			_, err := noToken.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "payments", Plaintext: []byte(secret)})
			return err
		}, []error{ErrUnauthenticated}, codes.Unauthenticated},
		{"deadline", func() error {
			short := s.Client(t, func(cfg *Config) { cfg.Timeout = time.Nanosecond })
			_, err := short.ListKeys(ctx, &tresorv1.ListKeysRequest{})
			return err
		}, []error{ErrDeadlineExceeded}, codes.DeadlineExceeded},
		{"token endpoint down", func() error {
			src, err := ClientCredentials(ClientCredentialsConfig{TokenURL: "https://" + closedAddr(t) + "/token", ClientID: TestClientID, TLS: s.TLS})
			if err != nil {
				return err
			}
			down := s.Client(t, func(cfg *Config) {
				cfg.Tokens = src
				cfg.Retry = RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Millisecond}
			})
			_, err = down.ListKeys(ctx, &tresorv1.ListKeysRequest{})
			return err
		}, []error{ErrUnavailable}, codes.Unavailable},
	}
	sentinels := []error{ErrInvalidArgument, ErrNotFound, ErrAlreadyExists, ErrPermissionDenied, ErrUnauthenticated,
		ErrResourceExhausted, ErrFailedPrecondition, ErrAborted, ErrUnavailable, ErrDeadlineExceeded, ErrCanceled,
		ErrUnimplemented, ErrInternal, ErrDecryptionFailed}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("err = %v, want errors.Is(err, %v)", err, w)
				}
			}
			for _, s := range sentinels {
				if errors.Is(err, s) && !contains(tt.want, s) {
					t.Errorf("err = %v also matches %v", err, s)
				}
			}
			if st, _ := status.FromError(err); st.Code() != tt.code {
				t.Errorf("status.FromError(err).Code() = %v, want %v", st.Code(), tt.code)
			}
			var e *Error
			if !errors.As(err, &e) || e.Method == "" {
				t.Errorf("err = %#v, want an *Error naming the method", err)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("err = %v holds the plaintext", err)
			}
		})
	}
}

func contains(errs []error, e error) bool {
	for _, x := range errs {
		if x == e {
			return true
		}
	}
	return false
}

// countingSource counts the tokens it gives; the first bad ones are not
// tokens the server accepts.
type countingSource struct {
	src  oauth2.TokenSource
	bad  int
	n    atomic.Int64
	life time.Duration
}

func (s *countingSource) Token() (*oauth2.Token, error) {
	if int(s.n.Add(1)) <= s.bad {
		return &oauth2.Token{AccessToken: "not-a-token", Expiry: time.Now().Add(time.Hour)}, nil
	}
	t, err := s.src.Token()
	if err == nil && s.life > 0 {
		t.Expiry = time.Now().Add(s.life)
	}
	return t, err
}

func TestTokens(t *testing.T) {
	s := StartTestServer(t)
	ctx := context.Background()
	t.Run("cached", func(t *testing.T) {
		src := &countingSource{src: s.tokens(t, s.TLS, TestClientID)}
		c := s.Client(t, func(cfg *Config) { cfg.Tokens = src })
		for range 5 {
			if _, err := c.ListKeys(ctx, &tresorv1.ListKeysRequest{}); err != nil {
				t.Fatalf("ListKeys() err = %v, want nil", err)
			}
		}
		if n := src.n.Load(); n != 1 {
			t.Errorf("token source called %d times for 5 calls, want 1", n)
		}
	})
	t.Run("refreshed before expiry", func(t *testing.T) {
		// Tokens that live 1m10s, refreshed 1m before: a new one after 10s.
		src := &countingSource{src: s.tokens(t, s.TLS, TestClientID), life: 70 * time.Second}
		cache := newTokenCache(src, 0)
		now := time.Now()
		cache.now = func() time.Time { return now }
		if _, err := cache.token(ctx); err != nil {
			t.Fatal(err)
		}
		before := src.n.Load()
		now = now.Add(5 * time.Second)
		if _, err := cache.token(ctx); err != nil || src.n.Load() != before {
			t.Errorf("token() 5s later fetched again (%d -> %d), err = %v; want the cached token", before, src.n.Load(), err)
		}
		now = now.Add(6 * time.Second)
		if _, err := cache.token(ctx); err != nil || src.n.Load() != before+1 {
			t.Errorf("token() 11s later: source calls %d -> %d, err = %v; want one new token", before, src.n.Load(), err)
		}
	})
	t.Run("refused token replaced once", func(t *testing.T) {
		src := &countingSource{src: s.tokens(t, s.TLS, TestClientID), bad: 1}
		c := s.Client(t, func(cfg *Config) { cfg.Tokens = src })
		if _, err := c.ListKeys(ctx, &tresorv1.ListKeysRequest{}); err != nil {
			t.Fatalf("ListKeys() with a refused first token err = %v, want nil", err)
		}
		if n := src.n.Load(); n != 2 {
			t.Errorf("token source called %d times, want 2", n)
		}
	})
	t.Run("always refused", func(t *testing.T) {
		src := &countingSource{src: s.tokens(t, s.TLS, TestClientID), bad: 100}
		c := s.Client(t, func(cfg *Config) { cfg.Tokens = src })
		if _, err := c.ListKeys(ctx, &tresorv1.ListKeysRequest{}); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("ListKeys() err = %v, want ErrUnauthenticated", err)
		}
		if n := src.n.Load(); n != 2 {
			t.Errorf("token source called %d times, want 2 (one retry)", n)
		}
	})
	t.Run("token endpoint refuses a stranger's client_id", func(t *testing.T) {
		src, err := ClientCredentials(ClientCredentialsConfig{TokenURL: s.TokenURL, ClientID: TestClientID, TLS: s.OtherTLS})
		if err != nil {
			t.Fatal(err)
		}
		c := s.Client(t, func(cfg *Config) { cfg.Tokens = src; cfg.TLS = s.OtherTLS })
		_, err = c.ListKeys(ctx, &tresorv1.ListKeysRequest{})
		if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "invalid_client") {
			t.Fatalf("ListKeys() err = %v, want ErrUnauthenticated naming invalid_client", err)
		}
	})
	t.Run("a token bound to another certificate", func(t *testing.T) {
		// TestClientID's token over TestOtherID's certificate.
		c := s.Client(t, func(cfg *Config) { cfg.TLS = s.OtherTLS })
		if _, err := c.ListKeys(ctx, &tresorv1.ListKeysRequest{}); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("ListKeys() err = %v, want ErrUnauthenticated", err)
		}
	})
}

func TestClientCredentialsConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  ClientCredentialsConfig
	}{
		{"http", ClientCredentialsConfig{TokenURL: "http://idp.example/token", ClientID: "a"}},
		{"no host", ClientCredentialsConfig{TokenURL: "https:///token", ClientID: "a"}},
		{"no client id", ClientCredentialsConfig{TokenURL: "https://idp.example/token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ClientCredentials(tt.cfg); err == nil {
				t.Errorf("ClientCredentials(%+v) err = nil, want an error", tt.cfg)
			}
		})
	}
	if _, err := New(Config{TLS: nil, Address: "127.0.0.1:1"}); err == nil {
		t.Errorf("New() without TLS err = nil, want an error")
	}
	if _, err := New(Config{}); err == nil {
		t.Errorf("New() without an address err = nil, want an error")
	}
}

func TestRetries(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "down")
	type retryCase struct {
		name     string
		method   string
		errs     []error // what each attempt returns; then nil
		policy   RetryPolicy
		deadline time.Duration
		want     error
		attempts int
	}
	tests := []retryCase{
		{"recovers", tresorv1.CryptoService_Encrypt_FullMethodName, []error{unavailable, unavailable}, RetryPolicy{}, 0, nil, 3},
		{"gives up", tresorv1.CryptoService_Encrypt_FullMethodName, []error{unavailable, unavailable, unavailable, unavailable, unavailable}, RetryPolicy{}, 0, ErrUnavailable, 4},
		{"one attempt", tresorv1.CryptoService_Encrypt_FullMethodName, []error{unavailable}, RetryPolicy{MaxAttempts: 1}, 0, ErrUnavailable, 1},
		{"rotate key not retried", tresorv1.KeyService_RotateKey_FullMethodName, []error{unavailable}, RetryPolicy{}, 0, ErrUnavailable, 1},
		{"rotate root key not retried", tresorv1.AdminService_RotateRootKey_FullMethodName, []error{unavailable}, RetryPolicy{}, 0, ErrUnavailable, 1},
		{"other codes not retried", tresorv1.CryptoService_Encrypt_FullMethodName, []error{status.Error(codes.ResourceExhausted, "slow down")}, RetryPolicy{}, 0, ErrResourceExhausted, 1},
		{"internal not retried", tresorv1.CryptoService_Encrypt_FullMethodName, []error{status.Error(codes.Internal, "x")}, RetryPolicy{}, 0, ErrInternal, 1},
		{"deadline before backoff", tresorv1.CryptoService_Encrypt_FullMethodName, []error{unavailable, unavailable}, RetryPolicy{InitialBackoff: time.Hour, MaxBackoff: time.Hour}, time.Second, ErrUnavailable, 1},
		{"unknown method not retried", "/tresor.v1.KeyService/FutureMethod", []error{unavailable}, RetryPolicy{}, 0, ErrUnavailable, 1},
		{"health check not retried", "/grpc.health.v1.Health/Check", []error{unavailable}, RetryPolicy{}, 0, ErrUnavailable, 1},
	}
	// The server may have run a call it answers UNAVAILABLE (its audit log
	// failed; the connection dropped): only calls safe to repeat are.
	for _, m := range []string{
		tresorv1.KeyService_GetKey_FullMethodName, tresorv1.KeyService_ListKeys_FullMethodName,
		tresorv1.CryptoService_Encrypt_FullMethodName, tresorv1.CryptoService_Decrypt_FullMethodName,
		tresorv1.CryptoService_ReEncrypt_FullMethodName, tresorv1.CryptoService_GenerateDataKey_FullMethodName,
		tresorv1.CryptoService_GenerateDataKeyWithoutPlaintext_FullMethodName,
		tresorv1.CryptoService_BatchEncrypt_FullMethodName, tresorv1.CryptoService_BatchDecrypt_FullMethodName,
		tresorv1.AdminService_VerifyAudit_FullMethodName, tresorv1.AdminService_QueryAudit_FullMethodName,
		tresorv1.AdminService_GetRootKeyRotation_FullMethodName,
		tresorv1.FieldService_GetSchema_FullMethodName, tresorv1.FieldService_ListSchemas_FullMethodName,
		tresorv1.FieldService_ListSchemaVersions_FullMethodName,
		tresorv1.FieldService_ProtectDocument_FullMethodName, tresorv1.FieldService_RevealDocument_FullMethodName,
	} {
		tests = append(tests, retryCase{m + " retried", m, []error{unavailable, unavailable}, RetryPolicy{}, 0, nil, 3})
	}
	for _, m := range []string{
		tresorv1.KeyService_CreateKey_FullMethodName, tresorv1.KeyService_UpdateKey_FullMethodName,
		tresorv1.KeyService_RotateKey_FullMethodName, tresorv1.KeyService_DisableKey_FullMethodName,
		tresorv1.KeyService_EnableKey_FullMethodName, tresorv1.KeyService_ScheduleKeyDeletion_FullMethodName,
		tresorv1.KeyService_CancelKeyDeletion_FullMethodName, tresorv1.AdminService_RotateRootKey_FullMethodName,
		tresorv1.FieldService_PutSchema_FullMethodName,
	} {
		tests = append(tests, retryCase{m + " not retried", m, []error{unavailable, unavailable}, RetryPolicy{}, 0, ErrUnavailable, 1})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var slept []time.Duration
			r := &retrier{policy: tt.policy.withDefaults(), sleep: func(_ context.Context, d time.Duration) error {
				slept = append(slept, d)
				return nil
			}}
			attempts := 0
			invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
				attempts++
				if attempts <= len(tt.errs) {
					return tt.errs[attempts-1]
				}
				return nil
			}
			ctx := context.Background()
			if tt.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				defer cancel()
			}
			err := r.unary(ctx, tt.method, nil, nil, nil, invoker)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("unary() err = %v, want %v", err, tt.want)
			}
			if attempts != tt.attempts {
				t.Errorf("attempts = %d, want %d", attempts, tt.attempts)
			}
			if len(slept) != max(0, attempts-1) {
				t.Errorf("slept %d times for %d attempts, want %d", len(slept), attempts, attempts-1)
			}
			backoff := r.policy.InitialBackoff
			for i, d := range slept {
				if d <= 0 || d > backoff {
					t.Errorf("wait %d = %v, want in (0, %v]", i, d, backoff)
				}
				backoff = min(2*backoff, r.policy.MaxBackoff)
			}
		})
	}
}

func TestRetriesAgainstAStoppedServer(t *testing.T) {
	s := StartTestServer(t)
	// A port nothing listens on: every attempt is UNAVAILABLE.
	c := s.Client(t, func(cfg *Config) {
		cfg.Address = "127.0.0.1:1"
		cfg.Retry = RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
	})
	_, err := c.ListKeys(context.Background(), &tresorv1.ListKeysRequest{})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("ListKeys() err = %v, want ErrUnavailable", err)
	}
}

// TestClientCredentialsRequests counts the requests at the token
// endpoint: ClientCredentials fetches on every Token call, and the
// Client's cache decides when to call.
func TestClientCredentialsRequests(t *testing.T) {
	s := StartTestServer(t)
	ctx := context.Background()
	tests := []struct {
		name          string
		refreshBefore time.Duration
		refuse        int64 // the first tokens the endpoint hands out that tresor refuses
		calls         int
		want          int64 // requests at the token endpoint
	}{
		{"five calls, one token", 0, 0, 5, 1},
		{"a refused token, exactly one new request", 0, 1, 1, 2},
		{"a refused token, then the new one cached", 0, 1, 5, 2},
		// The endpoint's tokens live 5 minutes: each call finds the
		// cached one within RefreshBefore of its expiry.
		{"expiry within RefreshBefore", 10 * time.Minute, 0, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := s.Client(t, func(cfg *Config) { cfg.RefreshBefore = tt.refreshBefore })
			s.RefuseNextTokens(tt.refuse)
			defer s.RefuseNextTokens(0)
			before := s.TokenRequests()
			for range tt.calls {
				if _, err := c.ListKeys(ctx, &tresorv1.ListKeysRequest{}); err != nil {
					t.Fatalf("ListKeys() err = %v, want nil", err)
				}
			}
			if got := s.TokenRequests() - before; got != tt.want {
				t.Errorf("token endpoint requests = %d for %d calls, want %d", got, tt.calls, tt.want)
			}
		})
	}
	t.Run("the source does not cache", func(t *testing.T) {
		src := s.tokens(t, s.TLS, TestClientID)
		before := s.TokenRequests()
		for range 2 {
			if _, err := src.Token(); err != nil {
				t.Fatalf("Token() err = %v, want nil", err)
			}
		}
		if got := s.TokenRequests() - before; got != 2 {
			t.Errorf("token endpoint requests = %d for 2 Token calls, want 2", got)
		}
	})
}

// hangingListener accepts connections and never answers; it and its
// connections are closed when tb ends.
func hangingListener(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// closedAddr is an address nothing listens on.
func closedAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// statusEndpoint is a token endpoint that answers every request with
// code and an OAuth error; its TLS configuration for ClientCredentials
// trusts it and presents base's client certificate.
func statusEndpoint(tb testing.TB, base *tls.Config, code int) (string, *tls.Config) {
	tb.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, `{"error":"invalid_client","error_description":"unknown client","request":"client_secret=hunter2"}`)
	}))
	tb.Cleanup(srv.Close)
	cfg := base.Clone()
	cfg.RootCAs = x509.NewCertPool()
	cfg.RootCAs.AddCert(srv.Certificate())
	return srv.URL + "/token", cfg
}

// TestTokenEndpointFailures: an endpoint that cannot answer is
// UNAVAILABLE, retried; one that refuses is UNAUTHENTICATED; one that
// hangs holds a call no longer than the call's deadline.
func TestTokenEndpointFailures(t *testing.T) {
	s := StartTestServer(t)
	url503, tls503 := statusEndpoint(t, s.TLS, http.StatusServiceUnavailable)
	url401, tls401 := statusEndpoint(t, s.TLS, http.StatusUnauthorized)
	tests := []struct {
		name     string
		url      string
		tls      *tls.Config
		deadline time.Duration // 0: the Client's default
		parallel int           // calls made at once
		want     error
		fetches  int64 // token source calls
	}{
		{"endpoint down", "https://" + closedAddr(t) + "/token", s.TLS, 0, 1, ErrUnavailable, 3},
		{"endpoint answers 503", url503, tls503, 0, 1, ErrUnavailable, 3},
		{"endpoint answers 401", url401, tls401, 0, 1, ErrUnauthenticated, 2},
		{"endpoint hangs", "https://" + hangingListener(t) + "/token", s.TLS, 200 * time.Millisecond, 4, ErrDeadlineExceeded, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := ClientCredentials(ClientCredentialsConfig{TokenURL: tt.url, ClientID: TestClientID, TLS: tt.tls})
			if err != nil {
				t.Fatal(err)
			}
			counted := &countingSource{src: src}
			c := s.Client(t, func(cfg *Config) {
				cfg.Tokens = counted
				cfg.Retry = RetryPolicy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
			})
			start := time.Now()
			errs := make(chan error, tt.parallel)
			for range tt.parallel {
				go func() {
					ctx := context.Background()
					if tt.deadline > 0 {
						var cancel context.CancelFunc
						ctx, cancel = context.WithTimeout(ctx, tt.deadline)
						defer cancel()
					}
					_, err := c.ListKeys(ctx, &tresorv1.ListKeysRequest{})
					errs <- err
				}()
			}
			for range tt.parallel {
				err := <-errs
				if !errors.Is(err, tt.want) {
					t.Errorf("ListKeys() err = %v, want %v", err, tt.want)
				}
				if tt.want != ErrUnauthenticated && errors.Is(err, ErrUnauthenticated) {
					t.Errorf("ListKeys() err = %v, want no ErrUnauthenticated: the endpoint did not refuse", err)
				}
				if err != nil && strings.Contains(err.Error(), "hunter2") {
					t.Errorf("ListKeys() err = %v repeats the endpoint's answer", err)
				}
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("calls took %v, want under 2s", d)
			}
			if got := counted.n.Load(); got != tt.fetches {
				t.Errorf("token source calls = %d, want %d", got, tt.fetches)
			}
		})
	}
}

func TestTokenError(t *testing.T) {
	retrieve := func(code int) error {
		r := &oauth2.RetrieveError{Body: []byte("client_secret=hunter2"), ErrorCode: "invalid_client"}
		if code != 0 {
			r.Response = &http.Response{StatusCode: code}
		}
		return r
	}
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"400", retrieve(http.StatusBadRequest), codes.Unauthenticated},
		{"401", retrieve(http.StatusUnauthorized), codes.Unauthenticated},
		{"403", retrieve(http.StatusForbidden), codes.Unauthenticated},
		{"500", retrieve(http.StatusInternalServerError), codes.Unavailable},
		{"503", retrieve(http.StatusServiceUnavailable), codes.Unavailable},
		{"no response", retrieve(0), codes.Unavailable},
		{"connection refused", &url.Error{Op: "Post", URL: "https://idp/token", Err: errors.New("connection refused")}, codes.Unavailable},
		{"wrapped net error", fmt.Errorf("fetch: %w", &net.OpError{Op: "dial", Err: errors.New("no route")}), codes.Unavailable},
		{"a source's own error", errors.New("no credentials configured"), codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tokenError(tt.err)
			st, ok := status.FromError(err)
			if !ok || st.Code() != tt.want {
				t.Errorf("tokenError(%v) = %v, want code %v", tt.err, err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("tokenError(%v) = %v repeats the response body", tt.err, err)
			}
		})
	}
}

func TestClientCredentialsTransport(t *testing.T) {
	tests := []struct {
		name    string
		tls     *tls.Config
		wantMin uint16
	}{
		{"no TLS", nil, tls.VersionTLS12},
		{"tresor's server name and TLS 1.0", &tls.Config{ServerName: "tresor.internal", MinVersion: tls.VersionTLS10}, tls.VersionTLS12},
		{"TLS 1.3 kept", &tls.Config{ServerName: "tresor.internal", MinVersion: tls.VersionTLS13}, tls.VersionTLS13},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before *tls.Config
			if tt.tls != nil {
				before = tt.tls.Clone()
			}
			src, err := ClientCredentials(ClientCredentialsConfig{TokenURL: "https://idp.example/token", ClientID: "a", TLS: tt.tls})
			if err != nil {
				t.Fatal(err)
			}
			ccs, ok := src.(*clientCredentialsSource)
			if !ok {
				t.Fatalf("ClientCredentials() = %T, want *clientCredentialsSource", src)
			}
			tr := ccs.hc.Transport.(*http.Transport)
			if c := tr.TLSClientConfig; c.ServerName != "" || c.MinVersion != tt.wantMin {
				t.Errorf("TLS ServerName, MinVersion = %q, %x; want \"\", %x", c.ServerName, c.MinVersion, tt.wantMin)
			}
			if tr.IdleConnTimeout != 90*time.Second {
				t.Errorf("IdleConnTimeout = %v, want 90s", tr.IdleConnTimeout)
			}
			if tt.tls != nil && (tt.tls.ServerName != before.ServerName || tt.tls.MinVersion != before.MinVersion) {
				t.Errorf("ClientCredentials() changed the caller's TLS configuration")
			}
		})
	}
}
