package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// simReport is what the tests read of `tresor simulate`'s report.
type simReport struct {
	seed, principals, days      int
	attempts, beforeBlock, all  int
	firstBlock                  string // the attempt number, or "never"
	normalCalls, normalRefused  int
	normalRefusedPercentPrinted float64
}

var (
	simHeadRE   = regexp.MustCompile(`(?m)^seed (-?\d+): (\d+) principals, (\d+) days of normal traffic, then an exfiltration$`)
	simExfilRE  = regexp.MustCompile(`(?m)^exfiltration: (\d+) attempts, (\d+) went ahead before the first block \(attempt (\d+|never)\), (\d+) went ahead in all$`)
	simNormalRE = regexp.MustCompile(`(?m)^normal: (\d+) calls, (\d+) refused \(([0-9.]+)%\)`)
)

// parseSimReport reads the figures of a simulate report.
func parseSimReport(t *testing.T, out string) simReport {
	t.Helper()
	h, x, n := simHeadRE.FindStringSubmatch(out), simExfilRE.FindStringSubmatch(out), simNormalRE.FindStringSubmatch(out)
	if h == nil || x == nil || n == nil {
		t.Fatalf("tresor simulate printed %q, want its seed, exfiltration and normal lines", out)
	}
	atoi := func(s string) int {
		v, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("tresor simulate printed %q: %q is not a number", out, s)
		}
		return v
	}
	pct, err := strconv.ParseFloat(n[3], 64)
	if err != nil {
		t.Fatalf("tresor simulate printed %q: %v", out, err)
	}
	return simReport{
		seed: atoi(h[1]), principals: atoi(h[2]), days: atoi(h[3]),
		attempts: atoi(x[1]), beforeBlock: atoi(x[2]), firstBlock: x[3], all: atoi(x[4]),
		normalCalls: atoi(n[1]), normalRefused: atoi(n[2]), normalRefusedPercentPrinted: pct,
	}
}

// TestSimulateBlocksExfiltration: with the example policies, the
// exfiltration of seed 1 is blocked within 50 attempts while under 0.1% of
// the normal calls are refused, and the same seed gives the same report.
func TestSimulateBlocksExfiltration(t *testing.T) {
	// Two runs of seed 1 at once: under -race one takes many seconds.
	var outs [2]string
	var errs [2]error
	var wg sync.WaitGroup
	for i := range outs {
		wg.Go(func() { outs[i], errs[i] = run(t, "", "simulate", "--seed", "1") })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("tresor simulate --seed 1 (run %d): err = %v, want nil", i+1, err)
		}
	}
	t.Logf("tresor simulate --seed 1:\n%s", outs[0])
	if outs[0] != outs[1] {
		t.Errorf("tresor simulate --seed 1 twice gave different reports:\n%s\nand\n%s", outs[0], outs[1])
	}
	r := parseSimReport(t, outs[0])
	if r.seed != 1 || r.principals != 20 || r.days != 7 {
		t.Errorf("tresor simulate --seed 1 ran seed %d, %d principals, %d days; want seed 1 and the defaults 20 and 7", r.seed, r.principals, r.days)
	}
	if r.attempts == 0 || r.firstBlock == "never" || r.beforeBlock > 50 {
		t.Errorf("tresor simulate --seed 1: %d of %d exfiltration attempts went ahead before the first block (attempt %s), want a block with at most 50 before it", r.beforeBlock, r.attempts, r.firstBlock)
	}
	if r.beforeBlock > r.all || r.all > r.attempts {
		t.Errorf("tresor simulate --seed 1: %d before the block, %d in all, %d attempts; want before <= all <= attempts", r.beforeBlock, r.all, r.attempts)
	}
	if r.normalCalls == 0 {
		t.Fatalf("tresor simulate --seed 1: no normal calls, want days of traffic")
	}
	share := float64(r.normalRefused) / float64(r.normalCalls)
	if share >= 0.001 {
		t.Errorf("tresor simulate --seed 1: %d of %d normal calls refused (%.4f%%), want under 0.1%%", r.normalRefused, r.normalCalls, 100*share)
	}
	if printed := fmt.Sprintf("%.4f", 100*share); printed != strconv.FormatFloat(r.normalRefusedPercentPrinted, 'f', 4, 64) {
		t.Errorf("tresor simulate --seed 1 printed a refused share of %.4f%%, want %s%% (%d of %d)", r.normalRefusedPercentPrinted, printed, r.normalRefused, r.normalCalls)
	}
}

// TestSimulateFlags: the seed and the size flags reach the simulation, a
// policy directory without anomaly policies blocks nothing, and bad input
// is refused. Small simulations, to stay fast under -race.
func TestSimulateFlags(t *testing.T) {
	small := []string{"simulate", "--principals", "5", "--days", "2"}
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, r simReport)
	}{
		{"another seed", []string{"--seed", "2"}, func(t *testing.T, r simReport) {
			if r.seed != 2 || r.principals != 5 || r.days != 2 || r.normalCalls == 0 || r.attempts == 0 {
				t.Errorf("report = %+v, want seed 2, 5 principals, 2 days, normal calls and an exfiltration", r)
			}
		}},
		{"a negative seed", []string{"--seed", "-7"}, func(t *testing.T, r simReport) {
			if r.seed != -7 {
				t.Errorf("report = %+v, want seed -7", r)
			}
		}},
		{"policies without anomaly responses", []string{"--seed", "2", "--policies", devCfg.Policy.Dir}, func(t *testing.T, r simReport) {
			// The dev policy permits the dev client only and names no
			// anomaly response: nothing decides a block.
			if r.firstBlock != "never" || r.all != r.attempts || r.normalRefused != 0 {
				t.Errorf("report = %+v, want every exfiltration attempt and normal call to go ahead", r)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append(append([]string{}, small...), tt.args...)
			out, err := run(t, "", args...)
			if err != nil {
				t.Fatalf("tresor %s: err = %v, want nil", strings.Join(args, " "), err)
			}
			tt.check(t, parseSimReport(t, out))
		})
	}

	for _, args := range [][]string{
		{"--days", "-1"},
		{"--policies", t.TempDir()},
		{"--seed", "one"},
		{"extra"},
	} {
		args = append([]string{"simulate"}, args...)
		if out, err := run(t, "", args...); err == nil {
			t.Errorf("tresor %s = %q, nil; want an error", strings.Join(args, " "), out)
		}
	}
}
