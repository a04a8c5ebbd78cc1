package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/client"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// TestSDKAgainstDev: the Go SDK reaches `tresor dev` with the dev client's
// certificate and tokens from the dev issuer's client-credentials
// endpoint, and seals locally with a data key from it.
func TestSDKAgainstDev(t *testing.T) {
	conn := startDev(t, devCfg)
	addr := conn[1]
	devDir := filepath.Dir(filepath.Dir(devCfg.TLS.CertFile))
	tlsDir := filepath.Dir(devCfg.TLS.ClientCAFile)
	iss, err := devissuer.Open(filepath.Join(devDir, "issuer"))
	if err != nil {
		t.Fatal(err)
	}
	iss.SetURL(devCfg.Auth.Token.Issuer)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	issuerAddr, err := serveDevIssuer(ctx, iss, "127.0.0.1:0", devCfg.TLS.CertFile, devCfg.TLS.KeyFile, devCfg.TLS.ClientCAFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("serveDevIssuer() err = %v", err)
	}
	tlsCfg, err := client.TLSFromFiles(filepath.Join(tlsDir, "ca.pem"), filepath.Join(tlsDir, "client.pem"), filepath.Join(tlsDir, "client-key.pem"))
	if err != nil {
		t.Fatalf("TLSFromFiles() err = %v", err)
	}
	tokens, err := client.ClientCredentials(client.ClientCredentialsConfig{
		TokenURL: "https://" + issuerAddr + "/token", ClientID: devClientID, TLS: tlsCfg,
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{Address: addr, TLS: tlsCfg, Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "sdk-dev", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatalf("CreateKey() through the SDK err = %v, want nil", err)
	}
	l, err := client.NewLocalEncryption(c, client.CachePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := l.Encryptor("sdk-dev", nil)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := e.Encrypt(ctx, []byte("hello"), nil)
	if err != nil {
		t.Fatalf("Encrypt() err = %v, want nil", err)
	}
	fresh, _ := client.NewLocalEncryption(c, client.CachePolicy{})
	reader, err := fresh.Encryptor("sdk-dev", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := reader.Decrypt(ctx, msg, nil); err != nil || !bytes.Equal(got, []byte("hello")) {
		t.Fatalf("Decrypt() = %q, %v; want hello", got, err)
	}
	// The CLI decrypts the wrapped data key the message carries (format
	// v1: its length at bytes 7-8, the key from byte 9).
	if len(msg) < 9 || len(msg) < 9+int(binary.BigEndian.Uint16(msg[7:9])) {
		t.Fatalf("Encrypt() returned a %d-byte message, too short for its header", len(msg))
	}
	wrapped := string(msg[9 : 9+int(binary.BigEndian.Uint16(msg[7:9]))])
	if !strings.HasPrefix(wrapped, "tresor:v1:") {
		t.Fatalf("message header holds %q, want a wrapped data key", wrapped)
	}
	if out := mustRun(t, wrapped, append([]string{"decrypt"}, conn...)...); len(out) != 32 {
		t.Errorf("tresor decrypt of the wrapped data key printed %d bytes, want the 32-byte data key", len(out))
	}
}
