package authn

import "errors"

// Errors returned by [Authenticator.Authenticate], [WorkloadID] and [New].
// Match them with errors.Is; the returned errors may carry more context.
var (
	// ErrNoCertificate: the call has no client certificate.
	ErrNoCertificate = errors.New("authn: no client certificate")
	// ErrNoIdentity: the client certificate names no workload (no SPIFFE
	// ID and an empty subject), or names more than one SPIFFE ID.
	ErrNoIdentity = errors.New("authn: certificate has no usable identity")
	// ErrNoToken: the configuration requires a bearer token and the call
	// has none.
	ErrNoToken = errors.New("authn: no bearer token")
	// ErrInvalidConfig: [New] or [NewServerTLS] was given a configuration
	// it refuses.
	ErrInvalidConfig = errors.New("authn: invalid configuration")
	// ErrInvalidToken: the bearer token was refused. Every ErrToken* reason
	// below wraps it, so errors.Is(err, ErrInvalidToken) holds for all of
	// them.
	ErrInvalidToken = errors.New("authn: invalid token")
)

// Reasons a token is refused. Each wraps [ErrInvalidToken]. Their messages
// name the reason only, never the token.
var (
	ErrTokenExpired     error = tokenReason("token expired")
	ErrTokenNotYetValid error = tokenReason("token not yet valid")
	ErrTokenIssuer      error = tokenReason("token issuer not accepted")
	ErrTokenAudience    error = tokenReason("token audience not accepted")
	ErrTokenAlgorithm   error = tokenReason("token signature algorithm not accepted")
	ErrTokenUnknownKey  error = tokenReason("token signing key unknown")
	ErrTokenLifetime    error = tokenReason("token lifetime too long or unbounded")
	// ErrTokenBinding: the token is bound to a certificate (cnf x5t#S256)
	// other than the one presented, or to a confirmation method this
	// package cannot check.
	ErrTokenBinding   error = tokenReason("token not bound to the presented certificate")
	ErrTokenMalformed error = tokenReason("token malformed")
	ErrTokenSignature error = tokenReason("token signature invalid")
)

// reasonError is a refusal reason that wraps ErrInvalidToken.
type reasonError struct{ msg string }

func tokenReason(msg string) *reasonError { return &reasonError{msg: "authn: " + msg} }

func (e *reasonError) Error() string { return e.msg }
func (e *reasonError) Unwrap() error { return ErrInvalidToken }
