package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/fields"
	"github.com/tresorkms/tresor/internal/policy"
	"github.com/tresorkms/tresor/internal/store"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// fieldService implements tresor.v1.FieldService.
type fieldService struct {
	tresorv1.UnimplementedFieldServiceServer
	schemas *SchemaRegistry
	prot    *fields.Protector
	gate    *chain
	logger  *slog.Logger
}

// SchemaRegistry stores classification schemas and hands out parsed ones:
// a version, once parsed, is kept (versions never change); the latest
// version of a name is looked up again after latestTTL, so a version
// another replica stored is used within that time.
type SchemaRegistry struct {
	store store.FieldSchemas
	keys  fields.KeyTyper
	now   func() time.Time

	mu     sync.Mutex
	parsed map[schemaVersion]*fields.Schema
	latest map[string]latestSchema
}

type schemaVersion struct {
	name    string
	version int64
}

type latestSchema struct {
	version int64
	until   time.Time
}

// latestTTL is how long the latest version of a schema is taken as known.
const latestTTL = 5 * time.Second

// maxParsedSchemas bounds the parsed schemas a registry keeps.
const maxParsedSchemas = 4096

// NewSchemaRegistry returns a registry over s; keys tells the type of a key,
// to validate the keys a schema names when it is stored.
func NewSchemaRegistry(s store.FieldSchemas, keys fields.KeyTyper, now func() time.Time) *SchemaRegistry {
	if now == nil {
		now = time.Now
	}
	return &SchemaRegistry{store: s, keys: keys, now: now, parsed: map[schemaVersion]*fields.Schema{}, latest: map[string]latestSchema{}}
}

// KeyTypes adapts a keyring to fields.KeyTyper: a key's type as the store
// names it.
func KeyTypes(ring *envelope.Keyring) fields.KeyTyper {
	return fields.KeyTyperFunc(func(ctx context.Context, name string) (string, error) {
		k, err := ring.GetKey(ctx, name)
		if err != nil {
			return "", err
		}
		return k.Type.String(), nil
	})
}

// Put validates a definition (YAML or JSON) and every key it names, and
// stores it as the version it declares. ErrAlreadyExists from the store
// means that version is taken.
func (r *SchemaRegistry) Put(ctx context.Context, definition []byte) (store.FieldSchema, *fields.Schema, error) {
	s, err := fields.ParseSchema(definition)
	if err != nil {
		return store.FieldSchema{}, nil, err
	}
	if err := s.Validate(ctx, r.keys); err != nil {
		return store.FieldSchema{}, nil, fmt.Errorf("%w: %w", errSchemaKeys, err)
	}
	canonical, err := s.Marshal()
	if err != nil {
		return store.FieldSchema{}, nil, err
	}
	fs, err := r.store.PutFieldSchema(ctx, store.FieldSchema{Name: s.Name(), Version: int64(s.Version()), Definition: canonical})
	if err != nil {
		return store.FieldSchema{}, nil, err
	}
	r.mu.Lock()
	r.remember(schemaVersion{fs.Name, fs.Version}, s)
	delete(r.latest, fs.Name)
	r.mu.Unlock()
	return fs, s, nil
}

// errSchemaKeys marks a schema whose keys are missing or of the wrong type.
var errSchemaKeys = errors.New("schema keys")

// IsSchemaKeyError reports whether err from SchemaRegistry.Put or Load
// says that keys the schema names are missing or of the wrong type.
func IsSchemaKeyError(err error) bool { return errors.Is(err, errSchemaKeys) }

// Load stores a schema from a file at start-up: a version already stored
// with the same definition is fine, one stored with another definition is
// an error (a version never changes).
func (r *SchemaRegistry) Load(ctx context.Context, definition []byte) (*fields.Schema, error) {
	_, s, err := r.Put(ctx, definition)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, store.ErrAlreadyExists) {
		return nil, err
	}
	s, perr := fields.ParseSchema(definition)
	if perr != nil {
		return nil, perr
	}
	canonical, _ := s.Marshal()
	stored, gerr := r.store.GetFieldSchema(ctx, s.Name(), int64(s.Version()))
	if gerr != nil {
		return nil, gerr
	}
	if string(stored.Definition) != string(canonical) {
		return nil, fmt.Errorf("%w: schema %q version %d is stored with another definition; give the changed schema a new version", fields.ErrInvalidSchema, s.Name(), s.Version())
	}
	return s, nil
}

