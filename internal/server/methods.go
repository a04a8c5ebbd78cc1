package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/fields"
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

// budgetSearchable is the budget action counted for the searchable values
// (deterministic ciphertexts, FF1 tokens, blind indexes) ProtectDocument
// returns.
const budgetSearchable = "searchable"

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
	// authorized against the service itself. An error refuses the call
	// before any decision (a ciphertext that names no key).
	keys func(req any) ([]keyUse, error)
	// budget is the budget action that uses marked spends count against,
	// or "".
	budget string
	// useActions are the actions decided instead of action, when every key
	// use names its own (ReEncrypt); the schema must declare them.
	useActions []string
	// schema names the classification schema a FieldService call acts on:
	// the call is decided on that Schema resource. An error refuses the
	// call before any decision.
	schema func(req any) (string, error)
	// perDocument marks the document calls (ProtectDocument, RevealDocument
	// and their streams): the chain authenticates, validates and
	// rate-limits them, and the handler decides each document through
	// documentGate, once it knows the schema: ProtectDocument on every key
	// the schema uses, RevealDocument or RevealMasked on every field it
	// would reveal.
	perDocument bool
}

// keyUse is a key a request touches and on how many items.
type keyUse struct {
	name string
	n    int64
	// attrs is set when the request itself describes the key (CreateKey,
	// the new labels of UpdateKey); else the chain reads the key's
	// attributes.
	attrs *envelope.KeyAttributes
	// action, when set, is the policy action decided for this key instead
	// of the rule's (ReEncrypt: ReEncryptFrom and ReEncryptTo).
	action string
	// spends is set when this use counts against the rule's budget.
	spends bool
	// existing asks the chain to decide the stored key too, when there is
	// one (CreateKey: a caller may not learn that a name it may not touch
	// is taken).
	existing bool
}

// maxKeysPerCall bounds the distinct keys one call may touch, so that a
// batch cannot make the chain read hundreds of keys before it refuses.
const maxKeysPerCall = 16

// errUnreadableCiphertext refuses a call whose ciphertexts name no key,
// with the opaque decryption error, before any decision.
var errUnreadableCiphertext = errors.New("unreadable ciphertext")

// errTooManyKeys refuses a batch that touches more than maxKeysPerCall keys.
var errTooManyKeys = fmt.Errorf("a call may touch at most %d distinct keys", maxKeysPerCall)

type keyNamed interface{ GetKey() string }

func namedKey(req any) ([]keyUse, error) {
	if r, ok := req.(keyNamed); ok {
		return []keyUse{{name: r.GetKey(), n: 1}}, nil
	}
	return nil, nil
}

func batchEncryptKey(req any) ([]keyUse, error) {
	r, ok := req.(*tresorv1.BatchEncryptRequest)
	if !ok {
		return nil, nil
	}
	return []keyUse{{name: r.GetKey(), n: int64(len(r.GetItems()))}}, nil
}

func createdKey(req any) ([]keyUse, error) {
	r, ok := req.(*tresorv1.CreateKeyRequest)
	if !ok {
		return nil, nil
	}
	a := envelope.AttributesOf(r.GetKeyId(), r.GetLabels())
	return []keyUse{{name: r.GetKeyId(), n: 1, attrs: &a, existing: true}}, nil
}

// updatedKey is the key as it is and, when the update replaces its labels,
// the key as it will be: a caller must be allowed both, so a policy can
// refuse a new owner or a lower sensitivity.
func updatedKey(req any) ([]keyUse, error) {
	r, ok := req.(*tresorv1.UpdateKeyRequest)
	if !ok {
		return nil, nil
	}
	uses := []keyUse{{name: r.GetKey(), n: 1}}
	if slices.Contains(r.GetUpdateMask().GetPaths(), "labels") {
		a := envelope.AttributesOf(r.GetKey(), r.GetLabels())
		uses = append(uses, keyUse{name: r.GetKey(), n: 1, attrs: &a})
	}
	return uses, nil
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

func decryptKey(req any) ([]keyUse, error) {
	r, ok := req.(*tresorv1.DecryptRequest)
	if !ok {
		return nil, nil
	}
	if name, ok := ciphertextKey(r.GetCiphertext()); ok {
		return []keyUse{{name: name, n: 1, spends: true}}, nil
	}
	return nil, errUnreadableCiphertext
}

// batchDecryptKeys is every key the batch's ciphertexts name. Unreadable
// items fail one by one in the handler; a batch with no readable item is
// refused whole.
func batchDecryptKeys(req any) ([]keyUse, error) {
	r, ok := req.(*tresorv1.BatchDecryptRequest)
	if !ok {
		return nil, nil
	}
	var uses []keyUse
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
			if len(uses) == maxKeysPerCall {
				return nil, errTooManyKeys
			}
			uses = append(uses, keyUse{name: name, n: 1, spends: true})
		}
	}
	if len(uses) == 0 {
		return nil, errUnreadableCiphertext
	}
	return uses, nil
}

