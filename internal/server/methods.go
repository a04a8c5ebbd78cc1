package server

import (
	"context"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tresorkms/tresor/envelope"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// Action classes: the rate limiter keeps one bucket per principal per class.
const (
	classCrypto = "crypto"
	classAdmin  = "admin"
	classRead   = "read"
	classHealth = "health"
)

// budgetDecrypt is the budget action counted for calls that reveal
// plaintext.
const budgetDecrypt = "decrypt"

// methodRule says how the chain treats one RPC: the policy action it is,
// its rate-limit class, the keys it touches and whether it spends a
// decrypt budget. Every RPC the server registers has a rule; a call to a
// method without one is refused before it reaches a handler (default
// deny), and TestEveryMethodHasARule walks the registered services to prove
// the table is complete.
type methodRule struct {
	action string
	class  string
	// keys lists the keys the request touches, each with how many items of
	// the request touch it. Nil for calls that touch no key: they are
	// authorized against the service itself.
	keys func(req any) []keyUse
	// budget is the budget action the keys' uses count against, or "".
	budget string
}

// keyUse is a key a request touches and on how many items. attrs is set
// when the request itself describes the key (CreateKey); else the chain
// reads the key's attributes.
type keyUse struct {
	name  string
	n     int64
	attrs *envelope.KeyAttributes
}

type keyNamed interface{ GetKey() string }

func namedKey(req any) []keyUse {
	if r, ok := req.(keyNamed); ok {
		return []keyUse{{name: r.GetKey(), n: 1}}
	}
	return nil
}

func batchEncryptKey(req any) []keyUse {
	r, ok := req.(*tresorv1.BatchEncryptRequest)
	if !ok {
		return nil
	}
	return []keyUse{{name: r.GetKey(), n: int64(len(r.GetItems()))}}
}

func createdKey(req any) []keyUse {
	r, ok := req.(*tresorv1.CreateKeyRequest)
	if !ok {
		return nil
	}
	a := envelope.AttributesOf(r.GetKeyId(), r.GetLabels())
	return []keyUse{{name: r.GetKeyId(), n: 1, attrs: &a}}
}

// ciphertextKey names the key in a ciphertext's header. The header is not
// authenticated yet: a forged header names a key the caller must then be
// allowed to use, and decryption fails anyway. An unreadable ciphertext
// touches no key; the handler refuses it with the opaque decryption error.
func ciphertextKey(s string) (string, bool) {
	b, err := envelope.DecodeCiphertext(s)
	if err != nil {
		return "", false
	}
	c, err := envelope.ParseCiphertext(b)
	if err != nil {
		return "", false
	}
	return c.KeyName, true
}

func decryptKey(req any) []keyUse {
	r, ok := req.(*tresorv1.DecryptRequest)
	if !ok {
		return nil
	}
	if name, ok := ciphertextKey(r.GetCiphertext()); ok {
		return []keyUse{{name: name, n: 1}}
	}
	return []keyUse{}
}

func batchDecryptKeys(req any) []keyUse {
	r, ok := req.(*tresorv1.BatchDecryptRequest)
	if !ok {
		return nil
	}
	uses := []keyUse{}
	for _, item := range r.GetItems() {
		name, ok := ciphertextKey(item.GetCiphertext())
		if !ok {
			continue
		}
		found := false
		for i := range uses {
			if uses[i].name == name {
				uses[i].n++
				found = true
				break
			}
		}
		if !found {
			uses = append(uses, keyUse{name: name, n: 1})
		}
	}
	return uses
}

// reEncryptKeys is the source key (its plaintext is used, though never
// returned) and the destination key.
func reEncryptKeys(req any) []keyUse {
	r, ok := req.(*tresorv1.ReEncryptRequest)
	if !ok {
		return nil
	}
	uses := []keyUse{}
	src, ok := ciphertextKey(r.GetCiphertext())
	if ok {
		uses = append(uses, keyUse{name: src, n: 1})
	}
	if dst := r.GetDestinationKey(); dst != "" && dst != src {
		uses = append(uses, keyUse{name: dst, n: 1})
	}
	return uses
}

// methodRules maps every RPC's full method name to its rule.
var methodRules = map[string]methodRule{
	tresorv1.KeyService_CreateKey_FullMethodName:           {action: "CreateKey", class: classAdmin, keys: createdKey},
	tresorv1.KeyService_GetKey_FullMethodName:              {action: "GetKey", class: classRead, keys: namedKey},
	tresorv1.KeyService_ListKeys_FullMethodName:            {action: "ListKeys", class: classRead},
	tresorv1.KeyService_UpdateKey_FullMethodName:           {action: "UpdateKey", class: classAdmin, keys: namedKey},
	tresorv1.KeyService_RotateKey_FullMethodName:           {action: "RotateKey", class: classAdmin, keys: namedKey},
	tresorv1.KeyService_DisableKey_FullMethodName:          {action: "DisableKey", class: classAdmin, keys: namedKey},
	tresorv1.KeyService_EnableKey_FullMethodName:           {action: "EnableKey", class: classAdmin, keys: namedKey},
	tresorv1.KeyService_ScheduleKeyDeletion_FullMethodName: {action: "ScheduleKeyDeletion", class: classAdmin, keys: namedKey},
	tresorv1.KeyService_CancelKeyDeletion_FullMethodName:   {action: "CancelKeyDeletion", class: classAdmin, keys: namedKey},

	tresorv1.AdminService_RotateRootKey_FullMethodName:      {action: "RotateRootKey", class: classAdmin},
	tresorv1.AdminService_GetRootKeyRotation_FullMethodName: {action: "GetRootKeyRotation", class: classRead},

	tresorv1.CryptoService_Encrypt_FullMethodName:                         {action: "Encrypt", class: classCrypto, keys: namedKey},
	tresorv1.CryptoService_Decrypt_FullMethodName:                         {action: "Decrypt", class: classCrypto, keys: decryptKey, budget: budgetDecrypt},
	tresorv1.CryptoService_ReEncrypt_FullMethodName:                       {action: "ReEncrypt", class: classCrypto, keys: reEncryptKeys},
	tresorv1.CryptoService_GenerateDataKey_FullMethodName:                 {action: "GenerateDataKey", class: classCrypto, keys: namedKey},
	tresorv1.CryptoService_GenerateDataKeyWithoutPlaintext_FullMethodName: {action: "GenerateDataKeyWithoutPlaintext", class: classCrypto, keys: namedKey},
	tresorv1.CryptoService_BatchEncrypt_FullMethodName:                    {action: "Encrypt", class: classCrypto, keys: batchEncryptKey},
	tresorv1.CryptoService_BatchDecrypt_FullMethodName:                    {action: "Decrypt", class: classCrypto, keys: batchDecryptKeys, budget: budgetDecrypt},

	healthpb.Health_Check_FullMethodName: {action: "CheckHealth", class: classHealth},
	healthpb.Health_Watch_FullMethodName: {action: "CheckHealth", class: classHealth},
	healthpb.Health_List_FullMethodName:  {action: "CheckHealth", class: classHealth},
}

// keyAttributes is the keyring call the chain needs to authorize a key.
type keyAttributes interface {
	KeyAttributes(ctx context.Context, name string) (envelope.KeyAttributes, error)
}
