package loadtest

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tresorkms/tresor/envelope"
	examplepolicies "github.com/tresorkms/tresor/examples/policies"
	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/devpki"
	"github.com/tresorkms/tresor/internal/devtoken"
	"github.com/tresorkms/tresor/internal/limits"
	"github.com/tresorkms/tresor/internal/policy"
	"github.com/tresorkms/tresor/internal/server"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms/localkek"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// KeyName is the AES256_GCM key the harness creates and encrypts with. Its
// labels are owner=ClientID and sensitivity=confidential, so that the
// example policies (owner-protect-reveal) let the bench client use it.
const KeyName = "bench"

// ClientID is the bench client's workload identity: the SPIFFE ID in its
// certificate, which owns KeyName.
const ClientID = "spiffe://tresor.bench/client"

// AssociatedDataSize is the size of the associated data every Encrypt sends.
const AssociatedDataSize = 32

// TokenLifetime is the lifetime of the bench client's access tokens (authn
// accepts at most 15 minutes). The client mints a new one when half of it
// has passed, so a run of any length always presents a valid token.
const TokenLifetime = 10 * time.Minute

// The protected server's token issuer and audience.
const (
	issuerURL     = "https://tresor-bench.invalid"
	tokenAudience = "tresor"
	tokenSubject  = "bench"
)

// highRate is the protected server's rate limit for every action class and
// for all calls together: high enough never to refuse a call, so the
// limiter's work is measured and not its refusals.
var highRate = limits.Rate{PerSecond: 1e9, Burst: 1e9}

// rateClasses are the server's action classes (internal/server methods.go).
var rateClasses = []string{"crypto", "admin", "read", "health"}

// ProfileLabel is the pprof label key the harness sets on every goroutine of
// the servers it starts ("server") and that Label sets on load callers
// ("client"): `go tool pprof -tagfocus side=server` keeps the server side of
// a profile of the shared process. Server goroutines also carry the label
// ServerLabel: "protected", "open" or "baseline".
const ProfileLabel = "side"

// ServerLabel is the pprof label key naming which server a goroutine serves.
const ServerLabel = "server"

// HarnessOptions configure Start.
type HarnessOptions struct {
	// Dir holds the SQLite database, the root key file, the token issuer's
	// keys and JWKS and the policies; empty means a new temporary directory,
	// removed by Close.
	Dir string
	// Logger is tresor's server logger. Nil means a JSON logger at Info
	// level writing to io.Discard: the servers format their one line per
	// call, as in production, without the cost of a terminal or a file.
	Logger *slog.Logger
	// HTTP1 makes the REST clients speak HTTP/1.1 (one connection per
	// caller) instead of HTTP/2 (one multiplexed connection, as gRPC).
	HTTP1 bool
}

// Harness is two tresor servers on one keyring (SQLite store, a local-file
// root key, key KeyName) and a bare net/http AES-256-GCM baseline server,
// all on 127.0.0.1 with the same mutual TLS setup, with clients for each:
//
//   - protected: the whole chain, as in production: mutual TLS, a bearer
//     token (ES256, bound to the client certificate, from a development
//     issuer whose JWKS is a file), request validation, the shipped example
//     policies (examples/policies) and a rate limiter set too high to
//     refuse; gRPC and REST.
//   - open: server.Options.Unprotected, no token and no policy; gRPC only.
//     The floor the chain is compared with.
type Harness struct {
	// GRPCAddr and HTTPAddr are the protected server's gRPC and REST
	// listeners, OpenGRPCAddr the open server's gRPC listener and
	// BaselineAddr the baseline's.
	GRPCAddr, HTTPAddr, OpenGRPCAddr, BaselineAddr string
	// Conn is one gRPC client connection (HTTP/2, mutual TLS) to the
	// protected server, shared by all callers as an application would; it
	// sends the client's bearer token with every call. OpenConn is the same
	// to the open server, without a token.
	Conn, OpenConn *grpc.ClientConn
	// REST and Baseline are the HTTPS clients of the protected server's REST
	// API and of the baseline; separate clients, equal configuration.
	// RESTEncrypt adds the bearer token to its requests.
	REST, Baseline *http.Client
	// Ring is the servers' keyring.
	Ring *envelope.Keyring

	crypto, openCrypto tresorv1.CryptoServiceClient
	health, openHealth healthpb.HealthClient
	tokens             *devtoken.Source

	cancel   context.CancelFunc
	served   []chan error
	baseSrv  *http.Server
	baseDone chan error
	authn    *authn.Authenticator
	st       *store.SQLite
	kek      *localkek.RootKey
	rmDir    string
	once     sync.Once
	closeErr error
}

