package server

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

const day = 24 * time.Hour

func TestKeyDeletionRPCs(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	for _, name := range []string{"pay", "other"} {
		if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: name, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
			t.Fatalf("CreateKey(%s) err = %v, want nil", name, err)
		}
	}
	enc, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "pay", Plaintext: []byte("IBAN DE89"), AssociatedData: []byte("ad")})
	if err != nil {
		t.Fatal(err)
	}

	before := time.Now()
	k, err := ts.keys.ScheduleKeyDeletion(ctx, &tresorv1.ScheduleKeyDeletionRequest{Key: "pay", WaitingPeriod: durationpb.New(7 * day)})
	if err != nil || k.GetState() != tresorv1.KeyState_KEY_STATE_DELETION_SCHEDULED {
		t.Fatalf("ScheduleKeyDeletion(pay, 7d) = %v, %v; want DELETION_SCHEDULED", k.GetState(), err)
	}
	if dt := k.GetDeletionTime().AsTime(); dt.Before(before.Add(7*day).Add(-time.Second)) || dt.After(time.Now().Add(7*day)) {
		t.Errorf("ScheduleKeyDeletion(pay, 7d) deletion_time = %v, want now + 7 days", dt)
	}
	code, out := ts.rest(t, "POST", "/v1/keys/pay:cancelDeletion", map[string]any{})
	if code != 200 || out["state"] != "KEY_STATE_DISABLED" || out["deletionTime"] != nil {
		t.Fatalf("REST cancelDeletion = %d %v, want 200, KEY_STATE_DISABLED without a deletion time", code, out)
	}
	code, out = ts.rest(t, "POST", "/v1/keys/pay:scheduleDeletion", map[string]any{"waitingPeriod": "864000s"})
	if code != 200 || out["state"] != "KEY_STATE_DELETION_SCHEDULED" || out["deletionTime"] == nil {
		t.Fatalf("REST scheduleDeletion (10 days) = %d %v, want 200, KEY_STATE_DELETION_SCHEDULED", code, out)
	}

	tests := []struct {
		name     string
		grpc     func() error
		method   string
		path     string
		body     any
		wantCode codes.Code
		wantHTTP int
		wantMsg  string
	}{
		{"waiting period of 1 day", func() error {
			_, err := ts.keys.ScheduleKeyDeletion(ctx, &tresorv1.ScheduleKeyDeletionRequest{Key: "other", WaitingPeriod: durationpb.New(day)})
			return err
		}, "POST", "/v1/keys/other:scheduleDeletion", map[string]any{"waitingPeriod": "86400s"}, codes.InvalidArgument, 400, "waiting_period"},
		{"waiting period of 31 days", func() error {
			_, err := ts.keys.ScheduleKeyDeletion(ctx, &tresorv1.ScheduleKeyDeletionRequest{Key: "other", WaitingPeriod: durationpb.New(31 * day)})
			return err
		}, "POST", "/v1/keys/other:scheduleDeletion", map[string]any{"waitingPeriod": "2678400s"}, codes.InvalidArgument, 400, "waiting_period"},
		{"cancel without a schedule", func() error {
			_, err := ts.keys.CancelKeyDeletion(ctx, &tresorv1.CancelKeyDeletionRequest{Key: "other"})
			return err
		}, "POST", "/v1/keys/other:cancelDeletion", map[string]any{}, codes.FailedPrecondition, 400, "not scheduled for deletion"},
		{"schedule twice", func() error {
			_, err := ts.keys.ScheduleKeyDeletion(ctx, &tresorv1.ScheduleKeyDeletionRequest{Key: "pay"})
			return err
		}, "POST", "/v1/keys/pay:scheduleDeletion", map[string]any{}, codes.FailedPrecondition, 400, `key "pay" is scheduled for deletion at`},
		{"schedule an unknown key", func() error {
			_, err := ts.keys.ScheduleKeyDeletion(ctx, &tresorv1.ScheduleKeyDeletionRequest{Key: "missing"})
			return err
		}, "POST", "/v1/keys/missing:scheduleDeletion", map[string]any{}, codes.NotFound, 404, "key not found"},
		{"encrypt with a scheduled key", func() error {
			_, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "pay", Plaintext: []byte("x")})
			return err
		}, "POST", "/v1/keys/pay:encrypt", map[string]any{"plaintext": b64("x")}, codes.FailedPrecondition, 400, "scheduled for deletion at"},
		{"decrypt with a scheduled key", func() error {
			_, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), AssociatedData: []byte("ad")})
			return err
		}, "POST", "/v1/ciphertext:decrypt", map[string]any{"ciphertext": enc.GetCiphertext(), "associatedData": b64("ad")}, codes.FailedPrecondition, 400, "scheduled for deletion at"},
		{"enable a scheduled key", func() error {
			_, err := ts.keys.EnableKey(ctx, &tresorv1.EnableKeyRequest{Key: "pay"})
			return err
		}, "POST", "/v1/keys/pay:enable", map[string]any{}, codes.FailedPrecondition, 400, "scheduled for deletion at"},
		{"rotate a scheduled key", func() error {
			_, err := ts.keys.RotateKey(ctx, &tresorv1.RotateKeyRequest{Key: "pay"})
			return err
		}, "POST", "/v1/keys/pay:rotate", map[string]any{}, codes.FailedPrecondition, 400, "scheduled for deletion at"},
		{"update a scheduled key", func() error {
			_, err := ts.keys.UpdateKey(ctx, &tresorv1.UpdateKeyRequest{Key: "pay", Labels: map[string]string{"a": "b"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels"}}})
			return err
		}, "PATCH", "/v1/keys/pay", map[string]any{"labels": map[string]string{"a": "b"}, "updateMask": "labels"}, codes.FailedPrecondition, 400, "scheduled for deletion at"},
	}
	before2 := keyRevisions(t, ts.store)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.grpc()
			if status.Code(err) != tt.wantCode || !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
				t.Errorf("gRPC %s: err = %v, want %v containing %q", tt.name, err, tt.wantCode, tt.wantMsg)
			}
			code, out := ts.rest(t, tt.method, tt.path, tt.body)
			msg, _ := out["message"].(string)
			if code != tt.wantHTTP || out["code"] != float64(tt.wantCode) || !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("REST %s: %d %v, want HTTP %d with code %d containing %q", tt.name, code, out, tt.wantHTTP, tt.wantCode, tt.wantMsg)
			}
		})
	}
	if after := keyRevisions(t, ts.store); after != before2 {
		t.Errorf("refused calls changed the store: before %s, after %s", before2, after)
	}

	// Let the waiting period pass (in the store), then destroy as the
	// scheduler does.
	stored, err := ts.store.GetKey(ctx, "pay")
	if err != nil {
		t.Fatal(err)
	}
	stored.DeletionTime = time.Now().Add(-time.Minute)
	if _, err := ts.store.UpdateKey(ctx, stored); err != nil {
		t.Fatalf("UpdateKey(deletion time in the past) err = %v", err)
	}
	if _, done, err := ts.ring.DestroyIfDue(ctx, "pay"); !done || err != nil {
		t.Fatalf("DestroyIfDue(pay) = %v, %v; want true, nil", done, err)
	}
	got, err := ts.keys.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "pay"})
	if err != nil || got.GetState() != tresorv1.KeyState_KEY_STATE_DESTROYED || got.GetDestroyTime() == nil || got.GetDeletionTime() != nil {
		t.Fatalf("GetKey(pay) after destruction = %v, %v; want DESTROYED with a destroy_time", got, err)
	}
	wantMsg := `key "pay" was destroyed at ` + got.GetDestroyTime().AsTime().Format(time.RFC3339)
	_, err = ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), AssociatedData: []byte("ad")})
	if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != wantMsg {
		t.Errorf("Decrypt(ciphertext of a destroyed key) err = %v, want FailedPrecondition %q", err, wantMsg)
	}
	code, out = ts.rest(t, "POST", "/v1/ciphertext:decrypt", map[string]any{"ciphertext": enc.GetCiphertext()})
	if code != 400 || out["code"] != float64(codes.FailedPrecondition) || out["message"] != wantMsg {
		t.Errorf("REST decrypt with a destroyed key = %d %v, want 400 with %q", code, out, wantMsg)
	}
	if _, err := ts.keys.CancelKeyDeletion(ctx, &tresorv1.CancelKeyDeletionRequest{Key: "pay"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("CancelKeyDeletion(destroyed) err = %v, want FailedPrecondition", err)
	}
}

