package monitor_test

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/monitor"
)

const payments = "14:payments-batch#svc"

// monday is the first day of the training traffic.
var monday = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)

var (
	office1 = netip.MustParseAddr("10.1.2.3")
	office2 = netip.MustParseAddr("10.1.2.4")
	// elsewhere is in no subnet the principal used.
	elsewhere = netip.MustParseAddr("203.0.113.9")
)

// usual returns one of the trained principal's usual calls at t.
func usual(t time.Time) monitor.Observation {
	return monitor.Observation{
		Principal:        payments,
		Time:             t,
		Source:           office1,
		Keys:             []string{"payments-ref"},
		Tier:             monitor.TierConfidential,
		Reveal:           false,
		TransactionValue: 120,
		HasValue:         true,
	}
}

// trained returns a Monitor that has seen three weekdays of the payments
// principal's calls: 09:00 to 17:00, about one every 4 s, from two
// addresses, with two keys, encrypting confidential and internal data,
// with transaction values around 120. It returns the time just after.
func trained(t testing.TB, opts monitor.Options) (*monitor.Monitor, time.Time) {
	t.Helper()
	m, err := monitor.New(opts)
	if err != nil {
		t.Fatalf("New(%+v) err = %v, want nil", opts, err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for day := range 3 {
		at := monday.AddDate(0, 0, day).Add(9 * time.Hour)
		end := at.Add(8 * time.Hour)
		for at.Before(end) {
			obs := usual(at)
			if rng.IntN(3) == 0 {
				obs.Source = office2
			}
			if rng.IntN(4) == 0 {
				obs.Keys, obs.Tier = []string{"payments-log"}, monitor.TierInternal
			}
			obs.TransactionValue = 120 * (0.7 + 0.6*rng.Float64())
			m.Score(obs)
			m.Observe(obs, monitor.None)
			at = at.Add(time.Duration(rng.ExpFloat64() * float64(4*time.Second)))
		}
	}
	return m, monday.AddDate(0, 0, 3).Add(10 * time.Hour)
}

// TestScoreDimensions checks that each dimension alone makes a usual call
// unusual, and names itself as the only reason.
func TestScoreDimensions(t *testing.T) {
	tests := []struct {
		name   string
		change func(*monitor.Observation)
		burst  bool // precede the call with a burst of usual calls
		want   monitor.Reason
	}{
		{name: "rate", burst: true, want: monitor.ReasonRate},
		{name: "hour", change: func(o *monitor.Observation) { o.Time = o.Time.Add(-7 * time.Hour) }, want: monitor.ReasonHour},
		{name: "new source", change: func(o *monitor.Observation) { o.Source = elsewhere }, want: monitor.ReasonNewSource},
		{name: "tier mix", change: func(o *monitor.Observation) { o.Tier, o.Reveal = monitor.TierConfidential, true }, want: monitor.ReasonTierMix},
		{name: "new key", change: func(o *monitor.Observation) { o.Keys = []string{"ledger-entries"} }, want: monitor.ReasonNewKey},
		{name: "value", change: func(o *monitor.Observation) { o.TransactionValue = 250000 }, want: monitor.ReasonValue},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, now := trained(t, monitor.Options{})
			if a := m.Score(usual(now)); a.Risk != 0 {
				t.Fatalf("Score(usual call) = %v, want risk 0", a)
			}
			now = now.Add(time.Minute)
			if tc.burst {
				// 40 calls a second, 160 times the usual rate.
				for range 40 {
					now = now.Add(25 * time.Millisecond)
					m.Score(usual(now))
				}
			}
			obs := usual(now.Add(25 * time.Millisecond))
			if tc.change != nil {
				tc.change(&obs)
			}
			a := m.Score(obs)
			t.Logf("Score(%s) = %v", tc.name, a)
			if got := a.Reasons(); !slices.Equal(got, []monitor.Reason{tc.want}) {
				t.Errorf("Score(%s) = %v, reasons %v, want only %v", tc.name, a, got, tc.want)
			}
			if a.Risk <= 0 || a.Risk >= 65 {
				t.Errorf("Score(%s) risk = %d, want between 1 and 64 for one dimension", tc.name, a.Risk)
			}
			if a.Confidence != 1 {
				t.Errorf("Score(%s) confidence = %v, want 1 after three days", tc.name, a.Confidence)
			}
		})
	}
}

