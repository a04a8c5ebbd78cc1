package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

const examplesDir = "../../examples/policies"

// cet is the business time zone of the example tests: local = UTC+1.
var cet = time.FixedZone("CET", 60*60)

const (
	paymentsWL  = "spiffe://bank.example/payments"
	ledgerWL    = "spiffe://bank.example/ledger"
	analyticsWL = "spiffe://bank.example/analytics"
	adminWL     = "spiffe://bank.example/kms-console"
)

var (
	payments  = Principal{Workload: paymentsWL, Subject: "svc-payments", Scopes: []string{"kms"}}
	paymentsM = Principal{Workload: paymentsWL} // certificate only
	approver  = Principal{Workload: paymentsWL, Subject: "carol", Roles: []string{"payments-approver"}}
	ledger    = Principal{Workload: ledgerWL, Subject: "svc-ledger"}
	analyst   = Principal{Workload: analyticsWL, Subject: "alice", Roles: []string{"analyst"}}
	keyAdmin  = Principal{Workload: adminWL, Subject: "bob", Roles: []string{"key-admin", "auditor"}}
)

var (
	paymentsPAN = Resource{Kind: ResourceKey, Name: "payments-pan", Tier: TierRestricted, Owner: paymentsWL,
		Labels: map[string]string{"app": "payments", "env": "prod"}}
	paymentsRef  = Resource{Kind: ResourceKey, Name: "payments-ref", Tier: TierConfidential, Owner: paymentsWL}
	ledgerKey    = Resource{Kind: ResourceKey, Name: "ledger-entries", Tier: TierConfidential, Owner: ledgerWL}
	ledgerPublic = Resource{Kind: ResourceKey, Name: "ledger-public", Tier: TierInternal, Owner: ledgerWL}
	ledgerSecret = Resource{Kind: ResourceKey, Name: "ledger-secret", Tier: TierRestricted, Owner: ledgerWL}
	analyticsKey = Resource{Kind: ResourceKey, Name: "analytics-export", Tier: TierRestricted, Owner: analyticsWL}
	service      = Resource{Kind: ResourceService, Name: ServiceName}
)

// wednesday returns Wednesday 2026-03-04 at hh:mm in CET.
func wednesday(hh, mm int) time.Time { return time.Date(2026, 3, 4, hh, mm, 0, 0, cet) }

func ctxAt(t time.Time, auth, ip string) Context {
	return Context{SourceIP: netip.MustParseAddr(ip), Time: t, AuthStrength: auth, Sensitivity: TierPublic}
}

// office is a call at 10:00 local on a Wednesday, with a token, from an application subnet.
func office() Context { return ctxAt(wednesday(10, 0), AuthToken, "10.0.5.5") }

func withValue(c Context, v string) Context     { c.TransactionValue = v; return c }
func withIP(c Context, ip string) Context       { c.SourceIP = netip.MustParseAddr(ip); return c }
func withSensitivity(c Context, t Tier) Context { c.Sensitivity = t; return c }

func loadExamples(t testing.TB) *Engine {
	t.Helper()
	e, err := Load(Options{PolicyDir: examplesDir, Location: cet})
	if err != nil {
		t.Fatalf("Load(%s) err = %v, want nil", examplesDir, err)
	}
	return e
}

func TestCalendar(t *testing.T) {
	if got := wednesday(10, 0).Weekday(); got != time.Wednesday {
		t.Fatalf("wednesday() is a %v", got)
	}
}

type decideCase struct {
	name  string
	req   Request
	allow bool
	by    []string // the Decision's Policies, exactly
}

func runDecide(t *testing.T, e *Engine, tests []decideCase) {
	t.Helper()
	verdict := map[bool]string{true: "allow", false: "deny"}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := e.Decide(tc.req)
			if d.Allow != tc.allow {
				t.Errorf("Decide(%s) = %s (policies %v, errors %v), want %s",
					tc.name, verdict[d.Allow], d.Policies, d.Errors, verdict[tc.allow])
			}
			if !slices.Equal(d.Policies, tc.by) {
				t.Errorf("Decide(%s) policies = %q, want %q", tc.name, d.Policies, tc.by)
			}
			if len(d.Errors) > 0 {
				t.Errorf("Decide(%s) errors = %q, want none", tc.name, d.Errors)
			}
		})
	}
}

func req(p Principal, action string, r Resource, c Context) Request {
	return Request{Principal: p, Action: action, Resource: r, Context: c}
}

