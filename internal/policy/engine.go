package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/ast"
	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
	"github.com/cedar-policy/cedar-go/x/exp/schema"
	"github.com/cedar-policy/cedar-go/x/exp/schema/resolved"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

// DefaultSchemaFile is the schema's file name in the policy directory, used
// when Options.SchemaFile is empty.
const DefaultSchemaFile = "tresor.cedarschema"

// Options says where the schema and the policies are.
type Options struct {
	// SchemaFile is the Cedar schema, in the human syntax, or in the JSON
	// syntax when the name ends in ".json". Default: PolicyDir/tresor.cedarschema.
	SchemaFile string
	// PolicyDir holds the policies: every *.cedar file in it (not in its
	// subdirectories), read in name order.
	PolicyDir string
	// Location is the business time zone: policies see the wall clock there
	// as context.local_time and context.weekday. Default: UTC.
	Location *time.Location
	// FS, when set, is where SchemaFile and PolicyDir are (slash-separated
	// paths within it, such as "." for its root): an embedded policy set.
	// Nil means the operating system's files.
	FS fs.FS
}

// readFile and readDir read from opts.FS, or the operating system's files.
func (opts Options) readFile(name string) ([]byte, error) {
	if opts.FS != nil {
		return fs.ReadFile(opts.FS, name)
	}
	return os.ReadFile(name)
}

func (opts Options) readDir(name string) ([]fs.DirEntry, error) {
	if opts.FS != nil {
		return fs.ReadDir(opts.FS, name)
	}
	return os.ReadDir(name)
}

// join joins path elements as opts.FS or the operating system wants them.
func (opts Options) join(elem ...string) string {
	if opts.FS != nil {
		return path.Join(elem...)
	}
	return filepath.Join(elem...)
}

// Engine decides requests against one validated policy set. It is immutable
// and safe for concurrent use.
type Engine struct {
	loc      *time.Location
	actions  map[string]*action // callable actions by name
	names    []string           // sorted callable action names
	entities map[types.EntityUID]types.Entity
	forbids  map[types.PolicyID]bool // every forbid policy
	ids      []string                // every policy id, in load order

	principals, resources entityCache
	contexts              memo // recent context records
}

// action is a callable action: one the schema declares with appliesTo.
type action struct {
	uid      types.EntityUID
	kinds    uint8      // bit 1<<k set when it applies to ResourceKind k
	policies policyList // the policies whose action scope can match it
}

// appliesTo reports whether the action applies to resources of kind k.
func (a *action) appliesTo(k ResourceKind) bool { return a.kinds&(1<<k) != 0 }

// resourceKinds maps the Cedar resource types to the kinds Decide builds.
var resourceKinds = map[types.EntityType]ResourceKind{
	typeKey:     ResourceKey,
	typeService: ResourceService,
	typeField:   ResourceField,
	typeSchema:  ResourceSchema,
}

type namedPolicy struct {
	id     types.PolicyID
	policy *cedar.Policy
}

// policyList is a cedar.PolicyIterator over a slice, in load order.
type policyList []namedPolicy

func (l policyList) All() iter.Seq2[types.PolicyID, *cedar.Policy] {
	return func(yield func(types.PolicyID, *cedar.Policy) bool) {
		for _, p := range l {
			if !yield(p.id, p.policy) {
				return
			}
		}
	}
}

