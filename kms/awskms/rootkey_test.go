//go:build !noawskms

package awskms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	sdkkms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/kmstest"
)

// These tests run against fakeKMS, to reach faults local-kms cannot make.

const fakeEndpoint = "https://kms.fake.example"

func openFake(t *testing.T, f *fakeKMS, key string) *RootKey {
	t.Helper()
	k, err := open(context.Background(), URI{Key: key}, f, fakeEndpoint, newOptions(nil))
	if err != nil {
		t.Fatalf("open(%s) on the fake err = %v, want nil", key, err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

func TestFakeConformance(t *testing.T) {
	f := newFakeKMS()
	kmstest.Run(t, func(t *testing.T) kms.RootKey { return openFake(t, f, fakeAlias) })
}

// TestRequests checks what Wrap and Unwrap send: the key ARN resolved at
// Open (not the alias), AES_256, and the encryption context.
func TestRequests(t *testing.T) {
	ctx := context.Background()
	f := newFakeKMS()
	k := openFake(t, f, fakeAlias)
	if k.ID() != "aws-kms://"+fakeARN || k.ARN() != fakeARN {
		t.Errorf("ID(), ARN() = %q, %q, want aws-kms://%s, %s", k.ID(), k.ARN(), fakeARN, fakeARN)
	}
	// Retargeting the alias does not move an open key.
	f.aliases[fakeAlias] = "arn:aws:kms:eu-west-2:111122223333:key/99999999-9999-4999-8999-999999999999"
	w, err := k.Wrap(ctx, []byte("keyset"), []byte("name=payments"))
	if err != nil {
		t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
	}
	g := f.lastGenerate
	if aws.ToString(g.KeyId) != fakeARN || g.KeySpec != types.DataKeySpecAes256 || g.NumberOfBytes != nil {
		t.Errorf("GenerateDataKey(KeyId %q, KeySpec %q, NumberOfBytes %v), want KeyId %s and AES_256", aws.ToString(g.KeyId), g.KeySpec, g.NumberOfBytes, fakeARN)
	}
	if want := map[string]string{"tresor-aad": "bmFtZT1wYXltZW50cw"}; fmt.Sprint(g.EncryptionContext) != fmt.Sprint(want) {
		t.Errorf("GenerateDataKey EncryptionContext = %v, want %v", g.EncryptionContext, want)
	}
	if _, err := k.Unwrap(ctx, w, []byte("name=payments")); err != nil {
		t.Fatalf("Unwrap(wrapped, aad) err = %v, want nil", err)
	}
	d := f.lastDecrypt
	if aws.ToString(d.KeyId) != fakeARN || fmt.Sprint(d.EncryptionContext) != fmt.Sprint(g.EncryptionContext) {
		t.Errorf("Decrypt(KeyId %q, context %v), want KeyId %s and the context of GenerateDataKey", aws.ToString(d.KeyId), d.EncryptionContext, fakeARN)
	}
	// The layout: version, blob length, blob, nonce, ciphertext and tag.
	n := int(w[1])<<8 | int(w[2])
	if w[0] != 1 || !bytes.Equal(w[3:3+n], d.CiphertextBlob) || len(w) != 3+n+12+len("keyset")+16 {
		t.Errorf("wrapped = %x, want 01, length, the KMS ciphertext, nonce, AES-GCM ciphertext and tag", w)
	}
	if s := k.Stats(); s.Wraps != 1 || s.Unwraps != 1 || s.Unavailable != 0 {
		t.Errorf("Stats() = %+v, want 1 wrap and 1 unwrap", s)
	}
}

func TestEncryptionContext(t *testing.T) {
	tests := []struct {
		name string
		aad  []byte
		want map[string]string
	}{
		{"nil", nil, nil},
		{"empty", []byte{}, nil},
		{"text", []byte("abc"), map[string]string{"tresor-aad": "YWJj"}},
		{"url alphabet, no padding", []byte{0xfb, 0xff}, map[string]string{"tresor-aad": "-_8"}},
		{"1024 bytes", bytes.Repeat([]byte{0}, 1024), map[string]string{"tresor-aad": strings.Repeat("AAAA", 341) + "AA"}},
		// SHA-256 of 1025 zero bytes (python3 hashlib).
		{"1025 bytes", bytes.Repeat([]byte{0}, 1025), map[string]string{"tresor-aad-sha256": "xVuQUJuMubrFP73d_JPU5XJoXFCfEhhCPEOl1gE7vUg"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := encryptionContext(tt.aad); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("encryptionContext(%d bytes) = %v, want %v", len(tt.aad), got, tt.want)
			}
		})
	}
}

// connRefused is how the SDK reports a refused connection after retries.
func connRefused() error {
	return &smithy.OperationError{ServiceID: "KMS", OperationName: "Decrypt", Err: &retry.MaxAttemptsError{Attempt: 3, Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{}}, Err: &smithyhttp.RequestSendError{Err: &url.Error{
			Op: "Post", URL: "https://kms.fake.example/", Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)},
		}}},
	}}}
}

