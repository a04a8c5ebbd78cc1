package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// maxDocSize bounds a JWKS or discovery document.
const maxDocSize = 1 << 20

// minRSABits is the smallest RSA key accepted from a JWKS.
const minRSABits = 2048

// keySource fetches the raw JWKS document.
type keySource interface {
	fetch(ctx context.Context) ([]byte, error)
}

// fileSource reads a static JWKS file. It is read whole on every check; the
// content hash tells whether it changed, which covers mtime, size and
// same-size rewrites alike.
type fileSource struct{ path string }

func (f *fileSource) fetch(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fh, err := os.Open(f.path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return readLimited(fh, "JWKS file")
}

// remoteSource finds the jwks_uri by OIDC discovery (once) and fetches it.
type remoteSource struct {
	issuer  string
	client  *http.Client
	jwksURI string // set by the first successful discovery; guarded by tokenVerifier.reloadMu
}

func (r *remoteSource) fetch(ctx context.Context) ([]byte, error) {
	if r.jwksURI == "" {
		u, err := r.discover(ctx)
		if err != nil {
			return nil, err
		}
		r.jwksURI = u
	}
	return r.get(ctx, r.jwksURI)
}

func (r *remoteSource) discover(ctx context.Context) (string, error) {
	doc, err := r.get(ctx, strings.TrimSuffix(r.issuer, "/")+"/.well-known/openid-configuration")
	if err != nil {
		return "", fmt.Errorf("OIDC discovery: %w", err)
	}
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(doc, &meta); err != nil {
		return "", errors.New("OIDC discovery: document is not valid JSON")
	}
	if meta.Issuer != r.issuer {
		return "", fmt.Errorf("OIDC discovery: document names issuer %q, want %q", meta.Issuer, r.issuer)
	}
	u, err := url.Parse(meta.JWKSURI)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", errors.New("OIDC discovery: jwks_uri is not an https URL")
	}
	return meta.JWKSURI, nil
}

func (r *remoteSource) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDocSize))
		return nil, fmt.Errorf("GET %s: status %s", u, resp.Status)
	}
	return readLimited(resp.Body, u)
}

func readLimited(r io.Reader, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxDocSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxDocSize {
		return nil, fmt.Errorf("%s larger than %d bytes", what, maxDocSize)
	}
	return b, nil
}

func contentHash(b []byte) [32]byte { return sha256.Sum256(b) }

// privateMembers are JWK members that carry private or symmetric key
// material; a JWKS key with any of them is skipped.
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"}

// parseJWKS parses a JWK Set, keeping the public signature keys this
// package can use and skipping (with a log line) the rest, so one odd key
// does not take the whole set down. A set with no usable key is an error.
func parseJWKS(data []byte, logger *slog.Logger) (*keySet, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, errors.New("JWKS is not valid JSON")
	}
	ks := &keySet{byKID: make(map[string][]*verKey)}
	for i, raw := range doc.Keys {
		var members map[string]json.RawMessage
		if err := json.Unmarshal(raw, &members); err != nil {
			logger.Warn("authn: JWKS entry skipped: not a JSON object", "index", i)
			continue
		}
		if hasAny(members, privateMembers) {
			logger.Warn("authn: JWKS entry skipped: it holds private or symmetric key material", "index", i)
			continue
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			logger.Warn("authn: JWKS entry skipped: unsupported or invalid key", "index", i, "err", err)
			continue
		}
		if jwk.Use != "" && jwk.Use != "sig" {
			continue
		}
		k := &verKey{kid: jwk.KeyID, alg: jwk.Algorithm, set: ks}
		switch pub := jwk.Key.(type) {
		case *rsa.PublicKey:
			if pub.N.BitLen() < minRSABits {
				logger.Warn("authn: JWKS entry skipped: RSA key shorter than 2048 bits", "index", i, "kid", jwk.KeyID)
				continue
			}
			k.pub = pub
		case *ecdsa.PublicKey:
			k.pub = pub
		case ed25519.PublicKey:
			k.pub = pub
		default:
			logger.Warn("authn: JWKS entry skipped: not an RSA, EC or Ed25519 public key", "index", i, "kid", jwk.KeyID)
			continue
		}
		ks.keys = append(ks.keys, k)
		if k.kid != "" {
			ks.byKID[k.kid] = append(ks.byKID[k.kid], k)
		}
	}
	if len(ks.keys) == 0 {
		return nil, errors.New("JWKS has no usable signature key")
	}
	return ks, nil
}

func hasAny(m map[string]json.RawMessage, names []string) bool {
	for _, n := range names {
		if _, ok := m[n]; ok {
			return true
		}
	}
	return false
}
