package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/devpki"
	"github.com/tresorkms/tresor/internal/limits"
	"github.com/tresorkms/tresor/internal/store"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// TestSamePrincipalOverGRPCAndREST proves that a REST call passes the same
// chain as a gRPC call and ends with the same principal, action and
// decision: the gateway's in-process calls do not bypass the interceptors.
func TestSamePrincipalOverGRPCAndREST(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "same", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "same", Plaintext: []byte("x")}); err != nil {
		t.Fatalf("gRPC Encrypt() err = %v", err)
	}
	viaGRPC := ts.calls.last()
	if code, out := ts.rest(t, "POST", "/v1/keys/same:encrypt", map[string]any{"plaintext": b64("x")}); code != 200 {
		t.Fatalf("REST encrypt = %d %v, want 200", code, out)
	}
	viaREST := ts.calls.last()
	if viaGRPC.RequestID == viaREST.RequestID {
		t.Fatalf("the two calls share request id %q: the REST call was not recorded", viaREST.RequestID)
	}
	for _, rec := range []CallRecord{viaGRPC, viaREST} {
		if rec.Principal == nil {
			t.Fatalf("call record %+v has no principal", rec)
		}
	}
	g, r := viaGRPC.Principal, viaREST.Principal
	if g.Workload != paymentsID || r.Workload != g.Workload || r.Subject != g.Subject || r.Strength != authn.StrengthBoundToken || g.Strength != r.Strength || r.CertThumbprint != g.CertThumbprint {
		t.Errorf("principal over gRPC = %+v, over REST = %+v; want the same bound-token principal for %s", g, r, paymentsID)
	}
	if viaGRPC.Action != "Encrypt" || viaREST.Action != "Encrypt" || viaGRPC.Decision != "allow" || viaREST.Decision != "allow" || viaREST.Method != viaGRPC.Method {
		t.Errorf("records = %+v and %+v; want the same method, action Encrypt, decision allow", viaGRPC, viaREST)
	}
	if viaREST.Source != viaGRPC.Source || !viaREST.Source.IsLoopback() {
		t.Errorf("sources = %v (gRPC) and %v (REST); want the same loopback address", viaGRPC.Source, viaREST.Source)
	}
}

// TestEveryMethodHasARule walks every method of every registered service:
// each has a rule whose action the policy schema declares, and the table
// names no method that is not served.
func TestEveryMethodHasARule(t *testing.T) {
	ts := startServer(t, 0)
	eng := ts.policy.Engine()
	served := map[string]bool{}
	for svc, info := range ts.srv.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			full := "/" + svc + "/" + m.Name
			served[full] = true
			rule, ok := methodRules[full]
			if !ok {
				t.Errorf("method %s has no rule: it would be denied to everyone", full)
				continue
			}
			decided := []string{rule.action}
			if rule.useActions != nil {
				decided = rule.useActions
			}
			for _, a := range decided {
				if !eng.HasAction(a) {
					t.Errorf("method %s is decided as action %q, which the Cedar schema does not declare", full, a)
				}
			}
			if rule.class == "" {
				t.Errorf("method %s has no rate-limit class", full)
			}
		}
	}
	if len(served) < 17 {
		t.Errorf("walked %d methods, want at least 17 (the test must see every service)", len(served))
	}
	for full := range methodRules {
		if !served[full] {
			t.Errorf("rule for %s, which the server does not serve", full)
		}
	}
}

// TestUnmappedMethodIsDenied: a method without a rule never reaches its
// handler, whoever calls.
func TestUnmappedMethodIsDenied(t *testing.T) {
	ts := startServer(t, 0)
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+ts.token))
	ctx = peerContext(ctx, ts.client.Leaf)
	called := false
	_, err := ts.srv.chain.unary(ctx, &tresorv1.GetKeyRequest{Key: "k"}, &grpc.UnaryServerInfo{FullMethod: "/tresor.v1.KeyService/DestroyEverything"}, func(context.Context, any) (any, error) {
		called = true
		return nil, nil
	})
	if status.Code(err) != codes.PermissionDenied || called {
		t.Errorf("unary(unmapped method) err = %v, handler called %v; want PermissionDenied and no call", err, called)
	}
	if rec := ts.calls.last(); rec.Decision != "deny" || rec.Principal == nil {
		t.Errorf("record of the unmapped call = %+v, want an authenticated caller denied", rec)
	}
}