// TestKeyRotationPolicyFields: usage limit and retention go in with
// CreateKey and UpdateKey and come back with every key; GetKey shows uses
// and the next rotation; a spent version rotates the key.
func TestKeyRotationPolicyFields(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, 0)
	k, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{
		KeyId: "pay", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM,
		RotationPeriod: durationpb.New(day), UsageLimit: 3, RetireAfter: durationpb.New(2 * day), RetireAfterVersions: 4,
	})
	if err != nil {
		t.Fatalf("CreateKey() err = %v, want nil", err)
	}
	if k.GetUsageLimit() != 3 || k.GetRetireAfter().AsDuration() != 2*day || k.GetRetireAfterVersions() != 4 {
		t.Errorf("CreateKey() = usage %d, retire after %v / %d versions; want 3, 48h, 4", k.GetUsageLimit(), k.GetRetireAfter().AsDuration(), k.GetRetireAfterVersions())
	}
	if want := k.GetVersions()[0].GetCreateTime().AsTime().Add(day); !k.GetNextRotationTime().AsTime().Equal(want) {
		t.Errorf("CreateKey() next_rotation_time = %v, want %v", k.GetNextRotationTime().AsTime(), want)
	}
	var versions []uint32
	for range 4 {
		enc, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "pay", Plaintext: []byte("x")})
		if err != nil {
			t.Fatalf("Encrypt() err = %v, want nil", err)
		}
		versions = append(versions, enc.GetKeyVersion())
	}
	if want := []uint32{1, 1, 1, 2}; !slices.Equal(versions, want) {
		t.Errorf("Encrypt() versions with a usage limit of 3 = %v, want %v", versions, want)
	}
	got, err := ts.keys.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "pay"})
	if err != nil || len(got.GetVersions()) != 2 || got.GetVersions()[0].GetUses() != 3 || got.GetVersions()[1].GetUses() < 1 {
		t.Fatalf("GetKey(pay) = %v, %v; want 2 versions, version 1 with 3 uses", got.GetVersions(), err)
	}
	code, out := ts.rest(t, "PATCH", "/v1/keys/pay", map[string]any{"usageLimit": "1000", "retireAfter": "0s", "retireAfterVersions": 0, "updateMask": "usageLimit,retireAfter,retireAfterVersions"})
	if code != 200 || out["usageLimit"] != "1000" || out["retireAfter"] != nil || out["retireAfterVersions"] != nil {
		t.Errorf("REST update of usage limit and retention = %d %v, want 200 with usageLimit 1000 and no retention", code, out)
	}
	code, out = ts.rest(t, "GET", "/v1/keys/pay", nil)
	vs, _ := out["versions"].([]any)
	if code != 200 || len(vs) != 2 || vs[0].(map[string]any)["uses"] != "3" || out["nextRotationTime"] == nil {
		t.Errorf("REST get key = %d %v, want 2 versions, version 1 with uses 3, a next rotation time", code, out)
	}
	if _, err := ts.keys.UpdateKey(ctx, &tresorv1.UpdateKeyRequest{Key: "pay", UsageLimit: 1 << 33, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"usage_limit"}}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("UpdateKey(usage_limit 2^33) err = %v, want InvalidArgument", err)
	}
}
