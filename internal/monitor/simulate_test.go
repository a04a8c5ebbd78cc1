package monitor_test

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the zones the tests use, wherever they run

	"github.com/tresorkms/tresor/internal/monitor"
	"github.com/tresorkms/tresor/internal/policy"
)

const examplesDir = "../../examples/policies"

// cedarDecider decides responses with the Cedar policies, as the server's
// chain does: the anomaly actions on the service, strongest first, with
// context.risk; the first permitted wins.
type cedarDecider struct {
	t testing.TB
	e *policy.Engine
}

func loadExamples(t testing.TB) cedarDecider {
	t.Helper()
	e, err := policy.Load(policy.Options{PolicyDir: examplesDir, Location: time.UTC})
	if err != nil {
		t.Fatalf("policy.Load(%s) err = %v, want nil", examplesDir, err)
	}
	for _, r := range monitor.Responses() {
		if a := r.Action(); !e.HasAction(a) {
			t.Fatalf("the example schema has no action %s", a)
		}
	}
	return cedarDecider{t: t, e: e}
}

func (c cedarDecider) request(obs monitor.Observation, risk int) policy.Request {
	r := policy.Request{
		Principal: policy.Principal{Workload: "spiffe://bank.example/" + obs.Principal, Subject: "svc"},
		Resource:  policy.Resource{Kind: policy.ResourceService, Name: policy.ServiceName},
		Context: policy.Context{
			SourceIP:     obs.Source,
			Time:         obs.Time,
			AuthStrength: policy.AuthToken,
			Sensitivity:  policy.Tier(obs.Tier),
			Risk:         int64(risk),
		},
	}
	if obs.HasValue {
		r.Context.TransactionValue = strconv.FormatFloat(obs.TransactionValue, 'f', 2, 64)
	}
	return r
}

func (c cedarDecider) DecideResponse(obs monitor.Observation, risk int) monitor.Response {
	r := c.request(obs, risk)
	for _, resp := range monitor.Responses() {
		r.Action = resp.Action()
		d := c.e.Decide(r)
		if len(d.Errors) > 0 {
			c.t.Fatalf("Decide(%s, risk %d) errors = %v, want none", r.Action, risk, d.Errors)
		}
		if d.Allow {
			return resp
		}
	}
	return monitor.None
}

// TestThresholdsMatchPolicies checks that DefaultThresholds decide as
// examples/policies/anomaly.cedar does, so that simulations without Cedar
// tell the truth about the policies.
func TestThresholdsMatchPolicies(t *testing.T) {
	c := loadExamples(t)
	obs := monitor.Observation{Principal: "p", Time: t0, Source: office1}
	for tier := monitor.TierNone; tier <= monitor.TierRestricted; tier++ {
		for risk := 0; risk <= 100; risk++ {
			obs.Tier = tier
			got, want := c.DecideResponse(obs, risk), monitor.DefaultThresholds.DecideResponse(obs, risk)
			if got != want {
				t.Errorf("policies decide %v at risk %d, tier %d; DefaultThresholds.DecideResponse = %v", got, risk, tier, want)
			}
		}
	}
}

// TestPoliciesRespondToRisk spells out anomaly.cedar's thresholds.
func TestPoliciesRespondToRisk(t *testing.T) {
	c := loadExamples(t)
	tests := []struct {
		risk int
		tier monitor.Tier
		want monitor.Response
	}{
		{0, monitor.TierRestricted, monitor.None},
		{29, monitor.TierPublic, monitor.None},
		{30, monitor.TierPublic, monitor.Log},
		{50, monitor.TierPublic, monitor.StepUp},
		{65, monitor.TierPublic, monitor.Throttle},
		{75, monitor.TierConfidential, monitor.Throttle},
		{75, monitor.TierRestricted, monitor.Block},
		{85, monitor.TierNone, monitor.Block},
		{100, monitor.TierPublic, monitor.Block},
	}
	for _, tc := range tests {
		obs := monitor.Observation{Principal: "p", Time: t0, Source: office1, Tier: tc.tier}
		if got := c.DecideResponse(obs, tc.risk); got != tc.want {
			t.Errorf("DecideResponse(risk %d, tier %d) = %v, want %v", tc.risk, tc.tier, got, tc.want)
		}
	}
}

// TestPoliciesRespondWithLargeTransaction checks that a call declaring a
// large transaction value is still blocked at risk 100: the forbid
// large-transaction-needs-approver (transaction-approval.cedar) leaves the
// anomaly responses alone, so such a call cannot escape them.
func TestPoliciesRespondWithLargeTransaction(t *testing.T) {
	c := loadExamples(t)
	obs := monitor.Observation{Principal: "p", Time: t0, Source: office1, Tier: monitor.TierRestricted,
		TransactionValue: 20000, HasValue: true}
	if got := c.DecideResponse(obs, 100); got != monitor.Block {
		t.Errorf("DecideResponse(risk 100, transaction 20000) = %v, want block", got)
	}
}

