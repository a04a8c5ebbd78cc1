//go:build !noawskms

package awskms

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	sdkkms "github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/kmstest"
	"github.com/tresorkms/tresor/localkms"
)

// These tests run against a real local-kms through the real AWS SDK.

func TestConformance(t *testing.T) {
	k := sharedKeys(t)
	kmstest.Run(t, func(t *testing.T) kms.RootKey { return openKey(t, k.aURI) })
}

func TestConformanceByAlias(t *testing.T) {
	k := sharedKeys(t)
	kmstest.Run(t, func(t *testing.T) kms.RootKey { return openKey(t, k.aAliasURI) })
}

func TestAliasAndARNSameID(t *testing.T) {
	k := sharedKeys(t)
	byARN, byAlias := openKey(t, k.aURI), openKey(t, k.aAliasURI)
	if byARN.ID() != byAlias.ID() || byARN.ID() != "aws-kms://"+k.aARN {
		t.Errorf("ID() by ARN = %q, by alias = %q, want both %q", byARN.ID(), byAlias.ID(), "aws-kms://"+k.aARN)
	}
	if byAlias.ARN() != k.aARN {
		t.Errorf("ARN() by alias = %q, want %q", byAlias.ARN(), k.aARN)
	}
	// The ID opens the key too, given the endpoint.
	id := openKey(t, byARN.ID()+"?endpoint="+server.Endpoint())
	if id.ID() != byARN.ID() {
		t.Errorf("Open(ID()).ID() = %q, want %q", id.ID(), byARN.ID())
	}
	b := openKey(t, k.bURI)
	if b.ID() == byARN.ID() {
		t.Errorf("keys A and B have the same ID %q", b.ID())
	}
	// A ciphertext wrapped by alias unwraps by ARN.
	ctx := context.Background()
	w, err := byAlias.Wrap(ctx, []byte("keyset"), []byte("aad"))
	if err != nil {
		t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
	}
	if got, err := byARN.Unwrap(ctx, w, []byte("aad")); err != nil || string(got) != "keyset" {
		t.Errorf("Unwrap by ARN of Wrap by alias = %q, %v, want \"keyset\", nil", got, err)
	}
}

func TestOtherKey(t *testing.T) {
	k := sharedKeys(t)
	ctx := context.Background()
	a, b := openKey(t, k.aURI), openKey(t, k.bURI)
	for _, aad := range [][]byte{nil, []byte("aad")} {
		w, err := a.Wrap(ctx, []byte("keyset of A"), aad)
		if err != nil {
			t.Fatalf("A.Wrap(pt, %q) err = %v, want nil", aad, err)
		}
		if _, err := b.Unwrap(ctx, w, aad); !errors.Is(err, kms.ErrUnwrap) {
			t.Errorf("B.Unwrap(A.Wrap(pt, %q)) err = %v, want kms.ErrUnwrap", aad, err)
		}
		if got, err := a.Unwrap(ctx, w, aad); err != nil || string(got) != "keyset of A" {
			t.Errorf("A.Unwrap(A.Wrap(pt, %q)) = %q, %v, want the plaintext", aad, got, err)
		}
	}
}

func TestWrongContext(t *testing.T) {
	k := sharedKeys(t)
	ctx := context.Background()
	a := openKey(t, k.aURI)
	long := bytes.Repeat([]byte("x"), maxContextAAD+1)
	tests := []struct {
		name     string
		aad, bad []byte
	}{
		{"other", []byte("key=a"), []byte("key=b")},
		{"missing", []byte("key=a"), nil},
		{"added", nil, []byte("key=a")},
		{"hashed form", long, append(bytes.Clone(long[:len(long)-1]), 'y')},
		{"hashed vs plain", long, long[:maxContextAAD]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := a.Wrap(ctx, []byte("keyset"), tt.aad)
			if err != nil {
				t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
			}
			if _, err := a.Unwrap(ctx, w, tt.bad); !errors.Is(err, kms.ErrUnwrap) {
				t.Errorf("Unwrap(wrapped, wrong aad) err = %v, want kms.ErrUnwrap", err)
			}
			// KMS itself refuses the data key under the wrong context: the
			// AES-GCM layer is not the only check.
			p, err := parse(w)
			if err != nil {
				t.Fatalf("parse(wrapped) err = %v, want nil", err)
			}
			if _, err := a.api.Decrypt(ctx, decryptInput(p.blob, a.arn, tt.bad)); err == nil || errorCode(err) != "InvalidCiphertextException" {
				t.Errorf("KMS Decrypt(data key, wrong context) err = %v, want InvalidCiphertextException", err)
			}
		})
	}
}

