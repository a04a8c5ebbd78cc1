// Package server serves tresor's API over gRPC and over REST (grpc-gateway),
// both on TLS. It holds the only gRPC code in tresor: the service
// implementations, the one interceptor chain (chain.go) and the one map from
// domain errors to status codes (errors.go).
//
// Reach for [New] with a Keyring and [Options], then [Server.Serve].
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"buf.build/go/protovalidate"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/fields"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// Defaults for Options.
const (
	DefaultMaxRequestBytes = 8 << 20
	DefaultShutdownTimeout = 15 * time.Second
)

// Options configure a Server.
type Options struct {
	// GRPCAddr and HTTPAddr are the listen addresses, such as
	// "127.0.0.1:8443". An empty HTTPAddr serves no REST API.
	GRPCAddr, HTTPAddr string
	// TLS is the server's TLS configuration. It must require and verify
	// client certificates (mutual TLS) unless Insecure is set.
	TLS *tls.Config
	// Insecure serves plaintext. Tests only; never in production.
	Insecure bool
	// MaxRequestBytes bounds a request body (REST) or message (gRPC); larger
	// requests are refused before they are parsed.
	MaxRequestBytes int
	// ShutdownTimeout bounds the graceful drain on shutdown.
	ShutdownTimeout time.Duration
	Logger          *slog.Logger

	// Authenticator establishes every caller's principal, and Authorizer
	// decides every call. Both are required unless Unprotected is set.
	Authenticator Authenticator
	Authorizer    Authorizer
	// Unprotected serves without authentication (beyond the TLS handshake)
	// and without policy: tests and baselines only, never in production.
	Unprotected bool
	// Limiter and Budgets are optional: nil means no rate limit, no budget.
	Limiter RateLimiter
	Budgets BudgetCounter
	// Observer, when set, sees every finished call (the audit log).
	Observer CallObserver
	// Metrics registers the server's collectors; nil registers them nowhere.
	Metrics prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// RootKeys serves the AdminService's root-key rotation
	// (rotation.RootKeyRotator); nil answers its calls with Unimplemented.
	RootKeys RootKeyRotations
	// Schemas serves FieldService's classification schemas; nil answers
	// FieldService calls with Unimplemented. Documents holds its limits.
	Schemas   *SchemaRegistry
	Documents fields.Options
	// Audit serves AdminService's VerifyAudit and QueryAudit; nil answers
	// them with Unimplemented.
	Audit AuditReader
	// Anomaly, when set, scores every call; the risk enters the policy
	// context and the policy chooses the response (anomaly.cedar).
	Anomaly AnomalyMonitor
	// AnomalyMinRisk is the lowest risk at which the policy is asked for a
	// response: below it no anomaly action is decided (four policy
	// evaluations saved on the usual call). The example policies start at 30.
	AnomalyMinRisk int
	// Ready are the readiness checks (the root key provider, the store, the
	// audit sink): the health service reports NOT_SERVING, and /readyz 503
	// naming the failing checks, while any fails. They run every
	// ReadyInterval (default 5s), each bounded by a second.
	Ready         []ReadinessCheck
	ReadyInterval time.Duration
}

// ReadinessCheck is one dependency readiness depends on.
type ReadinessCheck struct {
	Name  string
	Check func(ctx context.Context) error
}

// Server is tresor's API server.
type Server struct {
	opts    Options
	grpc    *grpc.Server
	http    *http.Server
	health  *health.Server
	handler http.Handler
	chain   *chain
	// stopping is set when Serve begins shutting down (/healthz fails).
	stopping atomic.Bool

	mu        sync.Mutex
	failing   []string // readiness checks failing now
	checked   bool     // the first round of readiness checks has run
	grpcLis   net.Listener
	httpLis   net.Listener
	listening chan struct{}
}