// signToken signs claims with the test issuer's current key (or with alg
// none / HS256 when asked), for tokens the issuer would refuse to mint.
func signToken(t *testing.T, ts *testServer, dir string, claims map[string]any, alg string) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	switch alg {
	case "none":
		return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(payload) + "."
	case "HS256-with-public-key":
		// The classic confusion attack: HMAC keyed with the issuer's
		// public key, which anyone can read from the JWKS.
		header := enc([]byte(`{"alg":"HS256","typ":"JWT","kid":"` + ts.issuer.KeyID() + `"}`))
		mac := hmac.New(sha256.New, ts.issuer.JWKS())
		mac.Write([]byte(header + "." + enc(payload)))
		return header + "." + enc(payload) + "." + enc(mac.Sum(nil))
	}
	raw, err := os.ReadFile(filepath.Join(dir, devissuer.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	var last *ecdsa.PrivateKey
	for rest := raw; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		last = k.(*ecdsa.PrivateKey)
	}
	kid := ts.issuer.KeyID()
	if alg == "unknown-key" {
		other, err := devissuer.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		otherTok, err := other.Mint(devissuer.TokenRequest{Subject: "x", Audience: testAudience})
		if err != nil {
			t.Fatal(err)
		}
		return otherTok
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: last, KeyID: kid}}, (&jose.SignerOptions{}).WithType("at+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAuthenticationRefusals: every way to fail authentication is refused
// with Unauthenticated (401 over REST), runs no handler and changes nothing.
func TestAuthenticationRefusals(t *testing.T) {
	ctx := context.Background()
	issuerDir := t.TempDir()
	ts := startServerWithIssuerDir(t, issuerDir)
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "guarded", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatal(err)
	}
	before := keyRevisions(t, ts.store)
	now := time.Now()
	claims := func(edit func(map[string]any)) map[string]any {
		c := map[string]any{
			"iss": testIssuerURL, "sub": "payments-batch", "aud": testAudience,
			"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "jti": "j1",
		}
		edit(c)
		return c
	}
	other := ts.clientCert(t, "spiffe://bank.example/other")
	tests := []struct {
		name   string
		cert   tls.Certificate
		token  string
		reason string
	}{
		{"no token", ts.client, "", "token"},
		{"garbage token", ts.client, "not-a-jwt", "token"},
		{"expired token", ts.client, signToken(t, ts, issuerDir, claims(func(c map[string]any) {
			c["iat"], c["nbf"], c["exp"] = now.Add(-20*time.Minute).Unix(), now.Add(-20*time.Minute).Unix(), now.Add(-10*time.Minute).Unix()
		}), "ES256"), "expired"},
		{"token not yet valid", ts.client, signToken(t, ts, issuerDir, claims(func(c map[string]any) {
			c["iat"], c["nbf"], c["exp"] = now.Add(5*time.Minute).Unix(), now.Add(5*time.Minute).Unix(), now.Add(10*time.Minute).Unix()
		}), "ES256"), "not"},
		{"wrong issuer", ts.client, signToken(t, ts, issuerDir, claims(func(c map[string]any) { c["iss"] = "https://evil.example" }), "ES256"), "issuer"},
		{"wrong audience", ts.client, ts.mint(t, devissuer.TokenRequest{Subject: "s", Audience: "someone-else"}), "audience"},
		{"alg none", ts.client, signToken(t, ts, issuerDir, claims(func(map[string]any) {}), "none"), "alg"},
		{"HS256 signed with the public key", ts.client, signToken(t, ts, issuerDir, claims(func(map[string]any) {}), "HS256-with-public-key"), "alg"},
		{"lifetime over the maximum", ts.client, signToken(t, ts, issuerDir, claims(func(c map[string]any) { c["exp"] = now.Add(2 * time.Hour).Unix() }), "ES256"), "lifetime"},
		{"key not in the JWKS", ts.client, signToken(t, ts, issuerDir, nil, "unknown-key"), "key"},
		{"bound token over another certificate", other, ts.token, "bound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := ts.dial(t, tt.cert, tt.token)
			_, err := tresorv1.NewCryptoServiceClient(conn).Encrypt(ctx, &tresorv1.EncryptRequest{Key: "guarded", Plaintext: []byte("p")})
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(strings.ToLower(status.Convert(err).Message()), tt.reason) {
				t.Errorf("gRPC Encrypt with %s err = %v, want Unauthenticated mentioning %q", tt.name, err, tt.reason)
			}
			if tt.token != "" && len(tt.token) > 20 && strings.Contains(fmt.Sprint(err), tt.token[len(tt.token)-20:]) {
				t.Errorf("error %v quotes the token", err)
			}
			client := ts.httpClient(tt.cert, tt.token)
			req, _ := http.NewRequest("POST", ts.base+"/v1/keys/guarded:encrypt", strings.NewReader(`{"plaintext":"cA=="}`))
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("REST encrypt with %s err = %v", tt.name, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("REST encrypt with %s = %d (WWW-Authenticate %q), want 401 with a Bearer challenge", tt.name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
			if rec := ts.calls.last(); rec.Principal != nil || rec.Decision != "" || rec.Code != "Unauthenticated" {
				t.Errorf("record = %+v, want an unauthenticated call that never reached authorization", rec)
			}
		})
	}
	if after := keyRevisions(t, ts.store); after != before {
		t.Errorf("key store changed from %q to %q", before, after)
	}
	if logs := ts.logs.String(); strings.Contains(logs, ts.token) {
		t.Errorf("logs contain the bearer token")
	}
}

// startServerWithIssuerDir is startServer with the token issuer's keys in
// dir, so a test can sign tokens the issuer refuses to mint.
func startServerWithIssuerDir(t *testing.T, dir string) *testServer {
	t.Helper()
	return startServerWith(t, serverConfig{issuerDir: dir})
}

// TestTLSRefusals: without a client certificate, with one from another CA
// or an expired one, the handshake fails and no call is made.
func TestTLSRefusals(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	otherCA := newTestCA(t, "other CA")
	fromOther := issueClient(t, otherCA, paymentsID, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	expired := issueClient(t, ts.ca, paymentsID, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	tests := []struct {
		name string
		cert tls.Certificate
	}{
		{"no client certificate", tls.Certificate{}},
		{"certificate from another CA", fromOther},
		{"expired certificate", expired},
	}
	n := len(ts.calls.recs)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := ts.dial(t, tt.cert, ts.token)
			_, err := tresorv1.NewCryptoServiceClient(conn).Encrypt(ctx, &tresorv1.EncryptRequest{Key: "k", Plaintext: []byte("p")})
			if status.Code(err) != codes.Unavailable {
				t.Errorf("Encrypt with %s err = %v, want Unavailable (handshake refused)", tt.name, err)
			}
			if _, err := ts.httpClient(tt.cert, ts.token).Post(ts.base+"/v1/keys/k:encrypt", "application/json", strings.NewReader(`{}`)); err == nil {
				t.Errorf("REST with %s: err = nil, want the handshake refused", tt.name)
			}
		})
	}
	if got := len(ts.calls.recs); got != n {
		t.Errorf("%d calls reached the chain, want 0", got-n)
	}
}