// Start starts the servers and connects the clients. Close stops them.
func Start(ctx context.Context, opts HarnessOptions) (h *Harness, err error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	h = &Harness{}
	defer func() {
		if err != nil {
			_ = h.Close()
			h = nil
		}
	}()
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "tresor-bench-*"); err != nil {
			return nil, fmt.Errorf("loadtest: %w", err)
		}
		h.rmDir = dir
	}

	// Mutual TLS: a CA, a server certificate for 127.0.0.1, a client certificate.
	ca, err := devpki.NewCA("tresor bench CA", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	srvPair, err := ca.IssueServer([]string{"127.0.0.1", "localhost"}, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	cliPair, err := ca.IssueClient("bench", ClientID, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	srvCert, err := srvPair.TLSCertificate()
	if err != nil {
		return nil, err
	}
	cliCert, err := cliPair.TLSCertificate()
	if err != nil {
		return nil, err
	}
	srvTLS := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{srvCert},
		ClientCAs:    ca.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{"h2", "http/1.1"},
	}
	cliTLS := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool(), Certificates: []tls.Certificate{cliCert}}

	// Store, root key, keyring, key.
	h.st, err = store.OpenSQLite(ctx, filepath.Join(dir, "keys.db"))
	if err != nil {
		return nil, err
	}
	keyPath := filepath.Join(dir, "root.key")
	if err := writeRootKey(keyPath); err != nil {
		return nil, err
	}
	h.kek, err = localkek.Open(ctx, keyPath, logger)
	if err != nil {
		return nil, err
	}
	h.Ring, err = envelope.New(h.st, h.kek, envelope.Options{})
	if err != nil {
		return nil, err
	}
	if _, err := h.Ring.CreateKey(ctx, envelope.KeySpec{Name: KeyName, Type: store.KeyTypeAES256GCM, Labels: map[string]string{
		envelope.LabelOwner:       ClientID,
		envelope.LabelSensitivity: "confidential",
	}}); err != nil {
		return nil, err
	}

	// The protected server's perimeter: token issuer and authenticator,
	// example policies, rate limiter.
	iss, err := devissuer.Open(filepath.Join(dir, "issuer"))
	if err != nil {
		return nil, err
	}
	iss.SetURL(issuerURL)
	jwks := filepath.Join(dir, "issuer", "jwks.json")
	if err := iss.WriteJWKS(jwks); err != nil {
		return nil, err
	}
	h.authn, err = authn.New(ctx, authn.Config{RequireToken: true, Logger: logger, Tokens: &authn.TokenConfig{
		Issuer: issuerURL, Audiences: []string{tokenAudience}, JWKSFile: jwks,
	}})
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	if h.tokens, err = newTokenSource(iss, cliCert.Leaf, time.Now); err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	popts, err := writeExamplePolicies(filepath.Join(dir, "policies"))
	if err != nil {
		return nil, err
	}
	pol, err := policy.NewReloading(popts, logger)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	rates := limits.RateConfig{Global: highRate, Classes: map[string]limits.Rate{}}
	for _, c := range rateClasses {
		rates.Classes[c] = highRate
	}
	lim, err := limits.NewLimiter(rates, time.Now)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}

	// The two tresor servers, serving until Close.
	protected, err := server.New(h.Ring, server.Options{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: srvTLS, Logger: logger,
		Authenticator: h.authn, Authorizer: pol, Limiter: lim,
	})
	if err != nil {
		return nil, err
	}
	open, err := server.New(h.Ring, server.Options{GRPCAddr: "127.0.0.1:0", TLS: srvTLS, Logger: logger, Unprotected: true})
	if err != nil {
		return nil, err
	}
	for _, s := range []*server.Server{protected, open} {
		if err := s.Listen(); err != nil {
			return nil, err
		}
	}
	h.GRPCAddr, h.HTTPAddr = protected.Addrs()
	h.OpenGRPCAddr, _ = open.Addrs()
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h.cancel = cancel
	// Goroutines inherit their creator's labels: every goroutine the servers
	// start (connections, streams, handlers) is labeled side=server.
	for name, s := range map[string]*server.Server{"protected": protected, "open": open} {
		served := make(chan error, 1)
		h.served = append(h.served, served)
		go pprof.Do(sctx, pprof.Labels(ProfileLabel, "server", ServerLabel, name), func(ctx context.Context) { served <- s.Serve(ctx) })
	}

	// The baseline, on its own port with the same TLS setup.
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("loadtest: baseline listen: %w", err)
	}
	h.BaselineAddr = bl.Addr().String()
	baseline, err := NewBaselineHandler()
	if err != nil {
		bl.Close()
		return nil, err
	}
	h.baseSrv = &http.Server{
		Handler:           baseline,
		TLSConfig:         srvTLS.Clone(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	h.baseDone = make(chan error, 1)
	go pprof.Do(sctx, pprof.Labels(ProfileLabel, "server", ServerLabel, "baseline"), func(context.Context) {
		err := h.baseSrv.ServeTLS(bl, "", "")
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		h.baseDone <- err
	})

	// Clients, on loopback only.
	for _, a := range []string{h.GRPCAddr, h.HTTPAddr, h.OpenGRPCAddr, h.BaselineAddr} {
		if err := RequireLoopback(a); err != nil {
			return nil, err
		}
	}
	// The goroutines of the gRPC channels (their transports' readers and
	// writers among them) are started from here: label them as the load's.
	Label(ctx, func(context.Context) {
		creds := grpc.WithTransportCredentials(credentials.NewTLS(cliTLS))
		if h.Conn, err = grpc.NewClient(h.GRPCAddr, creds, grpc.WithPerRPCCredentials(h.tokens)); err != nil {
			return
		}
		h.OpenConn, err = grpc.NewClient(h.OpenGRPCAddr, creds)
	})
	if err != nil {
		return nil, fmt.Errorf("loadtest: gRPC client: %w", err)
	}
	h.crypto = tresorv1.NewCryptoServiceClient(h.Conn)
	h.health = healthpb.NewHealthClient(h.Conn)
	h.openCrypto = tresorv1.NewCryptoServiceClient(h.OpenConn)
	h.openHealth = healthpb.NewHealthClient(h.OpenConn)
	h.REST = newHTTPClient(cliTLS, opts.HTTP1)
	h.Baseline = newHTTPClient(cliTLS, opts.HTTP1)

	// Wait until both servers answer (Serve sets the health status).
	deadline := time.Now().Add(10 * time.Second)
	for _, check := range []func(context.Context) error{h.GRPCHealth(), healthCheck(h.openHealth)} {
		for {
			err := check(ctx)
			if err == nil {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return nil, fmt.Errorf("loadtest: tresor did not become healthy: %w", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return h, nil
}

// writeExamplePolicies writes the schema and the shipped example policies
// (examples/policies) into dir.
func writeExamplePolicies(dir string) (policy.Options, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return policy.Options{}, fmt.Errorf("loadtest: policies: %w", err)
	}
	entries, err := examplepolicies.Files.ReadDir(".")
	if err != nil {
		return policy.Options{}, fmt.Errorf("loadtest: policies: %w", err)
	}
	for _, e := range entries {
		b, err := examplepolicies.Files.ReadFile(e.Name())
		if err != nil {
			return policy.Options{}, fmt.Errorf("loadtest: policies: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			return policy.Options{}, fmt.Errorf("loadtest: policies: %w", err)
		}
	}
	return policy.Options{SchemaFile: filepath.Join(dir, examplepolicies.SchemaFile), PolicyDir: dir, Location: time.UTC}, nil
}

// newTokenSource is the bench client's bearer token: a token bound to the
// client certificate, minted on first use and again once half of
// TokenLifetime has passed. It is the protected gRPC connection's per-RPC
// credentials and the source of the REST client's Authorization header.
func newTokenSource(iss *devissuer.Issuer, cert *x509.Certificate, now func() time.Time) (*devtoken.Source, error) {
	return devtoken.New(devtoken.Config{Issuer: iss, Token: devissuer.TokenRequest{Subject: tokenSubject, Audience: tokenAudience, Lifetime: TokenLifetime, BindTo: cert},
		RenewAfter: 0.5, Now: now})
}

func newHTTPClient(cfg *tls.Config, http1 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     cfg.Clone(),
		ForceAttemptHTTP2:   !http1,
		MaxIdleConns:        MaxConcurrency,
		MaxIdleConnsPerHost: MaxConcurrency,
		IdleConnTimeout:     90 * time.Second,
	}
	if http1 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// writeRootKey writes a new random 32-byte root key file, mode 0600.
func writeRootKey(path string) error {
	key := make([]byte, localkek.KeySize)
	defer clear(key)
	_, _ = rand.Read(key)
	if err := os.WriteFile(path, key, 0o600); err != nil {
		return fmt.Errorf("loadtest: root key: %w", err)
	}
	return nil
}

// Close stops the servers and clients and removes the temporary directory.
func (h *Harness) Close() error {
	h.once.Do(func() {
		var errs []error
		for _, c := range []*grpc.ClientConn{h.Conn, h.OpenConn} {
			if c != nil {
				errs = append(errs, c.Close())
			}
		}
		for _, c := range []*http.Client{h.REST, h.Baseline} {
			if c != nil {
				c.CloseIdleConnections()
			}
		}
		if h.cancel != nil {
			h.cancel()
			for _, served := range h.served {
				errs = append(errs, <-served)
			}
		}
		if h.baseSrv != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			errs = append(errs, h.baseSrv.Shutdown(sctx))
			cancel()
			errs = append(errs, <-h.baseDone)
		}
		if h.authn != nil {
			errs = append(errs, h.authn.Close())
		}
		if h.st != nil {
			errs = append(errs, h.st.Close())
		}
		if h.kek != nil {
			errs = append(errs, h.kek.Close())
		}
		if h.rmDir != "" {
			errs = append(errs, os.RemoveAll(h.rmDir))
		}
		h.closeErr = errors.Join(errs...)
	})
	return h.closeErr
}

// Payload returns a random plaintext of size bytes and random associated
// data of AssociatedDataSize bytes.
func Payload(size int) (plaintext, associatedData []byte) {
	plaintext = make([]byte, size)
	associatedData = make([]byte, AssociatedDataSize)
	_, _ = rand.Read(plaintext)
	_, _ = rand.Read(associatedData)
	return plaintext, associatedData
}

// GRPCHealth returns the empty call to the protected server:
// grpc.health.v1.Health/Check, which passes the same transport, TLS and
// interceptor chain (token, policy, rate limiter) as Encrypt.
func (h *Harness) GRPCHealth() func(context.Context) error { return healthCheck(h.health) }

func healthCheck(c healthpb.HealthClient) func(context.Context) error {
	req := &healthpb.HealthCheckRequest{}
	return func(ctx context.Context) error {
		resp, err := c.Check(ctx, req)
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("health: %v", resp.GetStatus())
		}
		return nil
	}
}

// GRPCEncrypt returns a gRPC Encrypt of a random size-byte plaintext with
// KeyName on the protected server (the whole chain).
func (h *Harness) GRPCEncrypt(size int) func(context.Context) error {
	return encryptOp(h.crypto, size)
}

// GRPCEncryptOpen returns the same Encrypt on the open server (no token,
// no policy, no rate limiter).
func (h *Harness) GRPCEncryptOpen(size int) func(context.Context) error {
	return encryptOp(h.openCrypto, size)
}

// encryptOp is an Encrypt of a random size-byte plaintext with KeyName.
// The request is built once; it is only read while marshaled.
func encryptOp(c tresorv1.CryptoServiceClient, size int) func(context.Context) error {
	pt, ad := Payload(size)
	req := &tresorv1.EncryptRequest{Key: KeyName, Plaintext: pt, AssociatedData: ad}
	return func(ctx context.Context) error {
		resp, err := c.Encrypt(ctx, req)
		if err != nil {
			return err
		}
		if resp.GetCiphertext() == "" || resp.GetKeyVersion() != 1 {
			return fmt.Errorf("encrypt: unexpected answer (version %d)", resp.GetKeyVersion())
		}
		return nil
	}
}

// EncryptBody is the JSON body of a REST Encrypt of plaintext with associatedData.
func EncryptBody(plaintext, associatedData []byte) []byte {
	b, _ := json.Marshal(map[string]string{
		"plaintext":      base64.StdEncoding.EncodeToString(plaintext),
		"associatedData": base64.StdEncoding.EncodeToString(associatedData),
	})
	return b
}

// RESTEncrypt returns tresor's REST Encrypt, POST /v1/keys/bench:encrypt on
// the protected server with the client's bearer token, of a random
// size-byte plaintext.
func (h *Harness) RESTEncrypt(size int) func(context.Context) error {
	return restOp(h.REST, "https://"+h.HTTPAddr+"/v1/keys/"+KeyName+":encrypt", EncryptBody(Payload(size)), h.tokens.Authorization)
}

// RESTBaseline returns the same request (without a token) to the bare
// baseline server.
func (h *Harness) RESTBaseline(size int) func(context.Context) error {
	return restOp(h.Baseline, "https://"+h.BaselineAddr+"/v1/keys/"+KeyName+":encrypt", EncryptBody(Payload(size)), nil)
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// restOp posts body to url, with the Authorization header auth returns
// when auth is not nil, and checks for a 200 answer carrying a ciphertext.
// The client does the same small, fixed work for tresor and the baseline: it
// does not decode the answer.
func restOp(c *http.Client, url string, body []byte, auth func() (string, error)) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		if auth != nil {
			a, err := auth()
			if err != nil {
				return err
			}
			req.Header.Set("Authorization", a)
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		buf := bufPool.Get().(*bytes.Buffer)
		buf.Reset()
		defer bufPool.Put(buf)
		_, err = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, buf.Bytes())
		}
		if !bytes.Contains(buf.Bytes(), []byte(`"ciphertext"`)) {
			return fmt.Errorf("no ciphertext in the answer: %.200s", buf.Bytes())
		}
		return nil
	}
}

// baselineRequest and baselineResponse are the baseline's JSON: the field
// names of tresor's EncryptRequest and EncryptResponse; []byte is base64.
type baselineRequest struct {
	Plaintext      []byte `json:"plaintext"`
	AssociatedData []byte `json:"associatedData"`
}

type baselineResponse struct {
	Ciphertext string `json:"ciphertext"`
	KeyVersion int    `json:"keyVersion"`
}

// NewBaselineHandler returns the bare baseline: a net/http handler for
// POST /v1/keys/{key}:encrypt that decodes the JSON body (unknown fields are
// refused, as tresor refuses them), seals the plaintext with AES-256-GCM
// under a random nonce and a fixed in-memory key, and encodes the answer as
// JSON. No interceptors, no keyring, no protobuf: the floor for the same
// HTTP, TLS and JSON work.
func NewBaselineHandler() (http.Handler, error) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/keys/{op}", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.PathValue("op"), ":encrypt") {
			http.NotFound(w, r)
			return
		}
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, server.DefaultMaxRequestBytes))
		dec.DisallowUnknownFields()
		var req baselineRequest
		if err := dec.Decode(&req); err != nil || len(req.Plaintext) == 0 {
			http.Error(w, `{"code":3,"message":"bad request"}`, http.StatusBadRequest)
			return
		}
		nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(req.Plaintext)+aead.Overhead())
		_, _ = rand.Read(nonce)
		sealed := aead.Seal(nonce, nonce, req.Plaintext, req.AssociatedData)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(baselineResponse{
			Ciphertext: base64.RawURLEncoding.EncodeToString(sealed),
			KeyVersion: 1,
		})
	})
	return mux, nil
}

// Label runs f with the pprof label side=client, for load callers.
func Label(ctx context.Context, f func(context.Context)) {
	pprof.Do(ctx, pprof.Labels(ProfileLabel, "client"), f)
}