// apiError is how the SDK reports an answer from KMS.
func apiError(status int, err error) error {
	return &smithy.OperationError{ServiceID: "KMS", OperationName: "Decrypt", Err: &awshttp.ResponseError{
		RequestID:     "req-1234",
		ResponseError: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}}, Err: err},
	}}
}

// TestFaults injects SDK errors into Wrap and Unwrap: unreachable,
// throttled, failing or refusing KMS is kms.ErrUnavailable naming the
// endpoint and the cause; a refused ciphertext is the opaque
// kms.ErrUnwrap; no message holds payload or KMS's own message text.
func TestFaults(t *testing.T) {
	const canary = "PAYLOAD-CANARY"
	msg := aws.String("Value '" + canary + "' at 'plaintext' failed")
	tests := []struct {
		name       string
		err        error
		wrapErr    error // kms.ErrUnavailable, or nil for a plain error
		unwrapErr  error
		wantInMsgs string
	}{
		{"connection refused", connRefused(), kms.ErrUnavailable, kms.ErrUnavailable, "connect: connection refused (after 3 attempts)"},
		{"throttled", apiError(400, &smithy.GenericAPIError{Code: "ThrottlingException", Message: canary}), kms.ErrUnavailable, kms.ErrUnavailable, "ThrottlingException (HTTP 400, request id req-1234)"},
		{"limit exceeded", apiError(400, &types.LimitExceededException{Message: msg}), kms.ErrUnavailable, kms.ErrUnavailable, "LimitExceededException"},
		{"internal", apiError(500, &types.KMSInternalException{Message: msg}), kms.ErrUnavailable, kms.ErrUnavailable, "KMSInternalException (HTTP 500"},
		{"unknown 5xx", apiError(503, &smithy.GenericAPIError{Code: "SomethingNew", Message: canary}), kms.ErrUnavailable, kms.ErrUnavailable, "SomethingNew (HTTP 503"},
		{"server fault", &smithy.GenericAPIError{Code: "Odd", Fault: smithy.FaultServer}, kms.ErrUnavailable, kms.ErrUnavailable, "Odd"},
		{"dependency timeout", apiError(500, &types.DependencyTimeoutException{Message: msg}), kms.ErrUnavailable, kms.ErrUnavailable, "DependencyTimeoutException"},
		{"key unavailable", apiError(500, &types.KeyUnavailableException{Message: msg}), kms.ErrUnavailable, kms.ErrUnavailable, "KeyUnavailableException"},
		{"disabled", apiError(400, &types.DisabledException{Message: msg}), kms.ErrUnavailable, kms.ErrUnavailable, "DisabledException"},
		{"pending deletion", apiError(400, &types.KMSInvalidStateException{Message: msg}), kms.ErrUnavailable, kms.ErrUnavailable, "KMSInvalidStateException"},
		{"key gone", apiError(400, &types.NotFoundException{Message: msg}), kms.ErrUnavailable, kms.ErrUnavailable, "NotFoundException"},
		{"access denied", apiError(400, &smithy.GenericAPIError{Code: "AccessDeniedException", Message: canary}), kms.ErrUnavailable, kms.ErrUnavailable, "AccessDeniedException"},
		{"undecodable answer", &smithy.OperationError{Err: &smithy.DeserializationError{Err: errors.New("bad JSON near " + canary), Snapshot: []byte(canary)}}, kms.ErrUnavailable, kms.ErrUnavailable, "could not be decoded"},
		{"invalid ciphertext", apiError(400, &types.InvalidCiphertextException{Message: msg}), nil, kms.ErrUnwrap, ""},
		{"incorrect key", apiError(400, &types.IncorrectKeyException{Message: msg}), nil, kms.ErrUnwrap, ""},
		{"validation", apiError(400, &smithy.GenericAPIError{Code: "ValidationException", Message: canary}), nil, kms.ErrUnwrap, ""},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeKMS()
			k := openFake(t, f, fakeARN)
			wrapped, err := k.Wrap(ctx, []byte(canary), []byte(canary))
			if err != nil {
				t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
			}
			f.fail = func(string) error { return tt.err }

			_, werr := k.Wrap(ctx, []byte(canary), []byte(canary))
			_, uerr := k.Unwrap(ctx, wrapped, []byte(canary))
			for _, c := range []struct {
				op        string
				err, want error
			}{{"Wrap", werr, tt.wrapErr}, {"Unwrap", uerr, tt.unwrapErr}} {
				if c.err == nil {
					t.Errorf("%s err = nil, want an error", c.op)
					continue
				}
				m := c.err.Error()
				if strings.Contains(m, canary) {
					t.Errorf("%s err = %q, holds payload or KMS's message", c.op, m)
				}
				for _, sentinel := range []error{kms.ErrUnavailable, kms.ErrUnwrap} {
					if errors.Is(c.err, sentinel) != (c.want == sentinel) {
						t.Errorf("%s err = %v, errors.Is(err, %v) = %t, want %t", c.op, c.err, sentinel, !(c.want == sentinel), c.want == sentinel)
					}
				}
				switch c.want {
				case kms.ErrUnwrap:
					if m != "awskms: kms: unwrap failed" {
						t.Errorf("%s err = %q, want the opaque \"awskms: kms: unwrap failed\"", c.op, m)
					}
				default:
					if !strings.Contains(m, fakeEndpoint) || !strings.Contains(m, tt.wantInMsgs) {
						t.Errorf("%s err = %q, want it to name %s and %q", c.op, m, fakeEndpoint, tt.wantInMsgs)
					}
				}
			}
		})
	}
}

