package monitor_test

import (
	"errors"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/monitor"
)

var t0 = time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)

func newMonitor(t testing.TB, opts monitor.Options) *monitor.Monitor {
	t.Helper()
	m, err := monitor.New(opts)
	if err != nil {
		t.Fatalf("New(%+v) err = %v, want nil", opts, err)
	}
	return m
}

// TestApplyExpiry checks that responses end at their expiry, and that a
// weaker response never weakens or shortens a stronger one in force.
func TestApplyExpiry(t *testing.T) {
	type step struct {
		at    time.Duration // after t0
		apply monitor.Response
		want  monitor.Response // Active at the same instant
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"block ends after 30m", []step{
			{0, monitor.Block, monitor.Block},
			{30*time.Minute - time.Nanosecond, monitor.None, monitor.Block},
			{30 * time.Minute, monitor.None, monitor.None},
		}},
		{"log ends after 5m", []step{
			{0, monitor.Log, monitor.Log},
			{5 * time.Minute, monitor.None, monitor.None},
		}},
		{"weaker does not lower", []step{
			{0, monitor.Throttle, monitor.Throttle},
			{time.Minute, monitor.Log, monitor.Throttle},
			{2 * time.Minute, monitor.StepUp, monitor.Throttle},
			// The throttle ends at 10m; the step-up applied at 2m lasts
			// until 17m.
			{10 * time.Minute, monitor.None, monitor.StepUp},
			{17 * time.Minute, monitor.None, monitor.None},
		}},
		{"stronger escalates", []step{
			{0, monitor.Log, monitor.Log},
			{time.Minute, monitor.StepUp, monitor.StepUp},
			{2 * time.Minute, monitor.Block, monitor.Block},
			{3 * time.Minute, monitor.Throttle, monitor.Block},
		}},
		{"applying again extends", []step{
			{0, monitor.Block, monitor.Block},
			{20 * time.Minute, monitor.Block, monitor.Block},
			{49 * time.Minute, monitor.None, monitor.Block},
			{50 * time.Minute, monitor.None, monitor.None},
		}},
		{"no response", []step{
			{0, monitor.None, monitor.None},
			{0, monitor.Response(9), monitor.None},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMonitor(t, monitor.Options{})
			for _, s := range tc.steps {
				now := t0.Add(s.at)
				if got := m.Apply(payments, s.apply, now); got != s.want {
					t.Errorf("Apply(%v) at +%v = %v, want %v", s.apply, s.at, got, s.want)
				}
				if got := m.Active(payments, now); got != s.want {
					t.Errorf("Active() at +%v = %v, want %v", s.at, got, s.want)
				}
			}
		})
	}
}

func TestExpiryOption(t *testing.T) {
	m := newMonitor(t, monitor.Options{Expiry: [5]time.Duration{monitor.Block: time.Minute}})
	m.Apply(payments, monitor.Block, t0)
	if got := m.Active(payments, t0.Add(time.Minute)); got != monitor.None {
		t.Errorf("Active() a minute after a block with Expiry[Block] = 1m = %v, want none", got)
	}
}

func TestAdmit(t *testing.T) {
	tests := []struct {
		name       string
		apply      monitor.Response
		bound      bool
		wantErr    error
		wantActive monitor.Response
	}{
		{"none", monitor.None, false, nil, monitor.None},
		{"log", monitor.Log, false, nil, monitor.Log},
		{"step-up, plain token", monitor.StepUp, false, monitor.ErrStepUpRequired, monitor.StepUp},
		{"step-up, bound token", monitor.StepUp, true, nil, monitor.StepUp},
		{"throttle, plain token", monitor.Throttle, false, monitor.ErrStepUpRequired, monitor.Throttle},
		{"throttle, bound token", monitor.Throttle, true, nil, monitor.Throttle},
		{"block, bound token", monitor.Block, true, monitor.ErrBlocked, monitor.Block},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMonitor(t, monitor.Options{})
			m.Apply(payments, tc.apply, t0)
			active, retry, err := m.Admit(payments, t0, tc.bound)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("Admit(bound %v) under %v err = %v, want %v", tc.bound, tc.apply, err, tc.wantErr)
			}
			if active != tc.wantActive {
				t.Errorf("Admit(bound %v) under %v active = %v, want %v", tc.bound, tc.apply, active, tc.wantActive)
			}
			if tc.apply == monitor.Block && retry != 30*time.Minute {
				t.Errorf("Admit() under a new block retryAfter = %v, want 30m", retry)
			}
		})
	}
	m := newMonitor(t, monitor.Options{})
	if active, _, err := m.Admit("never-seen", t0, false); active != monitor.None || err != nil {
		t.Errorf("Admit(unknown principal) = %v, %v, want none, nil", active, err)
	}
	if got := m.Stats().Principals; got != 0 {
		t.Errorf("Stats().Principals after Admit(unknown principal) = %d, want 0 (not tracked)", got)
	}
}