// Load reads the schema and every *.cedar file in opts.PolicyDir, validates
// every policy against the schema in strict mode, and returns an Engine.
//
// It refuses the whole set with an error wrapping ErrInvalidPolicy when a
// file does not parse, a policy does not validate (the error names the file,
// the policy and the reason, for every such policy), two policies share an
// @id, or the directory holds no policy. It refuses a schema that does not
// parse or that does not describe the model Decide builds (Tresor::Principal,
// Tresor::Key, Tresor::Service and the context record) with ErrInvalidSchema.
func Load(opts Options) (*Engine, error) {
	if opts.PolicyDir == "" {
		return nil, fmt.Errorf("%w: no policy directory", ErrInvalidPolicy)
	}
	schemaFile := opts.SchemaFile
	if schemaFile == "" {
		schemaFile = opts.join(opts.PolicyDir, DefaultSchemaFile)
	}
	loc := opts.Location
	if loc == nil {
		loc = time.UTC
	}

	rs, err := loadSchema(opts, schemaFile)
	if err != nil {
		return nil, err
	}
	e, err := newEngine(rs, loc)
	if err != nil {
		return nil, err
	}
	v := validate.New(rs, validate.WithStrict())
	if err := checkModel(v, rs, e); err != nil {
		return nil, err
	}

	files, err := policyFiles(opts, opts.PolicyDir)
	if err != nil {
		return nil, err
	}
	var all policyList
	var errs []error
	seen := make(map[types.PolicyID]string)
	for _, name := range files {
		b, err := opts.readFile(opts.join(opts.PolicyDir, name))
		if err != nil {
			return nil, fmt.Errorf("policy: read %s: %w", name, err)
		}
		list, err := cedar.NewPolicyListFromBytes(name, b)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: %s does not parse: %w", ErrInvalidPolicy, name, err))
			continue
		}
		for i, p := range list {
			id := types.PolicyID(fmt.Sprintf("%s:%d", name, i))
			if a, ok := p.Annotations()["id"]; ok {
				id = types.PolicyID(a)
			}
			where := fmt.Sprintf("%s, policy %d (%q, line %d)", name, i, id, p.Position().Line)
			if prev, dup := seen[id]; dup {
				errs = append(errs, fmt.Errorf("%w: %s: id already used by %s", ErrInvalidPolicy, where, prev))
				continue
			}
			seen[id] = where
			if err := v.Policy("", (*xast.Policy)(p.AST())); err != nil {
				errs = append(errs, fmt.Errorf("%w: %s does not validate against %s: %s",
					ErrInvalidPolicy, where, filepath.Base(schemaFile), oneLine(err)))
				continue
			}
			all = append(all, namedPolicy{id: id, policy: p})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("%w: no policy in %s", ErrInvalidPolicy, opts.PolicyDir)
	}
	e.index(all)
	return e, nil
}

func loadSchema(opts Options, file string) (*resolved.Schema, error) {
	b, err := opts.readFile(file)
	if err != nil {
		return nil, fmt.Errorf("policy: read schema: %w", err)
	}
	var s schema.Schema
	s.SetFilename(filepath.Base(file))
	if strings.HasSuffix(file, ".json") {
		err = s.UnmarshalJSON(b)
	} else {
		err = s.UnmarshalCedar(b)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s does not parse: %w", ErrInvalidSchema, filepath.Base(file), err)
	}
	rs, err := s.Resolve()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidSchema, filepath.Base(file), err)
	}
	return rs, nil
}

