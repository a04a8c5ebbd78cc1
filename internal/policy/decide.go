package policy

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
	"github.com/cedar-policy/cedar-go/x/exp/schema/resolved"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

// The Cedar names Decide builds requests with; examples/policies/tresor.cedarschema declares them.
const (
	typePrincipal types.EntityType = "Tresor::Principal"
	typeRole      types.EntityType = "Tresor::Role"
	typeKey       types.EntityType = "Tresor::Key"
	typeService   types.EntityType = "Tresor::Service"
	typeField     types.EntityType = "Tresor::Field"
	typeSchema    types.EntityType = "Tresor::Schema"
	typeAction    types.EntityType = "Tresor::Action"
)

// Decide decides r against the engine's policies. It denies unless a permit
// matches and no forbid does, and denies without evaluating anything when
// the action is not a callable schema action, the resource's kind does not
// fit the action, or the request is malformed (no workload, no time, no
// source address, an unknown auth strength, an invalid tier or transaction
// value). A forbid that fails to evaluate denies too (Cedar would skip it).
//
// Cedar's evaluator is the deepest point of a call's goroutine stack; when
// it passes the end of the stack, the runtime copies the whole stack to a
// larger one, which costs a server call more than the evaluation. So the
// frames under it are kept small: Decide builds the Cedar request in
// prepare and the Decision in decision, which return before or run after
// the evaluation, and All and requestEntities.Get keep their larger parts
// out of line.
func (e *Engine) Decide(r Request) Decision {
	st, reason := e.prepare(&r)
	if st == nil {
		return refused(reason)
	}
	return e.decision(cedar.Authorize(st, &st.ents, cedar.Request{
		Principal: st.ents.principal.UID,
		Action:    st.action,
		Resource:  st.ents.resource.UID,
		Context:   st.context,
	}))
}

// evalState is what cedar.Authorize is given for one request. It is on the
// heap (Authorize keeps the entity store as an interface), in one piece.
type evalState struct {
	policies *policyList
	ents     requestEntities
	action   types.EntityUID
	context  types.Record
}

// All yields the action's policies (evalState is the cedar.PolicyIterator
// of its request) less those whose principal scope names a role the
// principal does not have.
//
// Leaving those out decides exactly as Cedar would with them: Cedar
// evaluates the principal scope first, so such a policy is false and cannot
// fail, whatever its other scopes and conditions say. And `principal in R`
// (or `principal is T in R`) for a role R is true exactly when R is one of
// the principal entity's parents: the principal is the only entity with
// roles for parents, and no role is itself an entity of the request (the
// store holds the principal, a key or the service, and the schema's
// actions), so Cedar's walk up the hierarchy stops at the parents. It
// spares the evaluation of role scopes, such as a forbid for key admins
// that every caller's Encrypt and Decrypt evaluate, which is also the
// deepest point of a call's stack.
func (st *evalState) All() iter.Seq2[types.PolicyID, *cedar.Policy] {
	return func(yield func(types.PolicyID, *cedar.Policy) bool) {
		for _, p := range *st.policies {
			if st.outOfScope(p.policy) {
				continue
			}
			if !yield(p.id, p.policy) {
				return
			}
		}
	}
}

// outOfScope reports whether p's principal scope is `principal in R` or
// `principal is T in R` for a role R the principal does not have. (Not
// inlined: All's frame stays small, under every policy's evaluation.)
//
//go:noinline
func (st *evalState) outOfScope(p *cedar.Policy) bool {
	var r types.EntityUID
	switch s := (*xast.Policy)(p.AST()).Principal.(type) {
	case xast.ScopeTypeIn:
		r = s.Entity
	case xast.ScopeTypeIsIn:
		r = s.Entity
	default:
		return false
	}
	return r.Type == typeRole && !st.ents.principal.Parents.Contains(r)
}

// prepare checks r and builds its Cedar request; for a request Decide
// refuses it returns nil and the reason.
//
//go:noinline
func (e *Engine) prepare(r *Request) (*evalState, string) {
	a, ok := e.actions[r.Action]
	if !ok {
		return nil, fmt.Sprintf("action %q is not declared in the schema", r.Action)
	}
	if r.Resource.Kind < ResourceKey || r.Resource.Kind > ResourceSchema {
		return nil, fmt.Sprintf("invalid resource kind %d", int(r.Resource.Kind))
	}
	if !a.appliesTo(r.Resource.Kind) {
		return nil, fmt.Sprintf("action %s does not apply to a %s", r.Action, r.Resource.Kind)
	}
	principal, err := e.principal(r.Principal)
	if err != nil {
		return nil, err.Error()
	}
	resource, err := e.resource(r.Resource)
	if err != nil {
		return nil, err.Error()
	}
	ctx, err := e.contextRecord(r.Context)
	if err != nil {
		return nil, err.Error()
	}
	return &evalState{
		policies: &a.policies,
		ents:     requestEntities{principal: principal, resource: resource, actions: e.entities},
		action:   a.uid,
		context:  ctx,
	}, ""
}

