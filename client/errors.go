package client

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors, matched with errors.Is.
//
// Every error a Client method returns for a failed call is an *Error that
// keeps its gRPC status (for status.FromError) and matches exactly one of
// the code sentinels ErrInvalidArgument to ErrInternal, the one for its
// code (OUT_OF_RANGE matches ErrInvalidArgument, codes without a sentinel
// of their own ErrInternal). The one exception is the server's opaque
// decryption failure, an INVALID_ARGUMENT "decryption failed": it matches
// both ErrDecryptionFailed and ErrInvalidArgument.
//
// Local decryption (Encryptor.Decrypt and DecryptStream) returns exactly
// ErrDecryptionFailed, and nothing else, for anything that does not open,
// including a data key tresor refuses to unwrap as not decrypting (its
// INVALID_ARGUMENT or NOT_FOUND); other failures to unwrap (PERMISSION_DENIED,
// UNAVAILABLE, ...) keep their *Error. A context that ends while a local
// operation waits (for a data key another caller is fetching, between
// stream chunks) gives an error matching ErrCanceled or
// ErrDeadlineExceeded and the context's own error, not an *Error.
//
// ErrInvalidStruct and ErrSchemaMismatch are the SDK's own, from the
// struct helpers (ProtectStruct, RevealStruct, StructSchema); they never
// come from the server and match no code sentinel.
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
	// message or stream, a message or stream of another key or key
	// context than the Encryptor's, or bytes that are not a message at
	// all. It never says which.
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
