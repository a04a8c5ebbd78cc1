package server

import (
	"context"
	"log/slog"

	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/envelope"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// cryptoService implements tresor.v1.CryptoService over a Keyring.
type cryptoService struct {
	tresorv1.UnimplementedCryptoServiceServer
	ring   *envelope.Keyring
	logger *slog.Logger
}

func (s *cryptoService) Encrypt(ctx context.Context, req *tresorv1.EncryptRequest) (*tresorv1.EncryptResponse, error) {
	ct, ref, err := s.ring.Encrypt(ctx, req.GetKey(), req.GetPlaintext(), req.GetAssociatedData())
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	noteKeyUse(ctx, ref)
	return &tresorv1.EncryptResponse{Ciphertext: envelope.FormatCiphertext(ct), KeyVersion: ref.Version}, nil
}

func (s *cryptoService) decrypt(ctx context.Context, ciphertext string, aad []byte) ([]byte, envelope.KeyRef, error) {
	ct, err := envelope.DecodeCiphertext(ciphertext)
	if err != nil {
		return nil, envelope.KeyRef{}, err
	}
	return s.ring.Decrypt(ctx, ct, aad)
}

func (s *cryptoService) Decrypt(ctx context.Context, req *tresorv1.DecryptRequest) (*tresorv1.DecryptResponse, error) {
	pt, ref, err := s.decrypt(ctx, req.GetCiphertext(), req.GetAssociatedData())
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	noteKeyUse(ctx, ref)
	return &tresorv1.DecryptResponse{Plaintext: pt, Key: ref.Name, KeyVersion: ref.Version}, nil
}

func (s *cryptoService) ReEncrypt(ctx context.Context, req *tresorv1.ReEncryptRequest) (*tresorv1.ReEncryptResponse, error) {
	ct, err := envelope.DecodeCiphertext(req.GetCiphertext())
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	out, dst, src, err := s.ring.ReEncrypt(ctx, ct, req.GetAssociatedData(), req.GetDestinationKey())
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	return &tresorv1.ReEncryptResponse{
		Ciphertext:       envelope.FormatCiphertext(out),
		Key:              dst.Name,
		KeyVersion:       dst.Version,
		SourceKey:        src.Name,
		SourceKeyVersion: src.Version,
	}, nil
}

func (s *cryptoService) GenerateDataKey(ctx context.Context, req *tresorv1.GenerateDataKeyRequest) (*tresorv1.GenerateDataKeyResponse, error) {
	dk, err := s.ring.GenerateDataKey(ctx, req.GetKey(), req.GetAssociatedData())
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	noteKeyUse(ctx, dk.Key)
	return &tresorv1.GenerateDataKeyResponse{Plaintext: dk.Plaintext, Ciphertext: envelope.FormatCiphertext(dk.Ciphertext), KeyVersion: dk.Key.Version}, nil
}

func (s *cryptoService) GenerateDataKeyWithoutPlaintext(ctx context.Context, req *tresorv1.GenerateDataKeyWithoutPlaintextRequest) (*tresorv1.GenerateDataKeyWithoutPlaintextResponse, error) {
	dk, err := s.ring.GenerateDataKeyWithoutPlaintext(ctx, req.GetKey(), req.GetAssociatedData())
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	noteKeyUse(ctx, dk.Key)
	return &tresorv1.GenerateDataKeyWithoutPlaintextResponse{Ciphertext: envelope.FormatCiphertext(dk.Ciphertext), KeyVersion: dk.Key.Version}, nil
}

// BatchEncrypt fails as a whole when the key cannot be used at all; else each
// item gets its own result.
func (s *cryptoService) BatchEncrypt(ctx context.Context, req *tresorv1.BatchEncryptRequest) (*tresorv1.BatchEncryptResponse, error) {
	if err := s.ring.CheckUsable(ctx, req.GetKey()); err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	resp := &tresorv1.BatchEncryptResponse{Results: make([]*tresorv1.BatchEncryptResult, len(req.GetItems()))}
	cl := callFrom(ctx)
	for i, item := range req.GetItems() {
		ct, ref, err := s.ring.Encrypt(ctx, req.GetKey(), item.GetPlaintext(), item.GetAssociatedData())
		if err != nil {
			resp.Results[i] = &tresorv1.BatchEncryptResult{Result: &tresorv1.BatchEncryptResult_Error{Error: status.Convert(toStatus(ctx, s.logger, err)).Proto()}}
			continue
		}
		cl.noteKeyVersion(ref.Name, ref.Version)
		resp.Results[i] = &tresorv1.BatchEncryptResult{Result: &tresorv1.BatchEncryptResult_Encrypted{Encrypted: &tresorv1.EncryptedItem{Ciphertext: envelope.FormatCiphertext(ct), KeyVersion: ref.Version}}}
	}
	return resp, nil
}

func (s *cryptoService) BatchDecrypt(ctx context.Context, req *tresorv1.BatchDecryptRequest) (*tresorv1.BatchDecryptResponse, error) {
	resp := &tresorv1.BatchDecryptResponse{Results: make([]*tresorv1.BatchDecryptResult, len(req.GetItems()))}
	cl := callFrom(ctx)
	for i, item := range req.GetItems() {
		pt, ref, err := s.decrypt(ctx, item.GetCiphertext(), item.GetAssociatedData())
		if err != nil {
			resp.Results[i] = &tresorv1.BatchDecryptResult{Result: &tresorv1.BatchDecryptResult_Error{Error: status.Convert(toStatus(ctx, s.logger, err)).Proto()}}
			continue
		}
		cl.noteKeyVersion(ref.Name, ref.Version)
		resp.Results[i] = &tresorv1.BatchDecryptResult{Result: &tresorv1.BatchDecryptResult_Decrypted{Decrypted: &tresorv1.DecryptedItem{Plaintext: pt, Key: ref.Name, KeyVersion: ref.Version}}}
	}
	return resp, nil
}
