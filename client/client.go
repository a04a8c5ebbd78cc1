package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// Config configures New.
type Config struct {
	// Address is tresor's gRPC listener, host:port. Required.
	Address string
	// TLS is the client's TLS configuration: RootCAs that verify the
	// server, and the client certificate tresor requires (mutual TLS).
	// Required; see TLSFromFiles.
	TLS *tls.Config
	// Tokens gives the access token sent with every call: ClientCredentials
	// for OAuth 2.0 client credentials, or any oauth2.TokenSource. The
	// Client caches the tokens itself, and asks the source for a new one a
	// minute (RefreshBefore) before the cached one expires, and once after
	// the server answers UNAUTHENTICATED: so the source should fetch a new
	// token on every call of its Token method. A source that caches
	// (oauth2.ReuseTokenSource, the TokenSource method of
	// clientcredentials.Config) hands back the token the Client is
	// replacing, which defeats both. One fetch is in flight at a time;
	// calls waiting for it give up when their context ends. A token
	// endpoint that cannot be reached or answers 5xx fails the call with
	// UNAVAILABLE (retried as Retry says); one that refuses the client
	// (4xx) fails it with UNAUTHENTICATED. Required unless the server runs
	// without tokens.
	Tokens oauth2.TokenSource
	// RefreshBefore is how long before its expiry a token is replaced;
	// zero means one minute.
	RefreshBefore time.Duration
	// Timeout bounds each call whose context has no deadline; zero means
	// 30 seconds. Retries happen within it.
	Timeout time.Duration
	// Retry governs retries of UNAVAILABLE, for the calls safe to repeat.
	Retry RetryPolicy
	// DialOptions are added to the gRPC client's options (interceptors
	// of the caller's own, a load-balancing config, ...).
	DialOptions []grpc.DialOption
}

// RetryPolicy governs how calls that fail with UNAVAILABLE are retried:
// with exponential backoff and full jitter, within the call's deadline.
// No other code is retried.
//
// UNAVAILABLE does not prove that the server did nothing (it withholds the
// result of a call it ran when its audit log cannot record it; a
// connection may drop after the server acted), so only the calls that are
// safe to repeat are retried: GetKey, ListKeys, Encrypt, Decrypt,
// ReEncrypt, GenerateDataKey, GenerateDataKeyWithoutPlaintext,
// BatchEncrypt, BatchDecrypt, GetRootKeyRotation, VerifyAudit,
// QueryAudit, GetSchema, ListSchemas, ListSchemaVersions, ProtectDocument
// and RevealDocument. A repetition of one of those changes no state; it
// counts again against rate limits and decrypt budgets, and is audited
// again. Calls that change state (CreateKey, UpdateKey, RotateKey,
// DisableKey, EnableKey, ScheduleKeyDeletion, CancelKeyDeletion,
// RotateRootKey, PutSchema) are tried once: on ErrUnavailable, read the
// state back (GetKey, GetSchema, GetRootKeyRotation) before trying again.
// Streams are never retried.
type RetryPolicy struct {
	// MaxAttempts counts the first attempt; zero means 4, one disables
	// retries.
	MaxAttempts int
	// InitialBackoff (default 50ms) doubles after every attempt up to
	// MaxBackoff (default 2s).
	InitialBackoff, MaxBackoff time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 4
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = 50 * time.Millisecond
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = 2 * time.Second
	}
	if p.MaxBackoff < p.InitialBackoff {
		p.MaxBackoff = p.InitialBackoff
	}
	return p
}

// Client calls tresor over one gRPC connection (HTTP/2, mutual TLS). It is
// safe for concurrent use; make one per process and share it.
type Client struct {
	conn    *grpc.ClientConn
	keys    tresorv1.KeyServiceClient
	crypto  tresorv1.CryptoServiceClient
	admin   tresorv1.AdminServiceClient
	fields  tresorv1.FieldServiceClient
	timeout time.Duration
}

// New connects to tresor. The connection is made lazily, on the first
// call; a wrong address or certificate shows as that call's error
// (UNAVAILABLE, after the retries).
func New(cfg Config) (*Client, error) {
	if cfg.Address == "" {
		return nil, errors.New("client: Config.Address is empty")
	}
	if cfg.TLS == nil {
		return nil, errors.New("client: Config.TLS is nil: tresor is served over mutual TLS only")
	}
	tlsCfg := cfg.TLS.Clone()
	if tlsCfg.MinVersion < tls.VersionTLS12 {
		tlsCfg.MinVersion = tls.VersionTLS12
	}
	c := &Client{timeout: cfg.Timeout}
	if c.timeout <= 0 {
		c.timeout = 30 * time.Second
	}
	var tokens *tokenCache
	if cfg.Tokens != nil {
		tokens = newTokenCache(cfg.Tokens, cfg.RefreshBefore)
	}
	r := &retrier{policy: cfg.Retry.withDefaults(), tokens: tokens, sleep: sleepContext}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithChainUnaryInterceptor(r.unary),
		grpc.WithChainStreamInterceptor(streamErrors),
	}
	if tokens != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(tokens))
	}
	opts = append(opts, cfg.DialOptions...)
	conn, err := grpc.NewClient(cfg.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c.conn = conn
	c.keys = tresorv1.NewKeyServiceClient(conn)
	c.crypto = tresorv1.NewCryptoServiceClient(conn)
	c.admin = tresorv1.NewAdminServiceClient(conn)
	c.fields = tresorv1.NewFieldServiceClient(conn)
	return c, nil
}

// Close closes the connection. Calls in flight fail with ErrCanceled.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection, for services the Client does not wrap
// (gRPC health, for one).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// withTimeout gives ctx the Client's default deadline when it has none.
func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// TLSFromFiles builds the client's mutual-TLS configuration from PEM files:
// the CA bundle that signed the server's certificate, and the client's
// certificate and private key.
func TLSFromFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("client: CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("client: CA bundle %s holds no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		// LoadX509KeyPair's errors name files and PEM block types, never
		// key bytes.
		return nil, fmt.Errorf("client: client certificate: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{cert}}, nil
}