// TestUnavailable stops local-kms under an open root key and starts it
// again: calls fail with kms.ErrUnavailable naming the endpoint, then work,
// and what was wrapped before still unwraps.
func TestUnavailable(t *testing.T) {
	ctx := context.Background()
	srv, err := localkms.Start(ctx, localkms.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("localkms.Start err = %v, want nil", err)
	}
	defer srv.Close()
	clientEnv(t, srv)
	uri, err := CreateRootKey(ctx, "aws-kms://alias/fault?region="+srv.Region()+"&endpoint="+srv.Endpoint())
	if err != nil {
		t.Fatalf("CreateRootKey err = %v, want nil", err)
	}
	k := openKey(t, uri, WithMaxAttempts(2))
	pt, aad := []byte("plaintext-canary-0123456789"), []byte("aad-canary")
	before, err := k.Wrap(ctx, pt, aad)
	if err != nil {
		t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
	}

	if err := srv.Stop(); err != nil {
		t.Fatalf("Stop() err = %v, want nil", err)
	}
	began := time.Now()
	_, werr := k.Wrap(ctx, pt, aad)
	_, uerr := k.Unwrap(ctx, before, aad)
	for _, c := range []struct {
		name string
		err  error
	}{{"Wrap", werr}, {"Unwrap", uerr}} {
		if !errors.Is(c.err, kms.ErrUnavailable) || errors.Is(c.err, kms.ErrUnwrap) {
			t.Errorf("%s with local-kms stopped err = %v, want kms.ErrUnavailable", c.name, c.err)
			continue
		}
		msg := c.err.Error()
		if !strings.Contains(msg, srv.Endpoint()) || !strings.Contains(msg, "connection refused") {
			t.Errorf("%s with local-kms stopped err = %q, want it to name %s and the refused connection", c.name, msg, srv.Endpoint())
		}
		for _, secret := range [][]byte{pt, aad, before[3:20]} {
			if strings.Contains(msg, string(secret)) {
				t.Errorf("%s error %q holds payload bytes", c.name, msg)
			}
		}
	}
	if d := time.Since(began); d > 15*time.Second {
		t.Errorf("two calls with local-kms stopped took %v, want them to give up sooner", d)
	}
	if got := k.Stats().Unavailable; got != 2 {
		t.Errorf("Stats().Unavailable = %d, want 2", got)
	}
	if _, err := Open(ctx, uri, WithMaxAttempts(1)); !errors.Is(err, kms.ErrUnavailable) || !strings.Contains(err.Error(), srv.Endpoint()) {
		t.Errorf("Open with local-kms stopped err = %v, want kms.ErrUnavailable naming the endpoint", err)
	}

	if err := srv.Restart(ctx); err != nil {
		t.Fatalf("Restart() err = %v, want nil", err)
	}
	if srv.Endpoint()+"" != mustEndpoint(t, uri) {
		t.Fatalf("local-kms came back on %s, not on %s", srv.Endpoint(), mustEndpoint(t, uri))
	}
	if got, err := k.Unwrap(ctx, before, aad); err != nil || !bytes.Equal(got, pt) {
		t.Errorf("after restart: Unwrap(wrapped before the stop) = %q, %v, want the plaintext, nil", got, err)
	}
	after, err := k.Wrap(ctx, pt, aad)
	if err != nil {
		t.Fatalf("after restart: Wrap(pt, aad) err = %v, want nil", err)
	}
	if got, err := k.Unwrap(ctx, after, aad); err != nil || !bytes.Equal(got, pt) {
		t.Errorf("after restart: Unwrap(Wrap(pt, aad)) = %q, %v, want the plaintext, nil", got, err)
	}
}

