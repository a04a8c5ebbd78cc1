package server

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// inProcessConn is a grpc.ClientConnInterface that calls registered service
// implementations in this process through the server's interceptor chain.
// The REST gateway uses it, so that a REST call passes exactly the chain a
// gRPC call passes (grpc-gateway's RegisterXHandlerServer would bypass it),
// without a loopback network hop.
type inProcessConn struct {
	methods     map[string]inProcessMethod
	interceptor grpc.UnaryServerInterceptor
}

type inProcessMethod struct {
	impl    any
	handler grpc.MethodHandler
}

func newInProcessConn(interceptor grpc.UnaryServerInterceptor) *inProcessConn {
	return &inProcessConn{methods: make(map[string]inProcessMethod), interceptor: interceptor}
}

// register adds every unary method of a service.
func (c *inProcessConn) register(desc *grpc.ServiceDesc, impl any) {
	for _, m := range desc.Methods {
		c.methods["/"+desc.ServiceName+"/"+m.MethodName] = inProcessMethod{impl: impl, handler: m.Handler}
	}
}

// Invoke runs method with args through the interceptor chain and copies the
// response into reply. Outgoing metadata (the gateway's view of the HTTP
// headers) becomes the handler's incoming metadata; header metadata set by
// the handler reaches the grpc.Header call option.
func (c *inProcessConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	m, ok := c.methods[method]
	if !ok {
		return status.Errorf(codes.Unimplemented, "method %s not implemented", method)
	}
	in, ok := args.(proto.Message)
	if !ok {
		return status.Error(codes.Internal, "in-process call with a non-proto request")
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	ctx = metadata.NewIncomingContext(ctx, md)
	stream := &inProcessStream{method: method}
	ctx = grpc.NewContextWithServerTransportStream(ctx, stream)
	dec := func(v any) error {
		dst, ok := v.(proto.Message)
		if !ok {
			return fmt.Errorf("in-process call: %T is not a proto message", v)
		}
		proto.Merge(dst, in)
		return nil
	}
	resp, err := m.handler(m.impl, ctx, dec, c.interceptor)
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.HeaderCallOption:
			*o.HeaderAddr = stream.header
		case grpc.TrailerCallOption:
			*o.TrailerAddr = stream.trailer
		}
	}
	if err != nil {
		return err
	}
	out, ok := reply.(proto.Message)
	if !ok {
		return status.Error(codes.Internal, "in-process call with a non-proto reply")
	}
	proto.Merge(out, resp.(proto.Message))
	return nil
}

// NewStream is not supported: the API has no streaming methods yet.
func (c *inProcessConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unimplemented, "streaming is not supported in process")
}

// inProcessStream collects the header and trailer a handler sets.
type inProcessStream struct {
	method          string
	header, trailer metadata.MD
}

func (s *inProcessStream) Method() string { return s.method }

func (s *inProcessStream) SetHeader(md metadata.MD) error {
	s.header = metadata.Join(s.header, md)
	return nil
}

func (s *inProcessStream) SendHeader(md metadata.MD) error { return s.SetHeader(md) }

func (s *inProcessStream) SetTrailer(md metadata.MD) error {
	s.trailer = metadata.Join(s.trailer, md)
	return nil
}