// reEncryptKeys is the source key, decided as ReEncryptFrom (a reveal: its
// plaintext moves, though it is never returned) and counted against the
// decrypt budget, and the destination key (the source key itself when none
// is named), decided as ReEncryptTo.
func reEncryptKeys(req any) ([]keyUse, error) {
	r, ok := req.(*tresorv1.ReEncryptRequest)
	if !ok {
		return nil, nil
	}
	src, ok := ciphertextKey(r.GetCiphertext())
	if !ok {
		return nil, errUnreadableCiphertext
	}
	dst := r.GetDestinationKey()
	if dst == "" {
		dst = src
	}
	return []keyUse{
		{name: src, n: 1, action: actionReEncryptFrom, spends: true},
		{name: dst, n: 1, action: actionReEncryptTo},
	}, nil
}

// The actions ReEncrypt is decided as.
const (
	actionReEncryptFrom = "ReEncryptFrom"
	actionReEncryptTo   = "ReEncryptTo"
)

// methodRules maps every RPC's full method name to its rule.
var methodRules = map[string]methodRule{
	tresorv1.KeyService_CreateKey_FullMethodName:           {action: "CreateKey", class: classAdmin, keys: createdKey},
	tresorv1.KeyService_GetKey_FullMethodName:              {action: "GetKey", class: classRead, keys: namedKey},
	tresorv1.KeyService_ListKeys_FullMethodName:            {action: "ListKeys", class: classRead},
	tresorv1.KeyService_UpdateKey_FullMethodName:           {action: "UpdateKey", class: classAdmin, keys: updatedKey},
	tresorv1.KeyService_RotateKey_FullMethodName:           {action: "RotateKey", class: classAdmin, keys: namedKey},
	tresorv1.KeyService_DisableKey_FullMethodName:          {action: "DisableKey", class: classAdmin, keys: namedKey},
	tresorv1.KeyService_EnableKey_FullMethodName:           {action: "EnableKey", class: classAdmin, keys: namedKey},
	tresorv1.KeyService_ScheduleKeyDeletion_FullMethodName: {action: "ScheduleKeyDeletion", class: classAdmin, keys: namedKey},
	tresorv1.KeyService_CancelKeyDeletion_FullMethodName:   {action: "CancelKeyDeletion", class: classAdmin, keys: namedKey},

	tresorv1.AdminService_RotateRootKey_FullMethodName:      {action: "RotateRootKey", class: classAdmin},
	tresorv1.AdminService_GetRootKeyRotation_FullMethodName: {action: "GetRootKeyRotation", class: classRead},

	tresorv1.CryptoService_Encrypt_FullMethodName:                         {action: "Encrypt", class: classCrypto, keys: namedKey},
	tresorv1.CryptoService_Decrypt_FullMethodName:                         {action: "Decrypt", class: classCrypto, keys: decryptKey, budget: budgetDecrypt},
	tresorv1.CryptoService_ReEncrypt_FullMethodName:                       {action: "ReEncrypt", class: classCrypto, keys: reEncryptKeys, budget: budgetDecrypt, useActions: []string{actionReEncryptFrom, actionReEncryptTo}},
	tresorv1.CryptoService_GenerateDataKey_FullMethodName:                 {action: "GenerateDataKey", class: classCrypto, keys: namedKey},
	tresorv1.CryptoService_GenerateDataKeyWithoutPlaintext_FullMethodName: {action: "GenerateDataKeyWithoutPlaintext", class: classCrypto, keys: namedKey},
	tresorv1.CryptoService_BatchEncrypt_FullMethodName:                    {action: "Encrypt", class: classCrypto, keys: batchEncryptKey},
	tresorv1.CryptoService_BatchDecrypt_FullMethodName:                    {action: "Decrypt", class: classCrypto, keys: batchDecryptKeys, budget: budgetDecrypt},

	tresorv1.AdminService_VerifyAudit_FullMethodName: {action: "VerifyAudit", class: classAdmin},
	tresorv1.AdminService_QueryAudit_FullMethodName:  {action: "QueryAudit", class: classAdmin},

	tresorv1.FieldService_PutSchema_FullMethodName:          {action: "PutSchema", class: classAdmin, schema: putSchemaName, keys: putSchemaKeys},
	tresorv1.FieldService_GetSchema_FullMethodName:          {action: "GetSchema", class: classRead, schema: namedSchema},
	tresorv1.FieldService_ListSchemaVersions_FullMethodName: {action: "ListSchemaVersions", class: classRead, schema: namedSchema},
	tresorv1.FieldService_ListSchemas_FullMethodName:        {action: "ListSchemas", class: classRead},
	tresorv1.FieldService_ProtectDocument_FullMethodName:    {action: "ProtectDocument", class: classCrypto, perDocument: true},
	tresorv1.FieldService_ProtectDocuments_FullMethodName:   {action: "ProtectDocument", class: classCrypto, perDocument: true},
	tresorv1.FieldService_RevealDocument_FullMethodName:     {action: "RevealDocument", class: classCrypto, perDocument: true, budget: budgetDecrypt},
	tresorv1.FieldService_RevealDocuments_FullMethodName:    {action: "RevealDocument", class: classCrypto, perDocument: true, budget: budgetDecrypt},

	healthpb.Health_Check_FullMethodName: {action: "CheckHealth", class: classHealth},
	healthpb.Health_Watch_FullMethodName: {action: "CheckHealth", class: classHealth},
	healthpb.Health_List_FullMethodName:  {action: "CheckHealth", class: classHealth},
}

