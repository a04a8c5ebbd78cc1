package devissuer

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// TokenEndpoint is an OAuth 2.0 token endpoint (RFC 6749 section 4.4,
// client credentials) for development and tests: the client authenticates
// with its TLS certificate (RFC 8705 tls_client_auth), and gets a token
// for Audience whose subject is its client_id and which is bound to that
// certificate. The client_id must be one of the certificate's URI SANs (its
// SPIFFE ID); the common name is not an identity and is never accepted.
// Serve it over TLS that verifies client certificates; without one the
// request fails invalid_client.
type TokenEndpoint struct {
	Issuer   *Issuer
	Audience string
	// Lifetime of the tokens; zero means DefaultLifetime.
	Lifetime time.Duration
	// Roles are given to every token.
	Roles []string
	// Scopes are the scopes a client may ask for (the scope parameter);
	// they reach the authorization policies, so a request asking for one
	// outside this list fails invalid_scope. Empty: no scope is granted,
	// and a request asking for any fails.
	Scopes []string
}

// ServeHTTP answers POST application/x-www-form-urlencoded token requests.
func (e *TokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		tokenError(w, http.StatusMethodNotAllowed, "invalid_request", "POST only")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := r.ParseForm(); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_request", "malformed form body")
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type", "only client_credentials is supported")
		return
	}
	if _, _, ok := r.BasicAuth(); ok || r.PostForm.Get("client_secret") != "" {
		tokenError(w, http.StatusUnauthorized, "invalid_client", "clients authenticate with their TLS certificate, not a secret")
		return
	}
	id := r.PostForm.Get("client_id")
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || id == "" {
		tokenError(w, http.StatusUnauthorized, "invalid_client", "a verified client certificate and its client_id are required")
		return
	}
	cert := r.TLS.VerifiedChains[0][0]
	named := false
	for _, u := range cert.URIs {
		named = named || u.String() == id
	}
	if !named {
		tokenError(w, http.StatusUnauthorized, "invalid_client", "client_id is not a URI SAN (SPIFFE ID) of the client certificate")
		return
	}
	scopes := strings.Fields(r.PostForm.Get("scope"))
	for _, s := range scopes {
		if !slices.Contains(e.Scopes, s) {
			tokenError(w, http.StatusBadRequest, "invalid_scope", "scope "+strconv.Quote(s)+" is not granted by this endpoint")
			return
		}
	}
	life := e.Lifetime
	if life == 0 {
		life = DefaultLifetime
	}
	tok, err := e.Issuer.Mint(TokenRequest{Subject: id, Audience: e.Audience, Roles: e.Roles, Scopes: scopes, Lifetime: life, BindTo: cert})
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error", "the token could not be minted")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   int(life / time.Second),
	})
}

// tokenError writes an RFC 6749 section 5.2 error response.
func tokenError(w http.ResponseWriter, code int, kind, desc string) {
	w.Header().Set("Content-Type", "application/json")
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer error="`+kind+`"`)
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": kind, "error_description": desc})
}
