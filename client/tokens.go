package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
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
// over cfg.TLS. Give it to Config.Tokens, which caches and refreshes its
// tokens.
func ClientCredentials(cfg ClientCredentialsConfig) (oauth2.TokenSource, error) {
	u, err := url.Parse(cfg.TokenURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("client: TokenURL %q is not an https URL", cfg.TokenURL)
	}
	if cfg.ClientID == "" {
		return nil, errors.New("client: ClientCredentialsConfig.ClientID is empty")
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.TLS != nil {
		tlsCfg = cfg.TLS.Clone()
	}
	hc := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true, Proxy: http.ProxyFromEnvironment},
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
	// The token source keeps this context for every later refresh: it must
	// outlive any one call.
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, hc)
	return cc.TokenSource(ctx), nil
}

// tokenCache is the Client's per-call credentials: a token from its
// source, replaced refreshBefore its expiry, or on demand (invalidate)
// after the server refused it.
type tokenCache struct {
	src           oauth2.TokenSource
	refreshBefore time.Duration
	now           func() time.Time

	mu  sync.Mutex
	tok *oauth2.Token
}

func newTokenCache(src oauth2.TokenSource, refreshBefore time.Duration) *tokenCache {
	if refreshBefore <= 0 {
		refreshBefore = time.Minute
	}
	return &tokenCache{src: src, refreshBefore: refreshBefore, now: time.Now}
}

// token returns the cached token while it has more than refreshBefore to
// live (or no expiry), else a new one from the source.
func (c *tokenCache) token() (*oauth2.Token, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.tok; t != nil && (t.Expiry.IsZero() || c.now().Add(c.refreshBefore).Before(t.Expiry)) {
		return t, nil
	}
	t, err := c.src.Token()
	if err != nil {
		// The token endpoint's answer may echo request parameters; say
		// only that the source failed, with its error type's text.
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			return nil, fmt.Errorf("client: token endpoint refused: %s %s", re.ErrorCode, re.ErrorDescription)
		}
		return nil, fmt.Errorf("client: token source: %w", err)
	}
	if t.AccessToken == "" {
		return nil, errors.New("client: token source returned an empty access token")
	}
	c.tok = t
	return t, nil
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

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (c *tokenCache) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	t, err := c.token()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + t.AccessToken}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: a
// token is never sent in the clear.
func (*tokenCache) RequireTransportSecurity() bool { return true }