// Get returns the parsed schema version (0: the latest).
func (r *SchemaRegistry) Get(ctx context.Context, name string, version int64) (*fields.Schema, int64, error) {
	now := r.now()
	r.mu.Lock()
	if version == 0 {
		if l, ok := r.latest[name]; ok && now.Before(l.until) {
			version = l.version
		}
	}
	if version != 0 {
		if s, ok := r.parsed[schemaVersion{name, version}]; ok {
			r.mu.Unlock()
			return s, version, nil
		}
	}
	r.mu.Unlock()
	fs, err := r.store.GetFieldSchema(ctx, name, version)
	if err != nil {
		return nil, 0, err
	}
	s, err := fields.ParseSchema(fs.Definition)
	if err != nil {
		return nil, 0, fmt.Errorf("stored schema %q version %d: %w", fs.Name, fs.Version, err)
	}
	r.mu.Lock()
	r.remember(schemaVersion{fs.Name, fs.Version}, s)
	if version == 0 {
		r.latest[name] = latestSchema{version: fs.Version, until: now.Add(latestTTL)}
	}
	r.mu.Unlock()
	return s, fs.Version, nil
}

func (r *SchemaRegistry) remember(k schemaVersion, s *fields.Schema) {
	if len(r.parsed) >= maxParsedSchemas {
		clear(r.parsed)
	}
	r.parsed[k] = s
}

func schemaToProto(fs store.FieldSchema, s *fields.Schema) *tresorv1.Schema {
	out := &tresorv1.Schema{Name: fs.Name, Version: fs.Version, Definition: string(fs.Definition), CreateTime: timestamppb.New(fs.CreateTime)}
	if s == nil {
		s, _ = fields.ParseSchema(fs.Definition)
	}
	if s != nil {
		for _, k := range s.Keys() {
			out.Keys = append(out.Keys, k.Name)
		}
	}
	return out
}

func (s *fieldService) PutSchema(ctx context.Context, req *tresorv1.PutSchemaRequest) (*tresorv1.PutSchemaResponse, error) {
	fs, parsed, err := s.schemas.Put(ctx, []byte(req.GetDefinition()))
	if err != nil {
		return nil, s.status(ctx, err)
	}
	s.logger.InfoContext(ctx, "classification schema stored", "schema", fs.Name, "version", fs.Version)
	return &tresorv1.PutSchemaResponse{Schema: schemaToProto(fs, parsed)}, nil
}

func (s *fieldService) GetSchema(ctx context.Context, req *tresorv1.GetSchemaRequest) (*tresorv1.GetSchemaResponse, error) {
	fs, err := s.schemas.store.GetFieldSchema(ctx, req.GetSchema(), req.GetVersion())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &tresorv1.GetSchemaResponse{Schema: schemaToProto(fs, nil)}, nil
}