const (
	ownerCrypto     = "owner-protect-reveal"
	analystPermit   = "analyst-reveal-confidential"
	analystForbid   = "analyst-never-restricted"
	hoursForbid     = "restricted-reveal-business-hours"
	approvalForbid  = "large-transaction-needs-approver"
	adminPermit     = "key-admin-administer"
	adminForbid     = "administer-only-key-admin-from-admin-network"
	adminMetadata   = "key-admin-read-metadata"
	healthPermit    = "any-principal-check-health"
	ownerMetadata   = "owner-read-metadata"
	adminNetAddress = "10.20.1.1"
	adminNoUse      = "key-admin-never-uses-keys"
	relabelDown     = "relabel-never-down-a-tier"
	reencryptDown   = "reencrypt-never-down-a-tier"
)

func one(id string) []string { return []string{id} }

// Rule 1: workloads encrypt and decrypt with their own keys only.
func TestExampleOwnerCrypto(t *testing.T) {
	runDecide(t, loadExamples(t), []decideCase{
		{"payments, Encrypt, own restricted key", req(payments, "Encrypt", paymentsPAN, office()), true, one(ownerCrypto)},
		{"payments, Decrypt, own restricted key", req(payments, "Decrypt", paymentsPAN, office()), true, one(ownerCrypto)},
		{"payments, GenerateDataKey, own key", req(paymentsM, "GenerateDataKey", paymentsRef, office()), true, one(ownerCrypto)},
		{"payments, ReEncrypt, own key", req(payments, "ReEncryptTo", paymentsRef, office()), true, one(ownerCrypto)},
		{"payments, ReEncryptFrom, own key", req(payments, "ReEncryptFrom", paymentsRef, office()), true, one(ownerCrypto)},
		{"payments, Decrypt, ledger's key", req(payments, "Decrypt", ledgerKey, office()), false, nil},
		{"payments, Encrypt, ledger's key", req(payments, "Encrypt", ledgerKey, office()), false, nil},
		{"ledger, Decrypt, payments key", req(ledger, "Decrypt", paymentsRef, office()), false, nil},
		{"payments, RotateKey, own key", req(payments, "RotateKey", paymentsRef, office()), false, one(adminForbid)},
	})
}

// Rule 2: analysts reveal up to confidential, never restricted.
func TestExampleAnalysts(t *testing.T) {
	runDecide(t, loadExamples(t), []decideCase{
		{"analyst, Decrypt, confidential key", req(analyst, "Decrypt", ledgerKey, withSensitivity(office(), TierConfidential)), true, one(analystPermit)},
		{"analyst, ReEncryptFrom, internal key", req(analyst, "ReEncryptFrom", ledgerPublic, office()), true, one(analystPermit)},
		{"analyst, Decrypt, restricted key", req(analyst, "Decrypt", ledgerSecret, office()), false, one(analystForbid)},
		{"analyst, ReEncryptFrom, confidential key, restricted data", req(analyst, "ReEncryptFrom", ledgerKey, withSensitivity(office(), TierRestricted)), false, one(analystForbid)},
		{"analyst, Decrypt, own restricted key", req(analyst, "Decrypt", analyticsKey, office()), false, one(analystForbid)},
		{"analyst, Encrypt, confidential key", req(analyst, "Encrypt", ledgerKey, office()), false, nil},
		{"analyst, GetKey, confidential key", req(analyst, "GetKey", ledgerKey, office()), false, nil},
	})
}

