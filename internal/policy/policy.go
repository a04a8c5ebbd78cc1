// Package policy decides whether a call to tresor is allowed. The decision
// comes from Cedar policies (https://www.cedarpolicy.com) checked against a
// Cedar schema; whatever no policy permits is denied, and a forbid overrides
// every permit.
//
// Reach for [Load] to read a schema and a directory of *.cedar files into an
// [Engine], then call [Engine.Decide] once per call. Every policy is validated
// against the schema (strict mode) when it is loaded, and Load refuses the
// whole set if one policy does not validate. In a server, use [NewReloading]
// and [Reloading.Run] instead: they keep the last good Engine and replace it
// when the files change.
//
// The Cedar model (entity types, attributes, context, actions) is described
// in examples/policies/tresor.cedarschema; examples/policies holds a coherent
// set of policies for a bank.
package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cedar-policy/cedar-go/types"
)

var (
	// ErrInvalidPolicy means a policy file does not parse, a policy does not
	// validate against the schema, or the policy directory holds no policy.
	ErrInvalidPolicy = errors.New("policy: invalid policy")
	// ErrInvalidSchema means the schema file does not parse or does not
	// describe the model this package builds requests for.
	ErrInvalidSchema = errors.New("policy: invalid schema")
	// ErrInvalidTier means a string names no tier.
	ErrInvalidTier = errors.New("policy: invalid tier")
	// ErrInvalidTransactionValue means a transaction value is not a
	// non-negative decimal with at most four fractional digits in Cedar's
	// decimal range.
	ErrInvalidTransactionValue = errors.New("policy: invalid transaction value")
)

// Tier is a data-sensitivity tier. The zero value is invalid.
type Tier int

// The tiers, from least to most sensitive. Policies see a tier as a string
// (tier, sensitivity) and as its level 1..4 (tier_level, sensitivity_level).
const (
	TierPublic Tier = iota + 1
	TierInternal
	TierConfidential
	TierRestricted
)

var tierNames = [...]string{
	TierPublic:       "public",
	TierInternal:     "internal",
	TierConfidential: "confidential",
	TierRestricted:   "restricted",
}

