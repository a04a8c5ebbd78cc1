package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"
	"github.com/cedar-policy/cedar-go/x/exp/schema/resolved"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

// The Cedar names Decide builds requests with; examples/policies/tresor.cedarschema declares them.
const (
	typePrincipal types.EntityType = "Tresor::Principal"
	typeRole      types.EntityType = "Tresor::Role"
	typeKey       types.EntityType = "Tresor::Key"
	typeService   types.EntityType = "Tresor::Service"
	typeAction    types.EntityType = "Tresor::Action"
)

// Decide decides r against the engine's policies. It denies unless a permit
// matches and no forbid does, and denies without evaluating anything when
// the action is not a callable schema action, the resource's kind does not
// fit the action, or the request is malformed (no workload, no time, no
// source address, an unknown auth strength, an invalid tier or transaction
// value). A forbid that fails to evaluate denies too (Cedar would skip it).
func (e *Engine) Decide(r Request) Decision {
	a, ok := e.actions[r.Action]
	if !ok {
		return refused(fmt.Sprintf("action %q is not declared in the schema", r.Action))
	}
	switch {
	case r.Resource.Kind == ResourceKey && !a.key, r.Resource.Kind == ResourceService && !a.service:
		return refused(fmt.Sprintf("action %s does not apply to a %s", r.Action, r.Resource.Kind))
	}
	var ents requestEntities
	var err error
	if ents.principal, err = e.principal(r.Principal); err != nil {
		return refused(err.Error())
	}
	if ents.resource, err = e.resource(r.Resource); err != nil {
		return refused(err.Error())
	}
	ctx, err := e.contextRecord(r.Context)
	if err != nil {
		return refused(err.Error())
	}
	ents.actions = e.entities

	dec, diag := cedar.Authorize(a.policies, &ents, cedar.Request{
		Principal: ents.principal.UID,
		Action:    a.uid,
		Resource:  ents.resource.UID,
		Context:   ctx,
	})
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

func (r *requestEntities) Get(uid types.EntityUID) (types.Entity, bool) {
	switch uid {
	case r.principal.UID:
		return r.principal, true
	case r.resource.UID:
		return r.resource, true
	}
	ent, ok := r.actions[uid]
	return ent, ok
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
		var tags types.Record
		if len(r.Labels) > 0 {
			m := make(types.RecordMap, len(r.Labels))
			for k, v := range r.Labels {
				m[types.String(k)] = types.String(v)
			}
			tags = types.NewRecord(m)
		}
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
	}
	return types.Entity{}, fmt.Errorf("invalid resource kind %d", int(r.Kind))
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
	weekday := int64(local.Weekday()+6)%7 + 1 // Monday 1 .. Sunday 7

	n := 7
	if c.TransactionValue != "" {
		n++
	}
	if c.Purpose != "" {
		n++
	}
	m := make(types.RecordMap, n) // an exact size keeps the usual (<= 8) maps in one group

	m["source_ip"] = types.IPAddr(netip.PrefixFrom(ip, ip.BitLen()))
	m["time"] = types.NewDatetime(c.Time)
	m["local_time"] = types.NewDatetimeFromMillis(c.Time.UnixMilli() + int64(offset)*int64(time.Second/time.Millisecond))
	m["weekday"] = types.Long(weekday)
	m["auth"] = types.String(c.AuthStrength)
	sensitivity := ""
	if c.Sensitivity != 0 {
		sensitivity = c.Sensitivity.String()
	}
	m["sensitivity"] = types.String(sensitivity)
	m["sensitivity_level"] = types.Long(c.Sensitivity)
	if c.TransactionValue != "" {
		d, err := parseTransactionValue(c.TransactionValue)
		if err != nil {
			return types.Record{}, fmt.Errorf("context transaction value: %w", err)
		}
		m["transaction_value"] = d
	}
	if c.Purpose != "" {
		m["purpose"] = types.String(c.Purpose)
	}
	return types.NewRecord(m), nil
}

// checkModel makes sure the schema describes what Decide builds: it
// validates a sample principal, key and service entity and, for every
// callable action, a sample request with and without the optional context
// attributes.
func checkModel(v *validate.Validator, rs *resolved.Schema, e *Engine) error {
	for _, et := range []types.EntityType{typePrincipal, typeRole, typeKey, typeService} {
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
	for _, ent := range []types.Entity{p, key, svc} {
		if err := v.Entity(ent); err != nil {
			return fmt.Errorf("%w: the %s entity tresor builds does not conform: %s", ErrInvalidSchema, ent.UID.Type, oneLine(err))
		}
	}
	full, err := e.contextRecord(Context{SourceIP: netip.IPv4Unspecified(), Time: time.Unix(0, 0), AuthStrength: AuthToken,
		TransactionValue: "1.0", Purpose: "p", Sensitivity: TierPublic})
	if err != nil {
		return err
	}
	bare, err := e.contextRecord(Context{SourceIP: netip.IPv4Unspecified(), Time: time.Unix(0, 0), AuthStrength: AuthMTLS})
	if err != nil {
		return err
	}
	for _, name := range e.names {
		a := e.actions[name]
		res := key.UID
		if !a.key {
			res = svc.UID
		}
		for _, ctx := range []types.Record{full, bare} {
			req := types.Request{Principal: p.UID, Action: a.uid, Resource: res, Context: ctx}
			if err := v.Request(req); err != nil {
				return fmt.Errorf("%w: the request tresor builds for action %s does not conform: %s", ErrInvalidSchema, name, oneLine(err))
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
