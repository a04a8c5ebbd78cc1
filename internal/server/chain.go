package server

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"strconv"
	"time"

	"buf.build/go/protovalidate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/monitor"
	"github.com/tresorkms/tresor/internal/policy"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// This file assembles the one interceptor chain every call passes, gRPC or
// REST (the gateway calls the services in process through the same chain,
// see inProcessConn), unary or streaming. In order:
//
//	recover       a panic becomes Internal; the stack is logged, never returned
//	request id    taken from x-request-id or made, returned in the header
//	metrics       calls, codes and latency per method (never payloads)
//	authenticate  mTLS peer certificate + bearer token -> authn.Principal
//	validate      protovalidate rules of the request message -> InvalidArgument
//	authorize     Cedar policy per key touched; a method without a rule is denied
//	rate limit    per-principal token bucket per action class, a global bucket,
//	              then decrypt budgets counted in the key store
//	handler
//	observe       the post-call hook (CallObserver): the audit log's input
//
// The log line and the hook run for every call, refused ones included.

// Request metadata (HTTP headers through the gateway) the chain reads.
const (
	requestIDHeader = "x-request-id"
	// TransactionValueHeader declares the value of the transaction a call
	// serves, a non-negative decimal such as "12500.00". Policies see it
	// as context.transaction_value.
	TransactionValueHeader = "x-tresor-transaction-value"
	// PurposeHeader declares why the caller makes the call, such as
	// "chargeback-review". Policies see it as context.purpose.
	PurposeHeader = "x-tresor-purpose"
)

// serviceResource is the resource of calls that touch no key.
const serviceResource = "tresor"

// RequestID returns the request id the chain gave this call, or "".
func RequestID(ctx context.Context) string {
	if cl := callFrom(ctx); cl != nil {
		return cl.rec.RequestID
	}
	return ""
}

// Authenticator turns the caller's certificate and Authorization value into
// a principal. *authn.Authenticator is the implementation.
type Authenticator interface {
	Authenticate(ctx context.Context, cert *x509.Certificate, authorization string) (*authn.Principal, error)
}

// Authorizer decides a policy request. *policy.Reloading is the
// implementation.
type Authorizer interface {
	Decide(r policy.Request) policy.Decision
}

// RateLimiter admits calls per principal and action class.
// *limits.Limiter is the implementation.
type RateLimiter interface {
	Allow(principal, class string) (ok bool, retryAfter time.Duration)
}

// BudgetCounter counts uses of sensitive data against budgets.
// *limits.Budgets is the implementation.
type BudgetCounter interface {
	Consume(ctx context.Context, principal, action, tier string, n int64) (ok bool, retryAfter time.Duration, err error)
}

// CallObserver sees every call once it has ended, refused calls included:
// the post-call hook the audit log uses. It runs before the response is
// sent: when it returns an error, a call that had succeeded fails with
// UNAVAILABLE instead (the audit log fails closed), so no caller is given a
// result whose record was not written.
type CallObserver interface {
	ObserveCall(ctx context.Context, rec *CallRecord) error
}

// CallRecord describes a finished call. It never holds request or response
// payloads, tokens or key material.
type CallRecord struct {
	Method    string
	Action    string
	RequestID string
	// Principal is nil when authentication failed.
	Principal *authn.Principal
	Source    netip.Addr
	// Keys are the keys the call touched (or tried to).
	Keys []string
	// Sensitivity is the highest tier of the keys touched, "" if none.
	Sensitivity string
	// Decision is "allow", "deny" or "" when the call never reached
	// authorization; Policies are the policies that determined it.
	Decision string
	Policies []string
	// Code is the gRPC status code's name, such as "OK" or "PermissionDenied".
	Code     string
	Message  string
	Start    time.Time
	Duration time.Duration
	// KeyVersions are the key versions the call used, as "name:version".
	KeyVersions []string
	// Fields counts what a document call did to fields.
	Fields FieldCounts
	// Risk is the call's anomaly score (0 usual .. 100), and Response the
	// anomaly response applied to it ("" none, "log", "step_up",
	// "throttle", "block").
	Risk     int
	Response string
}