// Rule 3: restricted reveals outside business hours need a bound token.
func TestExampleRestrictedHours(t *testing.T) {
	at := func(tm time.Time, auth string) Context { return ctxAt(tm, auth, "10.0.5.5") }
	saturday := time.Date(2026, 3, 7, 10, 0, 0, 0, cet)
	sunday := time.Date(2026, 3, 8, 10, 0, 0, 0, cet)
	utc1730 := time.Date(2026, 3, 4, 17, 30, 0, 0, time.UTC) // 18:30 in CET
	utc0730 := time.Date(2026, 3, 4, 7, 30, 0, 0, time.UTC)  // 08:30 in CET
	runDecide(t, loadExamples(t), []decideCase{
		{"Decrypt restricted at 20:00 local, token", req(payments, "Decrypt", paymentsPAN, at(wednesday(20, 0), AuthToken)), false, one(hoursForbid)},
		{"Decrypt restricted at 20:00 local, mtls", req(paymentsM, "Decrypt", paymentsPAN, at(wednesday(20, 0), AuthMTLS)), false, one(hoursForbid)},
		{"Decrypt restricted at 20:00 local, bound_token", req(payments, "Decrypt", paymentsPAN, at(wednesday(20, 0), AuthBoundToken)), true, one(ownerCrypto)},
		{"Decrypt restricted at 10:00 local, token", req(payments, "Decrypt", paymentsPAN, at(wednesday(10, 0), AuthToken)), true, one(ownerCrypto)},
		{"Decrypt restricted at 08:00 local", req(payments, "Decrypt", paymentsPAN, at(wednesday(8, 0), AuthToken)), true, one(ownerCrypto)},
		{"Decrypt restricted at 07:59 local", req(payments, "Decrypt", paymentsPAN, at(wednesday(7, 59), AuthToken)), false, one(hoursForbid)},
		{"Decrypt restricted at 17:59 local", req(payments, "Decrypt", paymentsPAN, at(wednesday(17, 59), AuthToken)), true, one(ownerCrypto)},
		{"Decrypt restricted at 18:00 local", req(payments, "Decrypt", paymentsPAN, at(wednesday(18, 0), AuthToken)), false, one(hoursForbid)},
		{"Decrypt restricted at 17:30 UTC = 18:30 local", req(payments, "Decrypt", paymentsPAN, at(utc1730, AuthToken)), false, one(hoursForbid)},
		{"Decrypt restricted at 07:30 UTC = 08:30 local", req(payments, "Decrypt", paymentsPAN, at(utc0730, AuthToken)), true, one(ownerCrypto)},
		{"Decrypt restricted on Saturday 10:00", req(payments, "Decrypt", paymentsPAN, at(saturday, AuthToken)), false, one(hoursForbid)},
		{"Decrypt restricted on Sunday 10:00", req(payments, "Decrypt", paymentsPAN, at(sunday, AuthToken)), false, one(hoursForbid)},
		{"Decrypt restricted on Saturday, bound_token", req(payments, "Decrypt", paymentsPAN, at(saturday, AuthBoundToken)), true, one(ownerCrypto)},
		{"ReEncryptFrom, restricted data at 20:00, token", req(payments, "ReEncryptFrom", paymentsRef, withSensitivity(at(wednesday(20, 0), AuthToken), TierRestricted)), false, one(hoursForbid)},
		{"Decrypt confidential at 20:00, token", req(payments, "Decrypt", paymentsRef, at(wednesday(20, 0), AuthToken)), true, one(ownerCrypto)},
		{"Encrypt restricted at 20:00, token", req(payments, "Encrypt", paymentsPAN, at(wednesday(20, 0), AuthToken)), true, one(ownerCrypto)},
	})
}

// Rule 4: declared transaction values above 10000.00 need a payments-approver token.
func TestExampleTransactionApproval(t *testing.T) {
	approverNoSubject := approver
	approverNoSubject.Subject = ""
	runDecide(t, loadExamples(t), []decideCase{
		{"Encrypt 10000.01 without approver", req(payments, "Encrypt", paymentsRef, withValue(office(), "10000.01")), false, one(approvalForbid)},
		{"Encrypt 10000.01 with approver", req(approver, "Encrypt", paymentsRef, withValue(office(), "10000.01")), true, one(ownerCrypto)},
		{"Decrypt 250000 with approver, bound_token", req(approver, "Decrypt", paymentsRef, withValue(ctxAt(wednesday(11, 0), AuthBoundToken, "10.0.5.5"), "250000")), true, one(ownerCrypto)},
		{"Encrypt 9999.99 without approver", req(payments, "Encrypt", paymentsRef, withValue(office(), "9999.99")), true, one(ownerCrypto)},
		{"Encrypt 10000.00 without approver", req(payments, "Encrypt", paymentsRef, withValue(office(), "10000.00")), true, one(ownerCrypto)},
		{"Encrypt 10000.01, approver role without token subject", req(approverNoSubject, "Encrypt", paymentsRef, withValue(office(), "10000.01")), false, one(approvalForbid)},
		{"Encrypt 10000.01, approver with mtls auth", req(approver, "Encrypt", paymentsRef, withValue(ctxAt(wednesday(10, 0), AuthMTLS, "10.0.5.5"), "10000.01")), false, one(approvalForbid)},
		{"Encrypt 50000 by approver on ledger's key", req(approver, "Encrypt", ledgerKey, withValue(office(), "50000")), false, nil},
		{"analyst Decrypt 20000 confidential", req(analyst, "Decrypt", ledgerKey, withValue(office(), "20000.00")), false, one(approvalForbid)},
	})
}

