package devissuer

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tresorkms/tresor/internal/devpki"
)

func TestTokenEndpoint(t *testing.T) {
	iss, err := Open(filepath.Join(t.TempDir(), "issuer"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := devpki.NewCA("token test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srvPair, _ := ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	srvCert, _ := srvPair.TLSCertificate()
	const id = "spiffe://bank.example/payments"
	cliPair, _ := ca.IssueClient("payments", id, time.Hour)
	cliCert, _ := cliPair.TLSCertificate()

	serve := func(e *TokenEndpoint) *httptest.Server {
		srv := httptest.NewUnstartedServer(e)
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	scoped := serve(&TokenEndpoint{Issuer: iss, Audience: "tresor", Lifetime: 2 * time.Minute, Roles: []string{"app"}, Scopes: []string{"encrypt", "decrypt", "reveal"}})
	unscoped := serve(&TokenEndpoint{Issuer: iss, Audience: "tresor", Lifetime: 2 * time.Minute, Roles: []string{"app"}})
	client := func(withCert bool) *http.Client {
		cfg := &tls.Config{RootCAs: ca.Pool()}
		if withCert {
			cfg.Certificates = []tls.Certificate{cliCert}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	form := func(kv ...string) url.Values {
		v := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	tests := []struct {
		name      string
		srv       *httptest.Server
		method    string
		cert      bool
		body      url.Values
		basic     bool
		code      int
		errField  string
		wantScope string
	}{
		{"granted", scoped, http.MethodPost, true, form("grant_type", "client_credentials", "client_id", id, "scope", "encrypt decrypt"), false, 200, "", "encrypt decrypt"},
		{"granted without a scope", scoped, http.MethodPost, true, form("grant_type", "client_credentials", "client_id", id), false, 200, "", ""},
		{"no allow-list, no scope asked", unscoped, http.MethodPost, true, form("grant_type", "client_credentials", "client_id", id), false, 200, "", ""},
		{"a scope outside the allow-list", scoped, http.MethodPost, true, form("grant_type", "client_credentials", "client_id", id, "scope", "encrypt admin"), false, 400, "invalid_scope", ""},
		{"any scope without an allow-list", unscoped, http.MethodPost, true, form("grant_type", "client_credentials", "client_id", id, "scope", "encrypt"), false, 400, "invalid_scope", ""},
		{"common name as client_id", scoped, http.MethodPost, true, form("grant_type", "client_credentials", "client_id", "payments"), false, 401, "invalid_client", ""},
		{"GET", scoped, http.MethodGet, true, nil, false, 405, "invalid_request", ""},
		{"other grant", scoped, http.MethodPost, true, form("grant_type", "password", "client_id", id), false, 400, "unsupported_grant_type", ""},
		{"no certificate", scoped, http.MethodPost, false, form("grant_type", "client_credentials", "client_id", id), false, 401, "invalid_client", ""},
		{"another client_id", scoped, http.MethodPost, true, form("grant_type", "client_credentials", "client_id", "spiffe://bank.example/other"), false, 401, "invalid_client", ""},
		{"no client_id", scoped, http.MethodPost, true, form("grant_type", "client_credentials"), false, 401, "invalid_client", ""},
		{"a secret", scoped, http.MethodPost, true, form("grant_type", "client_credentials", "client_id", id, "client_secret", "hunter2"), false, 401, "invalid_client", ""},
		{"basic auth", scoped, http.MethodPost, true, form("grant_type", "client_credentials"), true, 401, "invalid_client", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, tt.srv.URL+"/token", strings.NewReader(tt.body.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tt.basic {
				req.SetBasicAuth(id, "hunter2")
			}
			resp, err := client(tt.cert).Do(req)
			if err != nil {
				t.Fatalf("POST /token err = %v", err)
			}
			defer resp.Body.Close()
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("decoding the answer: %v", err)
			}
			if resp.StatusCode != tt.code || resp.Header.Get("Cache-Control") != "no-store" {
				t.Fatalf("POST /token = %d (Cache-Control %q) %v, want %d, no-store", resp.StatusCode, resp.Header.Get("Cache-Control"), body, tt.code)
			}
			if tt.errField != "" {
				if body["error"] != tt.errField || body["access_token"] != nil {
					t.Errorf("error = %v, want %q and no token", body["error"], tt.errField)
				}
				if strings.Contains(resp.Header.Get("WWW-Authenticate")+toJSON(body), "hunter2") {
					t.Errorf("the answer echoes the secret")
				}
				return
			}
			if body["token_type"] != "Bearer" || body["expires_in"] != float64(120) {
				t.Errorf("answer = %v, want a Bearer token for 120s", body)
			}
			tok, _ := body["access_token"].(string)
			jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
			if err != nil {
				t.Fatalf("ParseSigned(access_token) err = %v", err)
			}
			var jwks jose.JSONWebKeySet
			if err := json.Unmarshal(iss.JWKS(), &jwks); err != nil {
				t.Fatal(err)
			}
			payload, err := jws.Verify(jwks.Keys[len(jwks.Keys)-1])
			if err != nil {
				t.Fatalf("Verify(access_token) err = %v", err)
			}
			var claims struct {
				Sub   string            `json:"sub"`
				Aud   string            `json:"aud"`
				Scope string            `json:"scope"`
				Roles []string          `json:"roles"`
				Cnf   map[string]string `json:"cnf"`
			}
			if err := json.Unmarshal(payload, &claims); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(cliCert.Certificate[0])
			if claims.Sub != id || claims.Aud != "tresor" || claims.Scope != tt.wantScope || len(claims.Roles) != 1 ||
				claims.Cnf["x5t#S256"] != base64.RawURLEncoding.EncodeToString(sum[:]) {
				t.Errorf("claims = %+v, want sub %s, aud tresor, scope %q, roles [app], bound to the client certificate", claims, id, tt.wantScope)
			}
		})
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
