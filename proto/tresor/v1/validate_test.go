package tresorv1

// Checks that the protovalidate rules of the API behave as documented.

import (
	"strings"
	"testing"
	"time"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

func TestRequestValidation(t *testing.T) {
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		msg  proto.Message
		ok   bool
	}{
		{"create ok", &CreateKeyRequest{KeyId: "payments", Type: KeyType_KEY_TYPE_AES256_GCM}, true},
		{"create long id", &CreateKeyRequest{KeyId: "a" + strings.Repeat("b", 62), Type: KeyType_KEY_TYPE_AES256_GCM}, true},
		{"create too long id", &CreateKeyRequest{KeyId: "a" + strings.Repeat("b", 63), Type: KeyType_KEY_TYPE_AES256_GCM}, false},
		{"create bad id", &CreateKeyRequest{KeyId: "Pay", Type: KeyType_KEY_TYPE_AES256_GCM}, false},
		{"create empty id", &CreateKeyRequest{Type: KeyType_KEY_TYPE_AES256_GCM}, false},
		{"create no type", &CreateKeyRequest{KeyId: "p"}, false},
		{"create bad type", &CreateKeyRequest{KeyId: "p", Type: 7}, false},
		{"create rot ok", &CreateKeyRequest{KeyId: "p", Type: 1, RotationPeriod: durationpb.New(87600 * time.Hour)}, true},
		{"create rot big", &CreateKeyRequest{KeyId: "p", Type: 1, RotationPeriod: durationpb.New(87600*time.Hour + time.Second)}, false},
		{"create rot neg", &CreateKeyRequest{KeyId: "p", Type: 1, RotationPeriod: durationpb.New(-time.Second)}, false},
		{"create labels ok", &CreateKeyRequest{KeyId: "p", Type: 1, Labels: map[string]string{"env_x-1": strings.Repeat("é", 256)}}, true},
		{"create labels bad key", &CreateKeyRequest{KeyId: "p", Type: 1, Labels: map[string]string{"Env": "x"}}, false},
		{"create labels long val", &CreateKeyRequest{KeyId: "p", Type: 1, Labels: map[string]string{"env": strings.Repeat("x", 257)}}, false},
		{"list ok", &ListKeysRequest{PageSize: 1000}, true},
		{"list neg", &ListKeysRequest{PageSize: -1}, false},
		{"list big", &ListKeysRequest{PageSize: 1001}, false},
		{"update ok", &UpdateKeyRequest{Key: "k", UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels"}}}, true},
		{"update no mask", &UpdateKeyRequest{Key: "k"}, false},
		{"update empty mask", &UpdateKeyRequest{Key: "k", UpdateMask: &fieldmaskpb.FieldMask{}}, false},
		{"update bad path", &UpdateKeyRequest{Key: "k", UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"type"}}}, false},
		{"update subpath", &UpdateKeyRequest{Key: "k", UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels.x"}}}, false},
		{"update mdv 0", &UpdateKeyRequest{Key: "k", UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"min_decryption_version"}}}, false},
		{"update mdv 2", &UpdateKeyRequest{Key: "k", MinDecryptionVersion: 2, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"min_decryption_version"}}}, true},
		{"enc ok", &EncryptRequest{Key: "k", Plaintext: []byte("x")}, true},
		{"enc empty", &EncryptRequest{Key: "k"}, false},
		{"enc big", &EncryptRequest{Key: "k", Plaintext: make([]byte, 4<<20+1)}, false},
		{"enc max", &EncryptRequest{Key: "k", Plaintext: make([]byte, 4<<20)}, true},
		{"enc aad big", &EncryptRequest{Key: "k", Plaintext: []byte("x"), AssociatedData: make([]byte, 8193)}, false},
		{"dec ok", &DecryptRequest{Ciphertext: "abc"}, true},
		{"dec empty", &DecryptRequest{}, false},
		{"reenc ok", &ReEncryptRequest{Ciphertext: "abc"}, true},
		{"reenc dest ok", &ReEncryptRequest{Ciphertext: "abc", DestinationKey: "k2"}, true},
		{"reenc dest bad", &ReEncryptRequest{Ciphertext: "abc", DestinationKey: "K2"}, false},
		{"batch empty", &BatchEncryptRequest{Key: "k"}, false},
		{"batch ok", &BatchEncryptRequest{Key: "k", Items: []*BatchEncryptItem{{Plaintext: []byte("x")}}}, true},
		{"batch bad item", &BatchEncryptRequest{Key: "k", Items: []*BatchEncryptItem{{}}}, false},
		{"batch too many", &BatchDecryptRequest{Items: make([]*BatchDecryptItem, 1001)}, false},
		{"bdec ok", &BatchDecryptRequest{Items: []*BatchDecryptItem{{Ciphertext: "x"}}}, true},
	}
	for _, c := range cases {
		err := v.Validate(c.msg)
		if (err == nil) != c.ok {
			t.Errorf("%s: want valid=%v, got err=%v", c.name, c.ok, err)
		}
	}
}