// decision turns Cedar's answer into a Decision.
//
//go:noinline
func (e *Engine) decision(dec cedar.Decision, diag cedar.Diagnostic) Decision {
	d := Decision{Allow: dec == cedar.Allow}
	if len(diag.Reasons) > 0 {
		d.Policies = make([]string, len(diag.Reasons), len(diag.Reasons)+len(diag.Errors))
		for i, reason := range diag.Reasons {
			d.Policies[i] = string(reason.PolicyID)
		}
	}
	for _, de := range diag.Errors {
		d.Errors = append(d.Errors, fmt.Sprintf("policy %s: %s", de.PolicyID, errorClass(de.Message)))
		if e.forbids[de.PolicyID] {
			// Fail closed: a forbid that cannot be evaluated still forbids.
			if d.Allow {
				d.Allow, d.Policies = false, nil
			}
			d.Policies = append(d.Policies, string(de.PolicyID))
		}
	}
	return d
}

// refused is out of line, as prepare and decision are (see Decide).
//
//go:noinline
func refused(reason string) Decision { return Decision{Errors: []string{reason}} }

// errorClass reduces a Cedar evaluation error to its kind, since the message
// may quote entity ids, tag names or numbers from the request.
func errorClass(msg string) string {
	switch {
	case strings.Contains(msg, "overflow"):
		return "integer overflow"
	case strings.Contains(msg, "does not have the attribute"):
		return "missing attribute"
	case strings.Contains(msg, "does not have the tag"):
		return "missing tag"
	case strings.Contains(msg, "does not exist"):
		return "unknown entity"
	case strings.Contains(msg, "type error"):
		return "type error"
	}
	return "evaluation error"
}

// requestEntities is the entity store for one request: its principal and
// resource, and the schema's action entities.
type requestEntities struct {
	principal, resource types.Entity
	actions             map[types.EntityUID]types.Entity
}

// Get is called from deep in Cedar's evaluator, so it keeps a small frame
// (see Decide): the map lookup, which needs a larger one, is in action.
func (r *requestEntities) Get(uid types.EntityUID) (types.Entity, bool) {
	if uid == r.principal.UID {
		return r.principal, true
	}
	if uid == r.resource.UID {
		return r.resource, true
	}
	p := r.action(uid)
	if p == nil {
		return types.Entity{}, false
	}
	return *p, true
}

// action returns a copy of the action entity uid, nil if there is none.
//
//go:noinline
func (r *requestEntities) action(uid types.EntityUID) *types.Entity {
	if ent, ok := r.actions[uid]; ok {
		return &ent
	}
	return nil
}

// principalEntity returns Tresor::Principal::"<workload>#<subject>", in
// Tresor::Role::"<role>" for each role.
func principalEntity(p Principal) (types.Entity, error) {
	if p.Workload == "" {
		return types.Entity{}, errors.New("principal has no workload identity")
	}
	roles := make([]types.Value, len(p.Roles))
	parents := make([]types.EntityUID, len(p.Roles))
	for i, r := range p.Roles {
		roles[i] = types.String(r)
		parents[i] = types.EntityUID{Type: typeRole, ID: types.String(r)}
	}
	scopes := make([]types.Value, len(p.Scopes))
	for i, s := range p.Scopes {
		scopes[i] = types.String(s)
	}
	return types.Entity{
		UID:     types.EntityUID{Type: typePrincipal, ID: types.String(principalID(p.Workload, p.Subject))},
		Parents: types.NewEntityUIDSet(parents...),
		Attributes: types.NewRecord(types.RecordMap{
			"workload":           types.String(p.Workload),
			"subject":            types.String(p.Subject),
			"roles":              types.NewSet(roles...),
			"scopes":             types.NewSet(scopes...),
			"authenticated_user": types.Boolean(p.Subject != ""),
		}),
	}, nil
}

