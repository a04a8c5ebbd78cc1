package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// supportedAlgs are the JWS algorithms a configuration may allow.
var supportedAlgs = map[string]jose.SignatureAlgorithm{
	"RS256": jose.RS256, "RS384": jose.RS384, "RS512": jose.RS512,
	"PS256": jose.PS256, "PS384": jose.PS384, "PS512": jose.PS512,
	"ES256": jose.ES256, "ES384": jose.ES384, "ES512": jose.ES512,
	"EdDSA": jose.EdDSA,
}

// verifiedToken is what a verified token contributes to a Principal; it is
// what the cache keeps. It holds no part of the token's signature.
type verifiedToken struct {
	// signed is the token's signing input (header.payload, a copy that
	// does not keep the raw token alive): a cache hit must match it.
	signed               string
	subject, issuer, jti string
	roles, scopes        []string
	exp                  time.Time
	bound                bool   // the token has a cnf claim
	x5t                  string // its cnf x5t#S256, "" if none
	keys                 *keySet
}

// tokenVerifier verifies bearer tokens against a JWKS.
type tokenVerifier struct {
	cfg       TokenConfig
	audiences map[string]struct{}
	allowed   map[string]bool
	src       keySource
	cache     *tokenCache
	logger    *slog.Logger

	keys     atomic.Pointer[keySet]
	reloadMu sync.Mutex // serializes reloads

	bg context.Context // background fetches
	wg *sync.WaitGroup // the Authenticator's, for forced refreshes

	refMu      sync.Mutex
	inflight   chan struct{} // closed when the running forced refresh ends
	lastForced time.Time
	closed     bool
}

// verified returns the verified claims of raw, from the cache when it can.
func (tv *tokenVerifier) verified(ctx context.Context, raw string) (*verifiedToken, error) {
	signed, key, cacheable := tokenKey(raw)
	now := tv.cfg.Now()
	if !cacheable {
		return tv.verify(ctx, raw, now) // malformed
	}
	if v := tv.cache.get(key); v != nil && v.signed == signed {
		if now.Before(v.exp) && v.keys == tv.keys.Load() {
			return v, nil
		}
		tv.cache.remove(key)
	}
	// An entry under key for another token (the same signature part, another
	// signing input) is left alone; it is replaced only if raw verifies.
	v, err := tv.verify(ctx, raw, now)
	if err != nil {
		return nil, err
	}
	if now.Before(v.exp) {
		v.signed = strings.Clone(signed)
		tv.cache.put(key, v)
	}
	return v, nil
}

// header is the part of a JWS protected header this package reads.
type header struct {
	Alg, Kid string
	Crit     bool // the header has a crit member
}

// parseHeader reads a protected header by exact (case-sensitive) member
// names, as go-jose does.
func parseHeader(b []byte) (header, bool) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return header{}, false
	}
	alg, ok1 := claimString(m, "alg")
	kid, ok2 := claimString(m, "kid")
	_, crit := m["crit"]
	return header{Alg: alg, Kid: kid, Crit: crit}, ok1 && ok2
}

// verify checks raw fully: its form, algorithm, key, signature and claims.
func (tv *tokenVerifier) verify(ctx context.Context, raw string, now time.Time) (*verifiedToken, error) {
	if strings.Count(raw, ".") != 2 {
		return nil, ErrTokenMalformed
	}
	h64, rest, _ := strings.Cut(raw, ".")
	p64, s64, _ := strings.Cut(rest, ".")
	hb, err := base64.RawURLEncoding.DecodeString(h64)
	if err != nil {
		return nil, ErrTokenMalformed
	}
	h, ok := parseHeader(hb)
	if !ok || h.Alg == "" {
		return nil, ErrTokenMalformed
	}
	if !tv.allowed[h.Alg] {
		return nil, ErrTokenAlgorithm // "none", HS*, anything not allowed
	}
	if h.Crit || p64 == "" || s64 == "" {
		return nil, ErrTokenMalformed // no JWS extensions are understood
	}
	cands, err := tv.candidates(ctx, h.Kid, h.Alg)
	if err != nil {
		return nil, err
	}
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{supportedAlgs[h.Alg]})
	if err != nil || len(jws.Signatures) != 1 {
		return nil, ErrTokenMalformed
	}
	var payload []byte
	for _, k := range cands {
		if payload, err = jws.Verify(k.pub); err == nil {
			break
		}
	}
	if payload == nil {
		return nil, ErrTokenSignature
	}
	v, err := tv.checkClaims(payload, now)
	if err != nil {
		return nil, err
	}
	v.keys = cands[0].set
	return v, nil
}

