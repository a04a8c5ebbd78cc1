package monitor

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidSimConfig means Simulate was given a configuration out of range.
var ErrInvalidSimConfig = errors.New("monitor: invalid simulation configuration")

// SimConfig describes a simulation. The zero value of every field means its
// default.
type SimConfig struct {
	// Seed makes the simulation reproducible: the same seed and
	// configuration give the same report.
	Seed int64
	// Principals is the number of callers. Default 20.
	Principals int
	// Days is the number of days of normal traffic before the night of
	// the exfiltration. Normal traffic goes on through that last day, so
	// the simulation covers Days+1 days. Default 7.
	Days int
	// Start is the first day; the simulation starts at its midnight in
	// Location. Default: Monday 2 March 2026.
	Start time.Time
	// Location is the business time zone. Default: UTC.
	Location *time.Location
	// ExfilFactor is how many times its usual rate the exfiltrating
	// principal decrypts at. Default 20.
	ExfilFactor float64
	// ExfilAttempts is the number of decryptions the exfiltration
	// attempts. Default 500.
	ExfilAttempts int
	// ExfilClock is the local time of day the exfiltration starts, on the
	// last day. Default 02:30.
	ExfilClock time.Duration
	// PlainTokenAttacker makes the attacker call with a plain access
	// token. By default it has a certificate-bound one (it stole the
	// workload's key), so that step-up alone does not stop it.
	PlainTokenAttacker bool
	// Monitor configures the Monitor; its Now and Location are set by
	// Simulate.
	Monitor Options
}

// SimReport is the outcome of a simulation.
type SimReport struct {
	Seed       int64
	Principals int
	Days       int

	// NormalRequests counts the principals' normal calls; NormalRefused
	// those refused by an anomaly response, which is the sum of
	// NormalBlocked, NormalThrottled and NormalStepUpRefused (calls made
	// with a plain token under step-up).
	NormalRequests      int
	NormalRefused       int
	NormalBlocked       int
	NormalThrottled     int
	NormalStepUpRefused int
	// NormalStepUpPassed counts normal calls made under step-up (or a
	// throttle) with a certificate-bound token, which went ahead.
	NormalStepUpPassed int
	// NormalResponses counts the responses the decider chose for normal
	// calls, by Response (None included).
	NormalResponses [numResponses]int
	// PrincipalsRefused is the number of principals with at least one
	// normal call refused.
	PrincipalsRefused int

	// ExfilAttempts counts the exfiltration's calls; ExfilAdmitted those
	// that went ahead, ExfilBeforeBlock those that went ahead before the
	// principal was first blocked. ExfilFirstBlock is the 1-based number
	// of the attempt that was first refused as blocked, 0 if none was.
	ExfilAttempts    int
	ExfilAdmitted    int
	ExfilBeforeBlock int
	ExfilFirstBlock  int
	// ExfilResponses counts the responses the decider chose for the
	// exfiltration's calls.
	ExfilResponses [numResponses]int
}

// NormalRefusedShare is the share of normal calls refused, 0 to 1.
func (r SimReport) NormalRefusedShare() float64 {
	if r.NormalRequests == 0 {
		return 0
	}
	return float64(r.NormalRefused) / float64(r.NormalRequests)
}

// String returns the report as a few lines of text.
func (r SimReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d principals, %d days of normal traffic, then an exfiltration\n", r.Seed, r.Principals, r.Days)
	fmt.Fprintf(&b, "exfiltration: %d attempts, %d went ahead before the first block (attempt %s), %d went ahead in all\n",
		r.ExfilAttempts, r.ExfilBeforeBlock, attemptName(r.ExfilFirstBlock), r.ExfilAdmitted)
	fmt.Fprintf(&b, "  responses decided: %s\n", responseCounts(r.ExfilResponses))
	fmt.Fprintf(&b, "normal: %d calls, %d refused (%.4f%%): %d blocked, %d throttled, %d step-up refused; %d passed step-up with a bound token; %d principals had a call refused\n",
		r.NormalRequests, r.NormalRefused, 100*r.NormalRefusedShare(), r.NormalBlocked, r.NormalThrottled,
		r.NormalStepUpRefused, r.NormalStepUpPassed, r.PrincipalsRefused)
	fmt.Fprintf(&b, "  responses decided: %s\n", responseCounts(r.NormalResponses))
	return b.String()
}

func attemptName(n int) string {
	if n == 0 {
		return "never"
	}
	return strconv.Itoa(n)
}

func responseCounts(c [numResponses]int) string {
	parts := make([]string, 0, numResponses)
	for resp, n := range c {
		parts = append(parts, Response(resp).String()+" "+strconv.Itoa(n))
	}
	return strings.Join(parts, ", ")
}

