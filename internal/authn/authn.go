package authn

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Defaults of [TokenConfig].
const (
	DefaultClockSkew   = 30 * time.Second
	DefaultMaxLifetime = 15 * time.Minute
	// MaxMaxLifetime is the most TokenConfig.MaxLifetime may be.
	MaxMaxLifetime     = time.Hour
	DefaultCacheSize   = 10000
	DefaultRolesClaim  = "roles"
	DefaultScopesClaim = "scope"
	// DefaultFilePollInterval is how often a static JWKS file is checked.
	DefaultFilePollInterval = 5 * time.Second
	// DefaultRemoteRefreshInterval is how often a remote JWKS is refetched
	// in the background (so that keys the issuer withdraws stop working).
	DefaultRemoteRefreshInterval = 15 * time.Minute
	// UnknownKeyRefetchInterval is the least time between two JWKS
	// refetches caused by tokens with an unknown kid.
	UnknownKeyRefetchInterval = 30 * time.Second

	maxClockSkew = 5 * time.Minute
	httpTimeout  = 10 * time.Second
)

// DefaultAlgorithms is the default JWS algorithm allowlist.
var DefaultAlgorithms = []string{"RS256", "PS256", "ES256", "EdDSA"}

// Config configures an [Authenticator].
type Config struct {
	// RequireToken refuses calls without a bearer token (production
	// default). When false, a call with no token gets StrengthMTLS.
	RequireToken bool
	// Tokens configures token verification; nil means tokens are not
	// accepted at all (a presented token is then ErrInvalidToken).
	Tokens *TokenConfig
	// Logger gets background JWKS reload failures; nil discards them.
	Logger *slog.Logger
}

// TokenConfig configures bearer token (JWT access token) verification.
type TokenConfig struct {
	// Issuer is required; a token's iss must equal it exactly.
	Issuer string
	// Audiences is required (at least one); a token's aud must contain one
	// of them.
	Audiences []string
	// JWKSFile is a static JWKS for closed networks, re-read when it
	// changes. Empty: OIDC discovery at Issuer (which must then be https)
	// + "/.well-known/openid-configuration", then its jwks_uri.
	JWKSFile string
	// HTTPClient is used for discovery and JWKS fetches (custom CA); nil
	// means a client with a 10s timeout.
	HTTPClient *http.Client
	// Algorithms is the allowlist of JWS algorithms; default
	// DefaultAlgorithms. Any of RS256/384/512, PS256/384/512,
	// ES256/384/512, EdDSA. "none" and HS* are refused with
	// ErrInvalidConfig.
	Algorithms []string
	// ClockSkew is tolerated on exp, nbf and iat; default 30s, at most 5m.
	ClockSkew time.Duration
	// MaxLifetime caps exp-iat (exp-nbf when there is no iat); default
	// 15m. Tokens without exp, or without both iat and nbf, are refused.
	MaxLifetime time.Duration
	// RolesClaim names the roles claim; default "roles". A dotted path
	// reaches into nested objects ("realm_access.roles") unless a top-level
	// claim has the whole name. The value is a string array or a
	// space-separated string.
	RolesClaim string
	// ScopesClaim names the scopes claim; default "scope"; same rules.
	ScopesClaim string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// CacheSize is the number of verified tokens cached; default 10000;
	// negative disables the cache.
	CacheSize int
	// RefreshInterval is how often the JWKS is re-read in the background:
	// default 5s for JWKSFile, 15m for a remote JWKS.
	RefreshInterval time.Duration
}

