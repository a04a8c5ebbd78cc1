package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ClientCredentialsConfig configures ClientCredentials.
type ClientCredentialsConfig struct {
	// TokenURL is the authorization server's token endpoint (https).
	TokenURL string
	// ClientID identifies the client; ClientSecret authenticates it, or is
	// empty when the client authenticates with its TLS certificate
	// (RFC 8705 tls_client_auth).
	ClientID, ClientSecret string
	// Scopes and EndpointParams (an "audience" or RFC 8707 "resource"
	// naming tresor, say) are sent with every token request.
	Scopes         []string
	EndpointParams url.Values
	// TLS is used to reach the token endpoint. Give the same client
	// certificate as the tresor connection: tresor refuses a
	// certificate-bound token (RFC 8705 cnf x5t#S256) presented over
	// another certificate.
	TLS *tls.Config
}

// ClientCredentials returns an OAuth 2.0 client-credentials token source
// (golang.org/x/oauth2/clientcredentials) that reaches the token endpoint
// over cfg.TLS. Give it to Config.Tokens: the source asks the token
// endpoint for a new token every time it is called, and the Client
// caches, refreshes and replaces the tokens.
//
// The token endpoint is reached with a copy of cfg.TLS, at least TLS 1.2,
// that verifies the endpoint under its own host name (cfg.TLS's
// ServerName, set for tresor's address, is not used).
func ClientCredentials(cfg ClientCredentialsConfig) (oauth2.TokenSource, error) {
	u, err := url.Parse(cfg.TokenURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("client: TokenURL %q is not an https URL", cfg.TokenURL)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("client: ClientCredentialsConfig.ClientID is empty")
	}
	tlsCfg := &tls.Config{}
	if cfg.TLS != nil {
		tlsCfg = cfg.TLS.Clone()
	}
	// The endpoint is verified under the URL's host, not tresor's name.
	tlsCfg.ServerName = ""
	if tlsCfg.MinVersion < tls.VersionTLS12 {
		tlsCfg.MinVersion = tls.VersionTLS12
	}
	hc := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     tlsCfg,
			ForceAttemptHTTP2:   true,
			Proxy:               http.ProxyFromEnvironment,
			TLSHandshakeTimeout: 10 * time.Second,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	cc := &clientcredentials.Config{
		ClientID:       cfg.ClientID,
		ClientSecret:   cfg.ClientSecret,
		TokenURL:       cfg.TokenURL,
		Scopes:         cfg.Scopes,
		EndpointParams: cfg.EndpointParams,
		AuthStyle:      oauth2.AuthStyleInHeader,
	}
	if cfg.ClientSecret == "" {
		// tls_client_auth: the client_id in the form, no Basic header.
		cc.AuthStyle = oauth2.AuthStyleInParams
	}
	return &clientCredentialsSource{cc: cc, hc: hc}, nil
}

// clientCredentialsSource fetches a token on every call: the Client's
// tokenCache does the caching (clientcredentials.Config.TokenSource would
// cache too, and hand back a token the Client wants replaced).
type clientCredentialsSource struct {
	cc *clientcredentials.Config
	hc *http.Client
}

// Token implements oauth2.TokenSource: one request to the token endpoint.
func (s *clientCredentialsSource) Token() (*oauth2.Token, error) {
	// The HTTP client's timeout bounds the request; no call's context
	// does, since one fetch serves every call waiting for it.
	return s.cc.Token(context.WithValue(context.Background(), oauth2.HTTPClient, s.hc))
}

// tokenCache is the Client's per-call credentials: a token from its
// source, replaced refreshBefore its expiry, or on demand (invalidate)
// after the server refused it. One fetch from the source is in flight at
// a time, in its own goroutine: the calls that need it wait for it or for
// their own ctx.
type tokenCache struct {
	src           oauth2.TokenSource
	refreshBefore time.Duration
	now           func() time.Time

	mu       sync.Mutex
	tok      *oauth2.Token
	fetching *tokenFetch // nil when no fetch is in flight
}