// Simulate replays normal traffic for cfg.Principals principals over
// cfg.Days days and, on the night after, an exfiltration: one principal
// decrypting restricted data at cfg.ExfilFactor times its usual rate from
// an address it never used. Every call is scored by a new Monitor, its
// response decided by d (DefaultThresholds when nil), applied, admitted or
// refused, and learned from when admitted, as a server would. The clock is
// simulated: nothing sleeps.
//
// Normal traffic: each principal works office hours (a few work around the
// clock, with a daily rhythm) at its own rate, with noise: day-to-day
// variation, bursts of 3 to 5 times its rate, occasional late or early
// work, weekend sessions, new keys, addresses replaced in the same subnet
// and, rarely, a new subnet.
func Simulate(cfg SimConfig, d ResponseDecider) (SimReport, error) {
	if err := cfg.setDefaults(); err != nil {
		return SimReport{}, err
	}
	if d == nil {
		d = DefaultThresholds
	}
	var clock int64
	opts := cfg.Monitor
	opts.Location = cfg.Location
	opts.Now = func() time.Time { return time.Unix(0, clock) }
	m, err := New(opts)
	if err != nil {
		return SimReport{}, err
	}

	gens := make([]*simGen, cfg.Principals)
	for i := range gens {
		gens[i] = newSimGen(&cfg, i)
	}
	attack := newAttackGen(&cfg, gens[0].p)

	rep := SimReport{Seed: cfg.Seed, Principals: cfg.Principals, Days: cfg.Days}
	refused := make([]bool, cfg.Principals)
	blocked := false
	for {
		// The earliest next call; ties go to the lower principal, then
		// to normal traffic.
		var next *simEvent
		var from func()
		for _, g := range gens {
			if ev := g.peek(); ev != nil && (next == nil || ev.at < next.at) {
				next, from = ev, g.pop
			}
		}
		if ev := attack.peek(); ev != nil && (next == nil || ev.at < next.at) {
			next, from = ev, attack.pop
		}
		if next == nil {
			break
		}
		ev := *next
		from()
		clock = ev.at
		p := ev.p
		k := &p.keys[ev.key]
		obs := Observation{
			Principal:        p.name,
			Time:             time.Unix(0, ev.at).In(cfg.Location),
			Source:           ev.addr,
			Keys:             k.names,
			Tier:             k.tier,
			Reveal:           ev.reveal,
			TransactionValue: ev.value,
			HasValue:         ev.value > 0,
		}
		a := m.Score(obs)
		decided := None
		if a.Risk > 0 {
			decided = d.DecideResponse(obs, a.Risk)
			m.Apply(p.name, decided, obs.Time)
		}
		bound := p.bound
		if ev.attack {
			bound = !cfg.PlainTokenAttacker
		}
		active, _, err := m.Admit(p.name, obs.Time, bound)
		if err == nil {
			m.Observe(obs, active)
		}

		if ev.attack {
			rep.ExfilAttempts++
			rep.ExfilResponses[decided]++
			if errors.Is(err, ErrBlocked) && !blocked {
				blocked = true
				rep.ExfilFirstBlock = rep.ExfilAttempts
			}
			if err == nil {
				rep.ExfilAdmitted++
				if !blocked {
					rep.ExfilBeforeBlock++
				}
			}
			continue
		}
		rep.NormalRequests++
		rep.NormalResponses[decided]++
		if err != nil {
			rep.NormalRefused++
			refused[p.index] = true
		}
		switch {
		case errors.Is(err, ErrBlocked):
			rep.NormalBlocked++
		case errors.Is(err, ErrThrottled):
			rep.NormalThrottled++
		case errors.Is(err, ErrStepUpRequired):
			rep.NormalStepUpRefused++
		}
		if active >= StepUp && active < Block && bound {
			rep.NormalStepUpPassed++
		}
	}
	for _, r := range refused {
		if r {
			rep.PrincipalsRefused++
		}
	}
	return rep, nil
}

func (c *SimConfig) setDefaults() error {
	bad := func(name string) error { return fmt.Errorf("%w: %s out of range", ErrInvalidSimConfig, name) }
	switch {
	case c.Principals < 0:
		return bad("Principals")
	case c.Days < 0:
		return bad("Days")
	case !(c.ExfilFactor >= 0) || math.IsInf(c.ExfilFactor, 0):
		return bad("ExfilFactor")
	case c.ExfilAttempts < 0:
		return bad("ExfilAttempts")
	case c.ExfilClock < 0 || c.ExfilClock >= 24*time.Hour:
		return bad("ExfilClock")
	}
	c.Principals = orDefault(c.Principals, 20)
	c.Days = orDefault(c.Days, 7)
	c.ExfilFactor = orDefault(c.ExfilFactor, 20)
	c.ExfilAttempts = orDefault(c.ExfilAttempts, 500)
	c.ExfilClock = orDefault(c.ExfilClock, 2*time.Hour+30*time.Minute)
	if c.Location == nil {
		c.Location = time.UTC
	}
	if c.Start.IsZero() {
		c.Start = time.Date(2026, 3, 2, 0, 0, 0, 0, c.Location)
	} else {
		y, mo, d := c.Start.In(c.Location).Date()
		c.Start = time.Date(y, mo, d, 0, 0, 0, 0, c.Location)
	}
	return nil
}