// candidates returns the keys that may verify a token with kid and alg,
// refetching the JWKS (rate-limited) when the kid is unknown.
func (tv *tokenVerifier) candidates(ctx context.Context, kid, alg string) ([]*verKey, error) {
	for attempt := 0; ; attempt++ {
		ks := tv.keys.Load()
		cands, found := ks.candidates(kid, alg)
		if found {
			if len(cands) == 0 {
				return nil, ErrTokenAlgorithm // the key is of another type
			}
			return cands, nil
		}
		if attempt > 0 {
			return nil, ErrTokenUnknownKey
		}
		refreshed, err := tv.forceRefresh(ctx)
		if err != nil {
			return nil, err
		}
		if !refreshed {
			return nil, ErrTokenUnknownKey
		}
	}
}

// forceRefresh refetches the JWKS because of an unknown kid, at most once
// per UnknownKeyRefetchInterval; callers arriving during a refetch wait for
// it. It reports whether a refetch ran. The fetch itself runs on the
// background context, so a caller giving up does not cut it short.
func (tv *tokenVerifier) forceRefresh(ctx context.Context) (bool, error) {
	tv.refMu.Lock()
	ch := tv.inflight
	if ch == nil {
		now := tv.cfg.Now()
		if tv.closed || (!tv.lastForced.IsZero() && now.Sub(tv.lastForced) < UnknownKeyRefetchInterval) {
			tv.refMu.Unlock()
			return false, nil
		}
		tv.lastForced = now
		ch = make(chan struct{})
		tv.inflight = ch
		tv.wg.Add(1)
		go func() {
			defer tv.wg.Done()
			if err := tv.reload(tv.bg); err != nil {
				tv.logger.Warn("authn: JWKS refetch for an unknown key id failed", "err", err)
			}
			tv.refMu.Lock()
			tv.inflight = nil
			tv.refMu.Unlock()
			close(ch)
		}()
	}
	tv.refMu.Unlock()
	select {
	case <-ch:
		return true, nil
	case <-ctx.Done():
		return false, fmt.Errorf("authn: %w", ctx.Err())
	}
}

func (tv *tokenVerifier) markClosed() {
	tv.refMu.Lock()
	tv.closed = true
	tv.refMu.Unlock()
}

// reload fetches the JWKS and, when it changed, installs it and empties the
// token cache. On any error the keys in use stay.
func (tv *tokenVerifier) reload(ctx context.Context) error {
	tv.reloadMu.Lock()
	defer tv.reloadMu.Unlock()
	data, err := tv.src.fetch(ctx)
	if err != nil {
		return err
	}
	sum := contentHash(data)
	if cur := tv.keys.Load(); cur != nil && cur.sum == sum {
		return nil
	}
	ks, err := parseJWKS(data, tv.logger)
	if err != nil {
		return err
	}
	ks.sum = sum
	tv.keys.Store(ks)
	tv.cache.purge()
	return nil
}

// run reloads the JWKS every RefreshInterval until ctx ends.
func (tv *tokenVerifier) run(ctx context.Context) {
	t := time.NewTicker(tv.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := tv.reload(ctx); err != nil && ctx.Err() == nil {
				tv.logger.Warn("authn: JWKS reload failed; keeping the current keys", "err", err)
			}
		}
	}
}

// checkClaims checks the claims of a verified payload. Claims are looked up
// by exact (case-sensitive) name.
func (tv *tokenVerifier) checkClaims(payload []byte, now time.Time) (*verifiedToken, error) {
	var all map[string]json.RawMessage
	if err := json.Unmarshal(payload, &all); err != nil || all == nil {
		return nil, ErrTokenMalformed
	}
	iss, ok1 := claimString(all, "iss")
	sub, ok2 := claimString(all, "sub")
	jti, ok3 := claimString(all, "jti")
	exp, hasExp, ok4 := claimDate(all, "exp")
	nbf, hasNbf, ok5 := claimDate(all, "nbf")
	iat, hasIat, ok6 := claimDate(all, "iat")
	auds, err := stringOrList(all["aud"])
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 || err != nil {
		return nil, ErrTokenMalformed
	}
	if iss != tv.cfg.Issuer {
		return nil, ErrTokenIssuer
	}
	if !slices.ContainsFunc(auds, func(a string) bool { _, ok := tv.audiences[a]; return ok }) {
		return nil, ErrTokenAudience
	}
	if sub == "" {
		return nil, fmt.Errorf("%w: no subject", ErrTokenMalformed)
	}
	if !hasExp {
		return nil, ErrTokenLifetime
	}
	skew := tv.cfg.ClockSkew
	if !now.Before(exp.Add(skew)) {
		return nil, ErrTokenExpired
	}
	if (hasNbf && now.Add(skew).Before(nbf)) || (hasIat && now.Add(skew).Before(iat)) {
		return nil, ErrTokenNotYetValid
	}
	var start time.Time // where the lifetime counts from: iat, else nbf
	switch {
	case hasIat:
		start = iat
	case hasNbf:
		start = nbf
	default:
		return nil, ErrTokenLifetime
	}
	if !exp.After(start) || exp.Sub(start) > tv.cfg.MaxLifetime {
		return nil, ErrTokenLifetime
	}
	v := &verifiedToken{subject: sub, issuer: iss, jti: jti, exp: exp}
	if raw, ok := all["cnf"]; ok && string(raw) != "null" {
		var cnf map[string]json.RawMessage
		if err := json.Unmarshal(raw, &cnf); err != nil || cnf == nil {
			return nil, ErrTokenMalformed
		}
		// A token bound to anything (even to a method this package cannot
		// check, such as DPoP's jkt) is not a bearer token; it is accepted
		// only with an x5t#S256 matching the presented certificate.
		v.bound = true
		if t, ok := cnf["x5t#S256"]; ok {
			if err := json.Unmarshal(t, &v.x5t); err != nil || v.x5t == "" {
				return nil, ErrTokenMalformed
			}
		}
	}
	if v.roles, err = claimList(all, tv.cfg.RolesClaim); err != nil {
		return nil, err
	}
	if v.scopes, err = claimList(all, tv.cfg.ScopesClaim); err != nil {
		return nil, err
	}
	return v, nil
}