// resourceEntity returns Tresor::Key::"<name>" with the key's labels as
// tags, or Tresor::Service::"<name>".
func resourceEntity(r Resource) (types.Entity, error) {
	if r.Name == "" {
		return types.Entity{}, errors.New("resource has no name")
	}
	switch r.Kind {
	case ResourceKey:
		if !r.Tier.valid() {
			return types.Entity{}, errors.New("key has no valid tier")
		}
		tags := labelTags(r.Labels)
		return types.Entity{
			UID: types.EntityUID{Type: typeKey, ID: types.String(r.Name)},
			Attributes: types.NewRecord(types.RecordMap{
				"name":       types.String(r.Name),
				"tier":       types.String(r.Tier.String()),
				"tier_level": types.Long(r.Tier),
				"owner":      types.String(r.Owner),
			}),
			Tags: tags,
		}, nil
	case ResourceService:
		return types.Entity{
			UID:        types.EntityUID{Type: typeService, ID: types.String(r.Name)},
			Attributes: types.NewRecord(types.RecordMap{"name": types.String(r.Name)}),
		}, nil
	case ResourceSchema:
		return types.Entity{
			UID:        types.EntityUID{Type: typeSchema, ID: types.String(r.Name)},
			Attributes: types.NewRecord(types.RecordMap{"name": types.String(r.Name)}),
		}, nil
	case ResourceField:
		if !r.Tier.valid() {
			return types.Entity{}, errors.New("field has no valid tier")
		}
		if r.Schema == "" || r.Path == "" {
			return types.Entity{}, errors.New("field has no schema or path")
		}
		return types.Entity{
			// The id is unambiguous: a schema name holds no ':'.
			UID: types.EntityUID{Type: typeField, ID: types.String(r.Schema + ":" + r.Path)},
			Attributes: types.NewRecord(types.RecordMap{
				"name":           types.String(r.Name),
				"tier":           types.String(r.Tier.String()),
				"tier_level":     types.Long(r.Tier),
				"owner":          types.String(r.Owner),
				"schema":         types.String(r.Schema),
				"path":           types.String(r.Path),
				"classification": types.String(r.Classification),
			}),
			Tags: labelTags(r.Labels),
		}, nil
	}
	return types.Entity{}, fmt.Errorf("invalid resource kind %d", int(r.Kind))
}

// labelTags returns a key's labels as Cedar tags.
func labelTags(labels map[string]string) types.Record {
	if len(labels) == 0 {
		return types.Record{}
	}
	m := make(types.RecordMap, len(labels))
	for k, v := range labels {
		m[types.String(k)] = types.String(v)
	}
	return types.NewRecord(m)
}

// contextRecord returns the Cedar context. local_time is the wall clock in
// the business time zone written as if it were UTC, so that
// local_time.toTime() is the local time of day.
func (e *Engine) contextRecord(c Context) (types.Record, error) {
	if !c.SourceIP.IsValid() {
		return types.Record{}, errors.New("context has no source address")
	}
	if c.Time.IsZero() {
		return types.Record{}, errors.New("context has no time")
	}
	switch c.AuthStrength {
	case AuthMTLS, AuthToken, AuthBoundToken:
	default:
		return types.Record{}, errors.New("context has an unknown auth strength")
	}
	if c.Sensitivity != 0 && !c.Sensitivity.valid() {
		return types.Record{}, errors.New("context has an invalid sensitivity tier")
	}
	ip := c.SourceIP.Unmap().WithZone("")
	local := c.Time.In(e.loc)
	_, offset := local.Zone()
	in := contextInputs{
		ip:               ip,
		millis:           c.Time.UnixMilli(),
		weekday:          int64(local.Weekday()+6)%7 + 1, // Monday 1 .. Sunday 7
		sensitivity:      c.Sensitivity,
		auth:             c.AuthStrength,
		transactionValue: c.TransactionValue,
		purpose:          c.Purpose,
		risk:             min(max(c.Risk, 0), 100),
	}
	in.localMillis = in.millis + int64(offset)*int64(time.Second/time.Millisecond)
	slot := e.contexts.slot(&in)
	if ent := slot.Load(); ent != nil && ent.in == in {
		return ent.rec, nil
	}
	rec, err := newContextRecord(&in)
	if err != nil {
		return types.Record{}, err
	}
	slot.Store(&contextEntry{in: in, rec: rec})
	return rec, nil
}