// examples configures a server with the shipped example policies. When
// adminFromLoopback is set the admin network becomes 127.0.0.0/8, so that
// tests on loopback can administer.
func examples(t *testing.T, adminFromLoopback bool, now func() time.Time) *testServer {
	t.Helper()
	var replace []string
	if adminFromLoopback {
		replace = []string{"10.20.0.0/16", "127.0.0.0/8"}
	}
	return startServerWith(t, serverConfig{policies: examplePolicies(t, replace...), now: now})
}

func at(s string) func() time.Time {
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return func() time.Time { return tm }
}

// caller is a workload's gRPC clients with a token of given roles.
type caller struct {
	keys   tresorv1.KeyServiceClient
	crypto tresorv1.CryptoServiceClient
	http   *http.Client
}

func (ts *testServer) as(t *testing.T, workload string, bound bool, roles ...string) caller {
	t.Helper()
	cert := ts.clientCert(t, workload)
	req := devissuer.TokenRequest{Subject: "user-" + workload[strings.LastIndex(workload, "/")+1:], Roles: roles}
	if bound {
		req.BindTo = cert.Leaf
	}
	tok := ts.mint(t, req)
	conn := ts.dial(t, cert, tok)
	return caller{keys: tresorv1.NewKeyServiceClient(conn), crypto: tresorv1.NewCryptoServiceClient(conn), http: ts.httpClient(cert, tok)}
}

