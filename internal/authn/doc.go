// Package authn authenticates callers of tresor: it turns the verified mTLS
// client certificate plus an optional OAuth 2.0 bearer JWT into a
// [Principal] that travels in the context ([NewContext], [FromContext]).
// It makes no authorization decisions; internal/policy does.
//
// Reach for [New] first: it validates a [Config] and returns an
// [Authenticator] whose [Authenticator.Authenticate] the server calls once
// per call with the peer's leaf certificate and the raw Authorization value.
// Errors are sentinel values matched with errors.Is; every token refusal
// wraps [ErrInvalidToken] and names the reason only, never the token.
// [NewServerTLS] builds the server's mTLS configuration from files and
// reloads it without a restart.
//
// Token verification uses github.com/go-jose/go-jose/v4 directly rather
// than go-oidc's IDTokenVerifier: this package needs checks go-oidc does not
// make or does not let it control (alg matched to the key type, a lifetime
// cap, RFC 8705 certificate binding, a rate limit on unknown-kid refetches,
// a static JWKS file reloaded on change, a verified-token cache), and
// go-oidc would pull in golang.org/x/oauth2 for none of it. Discovery and
// JWKS fetching are a few lines of net/http here.
//
// A verified token is cached (keyed by the SHA-256 of the token, never the
// token itself) until its exp, so the usual call costs a hash and a map
// lookup rather than a signature verification; the JWKS is fetched at [New]
// and then only in the background or, rate-limited, on an unknown kid.
package authn