// FieldCounts counts the fields of the documents a call protected or
// revealed, by outcome, and what inspection found.
type FieldCounts struct {
	Protected, Revealed, Masked, Withheld, Redacted, Findings int
}

// chain is the server's interceptor chain.
type chain struct {
	logger    *slog.Logger
	validator protovalidate.Validator
	metrics   *metrics
	now       func() time.Time
	keys      keyAttributes

	// authn and authz are nil only for an Unprotected server.
	authn    Authenticator
	authz    Authorizer
	limiter  RateLimiter
	budgets  BudgetCounter
	observer CallObserver
	anomaly  AnomalyMonitor
	minRisk  int
}

// call is one call's state as it passes the chain.
type call struct {
	method    string
	start     time.Time
	principal *authn.Principal
	rec       CallRecord
	// allowed remembers the schema versions a document stream was allowed
	// to protect with.
	allowed map[schemaVersion]bool
	// screened is set once the anomaly monitor scored the call; observed
	// and active are what it learns from when the call went ahead.
	screened bool
	observed *monitor.Observation
	active   monitor.Response
	// used are the key versions the call used (in usedArr for the usual
	// one or two); rec.KeyVersions spells them only when a record is
	// handed to the observer.
	used    []envelope.KeyRef
	usedArr [2]envelope.KeyRef
}

// noteKeyVersion records a key version the call used (nothing for a nil
// call: a handler called outside the chain).
func (cl *call) noteKeyVersion(name string, version uint32) {
	if cl == nil || version == 0 {
		return
	}
	ref := envelope.KeyRef{Name: name, Version: version}
	if slices.Contains(cl.used, ref) {
		return
	}
	if cl.used == nil {
		cl.used = cl.usedArr[:0]
	}
	cl.used = append(cl.used, ref)
}

// record returns the call's record for the observer, its key versions
// spelled "name:version".
func (cl *call) record() *CallRecord {
	cl.rec.KeyVersions = cl.rec.KeyVersions[:0]
	for _, r := range cl.used {
		cl.rec.KeyVersions = append(cl.rec.KeyVersions, r.Name+":"+strconv.FormatUint(uint64(r.Version), 10))
	}
	return &cl.rec
}

// noteKeyUse records, on the call ctx belongs to, a key version it used.
func noteKeyUse(ctx context.Context, ref envelope.KeyRef) {
	callFrom(ctx).noteKeyVersion(ref.Name, ref.Version)
}

