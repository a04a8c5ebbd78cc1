package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/tresorkms/tresor/client"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// The examples run against a real tresor server in this process
// (client.StartExampleServer): mutual TLS, tokens from an OAuth 2.0 token
// endpoint bound to the client certificate, a default-deny policy that
// permits client.TestClientID.

// connect is ExampleNew's connection, for the other examples.
func connect(s *client.TestServer) *client.Client {
	tokens, err := client.ClientCredentials(client.ClientCredentialsConfig{TokenURL: s.TokenURL, ClientID: client.TestClientID, TLS: s.TLS})
	if err != nil {
		log.Fatal(err)
	}
	c, err := client.New(client.Config{Address: s.Addr, TLS: s.TLS, Tokens: tokens})
	if err != nil {
		log.Fatal(err)
	}
	return c
}

func ExampleNew() {
	s, stop := client.StartExampleServer()
	defer stop()
	ctx := context.Background()

	// A service reads its certificate from files:
	//
	//	tlsConfig, err := client.TLSFromFiles("ca.pem", "client.pem", "client-key.pem")
	//
	// here the test server's client certificate stands in.
	tlsConfig := s.TLS
	tokens, err := client.ClientCredentials(client.ClientCredentialsConfig{
		TokenURL: s.TokenURL,
		ClientID: client.TestClientID,
		// The same certificate as the tresor connection: tresor's tokens
		// are bound to it.
		TLS: tlsConfig,
	})
	if err != nil {
		log.Fatal(err)
	}
	c, err := client.New(client.Config{Address: s.Addr, TLS: tlsConfig, Tokens: tokens})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	key, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "payments", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created", key.GetName(), "version", key.GetPrimaryVersion())

	aad := []byte("invoice=2024-0042")
	enc, err := c.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "payments", Plaintext: []byte("IBAN DE89370400440532013000"), AssociatedData: aad})
	if err != nil {
		log.Fatal(err)
	}
	// The ciphertext names its key: Decrypt needs only it and the
	// associated data.
	dec, err := c.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), AssociatedData: aad})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", dec.GetPlaintext())
	// Output:
	// created keys/payments version 1
	// IBAN DE89370400440532013000
}

