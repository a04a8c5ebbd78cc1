package client

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// retried are the methods safe to repeat after an UNAVAILABLE answer.
// Such an answer does not prove that the server did nothing: it runs a
// call and then withholds the result when the audit log cannot record it,
// and a connection may drop after the server acted. So only calls whose
// repetition changes no state are retried: reads, and the cryptographic
// calls, whose repetition costs only usage (rate limits, decrypt budgets,
// audit events). Every other method (CreateKey, UpdateKey, RotateKey,
// DisableKey, EnableKey, ScheduleKeyDeletion, CancelKeyDeletion,
// RotateRootKey, PutSchema, and any method this list does not know) is
// tried once.
var retried = map[string]bool{
	tresorv1.KeyService_GetKey_FullMethodName:                             true,
	tresorv1.KeyService_ListKeys_FullMethodName:                           true,
	tresorv1.CryptoService_Encrypt_FullMethodName:                         true,
	tresorv1.CryptoService_Decrypt_FullMethodName:                         true,
	tresorv1.CryptoService_ReEncrypt_FullMethodName:                       true,
	tresorv1.CryptoService_GenerateDataKey_FullMethodName:                 true,
	tresorv1.CryptoService_GenerateDataKeyWithoutPlaintext_FullMethodName: true,
	tresorv1.CryptoService_BatchEncrypt_FullMethodName:                    true,
	tresorv1.CryptoService_BatchDecrypt_FullMethodName:                    true,
	tresorv1.AdminService_GetRootKeyRotation_FullMethodName:               true,
	tresorv1.AdminService_VerifyAudit_FullMethodName:                      true,
	tresorv1.AdminService_QueryAudit_FullMethodName:                       true,
	tresorv1.FieldService_GetSchema_FullMethodName:                        true,
	tresorv1.FieldService_ListSchemas_FullMethodName:                      true,
	tresorv1.FieldService_ListSchemaVersions_FullMethodName:               true,
	tresorv1.FieldService_ProtectDocument_FullMethodName:                  true,
	tresorv1.FieldService_RevealDocument_FullMethodName:                   true,
}

// retrier is the Client's unary interceptor: it retries UNAVAILABLE with
// backoff for the methods in retried, replaces a refused token once, and
// turns errors into *Error.
type retrier struct {
	policy RetryPolicy
	tokens *tokenCache // nil without tokens
	sleep  func(context.Context, time.Duration) error
}

func (r *retrier) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	refreshed := false
	backoff := r.policy.InitialBackoff
	for attempt := 1; ; attempt++ {
		var tok string
		if r.tokens != nil {
			tok = r.tokens.cached()
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil {
			return nil
		}
		switch status.Code(err) {
		case codes.Unauthenticated:
			// The token may have been revoked or have expired early (clock
			// skew): one more try with a new one. The call did nothing.
			if r.tokens == nil || refreshed {
				return callError(method, err)
			}
			refreshed = true
			r.tokens.invalidate(tok)
			attempt--
			continue
		case codes.Unavailable:
			if attempt >= r.policy.MaxAttempts || !retried[method] {
				return callError(method, err)
			}
		default:
			return callError(method, err)
		}
		// Full jitter: a random wait up to the backoff, so that callers
		// refused together do not come back together.
		wait := rand.N(backoff) + 1
		if d, ok := ctx.Deadline(); ok && time.Until(d) < wait {
			return callError(method, err)
		}
		if serr := r.sleep(ctx, wait); serr != nil {
			return callError(method, err)
		}
		backoff = min(2*backoff, r.policy.MaxBackoff)
	}
}

func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// streamErrors turns a stream's errors into *Error, as the unary
// interceptor does for calls. Streams are not retried: part of one may
// have been processed.
func streamErrors(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, callError(method, err)
	}
	return &errorStream{ClientStream: s, method: method}, nil
}

type errorStream struct {
	grpc.ClientStream
	method string
}

func (s *errorStream) SendMsg(m any) error { return s.wrap(s.ClientStream.SendMsg(m)) }
func (s *errorStream) RecvMsg(m any) error { return s.wrap(s.ClientStream.RecvMsg(m)) }
func (s *errorStream) CloseSend() error    { return s.wrap(s.ClientStream.CloseSend()) }

func (s *errorStream) wrap(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return callError(s.method, err)
}
