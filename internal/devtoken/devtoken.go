// Package devtoken gives development and test clients their bearer
// tokens: a [Source] mints tokens from a [devissuer.Issuer], bound to the
// client's certificate (RFC 8705), and mints a new one before the current
// one expires. It implements credentials.PerRPCCredentials, and
// [Source.Authorization] gives the header value for HTTP clients.
//
// It is a development tool: production clients get their tokens from the
// bank's identity provider.
package devtoken

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tresorkms/tresor/internal/authn/devissuer"
)

// DefaultRenewAfter is the fraction of a token's lifetime after which a
// Source mints the next one, when Config.RenewAfter is zero.
const DefaultRenewAfter = 2.0 / 3

// Config configures a Source.
type Config struct {
	// Issuer mints the tokens. Required.
	Issuer *devissuer.Issuer
	// Token is what every token holds. Subject, Audience and BindTo (the
	// client certificate the tokens are bound to) are required; a zero
	// Lifetime means devissuer.DefaultLifetime.
	Token devissuer.TokenRequest
	// RenewAfter is the fraction of the lifetime after which the next
	// token is minted, in (0, 1); zero means DefaultRenewAfter.
	RenewAfter float64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Source is a client's bearer token, minted on first use and again once
// RenewAfter of its lifetime has passed. It is safe for concurrent use.
type Source struct {
	iss   *devissuer.Issuer
	req   devissuer.TokenRequest
	renew time.Duration
	now   func() time.Time

	mu     sync.Mutex // serializes minting
	cur    atomic.Pointer[token]
	minted atomic.Int64
}

type token struct {
	authorization string // "Bearer <jwt>"
	renewAt       time.Time
}

// New returns a Source; it mints no token yet.
func New(c Config) (*Source, error) {
	switch {
	case c.Issuer == nil:
		return nil, errors.New("devtoken: an issuer is required")
	case c.Token.Subject == "" || c.Token.Audience == "":
		return nil, errors.New("devtoken: a token subject and audience are required")
	case c.Token.BindTo == nil:
		return nil, errors.New("devtoken: a certificate to bind the tokens to is required")
	case c.Token.Lifetime < 0 || c.Token.Lifetime > devissuer.MaxLifetime:
		return nil, fmt.Errorf("devtoken: token lifetime %v not in (0, %v]", c.Token.Lifetime, devissuer.MaxLifetime)
	case c.RenewAfter < 0 || c.RenewAfter >= 1:
		return nil, fmt.Errorf("devtoken: renew after %v of the lifetime, want a fraction in (0, 1)", c.RenewAfter)
	}
	if c.Token.Lifetime == 0 {
		c.Token.Lifetime = devissuer.DefaultLifetime
	}
	if c.RenewAfter == 0 {
		c.RenewAfter = DefaultRenewAfter
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return &Source{iss: c.Issuer, req: c.Token, renew: time.Duration(float64(c.Token.Lifetime) * c.RenewAfter), now: c.Now}, nil
}

// Authorization returns the current "Bearer <jwt>" value, minting a new
// token when there is none or the current one is due for renewal.
func (s *Source) Authorization() (string, error) {
	if t := s.cur.Load(); t != nil && s.now().Before(t.renewAt) {
		return t.authorization, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if t := s.cur.Load(); t != nil && now.Before(t.renewAt) {
		return t.authorization, nil
	}
	tok, err := s.iss.Mint(s.req)
	if err != nil {
		return "", fmt.Errorf("devtoken: minting a token for %s: %w", s.req.Subject, err)
	}
	t := &token{authorization: "Bearer " + tok, renewAt: now.Add(s.renew)}
	s.cur.Store(t)
	s.minted.Add(1)
	return t.authorization, nil
}

// Minted is how many tokens the Source minted.
func (s *Source) Minted() int64 { return s.minted.Load() }

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (s *Source) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	a, err := s.Authorization()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": a}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: a
// bearer token never travels in clear.
func (*Source) RequireTransportSecurity() bool { return true }