// claimString reads an optional string claim; ok is false when it is
// present with another type.
func claimString(all map[string]json.RawMessage, name string) (s string, ok bool) {
	raw, present := all[name]
	if !present || string(raw) == "null" {
		return "", true
	}
	return s, json.Unmarshal(raw, &s) == nil
}

// claimDate reads an optional NumericDate claim; ok is false when it is
// present and not a valid NumericDate.
func claimDate(all map[string]json.RawMessage, name string) (t time.Time, present, ok bool) {
	raw, present := all[name]
	if !present || string(raw) == "null" {
		return time.Time{}, false, true
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		return time.Time{}, true, false
	}
	t, ok = numericDate(f)
	return t, true, ok
}

// numericDate converts a JWT NumericDate.
func numericDate(f float64) (time.Time, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1<<40 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// stringOrList decodes a JSON string or array of strings.
func stringOrList(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		return []string{s}, nil
	}
	var l []string
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, err
	}
	return l, nil
}

// claimList reads a roles or scopes claim at path: a string array or a
// space-separated string, returned sorted and deduplicated (nil if absent
// or empty).
func claimList(all map[string]json.RawMessage, path string) ([]string, error) {
	raw, ok := all[path]
	if !ok && strings.Contains(path, ".") {
		cur := all
		parts := strings.Split(path, ".")
		for i, part := range parts {
			r, ok := cur[part]
			if !ok {
				return nil, nil
			}
			if i == len(parts)-1 {
				raw = r
				break
			}
			cur = nil
			if err := json.Unmarshal(r, &cur); err != nil || cur == nil {
				return nil, nil // not an object: the claim is absent
			}
		}
	}
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var out []string
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, ErrTokenMalformed
		}
		out = strings.Fields(s)
	} else {
		var l []string
		if err := json.Unmarshal(raw, &l); err != nil {
			return nil, fmt.Errorf("%w: claim %q is neither a string nor a string array", ErrTokenMalformed, path)
		}
		for _, s := range l {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// verKey is one usable verification key of a JWKS.
type verKey struct {
	kid string
	alg string // the JWK's alg, "" if it names none
	pub any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	set *keySet
}

// compatible reports whether k may verify a signature of alg: the JWS alg
// must match the key's type (and curve), and the JWK's own alg if it has one.
func (k *verKey) compatible(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch pub := k.pub.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return pub.Curve == elliptic.P256()
		case "ES384":
			return pub.Curve == elliptic.P384()
		case "ES512":
			return pub.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// keySet is an immutable snapshot of a JWKS.
type keySet struct {
	keys  []*verKey
	byKID map[string][]*verKey
	sum   [32]byte
}

// candidates returns the keys of kid compatible with alg; found reports
// whether the set knows kid at all. A token without kid may use the one
// key compatible with alg, if there is exactly one.
func (ks *keySet) candidates(kid, alg string) (cands []*verKey, found bool) {
	if kid == "" {
		for _, k := range ks.keys {
			if k.compatible(alg) {
				cands = append(cands, k)
			}
		}
		if len(cands) != 1 {
			return nil, false
		}
		return cands, true
	}
	all := ks.byKID[kid]
	for _, k := range all {
		if k.compatible(alg) {
			cands = append(cands, k)
		}
	}
	return cands, len(all) > 0
}
