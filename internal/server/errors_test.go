package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/rotation"
)

// TestToStatusLifecycleErrors: the errors of a key's lifecycle map to their
// codes, and a usage-limit failure keeps the code of its cause.
func TestToStatusLifecycleErrors(t *testing.T) {
	limit := func(cause error) error {
		return fmt.Errorf("%w: key \"k\" version 1 ...: %w", envelope.ErrUsageLimitReached, cause)
	}
	tests := []struct {
		name    string
		err     error
		want    codes.Code
		wantMsg string
	}{
		{"scheduled", fmt.Errorf("%w: k", envelope.ErrKeyDeletionScheduled), codes.FailedPrecondition, "scheduled for deletion"},
		{"destroyed", fmt.Errorf("%w: k", envelope.ErrKeyDestroyed), codes.FailedPrecondition, "destroyed"},
		{"not scheduled", fmt.Errorf("%w: k", envelope.ErrKeyNotScheduled), codes.FailedPrecondition, "not scheduled"},
		{"store down", fmt.Errorf("%w: %w", envelope.ErrStoreUnavailable, store.ErrUnavailable), codes.Unavailable, "key store unavailable"},
		{"limit, root key down", limit(kms.ErrUnavailable), codes.Unavailable, "root key provider unavailable"},
		{"limit, key disabled meanwhile", limit(envelope.ErrKeyDisabled), codes.FailedPrecondition, "disabled"},
		{"limit, conflicts", limit(envelope.ErrConflict), codes.Aborted, ""},
		{"limit, anything else", limit(errors.New("boom")), codes.Unavailable, "usage limit"},
		{"root key not followed yet", fmt.Errorf("%w: %w: key \"k\"", envelope.ErrKeysetUnreadable, envelope.ErrRootKeyNotHeld), codes.Unavailable, "retry later"},
		{"keyset unreadable", fmt.Errorf("%w: key \"k\": bad tag", envelope.ErrKeysetUnreadable), codes.Internal, "key material unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := toStatus(context.Background(), slog.New(slog.DiscardHandler), tt.err)
			if status.Code(err) != tt.want || !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
				t.Errorf("toStatus(%v) = %v, want %v containing %q", tt.err, err, tt.want, tt.wantMsg)
			}
		})
	}
}

// TestAdminStatus: root-key rotation errors map to their codes.
func TestAdminStatus(t *testing.T) {
	s := &adminService{logger: slog.New(slog.DiscardHandler)}
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"forged latest job", fmt.Errorf("rotation: %w: job rkr-1 has no endorsement", rotation.ErrUnendorsedRotation), codes.FailedPrecondition},
		{"running", fmt.Errorf("%w: job rkr-1", rotation.ErrRotationRunning), codes.FailedPrecondition},
		{"bad uri", fmt.Errorf("%w: empty URI", rotation.ErrInvalidRootKey), codes.InvalidArgument},
		{"provider down", fmt.Errorf("open: %w", kms.ErrUnavailable), codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(s.status(context.Background(), tt.err)); got != tt.want {
				t.Errorf("status(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