// TestMalformedAnswers has KMS return data keys of the wrong size or of
// another key.
func TestMalformedAnswers(t *testing.T) {
	ctx := context.Background()
	other := aws.String("arn:aws:kms:eu-west-2:111122223333:key/99999999-9999-4999-8999-999999999999")
	tests := []struct {
		name   string
		tamper func(op string, out any)
	}{
		{"short data key", func(op string, out any) {
			switch o := out.(type) {
			case *sdkkms.GenerateDataKeyOutput:
				o.Plaintext = o.Plaintext[:16]
			case *sdkkms.DecryptOutput:
				o.Plaintext = o.Plaintext[:31]
			}
		}},
		{"other key", func(op string, out any) {
			switch o := out.(type) {
			case *sdkkms.GenerateDataKeyOutput:
				o.KeyId = other
			case *sdkkms.DecryptOutput:
				o.KeyId = other
			}
		}},
		{"other data key", func(op string, out any) {
			if o, ok := out.(*sdkkms.DecryptOutput); ok {
				o.Plaintext = bytes.Repeat([]byte{1}, 32)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeKMS()
			k := openFake(t, f, fakeARN)
			wrapped, err := k.Wrap(ctx, []byte("keyset"), nil)
			if err != nil {
				t.Fatalf("Wrap(pt, nil) err = %v, want nil", err)
			}
			f.tamper = tt.tamper
			if _, err := k.Unwrap(ctx, wrapped, nil); !errors.Is(err, kms.ErrUnwrap) {
				t.Errorf("Unwrap with a tampered answer err = %v, want kms.ErrUnwrap", err)
			}
			if tt.name != "other data key" {
				if w, err := k.Wrap(ctx, []byte("keyset"), nil); err == nil || !strings.Contains(err.Error(), fakeEndpoint) {
					t.Errorf("Wrap with a tampered answer = %x, %v, want an error naming the endpoint", w, err)
				}
			}
		})
	}
}

func TestOpenChecksKey(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		key     string
		md      func(*types.KeyMetadata)
		fail    error
		wantErr error
		wantMsg string
	}{
		{"asymmetric", fakeARN, func(m *types.KeyMetadata) { m.KeySpec = types.KeySpecRsa2048 }, nil, ErrKeyNotUsable, "RSA_2048"},
		{"HMAC", fakeARN, func(m *types.KeyMetadata) {
			m.KeySpec, m.KeyUsage = types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac
		}, nil, ErrKeyNotUsable, "HMAC_256"},
		{"sign only", fakeARN, func(m *types.KeyMetadata) { m.KeyUsage = types.KeyUsageTypeSignVerify }, nil, ErrKeyNotUsable, "SIGN_VERIFY"},
		{"disabled", fakeARN, func(m *types.KeyMetadata) { m.KeyState, m.Enabled = types.KeyStateDisabled, false }, nil, ErrKeyNotUsable, "Disabled"},
		{"pending deletion", fakeARN, func(m *types.KeyMetadata) { m.KeyState = types.KeyStatePendingDeletion }, nil, ErrKeyNotUsable, "PendingDeletion"},
		{"not found", "alias/other", nil, nil, ErrKeyNotFound, "alias/other"},
		{"alias ARN for key ARN", fakeARN, nil, nil, nil, "malformed key ARN"},
		{"unreachable", fakeARN, nil, connRefused(), kms.ErrUnavailable, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeKMS()
			if tt.md != nil {
				tt.md(&f.metadata)
			}
			if tt.fail != nil {
				f.fail = func(string) error { return tt.fail }
			}
			if tt.wantMsg == "malformed key ARN" {
				f.tamper = func(_ string, out any) {
					out.(*sdkkms.DescribeKeyOutput).KeyMetadata.Arn = aws.String("arn:aws:kms:eu-west-2:111122223333:alias/x")
				}
			}
			k, err := open(ctx, URI{Key: tt.key}, f, fakeEndpoint, newOptions(nil))
			if err == nil {
				k.Close()
				t.Fatalf("open(%s) err = nil, want an error", tt.key)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("open(%s) err = %v, want %v mentioning %q", tt.key, err, tt.wantErr, tt.wantMsg)
			}
		})
	}
}