// TestScoreCombined checks that the exfiltration pattern (night, a new
// address, restricted data revealed in a burst) scores high enough to
// block.
func TestScoreCombined(t *testing.T) {
	m, now := trained(t, monitor.Options{})
	night := now.Add(16 * time.Hour) // 02:00
	var a monitor.Assessment
	for range 30 {
		night = night.Add(100 * time.Millisecond)
		obs := usual(night)
		obs.Source, obs.Tier, obs.Reveal, obs.Keys = elsewhere, monitor.TierRestricted, true, []string{"payments-pan"}
		a = m.Score(obs)
	}
	if a.Risk < 85 {
		t.Errorf("Score(30th night burst from a new address) = %v, want risk >= 85", a)
	}
}

func TestScoreWarmUp(t *testing.T) {
	m, err := monitor.New(monitor.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A new principal's first calls, at night, from anywhere, score 0:
	// there is no history to compare with.
	night := monday.Add(3 * time.Hour)
	obs := usual(night)
	obs.Principal, obs.Source = "new", elsewhere
	for i := range 20 {
		obs.Time = night.Add(time.Duration(i) * time.Second)
		if a := m.Score(obs); a.Risk != 0 || a.Confidence > 0.01 {
			t.Fatalf("Score(new principal's call %d) = %v (confidence %v), want risk 0, confidence about 0", i, a, a.Confidence)
		}
		m.Observe(obs, monitor.None)
	}
	// But it cannot hide a flood by being new: the rate is compared with
	// the prior (10 calls a second).
	var a monitor.Assessment
	for i := range 40 {
		obs.Time = night.Add(time.Minute + time.Duration(i)*time.Millisecond)
		a = m.Score(obs)
	}
	if !a.Has(monitor.ReasonRate) {
		t.Errorf("Score(new principal at 1000 calls/s) = %v, want reason rate", a)
	}
}

// TestObserveLearnsSlowlyUnderResponse checks that calls admitted under a
// response hardly teach the baseline, and blocked ones not at all.
func TestObserveLearnsSlowlyUnderResponse(t *testing.T) {
	tests := []struct {
		applied monitor.Response
		learns  bool // 5 calls from the new address make it known
	}{
		{monitor.None, true},
		{monitor.Log, false},
		{monitor.StepUp, false},
		{monitor.Throttle, false},
		{monitor.Block, false},
	}
	for _, tc := range tests {
		t.Run(tc.applied.String(), func(t *testing.T) {
			m, now := trained(t, monitor.Options{})
			obs := usual(now)
			obs.Source = elsewhere
			for i := range 5 {
				obs.Time = now.Add(time.Duration(i) * 10 * time.Second)
				m.Score(obs)
				m.Observe(obs, tc.applied)
			}
			obs.Time = obs.Time.Add(10 * time.Second)
			a := m.Score(obs)
			if got := a.Has(monitor.ReasonNewSource); got == tc.learns {
				t.Errorf("after 5 calls observed under %v, Score(same new address) = %v, new_source %v, want %v",
					tc.applied, a, got, !tc.learns)
			}
		})
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	tests := []monitor.Options{
		{MaxPrincipals: -1},
		{WarmUpCalls: -1},
		{PriorRate: -1},
		{ThrottleRate: -2},
		{HalfLife: -time.Hour},
		{Expiry: [5]time.Duration{monitor.Block: -time.Second}},
	}
	for _, opts := range tests {
		if _, err := monitor.New(opts); !errors.Is(err, monitor.ErrInvalidOptions) {
			t.Errorf("New(%+v) err = %v, want ErrInvalidOptions", opts, err)
		}
	}
}
