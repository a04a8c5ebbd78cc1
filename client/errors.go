package client

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors. Every error a Client method returns for a failed call
// matches exactly one of the code sentinels with errors.Is (and
// ErrDecryptionFailed as well, for a failed decryption), and keeps its gRPC
// status for status.FromError.
var (
	ErrInvalidArgument    = errors.New("tresor: invalid argument")
	ErrNotFound           = errors.New("tresor: not found")
	ErrAlreadyExists      = errors.New("tresor: already exists")
	ErrPermissionDenied   = errors.New("tresor: permission denied")
	ErrUnauthenticated    = errors.New("tresor: unauthenticated")
	ErrResourceExhausted  = errors.New("tresor: rate limit or budget exhausted")
	ErrFailedPrecondition = errors.New("tresor: failed precondition")
	ErrAborted            = errors.New("tresor: aborted")
	ErrUnavailable        = errors.New("tresor: unavailable")
	ErrDeadlineExceeded   = errors.New("tresor: deadline exceeded")
	ErrCanceled           = errors.New("tresor: canceled")
	ErrUnimplemented      = errors.New("tresor: unimplemented")
	ErrInternal           = errors.New("tresor: internal error")

	// ErrDecryptionFailed is every failed decryption, remote or local: a
	// wrong key, wrong associated data, a tampered, truncated or reordered
	// message or stream, or bytes that are not a message at all. It never
	// says which.
	ErrDecryptionFailed = errors.New("tresor: decryption failed")
)

// serverDecryptMessage is the whole message of the server's one opaque
// decryption error (an INVALID_ARGUMENT).
const serverDecryptMessage = "decryption failed"

// Error is a failed call: the method, the gRPC code and the server's
// message (which never holds plaintext or key material).
type Error struct {
	Method  string
	Code    codes.Code
	Message string
	status  *status.Status
}

func (e *Error) Error() string {
	return fmt.Sprintf("tresor: %s: %s: %s", e.Method, e.Code, e.Message)
}

// GRPCStatus keeps the server's status (and its details) reachable through
// status.FromError.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Is matches the sentinel for the error's code, and ErrDecryptionFailed for
// the server's opaque decryption error.
func (e *Error) Is(target error) bool {
	if target == ErrDecryptionFailed {
		return e.Code == codes.InvalidArgument && e.Message == serverDecryptMessage
	}
	return target == codeSentinel(e.Code)
}

func codeSentinel(c codes.Code) error {
	switch c {
	case codes.InvalidArgument, codes.OutOfRange:
		return ErrInvalidArgument
	case codes.NotFound:
		return ErrNotFound
	case codes.AlreadyExists:
		return ErrAlreadyExists
	case codes.PermissionDenied:
		return ErrPermissionDenied
	case codes.Unauthenticated:
		return ErrUnauthenticated
	case codes.ResourceExhausted:
		return ErrResourceExhausted
	case codes.FailedPrecondition:
		return ErrFailedPrecondition
	case codes.Aborted:
		return ErrAborted
	case codes.Unavailable:
		return ErrUnavailable
	case codes.DeadlineExceeded:
		return ErrDeadlineExceeded
	case codes.Canceled:
		return ErrCanceled
	case codes.Unimplemented:
		return ErrUnimplemented
	default:
		return ErrInternal
	}
}

// callError turns what gRPC returned for method into an *Error; nil stays
// nil.
func callError(method string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	st := status.Convert(err)
	return &Error{Method: method, Code: st.Code(), Message: st.Message(), status: st}
}