// ParseTier returns the tier named s: "public", "internal", "confidential"
// or "restricted".
func ParseTier(s string) (Tier, error) {
	for t := TierPublic; t <= TierRestricted; t++ {
		if tierNames[t] == s {
			return t, nil
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrInvalidTier, s)
}

// String returns the tier's name, or Tier(n) for an invalid tier.
func (t Tier) String() string {
	if t.valid() {
		return tierNames[t]
	}
	return "Tier(" + strconv.Itoa(int(t)) + ")"
}

func (t Tier) valid() bool { return t >= TierPublic && t <= TierRestricted }

// Principal is the authenticated caller.
type Principal struct {
	// Workload is the caller's workload identity: a SPIFFE ID or the
	// certificate's distinguished name. It is never empty for a caller that
	// got past mTLS; Decide denies a principal without one.
	Workload string
	// Subject is the access token's subject, "" when the call carried no token.
	Subject string
	// Roles and Scopes come from the access token.
	Roles, Scopes []string
}

// ResourceKind says what a call acts on. The zero value is invalid.
type ResourceKind int

// The resource kinds.
const (
	// ResourceKey is one named key (Cedar type Tresor::Key).
	ResourceKey ResourceKind = iota + 1
	// ResourceService is the service itself, for calls that touch no key
	// (Cedar type Tresor::Service).
	ResourceService
	// ResourceField is one classified field of a document (Cedar type
	// Tresor::Field), decided on reveal: it carries its key's name, owner
	// and labels, the tier its classification gives it, its schema and its
	// path.
	ResourceField
	// ResourceSchema is a classification schema (Cedar type Tresor::Schema).
	ResourceSchema
)

// String returns "key", "service", or ResourceKind(n).
func (k ResourceKind) String() string {
	switch k {
	case ResourceKey:
		return "key"
	case ResourceService:
		return "service"
	case ResourceField:
		return "field"
	case ResourceSchema:
		return "schema"
	}
	return "ResourceKind(" + strconv.Itoa(int(k)) + ")"
}

// ServiceName is the Name of the service resource.
const ServiceName = "tresor"

// Resource is what a call acts on.
type Resource struct {
	Kind ResourceKind
	// Name is the key id, like "payments-pan", a field's key id, a schema's
	// name, or ServiceName.
	Name string
	// Tier, Owner and Labels describe a key or a field's key; they are
	// ignored for the service and a schema. A key and a field must have a
	// valid tier: Decide denies one without. A field's tier is the
	// sensitivity its classification gives it.
	Tier   Tier
	Owner  string
	Labels map[string]string
	// Schema, Path and Classification describe a field: the schema's name,
	// the path pattern that classified it (like "$.accounts[*].iban") and
	// the schema's tier name for it (like "account").
	Schema, Path, Classification string
}

// The values of Context.AuthStrength.
const (
	AuthMTLS       = "mtls"        // client certificate only
	AuthToken      = "token"       // client certificate and a bearer access token
	AuthBoundToken = "bound_token" // client certificate and a token bound to it (RFC 8705)
)

// Context describes the circumstances of a call.
type Context struct {
	// SourceIP is the peer's address. Required; an IPv4-mapped IPv6
	// address is treated as the IPv4 address.
	SourceIP netip.Addr
	// Time is the instant of the call. Required.
	Time time.Time
	// AuthStrength is AuthMTLS, AuthToken or AuthBoundToken.
	AuthStrength string
	// TransactionValue is "" when the caller declared none, else a decimal
	// such as "12500.00" (see ParseTransactionValue).
	TransactionValue string
	// Purpose is "" when the caller declared none.
	Purpose string
	// Sensitivity is the highest tier of the data the call touches; zero
	// when the call touches no classified data (policies then see
	// sensitivity "" and sensitivity_level 0).
	Sensitivity Tier
	// Risk is the anomaly score of the call, 0 (usual) to 100; policies see
	// it as context.risk. Values outside 0..100 are clamped.
	Risk int64
}

// Request is one call to decide on.
type Request struct {
	Principal Principal
	// Action is the name of a schema action, like "Decrypt".
	Action   string
	Resource Resource
	Context  Context
}

// Decision is the outcome of Decide.
type Decision struct {
	Allow bool
	// Policies are the ids of the policies that determined the decision:
	// the permits that matched when allowed, the forbids that matched when
	// denied, none when nothing matched. An id is the policy's @id
	// annotation, else "file.cedar:N" with N the policy's 0-based index in
	// its file.
	Policies []string
	// Errors describe why a request could not be evaluated or why a policy
	// failed to evaluate. They name policies, attributes' kinds and actions,
	// never values from the request.
	Errors []string
}

// maxTransactionIntDigits bounds the integer part before Cedar's own range
// check (the largest decimal is 922337203685477.5807).
const maxTransactionIntDigits = 15

// ParseTransactionValue checks that s is a non-negative decimal with at most
// four fractional digits ("12500", "12500.5", "12500.00") within Cedar's
// decimal range, and returns it in Cedar's canonical form ("12500.0",
// "12500.5"). Signs, exponents, spaces and separators are refused. The error
// wraps ErrInvalidTransactionValue and does not repeat the value.
func ParseTransactionValue(s string) (string, error) {
	d, err := parseTransactionValue(s)
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

func parseTransactionValue(s string) (types.Decimal, error) {
	intPart, frac, hasDot := strings.Cut(s, ".")
	switch {
	case intPart == "":
		return types.Decimal{}, fmt.Errorf("%w: no integer part", ErrInvalidTransactionValue)
	case !allDigits(intPart):
		return types.Decimal{}, fmt.Errorf("%w: integer part is not decimal digits", ErrInvalidTransactionValue)
	case len(strings.TrimLeft(intPart, "0")) > maxTransactionIntDigits:
		return types.Decimal{}, fmt.Errorf("%w: out of range", ErrInvalidTransactionValue)
	case hasDot && (frac == "" || !allDigits(frac)):
		return types.Decimal{}, fmt.Errorf("%w: fractional part is not decimal digits", ErrInvalidTransactionValue)
	case len(frac) > 4:
		return types.Decimal{}, fmt.Errorf("%w: more than 4 fractional digits", ErrInvalidTransactionValue)
	}
	if !hasDot {
		s += ".0"
	}
	d, err := types.ParseDecimal(s)
	if err != nil {
		return types.Decimal{}, fmt.Errorf("%w: out of range", ErrInvalidTransactionValue)
	}
	return d, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