// New builds a Server for ring. It listens nowhere until Serve.
func New(ring *envelope.Keyring, opts Options) (*Server, error) {
	if !opts.Insecure && (opts.TLS == nil || opts.TLS.ClientAuth != tls.RequireAndVerifyClientCert || opts.TLS.ClientCAs == nil) {
		return nil, errors.New("server: mutual TLS is required: set a certificate, a key and a client CA bundle (Insecure is for tests only)")
	}
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = DefaultShutdownTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if !opts.Unprotected && (opts.Authenticator == nil || opts.Authorizer == nil) {
		return nil, errors.New("server: an authenticator and an authorizer are required (Unprotected is for tests only)")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("server: protovalidate: %w", err)
	}
	m, err := newMetrics(opts.Metrics)
	if err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	ch := &chain{
		logger:    opts.Logger,
		validator: validator,
		metrics:   m,
		now:       opts.Now,
		keys:      ring,
		authn:     opts.Authenticator,
		authz:     opts.Authorizer,
		limiter:   opts.Limiter,
		budgets:   opts.Budgets,
		observer:  opts.Observer,
		anomaly:   opts.Anomaly,
		minRisk:   max(opts.AnomalyMinRisk, 1),
	}
	if opts.Unprotected {
		ch.authn, ch.authz = nil, nil
	}
	keys := &keyService{ring: ring, logger: opts.Logger}
	crypto := &cryptoService{ring: ring, logger: opts.Logger}
	admin := &adminService{rotations: opts.RootKeys, audit: opts.Audit, logger: opts.Logger}
	prot, err := fields.New(ring, opts.Documents)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	fieldSvc := &fieldService{schemas: opts.Schemas, prot: prot, gate: ch, logger: opts.Logger}

	gopts := []grpc.ServerOption{
		grpc.UnaryInterceptor(ch.unary),
		grpc.StreamInterceptor(ch.stream),
		grpc.MaxRecvMsgSize(opts.MaxRequestBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Connections are re-established (and client certificates checked
		// against the current CA bundle) at least hourly.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: time.Hour, MaxConnectionAgeGrace: time.Minute}),
		// Metadata (headers) is bounded as REST headers are.
		grpc.MaxHeaderListSize(64 << 10),
	}
	if opts.TLS != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(opts.TLS)))
	}
	gs := grpc.NewServer(gopts...)
	tresorv1.RegisterKeyServiceServer(gs, keys)
	tresorv1.RegisterCryptoServiceServer(gs, crypto)
	tresorv1.RegisterAdminServiceServer(gs, admin)
	if opts.Schemas != nil {
		tresorv1.RegisterFieldServiceServer(gs, fieldSvc)
	}
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)

	conn := newInProcessConn(ch.unary)
	conn.register(&tresorv1.KeyService_ServiceDesc, keys)
	conn.register(&tresorv1.CryptoService_ServiceDesc, crypto)
	conn.register(&tresorv1.AdminService_ServiceDesc, admin)
	if opts.Schemas != nil {
		conn.register(&tresorv1.FieldService_ServiceDesc, fieldSvc)
	}
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &gatewayJSON{JSONPb: runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}}),
		runtime.WithIncomingHeaderMatcher(func(h string) (string, bool) {
			switch http.CanonicalHeaderKey(h) {
			case "X-Request-Id":
				return requestIDHeader, true
			case "X-Tresor-Transaction-Value":
				return TransactionValueHeader, true
			case "X-Tresor-Purpose":
				return PurposeHeader, true
			}
			return runtime.DefaultHeaderMatcher(h)
		}),
		runtime.WithErrorHandler(restErrorHandler),
		runtime.WithOutgoingHeaderMatcher(func(h string) (string, bool) {
			if h == requestIDHeader {
				return "X-Request-Id", true
			}
			return "", false
		}),
	)
	ctx := context.Background()
	if err := tresorv1.RegisterKeyServiceHandlerClient(ctx, mux, tresorv1.NewKeyServiceClient(conn)); err != nil {
		return nil, fmt.Errorf("server: gateway: %w", err)
	}
	if err := tresorv1.RegisterCryptoServiceHandlerClient(ctx, mux, tresorv1.NewCryptoServiceClient(conn)); err != nil {
		return nil, fmt.Errorf("server: gateway: %w", err)
	}
	if err := tresorv1.RegisterAdminServiceHandlerClient(ctx, mux, tresorv1.NewAdminServiceClient(conn)); err != nil {
		return nil, fmt.Errorf("server: gateway: %w", err)
	}
	if opts.Schemas != nil {
		if err := tresorv1.RegisterFieldServiceHandlerClient(ctx, mux, tresorv1.NewFieldServiceClient(conn)); err != nil {
			return nil, fmt.Errorf("server: gateway: %w", err)
		}
	}
	s := &Server{opts: opts, grpc: gs, health: hs, chain: ch, listening: make(chan struct{})}
	if len(opts.Ready) > 0 {
		// Not ready until the first round of checks has passed.
		hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
		for _, c := range opts.Ready {
			s.failing = append(s.failing, c.Name)
		}
	}
	s.handler = s.httpHandler(mux)
	var httpTLS *tls.Config
	if opts.TLS != nil {
		// net/http edits the config it serves with (HTTP/2 setup): give it its own.
		httpTLS = opts.TLS.Clone()
	}
	s.http = &http.Server{
		Handler:           s.handler,
		TLSConfig:         httpTLS,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// httpHandler wraps the gateway: /healthz, a body size limit enforced before
// parsing, and the caller's address and TLS state as the gRPC peer, so the
// chain sees a REST caller as it sees a gRPC caller.
func (s *Server) httpHandler(gateway http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		failing := s.failingChecks()
		w.Header().Set("Content-Type", "text/plain")
		if len(failing) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + strings.Join(failing, ", ") + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	// /healthz is liveness: the process answers and is not shutting down.
	// It does not follow the readiness checks, so that an HSM or database
	// outage takes replicas out of a load balancer (/readyz) without an
	// orchestrator restarting all of them.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	limit := int64(s.opts.MaxRequestBytes)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// A request the chain never sees (refused before its body is
		// parsed, a body the gateway cannot decode, an unknown path) is
		// audited here: every call writes one event.
		rr := &restRequest{start: s.chain.now()}
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			rr.source = ap.Addr().Unmap()
		}
		sw := &statusWriter{ResponseWriter: w}
		w = sw
		defer func() {
			if !rr.reached.Load() {
				s.chain.observeREST(r, rr, sw.status())
			}
		}()
		if r.ContentLength > limit {
			http.Error(w, `{"code":8,"message":"request body too large"}`, http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		p := &peer.Peer{LocalAddr: nil}
		if addr, err := net.ResolveTCPAddr("tcp", r.RemoteAddr); err == nil {
			p.Addr = addr
		}
		if r.TLS != nil {
			p.AuthInfo = credentials.TLSInfo{State: *r.TLS, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
		}
		ctx := context.WithValue(peer.NewContext(r.Context(), p), restRequestKey{}, rr)
		// Authentication comes before the body is parsed, as in the chain:
		// a caller that cannot authenticate learns nothing about its body.
		// (The chain authenticates the call again: see authenticateHTTP.)
		principal, err := s.chain.authenticateHTTP(ctx, r.Header.Get("Authorization"))
		if err != nil {
			writeUnauthenticated(w, err)
			return
		}
		rr.principal = principal
		gateway.ServeHTTP(w, r.WithContext(ctx))
	})
	return mux
}

// writeUnauthenticated answers 401 with a Bearer challenge and the body the
// gateway gives every error.
func writeUnauthenticated(w http.ResponseWriter, err error) {
	body, _ := json.Marshal(map[string]any{"code": codes.Unauthenticated, "message": status.Convert(err).Message(), "details": []any{}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("WWW-Authenticate", `Bearer realm="tresor"`)
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write(body)
}

// Handler returns the REST handler (gateway and /healthz), for tests.
func (s *Server) Handler() http.Handler { return s.handler }

// Listen opens the listeners. Serve calls it when it has not been called.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grpcLis != nil {
		return nil
	}
	gl, err := net.Listen("tcp", s.opts.GRPCAddr)
	if err != nil {
		return fmt.Errorf("server: listen gRPC on %s: %w", s.opts.GRPCAddr, err)
	}
	if s.opts.HTTPAddr != "" {
		hl, err := net.Listen("tcp", s.opts.HTTPAddr)
		if err != nil {
			gl.Close()
			return fmt.Errorf("server: listen HTTP on %s: %w", s.opts.HTTPAddr, err)
		}
		s.httpLis = hl
	}
	s.grpcLis = gl
	close(s.listening)
	return nil
}

// Addrs returns the listening addresses (after Listen): gRPC, then HTTP ("" if none).
func (s *Server) Addrs() (grpcAddr, httpAddr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grpcLis != nil {
		grpcAddr = s.grpcLis.Addr().String()
	}
	if s.httpLis != nil {
		httpAddr = s.httpLis.Addr().String()
	}
	return grpcAddr, httpAddr
}

// Serve serves until ctx ends, then drains in-flight calls for at most
// ShutdownTimeout and returns.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- s.grpc.Serve(s.grpcLis) }()
	if s.httpLis != nil {
		go func() {
			var err error
			if s.opts.TLS != nil {
				err = s.http.ServeTLS(s.httpLis, "", "")
			} else {
				err = s.http.Serve(s.httpLis)
			}
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
	}
	if len(s.opts.Ready) == 0 {
		s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	}
	rctx, stopReady := context.WithCancel(ctx)
	defer stopReady()
	if len(s.opts.Ready) > 0 {
		s.checkReady(rctx)
		go s.watchReady(rctx)
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.stopping.Store(true)
	s.health.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	if herr := s.http.Shutdown(sctx); herr != nil && err == nil {
		err = fmt.Errorf("server: HTTP shutdown: %w", herr)
	}
	select {
	case <-done:
	case <-sctx.Done():
		s.grpc.Stop()
	}
	return err
}

// watchReady runs the readiness checks until ctx ends.
func (s *Server) watchReady(ctx context.Context) {
	every := s.opts.ReadyInterval
	if every <= 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.checkReady(ctx)
		}
	}
}

// checkReady runs every readiness check once and sets the health status.
// A check is logged when it starts failing and when it recovers, not on
// every round.
func (s *Server) checkReady(ctx context.Context) {
	s.mu.Lock()
	prev, first := s.failing, !s.checked
	s.mu.Unlock()
	var failing []string
	for _, c := range s.opts.Ready {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Check(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		was := slices.Contains(prev, c.Name) && !first
		switch {
		case err != nil:
			failing = append(failing, c.Name)
			if !was {
				s.opts.Logger.WarnContext(ctx, "not ready", "check", c.Name, "err", err)
			}
		case was:
			s.opts.Logger.InfoContext(ctx, "ready again", "check", c.Name)
		}
	}
	s.mu.Lock()
	s.failing, s.checked = failing, true
	s.mu.Unlock()
	st := healthpb.HealthCheckResponse_SERVING
	if len(failing) > 0 {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.health.SetServingStatus("", st)
}

func (s *Server) failingChecks() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.failing)
}