func (s *fieldService) ListSchemas(ctx context.Context, req *tresorv1.ListSchemasRequest) (*tresorv1.ListSchemasResponse, error) {
	list, next, err := s.schemas.store.ListFieldSchemas(ctx, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	out := &tresorv1.ListSchemasResponse{NextPageToken: next}
	for _, fs := range list {
		out.Schemas = append(out.Schemas, schemaToProto(fs, nil))
	}
	return out, nil
}

func (s *fieldService) ListSchemaVersions(ctx context.Context, req *tresorv1.ListSchemaVersionsRequest) (*tresorv1.ListSchemaVersionsResponse, error) {
	list, err := s.schemas.store.ListFieldSchemaVersions(ctx, req.GetSchema())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	out := &tresorv1.ListSchemaVersionsResponse{}
	for _, fs := range list {
		out.Schemas = append(out.Schemas, schemaToProto(fs, nil))
	}
	return out, nil
}

func (s *fieldService) ProtectDocument(ctx context.Context, req *tresorv1.ProtectDocumentRequest) (*tresorv1.ProtectDocumentResponse, error) {
	return s.protect(ctx, req, true)
}

func (s *fieldService) RevealDocument(ctx context.Context, req *tresorv1.RevealDocumentRequest) (*tresorv1.RevealDocumentResponse, error) {
	return s.reveal(ctx, req, true)
}

func (s *fieldService) ProtectDocuments(stream tresorv1.FieldService_ProtectDocumentsServer) error {
	return serveDocuments(s.gate, stream, func(ctx context.Context, in *tresorv1.ProtectDocumentsRequest, first bool) (*tresorv1.ProtectDocumentsResponse, error) {
		out, err := s.protect(ctx, in.GetRequest(), first)
		return &tresorv1.ProtectDocumentsResponse{Response: out}, err
	})
}

func (s *fieldService) RevealDocuments(stream tresorv1.FieldService_RevealDocumentsServer) error {
	return serveDocuments(s.gate, stream, func(ctx context.Context, in *tresorv1.RevealDocumentsRequest, first bool) (*tresorv1.RevealDocumentsResponse, error) {
		out, err := s.reveal(ctx, in.GetRequest(), first)
		return &tresorv1.RevealDocumentsResponse{Response: out}, err
	})
}

// documentStream is a bidirectional stream of documents.
type documentStream[In, Out any] interface {
	Context() context.Context
	Recv() (*In, error)
	Send(*Out) error
}

// serveDocuments answers each document of a stream in order: handle it,
// write its audit event, then send its result. An error in one document
// ends the stream.
func serveDocuments[In, Out any](gate *chain, stream documentStream[In, Out], handle func(ctx context.Context, in *In, first bool) (*Out, error)) error {
	ctx := stream.Context()
	for first := true; ; first = false {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		out, err := handle(ctx, in, first)
		if err != nil {
			return err
		}
		if err := gate.auditDocument(ctx); err != nil {
			return err
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

// protect protects one document; first is false for the later documents
// of a stream, which pass the rate limiter each.
func (s *fieldService) protect(ctx context.Context, req *tresorv1.ProtectDocumentRequest, first bool) (*tresorv1.ProtectDocumentResponse, error) {
	schema, version, err := s.schemas.Get(ctx, req.GetSchema(), req.GetSchemaVersion())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	if err := s.gate.allowProtect(ctx, schema, first); err != nil {
		return nil, err
	}
	doc, res, err := s.prot.Protect(ctx, schema, []byte(req.GetDocument()), req.GetDocumentId())
	noteFields(ctx, res)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	if err := s.gate.spendSearchable(ctx, schema, res); err != nil {
		return nil, err
	}
	return &tresorv1.ProtectDocumentResponse{
		Document:      string(doc),
		SchemaVersion: version,
		Fields:        outcomesToProto(res.Fields),
		Findings:      findingsToProto(res.Findings),
	}, nil
}

// reveal reveals one document as the policy allows, field by field.
func (s *fieldService) reveal(ctx context.Context, req *tresorv1.RevealDocumentRequest, first bool) (*tresorv1.RevealDocumentResponse, error) {
	schema, _, err := s.schemas.Get(ctx, req.GetSchema(), req.GetSchemaVersion())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	doc := []byte(req.GetDocument())
	decide, err := s.gate.revealDecider(ctx, schema, first)
	if err != nil {
		return nil, err
	}
	if s.gate.budgets != nil {
		// Spend the budgets before anything is decrypted: a pass that
		// decides every field and reveals none tells what would be read.
		if _, _, err := s.prot.Reveal(ctx, schema, doc, req.GetDocumentId(), decide.plan); err != nil {
			return nil, s.status(ctx, err)
		}
		if err := s.gate.spendReveal(ctx, decide); err != nil {
			return nil, err
		}
	}
	out, res, err := s.prot.Reveal(ctx, schema, doc, req.GetDocumentId(), decide.mode)
	noteFields(ctx, res)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &tresorv1.RevealDocumentResponse{Document: string(out), Fields: outcomesToProto(res.Fields)}, nil
}

func outcomesToProto(rs []fields.FieldResult) []*tresorv1.FieldOutcome {
	out := make([]*tresorv1.FieldOutcome, len(rs))
	for i, r := range rs {
		out[i] = &tresorv1.FieldOutcome{Path: r.Path, Tier: r.Tier, Protection: r.Protection.String(), Outcome: r.Outcome, Key: r.Key, KeyVersion: r.Version}
	}
	return out
}

func findingsToProto(fs []fields.Finding) []*tresorv1.Finding {
	out := make([]*tresorv1.Finding, len(fs))
	for i, f := range fs {
		out[i] = &tresorv1.Finding{Path: f.Path, Detector: f.Detector, Action: string(f.Action)}
	}
	return out
}

// status converts a field protection or schema store error.
func (s *fieldService) status(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, fields.ErrReveal):
		// One opaque error, as for Decrypt: never why.
		return status.Error(codes.InvalidArgument, errDecryptMessage)
	case errors.Is(err, errSchemaKeys):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, fields.ErrRejected):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, fields.ErrInvalidSchema), errors.Is(err, fields.ErrInvalidDocument),
		errors.Is(err, fields.ErrDocumentTooLarge), errors.Is(err, fields.ErrDocumentTooDeep),
		errors.Is(err, fields.ErrWrongType):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, "schema not found")
	case errors.Is(err, store.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, "that schema version is already stored; give a changed schema the next version")
	case errors.Is(err, store.ErrConflict):
		return status.Error(codes.FailedPrecondition, "the schema's version is not the next version")
	case errors.Is(err, store.ErrInvalidPageToken):
		return status.Error(codes.InvalidArgument, "invalid page token")
	case errors.Is(err, store.ErrInvalidKey):
		return status.Error(codes.InvalidArgument, "invalid schema name or version")
	case errors.Is(err, store.ErrUnavailable):
		s.logger.ErrorContext(ctx, "key store unavailable", "err", err)
		return status.Error(codes.Unavailable, "key store unavailable; retry later")
	}
	return toStatus(ctx, s.logger, err)
}

