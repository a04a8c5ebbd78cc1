package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	policies "github.com/tresorkms/tresor/examples/policies"
	"github.com/tresorkms/tresor/internal/monitor"
	"github.com/tresorkms/tresor/internal/policy"
	"github.com/tresorkms/tresor/internal/server"
)

// newSimulateCmd is `tresor simulate`: normal traffic for a set of
// principals, then an exfiltration, through the anomaly monitor and the
// policies' responses, on a simulated clock.
func newSimulateCmd() *cobra.Command {
	var cfg monitor.SimConfig
	var policyDir string
	cmd := &cobra.Command{
		Use:   "simulate [--seed N] [--policies DIR]",
		Short: "Replay normal traffic and an exfiltration through anomaly detection and the policy's responses",
		Long: `Simulates, on a simulated clock, days of normal traffic for a set of
principals and then one principal decrypting restricted data at many times
its usual rate, at night, from a new address. Every call is scored by the
anomaly monitor and answered as the Cedar policies decide (the actions
AnomalyBlock, AnomalyThrottle, AnomalyStepUp and AnomalyLog). The report
says how many exfiltration requests got through before the block and what
share of the normal requests were refused. The same seed gives the same
report. Without --policies, the example policies (examples/policies) are
used.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			popts := policy.Options{PolicyDir: policyDir, Location: time.UTC}
			if policyDir == "" {
				popts = policy.Options{FS: policies.Files, PolicyDir: ".", Location: time.UTC}
			}
			eng, err := policy.Load(popts)
			if err != nil {
				return err
			}
			r, err := monitor.Simulate(cfg, cedarResponses{eng})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), r.String())
			return nil
		},
	}
	cmd.Flags().Int64Var(&cfg.Seed, "seed", 1, "random seed")
	cmd.Flags().IntVar(&cfg.Principals, "principals", 20, "principals with normal traffic")
	cmd.Flags().IntVar(&cfg.Days, "days", 7, "days of normal traffic before the exfiltration")
	cmd.Flags().Float64Var(&cfg.ExfilFactor, "exfil-factor", 20, "the exfiltration's rate, in multiples of the principal's usual rate")
	cmd.Flags().BoolVar(&cfg.PlainTokenAttacker, "plain-token-attacker", false, "the attacker holds a plain (not certificate-bound) token")
	cmd.Flags().StringVar(&policyDir, "policies", "", "policy directory (with tresor.cedarschema); default the examples")
	return cmd
}

// cedarResponses decides anomaly responses as the server's chain does
// (server.DecideResponse), from the simulated call.
type cedarResponses struct{ e *policy.Engine }

func (c cedarResponses) DecideResponse(obs monitor.Observation, risk int) monitor.Response {
	r := policy.Request{
		Principal: policy.Principal{Workload: "spiffe://simulation/" + obs.Principal, Subject: "svc"},
		Resource:  policy.Resource{Kind: policy.ResourceService, Name: policy.ServiceName},
		Context: policy.Context{SourceIP: obs.Source, Time: obs.Time, AuthStrength: policy.AuthToken,
			Sensitivity: policy.Tier(obs.Tier), Risk: int64(risk)},
	}
	if obs.HasValue {
		r.Context.TransactionValue = strconv.FormatFloat(obs.TransactionValue, 'f', 2, 64)
	}
	resp, _ := server.DecideResponse(c.e, r)
	return resp
}