// simKey is a key a simulated principal uses.
type simKey struct {
	names  []string // the key's name, as Observation.Keys
	tier   Tier
	reveal float64 // probability that a call reveals
	weight float64 // relative frequency
}

// simProfile is a simulated principal's habits.
type simProfile struct {
	index      int
	name       string
	alwaysOn   bool    // works around the clock
	start, end float64 // office hours, local, in hours
	rate       float64 // calls per second while working
	keys       []simKey
	sources    []netip.Addr
	bound      bool    // calls with a certificate-bound token
	valueMu    float64 // log-normal transaction values, when valueSD > 0
	valueSD    float64
}

type simEvent struct {
	at     int64 // Unix ns
	p      *simProfile
	key    int
	addr   netip.Addr
	reveal bool
	value  float64
	attack bool
}

// simGen generates one principal's normal calls, a day at a time.
type simGen struct {
	cfg    *SimConfig
	p      *simProfile
	rng    *rand.Rand
	day    int
	events []simEvent
	next   int
	subnet int // the last subnet number used
}

func newSimGen(cfg *SimConfig, i int) *simGen {
	// Each principal has its own generator, so that one principal's
	// traffic does not depend on the others'.
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), uint64(i)+1))
	p := &simProfile{
		index:    i,
		name:     fmt.Sprintf("sim-principal-%02d", i),
		alwaysOn: i != 0 && rng.Float64() < 0.25,
		start:    7 + 3*rng.Float64(),
		rate:     0.02 * math.Pow(25, rng.Float64()), // 0.02 to 0.5 per second
		bound:    rng.Float64() < 0.5,
	}
	p.end = p.start + 8 + 2*rng.Float64()
	nk := 2 + rng.IntN(4)
	for k := range nk {
		p.keys = append(p.keys, simKey{
			names:  []string{fmt.Sprintf("%s-key-%d", p.name, k)},
			tier:   Tier(1 + rng.IntN(4)),
			reveal: rng.Float64(),
			weight: 1 / float64(k+1),
		})
	}
	if i == 0 {
		// The exfiltration's victim: it decrypts restricted data in its
		// ordinary work, so that the tier mix does not give it away.
		p.keys[0].tier, p.keys[0].reveal = TierRestricted, 0.5
	}
	g := &simGen{cfg: cfg, p: p, rng: rng}
	for range 1 + rng.IntN(3) {
		p.sources = append(p.sources, g.newAddr(true))
	}
	if rng.Float64() < 0.3 {
		p.valueMu, p.valueSD = math.Log(50+450*rng.Float64()), 0.5+0.5*rng.Float64()
	}
	return g
}

// newAddr returns an address in a new subnet, or in the subnet of one of
// the principal's addresses.
func (g *simGen) newAddr(newSubnet bool) netip.Addr {
	if newSubnet || len(g.p.sources) == 0 {
		g.subnet++
		return netip.AddrFrom4([4]byte{10, byte(g.p.index), byte(g.subnet), byte(1 + g.rng.IntN(254))})
	}
	b := g.p.sources[g.rng.IntN(len(g.p.sources))].As4()
	b[3] = byte(1 + g.rng.IntN(254))
	return netip.AddrFrom4(b)
}

func (g *simGen) peek() *simEvent {
	for g.next == len(g.events) {
		if g.day > g.cfg.Days {
			return nil
		}
		g.genDay()
		g.day++
	}
	return &g.events[g.next]
}

func (g *simGen) pop() { g.next++ }