// documentGate: the chain's decisions for the document calls.

type callKey struct{}

// callFrom returns the chain's state of the call ctx belongs to.
func callFrom(ctx context.Context) *call {
	cl, _ := ctx.Value(callKey{}).(*call)
	return cl
}

// noteFields adds a document's field outcomes to the call's record.
func noteFields(ctx context.Context, res fields.Result) {
	cl := callFrom(ctx)
	if cl == nil {
		return
	}
	for _, f := range res.Fields {
		switch f.Outcome {
		case fields.OutcomeProtected, fields.OutcomeTokenized:
			cl.rec.Fields.Protected++
		case fields.OutcomeClear:
			cl.rec.Fields.Revealed++
		case fields.OutcomeMasked:
			cl.rec.Fields.Masked++
		case fields.OutcomeWithheld:
			cl.rec.Fields.Withheld++
		case fields.OutcomeRedacted:
			cl.rec.Fields.Redacted++
		}
		if f.Key != "" {
			cl.noteKeyVersion(f.Key, f.Version)
		}
	}
	cl.rec.Fields.Findings += len(res.Findings)
}

// allowProtect decides ProtectDocument on every key the schema uses. A
// stream decides each schema version once; its later documents pass the
// rate limiter one by one.
func (c *chain) allowProtect(ctx context.Context, s *fields.Schema, first bool) error {
	cl := callFrom(ctx)
	if cl == nil {
		return status.Error(codes.Internal, "internal error")
	}
	if !first {
		if err := c.nextDocument(ctx, cl); err != nil {
			return err
		}
	}
	cl.rec.Keys = appendOnce(cl.rec.Keys, "schemas/"+s.Name())
	key := schemaVersion{s.Name(), int64(s.Version())}
	if cl.allowed[key] {
		return nil
	}
	uses := schemaKeyUses(s)
	if len(uses) > maxKeysPerCall {
		return status.Error(codes.InvalidArgument, errTooManyKeys.Error())
	}
	if _, err := c.decide(ctx, cl, methodRule{action: "ProtectDocument"}, uses); err != nil {
		return err
	}
	if cl.allowed == nil {
		cl.allowed = map[schemaVersion]bool{}
	}
	cl.allowed[key] = true
	return nil
}