// policyFiles returns the names of the *.cedar files in dir, sorted.
func policyFiles(opts Options, dir string) ([]string, error) {
	entries, err := opts.readDir(dir)
	if err != nil {
		return nil, fmt.Errorf("policy: read policy directory: %w", err)
	}
	var names []string
	for _, de := range entries {
		if de.Type().IsRegular() && strings.HasSuffix(de.Name(), ".cedar") {
			names = append(names, de.Name())
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: no *.cedar file in %s", ErrInvalidPolicy, dir)
	}
	return names, nil
}

// newEngine indexes the schema's actions: the callable ones (those with
// appliesTo, in namespace Tresor) by name, and every action entity, groups
// included, for `action in` checks.
func newEngine(rs *resolved.Schema, loc *time.Location) (*Engine, error) {
	e := &Engine{
		loc:      loc,
		actions:  make(map[string]*action),
		entities: make(map[types.EntityUID]types.Entity, len(rs.Actions)),
		forbids:  make(map[types.PolicyID]bool),
	}
	for uid, a := range rs.Actions {
		e.entities[uid] = a.Entity
		if uid.Type != typeAction || a.AppliesTo == nil {
			continue
		}
		ac := &action{uid: uid}
		for _, rt := range a.AppliesTo.Resources {
			kind, ok := resourceKinds[rt]
			if !ok {
				return nil, fmt.Errorf("%w: action %s applies to resource type %s; this package builds only %s, %s, %s and %s",
					ErrInvalidSchema, uid.ID, rt, typeKey, typeService, typeField, typeSchema)
			}
			ac.kinds |= 1 << kind
		}
		if !slices.Contains(a.AppliesTo.Principals, typePrincipal) {
			return nil, fmt.Errorf("%w: action %s does not apply to principal type %s", ErrInvalidSchema, uid.ID, typePrincipal)
		}
		e.actions[string(uid.ID)] = ac
		e.names = append(e.names, string(uid.ID))
	}
	if len(e.actions) == 0 {
		return nil, fmt.Errorf("%w: no action in namespace Tresor applies to anything", ErrInvalidSchema)
	}
	slices.Sort(e.names)
	return e, nil
}

// index gives every action the policies whose action scope can match it.
// Skipping the others is exact: Cedar evaluates the scope before the
// conditions, so a policy whose action scope does not match is false and
// cannot fail.
func (e *Engine) index(all policyList) {
	for _, p := range all {
		e.ids = append(e.ids, string(p.id))
		if p.policy.Effect() == cedar.Forbid {
			e.forbids[p.id] = true
		}
	}
	responses := types.EntityUID{Type: typeAction, ID: "anomaly_response"}
	for _, a := range e.actions {
		response := e.actionIn(a.uid, responses)
		for _, p := range all {
			scope := p.policy.AST().Action
			if !e.scopeMatches(scope, a.uid) {
				continue
			}
			if _, any := scope.(xast.ScopeTypeAll); any && response {
				// A permit on an anomaly response applies the response,
				// so only policies that name the responses decide them:
				// `permit (principal, action, resource)` for a trusted
				// workload must not also block it.
				continue
			}
			if _, eq := scope.(xast.ScopeTypeEq); !eq {
				// Compile a copy whose action scope is `action == <this
				// action>`: equivalent here, and it spares Cedar walking
				// the action hierarchy (and allocating) on every call.
				cp := *(*xast.Policy)(p.policy.AST())
				cp.Action = xast.ScopeTypeEq{Entity: a.uid}
				p.policy = cedar.NewPolicyFromAST((*ast.Policy)(&cp))
			}
			a.policies = append(a.policies, p)
		}
	}
}

func (e *Engine) scopeMatches(scope xast.IsActionScopeNode, uid types.EntityUID) bool {
	switch s := scope.(type) {
	case xast.ScopeTypeAll:
		return true
	case xast.ScopeTypeEq:
		return s.Entity == uid
	case xast.ScopeTypeIn:
		return e.actionIn(uid, s.Entity)
	case xast.ScopeTypeInSet:
		return slices.ContainsFunc(s.Entities, func(g types.EntityUID) bool { return e.actionIn(uid, g) })
	}
	return true // an unknown scope form: keep the policy, let Cedar decide
}

// actionIn reports whether action uid is group or a transitive member of it.
func (e *Engine) actionIn(uid, group types.EntityUID) bool {
	seen := map[types.EntityUID]bool{}
	todo := []types.EntityUID{uid}
	for len(todo) > 0 {
		u := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if u == group {
			return true
		}
		if seen[u] {
			continue
		}
		seen[u] = true
		for p := range e.entities[u].Parents.All() {
			todo = append(todo, p)
		}
	}
	return false
}

// HasAction reports whether the schema declares name as a callable action
// (one with appliesTo; action groups such as "reveal" are not callable).
func (e *Engine) HasAction(name string) bool {
	_, ok := e.actions[name]
	return ok
}

// Actions returns the callable actions' names, sorted.
func (e *Engine) Actions() []string { return slices.Clone(e.names) }

// PolicyIDs returns the ids of the loaded policies in load order (files by
// name, policies in file order).
func (e *Engine) PolicyIDs() []string { return slices.Clone(e.ids) }

// perAction is the suffix the validator repeats for each action a policy
// covers, as in "... in context for Tresor::Action::\"Decrypt\"".
var perAction = regexp.MustCompile(` for [A-Za-z_:]*Action::"[^"]*"$`)

// oneLine joins a possibly multi-error's messages with "; ", saying each
// distinct reason once rather than once per action.
func oneLine(err error) string {
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(err.Error()), "\n") {
		line = perAction.ReplaceAllString(strings.TrimSpace(line), "")
		if line != "" && !slices.Contains(out, line) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "; ")
}