// TestExamplePolicies runs every rule of examples/policies through the
// server, allowed and denied, over gRPC (and REST where headers matter).
func TestExamplePolicies(t *testing.T) {
	ctx := context.Background()
	const (
		analyticsID = "spiffe://bank.example/analytics"
		adminID     = "spiffe://bank.example/key-admin-console"
		otherID     = "spiffe://bank.example/other"
	)
	// Saturday 20:00 UTC: outside business hours.
	ts := examples(t, true, at("2026-11-28T20:00:00Z"))
	admin := ts.as(t, adminID, true, "key-admin")
	for _, k := range []struct{ id, owner, tier string }{
		{"pan", paymentsID, "restricted"},
		{"iban", paymentsID, "confidential"},
		{"others", otherID, "confidential"},
	} {
		if _, err := admin.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: k.id, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, Labels: map[string]string{"owner": k.owner, "sensitivity": k.tier}}); err != nil {
			t.Fatalf("key admin CreateKey(%s) err = %v, want nil (rule 5, admin network)", k.id, err)
		}
	}
	payments := ts.as(t, paymentsID, true)
	paymentsUnbound := ts.as(t, paymentsID, false)
	analyst := ts.as(t, analyticsID, true, "analyst")
	approver := ts.as(t, paymentsID, true, "payments-approver")
	seal := func(key string) string {
		r, err := payments.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: key, Plaintext: []byte("4111111111111111")})
		if err != nil {
			t.Fatalf("payments Encrypt(%s) err = %v, want nil (rule 1)", key, err)
		}
		return r.GetCiphertext()
	}
	pan, iban := seal("pan"), seal("iban")
	withValue := func(v string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, TransactionValueHeader, v)
	}
	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"rule 1: payments encrypts with its own key", func() error {
			_, err := payments.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "iban", Plaintext: []byte("x")})
			return err
		}, codes.OK},
		{"rule 1: payments may not use another owner's key", func() error {
			_, err := payments.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "others", Plaintext: []byte("x")})
			return err
		}, codes.PermissionDenied},
		{"rule 1: payments decrypts its confidential data", func() error {
			_, err := payments.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: iban})
			return err
		}, codes.OK},
		{"rule 1: a missing key is refused as if it existed", func() error {
			_, err := payments.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "no-such-key", Plaintext: []byte("x")})
			return err
		}, codes.PermissionDenied},
		{"rule 2: analyst reveals confidential data", func() error {
			_, err := analyst.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: iban})
			return err
		}, codes.OK},
		{"rule 2: analyst never reveals restricted data, even with a bound token", func() error {
			_, err := analyst.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: pan})
			return err
		}, codes.PermissionDenied},
		{"rule 2: analyst may not encrypt", func() error {
			_, err := analyst.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "iban", Plaintext: []byte("x")})
			return err
		}, codes.PermissionDenied},
		{"rule 3: restricted decrypt after hours with a bound token", func() error {
			_, err := payments.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: pan})
			return err
		}, codes.OK},
		{"rule 3: restricted decrypt after hours with an unbound token", func() error {
			_, err := paymentsUnbound.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: pan})
			return err
		}, codes.PermissionDenied},
		{"rule 3: confidential decrypt after hours with an unbound token", func() error {
			_, err := paymentsUnbound.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: iban})
			return err
		}, codes.OK},
		{"rule 4: transaction of 10000.01 without the approver role", func() error {
			_, err := payments.crypto.Encrypt(withValue("10000.01"), &tresorv1.EncryptRequest{Key: "iban", Plaintext: []byte("x")})
			return err
		}, codes.PermissionDenied},
		{"rule 4: transaction of 10000.01 with the approver role", func() error {
			_, err := approver.crypto.Encrypt(withValue("10000.01"), &tresorv1.EncryptRequest{Key: "iban", Plaintext: []byte("x")})
			return err
		}, codes.OK},
		{"rule 4: transaction of 9999.99 without the approver role", func() error {
			_, err := payments.crypto.Encrypt(withValue("9999.99"), &tresorv1.EncryptRequest{Key: "iban", Plaintext: []byte("x")})
			return err
		}, codes.OK},
		{"rule 4: a malformed transaction value", func() error {
			_, err := payments.crypto.Encrypt(withValue("ten thousand"), &tresorv1.EncryptRequest{Key: "iban", Plaintext: []byte("x")})
			return err
		}, codes.InvalidArgument},
		{"rule 5: a workload without key-admin may not rotate", func() error {
			_, err := payments.keys.RotateKey(ctx, &tresorv1.RotateKeyRequest{Key: "pan"})
			return err
		}, codes.PermissionDenied},
		{"rule 5: key admin rotates from the admin network", func() error {
			_, err := admin.keys.RotateKey(ctx, &tresorv1.RotateKeyRequest{Key: "pan"})
			return err
		}, codes.OK},
		{"rule 5: key admin may not encrypt", func() error {
			_, err := admin.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "pan", Plaintext: []byte("x")})
			return err
		}, codes.PermissionDenied},
		{"rule 6: owners read their keys' metadata", func() error {
			_, err := payments.keys.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "pan"})
			return err
		}, codes.OK},
		{"rule 6: no one else does", func() error {
			_, err := analyst.keys.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "pan"})
			return err
		}, codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); status.Code(err) != tt.want {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
	t.Run("rule 4 over REST: the header reaches the policy", func(t *testing.T) {
		for _, c := range []struct {
			value string
			want  int
		}{{"10000.01", 403}, {"9999.99", 200}, {"1e9", 400}} {
			req, _ := http.NewRequest("POST", ts.base+"/v1/keys/iban:encrypt", strings.NewReader(`{"plaintext":"cA=="}`))
			req.Header.Set("X-Tresor-Transaction-Value", c.value)
			resp, err := payments.http.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("REST encrypt with X-Tresor-Transaction-Value %s = %d, want %d", c.value, resp.StatusCode, c.want)
			}
		}
	})
	t.Run("rule 3 in business hours: an unbound token is enough", func(t *testing.T) {
		// Wednesday 10:00 UTC.
		day := examples(t, true, at("2026-11-25T10:00:00Z"))
		adm := day.as(t, adminID, true, "key-admin")
		if _, err := adm.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "pan", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, Labels: map[string]string{"owner": paymentsID, "sensitivity": "restricted"}}); err != nil {
			t.Fatal(err)
		}
		p := day.as(t, paymentsID, false)
		ct, err := p.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "pan", Plaintext: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: ct.GetCiphertext()}); err != nil {
			t.Errorf("restricted Decrypt at 10:00 on a Wednesday with an unbound token err = %v, want nil", err)
		}
	})
	t.Run("rule 5: key admin from outside the admin network", func(t *testing.T) {
		outside := examples(t, false, at("2026-11-25T10:00:00Z"))
		adm := outside.as(t, adminID, true, "key-admin")
		if _, err := adm.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "k", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("CreateKey by key-admin from 127.0.0.1 with the admin network 10.20.0.0/16: err = %v, want PermissionDenied", err)
		}
		if keys, _, _ := outside.store.ListKeys(ctx, 10, ""); len(keys) != 0 {
			t.Errorf("a refused CreateKey stored %d keys, want 0", len(keys))
		}
	})
}