// revealDecision decides what a caller sees of each field of a schema:
// RevealDocument allows clear text, else RevealMasked the mask, else the
// field stays protected. Decisions are made once per field pattern.
type revealDecision struct {
	c      *chain
	ctx    context.Context
	cl     *call
	schema *fields.Schema
	base   policy.Request
	modes  map[string]fields.RevealMode
	// tiers is each decided field's tier: the higher of its key's
	// sensitivity and its schema tier's.
	tiers map[string]policy.Tier
	// counts is what plan saw: the fields per tier that would be read.
	counts map[string]int64
}

func (c *chain) revealDecider(ctx context.Context, s *fields.Schema, first bool) (*revealDecision, error) {
	cl := callFrom(ctx)
	if cl == nil {
		return nil, status.Error(codes.Internal, "internal error")
	}
	if !first {
		if err := c.nextDocument(ctx, cl); err != nil {
			return nil, err
		}
	}
	d := &revealDecision{c: c, ctx: ctx, cl: cl, schema: s, modes: map[string]fields.RevealMode{}, tiers: map[string]policy.Tier{}}
	cl.rec.Keys = appendOnce(cl.rec.Keys, "schemas/"+s.Name())
	if c.authz != nil {
		pctx, err := c.policyContext(ctx, cl, 0)
		if err != nil {
			return nil, err
		}
		// The anomaly screen sees the schema's keys and its highest tier
		// (a reveal of the document may touch any of them).
		var keys []string
		top := policy.TierPublic
		for _, k := range s.Keys() {
			keys = append(keys, k.Name)
			if a, err := c.keys.KeyAttributes(ctx, k.Name); err == nil {
				if t, err := policy.ParseTier(a.Sensitivity); err == nil && t > top {
					top = t
				}
			}
		}
		for _, t := range s.Tiers() {
			if st, err := policy.ParseTier(string(t.Sensitivity)); err == nil && st > top {
				top = st
			}
		}
		if err := c.screen(ctx, cl, &pctx, keys, top, true); err != nil {
			return nil, err
		}
		d.base = policy.Request{Principal: policyPrincipal(cl.principal), Context: pctx}
	}
	return d, nil
}

// nextDocument admits each document of a stream after the first: the rate
// limit, and the anomaly response in force now (one applied while the
// stream runs stops it).
func (c *chain) nextDocument(ctx context.Context, cl *call) error {
	if err := c.limit(cl, methodRule{class: classCrypto}); err != nil {
		return err
	}
	return c.readmit(ctx, cl)
}

// auditDocument writes the event of one document of a stream before its
// result is sent: a stream fails closed per document, as a unary call
// does. The event carries the document's field counts and key versions;
// the stream's own event, at its end, counts what no document event did.
func (c *chain) auditDocument(ctx context.Context) error {
	cl := callFrom(ctx)
	if cl == nil || c.observer == nil {
		return nil
	}
	rec := *cl.record()
	rec.Code, rec.Message = codes.OK.String(), "one document of a stream"
	rec.Duration = c.now().Sub(cl.start)
	if err := c.observer.ObserveCall(ctx, &rec); err != nil {
		c.logger.ErrorContext(ctx, "document not audited", "method", cl.method, "request_id", cl.rec.RequestID, "err", err)
		return status.Error(codes.Unavailable, "audit log unavailable: the document's result was withheld; retry later")
	}
	cl.rec.Fields, cl.rec.KeyVersions, cl.used = FieldCounts{}, nil, nil
	return nil
}

