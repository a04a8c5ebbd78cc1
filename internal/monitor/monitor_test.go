package monitor_test

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/monitor"
)

func TestMaxPrincipals(t *testing.T) {
	for _, max := range []int{1, 10, 100, 5000} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			m := newMonitor(t, monitor.Options{MaxPrincipals: max})
			const n = 6000
			for i := range n {
				m.Score(monitor.Observation{Principal: fmt.Sprint("p", i), Time: t0.Add(time.Duration(i) * time.Second)})
			}
			st := m.Stats()
			if st.Principals > max || st.Principals < max/2 {
				t.Errorf("Stats().Principals after %d principals with MaxPrincipals %d = %d, want at most %d and at least half", n, max, st.Principals, max)
			}
			if want := uint64(n - st.Principals); st.Evicted != want {
				t.Errorf("Stats().Evicted = %d, want %d", st.Evicted, want)
			}
		})
	}
}

// TestEvictionKeepsResponses checks that a principal under a response is
// not evicted while idle ones can be, and that the recent ones stay.
func TestEvictionKeepsResponses(t *testing.T) {
	m := newMonitor(t, monitor.Options{MaxPrincipals: 16})
	m.Score(monitor.Observation{Principal: "blocked", Time: t0})
	m.Apply("blocked", monitor.Block, t0)
	for i := range 1000 {
		m.Score(monitor.Observation{Principal: fmt.Sprint("p", i), Time: t0.Add(time.Duration(i) * time.Millisecond)})
	}
	if got := m.Active("blocked", t0.Add(time.Second)); got != monitor.Block {
		t.Errorf("Active(blocked principal) after 1000 new principals = %v, want block (never evicted while blocked)", got)
	}
	// Once its block is over, it is idle like any other.
	after := t0.Add(time.Hour)
	for i := range 1000 {
		m.Score(monitor.Observation{Principal: fmt.Sprint("q", i), Time: after.Add(time.Duration(i) * time.Millisecond)})
	}
	if got := m.Active("blocked", after); got != monitor.None {
		t.Errorf("Active(formerly blocked principal) = %v, want none", got)
	}
	if got := m.Stats().Principals; got > 16 {
		t.Errorf("Stats().Principals = %d, want at most 16", got)
	}
}

// TestConcurrent runs every method from many goroutines on shared and
// separate principals (run it with -race).
func TestConcurrent(t *testing.T) {
	m := newMonitor(t, monitor.Options{MaxPrincipals: 64})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 2000 {
				obs := usual(t0.Add(time.Duration(i) * 10 * time.Millisecond))
				if i%2 == 0 {
					obs.Principal = fmt.Sprint("p", (g*2000+i)%200) // more than MaxPrincipals: evictions
				}
				a := m.Score(obs)
				if a.Risk < 0 || a.Risk > 100 {
					t.Errorf("Score() risk = %d, want 0..100", a.Risk)
					return
				}
				if i%100 == 0 {
					m.Apply(obs.Principal, monitor.Response(i/100%5), obs.Time)
				}
				active, _, err := m.Admit(obs.Principal, obs.Time, i%3 == 0)
				if err == nil {
					m.Observe(obs, active)
				}
				m.Allow(obs.Principal, obs.Time)
				if i%500 == 0 {
					m.Lift(obs.Principal)
					m.Stats()
				}
			}
		})
	}
	wg.Wait()
	if got := m.Stats().Principals; got > 64 {
		t.Errorf("Stats().Principals = %d, want at most 64", got)
	}
}

// TestNothingNamesAPrincipal checks that what may become a log field, a
// metric label or a caller's error message names no principal, key or
// address: reasons and responses are fixed names, and assessments and
// errors hold no values from the observation.
func TestNothingNamesAPrincipal(t *testing.T) {
	label := regexp.MustCompile(`^[a-z_]+$`)
	var names []string
	for _, r := range monitor.Reasons() {
		names = append(names, r.String())
	}
	for _, r := range append(monitor.Responses(), monitor.None) {
		names = append(names, r.String())
	}
	for _, n := range names {
		if !label.MatchString(n) {
			t.Errorf("label %q is not a fixed lower-case name", n)
		}
	}

	const secret = "spiffe://bank.example/secret-principal"
	m, now := trained(t, monitor.Options{})
	obs := usual(now.Add(16 * time.Hour))
	obs.Principal, obs.Keys, obs.Source = secret, []string{"secret-key"}, elsewhere
	m.Score(usual(now)) // the trained principal too
	var a monitor.Assessment
	for range 30 {
		obs.Time = obs.Time.Add(10 * time.Millisecond)
		a = m.Score(obs)
	}
	m.Apply(secret, monitor.Block, obs.Time)
	_, _, errBlocked := m.Admit(secret, obs.Time, true)
	if errBlocked == nil {
		t.Fatal("Admit(blocked principal) err = nil, want ErrBlocked")
	}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("scored", "assessment", a)
	texts := []string{a.String(), logged.String(), errBlocked.Error(), fmt.Sprintf("%+v", m.Stats())}
	for _, err := range []error{monitor.ErrBlocked, monitor.ErrThrottled, monitor.ErrStepUpRequired} {
		texts = append(texts, err.Error())
	}
	for _, text := range texts {
		for _, v := range []string{secret, "secret-key", elsewhere.String(), payments} {
			if strings.Contains(text, v) {
				t.Errorf("%q contains %q", text, v)
			}
		}
	}
	if !strings.Contains(logged.String(), "risk=") {
		t.Errorf("logged assessment %q, want its risk", logged.String())
	}
	if !errors.Is(errBlocked, monitor.ErrBlocked) {
		t.Errorf("Admit(blocked principal) err = %v, want ErrBlocked", errBlocked)
	}
}

func TestAssessmentString(t *testing.T) {
	m, now := trained(t, monitor.Options{})
	obs := usual(now)
	obs.Source = elsewhere
	a := m.Score(obs)
	want := fmt.Sprintf("risk %d (new_source %d)", a.Risk, a.Points(monitor.ReasonNewSource))
	if got := a.String(); got != want || a.Risk == 0 {
		t.Errorf("Score(new source).String() = %q, want %q with a risk above 0", got, want)
	}
	if got := (monitor.Assessment{}).String(); got != "risk 0" {
		t.Errorf("Assessment{}.String() = %q, want %q", got, "risk 0")
	}
}