// Rule 5: administration only by key-admin from 10.20.0.0/16.
func TestExampleKeyAdmin(t *testing.T) {
	admin := func(ip string) Context { c := withIP(office(), ip); c.AuthStrength = AuthBoundToken; return c }
	runDecide(t, loadExamples(t), []decideCase{
		{"key-admin, RotateKey, from 10.20.1.1 with an unbound token", req(keyAdmin, "RotateKey", ledgerKey, withIP(office(), adminNetAddress)), false, one(adminForbid)},
		{"key-admin, Encrypt, own key", req(Principal{Workload: paymentsWL, Subject: "bob", Roles: []string{"key-admin"}}, "Encrypt", paymentsRef, admin(adminNetAddress)), false, one(adminNoUse)},
		{"key-admin, UpdateKey lowering sensitivity", req(keyAdmin, "UpdateKey", ledgerKey, withSensitivity(admin(adminNetAddress), TierRestricted)), false, one(relabelDown)},
		{"payments, ReEncryptTo a lower tier", req(payments, "ReEncryptTo", paymentsRef, withSensitivity(office(), TierRestricted)), false, one(reencryptDown)},
		{"payments, ReEncryptTo the same tier", req(payments, "ReEncryptTo", paymentsPAN, withSensitivity(office(), TierRestricted)), true, one(ownerCrypto)},
		{"key-admin, RotateKey, from 10.20.1.1", req(keyAdmin, "RotateKey", ledgerKey, admin(adminNetAddress)), true, one(adminPermit)},
		{"key-admin, CreateKey, from 10.20.255.254", req(keyAdmin, "CreateKey", paymentsPAN, admin("10.20.255.254")), true, one(adminPermit)},
		{"key-admin, RotateRootKey, from 10.20.1.1", req(keyAdmin, "RotateRootKey", service, admin(adminNetAddress)), true, one(adminPermit)},
		{"key-admin, VerifyAudit, from ::ffff:10.20.1.1", req(keyAdmin, "VerifyAudit", service, admin("::ffff:10.20.1.1")), true, one(adminPermit)},
		{"key-admin, RotateKey, from 192.168.1.1", req(keyAdmin, "RotateKey", ledgerKey, admin("192.168.1.1")), false, one(adminForbid)},
		{"key-admin, RotateKey, from 10.21.0.1", req(keyAdmin, "RotateKey", ledgerKey, admin("10.21.0.1")), false, one(adminForbid)},
		{"key-admin, RotateKey, from 2001:db8::1", req(keyAdmin, "RotateKey", ledgerKey, admin("2001:db8::1")), false, one(adminForbid)},
		{"analyst, RotateKey, from 10.20.1.1", req(analyst, "RotateKey", ledgerKey, admin(adminNetAddress)), false, one(adminForbid)},
		{"owner, ScheduleKeyDeletion, own key, from 10.20.1.1", req(payments, "ScheduleKeyDeletion", paymentsRef, admin(adminNetAddress)), false, one(adminForbid)},
		{"key-admin, Decrypt, from 10.20.1.1", req(keyAdmin, "Decrypt", ledgerKey, admin(adminNetAddress)), false, one(adminNoUse)},
		{"key-admin, GetKey, any key", req(keyAdmin, "GetKey", ledgerKey, office()), true, one(adminMetadata)},
		{"key-admin, ListKeys", req(keyAdmin, "ListKeys", service, office()), true, one(adminMetadata)},
	})
}

// Rule 6: health for everyone, metadata for owners.
func TestExampleBaseline(t *testing.T) {
	runDecide(t, loadExamples(t), []decideCase{
		{"payments (mtls only), CheckHealth", req(paymentsM, "CheckHealth", service, ctxAt(wednesday(3, 0), AuthMTLS, "192.0.2.1")), true, one(healthPermit)},
		{"analyst, CheckHealth", req(analyst, "CheckHealth", service, office()), true, one(healthPermit)},
		{"payments, GetKey, own key", req(payments, "GetKey", paymentsPAN, office()), true, one(ownerMetadata)},
		{"payments, GetKey, ledger's key", req(payments, "GetKey", ledgerKey, office()), false, nil},
		{"payments, ListKeys", req(payments, "ListKeys", service, office()), false, nil},
		{"ledger, Encrypt, payments key (no policy matches)", req(ledger, "Encrypt", paymentsRef, office()), false, nil},
	})
}