// TestPolicyReload: a policy that does not validate never replaces the one
// in force; a valid change applies without a restart.
func TestPolicyReload(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "r", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatal(err)
	}
	dir := ts.policyDir
	bad := filepath.Join(dir, "bad.cedar")
	if err := os.WriteFile(bad, []byte(`permit (principal, action, resource) when { principal.no_such_attribute == 1 };`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ts.policy.Reload(); err == nil {
		t.Errorf("Reload() with a policy that does not validate err = nil, want an error")
	}
	if _, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "r", Plaintext: []byte("x")}); err != nil {
		t.Errorf("Encrypt() after a refused reload err = %v, want nil (old policy in force)", err)
	}
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, permitPolicyKey), []byte(`permit (principal, action == Tresor::Action::"CheckHealth", resource);`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ts.policy.Reload(); err != nil {
		t.Fatalf("Reload() err = %v, want nil", err)
	}
	if _, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "r", Plaintext: []byte("x")}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("Encrypt() after the permit was withdrawn err = %v, want PermissionDenied", err)
	}
	if _, err := ts.health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("Health.Check() under the new policy err = %v, want nil", err)
	}
}

// TestValidationBeforeAuthorization: the chain's order is authenticate,
// validate, authorize.
func TestChainOrder(t *testing.T) {
	ctx := context.Background()
	ts := startServerWith(t, serverConfig{policies: map[string]string{"health.cedar": `permit (principal, action == Tresor::Action::"CheckHealth", resource);`}})
	if _, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "Not A Key!"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("invalid Encrypt by an authenticated caller the policy refuses: err = %v, want InvalidArgument (validation before authorization)", err)
	}
	anon := ts.dial(t, ts.client, "")
	if _, err := tresorv1.NewCryptoServiceClient(anon).Encrypt(ctx, &tresorv1.EncryptRequest{Key: "Not A Key!"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("invalid Encrypt without a token: err = %v, want Unauthenticated (authentication first)", err)
	}
	if _, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "valid", Plaintext: []byte("x")}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("valid Encrypt the policy refuses: err = %v, want PermissionDenied", err)
	}
	// Streams pass the same chain: Watch is authorized like Check.
	w, err := ts.health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if err != nil {
		t.Errorf("Health.Watch() err = %v, want a first status", err)
	}
	w2, err := healthpb.NewHealthClient(anon).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w2.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("Health.Watch() without a token err = %v, want Unauthenticated", err)
	}
}

func retryInfo(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// TestRateLimits: over a class's rate a principal gets RESOURCE_EXHAUSTED
// with a retry hint (429 with Retry-After over REST); others are not
// affected.
func TestRateLimits(t *testing.T) {
	ctx := context.Background()
	ts := startServerWith(t, serverConfig{rates: limits.RateConfig{Classes: map[string]limits.Rate{"crypto": {PerSecond: 0.01, Burst: 3}}}})
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "rl", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "rl", Plaintext: []byte("x")}); err != nil {
			t.Fatalf("Encrypt() #%d err = %v, want nil within the burst", i+1, err)
		}
	}
	_, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "rl", Plaintext: []byte("x")})
	if status.Code(err) != codes.ResourceExhausted || retryInfo(err) <= 0 {
		t.Errorf("Encrypt() over the rate err = %v (retry %v), want ResourceExhausted with a RetryInfo", err, retryInfo(err))
	}
	code, out := ts.restWithHeaders(t, "POST", "/v1/keys/rl:encrypt", `{"plaintext":"cA=="}`)
	if code.StatusCode != http.StatusTooManyRequests || code.Header.Get("Retry-After") == "" {
		t.Errorf("REST encrypt over the rate = %d (Retry-After %q) %v, want 429 with Retry-After", code.StatusCode, code.Header.Get("Retry-After"), out)
	}
	if _, err := ts.keys.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "rl"}); err != nil {
		t.Errorf("GetKey() (class read, unlimited) err = %v, want nil", err)
	}
	// Another principal (the same workload, another token subject) has
	// its own bucket.
	other := ts.as(t, paymentsID, false)
	if _, err := other.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "rl", Plaintext: []byte("x")}); err != nil {
		t.Errorf("Encrypt() by another principal err = %v, want nil", err)
	}
}