func TestCreateRootKeyFake(t *testing.T) {
	ctx := context.Background()
	o := newOptions(nil)

	f := newFakeKMS()
	uri, err := createRootKey(ctx, URI{Key: "alias/new", Endpoint: "http://127.0.0.1:4566"}, f, fakeEndpoint, o)
	if err != nil {
		t.Fatalf("createRootKey(alias/new) err = %v, want nil", err)
	}
	if len(f.created) != 1 || f.aliases["alias/new"] != f.created[0] || uri != "aws-kms://"+f.created[0]+"?endpoint=http://127.0.0.1:4566" {
		t.Errorf("createRootKey(alias/new) = %q with keys %v and aliases %v, want one key, aliased, by ARN URI", uri, f.created, f.aliases)
	}

	if _, err := createRootKey(ctx, URI{Key: fakeAlias}, f, fakeEndpoint, o); !errors.Is(err, ErrKeyExists) || !strings.Contains(err.Error(), fakeARN) {
		t.Errorf("createRootKey(existing alias) err = %v, want ErrKeyExists naming its key", err)
	}
	if len(f.created) != 1 {
		t.Errorf("createRootKey(existing alias) created a key")
	}

	// The alias appears between the check and CreateAlias: the new key is
	// scheduled for deletion.
	f = newFakeKMS()
	f.fail = func(op string) error {
		if op == "CreateAlias" {
			return &types.AlreadyExistsException{}
		}
		return nil
	}
	if _, err := createRootKey(ctx, URI{Key: "alias/race"}, f, fakeEndpoint, o); !errors.Is(err, ErrKeyExists) || !strings.Contains(err.Error(), "scheduled for deletion") {
		t.Errorf("createRootKey(alias taken meanwhile) err = %v, want ErrKeyExists saying the key is scheduled for deletion", err)
	}
	if len(f.created) != 1 || len(f.scheduled) != 1 || f.scheduled[0] != f.created[0] {
		t.Errorf("created %v, scheduled for deletion %v, want the created key scheduled", f.created, f.scheduled)
	}

	// Without an alias: just the key.
	f = newFakeKMS()
	if uri, err := createRootKey(ctx, URI{}, f, fakeEndpoint, o); err != nil || len(f.created) != 1 || uri != "aws-kms://"+f.created[0] {
		t.Errorf("createRootKey(no alias) = %q, %v, want the new key's URI", uri, err)
	}
	f.fail = func(string) error { return connRefused() }
	if _, err := createRootKey(ctx, URI{}, f, fakeEndpoint, o); !errors.Is(err, kms.ErrUnavailable) {
		t.Errorf("createRootKey(KMS unreachable) err = %v, want kms.ErrUnavailable", err)
	}
}
