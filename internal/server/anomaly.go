package server

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/monitor"
	"github.com/tresorkms/tresor/internal/policy"
)

// AnomalyMonitor scores calls against each principal's baseline and holds
// the responses the policy applied. *monitor.Monitor is the
// implementation.
type AnomalyMonitor interface {
	Score(obs monitor.Observation) monitor.Assessment
	Apply(principal string, r monitor.Response, now time.Time) monitor.Response
	Admit(principal string, now time.Time, boundToken bool) (monitor.Response, time.Duration, error)
	Observe(obs monitor.Observation, applied monitor.Response)
}

// DecideResponse asks the policy, strongest first, which anomaly response
// applies to a call described by r (its Action is set to each response's
// in turn) and returns the first permitted, with the policies that permit
// it; monitor.None when none is. The chain and `tresor simulate` both
// decide with it.
func DecideResponse(authz Authorizer, r policy.Request) (monitor.Response, []string) {
	for _, resp := range monitor.Responses() {
		r.Action = resp.Action()
		if d := authz.Decide(r); d.Allow {
			return resp, d.Policies
		}
	}
	return monitor.None, nil
}

// screen scores the call, lets the policy choose a response to an unusual
// one (the strongest anomaly action it permits, decided with the same
// principal and context, on the service), applies the principal's active
// response and sets pctx.Risk for the call's own decisions. It runs once
// per call, before the first decision; an error refuses the call.
func (c *chain) screen(ctx context.Context, cl *call, pctx *policy.Context, keys []string, tier policy.Tier, reveal bool) error {
	if c.anomaly == nil || cl.screened {
		pctx.Risk = int64(cl.rec.Risk)
		return nil
	}
	cl.screened = true
	obs := monitor.Observation{
		Principal: principalKey(cl.principal),
		Time:      cl.start,
		Source:    cl.rec.Source,
		Keys:      keys,
		Tier:      monitor.Tier(tier),
		Reveal:    reveal,
	}
	if pctx.TransactionValue != "" {
		if v, err := strconv.ParseFloat(pctx.TransactionValue, 64); err == nil {
			obs.TransactionValue, obs.HasValue = v, true
		}
	}
	a := c.anomaly.Score(obs)
	cl.rec.Risk = a.Risk
	pctx.Risk = int64(a.Risk)
	if a.Risk >= c.minRisk {
		c.logger.LogAttrs(ctx, slog.LevelInfo, "unusual call", slog.String("request_id", cl.rec.RequestID),
			slog.Int("risk", a.Risk), slog.Any("assessment", a))
	}
	if a.Risk >= c.minRisk && c.authz != nil {
		r := policy.Request{Principal: policyPrincipal(cl.principal), Context: *pctx,
			Resource: policy.Resource{Kind: policy.ResourceService, Name: serviceResource}}
		if resp, pols := DecideResponse(c.authz, r); resp != monitor.None {
			c.anomaly.Apply(obs.Principal, resp, cl.start)
			cl.rec.Policies = appendAll(cl.rec.Policies, pols)
		}
	}
	if err := c.admit(ctx, cl, obs.Principal, cl.start); err != nil {
		return err
	}
	cl.observed = &obs
	return nil
}

// readmit applies the principal's anomaly response in force now to a later
// part of a screened call (the next document of a stream).
func (c *chain) readmit(ctx context.Context, cl *call) error {
	if c.anomaly == nil || !cl.screened {
		return nil
	}
	return c.admit(ctx, cl, principalKey(cl.principal), c.now())
}

// admit applies the principal's active response: a block refuses, a
// step-up refuses a caller without a certificate-bound token, a throttle
// refuses beyond the reduced rate.
func (c *chain) admit(ctx context.Context, cl *call, principal string, now time.Time) error {
	active, retry, err := c.anomaly.Admit(principal, now, cl.principal.Strength == authn.StrengthBoundToken)
	if active != monitor.None {
		cl.rec.Response = active.String()
		c.metrics.anomalyResponse(active.String())
		c.logger.LogAttrs(ctx, slog.LevelWarn, "anomalous call", slog.String("request_id", cl.rec.RequestID),
			slog.String("workload", cl.principal.Workload), slog.Int("risk", cl.rec.Risk),
			slog.String("response", active.String()))
	}
	switch {
	case errors.Is(err, monitor.ErrBlocked):
		cl.rec.Decision = "deny"
		return status.Error(codes.PermissionDenied, "permission denied: calls refused for a while after unusual activity; contact the security team")
	case errors.Is(err, monitor.ErrStepUpRequired):
		cl.rec.Decision = "deny"
		return status.Error(codes.Unauthenticated, "unauthenticated: a certificate-bound access token is required after unusual activity")
	case errors.Is(err, monitor.ErrThrottled):
		return exhausted("call rate reduced after unusual activity", retry)
	}
	cl.active = active
	return nil
}

// learn lets the monitor learn from a call that went ahead.
func (c *chain) learn(cl *call) {
	if c.anomaly != nil && cl.observed != nil {
		c.anomaly.Observe(*cl.observed, cl.active)
	}
}