// TestDecryptBudgets: restricted decrypts per principal in two windows at
// once; the budget is kept in the key store, so two servers on one store
// share it.
func TestDecryptBudgets(t *testing.T) {
	ctx := context.Background()
	st := openTestStore(t)
	budgets := []limits.BudgetRule{{Action: "decrypt", Tier: "restricted", Windows: []limits.Window{{Period: time.Hour, Limit: 5}, {Period: 24 * time.Hour, Limit: 6}}}}
	root := filepath.Join(t.TempDir(), "root.key")
	a := startServerWith(t, serverConfig{store: st, budgets: budgets, rootKey: root})
	b := startServerWith(t, serverConfig{store: st, budgets: budgets, rootKey: root})
	if _, err := a.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "secret", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, Labels: map[string]string{"sensitivity": "restricted"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "public", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, Labels: map[string]string{"sensitivity": "public"}}); err != nil {
		t.Fatal(err)
	}
	seal := func(key string) string {
		r, err := a.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: key, Plaintext: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetCiphertext()
	}
	secret, public := seal("secret"), seal("public")
	// Three decrypts on server a and two on b fill the hourly window of 5.
	for i, s := range []*testServer{a, a, a, b, b} {
		if _, err := s.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: secret}); err != nil {
			t.Fatalf("Decrypt() #%d err = %v, want nil within the budget", i+1, err)
		}
	}
	_, err := b.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: secret})
	if status.Code(err) != codes.ResourceExhausted || retryInfo(err) <= 0 || !strings.Contains(status.Convert(err).Message(), "restricted") {
		t.Errorf("6th restricted Decrypt (on the other server) err = %v, want ResourceExhausted naming the restricted budget, with a retry hint", err)
	}
	// A batch of 2 would exceed; it is refused whole and counts nothing.
	_, err = a.crypto.BatchDecrypt(ctx, &tresorv1.BatchDecryptRequest{Items: []*tresorv1.BatchDecryptItem{{Ciphertext: secret}, {Ciphertext: secret}}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("BatchDecrypt over the budget err = %v, want ResourceExhausted", err)
	}
	if _, err := a.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: public}); err != nil {
		t.Errorf("public Decrypt with the restricted budget spent err = %v, want nil (tiers are separate)", err)
	}
	// Another principal (the same workload, another token subject) has a
	// budget of its own.
	other := b.as(t, paymentsID, true)
	if _, err := other.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: secret}); err != nil {
		t.Errorf("restricted Decrypt by another principal err = %v, want nil", err)
	}
	// The count is in the store: a third counter on it (a third replica)
	// sees the first principal's hourly window full.
	third, err := limits.NewBudgets(st, budgets, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := third.Consume(ctx, principalKey(&authn.Principal{Workload: paymentsID, Subject: "payments-batch"}), "decrypt", "restricted", 1); ok || err != nil {
		t.Errorf("Consume() on a third replica = %v, %v; want refused: the budget is spent in the store", ok, err)
	}
}

func openTestStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "shared.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// restWithHeaders is rest that also returns the response's headers.
func (ts *testServer) restWithHeaders(t *testing.T, method, path, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, ts.base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s err = %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp, string(raw)
}

// peerContext is a server-side context whose peer presented cert over TLS.
func peerContext(ctx context.Context, cert *x509.Certificate) context.Context {
	return peer.NewContext(ctx, &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}},
	})
}

