package soak

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

const (
	testRootURI = "pkcs11:token=soak-0d13a860;object=root-2?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/tmp/soak/pin"
	testRootID  = "pkcs11:token=soak-0d13a860;object=root-2"
)

// fakeAdmin is the replicas' AdminService for root-key rotation: the
// RotateRootKey call numbered startAt (from 0; -1: none) starts a job to
// testRootID, whatever it answers; answers are the codes the calls
// answer (the last one repeats). The job is done after doneAfter
// GetRootKeyRotation calls.
type fakeAdmin struct {
	tresorv1.AdminServiceClient
	answers   []codes.Code
	startAt   int
	doneAfter int

	mu                sync.Mutex
	latest            *tresorv1.RootKeyRotation // nil: no job ever
	rotateCalls, gets int
	polls             int
}

func (f *fakeAdmin) RotateRootKey(_ context.Context, in *tresorv1.RotateRootKeyRequest, _ ...grpc.CallOption) (*tresorv1.RotateRootKeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.rotateCalls
	f.rotateCalls++
	if in.GetRootKeyUri() != testRootURI {
		return nil, status.Error(codes.InvalidArgument, "another URI")
	}
	if i == f.startAt {
		f.latest = &tresorv1.RootKeyRotation{Id: "rkr-new", FromRootKey: "pkcs11:token=soak-0d13a860;object=root-1", ToRootKey: testRootID,
			State: tresorv1.RootKeyRotationState_ROOT_KEY_ROTATION_STATE_RUNNING, Total: 8}
	}
	if c := f.answers[min(i, len(f.answers)-1)]; c != codes.OK {
		return nil, status.Error(c, c.String())
	}
	return &tresorv1.RotateRootKeyResponse{Rotation: proto.Clone(f.latest).(*tresorv1.RootKeyRotation)}, nil
}

func (f *fakeAdmin) GetRootKeyRotation(context.Context, *tresorv1.GetRootKeyRotationRequest, ...grpc.CallOption) (*tresorv1.GetRootKeyRotationResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	if f.latest == nil {
		return nil, status.Error(codes.NotFound, "no root-key rotation")
	}
	if f.latest.GetId() == "rkr-new" {
		if f.polls >= f.doneAfter {
			f.latest.State, f.latest.Rewrapped = tresorv1.RootKeyRotationState_ROOT_KEY_ROTATION_STATE_DONE, f.latest.Total
		}
		f.polls++
	}
	return &tresorv1.GetRootKeyRotationResponse{Rotation: proto.Clone(f.latest).(*tresorv1.RootKeyRotation)}, nil
}

// TestRotateRootKeyTo: a rotation whose start was answered, or whose
// answer was lost so that the retry was refused, is waited for; a refusal
// for another rotation or another reason fails the fault.
func TestRotateRootKeyTo(t *testing.T) {
	running := &tresorv1.RootKeyRotation{Id: "rkr-other", ToRootKey: "pkcs11:token=soak-0d13a860;object=root-9",
		State: tresorv1.RootKeyRotationState_ROOT_KEY_ROTATION_STATE_RUNNING}
	tests := []struct {
		name      string
		answers   []codes.Code
		startAt   int
		doneAfter int
		latest    *tresorv1.RootKeyRotation
		wantErr   string // "": the job rkr-new is waited for
		wantGets  int    // at least this many GetRootKeyRotation calls
	}{
		{"answered", []codes.Code{codes.OK}, 0, 2, nil, "", 3},
		{"answered after an outage", []codes.Code{codes.Unavailable, codes.OK}, 1, 2, nil, "", 3},
		{"answer lost, the retry refused while the job runs", []codes.Code{codes.DeadlineExceeded, codes.FailedPrecondition}, 0, 2, nil, "", 3},
		{"answer lost, the retry refused once the job is done", []codes.Code{codes.DeadlineExceeded, codes.InvalidArgument}, 0, 0, nil, "", 2},
		{"refused: another rotation runs", []codes.Code{codes.FailedPrecondition}, -1, 0, running, "the latest job, rkr-other, is to another root key", 1},
		{"refused: no job at all", []codes.Code{codes.InvalidArgument}, -1, 0, nil, "NotFound", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeAdmin{answers: tt.answers, startAt: tt.startAt, doneAfter: tt.doneAfter, latest: tt.latest}
			h := &harness{opts: Options{Log: io.Discard}, admin: []stubs{{admin: f}, {admin: f}}}
			detail, err := h.rotateRootKeyTo(context.Background(), testRootURI, "root-1 to root-2")
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("rotateRootKeyTo() = %v, want the job waited for", err)
			case tt.wantErr == "" && !strings.Contains(detail, "job rkr-new re-wrapped 8 of 8 keysets from root-1 to root-2"):
				t.Errorf("rotateRootKeyTo() = %q, want the job rkr-new done", detail)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("rotateRootKeyTo() = %q, %v; want an error with %q", detail, err, tt.wantErr)
			}
			if f.gets < tt.wantGets {
				t.Errorf("%d GetRootKeyRotation calls, want at least %d", f.gets, tt.wantGets)
			}
		})
	}
}

func TestSameRootKey(t *testing.T) {
	tests := []struct {
		name, id, uri string
		want          bool
	}{
		{"same token and object", testRootID, testRootURI, true},
		{"the id names a CKA_ID", testRootID + ";id=%01%02", testRootURI, true},
		{"percent-encoded alike", "pkcs11:token=soak%2D1;object=root-2", "pkcs11:token=soak-1;object=root%2D2?pin-source=/p", true},
		{"another object", "pkcs11:token=soak-0d13a860;object=root-1", testRootURI, false},
		{"another token", "pkcs11:token=soak-ffffffff;object=root-2", testRootURI, false},
		{"no object", "pkcs11:token=soak-0d13a860", "pkcs11:token=soak-0d13a860", false},
		{"not pkcs11", "aws-kms:arn:aws:kms:eu-west-1:1:key/root-2", testRootURI, false},
		{"empty", "", testRootURI, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameRootKey(tt.id, tt.uri); got != tt.want {
				t.Errorf("sameRootKey(%q, %q) = %v, want %v", tt.id, tt.uri, got, tt.want)
			}
		})
	}
}