// genDay generates day g.day's calls.
func (g *simGen) genDay() {
	p, rng := g.p, g.rng
	g.events, g.next = g.events[:0], 0

	// The day's changes of habit.
	if rng.Float64() < 0.05 {
		p.sources[rng.IntN(len(p.sources))] = g.newAddr(false) // a pod moved
	}
	if rng.Float64() < 0.01 {
		a := g.newAddr(true) // redeployed elsewhere
		if len(p.sources) < 3 {
			p.sources = append(p.sources, a)
		} else {
			p.sources[rng.IntN(len(p.sources))] = a
		}
	}
	if rng.Float64() < 0.1 {
		k := len(p.keys)
		p.keys = append(p.keys, simKey{
			names:  []string{fmt.Sprintf("%s-key-%d", p.name, k)},
			tier:   Tier(1 + rng.IntN(4)),
			reveal: rng.Float64(),
			weight: 0.5,
		})
	}

	// The rate, minute by minute.
	var perMin [24 * 60]float64
	r := p.rate * math.Exp(0.2*rng.NormFloat64())
	midnight := g.cfg.Start.AddDate(0, 0, g.day)
	weekend := midnight.Weekday() == time.Saturday || midnight.Weekday() == time.Sunday
	set := func(from, to, rate float64) {
		for m := max(0, int(from*60)); m < min(len(perMin), int(to*60)); m++ {
			perMin[m] = rate
		}
	}
	switch {
	case p.alwaysOn:
		for m := range perMin {
			h := float64(m) / 60
			perMin[m] = r * (0.3 + 0.7*max(0, math.Sin(math.Pi*(h-6)/14)))
		}
	case weekend:
		if rng.Float64() < 0.15 {
			from := 10 + 4*rng.Float64()
			set(from, from+1+2*rng.Float64(), r/2)
		}
	default:
		start, end := p.start, p.end
		if rng.Float64() < 0.05 {
			start--
			set(start, p.start, r/2)
		}
		set(p.start, p.end, r)
		if rng.Float64() < 0.1 {
			end = p.end + 1 + 2*rng.Float64()
			set(p.end, end, r/2)
		}
	}
	for m := 0; m < len(perMin); m += 60 {
		if perMin[m] > 0 && rng.Float64() < 0.1 {
			from := m + rng.IntN(60)
			f := 3 + 2*rng.Float64()
			for b := from; b < min(len(perMin), from+1+rng.IntN(5)); b++ {
				perMin[b] *= f
			}
		}
	}

	var total float64
	for _, k := range p.keys {
		total += k.weight
	}
	base := midnight.UnixNano()
	for m, rate := range perMin {
		n := poisson(rng, rate*60)
		first := len(g.events)
		for range n {
			ev := simEvent{
				at:   base + int64(m)*int64(time.Minute) + rng.Int64N(int64(time.Minute)),
				p:    p,
				addr: p.sources[rng.IntN(len(p.sources))],
			}
			x := rng.Float64() * total
			for ev.key = 0; ev.key < len(p.keys)-1 && x >= p.keys[ev.key].weight; ev.key++ {
				x -= p.keys[ev.key].weight
			}
			ev.reveal = rng.Float64() < p.keys[ev.key].reveal
			if p.valueSD > 0 {
				ev.value = math.Round(100*math.Exp(p.valueMu+p.valueSD*rng.NormFloat64())) / 100
			}
			g.events = append(g.events, ev)
		}
		sortByTime(g.events[first:])
	}
}

// attackGen generates the exfiltration.
type attackGen struct {
	ev   simEvent
	left int
	gap  float64 // mean ns between attempts
	rng  *rand.Rand
}

func newAttackGen(cfg *SimConfig, victim *simProfile) *attackGen {
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0))
	at := cfg.Start.AddDate(0, 0, cfg.Days).Add(cfg.ExfilClock)
	return &attackGen{
		ev: simEvent{
			at:     at.UnixNano(),
			p:      victim,
			key:    0, // its restricted key
			addr:   netip.MustParseAddr("198.51.100.77"),
			reveal: true,
			attack: true,
		},
		left: cfg.ExfilAttempts,
		gap:  1e9 / (cfg.ExfilFactor * victim.rate),
		rng:  rng,
	}
}

func (a *attackGen) peek() *simEvent {
	if a.left == 0 {
		return nil
	}
	return &a.ev
}

func (a *attackGen) pop() {
	a.left--
	a.ev.at += int64(a.rng.ExpFloat64()*a.gap) + 1
}

// poisson draws from a Poisson distribution of mean mean.
func poisson(rng *rand.Rand, mean float64) int {
	if mean <= 0 {
		return 0
	}
	if mean > 30 {
		return max(0, int(math.Round(mean+math.Sqrt(mean)*rng.NormFloat64())))
	}
	l, k, p := math.Exp(-mean), 0, rng.Float64()
	for p > l {
		k++
		p *= rng.Float64()
	}
	return k
}

// sortByTime sorts a minute's few events by time (insertion sort).
func sortByTime(evs []simEvent) {
	for i := 1; i < len(evs); i++ {
		for j := i; j > 0 && evs[j].at < evs[j-1].at; j-- {
			evs[j], evs[j-1] = evs[j-1], evs[j]
		}
	}
}
