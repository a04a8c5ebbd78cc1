package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
	"github.com/tresorkms/tresor/rotation"
)

// RootKeyRotations starts root-key rotations and reports them; the
// AdminService serves it. rotation.RootKeyRotator is the real one. Its
// errors are those of rotation.RootKeyRotator: rotation.ErrInvalidRootKey,
// rotation.ErrRotationRunning, rotation.ErrNoRotation, or an outage
// (kms.ErrUnavailable, store.ErrUnavailable).
type RootKeyRotations interface {
	// Start starts re-wrapping every keyset to the root key at uri.
	Start(ctx context.Context, uri string) (store.RootKeyRotation, error)
	// Status returns the latest rotation.
	Status(ctx context.Context) (store.RootKeyRotation, error)
}

// adminService implements tresor.v1.AdminService.
type adminService struct {
	tresorv1.UnimplementedAdminServiceServer
	rotations RootKeyRotations // nil: root-key rotation is not offered
	audit     AuditReader      // nil: audit verification is not offered
	logger    *slog.Logger
}

func (s *adminService) RotateRootKey(ctx context.Context, req *tresorv1.RotateRootKeyRequest) (*tresorv1.RotateRootKeyResponse, error) {
	if s.rotations == nil {
		return s.UnimplementedAdminServiceServer.RotateRootKey(ctx, req)
	}
	job, err := s.rotations.Start(ctx, req.GetRootKeyUri())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	s.logger.InfoContext(ctx, "root-key rotation requested", "job", job.ID, "from_root_key", job.FromID, "to_root_key", job.ToID)
	return &tresorv1.RotateRootKeyResponse{Rotation: rotationToProto(job)}, nil
}

func (s *adminService) GetRootKeyRotation(ctx context.Context, req *tresorv1.GetRootKeyRotationRequest) (*tresorv1.GetRootKeyRotationResponse, error) {
	if s.rotations == nil {
		return s.UnimplementedAdminServiceServer.GetRootKeyRotation(ctx, req)
	}
	job, err := s.rotations.Status(ctx)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &tresorv1.GetRootKeyRotationResponse{Rotation: rotationToProto(job)}, nil
}

// status maps the errors of root-key rotation; the rest goes to toStatus.
// Messages name root key ids and job ids, never a URI's pin-source or any
// key material.
func (s *adminService) status(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, rotation.ErrInvalidRootKey), errors.Is(err, kms.ErrInvalidURI):
		s.logger.WarnContext(ctx, "root-key rotation refused", "err", err)
		return status.Error(codes.InvalidArgument, rotationMessage(err))
	case errors.Is(err, rotation.ErrRotationRunning):
		return status.Error(codes.FailedPrecondition, rotationMessage(err))
	case errors.Is(err, rotation.ErrUnendorsedRotation):
		// The store's latest job is not one this replica trusts: an
		// operator must look before anything rotates again.
		s.logger.ErrorContext(ctx, "root-key rotation refused: the latest job in the key store is not endorsed by a trusted root key", "err", err)
		return status.Error(codes.FailedPrecondition, "the latest root-key rotation in the key store is not endorsed by a root key this server trusts; see the server log")
	case errors.Is(err, rotation.ErrNoRotation):
		return status.Error(codes.NotFound, rotationMessage(err))
	case errors.Is(err, kms.ErrUnavailable), errors.Is(err, store.ErrUnavailable):
		s.logger.ErrorContext(ctx, "root-key rotation: provider or store unavailable", "err", err)
		return status.Error(codes.Unavailable, "the new root key or the key store is unavailable; retry later")
	}
	return toStatus(ctx, s.logger, err)
}

// rotationMessage is err's message without the package prefix that only
// helps in logs.
func rotationMessage(err error) string {
	return strings.TrimPrefix(err.Error(), "rotation: ")
}