// Authenticator authenticates calls; see [New]. It is safe for concurrent
// use. Close it to stop its background JWKS reload.
type Authenticator struct {
	requireToken bool
	tv           *tokenVerifier // nil when tokens are not accepted
	certs        certCache

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New validates cfg and returns an Authenticator. With token verification
// configured it loads the JWKS (file, or discovery then jwks_uri) before
// returning, so a misconfigured or unreachable issuer fails at start, and
// starts a background reload that [Authenticator.Close] stops.
func New(ctx context.Context, cfg Config) (*Authenticator, error) {
	a := &Authenticator{requireToken: cfg.RequireToken}
	if cfg.Tokens == nil {
		if cfg.RequireToken {
			return nil, fmt.Errorf("%w: RequireToken needs Tokens", ErrInvalidConfig)
		}
		return a, nil
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tv, err := newTokenVerifier(*cfg.Tokens, logger)
	if err != nil {
		return nil, err
	}
	if err := tv.reload(ctx); err != nil {
		return nil, fmt.Errorf("authn: loading JWKS: %w", err)
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	tv.bg = bg
	tv.wg = &a.wg
	a.tv, a.cancel = tv, cancel
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		tv.run(bg)
	}()
	return a, nil
}

// Close stops the background JWKS reload and waits for it. It is safe to
// call more than once.
func (a *Authenticator) Close() error {
	a.closeOnce.Do(func() {
		if a.tv != nil {
			a.tv.markClosed()
		}
		if a.cancel != nil {
			a.cancel()
		}
		a.wg.Wait()
	})
	return nil
}

// Authenticate authenticates one call. cert is the verified leaf client
// certificate (TLS already verified the chain); nil is ErrNoCertificate.
// authorization is the raw Authorization header or metadata value
// ("Bearer <jwt>", scheme case-insensitive) or "".
//
// A call without a token gets StrengthMTLS unless the configuration requires
// a token (ErrNoToken). A valid token gives StrengthToken, or
// StrengthBoundToken when it is bound to cert (RFC 8705). A token bound to
// another certificate is ErrTokenBinding. Every token refusal wraps
// ErrInvalidToken.
func (a *Authenticator) Authenticate(ctx context.Context, cert *x509.Certificate, authorization string) (*Principal, error) {
	if cert == nil {
		return nil, ErrNoCertificate
	}
	workload, thumbprint, err := a.certs.identity(cert)
	if err != nil {
		return nil, err
	}
	p := &Principal{Workload: workload, CertThumbprint: thumbprint, Strength: StrengthMTLS}
	raw, err := bearer(authorization)
	if err != nil {
		return nil, err
	}
	if raw == "" {
		if a.requireToken {
			return nil, ErrNoToken
		}
		return p, nil
	}
	if a.tv == nil {
		return nil, fmt.Errorf("%w: bearer tokens are not accepted", ErrInvalidToken)
	}
	v, err := a.tv.verified(ctx, raw)
	if err != nil {
		return nil, err
	}
	p.Strength = StrengthToken
	if v.bound {
		if v.x5t == "" || v.x5t != p.CertThumbprint {
			return nil, ErrTokenBinding
		}
		p.Strength = StrengthBoundToken
	}
	p.Subject, p.Issuer, p.TokenID, p.TokenExpiry = v.subject, v.issuer, v.jti, v.exp
	p.Roles, p.Scopes = cloneLists(v.roles, v.scopes)
	return p, nil
}

// cloneLists returns copies of roles and scopes in one allocation, each
// capped at its length (an append to one never writes into the other), nil
// for an empty list as slices.Clone gives.
func cloneLists(roles, scopes []string) ([]string, []string) {
	n := len(roles) + len(scopes)
	if n == 0 {
		return nil, nil
	}
	buf := make([]string, n)
	copy(buf, roles)
	copy(buf[len(roles):], scopes)
	var r, s []string
	if len(roles) > 0 {
		r = buf[:len(roles):len(roles)]
	}
	if len(scopes) > 0 {
		s = buf[len(roles):]
	}
	return r, s
}

// maxTokenSize bounds the bearer tokens looked at.
const maxTokenSize = 16 << 10

// bearer extracts the token from an Authorization value: "" for none.
func bearer(authorization string) (string, error) {
	authorization = strings.TrimSpace(authorization)
	if authorization == "" {
		return "", nil
	}
	scheme, tok, ok := strings.Cut(authorization, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: authorization scheme is not Bearer", ErrTokenMalformed)
	}
	tok = strings.TrimSpace(tok)
	if tok == "" || len(tok) > maxTokenSize {
		return "", ErrTokenMalformed
	}
	return tok, nil
}

// newTokenVerifier validates tc and fills its defaults.
func newTokenVerifier(tc TokenConfig, logger *slog.Logger) (*tokenVerifier, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if tc.Issuer == "" {
		return nil, bad("token issuer is required")
	}
	if len(tc.Audiences) == 0 {
		return nil, bad("at least one token audience is required")
	}
	auds := make(map[string]struct{}, len(tc.Audiences))
	for _, aud := range tc.Audiences {
		if aud == "" {
			return nil, bad("empty token audience")
		}
		auds[aud] = struct{}{}
	}
	algs := tc.Algorithms
	if len(algs) == 0 {
		algs = DefaultAlgorithms
	}
	allowed := make(map[string]bool, len(algs))
	for _, alg := range algs {
		if _, ok := supportedAlgs[alg]; !ok {
			// Covers "none", HS256/384/512 and anything unknown.
			return nil, bad("signature algorithm %q is not allowed (allowed: asymmetric RS*, PS*, ES*, EdDSA)", alg)
		}
		allowed[alg] = true
	}
	switch {
	case tc.ClockSkew < 0 || tc.ClockSkew > maxClockSkew:
		return nil, bad("clock skew %v out of range [0, %v]", tc.ClockSkew, maxClockSkew)
	case tc.ClockSkew == 0:
		tc.ClockSkew = DefaultClockSkew
	}
	switch {
	case tc.MaxLifetime < 0:
		return nil, bad("negative max token lifetime")
	case tc.MaxLifetime == 0:
		tc.MaxLifetime = DefaultMaxLifetime
	case tc.MaxLifetime > MaxMaxLifetime:
		return nil, bad("maximum token lifetime %v over %v: tresor accepts short-lived tokens only", tc.MaxLifetime, MaxMaxLifetime)
	}
	if tc.RolesClaim == "" {
		tc.RolesClaim = DefaultRolesClaim
	}
	if tc.ScopesClaim == "" {
		tc.ScopesClaim = DefaultScopesClaim
	}
	if tc.Now == nil {
		tc.Now = time.Now
	}
	switch {
	case tc.CacheSize == 0:
		tc.CacheSize = DefaultCacheSize
	case tc.CacheSize < 0:
		tc.CacheSize = 0
	}
	if tc.RefreshInterval < 0 {
		return nil, bad("negative JWKS refresh interval")
	}
	hc := tc.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: httpTimeout}
	}
	var src keySource
	if tc.JWKSFile != "" {
		src = &fileSource{path: tc.JWKSFile}
		if tc.RefreshInterval == 0 {
			tc.RefreshInterval = DefaultFilePollInterval
		}
	} else {
		u, err := url.Parse(tc.Issuer)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, bad("token issuer must be an https URL for OIDC discovery (or set JWKSFile)")
		}
		src = &remoteSource{issuer: tc.Issuer, client: hc}
		if tc.RefreshInterval == 0 {
			tc.RefreshInterval = DefaultRemoteRefreshInterval
		}
	}
	return &tokenVerifier{
		cfg:       tc,
		audiences: auds,
		allowed:   allowed,
		src:       src,
		cache:     newTokenCache(tc.CacheSize),
		logger:    logger,
	}, nil
}

// tokenKey splits a raw token for the token cache: its signing input
// (header.payload) and the cache key, the SHA-256 of its signature part. ok
// is false for a token without a '.', which is never cached.
//
// A cached entry keeps the signing input of its token, so a hit (the same
// signature hash and the same signing input) is the same token, as surely as
// with a hash of the whole token, while only the short signature part is
// hashed on every call.
func tokenKey(raw string) (signed string, key [32]byte, ok bool) {
	i := strings.LastIndexByte(raw, '.')
	if i < 0 {
		return "", key, false
	}
	sig := raw[i+1:]
	// Copy into a stack buffer: []byte(sig) would allocate. 512 bytes hold
	// the signatures of EC and EdDSA keys and of RSA keys up to 3072 bits.
	var buf [512]byte
	if len(sig) <= len(buf) {
		return raw[:i], sha256.Sum256(buf[:copy(buf[:], sig)]), true
	}
	return raw[:i], sha256.Sum256([]byte(sig)), true
}
