package policy

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cedar-policy/cedar-go"
)

// decideAll decides r as Decide does but gives Cedar every policy of the
// action, role scopes included: the reference for the role-scope filter.
func decideAll(e *Engine, r Request) Decision {
	st, reason := e.prepare(&r)
	if st == nil {
		return refused(reason)
	}
	return e.decision(cedar.Authorize(st.policies, &st.ents, cedar.Request{
		Principal: st.ents.principal.UID, Action: st.action, Resource: st.ents.resource.UID, Context: st.context,
	}))
}

// Leaving out the policies whose principal scope names a role the principal
// does not have decides exactly as evaluating them: the same allow or deny,
// the same policies, the same errors, for every action, principal, resource
// and context here, against the example policies, the generated ones and
// some that exercise each scope form.
func TestRoleScopesLeftOutDecideTheSame(t *testing.T) {
	files := map[string]string{"zz-generated.cedar": generatedPolicySet(generatedPolicies), "zz-scopes.cedar": `
@id("is-in-role")
permit (principal is Tresor::Principal in Tresor::Role::"auditor", action in Tresor::Action::"read_metadata", resource);

@id("in-principal")
forbid (principal in Tresor::Principal::"30:spiffe://bank.example/payments#carol", action == Tresor::Action::"Decrypt", resource);

@id("in-role-overflowing")
forbid (principal in Tresor::Role::"analyst", action == Tresor::Action::"Decrypt", resource)
when { context.sensitivity_level * 4611686018427387904 < 0 };

@id("in-role-unless")
forbid (principal in Tresor::Role::"reader", action, resource)
unless { context.auth == "bound_token" };
`}
	entries, err := os.ReadDir(examplesDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range entries {
		if strings.HasSuffix(de.Name(), ".cedar") {
			text, err := os.ReadFile(filepath.Join(examplesDir, de.Name()))
			if err != nil {
				t.Fatal(err)
			}
			files[de.Name()] = string(text)
		}
	}
	e := writePolicies(t, files)

	svc40 := Principal{Workload: "spiffe://bank.example/svc-040", Subject: "svc-040", Roles: []string{"reader", "team-042"}}
	everything := Principal{Workload: paymentsWL, Subject: "carol", Roles: []string{"analyst", "auditor", "key-admin", "payments-approver", "reader", "team-002"}}
	principals := []Principal{payments, paymentsM, approver, ledger, analyst, keyAdmin, svc40, everything,
		{Workload: adminWL, Subject: "eve", Roles: []string{"key-admin-x", "Key-admin"}}}
	labelled := Resource{Kind: ResourceKey, Name: "svc-040-data", Tier: TierConfidential, Owner: "spiffe://bank.example/svc-039",
		Labels: map[string]string{"app": "svc-040", "team": "team-042"}}
	resources := []Resource{paymentsPAN, paymentsRef, ledgerKey, ledgerPublic, ledgerSecret, analyticsKey, labelled, service}
	contexts := []Context{
		office(),
		withSensitivity(office(), TierInternal),
		withValue(office(), "20000.00"),
		bound(withIP(office(), adminNetAddress)),
		ctxAt(wednesday(20, 0), AuthToken, "10.0.5.5"),
		withSensitivity(ctxAt(time.Date(2026, 3, 7, 10, 0, 0, 0, cet), AuthMTLS, "10.143.2.3"), TierRestricted),
	}
	left, decisions := 0, 0
	for _, action := range e.Actions() {
		for _, p := range principals {
			for _, res := range resources {
				for _, c := range contexts {
					r := req(p, action, res, c)
					got, want := e.Decide(r), decideAll(e, r)
					if got.Allow != want.Allow || !slices.Equal(got.Policies, want.Policies) || !slices.Equal(got.Errors, want.Errors) {
						t.Errorf("Decide(%s, %s, %s, %+v) = %+v, want %+v (all policies evaluated)", p.Subject, action, res.Name, c, got, want)
					}
					decisions++
					if st, _ := e.prepare(&r); st != nil {
						for _, np := range *st.policies {
							if st.outOfScope(np.policy) {
								left++
							}
						}
					}
				}
			}
		}
	}
	if left == 0 {
		t.Fatalf("no policy was left out in %d decisions: the test does not exercise the filter", decisions)
	}
	t.Logf("%d decisions, %d policy evaluations left out", decisions, left)
	// Every scope form above was met both ways.
	ids := map[string]bool{}
	for _, p := range principals {
		for _, c := range contexts {
			for _, action := range []string{"Decrypt", "GetKey"} {
				d := e.Decide(req(p, action, paymentsRef, c))
				for _, id := range d.Policies {
					ids[id] = true
				}
			}
		}
	}
	for _, id := range []string{"is-in-role", "in-principal", "in-role-overflowing", "in-role-unless"} {
		if !ids[id] {
			t.Errorf("policy %s never determined a decision; have %v", id, slices.Sorted(maps.Keys(ids)))
		}
	}
}