func rotationToProto(j store.RootKeyRotation) *tresorv1.RootKeyRotation {
	p := &tresorv1.RootKeyRotation{
		Id:          j.ID,
		FromRootKey: j.FromID,
		ToRootKey:   j.ToID,
		Total:       j.Total,
		Rewrapped:   j.Rewrapped,
	}
	switch j.State {
	case store.RotationRunning:
		p.State = tresorv1.RootKeyRotationState_ROOT_KEY_ROTATION_STATE_RUNNING
	case store.RotationDone:
		p.State = tresorv1.RootKeyRotationState_ROOT_KEY_ROTATION_STATE_DONE
	}
	if !j.StartTime.IsZero() {
		p.StartTime = timestamppb.New(j.StartTime)
	}
	if !j.UpdateTime.IsZero() {
		p.UpdateTime = timestamppb.New(j.UpdateTime)
	}
	if !j.EndTime.IsZero() {
		p.EndTime = timestamppb.New(j.EndTime)
	}
	return p
}

// AuditReader verifies and queries the audit log held in the key store;
// the AdminService serves it. NewAuditReader is the implementation.
type AuditReader interface {
	// VerifyAudit checks the whole log. A tampered log is a report with
	// OK false, not an error; errors are outages.
	VerifyAudit(ctx context.Context) (AuditReport, error)
	// QueryAudit returns the events matching q, oldest first, each as its
	// canonical line in the log.
	QueryAudit(ctx context.Context, q AuditQuery) ([]string, error)
}

// AuditReport is the outcome of VerifyAudit.
type AuditReport struct {
	OK                                     bool
	Events, Chains, Checkpoints, Uncovered int64
	// BadChain, BadSeq and Problem name the first bad event or checkpoint.
	BadChain string
	BadSeq   uint64
	Problem  string
	// Unclosed are the chains, other than the newest, that do not end with
	// a final checkpoint; Anchors counts the anchors checked.
	Unclosed []string
	Anchors  int64
}

// AuditQuery filters QueryAudit; empty fields match everything.
type AuditQuery struct {
	Principal, Action, Key string
	From, To               time.Time
	Limit                  int
}

func (s *adminService) VerifyAudit(ctx context.Context, req *tresorv1.VerifyAuditRequest) (*tresorv1.VerifyAuditResponse, error) {
	if s.audit == nil {
		return s.UnimplementedAdminServiceServer.VerifyAudit(ctx, req)
	}
	r, err := s.audit.VerifyAudit(ctx)
	if err != nil {
		s.logger.ErrorContext(ctx, "audit log unreadable", "err", err)
		return nil, status.Error(codes.Unavailable, "audit log unavailable; retry later")
	}
	return &tresorv1.VerifyAuditResponse{Ok: r.OK, Events: r.Events, Chains: r.Chains, Checkpoints: r.Checkpoints,
		UncoveredEvents: r.Uncovered, FirstBadChain: r.BadChain, FirstBadSeq: r.BadSeq, Problem: r.Problem,
		UnclosedChains: r.Unclosed, Anchors: r.Anchors}, nil
}

func (s *adminService) QueryAudit(ctx context.Context, req *tresorv1.QueryAuditRequest) (*tresorv1.QueryAuditResponse, error) {
	if s.audit == nil {
		return s.UnimplementedAdminServiceServer.QueryAudit(ctx, req)
	}
	q := AuditQuery{Principal: req.GetPrincipal(), Action: req.GetAction(), Key: req.GetKey(), Limit: int(req.GetPageSize())}
	if req.GetStartTime() != nil {
		q.From = req.GetStartTime().AsTime()
	}
	if req.GetEndTime() != nil {
		q.To = req.GetEndTime().AsTime()
	}
	if q.Limit == 0 {
		q.Limit = 100
	}
	events, err := s.audit.QueryAudit(ctx, q)
	if err != nil {
		s.logger.ErrorContext(ctx, "audit log unreadable", "err", err)
		return nil, status.Error(codes.Unavailable, "audit log unavailable; retry later")
	}
	return &tresorv1.QueryAuditResponse{Events: events}, nil
}