// Requests that are denied before any policy is evaluated.
func TestDecideRefusesMalformedRequests(t *testing.T) {
	e := loadExamples(t)
	noTier := paymentsRef
	noTier.Tier = 0
	badTier := paymentsRef
	badTier.Tier = 9
	noName := paymentsRef
	noName.Name = ""
	noKind := paymentsRef
	noKind.Kind = 0
	tests := []struct {
		name string
		req  Request
		want string // in Errors
	}{
		{"unknown action", req(payments, "Exfiltrate", paymentsRef, office()), "not declared in the schema"},
		{"action group reveal", req(payments, "reveal", paymentsRef, office()), "not declared in the schema"},
		{"empty action", req(payments, "", paymentsRef, office()), "not declared in the schema"},
		{"CheckHealth on a key", req(payments, "CheckHealth", paymentsRef, office()), "does not apply to a key"},
		{"Decrypt on the service", req(payments, "Decrypt", service, office()), "does not apply to a service"},
		{"no workload", req(Principal{Subject: "x", Roles: []string{"key-admin"}}, "CheckHealth", service, office()), "no workload"},
		{"key without tier", req(payments, "Encrypt", noTier, office()), "no valid tier"},
		{"key with tier 9", req(payments, "Encrypt", badTier, office()), "no valid tier"},
		{"key without name", req(payments, "Encrypt", noName, office()), "no name"},
		{"resource without kind", req(payments, "Encrypt", noKind, office()), "invalid resource kind"},
		{"no source address", req(payments, "Encrypt", paymentsRef, Context{Time: wednesday(10, 0), AuthStrength: AuthToken}), "no source address"},
		{"no time", req(payments, "Encrypt", paymentsRef, Context{SourceIP: netip.MustParseAddr("10.0.0.1"), AuthStrength: AuthToken}), "no time"},
		{"unknown auth strength", req(payments, "Encrypt", paymentsRef, ctxAt(wednesday(10, 0), "password", "10.0.0.1")), "auth strength"},
		{"sensitivity 7", req(payments, "Encrypt", paymentsRef, withSensitivity(office(), 7)), "sensitivity"},
		{"negative transaction value", req(payments, "Encrypt", paymentsRef, withValue(office(), "-5.00")), "transaction value"},
		{"transaction value with 5 decimals", req(payments, "Encrypt", paymentsRef, withValue(office(), "5.00001")), "transaction value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := e.Decide(tc.req)
			if d.Allow {
				t.Errorf("Decide(%s) = allow, want deny", tc.name)
			}
			if len(d.Policies) != 0 {
				t.Errorf("Decide(%s) policies = %q, want none", tc.name, d.Policies)
			}
			if len(d.Errors) != 1 || !strings.Contains(d.Errors[0], tc.want) {
				t.Errorf("Decide(%s) errors = %q, want one containing %q", tc.name, d.Errors, tc.want)
			}
		})
	}
}

func TestDecideZeroSensitivity(t *testing.T) {
	e := writePolicies(t, map[string]string{"p.cedar": `
@id("unclassified-only")
permit (principal, action == Tresor::Action::"Encrypt", resource)
when { context.sensitivity == "" && context.sensitivity_level == 0 };`})
	c := office()
	c.Sensitivity = 0
	if d := e.Decide(req(payments, "Encrypt", paymentsRef, c)); !d.Allow {
		t.Errorf("Decide(Encrypt, sensitivity 0) = deny (%v), want allow", d.Errors)
	}
	if d := e.Decide(req(payments, "Encrypt", paymentsRef, office())); d.Allow {
		t.Errorf("Decide(Encrypt, sensitivity public) = allow, want deny")
	}
}