func newTestCA(t *testing.T, name string) *devpki.CA {
	t.Helper()
	ca, err := devpki.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issueClient(t *testing.T, ca *devpki.CA, spiffeID string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	pair, err := ca.IssueClientWindow("client", spiffeID, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestNoWayAroundThePolicy: re-encryption and relabelling cannot move data
// to where the policy would let the caller read it, unreadable ciphertexts
// and oversized batches are refused before any decision, and CreateKey
// does not tell a refused caller that a name is taken.
func TestNoWayAroundThePolicy(t *testing.T) {
	ctx := context.Background()
	const adminID = "spiffe://bank.example/key-admin-console"
	// Saturday 20:00 UTC: outside business hours.
	ts := examples(t, true, at("2026-11-28T20:00:00Z"))
	admin := ts.as(t, adminID, true, "key-admin")
	for _, k := range []struct{ id, owner, tier string }{
		{"pan", paymentsID, "restricted"},
		{"scratch", paymentsID, "public"},
		{"pan-2", paymentsID, "restricted"},
	} {
		if _, err := admin.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: k.id, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, Labels: map[string]string{"owner": k.owner, "sensitivity": k.tier}}); err != nil {
			t.Fatal(err)
		}
	}
	payments := ts.as(t, paymentsID, true)
	unbound := ts.as(t, paymentsID, false)
	sealed, err := payments.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "pan", Plaintext: []byte("4111111111111111")})
	if err != nil {
		t.Fatal(err)
	}
	pan := sealed.GetCiphertext()
	before := keyRevisions(t, ts.store)
	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"re-encrypt restricted data into a public key", func() error {
			_, err := payments.crypto.ReEncrypt(ctx, &tresorv1.ReEncryptRequest{Ciphertext: pan, DestinationKey: "scratch"})
			return err
		}, codes.PermissionDenied},
		{"re-encrypt restricted data after hours with an unbound token (ReEncryptFrom is a reveal)", func() error {
			_, err := unbound.crypto.ReEncrypt(ctx, &tresorv1.ReEncryptRequest{Ciphertext: pan, DestinationKey: "pan-2"})
			return err
		}, codes.PermissionDenied},
		{"re-encrypt into a key of the same tier", func() error {
			_, err := payments.crypto.ReEncrypt(ctx, &tresorv1.ReEncryptRequest{Ciphertext: pan, DestinationKey: "pan-2"})
			return err
		}, codes.OK},
		{"key admin lowers a key's sensitivity", func() error {
			_, err := admin.keys.UpdateKey(ctx, &tresorv1.UpdateKeyRequest{Key: "pan", Labels: map[string]string{"owner": paymentsID, "sensitivity": "public"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels"}}})
			return err
		}, codes.PermissionDenied},
		{"key admin makes a key its own, then decrypts", func() error {
			if _, err := admin.keys.UpdateKey(ctx, &tresorv1.UpdateKeyRequest{Key: "pan-2", Labels: map[string]string{"owner": adminID, "sensitivity": "restricted"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels"}}}); err != nil {
				return fmt.Errorf("relabel: %w", err)
			}
			_, err := admin.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: pan})
			return err
		}, codes.PermissionDenied},
		{"decrypt an unreadable ciphertext", func() error {
			_, err := payments.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: "tresor:v1:AAAA"})
			return err
		}, codes.InvalidArgument},
		{"batch of unreadable ciphertexts", func() error {
			_, err := payments.crypto.BatchDecrypt(ctx, &tresorv1.BatchDecryptRequest{Items: []*tresorv1.BatchDecryptItem{{Ciphertext: "tresor:v1:AAAA"}, {Ciphertext: "tresor:v1:AQ"}}})
			return err
		}, codes.InvalidArgument},
		{"batch naming more keys than a call may touch", func() error {
			var items []*tresorv1.BatchDecryptItem
			for i := range maxKeysPerCall + 1 {
				items = append(items, &tresorv1.BatchDecryptItem{Ciphertext: forgedCiphertext(fmt.Sprintf("k%d", i))})
			}
			_, err := payments.crypto.BatchDecrypt(ctx, &tresorv1.BatchDecryptRequest{Items: items})
			return err
		}, codes.InvalidArgument},
		{"a key admin, who may administer every key, learns a name is taken", func() error {
			_, err := admin.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "pan", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM})
			return err
		}, codes.AlreadyExists},
		{"a workload creates a key whose name is taken", func() error {
			_, err := payments.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "pan", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, Labels: map[string]string{"owner": paymentsID}})
			return err
		}, codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); status.Code(err) != tt.want {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// Only the allowed relabel of pan-2 changed anything.
	after := keyRevisions(t, ts.store)
	if strings.Replace(before, "pan-2@1", "pan-2@2", 1) != after {
		t.Errorf("key revisions went from %q to %q, want only pan-2 relabelled", before, after)
	}
}

// forgedCiphertext is a well-formed ciphertext header naming key, with a
// body that authenticates under nothing.
func forgedCiphertext(key string) string {
	b := []byte{1, byte(len(key))}
	b = append(b, key...)
	b = append(b, 0, 0, 0, 1)
	b = append(b, make([]byte, 40)...)
	b[len(b)-40] = 1
	return envelope.FormatCiphertext(b)
}

// TestMetricsHoldNoSecrets: the chain's metrics count calls, refusals and
// latency by method, code, action, class and tier; no label carries an
// identity, a key name, a token or data.
func TestMetricsHoldNoSecrets(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	ts := startServerWith(t, serverConfig{metrics: reg})
	const secret = "4111111111111111"
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "metered", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "metered", Plaintext: []byte(secret)}); err != nil {
		t.Fatal(err)
	}
	anon := tresorv1.NewCryptoServiceClient(ts.dial(t, ts.client, "not-a-token"))
	if _, err := anon.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "metered", Plaintext: []byte(secret)}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Encrypt with a bad token err = %v, want Unauthenticated", err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				labels = append(labels, f.GetName()+"{"+l.GetName()+"="+l.GetValue()+"}")
			}
		}
	}
	all := strings.Join(labels, " ")
	for _, want := range []string{"tresor_rpc_calls_total{code=OK}", "tresor_rpc_calls_total{method=/tresor.v1.CryptoService/Encrypt}", "tresor_authn_failures_total{reason=invalid_token}"} {
		if !strings.Contains(all, want) {
			t.Errorf("metrics %s, want %s (the test must see the metrics)", all, want)
		}
	}
	for _, leak := range []string{secret, "metered", paymentsID, "payments-batch", ts.token[:20], "not-a-token"} {
		if strings.Contains(all, leak) {
			t.Errorf("a metric label holds %q: %s", leak, all)
		}
	}
}