// TestSimulateMeetsAims runs the simulation against the example policies
// and checks the aims: the exfiltration is blocked within 50
// requests, and under 0.1% of the normal requests are refused.
func TestSimulateMeetsAims(t *testing.T) {
	c := loadExamples(t)
	seeds := []int64{1, 2, 3, 4, 5}
	if testing.Short() || raceEnabled {
		seeds = seeds[:1]
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rep, err := monitor.Simulate(monitor.SimConfig{Seed: seed}, c)
			if err != nil {
				t.Fatalf("Simulate(seed %d) err = %v, want nil", seed, err)
			}
			t.Logf("Simulate(seed %d):\n%s", seed, rep)
			if rep.ExfilFirstBlock == 0 || rep.ExfilBeforeBlock > 50 {
				t.Errorf("Simulate(seed %d): exfiltration blocked at attempt %d after %d went ahead, want blocked within 50",
					seed, rep.ExfilFirstBlock, rep.ExfilBeforeBlock)
			}
			if share := rep.NormalRefusedShare(); share >= 0.001 {
				t.Errorf("Simulate(seed %d): %.4f%% of normal requests refused, want under 0.1%%", seed, 100*share)
			}
			if rep.NormalRequests < 100000 {
				t.Errorf("Simulate(seed %d): %d normal requests, want a week's worth (over 100000)", seed, rep.NormalRequests)
			}
			if rep.ExfilAttempts != 500 || rep.ExfilAdmitted > rep.ExfilAttempts {
				t.Errorf("Simulate(seed %d): %d exfiltration attempts, %d admitted, want 500 attempts", seed, rep.ExfilAttempts, rep.ExfilAdmitted)
			}
		})
	}
}

// TestSimulateVariants checks the simulation's other settings: an attacker
// with a plain token is stopped by step-up at once, and without a
// decider's responses nothing is refused.
func TestSimulateVariants(t *testing.T) {
	tests := []struct {
		name        string
		cfg         monitor.SimConfig
		decider     monitor.ResponseDecider
		maxBefore   int // ExfilBeforeBlock at most
		wantRefused bool
	}{
		{"plain-token attacker", monitor.SimConfig{Seed: 1, Days: 2, PlainTokenAttacker: true}, nil, 0, true},
		{"no responses", monitor.SimConfig{Seed: 1, Days: 2}, monitor.Thresholds{}, 500, false},
		{"2 days, Berlin", monitor.SimConfig{Seed: 1, Days: 2, Location: mustLoad(t, "Europe/Berlin")}, nil, 50, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := monitor.Simulate(tc.cfg, tc.decider)
			if err != nil {
				t.Fatalf("Simulate(%+v) err = %v, want nil", tc.cfg, err)
			}
			if rep.ExfilBeforeBlock > tc.maxBefore {
				t.Errorf("Simulate(%s): %d exfiltration requests went ahead before the block, want at most %d\n%s", tc.name, rep.ExfilBeforeBlock, tc.maxBefore, rep)
			}
			if refused := rep.ExfilAdmitted < rep.ExfilAttempts; refused != tc.wantRefused {
				t.Errorf("Simulate(%s): %d of %d exfiltration requests went ahead, want some refused: %v", tc.name, rep.ExfilAdmitted, rep.ExfilAttempts, tc.wantRefused)
			}
		})
	}
}

func mustLoad(t testing.TB, name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("LoadLocation(%s) err = %v, want nil", name, err)
	}
	return loc
}

// TestSimulateDeterministic checks that a seed always gives the same
// report, and another seed another one.
func TestSimulateDeterministic(t *testing.T) {
	cfg := monitor.SimConfig{Seed: 1, Days: 2, Principals: 10}
	a, err := monitor.Simulate(cfg, nil)
	if err != nil {
		t.Fatalf("Simulate(seed 1) err = %v, want nil", err)
	}
	b, _ := monitor.Simulate(cfg, nil)
	if a != b {
		t.Errorf("Simulate(seed 1) twice:\n%s\n%s\nwant the same report", a, b)
	}
	cfg.Seed = 2
	if c, _ := monitor.Simulate(cfg, nil); c.NormalRequests == a.NormalRequests {
		t.Errorf("Simulate(seed 2) has %d normal requests, as seed 1 has; want different traffic", c.NormalRequests)
	}
	if !strings.Contains(a.String(), "went ahead before the first block") {
		t.Errorf("SimReport.String() = %q, want the exfiltration's outcome", a.String())
	}
}

func TestSimulateRefusesBadConfig(t *testing.T) {
	tests := []monitor.SimConfig{
		{Principals: -1},
		{Days: -1},
		{ExfilFactor: -1},
		{ExfilClock: 25 * time.Hour},
	}
	for _, cfg := range tests {
		if _, err := monitor.Simulate(cfg, nil); !errors.Is(err, monitor.ErrInvalidSimConfig) {
			t.Errorf("Simulate(%+v) err = %v, want ErrInvalidSimConfig", cfg, err)
		}
	}
	if _, err := monitor.Simulate(monitor.SimConfig{Monitor: monitor.Options{MaxPrincipals: -1}}, nil); !errors.Is(err, monitor.ErrInvalidOptions) {
		t.Errorf("Simulate(MaxPrincipals -1) err = %v, want ErrInvalidOptions", err)
	}
}