func ExampleEncryptor_Encrypt() {
	s, stop := client.StartExampleServer()
	defer stop()
	ctx := context.Background()
	c := connect(s)
	defer c.Close()
	if _, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "ledger", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		log.Fatal(err)
	}

	// One data key seals at most a million messages, or 1 GiB, for at
	// most five minutes; then the next one is asked for.
	local, err := client.NewLocalEncryption(c, client.CachePolicy{MaxMessages: 1 << 20, MaxBytes: 1 << 30, MaxAge: 5 * time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	// The key context is bound to the data key by tresor and carried in
	// every message; the associated data of each message stays local.
	enc, err := local.Encryptor("ledger", []byte("service=ledger"))
	if err != nil {
		log.Fatal(err)
	}
	var sealed [][]byte
	for i := range 10000 {
		msg, err := enc.Encrypt(ctx, fmt.Appendf(nil, "entry %d: 100.00 EUR", i), fmt.Appendf(nil, "row=%d", i))
		if err != nil {
			log.Fatal(err)
		}
		sealed = append(sealed, msg)
	}
	fmt.Println("messages sealed:", len(sealed))
	fmt.Println("data keys generated:", local.Stats().DataKeysGenerated)
	fmt.Println("GenerateDataKey calls:", s.Calls(tresorv1.CryptoService_GenerateDataKey_FullMethodName))
	// Output:
	// messages sealed: 10000
	// data keys generated: 1
	// GenerateDataKey calls: 1
}

func ExampleEncryptor_Decrypt() {
	s, stop := client.StartExampleServer()
	defer stop()
	ctx := context.Background()
	c := connect(s)
	defer c.Close()
	if _, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "ledger", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		log.Fatal(err)
	}

	// The writer seals...
	writer, err := client.NewLocalEncryption(c, client.CachePolicy{})
	if err != nil {
		log.Fatal(err)
	}
	enc, err := writer.Encryptor("ledger", []byte("tenant=acme"))
	if err != nil {
		log.Fatal(err)
	}
	var sealed [][]byte
	for i := range 100 {
		msg, err := enc.Encrypt(ctx, fmt.Appendf(nil, "entry %d", i), []byte("ledger"))
		if err != nil {
			log.Fatal(err)
		}
		sealed = append(sealed, msg)
	}

	// ...and a reader elsewhere opens, naming the key and key context it
	// expects: one Decrypt of the wrapped data key the messages carry
	// opens all of them.
	reader, err := client.NewLocalEncryption(c, client.CachePolicy{})
	if err != nil {
		log.Fatal(err)
	}
	dec, err := reader.Encryptor("ledger", []byte("tenant=acme"))
	if err != nil {
		log.Fatal(err)
	}
	for i, msg := range sealed {
		pt, err := dec.Decrypt(ctx, msg, []byte("ledger"))
		if err != nil {
			log.Fatal(err)
		}
		if i == 0 || i == len(sealed)-1 {
			fmt.Printf("%s\n", pt)
		}
	}
	fmt.Println("data keys unwrapped:", reader.Stats().DataKeysUnwrapped)

	// Other associated data, or any change to the message, does not open.
	_, err = dec.Decrypt(ctx, sealed[0], []byte("payroll"))
	fmt.Println("wrong associated data:", errors.Is(err, client.ErrDecryptionFailed))

	// Nor does a message sealed under another key context, although the
	// reader may unwrap its data key.
	other, err := writer.Encryptor("ledger", []byte("tenant=mallory"))
	if err != nil {
		log.Fatal(err)
	}
	forged, err := other.Encrypt(ctx, []byte("entry 0"), []byte("ledger"))
	if err != nil {
		log.Fatal(err)
	}
	_, err = dec.Decrypt(ctx, forged, []byte("ledger"))
	fmt.Println("another key context:", errors.Is(err, client.ErrDecryptionFailed))
	// Output:
	// entry 0
	// entry 99
	// data keys unwrapped: 1
	// wrong associated data: true
	// another key context: true
}

// Customer is a record whose tagged fields tresor protects.
type Customer struct {
	Name     string `json:"name"`
	IBAN     string `json:"iban" tresor:"indexed"`
	IBANBidx string `json:"iban_bidx,omitempty"` // receives the blind index
	TaxID    string `json:"tax_id" tresor:"restricted"`
}

// customerTiers say what each tier of Customer's tags does.
var customerTiers = []client.SchemaTier{
	{Name: "restricted", Protection: client.ProtectAEAD, Key: "customer-pii", Mask: &client.TierMask{Format: "digits", KeepLast: 4}},
	{Name: "indexed", Protection: client.ProtectBlindIndex, Key: "customer-pii", IndexKey: "customer-index", Mask: &client.TierMask{Format: "iban", KeepLast: 4}},
}

