package server

import (
	"context"
	"log/slog"
	"slices"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// keyService implements tresor.v1.KeyService over a Keyring.
type keyService struct {
	tresorv1.UnimplementedKeyServiceServer
	ring   *envelope.Keyring
	logger *slog.Logger
}

func (s *keyService) CreateKey(ctx context.Context, req *tresorv1.CreateKeyRequest) (*tresorv1.Key, error) {
	k, err := s.ring.CreateKey(ctx, envelope.KeySpec{
		Name:                req.GetKeyId(),
		Type:                keyTypeFromProto(req.GetType()),
		RotationPeriod:      req.GetRotationPeriod().AsDuration(),
		Labels:              req.GetLabels(),
		UsageLimit:          req.GetUsageLimit(),
		RetireAfter:         req.GetRetireAfter().AsDuration(),
		RetireAfterVersions: req.GetRetireAfterVersions(),
	})
	return s.reply(ctx, k, err)
}

// GetKey is the one method that shows each version's uses: they cost a
// store read of their own.
func (s *keyService) GetKey(ctx context.Context, req *tresorv1.GetKeyRequest) (*tresorv1.Key, error) {
	k, err := s.ring.GetKey(ctx, req.GetKey())
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	uses, err := s.ring.Uses(ctx, req.GetKey())
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	pk := keyToProto(k)
	for _, v := range pk.Versions {
		v.Uses = uses[v.GetVersion()]
	}
	return pk, nil
}

func (s *keyService) ListKeys(ctx context.Context, req *tresorv1.ListKeysRequest) (*tresorv1.ListKeysResponse, error) {
	keys, next, err := s.ring.ListKeys(ctx, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	// The caller sees the keys whose metadata it may read (GetKey), no
	// others: a page may hold fewer keys than asked for, and the next page
	// token still moves on.
	visible := visibleKeys(ctx)
	resp := &tresorv1.ListKeysResponse{Keys: make([]*tresorv1.Key, 0, len(keys)), NextPageToken: next}
	for _, k := range keys {
		if visible(envelope.AttributesOf(k.Name, k.Labels)) {
			resp.Keys = append(resp.Keys, keyToProto(k))
		}
	}
	return resp, nil
}

func (s *keyService) UpdateKey(ctx context.Context, req *tresorv1.UpdateKeyRequest) (*tresorv1.Key, error) {
	var u envelope.KeyUpdate
	paths := req.GetUpdateMask().GetPaths()
	if slices.Contains(paths, "rotation_period") {
		d := req.GetRotationPeriod().AsDuration()
		u.RotationPeriod = &d
	}
	if slices.Contains(paths, "min_decryption_version") {
		v := req.GetMinDecryptionVersion()
		u.MinDecryptionVersion = &v
	}
	if slices.Contains(paths, "labels") {
		u.Labels = req.GetLabels()
		if u.Labels == nil {
			u.Labels = map[string]string{}
		}
	}
	if slices.Contains(paths, "usage_limit") {
		v := req.GetUsageLimit()
		u.UsageLimit = &v
	}
	if slices.Contains(paths, "retire_after") {
		d := req.GetRetireAfter().AsDuration()
		u.RetireAfter = &d
	}
	if slices.Contains(paths, "retire_after_versions") {
		v := req.GetRetireAfterVersions()
		u.RetireAfterVersions = &v
	}
	k, err := s.ring.UpdateKey(ctx, req.GetKey(), u)
	return s.reply(ctx, k, err)
}

func (s *keyService) RotateKey(ctx context.Context, req *tresorv1.RotateKeyRequest) (*tresorv1.Key, error) {
	k, err := s.ring.RotateKey(ctx, req.GetKey())
	return s.reply(ctx, k, err)
}

func (s *keyService) DisableKey(ctx context.Context, req *tresorv1.DisableKeyRequest) (*tresorv1.Key, error) {
	k, err := s.ring.DisableKey(ctx, req.GetKey())
	return s.reply(ctx, k, err)
}

func (s *keyService) EnableKey(ctx context.Context, req *tresorv1.EnableKeyRequest) (*tresorv1.Key, error) {
	k, err := s.ring.EnableKey(ctx, req.GetKey())
	return s.reply(ctx, k, err)
}

func (s *keyService) ScheduleKeyDeletion(ctx context.Context, req *tresorv1.ScheduleKeyDeletionRequest) (*tresorv1.Key, error) {
	k, err := s.ring.ScheduleKeyDeletion(ctx, req.GetKey(), req.GetWaitingPeriod().AsDuration())
	return s.reply(ctx, k, err)
}

func (s *keyService) CancelKeyDeletion(ctx context.Context, req *tresorv1.CancelKeyDeletionRequest) (*tresorv1.Key, error) {
	k, err := s.ring.CancelKeyDeletion(ctx, req.GetKey())
	return s.reply(ctx, k, err)
}

func (s *keyService) reply(ctx context.Context, k store.Key, err error) (*tresorv1.Key, error) {
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	return keyToProto(k), nil
}

func keyTypeFromProto(t tresorv1.KeyType) store.KeyType {
	switch t {
	case tresorv1.KeyType_KEY_TYPE_AES256_GCM:
		return store.KeyTypeAES256GCM
	case tresorv1.KeyType_KEY_TYPE_AES256_SIV:
		return store.KeyTypeAES256SIV
	case tresorv1.KeyType_KEY_TYPE_HMAC_SHA256:
		return store.KeyTypeHMACSHA256
	case tresorv1.KeyType_KEY_TYPE_FF1_AES256:
		return store.KeyTypeFF1AES256
	default:
		return store.KeyTypeUnspecified
	}
}

func keyTypeToProto(t store.KeyType) tresorv1.KeyType {
	switch t {
	case store.KeyTypeAES256GCM:
		return tresorv1.KeyType_KEY_TYPE_AES256_GCM
	case store.KeyTypeAES256SIV:
		return tresorv1.KeyType_KEY_TYPE_AES256_SIV
	case store.KeyTypeHMACSHA256:
		return tresorv1.KeyType_KEY_TYPE_HMAC_SHA256
	case store.KeyTypeFF1AES256:
		return tresorv1.KeyType_KEY_TYPE_FF1_AES256
	default:
		return tresorv1.KeyType_KEY_TYPE_UNSPECIFIED
	}
}

func keyStateToProto(s store.KeyState) tresorv1.KeyState {
	switch s {
	case store.KeyStateEnabled:
		return tresorv1.KeyState_KEY_STATE_ENABLED
	case store.KeyStateDisabled:
		return tresorv1.KeyState_KEY_STATE_DISABLED
	case store.KeyStateDeletionScheduled:
		return tresorv1.KeyState_KEY_STATE_DELETION_SCHEDULED
	case store.KeyStateDestroyed:
		return tresorv1.KeyState_KEY_STATE_DESTROYED
	default:
		return tresorv1.KeyState_KEY_STATE_UNSPECIFIED
	}
}

func keyToProto(k store.Key) *tresorv1.Key {
	pk := &tresorv1.Key{
		Name:                 "keys/" + k.Name,
		Type:                 keyTypeToProto(k.Type),
		State:                keyStateToProto(k.State),
		PrimaryVersion:       k.PrimaryVersion,
		MinDecryptionVersion: k.MinDecryptionVersion,
		Labels:               k.Labels,
		CreateTime:           timestamppb.New(k.CreateTime),
		UpdateTime:           timestamppb.New(k.UpdateTime),
		UsageLimit:           k.UsageLimit,
		RetireAfterVersions:  k.RetireAfterVersions,
	}
	if k.RotationPeriod > 0 {
		pk.RotationPeriod = durationpb.New(k.RotationPeriod)
	}
	if k.RetireAfter > 0 {
		pk.RetireAfter = durationpb.New(k.RetireAfter)
	}
	if !k.DeletionTime.IsZero() {
		pk.DeletionTime = timestamppb.New(k.DeletionTime)
	}
	if !k.DestroyTime.IsZero() {
		pk.DestroyTime = timestamppb.New(k.DestroyTime)
	}
	if t, ok := envelope.NextRotationTime(k); ok {
		pk.NextRotationTime = timestamppb.New(t)
	}
	for _, v := range k.Versions {
		pk.Versions = append(pk.Versions, &tresorv1.KeyVersion{Version: v.Number, CreateTime: timestamppb.New(v.CreateTime)})
	}
	return pk
}