// unary runs the whole chain around a unary handler.
func (c *chain) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	ctx, cl := c.begin(ctx, info.FullMethod)
	defer func() {
		if r := recover(); r != nil {
			c.logger.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "request_id", cl.rec.RequestID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
		if err = c.end(ctx, cl, err); err != nil {
			resp = nil
		}
	}()
	if ctx, err = c.authenticate(ctx, cl); err != nil {
		return nil, err
	}
	if m, ok := req.(proto.Message); ok {
		if verr := c.validator.Validate(m); verr != nil {
			return nil, status.Error(codes.InvalidArgument, verr.Error())
		}
	}
	if err = checkAAD(req); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err = c.authorize(ctx, cl, req); err != nil {
		return nil, err
	}
	if info.FullMethod == tresorv1.KeyService_ListKeys_FullMethodName {
		if ctx, err = c.withVisibleKeys(ctx, cl); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// stream runs the chain around a streaming handler: authentication and
// authorization when the stream opens (streams touch no key), validation
// of every message received.
func (c *chain) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	ctx, cl := c.begin(ss.Context(), info.FullMethod)
	defer func() {
		if r := recover(); r != nil {
			c.logger.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "request_id", cl.rec.RequestID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
		err = c.end(ctx, cl, err)
	}()
	if ctx, err = c.authenticate(ctx, cl); err != nil {
		return err
	}
	if err = c.authorize(ctx, cl, nil); err != nil {
		return err
	}
	return handler(srv, &validatingStream{ServerStream: ss, ctx: ctx, validator: c.validator})
}

// validatingStream validates every message a streaming handler receives.
type validatingStream struct {
	grpc.ServerStream
	ctx       context.Context
	validator protovalidate.Validator
}

func (s *validatingStream) Context() context.Context { return s.ctx }

func (s *validatingStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if pm, ok := m.(proto.Message); ok {
		if err := s.validator.Validate(pm); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	return nil
}

// begin gives the call its request id and notes its start and source.
// The call's state is the one value it puts in ctx (RequestID and the
// document handlers read it there).
func (c *chain) begin(ctx context.Context, method string) (context.Context, *call) {
	now := c.now()
	cl := &call{method: method, start: now}
	// The action is known before authentication, so that a refused
	// caller's event names what it tried.
	cl.rec = CallRecord{Method: method, Action: methodRules[method].action, RequestID: requestID(ctx), Start: now}
	ctx = context.WithValue(ctx, callKey{}, cl)
	if r, ok := ctx.Value(restRequestKey{}).(*restRequest); ok {
		r.reached.Store(true)
	}
	if p, ok := peer.FromContext(ctx); ok {
		cl.rec.Source = addrOf(p.Addr)
	}
	return ctx, cl
}

// end logs the call, counts it and hands it to the observer. It returns
// the call's error, or UNAVAILABLE when the observer (the audit log) could
// not record a call that had succeeded.
func (c *chain) end(ctx context.Context, cl *call, err error) error {
	st := status.Convert(err)
	cl.rec.Duration = c.now().Sub(cl.start)
	cl.rec.Code = st.Code().String()
	if err != nil {
		cl.rec.Message = st.Message()
	}
	c.metrics.observe(cl.method, st.Code(), cl.rec.Duration)
	if st.Code() == codes.OK {
		// Only calls that succeeded teach the baseline: a refused caller
		// cannot train it.
		c.learn(cl)
	}
	// Room for every attribute below: one allocation, no regrowth.
	attrs := make([]slog.Attr, 0, 7)
	attrs = append(attrs,
		slog.String("method", cl.method),
		slog.String("request_id", cl.rec.RequestID),
		slog.String("code", cl.rec.Code),
		slog.Duration("duration", cl.rec.Duration),
	)
	if cl.principal != nil {
		attrs = append(attrs, slog.String("workload", cl.principal.Workload))
		if cl.principal.Subject != "" {
			attrs = append(attrs, slog.String("subject", cl.principal.Subject))
		}
	}
	if cl.rec.Decision == "deny" {
		attrs = append(attrs, slog.Any("policies", cl.rec.Policies))
	}
	c.logger.LogAttrs(ctx, slog.LevelInfo, "call", attrs...)
	if c.observer != nil {
		if oerr := c.observer.ObserveCall(ctx, cl.record()); oerr != nil {
			c.logger.ErrorContext(ctx, "call not audited", "method", cl.method, "request_id", cl.rec.RequestID, "err", oerr)
			if err == nil {
				return status.Error(codes.Unavailable, "audit log unavailable: the call's result was withheld; retry later")
			}
		}
	}
	return err
}

// authenticate establishes the caller's principal and puts it in ctx.
func (c *chain) authenticate(ctx context.Context, cl *call) (context.Context, error) {
	cert := peerCertificate(ctx)
	var p *authn.Principal
	if c.authn == nil {
		// Unprotected (tests and baselines only): the certificate, if any,
		// names the caller; nothing else is checked.
		p = &authn.Principal{Workload: "unauthenticated", Strength: authn.StrengthMTLS}
		if cert != nil {
			if id, err := authn.WorkloadID(cert); err == nil {
				p.Workload = id
			}
		}
	} else {
		var err error
		if p, err = c.authenticateCert(ctx, cert, firstMetadata(ctx, "authorization")); err != nil {
			return ctx, err
		}
	}
	if err := checkCertExpiry(c.metrics, cert); err != nil {
		return ctx, err
	}
	cl.principal = p
	cl.rec.Principal = p
	return authn.NewContext(ctx, p), nil
}

// authenticateHTTP authenticates a REST request before the gateway reads
// its body (see Server.httpHandler). The chain then authenticates the call
// again, in full, from the metadata the gateway forwards: it is the one
// place that builds the principal, for gRPC and REST alike, and it must not
// trust a context value set outside it. The repetition is cheap: the
// certificate's identity and the verified token are cache hits in
// *authn.Authenticator (unless its token cache is disabled).
func (c *chain) authenticateHTTP(ctx context.Context, authorization string) (*authn.Principal, error) {
	if c.authn == nil {
		return nil, nil
	}
	cert := peerCertificate(ctx)
	p, err := c.authenticateCert(ctx, cert, authorization)
	if err != nil {
		return nil, err
	}
	return p, checkCertExpiry(c.metrics, cert)
}

// authenticateCert asks the Authenticator for the principal, counting and
// converting a refusal.
func (c *chain) authenticateCert(ctx context.Context, cert *x509.Certificate, authorization string) (*authn.Principal, error) {
	p, err := c.authn.Authenticate(ctx, cert, authorization)
	if err != nil {
		c.metrics.authFailed(authFailureReason(err))
		return nil, status.Error(codes.Unauthenticated, authFailureMessage(err))
	}
	return p, nil
}

// checkCertExpiry refuses a client certificate that has expired since the
// handshake checked it: a long-lived connection must not outlive it. (Wall
// clock, as the handshake's; the chain's now is the policy's clock.)
func checkCertExpiry(m *metrics, cert *x509.Certificate) error {
	if cert != nil && time.Now().After(cert.NotAfter) {
		m.authFailed("certificate_expired")
		return status.Error(codes.Unauthenticated, "unauthenticated: client certificate expired; reconnect with a valid one")
	}
	return nil
}

// authFailureReason is a short, fixed label for the metrics.
func authFailureReason(err error) string {
	switch {
	case errors.Is(err, authn.ErrNoCertificate):
		return "no_certificate"
	case errors.Is(err, authn.ErrNoIdentity):
		return "no_identity"
	case errors.Is(err, authn.ErrNoToken):
		return "no_token"
	case errors.Is(err, authn.ErrTokenExpired):
		return "token_expired"
	case errors.Is(err, authn.ErrTokenBinding):
		return "token_binding"
	case errors.Is(err, authn.ErrInvalidToken):
		return "invalid_token"
	default:
		return "error"
	}
}

// authFailureMessage tells the caller why it was not authenticated, in
// authn's words, which name the reason and never the token.
func authFailureMessage(err error) string {
	switch {
	case errors.Is(err, authn.ErrNoCertificate), errors.Is(err, authn.ErrNoIdentity),
		errors.Is(err, authn.ErrNoToken), errors.Is(err, authn.ErrInvalidToken):
		return "unauthenticated: " + err.Error()
	default:
		return "unauthenticated"
	}
}

// authorize decides the call under the policy, then applies rate limits and
// budgets. req is nil for streams.
func (c *chain) authorize(ctx context.Context, cl *call, req any) error {
	rule, ok := methodRules[cl.method]
	if !ok {
		cl.rec.Decision = "deny"
		c.metrics.denied("unmapped")
		return status.Errorf(codes.PermissionDenied, "permission denied: method %s has no authorization rule", cl.method)
	}
	cl.rec.Action = rule.action
	if rule.perDocument {
		// Decided per document by the handler (documentGate), which also
		// screens the call once it knows the schema's keys and tiers; the
		// rate limit applies here, to the call.
		return c.limit(cl, rule)
	}
	if rule.schema != nil && req != nil {
		name, err := rule.schema(req)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if err := c.decideSchema(ctx, cl, rule.action, name); err != nil {
			return err
		}
		if rule.keys != nil {
			// The keys the schema will use: a caller may not point a
			// schema at keys it may not administer.
			uses, err := rule.keys(req)
			if err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			if len(uses) > maxKeysPerCall {
				return status.Error(codes.InvalidArgument, errTooManyKeys.Error())
			}
			if _, err := c.decide(ctx, cl, rule, uses); err != nil {
				return err
			}
		}
		return c.limit(cl, rule)
	}
	var uses []keyUse
	if rule.keys != nil && req != nil {
		var err error
		if uses, err = rule.keys(req); err != nil {
			if errors.Is(err, errUnreadableCiphertext) {
				return status.Error(codes.InvalidArgument, errDecryptMessage)
			}
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	tiers, err := c.decide(ctx, cl, rule, uses)
	if err != nil {
		return err
	}
	if err := c.limit(cl, rule); err != nil {
		return err
	}
	if rule.budget != "" && c.budgets != nil {
		// Counted per tier on attempt, before any item is decrypted: a
		// failed decryption still spends (it is an attempt to read), and a
		// batch that a later tier refuses keeps what earlier tiers counted.
		n := map[string]int64{}
		for i, u := range uses {
			if u.spends {
				n[tiers[i]] += u.n
			}
		}
		return c.spend(ctx, cl, rule.budget, n)
	}
	return nil
}

// spend counts n[tier] uses of action against the caller's budgets, tier
// by tier from public to restricted.
func (c *chain) spend(ctx context.Context, cl *call, action string, n map[string]int64) error {
	for _, tier := range envelope.SensitivityTiers {
		if n[tier] == 0 {
			continue
		}
		ok, retry, err := c.budgets.Consume(ctx, principalKey(cl.principal), action, tier, n[tier])
		if err != nil {
			c.logger.ErrorContext(ctx, "budget store unavailable", "request_id", cl.rec.RequestID, "err", err)
			return status.Error(codes.Unavailable, "budget store unavailable; retry later")
		}
		if !ok {
			c.metrics.budgetExhausted(action, tier)
			return exhausted(fmt.Sprintf("%s budget for %s data exceeded", action, tier), retry)
		}
	}
	return nil
}

// limit applies the principal's rate limit of the rule's class.
func (c *chain) limit(cl *call, rule methodRule) error {
	if c.limiter == nil {
		return nil
	}
	if ok, retry := c.limiter.Allow(principalKey(cl.principal), rule.class); !ok {
		c.metrics.limited(rule.class)
		return exhausted(fmt.Sprintf("rate limit of %s calls exceeded", rule.class), retry)
	}
	return nil
}

// decideSchema decides action on the named classification schema.
func (c *chain) decideSchema(ctx context.Context, cl *call, action, name string) error {
	cl.rec.Keys = append(cl.rec.Keys, "schemas/"+name)
	if c.authz == nil {
		cl.rec.Decision = "allow"
		return nil
	}
	pctx, err := c.policyContext(ctx, cl, policy.TierInternal)
	if err != nil {
		return err
	}
	if err := c.screen(ctx, cl, &pctx, nil, policy.TierInternal, false); err != nil {
		return err
	}
	return c.decideOne(cl, policy.Request{
		Principal: policyPrincipal(cl.principal),
		Action:    action,
		Resource:  policy.Resource{Kind: policy.ResourceSchema, Name: name},
		Context:   pctx,
	})
}

// principalKey names a principal for rate limits and budgets: the workload,
// length-prefixed, then the token subject, so that no two principals share
// a key (a certificate DN may itself contain '#').
func principalKey(p *authn.Principal) string {
	return strconv.Itoa(len(p.Workload)) + ":" + p.Workload + "#" + p.Subject
}

// decide asks the policy about every key the call touches (or the service,
// when it touches none) and returns each key's tier. Every key must be
// allowed. A key that does not exist is decided as a restricted key with no
// owner, so that a refused caller cannot tell which keys exist.
func (c *chain) decide(ctx context.Context, cl *call, rule methodRule, uses []keyUse) ([]string, error) {
	tiers := make([]string, len(uses))
	var attrs []envelope.KeyAttributes
	if len(uses) > 0 {
		attrs = make([]envelope.KeyAttributes, 0, len(uses)+1)
	}
	// decided lists, for each attrs entry, the use it belongs to.
	var decided []int
	sensitivity := policy.TierInternal
	note := func(i int, a envelope.KeyAttributes) {
		attrs = append(attrs, a)
		decided = append(decided, i)
		if t, err := policy.ParseTier(a.Sensitivity); err == nil && t > sensitivity {
			sensitivity = t
		}
	}
	for i, u := range uses {
		if u.attrs == nil || u.existing {
			a, err := c.keys.KeyAttributes(ctx, u.name)
			switch {
			case err == nil:
				if u.attrs == nil || u.existing {
					note(i, a)
				}
			case errors.Is(err, envelope.ErrKeyNotFound), errors.Is(err, envelope.ErrInvalidKeyName):
				if u.attrs == nil {
					note(i, envelope.AttributesOf(u.name, nil))
				}
			default:
				return nil, toStatus(ctx, c.logger, err)
			}
		}
		if u.attrs != nil {
			note(i, *u.attrs)
		}
		tiers[i] = attrs[len(attrs)-1].Sensitivity
		if !slices.Contains(cl.rec.Keys, u.name) {
			cl.rec.Keys = append(cl.rec.Keys, u.name)
		}
	}
	if len(uses) > 0 {
		cl.rec.Sensitivity = sensitivity.String()
	}
	if c.authz == nil {
		cl.rec.Decision = "allow"
		return tiers, nil
	}
	pctx, err := c.policyContext(ctx, cl, sensitivity)
	if err != nil {
		return nil, err
	}
	if err := c.screen(ctx, cl, &pctx, cl.rec.Keys, sensitivity, rule.budget == budgetDecrypt); err != nil {
		return nil, err
	}
	preq := policy.Request{
		Principal: policyPrincipal(cl.principal),
		Action:    rule.action,
		Context:   pctx,
	}
	if uses == nil {
		preq.Resource = policy.Resource{Kind: policy.ResourceService, Name: serviceResource, Tier: policy.TierInternal}
		return tiers, c.decideOne(cl, preq)
	}
	for j, a := range attrs {
		preq.Action = rule.action
		if act := uses[decided[j]].action; act != "" {
			preq.Action = act
		}
		tier, _ := policy.ParseTier(a.Sensitivity)
		preq.Resource = policy.Resource{Kind: policy.ResourceKey, Name: a.Name, Tier: tier, Owner: a.Owner, Labels: a.Labels}
		if err := c.decideOne(cl, preq); err != nil {
			return nil, err
		}
	}
	return tiers, nil
}

type visibleKeysKey struct{}

// visibleKeys returns the filter the chain put in ctx for ListKeys: whether
// the caller may read a key's metadata (the GetKey action, decided with the
// same principal and context). Without a policy (Unprotected) every key is
// visible.
func visibleKeys(ctx context.Context) func(envelope.KeyAttributes) bool {
	if f, ok := ctx.Value(visibleKeysKey{}).(func(envelope.KeyAttributes) bool); ok {
		return f
	}
	return func(envelope.KeyAttributes) bool { return true }
}

// withVisibleKeys puts the ListKeys filter in ctx.
func (c *chain) withVisibleKeys(ctx context.Context, cl *call) (context.Context, error) {
	if c.authz == nil {
		return ctx, nil
	}
	pctx, err := c.policyContext(ctx, cl, policy.TierInternal)
	if err != nil {
		return ctx, err
	}
	base := policy.Request{
		Principal: policyPrincipal(cl.principal),
		Action:    readKeyAction,
		Context:   pctx,
	}
	return context.WithValue(ctx, visibleKeysKey{}, func(a envelope.KeyAttributes) bool {
		r := base
		tier, _ := policy.ParseTier(a.Sensitivity)
		r.Resource = policy.Resource{Kind: policy.ResourceKey, Name: a.Name, Tier: tier, Owner: a.Owner, Labels: a.Labels}
		r.Context.Sensitivity = tier
		return c.authz.Decide(r).Allow
	}), nil
}

// policyPrincipal is the policy's view of an authenticated principal.
func policyPrincipal(p *authn.Principal) policy.Principal {
	return policy.Principal{Workload: p.Workload, Subject: p.Subject, Roles: p.Roles, Scopes: p.Scopes}
}

// readKeyAction is the action that lets a caller see a key in ListKeys.
const readKeyAction = "GetKey"

func (c *chain) decideOne(cl *call, preq policy.Request) error {
	d := c.authz.Decide(preq)
	if cl.rec.Policies == nil && len(d.Policies) > 0 {
		// The usual single decision: keep its list rather than copy it.
		// Clipped, so that a later decision's append copies it instead
		// of writing into the Decision's array.
		cl.rec.Policies = slices.Clip(d.Policies)
	} else {
		cl.rec.Policies = appendAll(cl.rec.Policies, d.Policies)
	}
	if !d.Allow {
		cl.rec.Decision = "deny"
		c.metrics.denied(preq.Action)
		switch preq.Resource.Kind {
		case policy.ResourceKey:
			return status.Errorf(codes.PermissionDenied, "permission denied: %s on keys/%s", preq.Action, preq.Resource.Name)
		case policy.ResourceSchema:
			return status.Errorf(codes.PermissionDenied, "permission denied: %s on schemas/%s", preq.Action, preq.Resource.Name)
		}
		return status.Errorf(codes.PermissionDenied, "permission denied: %s", preq.Action)
	}
	cl.rec.Decision = "allow"
	return nil
}

// policyContext builds the policy context: source, time, authentication
// strength, and what the caller declares in request metadata.
func (c *chain) policyContext(ctx context.Context, cl *call, sensitivity policy.Tier) (policy.Context, error) {
	pc := policy.Context{
		SourceIP:     cl.rec.Source,
		Time:         cl.start,
		AuthStrength: cl.principal.Strength.String(),
		Sensitivity:  sensitivity,
	}
	// ValueFromIncomingContext copies one key's values; FromIncomingContext
	// would copy every header of the call, on every call.
	if v := metadata.ValueFromIncomingContext(ctx, TransactionValueHeader); len(v) > 0 {
		if len(v) > 1 {
			return pc, status.Errorf(codes.InvalidArgument, "%s given more than once", TransactionValueHeader)
		}
		tv, err := policy.ParseTransactionValue(v[0])
		if err != nil {
			return pc, status.Errorf(codes.InvalidArgument, "%s: want a non-negative decimal with at most 4 fractional digits, such as 12500.00", TransactionValueHeader)
		}
		pc.TransactionValue = tv
	}
	if v := metadata.ValueFromIncomingContext(ctx, PurposeHeader); len(v) > 0 {
		if len(v) > 1 || !validPurpose(v[0]) {
			return pc, status.Errorf(codes.InvalidArgument, "%s: want one value of 1 to 64 characters: lowercase letters, digits, '-', '_' or '.', starting with a letter", PurposeHeader)
		}
		pc.Purpose = v[0]
	}
	return pc, nil
}

func validPurpose(s string) bool {
	if len(s) == 0 || len(s) > 64 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		ch := s[i]
		if (ch < 'a' || ch > 'z') && (ch < '0' || ch > '9') && ch != '-' && ch != '_' && ch != '.' {
			return false
		}
	}
	return true
}

// exhausted is RESOURCE_EXHAUSTED with a RetryInfo detail (the gateway turns
// it into 429 with Retry-After).
func exhausted(msg string, retry time.Duration) error {
	if retry <= 0 {
		retry = time.Second
	}
	st := status.New(codes.ResourceExhausted, fmt.Sprintf("%s; retry after %s", msg, retry.Round(time.Millisecond)))
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); err == nil {
		st = d
	}
	return st.Err()
}

func peerCertificate(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return nil
	}
	return ti.State.PeerCertificates[0]
}

func addrOf(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(t.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// firstMetadata returns the first value of key (lowercase) in the incoming
// metadata, or "".
func firstMetadata(ctx context.Context, key string) string {
	if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func requestID(ctx context.Context) string {
	var id string
	if v := metadata.ValueFromIncomingContext(ctx, requestIDHeader); len(v) > 0 {
		id = v[0]
	}
	id = requestIDOrNew(id)
	// A failure to set the header (no transport stream, as in tests that
	// call a handler directly) is harmless: the id is still logged.
	_ = grpc.SetHeader(ctx, metadata.Pairs(requestIDHeader, id))
	return id
}

// requestIDOrNew returns id when it is a valid request id, else a new one.
func requestIDOrNew(id string) string {
	if validRequestID(id) {
		return id
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validRequestID accepts ids a log line can hold safely: 1 to 128 printable
// ASCII characters without spaces or quotes.
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' || s[i] == '"' || s[i] == '\\' {
			return false
		}
	}
	return true
}