// newContextRecord builds the context record of in.
func newContextRecord(in *contextInputs) (types.Record, error) {
	n := 8
	if in.transactionValue != "" {
		n++
	}
	if in.purpose != "" {
		n++
	}
	m := make(types.RecordMap, n) // an exact size keeps the usual (<= 8) maps in one group

	m["source_ip"] = types.IPAddr(netip.PrefixFrom(in.ip, in.ip.BitLen()))
	m["time"] = types.NewDatetimeFromMillis(in.millis)
	m["local_time"] = types.NewDatetimeFromMillis(in.localMillis)
	m["weekday"] = types.Long(in.weekday)
	m["auth"] = authValue(in.auth)
	m["sensitivity"] = sensitivityValues[in.sensitivity]
	m["sensitivity_level"] = types.Long(in.sensitivity)
	m["risk"] = types.Long(in.risk)
	if in.transactionValue != "" {
		d, err := parseTransactionValue(in.transactionValue)
		if err != nil {
			return types.Record{}, fmt.Errorf("context transaction value: %w", err)
		}
		m["transaction_value"] = d
	}
	if in.purpose != "" {
		m["purpose"] = types.String(in.purpose)
	}
	return types.NewRecord(m), nil
}

// checkModel makes sure the schema describes what Decide builds: it
// validates a sample principal, key and service entity and, for every
// callable action, a sample request with and without the optional context
// attributes.
func checkModel(v *validate.Validator, rs *resolved.Schema, e *Engine) error {
	for _, et := range []types.EntityType{typePrincipal, typeRole, typeKey, typeService, typeField, typeSchema} {
		if _, ok := rs.Entities[et]; !ok {
			return fmt.Errorf("%w: entity type %s is not declared", ErrInvalidSchema, et)
		}
	}
	p, err := principalEntity(Principal{Workload: "spiffe://example/check", Subject: "s", Roles: []string{"r"}, Scopes: []string{"s"}})
	if err != nil {
		return err
	}
	key, err := resourceEntity(Resource{Kind: ResourceKey, Name: "k", Tier: TierRestricted, Owner: "o", Labels: map[string]string{"l": "v"}})
	if err != nil {
		return err
	}
	svc, err := resourceEntity(Resource{Kind: ResourceService, Name: ServiceName})
	if err != nil {
		return err
	}
	field, err := resourceEntity(Resource{Kind: ResourceField, Name: "k", Tier: TierRestricted, Owner: "o", Labels: map[string]string{"l": "v"},
		Schema: "s", Path: "$.p", Classification: "c"})
	if err != nil {
		return err
	}
	schema, err := resourceEntity(Resource{Kind: ResourceSchema, Name: "s"})
	if err != nil {
		return err
	}
	for _, ent := range []types.Entity{p, key, svc, field, schema} {
		if err := v.Entity(ent); err != nil {
			return fmt.Errorf("%w: the %s entity tresor builds does not conform: %s", ErrInvalidSchema, ent.UID.Type, oneLine(err))
		}
	}
	full, err := e.contextRecord(Context{SourceIP: netip.IPv4Unspecified(), Time: time.Unix(0, 0), AuthStrength: AuthToken,
		TransactionValue: "1.0", Purpose: "p", Sensitivity: TierPublic, Risk: 50})
	if err != nil {
		return err
	}
	bare, err := e.contextRecord(Context{SourceIP: netip.IPv4Unspecified(), Time: time.Unix(0, 0), AuthStrength: AuthMTLS})
	if err != nil {
		return err
	}
	for _, name := range e.names {
		a := e.actions[name]
		for kind, res := range map[ResourceKind]types.EntityUID{ResourceKey: key.UID, ResourceService: svc.UID, ResourceField: field.UID, ResourceSchema: schema.UID} {
			if !a.appliesTo(kind) {
				continue
			}
			for _, ctx := range []types.Record{full, bare} {
				req := types.Request{Principal: p.UID, Action: a.uid, Resource: res, Context: ctx}
				if err := v.Request(req); err != nil {
					return fmt.Errorf("%w: the request tresor builds for action %s does not conform: %s", ErrInvalidSchema, name, oneLine(err))
				}
			}
		}
	}
	return nil
}

// principalID names a principal entity: the workload, length-prefixed, then
// the subject, so that no two (workload, subject) pairs share an id (a DN
// workload may itself contain '#').
func principalID(workload, subject string) string {
	return strconv.Itoa(len(workload)) + ":" + workload + "#" + subject
}
