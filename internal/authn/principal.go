package authn

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Strength says how strongly a [Principal] was authenticated. The zero
// value is invalid.
type Strength int

const (
	// StrengthMTLS: a verified client certificate and no token.
	StrengthMTLS Strength = iota + 1
	// StrengthToken: a verified client certificate and a valid bearer token.
	StrengthToken
	// StrengthBoundToken: a verified client certificate and a valid token
	// bound to that certificate (RFC 8705 cnf "x5t#S256").
	StrengthBoundToken
)

// String returns "mtls", "token" or "bound_token".
func (s Strength) String() string {
	switch s {
	case StrengthMTLS:
		return "mtls"
	case StrengthToken:
		return "token"
	case StrengthBoundToken:
		return "bound_token"
	}
	return "Strength(" + strconv.Itoa(int(s)) + ")"
}

// Principal is the authenticated caller of one call. It holds no secrets.
type Principal struct {
	// Workload is the SPIFFE ID from the certificate's URI SAN, else the
	// certificate subject DN; see [WorkloadID].
	Workload string
	// CertThumbprint is the base64url (no padding) SHA-256 of the leaf
	// certificate DER, the x5t#S256 form; see [Thumbprint].
	CertThumbprint string
	// Subject and Issuer are the token's sub and iss; "" without a token.
	Subject, Issuer string
	// Roles and Scopes are sorted and deduplicated; nil without a token.
	Roles, Scopes []string
	Strength      Strength
	// TokenID is the token's jti, if it has one.
	TokenID string
	// TokenExpiry is the token's exp; zero without a token.
	TokenExpiry time.Time
}

type principalKey struct{}

// NewContext returns a copy of ctx that carries p.
func NewContext(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal NewContext put in ctx.
func FromContext(ctx context.Context) (*Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(*Principal)
	return p, ok && p != nil
}

// WorkloadID names the workload a client certificate identifies: its
// SPIFFE ID when the certificate has exactly one spiffe:// URI SAN, else its
// subject DN (pkix.Name String form). More than one SPIFFE ID, a malformed
// SPIFFE ID, or neither a SPIFFE ID nor a subject is [ErrNoIdentity]; a nil
// certificate is [ErrNoCertificate].
func WorkloadID(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", ErrNoCertificate
	}
	var spiffe []string
	for _, u := range cert.URIs {
		if u == nil || !strings.EqualFold(u.Scheme, "spiffe") {
			continue
		}
		if u.Host == "" || u.Port() != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			return "", fmt.Errorf("%w: malformed SPIFFE ID in certificate", ErrNoIdentity)
		}
		spiffe = append(spiffe, u.String())
	}
	switch len(spiffe) {
	case 1:
		return spiffe[0], nil
	case 0:
	default:
		return "", fmt.Errorf("%w: certificate has %d SPIFFE IDs, want one", ErrNoIdentity, len(spiffe))
	}
	if dn := cert.Subject.String(); dn != "" {
		return dn, nil
	}
	return "", ErrNoIdentity
}

// Thumbprint returns the base64url (unpadded) SHA-256 of the certificate
// DER, the form of RFC 8705's x5t#S256 confirmation; "" for nil.
func Thumbprint(cert *x509.Certificate) string {
	if cert == nil {
		return ""
	}
	sum := sha256.Sum256(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