func appendOnce(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// mode decides one field.
func (d *revealDecision) mode(ref fields.FieldRef) (fields.RevealMode, error) {
	if m, ok := d.modes[ref.Pattern]; ok {
		return m, nil
	}
	c := d.c
	tier, a, err := c.fieldTier(d.ctx, ref.Key, ref.Sensitivity)
	if err != nil {
		return 0, err
	}
	d.tiers[ref.Pattern] = tier
	d.cl.rec.Keys = appendOnce(d.cl.rec.Keys, ref.Key)
	if c.authz == nil {
		d.modes[ref.Pattern] = fields.RevealClear
		d.cl.rec.Decision = "allow"
		return fields.RevealClear, nil
	}
	r := d.base
	r.Resource = policy.Resource{Kind: policy.ResourceField, Name: ref.Key, Tier: tier, Owner: a.Owner, Labels: a.Labels,
		Schema: d.schema.Name(), Path: ref.Pattern, Classification: ref.Tier}
	r.Context.Sensitivity = tier
	mode := fields.RevealWithheld
	for _, try := range []struct {
		action string
		mode   fields.RevealMode
	}{{"RevealDocument", fields.RevealClear}, {"RevealMasked", fields.RevealMasked}} {
		r.Action = try.action
		dec := c.authz.Decide(r)
		d.cl.rec.Policies = appendAll(d.cl.rec.Policies, dec.Policies)
		if dec.Allow {
			mode = try.mode
			break
		}
	}
	switch {
	case mode != fields.RevealWithheld:
		d.cl.rec.Decision = "allow"
	case d.cl.rec.Decision == "":
		d.cl.rec.Decision = "deny"
		c.metrics.denied("RevealDocument")
	}
	d.modes[ref.Pattern] = mode
	return mode, nil
}

func appendAll(list, more []string) []string {
	for _, s := range more {
		list = appendOnce(list, s)
	}
	return list
}

// plan decides a field and counts it, revealing nothing.
func (d *revealDecision) plan(ref fields.FieldRef) (fields.RevealMode, error) {
	m, err := d.mode(ref)
	if err != nil {
		return 0, err
	}
	if m != fields.RevealWithheld {
		if d.counts == nil {
			d.counts = map[string]int64{}
		}
		d.counts[d.tiers[ref.Pattern].String()]++
	}
	return fields.RevealWithheld, nil
}

// spendReveal counts the fields a reveal will read against the caller's
// decrypt budgets, tier by tier.
func (c *chain) spendReveal(ctx context.Context, d *revealDecision) error {
	return c.spend(ctx, d.cl, budgetDecrypt, d.counts)
}

// fieldTier is the tier a field is decided and counted at: the higher of
// its schema tier's sensitivity and its key's (a schema cannot make a field
// less sensitive than its key), and the key's attributes. A missing key
// counts as restricted with no owner, as in chain.decide.
func (c *chain) fieldTier(ctx context.Context, key string, schema fields.Sensitivity) (policy.Tier, envelope.KeyAttributes, error) {
	tier, err := policy.ParseTier(string(schema))
	if err != nil {
		tier = policy.TierRestricted
	}
	a, err := c.keys.KeyAttributes(ctx, key)
	switch {
	case err == nil:
	case errors.Is(err, envelope.ErrKeyNotFound), errors.Is(err, envelope.ErrInvalidKeyName):
		a = envelope.AttributesOf(key, nil)
	default:
		return 0, a, toStatus(ctx, c.logger, err)
	}
	if kt, err := policy.ParseTier(a.Sensitivity); err == nil && kt > tier {
		tier = kt
	}
	return tier, a, nil
}

// spendSearchable counts the searchable values a protect produced
// (deterministic ciphertexts, FF1 tokens, blind indexes: the same input
// always gives the same output, so a caller could protect candidate values
// and match them against stolen ones) against the caller's "searchable"
// budgets, each field at the higher of its key's and its tier's
// sensitivity. It runs before the document is returned: past the budget,
// nothing is.
func (c *chain) spendSearchable(ctx context.Context, s *fields.Schema, res fields.Result) error {
	if c.budgets == nil {
		return nil
	}
	cl := callFrom(ctx)
	if cl == nil {
		return status.Error(codes.Internal, "internal error")
	}
	n := map[string]int64{}
	for _, f := range res.Fields {
		switch f.Protection {
		case fields.ProtectionDeterministic, fields.ProtectionTokenize, fields.ProtectionBlindIndex:
		default:
			continue
		}
		if f.Outcome != fields.OutcomeProtected && f.Outcome != fields.OutcomeTokenized {
			continue
		}
		t, _ := s.Tier(f.Tier)
		tier, _, err := c.fieldTier(ctx, f.Key, t.Sensitivity)
		if err != nil {
			return err
		}
		n[tier.String()]++
	}
	return c.spend(ctx, cl, budgetSearchable, n)
}