// TestListKeysShowsOnlyReadableKeys: ListKeys lists the keys whose metadata
// the caller may read (GetKey), so listing tells no one about keys it may
// not see.
func TestListKeysShowsOnlyReadableKeys(t *testing.T) {
	ctx := context.Background()
	const adminID = "spiffe://bank.example/key-admin-console"
	ts := examples(t, true, at("2026-11-25T10:00:00Z"))
	admin := ts.as(t, adminID, true, "key-admin")
	for _, k := range []struct{ id, owner string }{{"mine-1", paymentsID}, {"theirs", "spiffe://bank.example/ledger"}, {"mine-2", paymentsID}} {
		if _, err := admin.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: k.id, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, Labels: map[string]string{"owner": k.owner}}); err != nil {
			t.Fatal(err)
		}
	}
	names := func(c caller) string {
		resp, err := c.keys.ListKeys(ctx, &tresorv1.ListKeysRequest{})
		if err != nil {
			return "error: " + err.Error()
		}
		var n []string
		for _, k := range resp.GetKeys() {
			n = append(n, k.GetName())
		}
		return strings.Join(n, ",")
	}
	if got := names(admin); got != "keys/mine-1,keys/mine-2,keys/theirs" {
		t.Errorf("ListKeys by the key admin = %s, want every key", got)
	}
	// Listing itself is a permission (read_metadata on the service); the
	// example policies grant it to key admins only.
	if got := names(ts.as(t, paymentsID, true)); !strings.Contains(got, "PermissionDenied") {
		t.Errorf("ListKeys by payments = %s, want PermissionDenied", got)
	}
	// With a policy that lets payments list, it sees its own keys only.
	ts2 := startServerWith(t, serverConfig{policies: map[string]string{
		"list.cedar":  `permit (principal, action == Tresor::Action::"ListKeys", resource);`,
		"admin.cedar": `permit (principal, action == Tresor::Action::"CreateKey", resource);`,
		"own.cedar":   `permit (principal, action == Tresor::Action::"GetKey", resource is Tresor::Key) when { resource.owner == principal.workload };`,
	}})
	for _, k := range []struct{ id, owner string }{{"mine", paymentsID}, {"theirs", "spiffe://bank.example/ledger"}} {
		if _, err := ts2.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: k.id, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, Labels: map[string]string{"owner": k.owner}}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := ts2.keys.ListKeys(ctx, &tresorv1.ListKeysRequest{})
	if err != nil || len(resp.GetKeys()) != 1 || resp.GetKeys()[0].GetName() != "keys/mine" {
		t.Errorf("ListKeys by payments = %v, %v; want keys/mine only", resp, err)
	}
}

// TestRESTAuthenticatesBeforeParsing: over REST, as over gRPC, a caller
// that cannot authenticate gets 401 whatever its body; only an
// authenticated caller hears about a malformed body.
func TestRESTAuthenticatesBeforeParsing(t *testing.T) {
	ts := startServer(t, 0)
	for _, tt := range []struct {
		name  string
		token string
		body  string
		want  int
		// The request never reaches the chain; it is audited all the same.
		code, subject string
	}{
		{"no token, malformed body", "", `{"plaintext":`, 401, "Unauthenticated", ""},
		{"no token, unknown field", "", `{"surprise":1}`, 401, "Unauthenticated", ""},
		{"token, malformed body", ts.token, `{"plaintext":`, 400, "InvalidArgument", "payments-batch"},
		{"token, unknown field", ts.token, `{"surprise":1}`, 400, "InvalidArgument", "payments-batch"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := ts.httpClient(ts.client, tt.token).Post(ts.base+"/v1/keys/k:encrypt", "application/json", strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("POST with %s = %d %s, want %d", tt.name, resp.StatusCode, raw, tt.want)
			}
			if tt.want == 401 && (!strings.Contains(string(raw), `"code":16`) || resp.Header.Get("WWW-Authenticate") == "") {
				t.Errorf("401 body %s, WWW-Authenticate %q; want code 16 and a Bearer challenge", raw, resp.Header.Get("WWW-Authenticate"))
			}
			rec := ts.calls.last()
			subject := ""
			if rec.Principal != nil {
				subject = rec.Principal.Subject
			}
			if rec.Method != "REST POST /v1/keys/k:encrypt" || rec.Code != tt.code || subject != tt.subject || !rec.Source.IsValid() {
				t.Errorf("call record = %q %s by %q from %v, want %q %s by %q from the client", rec.Method, rec.Code, subject, rec.Source,
					"REST POST /v1/keys/k:encrypt", tt.code, tt.subject)
			}
		})
	}
}
