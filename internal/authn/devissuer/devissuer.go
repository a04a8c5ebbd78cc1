// Package devissuer is a tiny OAuth 2.0 token issuer for `tresor dev` and
// for tests: it keeps ES256 signing keys in a folder, mints short-lived JWT
// access tokens in the shape internal/authn verifies, and serves its JWKS
// and an OIDC discovery document. Production configurations have no such
// issuer; never point a production server at one.
//
// Reach for [Open], then [Issuer.Mint]; give the server [Issuer.WriteJWKS]'s
// file (or [Issuer.Handler] behind https) as its JWKS.
package devissuer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// DefaultURL is the issuer (iss) an Issuer mints until SetURL.
const DefaultURL = "https://tresor-dev.invalid"

// Token lifetimes.
const (
	DefaultLifetime = 5 * time.Minute
	MaxLifetime     = 15 * time.Minute
)

// KeyFile is the name of the key file in the issuer's folder.
const KeyFile = "issuer-keys.pem"

// Issuer mints tokens. It is safe for concurrent use.
type Issuer struct {
	path string

	mu   sync.RWMutex
	url  string
	keys []signingKey // oldest first; the last one signs
	now  func() time.Time
}

type signingKey struct {
	kid    string
	priv   *ecdsa.PrivateKey
	signer jose.Signer
}

// Open opens the issuer kept in dir: on first use it creates dir (0700) and
// an ES256 key (PEM, 0600); later it loads the keys. A key file readable
// by group or others is refused.
func Open(dir string) (*Issuer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devissuer: %w", err)
	}
	i := &Issuer{path: filepath.Join(dir, KeyFile), url: DefaultURL, now: time.Now}
	fi, err := os.Stat(i.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := i.Rotate(); err != nil {
			return nil, err
		}
		return i, nil
	case err != nil:
		return nil, fmt.Errorf("devissuer: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("devissuer: key file %s has mode %v; it must not be readable by group or others (chmod 600)", i.path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(i.path)
	if err != nil {
		return nil, fmt.Errorf("devissuer: %w", err)
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "PRIVATE KEY" {
			continue
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("devissuer: key file %s: cannot parse a key", i.path)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok || ek.Curve != elliptic.P256() {
			return nil, fmt.Errorf("devissuer: key file %s: key is not ECDSA P-256", i.path)
		}
		sk, err := newSigningKey(ek)
		if err != nil {
			return nil, err
		}
		i.keys = append(i.keys, sk)
	}
	if len(i.keys) == 0 {
		return nil, fmt.Errorf("devissuer: key file %s holds no key", i.path)
	}
	return i, nil
}

func newSigningKey(priv *ecdsa.PrivateKey) (signingKey, error) {
	pub := jose.JSONWebKey{Key: &priv.PublicKey}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return signingKey{}, fmt.Errorf("devissuer: key thumbprint: %w", err)
	}
	kid := base64.RawURLEncoding.EncodeToString(tp)
	signer, err := jose.NewSigner(jose.SigningKey{
		Algorithm: jose.ES256,
		Key:       jose.JSONWebKey{Key: priv, KeyID: kid, Algorithm: string(jose.ES256)},
	}, (&jose.SignerOptions{}).WithType("at+jwt"))
	if err != nil {
		return signingKey{}, fmt.Errorf("devissuer: signer: %w", err)
	}
	return signingKey{kid: kid, priv: priv, signer: signer}, nil
}

// Rotate adds a new signing key; later tokens are signed with it. Older
// keys stay in the JWKS so tokens they signed still verify.
func (i *Issuer) Rotate() error {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("devissuer: key: %w", err)
	}
	sk, err := newSigningKey(priv)
	if err != nil {
		return err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	keys := append(i.keys[:len(i.keys):len(i.keys)], sk)
	if err := writeKeys(i.path, keys); err != nil {
		return err
	}
	i.keys = keys
	return nil
}

// writeKeys replaces the key file atomically (0600).
func writeKeys(path string, keys []signingKey) error {
	var buf []byte
	for _, k := range keys {
		der, err := x509.MarshalPKCS8PrivateKey(k.priv)
		if err != nil {
			return fmt.Errorf("devissuer: encoding key: %w", err)
		}
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".issuer-keys-*")
	if err != nil {
		return fmt.Errorf("devissuer: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("devissuer: %w", err)
	}
	if _, err := tmp.Write(buf); err != nil {
		tmp.Close()
		return fmt.Errorf("devissuer: writing key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("devissuer: writing key file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("devissuer: %w", err)
	}
	return nil
}

// SetURL sets the issuer (iss) this issuer mints and its discovery
// document names, e.g. the URL of the https server serving [Issuer.Handler].
func (i *Issuer) SetURL(u string) {
	i.mu.Lock()
	i.url = strings.TrimSuffix(u, "/")
	i.mu.Unlock()
}

// Issuer returns the iss value this issuer mints.
func (i *Issuer) Issuer() string {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.url
}

// KeyID returns the kid of the current signing key.
func (i *Issuer) KeyID() string {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.keys[len(i.keys)-1].kid
}

// JWKS returns the public JWK Set, every key with its kid.
func (i *Issuer) JWKS() []byte {
	i.mu.RLock()
	defer i.mu.RUnlock()
	set := jose.JSONWebKeySet{}
	for _, k := range i.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{
			Key: &k.priv.PublicKey, KeyID: k.kid, Algorithm: string(jose.ES256), Use: "sig",
		})
	}
	b, err := json.Marshal(set)
	if err != nil {
		panic("devissuer: encoding JWKS: " + err.Error()) // public P-256 keys always encode
	}
	return b
}

// WriteJWKS writes the public JWKS to path (0644), atomically, so a
// server polling the file never reads half of it.
func (i *Issuer) WriteJWKS(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".jwks-*")
	if err != nil {
		return fmt.Errorf("devissuer: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(i.JWKS())
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), 0o644)); err != nil {
		return fmt.Errorf("devissuer: writing JWKS: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("devissuer: %w", err)
	}
	return nil
}