func ExampleStructSchema() {
	paths, err := client.StructPaths(Customer{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(paths)

	def, err := client.StructSchema("customer", 1, Customer{}, customerTiers...)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(def))
	// Output:
	// map[$.iban:indexed $.tax_id:restricted]
	// {"name":"customer","version":1,"default_tier":"public","tiers":{"indexed":{"protection":"blind_index","key":"customer-pii","index_key":"customer-index","mask":{"keep_last":4,"format":"iban"}},"public":{"protection":"none","sensitivity":"public"},"restricted":{"protection":"aead","key":"customer-pii","mask":{"keep_last":4,"format":"digits"}}},"fields":[{"path":"$.iban","tier":"indexed"},{"path":"$.tax_id","tier":"restricted"}]}
}

func ExampleClient_ProtectStruct() {
	s, stop := client.StartExampleServer()
	defer stop()
	ctx := context.Background()
	c := connect(s)
	defer c.Close()

	// The keys the tiers name, then the schema the tags describe.
	for id, typ := range map[string]tresorv1.KeyType{
		"customer-pii":   tresorv1.KeyType_KEY_TYPE_AES256_GCM,
		"customer-index": tresorv1.KeyType_KEY_TYPE_HMAC_SHA256,
	} {
		if _, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: id, Type: typ}); err != nil {
			log.Fatal(err)
		}
	}
	def, err := client.StructSchema("customer", 1, Customer{}, customerTiers...)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: string(def)}); err != nil {
		log.Fatal(err)
	}

	cust := Customer{Name: "Ada Lovelace", IBAN: "DE89370400440532013000", TaxID: "123-45-6789"}
	// The document id binds the ciphertexts to this customer.
	resp, err := c.ProtectStruct(ctx, "customer", "customer-42", &cust)
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range resp.GetFields() {
		fmt.Println(f.GetPath(), f.GetOutcome())
	}
	fmt.Println("name:", cust.Name)
	fmt.Println("iban sealed:", strings.HasPrefix(cust.IBAN, "tresor:"), "indexed:", cust.IBANBidx != "")
	fmt.Println("tax id sealed:", strings.HasPrefix(cust.TaxID, "tresor:"))

	// Store cust; later, reveal it as far as the policy allows.
	if _, err := c.RevealStruct(ctx, "customer", 0, "customer-42", &cust); err != nil {
		log.Fatal(err)
	}
	fmt.Println("revealed:", cust.Name, cust.IBAN, cust.TaxID)
	// Output:
	// $.iban protected
	// $.tax_id protected
	// name: Ada Lovelace
	// iban sealed: true indexed: true
	// tax id sealed: true
	// revealed: Ada Lovelace DE89370400440532013000 123-45-6789
}

// Every error of a call matches a sentinel with errors.Is; *client.Error
// has the details.
func Example_errors() {
	s, stop := client.StartExampleServer()
	defer stop()
	ctx := context.Background()
	c := connect(s)
	defer c.Close()

	_, err := c.GetKey(ctx, &tresorv1.GetKeyRequest{Key: "no-such-key"})
	switch {
	case errors.Is(err, client.ErrNotFound):
		fmt.Println("no such key")
	case err != nil:
		log.Fatal(err)
	}
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.Method, e.Code)
	}

	// A ciphertext that does not authenticate is ErrDecryptionFailed,
	// whatever the reason.
	if _, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "payments", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		log.Fatal(err)
	}
	enc, err := c.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "payments", Plaintext: []byte("hello")})
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), AssociatedData: []byte("other")})
	fmt.Println("decryption failed:", errors.Is(err, client.ErrDecryptionFailed), errors.Is(err, client.ErrInvalidArgument))
	// Output:
	// no such key
	// /tresor.v1.KeyService/GetKey NotFound
	// decryption failed: true true
}

func ExampleEncryptor_EncryptStream() {
	s, stop := client.StartExampleServer()
	defer stop()
	ctx := context.Background()
	c := connect(s)
	defer c.Close()
	if _, err := c.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "statements", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		log.Fatal(err)
	}
	local, err := client.NewLocalEncryption(c, client.CachePolicy{})
	if err != nil {
		log.Fatal(err)
	}
	enc, err := local.Encryptor("statements", nil)
	if err != nil {
		log.Fatal(err)
	}

	// A 1 MiB statement file, sealed from a reader into a writer in 64 KiB
	// authenticated chunks.
	statement := strings.Repeat("2024-06-30;DE89370400440532013000;-42.00 EUR\n", 1<<20/45)
	var sealed bytes.Buffer
	n, err := enc.EncryptStream(ctx, &sealed, strings.NewReader(statement), []byte("statement=2024-06"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("sealed", n, "bytes")

	var opened bytes.Buffer
	if _, err := enc.DecryptStream(ctx, &opened, bytes.NewReader(sealed.Bytes()), []byte("statement=2024-06")); err != nil {
		log.Fatal(err)
	}
	fmt.Println("opened intact:", opened.String() == statement)

	// A stream cut short fails, as does one with its chunks reordered.
	opened.Reset()
	_, err = enc.DecryptStream(ctx, &opened, bytes.NewReader(sealed.Bytes()[:sealed.Len()-100]), []byte("statement=2024-06"))
	fmt.Println("truncated:", errors.Is(err, client.ErrDecryptionFailed))
	// Output:
	// sealed 1048545 bytes
	// opened intact: true
	// truncated: true
}
