package server

import (
	"context"
	"errors"
	"time"

	"github.com/tresorkms/tresor/internal/audit"
	"github.com/tresorkms/tresor/internal/store"
)

// AuditObserver writes one audit event per call: the CallObserver that
// puts every call in the audit log.
type AuditObserver struct {
	log *audit.Log
}

// AuditWriteTimeout bounds how long a call waits for its event to be
// written; the caller's own deadline does not cut the write short, so a
// call its client gave up on is still recorded.
const AuditWriteTimeout = 10 * time.Second

// ObserveCall implements CallObserver.
func (o *AuditObserver) ObserveCall(ctx context.Context, rec *CallRecord) error {
	e := audit.Event{
		Time:          rec.Start,
		RequestID:     rec.RequestID,
		Method:        rec.Method,
		Action:        rec.Action,
		Resources:     rec.Keys,
		KeyVersions:   rec.KeyVersions,
		Decision:      rec.Decision,
		Policies:      rec.Policies,
		Code:          rec.Code,
		LatencyMicros: rec.Duration.Microseconds(),
		Fields: audit.FieldCounts{Protected: rec.Fields.Protected, Revealed: rec.Fields.Revealed,
			Masked: rec.Fields.Masked, Withheld: rec.Fields.Withheld, Redacted: rec.Fields.Redacted,
			Findings: rec.Fields.Findings},
		Risk:     rec.Risk,
		Response: rec.Response,
	}
	if p := rec.Principal; p != nil {
		e.Workload, e.Subject, e.Auth = p.Workload, p.Subject, p.Strength.String()
	}
	if rec.Source.IsValid() {
		e.Source = rec.Source.String()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), AuditWriteTimeout)
	defer cancel()
	return o.log.Record(ctx, e)
}

// NewAuditObserver returns the CallObserver that writes every call to log.
func NewAuditObserver(log *audit.Log) *AuditObserver { return &AuditObserver{log: log} }

// NewAuditReader returns the AuditReader over the audit log in st; pz
// matches token subjects in queries.
func NewAuditReader(st store.AuditLog, keys audit.RootKeyLookup, pz *audit.Pseudonymizer) AuditReader {
	return &auditReader{st: st, keys: keys, pseud: pz}
}

// auditReader serves VerifyAudit and QueryAudit from the store.
type auditReader struct {
	st    store.AuditLog
	keys  audit.RootKeyLookup
	pseud *audit.Pseudonymizer
}

func (a *auditReader) VerifyAudit(ctx context.Context) (AuditReport, error) {
	r, err := audit.Verify(ctx, audit.NewStoreSource(a.st), a.keys)
	out := AuditReport{OK: err == nil, Events: r.Events, Chains: int64(len(r.Chains)), Checkpoints: r.Checkpoints, Uncovered: r.Uncovered,
		Unclosed: r.Unclosed, Anchors: r.Anchors}
	var ve *audit.VerifyError
	switch {
	case err == nil:
	case errors.As(err, &ve):
		out.BadChain, out.BadSeq, out.Problem = ve.Chain, ve.Seq, ve.Reason
	default:
		return out, err
	}
	return out, nil
}

func (a *auditReader) QueryAudit(ctx context.Context, q AuditQuery) ([]string, error) {
	var out []string
	err := audit.QueryLines(ctx, audit.NewStoreSource(a.st), a.pseud,
		audit.Filter{Principal: q.Principal, Action: q.Action, Key: q.Key, From: q.From, To: q.To, Limit: q.Limit},
		func(line []byte) error {
			out = append(out, string(line))
			return nil
		})
	return out, err
}
