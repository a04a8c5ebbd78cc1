package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"buf.build/go/protovalidate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// This file assembles the one interceptor chain every call passes, gRPC or
// REST (the gateway calls the services in process through the same chain,
// see inProcessConn). In order:
//
//	recover      a panic becomes Internal; the stack is logged, never returned
//	request id   taken from x-request-id or made, returned in the header
//	log          one line per call: method, code, duration; never payloads
//	validate     protovalidate rules of the request message -> InvalidArgument
//
// Later stages (authentication, authorization, rate limits, audit) slot in here.

// requestIDHeader is the metadata key (and HTTP header) carrying the request id.
const requestIDHeader = "x-request-id"

type requestIDKey struct{}

// RequestID returns the request id the chain gave this call, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// chain is the server's interceptor chain.
type chain struct {
	logger    *slog.Logger
	validator protovalidate.Validator
}

func newChain(logger *slog.Logger) (*chain, error) {
	v, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("server: protovalidate: %w", err)
	}
	return &chain{logger: logger, validator: v}, nil
}

// unary runs the whole chain around handler.
func (c *chain) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	ctx = withRequestID(ctx)
	defer func() {
		if r := recover(); r != nil {
			c.logger.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "request_id", RequestID(ctx), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
		c.logger.LogAttrs(ctx, slog.LevelInfo, "call",
			slog.String("method", info.FullMethod),
			slog.String("request_id", RequestID(ctx)),
			slog.String("code", status.Code(err).String()),
			slog.Duration("duration", time.Since(start)))
	}()
	if m, ok := req.(proto.Message); ok {
		if verr := c.validator.Validate(m); verr != nil {
			return nil, status.Error(codes.InvalidArgument, verr.Error())
		}
	}
	return handler(ctx, req)
}

func withRequestID(ctx context.Context) context.Context {
	var id string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(requestIDHeader); len(v) > 0 && len(v[0]) <= 128 {
			id = v[0]
		}
	}
	if id == "" {
		var b [12]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	// A failure to set the header (no transport stream, as in tests that
	// call a handler directly) is harmless: the id is still logged.
	_ = grpc.SetHeader(ctx, metadata.Pairs(requestIDHeader, id))
	return context.WithValue(ctx, requestIDKey{}, id)
}
