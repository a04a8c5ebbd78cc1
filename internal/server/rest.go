package server

import (
	"context"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/tresorkms/tresor/internal/authn"
)

// restRequest follows one REST request through the handler: whether it
// reached the chain (which audits it) and, when it did not, what the
// handler knows of it.
type restRequest struct {
	reached   atomic.Bool
	start     time.Time
	source    netip.Addr
	principal *authn.Principal
}

type restRequestKey struct{}

// statusWriter remembers the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// httpCodes maps the statuses the REST handler and the gateway answer
// refusals with to the gRPC codes the audit log records.
var httpCodes = map[int]codes.Code{
	http.StatusBadRequest:            codes.InvalidArgument,
	http.StatusUnauthorized:          codes.Unauthenticated,
	http.StatusForbidden:             codes.PermissionDenied,
	http.StatusNotFound:              codes.NotFound,
	http.StatusMethodNotAllowed:      codes.Unimplemented,
	http.StatusRequestEntityTooLarge: codes.ResourceExhausted,
	http.StatusTooManyRequests:       codes.ResourceExhausted,
	http.StatusNotImplemented:        codes.Unimplemented,
	http.StatusServiceUnavailable:    codes.Unavailable,
}

// observeREST logs and audits a REST request that never reached the chain.
// Its method is the HTTP method and path; it has no action and no
// decision. An audit failure cannot fail the request further (it was
// refused already); it is logged.
func (c *chain) observeREST(r *http.Request, rr *restRequest, status int) {
	code, ok := httpCodes[status]
	if !ok {
		code = codes.Unknown
		if status < 400 {
			code = codes.OK
		}
	}
	ctx := r.Context()
	path := r.URL.Path
	if len(path) > 256 {
		path = path[:256]
	}
	rec := CallRecord{
		Method: "REST " + r.Method + " " + path,
		// The caller's X-Request-Id, as the chain would take it.
		RequestID: requestIDOrNew(r.Header.Get("X-Request-Id")),
		Principal: rr.principal,
		Source:    rr.source,
		Code:      code.String(),
		Start:     rr.start,
		Duration:  c.now().Sub(rr.start),
	}
	c.metrics.observe("REST", code, rec.Duration)
	if c.observer != nil {
		if err := c.observer.ObserveCall(context.WithoutCancel(ctx), &rec); err != nil {
			c.logger.ErrorContext(ctx, "refused REST request not audited", "request_id", rec.RequestID, "err", err)
		}
	}
}