// TokenRequest describes a token to mint.
type TokenRequest struct {
	Subject  string // required
	Audience string // required
	Roles    []string
	Scopes   []string
	// Lifetime defaults to 5m and may not exceed 15m.
	Lifetime time.Duration
	// BindTo, when set, binds the token to this client certificate
	// (cnf x5t#S256, RFC 8705).
	BindTo *x509.Certificate
}

// Mint returns a signed compact JWT with iat, nbf, exp, jti, iss, aud,
// sub, roles (an array) and scope (space separated), plus cnf when bound.
func (i *Issuer) Mint(req TokenRequest) (string, error) {
	if req.Subject == "" || req.Audience == "" {
		return "", errors.New("devissuer: token subject and audience are required")
	}
	life := req.Lifetime
	switch {
	case life == 0:
		life = DefaultLifetime
	case life < 0 || life > MaxLifetime:
		return "", fmt.Errorf("devissuer: token lifetime %v not in (0, %v]", life, MaxLifetime)
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("devissuer: %w", err)
	}
	i.mu.RLock()
	iss, key, now := i.url, i.keys[len(i.keys)-1], i.now()
	i.mu.RUnlock()
	claims := map[string]any{
		"iss": iss,
		"sub": req.Subject,
		"aud": req.Audience,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(life).Unix(),
		"jti": base64.RawURLEncoding.EncodeToString(jti[:]),
	}
	if len(req.Roles) > 0 {
		claims["roles"] = req.Roles
	}
	if len(req.Scopes) > 0 {
		claims["scope"] = strings.Join(req.Scopes, " ")
	}
	if req.BindTo != nil {
		sum := sha256.Sum256(req.BindTo.Raw)
		claims["cnf"] = map[string]string{"x5t#S256": base64.RawURLEncoding.EncodeToString(sum[:])}
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("devissuer: %w", err)
	}
	jws, err := key.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("devissuer: signing: %w", err)
	}
	return jws.CompactSerialize()
}

// Handler serves GET /.well-known/openid-configuration (naming Issuer()
// and Issuer()+"/jwks.json") and GET /jwks.json.
func (i *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		iss := i.Issuer()
		writeJSON(w, map[string]any{
			"issuer":                                iss,
			"jwks_uri":                              iss + "/jwks.json",
			"token_endpoint":                        iss + "/token",
			"id_token_signing_alg_values_supported": []string{"ES256"},
			"response_types_supported":              []string{"token"},
			"subject_types_supported":               []string{"public"},
		})
	})
	mux.HandleFunc("GET /jwks.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(i.JWKS())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encoding error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}
