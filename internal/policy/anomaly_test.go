package policy

import "testing"

// TestAnomalyResponsesNeedNamingPolicies: a permit on an anomaly response
// applies the response, so a policy that covers every action must not
// apply them; only policies that name them do.
func TestAnomalyResponsesNeedNamingPolicies(t *testing.T) {
	broad := `@id("trust-payments") permit (principal, action, resource) when { principal.workload == "` + payments.Workload + `" };`
	broadForbid := `@id("no-large") forbid (principal, action, resource) when { context has transaction_value };`
	naming := `@id("block-high-risk") permit (principal, action == Tresor::Action::"AnomalyBlock", resource) when { context.risk >= 80 };
@id("group-log") permit (principal, action in Tresor::Action::"anomaly_response", resource) when { context.risk >= 99 };`
	risky := office()
	risky.Risk = 90
	for _, tc := range []struct {
		name   string
		files  map[string]string
		action string
		ctx    Context
		want   bool
	}{
		{"a broad permit does not block", map[string]string{"a.cedar": broad}, "AnomalyBlock", risky, false},
		{"a broad permit still allows calls", map[string]string{"a.cedar": broad}, "Decrypt", risky, true},
		{"a broad forbid does not stop a response", map[string]string{"b.cedar": naming, "c.cedar": broadForbid}, "AnomalyBlock", withValue(risky, "20000.00"), true},
		{"a broad forbid still forbids calls", map[string]string{"a.cedar": broad, "c.cedar": broadForbid}, "Decrypt", withValue(risky, "20000.00"), false},
		{"a policy naming the action blocks", map[string]string{"a.cedar": broad, "b.cedar": naming}, "AnomalyBlock", risky, true},
		{"below its threshold it does not", map[string]string{"b.cedar": naming}, "AnomalyBlock", office(), false},
		{"a policy naming the group applies", map[string]string{"b.cedar": naming}, "AnomalyLog", func() Context { c := office(); c.Risk = 99; return c }(), true},
		{"risk is clamped to 100", map[string]string{"b.cedar": naming}, "AnomalyLog", func() Context { c := office(); c.Risk = 500; return c }(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := writePolicies(t, tc.files)
			res := service
			if tc.action == "Decrypt" {
				res = paymentsRef
			}
			if d := e.Decide(req(payments, tc.action, res, tc.ctx)); d.Allow != tc.want {
				t.Errorf("Decide(%s, risk %d) = %+v, want allow %v", tc.action, tc.ctx.Risk, d, tc.want)
			}
		})
	}
}