// TestThrottleBucket checks the throttle's token bucket: one call a second
// by default, none saved beyond a second's worth.
func TestThrottleBucket(t *testing.T) {
	m := newMonitor(t, monitor.Options{})
	m.Apply(payments, monitor.Throttle, t0)
	steps := []struct {
		at        time.Duration
		ok        bool
		wantRetry time.Duration
	}{
		{0, true, 0},
		{0, false, time.Second},
		{500 * time.Millisecond, false, 500 * time.Millisecond},
		{time.Second, true, 0},
		{5 * time.Second, true, 0},              // after 4 s idle, one token, not four
		{5 * time.Second, false, time.Second},   // so the next is refused
		{6 * time.Second, true, 0},              // and one a second goes on
		{10*time.Minute + time.Second, true, 0}, // the throttle has ended
		{10*time.Minute + time.Second, true, 0},
	}
	for _, s := range steps {
		ok, retry := m.Allow(payments, t0.Add(s.at))
		if ok != s.ok || retry != s.wantRetry {
			t.Errorf("Allow() at +%v = %v, %v, want %v, %v", s.at, ok, retry, s.ok, s.wantRetry)
		}
	}

	// Admit refuses with ErrThrottled when the bucket is empty.
	m.Apply(payments, monitor.Throttle, t0.Add(time.Hour))
	m.Admit(payments, t0.Add(time.Hour), true)
	if _, retry, err := m.Admit(payments, t0.Add(time.Hour), true); !errors.Is(err, monitor.ErrThrottled) || retry != time.Second {
		t.Errorf("Admit() with an empty bucket = %v, %v, want ErrThrottled, 1s", retry, err)
	}
}

// TestThrottleFraction checks that a busy principal is throttled to a share
// of its usual rate rather than to ThrottleRate.
func TestThrottleFraction(t *testing.T) {
	m := newMonitor(t, monitor.Options{ThrottleFraction: 0.5})
	// Ten calls a second for a while.
	at := t0
	for range 2000 {
		obs := usual(at)
		m.Score(obs)
		m.Observe(obs, monitor.None)
		at = at.Add(100 * time.Millisecond)
	}
	m.Apply(payments, monitor.Throttle, at)
	n := 0
	for i := range 100 { // 10 s at 10 calls a second
		if ok, _ := m.Allow(payments, at.Add(time.Duration(i)*100*time.Millisecond)); ok {
			n++
		}
	}
	// About 5 a second, plus the first second's burst.
	if n < 45 || n > 60 {
		t.Errorf("Allow() admitted %d of 100 calls over 10 s of a throttled 10-calls-a-second principal, want about 50", n)
	}
}

func TestLift(t *testing.T) {
	m := newMonitor(t, monitor.Options{})
	m.Apply(payments, monitor.Block, t0)
	m.Lift(payments)
	if got := m.Active(payments, t0); got != monitor.None {
		t.Errorf("Active() after Lift = %v, want none", got)
	}
	if _, _, err := m.Admit(payments, t0, false); err != nil {
		t.Errorf("Admit() after Lift err = %v, want nil", err)
	}
}