type schemaNamed interface{ GetSchema() string }

// namedSchema is the schema a request names.
func namedSchema(req any) (string, error) {
	if r, ok := req.(schemaNamed); ok {
		return r.GetSchema(), nil
	}
	return "", nil
}

// putSchemaName is the name inside the definition PutSchema stores: a
// definition that does not parse is refused before any decision (its
// message names the problem, and the definition holds no secret).
func putSchemaName(req any) (string, error) {
	r, ok := req.(*tresorv1.PutSchemaRequest)
	if !ok {
		return "", nil
	}
	s, err := fields.ParseSchema([]byte(r.GetDefinition()))
	if err != nil {
		return "", err
	}
	return s.Name(), nil
}

// putSchemaKeys are the keys the definition PutSchema stores names: the
// call is decided on each of them too.
func putSchemaKeys(req any) ([]keyUse, error) {
	r, ok := req.(*tresorv1.PutSchemaRequest)
	if !ok {
		return nil, nil
	}
	s, err := fields.ParseSchema([]byte(r.GetDefinition()))
	if err != nil {
		return nil, err
	}
	return schemaKeyUses(s), nil
}

// schemaKeyUses are the keys a classification schema uses, once each.
func schemaKeyUses(s *fields.Schema) []keyUse {
	uses := make([]keyUse, 0, len(s.Keys()))
	for _, k := range s.Keys() {
		uses = append(uses, keyUse{name: k.Name, n: 1})
	}
	return uses
}

type withAAD interface{ GetAssociatedData() []byte }

// errReservedAAD refuses caller associated data that field protection
// reserves for itself.
var errReservedAAD = fmt.Errorf("associated data may not begin with %q: field protection reserves it", fields.ReservedAADPrefix)

// checkAAD refuses a request whose associated data (or one of whose
// batch items') begins with fields.ReservedAADPrefix.
func checkAAD(req any) error {
	reserved := func(m withAAD) bool { return bytes.HasPrefix(m.GetAssociatedData(), []byte(fields.ReservedAADPrefix)) }
	switch r := req.(type) {
	case *tresorv1.BatchEncryptRequest:
		for _, it := range r.GetItems() {
			if reserved(it) {
				return errReservedAAD
			}
		}
	case *tresorv1.BatchDecryptRequest:
		for _, it := range r.GetItems() {
			if reserved(it) {
				return errReservedAAD
			}
		}
	case withAAD:
		if reserved(r) {
			return errReservedAAD
		}
	}
	return nil
}

// keyAttributes is the keyring call the chain needs to authorize a key.
type keyAttributes interface {
	KeyAttributes(ctx context.Context, name string) (envelope.KeyAttributes, error)
}
