package server

import (
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/localkek"
	"github.com/tresorkms/tresor/kms/provider"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
	"github.com/tresorkms/tresor/rotation"
)

// withRootKeyRotation serves root-key rotation with a real rotator over
// the test server's store and root key; jobs finish no earlier than grace
// after they start.
func withRootKeyRotation(grace time.Duration) func(testing.TB, store.Store, envelope.KEK, string) (envelope.KEK, RootKeyRotations) {
	return func(t testing.TB, st store.Store, kek envelope.KEK, rootKeyFile string) (envelope.KEK, RootKeyRotations) {
		t.Helper()
		roots, err := envelope.NewRootKeys(kek)
		if err != nil {
			t.Fatal(err)
		}
		open := rotation.OpenerFunc(func(ctx context.Context, uri string) (kms.RootKey, error) {
			return provider.Open(ctx, uri, slog.New(slog.DiscardHandler))
		})
		rot, err := rotation.NewRootKeyRotator(st, roots, open, rotation.RootKeyOptions{
			ActiveURI:    localkek.URI(rootKeyFile),
			PollInterval: 20 * time.Millisecond,
			Grace:        grace,
			MinBackoff:   5 * time.Millisecond,
			MaxBackoff:   50 * time.Millisecond,
			Logger:       slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = rot.Run(ctx)
		}()
		t.Cleanup(func() {
			cancel()
			<-done
			rot.Close()
		})
		return roots, rot
	}
}

// TestRootKeyRotationAPI drives AdminService over gRPC and REST: the
// refusals (nothing changes after any of them), a rotation, the refusal of
// a second one while it runs, and its status until done.
func TestRootKeyRotationAPI(t *testing.T) {
	ctx := context.Background()
	// The AWS SDK must find static credentials and no instance metadata:
	// the unreachable KMS below is a closed local port, nothing else.
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "TRESORTEST", "AWS_SECRET_ACCESS_KEY": "not-a-secret", "AWS_SESSION_TOKEN": "",
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1", "AWS_PROFILE": "",
		"AWS_CONFIG_FILE": filepath.Join(t.TempDir(), "none"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(t.TempDir(), "none"),
	} {
		t.Setenv(k, v)
	}
	st := openTestStore(t)
	rootKey := filepath.Join(t.TempDir(), "root.key")
	ts := startServerWith(t, serverConfig{store: st, rootKey: rootKey, rootKeys: withRootKeyRotation(time.Second)})
	admin := tresorv1.NewAdminServiceClient(ts.conn)

	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "payments", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatalf("CreateKey() err = %v", err)
	}
	enc, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "payments", Plaintext: []byte("IBAN DE89"), AssociatedData: []byte("cust=1")})
	if err != nil {
		t.Fatalf("Encrypt() err = %v", err)
	}
	decrypts := func(t *testing.T) {
		t.Helper()
		dec, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), AssociatedData: []byte("cust=1")})
		if err != nil || string(dec.GetPlaintext()) != "IBAN DE89" {
			t.Errorf("Decrypt() = %v, %v; want the plaintext", dec, err)
		}
	}
	notStarted := func(t *testing.T) {
		t.Helper()
		if _, err := admin.GetRootKeyRotation(ctx, &tresorv1.GetRootKeyRotationRequest{}); status.Code(err) != codes.NotFound {
			t.Errorf("GetRootKeyRotation() err = %v, want NotFound", err)
		}
		if code, out := ts.rest(t, "GET", "/v1/rootKey/rotation", nil); code != http.StatusNotFound {
			t.Errorf("GET /v1/rootKey/rotation = %d %v, want 404", code, out)
		}
	}
	notStarted(t)

	unreachableKMS := "aws-kms://arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab?endpoint=http://127.0.0.1:1"
	tests := []struct {
		name string
		uri  string
		code codes.Code
		http int
	}{
		{"empty", "", codes.InvalidArgument, http.StatusBadRequest},
		{"malformed", "root-2", codes.InvalidArgument, http.StatusBadRequest},
		{"unknown provider", "vault://transit/keys/root", codes.InvalidArgument, http.StatusBadRequest},
		{"malformed pkcs11", "pkcs11:object=root-2", codes.InvalidArgument, http.StatusBadRequest},
		{"no such key file", localkek.URI(filepath.Join(t.TempDir(), "missing.key")), codes.InvalidArgument, http.StatusBadRequest},
		{"the current root key", localkek.URI(rootKey), codes.InvalidArgument, http.StatusBadRequest},
		{"unreachable KMS", unreachableKMS, codes.Unavailable, http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := admin.RotateRootKey(ctx, &tresorv1.RotateRootKeyRequest{RootKeyUri: tt.uri})
			if status.Code(err) != tt.code {
				t.Errorf("RotateRootKey(%q) err = %v, want %v", tt.uri, err, tt.code)
			}
			if code, out := ts.rest(t, "POST", "/v1/rootKey:rotate", map[string]any{"rootKeyUri": tt.uri}); code != tt.http {
				t.Errorf("POST /v1/rootKey:rotate %q = %d %v, want %d", tt.uri, code, out, tt.http)
			}
			notStarted(t)
			decrypts(t)
		})
	}

	next := filepath.Join(t.TempDir(), "root-2.key")
	if _, err := localkek.CreateKeyFile(next); err != nil {
		t.Fatal(err)
	}
	resp, err := admin.RotateRootKey(ctx, &tresorv1.RotateRootKeyRequest{RootKeyUri: localkek.URI(next)})
	if err != nil {
		t.Fatalf("RotateRootKey(new key file) err = %v, want nil", err)
	}
	job := resp.GetRotation()
	if job.GetState() != tresorv1.RootKeyRotationState_ROOT_KEY_ROTATION_STATE_RUNNING || job.GetId() == "" ||
		job.GetFromRootKey() == job.GetToRootKey() || job.GetTotal() != 1 || job.GetStartTime() == nil || job.GetEndTime() != nil {
		t.Errorf("RotateRootKey() = %v, want a running job from one root key to another over 1 keyset", job)
	}
	// A second rotation while the first runs (it runs for at least 1s).
	if _, err := admin.RotateRootKey(ctx, &tresorv1.RotateRootKeyRequest{RootKeyUri: localkek.URI(rootKey)}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("RotateRootKey() while a job runs err = %v, want FailedPrecondition", err)
	}
	if code, out := ts.rest(t, "POST", "/v1/rootKey:rotate", map[string]any{"rootKeyUri": localkek.URI(rootKey)}); code != http.StatusBadRequest || out["code"] != float64(codes.FailedPrecondition) {
		t.Errorf("POST /v1/rootKey:rotate while a job runs = %d %v, want 400 with code FAILED_PRECONDITION", code, out)
	}
	// New keys are wrapped by the new root key from now on.
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "during", Type: tresorv1.KeyType_KEY_TYPE_AES256_SIV}); err != nil {
		t.Fatalf("CreateKey() during the job err = %v", err)
	}
	if k, err := st.GetKey(ctx, "during"); err != nil || k.RootKeyID != job.GetToRootKey() {
		t.Errorf("root key of a key created during the job = %q, %v; want %q", k.RootKeyID, err, job.GetToRootKey())
	}
	decrypts(t)

	deadline := time.Now().Add(20 * time.Second)
	for {
		code, out := ts.rest(t, "GET", "/v1/rootKey/rotation", nil)
		rot, _ := out["rotation"].(map[string]any)
		if code != http.StatusOK || rot["id"] != job.GetId() {
			t.Fatalf("GET /v1/rootKey/rotation = %d %v, want 200 with job %s", code, out, job.GetId())
		}
		if rot["state"] == "ROOT_KEY_ROTATION_STATE_DONE" {
			if rot["rewrapped"] != "1" || rot["endTime"] == nil || rot["toRootKey"] != job.GetToRootKey() {
				t.Errorf("finished job = %v, want 1 keyset re-wrapped to %s and an end time", rot, job.GetToRootKey())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job still %v after 20s", rot)
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err := admin.GetRootKeyRotation(ctx, &tresorv1.GetRootKeyRotationRequest{})
	if err != nil || got.GetRotation().GetState() != tresorv1.RootKeyRotationState_ROOT_KEY_ROTATION_STATE_DONE {
		t.Errorf("GetRootKeyRotation() = %v, %v; want the job done", got, err)
	}
	if k, err := st.GetKey(ctx, "payments"); err != nil || k.RootKeyID != job.GetToRootKey() {
		t.Errorf("root key of payments after the job = %q, %v; want %q", k.RootKeyID, err, job.GetToRootKey())
	}
	decrypts(t)
}

// TestRootKeyRotationUnimplemented: a server without root-key rotation
// says so.
func TestRootKeyRotationUnimplemented(t *testing.T) {
	ts := startServer(t, 0)
	admin := tresorv1.NewAdminServiceClient(ts.conn)
	if _, err := admin.GetRootKeyRotation(context.Background(), &tresorv1.GetRootKeyRotationRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("GetRootKeyRotation() without a rotator err = %v, want Unimplemented", err)
	}
}
