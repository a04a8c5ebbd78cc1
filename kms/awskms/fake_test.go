//go:build !noawskms

package awskms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"slices"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	sdkkms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
)

const (
	fakeARN   = "arn:aws:kms:eu-west-2:111122223333:key/0f0e0d0c-0b0a-4909-8807-060504030201"
	fakeAlias = "alias/fake"
)

// fakeKMS behaves like KMS for one symmetric key: a real AES-256-GCM master
// key seals data keys, bound to the key ARN and the encryption context.
// Hooks inject faults and tamper with answers.
type fakeKMS struct {
	master cipher.AEAD

	mu       sync.Mutex
	metadata types.KeyMetadata
	// fail, if set, may return an error for an operation instead of calling KMS.
	fail func(op string) error
	// tamper, if set, may change an answer.
	tamper func(op string, out any)
	// last request of each kind
	lastGenerate *sdkkms.GenerateDataKeyInput
	lastDecrypt  *sdkkms.DecryptInput
	aliases      map[string]string
	created      []string
	scheduled    []string
}

var _ kmsAPI = (*fakeKMS)(nil)
var _ creatorAPI = (*fakeKMS)(nil)

func newFakeKMS() *fakeKMS {
	key := make([]byte, 32)
	rand.Read(key)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	return &fakeKMS{
		master: aead,
		metadata: types.KeyMetadata{
			Arn: aws.String(fakeARN), Enabled: true, KeyState: types.KeyStateEnabled,
			KeySpec: types.KeySpecSymmetricDefault, KeyUsage: types.KeyUsageTypeEncryptDecrypt,
		},
		aliases: map[string]string{fakeAlias: fakeARN},
	}
}

func (f *fakeKMS) hook(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail(op)
	}
	return nil
}

func (f *fakeKMS) answer(op string, out any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tamper != nil {
		f.tamper(op, out)
	}
}

// resolve maps a key id, ARN or alias to the key ARN, or "".
func (f *fakeKMS) resolve(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case id == fakeARN || id == arnKeyID(fakeARN):
		return fakeARN
	case f.aliases[id] != "":
		return f.aliases[id]
	case slices.Contains(f.created, id):
		return id
	}
	return ""
}

// bind is the additional data of a sealed data key: the key ARN and the
// encryption context, length-prefixed, keys sorted.
func bind(arn string, ec map[string]string) []byte {
	var b []byte
	put := func(s string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	put(arn)
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range ec {
			if !yield(k) {
				return
			}
		}
	}) {
		put(k)
		put(ec[k])
	}
	return b
}

func (f *fakeKMS) DescribeKey(ctx context.Context, in *sdkkms.DescribeKeyInput, _ ...func(*sdkkms.Options)) (*sdkkms.DescribeKeyOutput, error) {
	if err := f.hook("DescribeKey"); err != nil {
		return nil, err
	}
	arn := f.resolve(aws.ToString(in.KeyId))
	if arn == "" {
		return nil, &types.NotFoundException{Message: aws.String("no such key")}
	}
	f.mu.Lock()
	md := f.metadata
	f.mu.Unlock()
	md.Arn = aws.String(arn)
	out := &sdkkms.DescribeKeyOutput{KeyMetadata: &md}
	f.answer("DescribeKey", out)
	return out, nil
}

func (f *fakeKMS) GenerateDataKey(ctx context.Context, in *sdkkms.GenerateDataKeyInput, _ ...func(*sdkkms.Options)) (*sdkkms.GenerateDataKeyOutput, error) {
	f.mu.Lock()
	f.lastGenerate = in
	f.mu.Unlock()
	if err := f.hook("GenerateDataKey"); err != nil {
		return nil, err
	}
	arn := f.resolve(aws.ToString(in.KeyId))
	if arn == "" {
		return nil, &types.NotFoundException{}
	}
	if in.KeySpec != types.DataKeySpecAes256 {
		return nil, &smithy.GenericAPIError{Code: "ValidationException", Fault: smithy.FaultClient}
	}
	dk := make([]byte, 32)
	rand.Read(dk)
	nonce := make([]byte, 12)
	rand.Read(nonce)
	blob := f.master.Seal(append([]byte("fake"), nonce...), nonce, dk, bind(arn, in.EncryptionContext))
	out := &sdkkms.GenerateDataKeyOutput{KeyId: aws.String(arn), Plaintext: dk, CiphertextBlob: blob}
	f.answer("GenerateDataKey", out)
	return out, nil
}

func (f *fakeKMS) Decrypt(ctx context.Context, in *sdkkms.DecryptInput, _ ...func(*sdkkms.Options)) (*sdkkms.DecryptOutput, error) {
	f.mu.Lock()
	f.lastDecrypt = in
	f.mu.Unlock()
	if err := f.hook("Decrypt"); err != nil {
		return nil, err
	}
	arn := f.resolve(aws.ToString(in.KeyId))
	if arn == "" {
		return nil, &types.NotFoundException{}
	}
	blob := in.CiphertextBlob
	if len(blob) < 4+12 || string(blob[:4]) != "fake" {
		return nil, &types.InvalidCiphertextException{}
	}
	dk, err := f.master.Open(nil, blob[4:16], blob[16:], bind(arn, in.EncryptionContext))
	if err != nil {
		return nil, &types.InvalidCiphertextException{Message: aws.String("the ciphertext is invalid")}
	}
	out := &sdkkms.DecryptOutput{KeyId: aws.String(arn), Plaintext: dk}
	f.answer("Decrypt", out)
	return out, nil
}

func (f *fakeKMS) CreateKey(ctx context.Context, in *sdkkms.CreateKeyInput, _ ...func(*sdkkms.Options)) (*sdkkms.CreateKeyOutput, error) {
	if err := f.hook("CreateKey"); err != nil {
		return nil, err
	}
	id := make([]byte, 16)
	rand.Read(id)
	arn := "arn:aws:kms:eu-west-2:111122223333:key/" + formatUUID(id)
	f.mu.Lock()
	f.created = append(f.created, arn)
	f.mu.Unlock()
	return &sdkkms.CreateKeyOutput{KeyMetadata: &types.KeyMetadata{Arn: aws.String(arn), KeySpec: in.KeySpec, KeyUsage: in.KeyUsage}}, nil
}

func (f *fakeKMS) CreateAlias(ctx context.Context, in *sdkkms.CreateAliasInput, _ ...func(*sdkkms.Options)) (*sdkkms.CreateAliasOutput, error) {
	if err := f.hook("CreateAlias"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.aliases[aws.ToString(in.AliasName)] != "" {
		return nil, &types.AlreadyExistsException{}
	}
	f.aliases[aws.ToString(in.AliasName)] = aws.ToString(in.TargetKeyId)
	return &sdkkms.CreateAliasOutput{}, nil
}

func (f *fakeKMS) ScheduleKeyDeletion(ctx context.Context, in *sdkkms.ScheduleKeyDeletionInput, _ ...func(*sdkkms.Options)) (*sdkkms.ScheduleKeyDeletionOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scheduled = append(f.scheduled, aws.ToString(in.KeyId))
	return &sdkkms.ScheduleKeyDeletionOutput{}, nil
}

func formatUUID(b []byte) string {
	const hex = "0123456789abcdef"
	var s []byte
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			s = append(s, '-')
		}
		s = append(s, hex[c>>4], hex[c&15])
	}
	return string(s)
}