func TestDecideContextAndTags(t *testing.T) {
	e := writePolicies(t, map[string]string{"p.cedar": `
@id("fraud-purpose-prod-keys")
permit (principal, action == Tresor::Action::"Decrypt", resource)
when {
  context has purpose && context.purpose == "fraud-investigation" &&
  resource.hasTag("env") && resource.getTag("env") == "prod" &&
  principal.scopes.contains("kms") && context.time < datetime("2027-01-01T00:00:00Z")
};`})
	c := office()
	c.Purpose = "fraud-investigation"
	tests := []struct {
		name  string
		req   Request
		allow bool
	}{
		{"purpose and prod tag", req(payments, "Decrypt", paymentsPAN, c), true},
		{"no purpose", req(payments, "Decrypt", paymentsPAN, office()), false},
		{"key without labels", req(payments, "Decrypt", paymentsRef, c), false},
		{"principal without scope", req(ledger, "Decrypt", paymentsPAN, c), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := e.Decide(tc.req); d.Allow != tc.allow || len(d.Errors) > 0 {
				t.Errorf("Decide(%s) = %v (errors %q), want %v", tc.name, d.Allow, d.Errors, tc.allow)
			}
		})
	}
}

// A forbid that fails to evaluate denies, and its error does not carry the
// request's values.
func TestDecideForbidErrorFailsClosed(t *testing.T) {
	e := writePolicies(t, map[string]string{"p.cedar": `
@id("owner")
permit (principal, action == Tresor::Action::"Encrypt", resource)
when { resource.owner == principal.workload };

@id("overflowing-forbid")
forbid (principal, action, resource)
when { context.sensitivity_level * 4611686018427387904 < 0 };`})
	c := withSensitivity(office(), TierInternal) // 2 * 2^62 overflows
	d := e.Decide(req(payments, "Encrypt", paymentsRef, c))
	if d.Allow {
		t.Errorf("Decide(owner, Encrypt, overflowing forbid) = allow, want deny")
	}
	if !slices.Equal(d.Policies, []string{"overflowing-forbid"}) {
		t.Errorf("Decide(owner, Encrypt, overflowing forbid) policies = %q, want [overflowing-forbid]", d.Policies)
	}
	if len(d.Errors) != 1 || d.Errors[0] != "policy overflowing-forbid: integer overflow" {
		t.Errorf("Decide(owner, Encrypt, overflowing forbid) errors = %q, want [policy overflowing-forbid: integer overflow]", d.Errors)
	}
	// Sensitivity 0 does not overflow: the permit decides.
	c.Sensitivity = 0
	if d := e.Decide(req(payments, "Encrypt", paymentsRef, c)); !d.Allow || len(d.Errors) > 0 {
		t.Errorf("Decide(owner, Encrypt, no overflow) = %v (errors %q), want allow", d.Allow, d.Errors)
	}
}

func TestActions(t *testing.T) {
	e := loadExamples(t)
	want := []string{"AnomalyBlock", "AnomalyLog", "AnomalyStepUp", "AnomalyThrottle",
		"CancelKeyDeletion", "CheckHealth", "CreateKey", "Decrypt", "DisableKey", "EnableKey", "Encrypt",
		"GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "GetKey", "GetRootKeyRotation", "GetSchema", "ListKeys",
		"ListSchemaVersions", "ListSchemas", "ProtectDocument", "PutSchema", "QueryAudit", "ReEncryptFrom", "ReEncryptTo",
		"RevealDocument", "RevealMasked", "RotateKey", "RotateRootKey", "ScheduleKeyDeletion",
		"UpdateKey", "VerifyAudit"}
	if got := e.Actions(); !slices.Equal(got, want) {
		t.Errorf("Actions() = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		name string
		want bool
	}{{"Decrypt", true}, {"CheckHealth", true}, {"reveal", false}, {"administer", false}, {"decrypt", false}, {"", false}} {
		if got := e.HasAction(tc.name); got != tc.want {
			t.Errorf("HasAction(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := len(e.PolicyIDs()); got != 19 {
		t.Errorf("len(PolicyIDs()) = %d, want 19 example policies", got)
	}
}

// Decide is safe for concurrent use (run with -race).
func TestDecideConcurrent(t *testing.T) {
	e := loadExamples(t)
	done := make(chan bool)
	for range 8 {
		go func() {
			ok := true
			for range 200 {
				ok = ok && e.Decide(req(payments, "Decrypt", paymentsPAN, office())).Allow &&
					!e.Decide(req(analyst, "Decrypt", ledgerSecret, office())).Allow
			}
			done <- ok
		}()
	}
	for range 8 {
		if !<-done {
			t.Error("concurrent Decide gave a wrong decision")
		}
	}
}
