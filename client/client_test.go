package client

import (
	"context"
	"testing"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

func TestFixture(t *testing.T) {
	s := StartTestServer(t)
	c := s.Client(t, nil)
	ctx := context.Background()
	if _, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "payments", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatalf("CreateKey() err = %v", err)
	}
	enc, err := c.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "payments", Plaintext: []byte("hello")})
	if err != nil {
		t.Fatalf("Encrypt() err = %v", err)
	}
	dec, err := c.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
	if err != nil || string(dec.GetPlaintext()) != "hello" {
		t.Fatalf("Decrypt() = %q, %v", dec.GetPlaintext(), err)
	}
}
