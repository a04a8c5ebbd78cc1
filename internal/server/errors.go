package server

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/kms"
)

// errDecryptMessage is the whole message of every failed decryption.
const errDecryptMessage = "decryption failed"

// toStatus is the one map from domain errors to gRPC status codes. Every
// service method returns its errors through it; REST gets the same codes as
// HTTP statuses through the gateway. Messages of domain errors name keys and
// limits, never plaintext or key material; anything unexpected is logged in
// full and returned as a bare Internal.
func toStatus(ctx context.Context, logger *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, envelope.ErrDecrypt):
		return status.Error(codes.InvalidArgument, errDecryptMessage)
	case errors.Is(err, envelope.ErrInvalidArgument),
		errors.Is(err, envelope.ErrInvalidKeyName),
		errors.Is(err, envelope.ErrKeyTypeMismatch):
		return status.Error(codes.InvalidArgument, publicMessage(err))
	case errors.Is(err, envelope.ErrKeyNotFound):
		return status.Error(codes.NotFound, publicMessage(err))
	case errors.Is(err, envelope.ErrKeyExists):
		return status.Error(codes.AlreadyExists, publicMessage(err))
	case errors.Is(err, envelope.ErrKeyDisabled),
		errors.Is(err, envelope.ErrVersionNotAllowed),
		errors.Is(err, envelope.ErrKeyDeletionScheduled),
		errors.Is(err, envelope.ErrKeyDestroyed),
		errors.Is(err, envelope.ErrKeyNotScheduled),
		errors.Is(err, envelope.ErrNotRotatable):
		return status.Error(codes.FailedPrecondition, publicMessage(err))
	case errors.Is(err, envelope.ErrConflict):
		return status.Error(codes.Aborted, publicMessage(err))
	case errors.Is(err, kms.ErrUnavailable):
		logger.ErrorContext(ctx, "root key unavailable", "err", err)
		return status.Error(codes.Unavailable, "root key provider unavailable; retry later")
	case errors.Is(err, envelope.ErrStoreUnavailable):
		logger.ErrorContext(ctx, "key store unavailable", "err", err)
		return status.Error(codes.Unavailable, "key store unavailable; retry later")
	case errors.Is(err, envelope.ErrUsageLimitReached):
		// The causes with a code of their own (a disabled key, a root key
		// or store outage, a conflict) matched above.
		logger.ErrorContext(ctx, "usage limit reached and rotation failed", "err", err)
		return status.Error(codes.Unavailable, "the key's version reached its usage limit and the key could not be rotated; retry later")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case errors.Is(err, envelope.ErrRootKeyNotHeld):
		// Debug, not Warn: while this replica refuses a rotation, every
		// call under such a key lands here; the rotator logs why, once.
		logger.DebugContext(ctx, "keyset wrapped by a root key this replica has not opened yet", "err", err)
		return status.Error(codes.Unavailable, "the root key is being rotated and this replica has not followed yet; retry later (if this persists, this replica refused the rotation: see its log)")
	case errors.Is(err, envelope.ErrKeysetUnreadable):
		logger.ErrorContext(ctx, "stored keyset unreadable", "err", err)
		return status.Error(codes.Internal, "key material unavailable")
	default:
		logger.ErrorContext(ctx, "internal error", "err", err)
		return status.Error(codes.Internal, "internal error")
	}
}

// publicMessage is a domain error's message for the caller, without the
// package prefix ("envelope: ") that only helps in logs.
func publicMessage(err error) string {
	return strings.TrimPrefix(err.Error(), "envelope: ")
}

// restErrorHandler is the gateway's error handler: the default one, plus
// Retry-After on 429 (from the status's RetryInfo) and a Bearer challenge
// on 401 (RFC 6750).
func restErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.ResourceExhausted:
			for _, d := range st.Details() {
				if ri, ok := d.(*errdetails.RetryInfo); ok {
					secs := int64(math.Ceil(ri.GetRetryDelay().AsDuration().Seconds()))
					if secs < 1 {
						secs = 1
					}
					w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
				}
			}
		case codes.Unauthenticated:
			// The default handler would put the status message in the
			// challenge; RFC 6750 wants a Bearer challenge.
			w = bearerChallenge{w}
		}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// bearerChallenge sets a Bearer challenge as the response's headers are
// written.
type bearerChallenge struct{ http.ResponseWriter }

func (b bearerChallenge) WriteHeader(code int) {
	b.Header().Set("WWW-Authenticate", `Bearer realm="tresor"`)
	b.ResponseWriter.WriteHeader(code)
}