// tokenFetch is one fetch from the source; tok and err are set before
// done is closed.
type tokenFetch struct {
	done chan struct{}
	tok  *oauth2.Token
	err  error
}

func newTokenCache(src oauth2.TokenSource, refreshBefore time.Duration) *tokenCache {
	if refreshBefore <= 0 {
		refreshBefore = time.Minute
	}
	return &tokenCache{src: src, refreshBefore: refreshBefore, now: time.Now}
}

// token returns the cached token while it has more than refreshBefore to
// live (or no expiry), else a new one from the source. Its errors are gRPC
// statuses: UNAVAILABLE when the token endpoint could not answer,
// UNAUTHENTICATED when it refused, DEADLINE_EXCEEDED or CANCELED when ctx
// ended first.
func (c *tokenCache) token(ctx context.Context) (*oauth2.Token, error) {
	c.mu.Lock()
	if t := c.tok; t != nil && (t.Expiry.IsZero() || c.now().Add(c.refreshBefore).Before(t.Expiry)) {
		c.mu.Unlock()
		return t, nil
	}
	f := c.fetching
	if f == nil {
		f = &tokenFetch{done: make(chan struct{})}
		c.fetching = f
		go c.fetch(f)
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.tok, f.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// fetch asks the source for a token, caches it and ends f.
func (c *tokenCache) fetch(f *tokenFetch) {
	t, err := c.src.Token()
	switch {
	case err != nil:
		err = tokenError(err)
	case t == nil || t.AccessToken == "":
		t, err = nil, status.Error(codes.Unauthenticated, "client: token source returned an empty access token")
	}
	f.tok, f.err = t, err
	c.mu.Lock()
	if err == nil {
		c.tok = t
	}
	c.fetching = nil
	c.mu.Unlock()
	close(f.done)
}

// tokenError is the status of a failed fetch from the token source. The
// token endpoint's answer may echo request parameters: only its error
// code and description are repeated.
func tokenError(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		if re.Response != nil && re.Response.StatusCode >= 400 && re.Response.StatusCode < 500 {
			return status.Errorf(codes.Unauthenticated, "client: token endpoint refused: %d %s %s", re.Response.StatusCode, re.ErrorCode, re.ErrorDescription)
		}
		code := 0
		if re.Response != nil {
			code = re.Response.StatusCode
		}
		return status.Errorf(codes.Unavailable, "client: token endpoint failed: %d %s %s", code, re.ErrorCode, re.ErrorDescription)
	}
	var ue *url.Error
	var ne net.Error
	if errors.As(err, &ue) || errors.As(err, &ne) {
		// No answer: refused, reset, timed out, TLS failed.
		return status.Errorf(codes.Unavailable, "client: token endpoint unreachable: %v", err)
	}
	// A caller's own source may fold anything into its error (a token
	// endpoint's whole answer, say): name only its type, which ends up in
	// the call's status.
	return status.Errorf(codes.Unauthenticated, "client: the token source failed (%T)", err)
}

// cached is the cached access token, "" if none.
func (c *tokenCache) cached() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tok == nil {
		return ""
	}
	return c.tok.AccessToken
}

// invalidate drops tok if it is still the cached token, so that the next
// call fetches a new one; "" (the caller saw no cached token, so the call
// fetched the one it used) drops whatever is cached.
func (c *tokenCache) invalidate(tok string) {
	c.mu.Lock()
	if c.tok != nil && (tok == "" || c.tok.AccessToken == tok) {
		c.tok = nil
	}
	c.mu.Unlock()
}

// GetRequestMetadata implements credentials.PerRPCCredentials. Its errors
// are gRPC statuses, which gRPC passes on as they are (any other error
// would become UNAUTHENTICATED).
func (c *tokenCache) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	t, err := c.token(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + t.AccessToken}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: a
// token is never sent in the clear.
func (*tokenCache) RequireTransportSecurity() bool { return true }