func mustEndpoint(t *testing.T, uri string) string {
	t.Helper()
	u, err := ParseURI(uri)
	if err != nil {
		t.Fatalf("ParseURI(%s) err = %v, want nil", uri, err)
	}
	return u.Endpoint
}

func TestOpenErrors(t *testing.T) {
	k := sharedKeys(t)
	ctx := context.Background()
	ep := "&endpoint=" + server.Endpoint()
	region := "?region=" + server.Region()
	tests := []struct {
		name    string
		uri     string
		wantErr error
		wantMsg string
	}{
		{"missing alias", "aws-kms://alias/no-such-key" + region + ep, ErrKeyNotFound, "alias/no-such-key"},
		{"missing key id", "aws-kms://11111111-2222-3333-4444-555555555555" + region + ep, ErrKeyNotFound, "no key"},
		{"bad URI", "aws-kms://alias/" + region + ep, kms.ErrInvalidURI, "alias"},
		{"no region", "aws-kms://alias/tresor-test-a?endpoint=" + server.Endpoint(), kms.ErrInvalidURI, "region"},
		{"nothing listens", "aws-kms://alias/tresor-test-a" + region + "&endpoint=http://127.0.0.1:1", kms.ErrUnavailable, "http://127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Open(ctx, tt.uri, WithMaxAttempts(1))
			if err == nil {
				got.Close()
				t.Fatalf("Open(%s) err = nil, want %v", tt.uri, tt.wantErr)
			}
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Open(%s) err = %v, want %v mentioning %q", tt.uri, err, tt.wantErr, tt.wantMsg)
			}
		})
	}

	// A cancelled context is returned as such.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Open(cctx, k.aURI); !errors.Is(err, context.Canceled) {
		t.Errorf("Open(cancelled ctx) err = %v, want context.Canceled", err)
	}
}

func TestCreateRootKey(t *testing.T) {
	sharedKeys(t)
	ctx := context.Background()
	alias := "aws-kms://alias/tresor-test-a?region=" + server.Region() + "&endpoint=" + server.Endpoint()
	if _, err := CreateRootKey(ctx, alias); !errors.Is(err, ErrKeyExists) {
		t.Errorf("CreateRootKey(existing alias) err = %v, want ErrKeyExists", err)
	}
	for _, uri := range []string{
		"aws-kms://11111111-2222-3333-4444-555555555555?region=eu-west-2",
		"aws-kms://arn:aws:kms:eu-west-2:111122223333:key/11111111-2222-3333-4444-555555555555",
		"aws-kms://?region=eu-west-2&bogus=1",
		"pkcs11:token=x",
	} {
		if _, err := CreateRootKey(ctx, uri); !errors.Is(err, kms.ErrInvalidURI) {
			t.Errorf("CreateRootKey(%s) err = %v, want kms.ErrInvalidURI", uri, err)
		}
	}
	// A new alias by alias ARN: the key is usable at once under both names.
	// (A new name each run: -count=N reuses the server.)
	aliasARN := "aws-kms://arn:aws:kms:" + server.Region() + ":" + server.AccountID() + ":alias/tresor-test-" + strings.ToLower(rand.Text()) + "?endpoint=" + server.Endpoint()
	uri, err := CreateRootKey(ctx, aliasARN)
	if err != nil {
		t.Fatalf("CreateRootKey(%s) err = %v, want nil", aliasARN, err)
	}
	if !strings.HasPrefix(uri, "aws-kms://arn:aws:kms:"+server.Region()+":"+server.AccountID()+":key/") || !strings.HasSuffix(uri, "?endpoint="+server.Endpoint()) {
		t.Errorf("CreateRootKey(%s) = %q, want the key ARN URI with the endpoint", aliasARN, uri)
	}
	if a, b := openKey(t, uri), openKey(t, aliasARN); a.ID() != b.ID() {
		t.Errorf("ID() by ARN = %q, by alias ARN = %q, want the same", a.ID(), b.ID())
	}
}

func decryptInput(blob []byte, keyID string, aad []byte) *sdkkms.DecryptInput {
	return &sdkkms.DecryptInput{CiphertextBlob: blob, KeyId: &keyID, EncryptionContext: encryptionContext(aad)}
}
