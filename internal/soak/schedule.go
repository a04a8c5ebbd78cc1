package soak

import (
	"fmt"
	"strings"
	"time"
)

// FaultKind is a kind of injected fault.
type FaultKind string

// The faults a run injects.
const (
	// FaultKill kills a replica with SIGKILL and starts it again.
	FaultKill FaultKind = "kill-replica"
	// FaultTerm stops a replica with SIGTERM, as an operator does, and
	// starts it again.
	FaultTerm FaultKind = "term-replica"
	// FaultDropPostgres terminates every PostgreSQL connection to the
	// run's database (pg_terminate_backend).
	FaultDropPostgres FaultKind = "drop-postgres"
	// FaultRemoveToken moves the SoftHSM2 token's directory out of the
	// token directory for Fault.Outage and puts it back.
	FaultRemoveToken FaultKind = "remove-token"
	// FaultRotateRootKey creates a new root key object in the token and
	// rotates the root key to it through AdminService, waiting until the
	// job is done.
	FaultRotateRootKey FaultKind = "rotate-root-key"
)

// Fault is one scheduled fault.
type Fault struct {
	Kind FaultKind
	// At is when it is injected, from the start of the traffic.
	At time.Duration
	// Replica is the index of the replica FaultKill and FaultTerm stop.
	Replica int
	// Outage is how long FaultRemoveToken keeps the token away.
	Outage time.Duration
}

func (f Fault) String() string {
	switch f.Kind {
	case FaultKill:
		return fmt.Sprintf("kill -9 replica %s, restart it", replicaName(f.Replica))
	case FaultTerm:
		return fmt.Sprintf("SIGTERM replica %s, restart it", replicaName(f.Replica))
	case FaultDropPostgres:
		return "terminate every PostgreSQL connection to the database"
	case FaultRemoveToken:
		return fmt.Sprintf("remove the SoftHSM2 token for %v, restore it", f.Outage)
	case FaultRotateRootKey:
		return "create a new root key in the token, rotate the root key to it, wait until done"
	}
	return string(f.Kind)
}

// ReferenceDuration is the run length the reference schedule is written
// for. [Schedule] scales its times to the run's duration.
const ReferenceDuration = 30 * time.Minute

// MinDuration is the shortest run: the compressed schedule needs room for
// a replica restart and a root-key rotation between two faults.
const MinDuration = time.Minute

// referenceOutage is how long the token stays away in a 30-minute run;
// shorter runs scale it down to minOutage at least, longer ones up to
// maxOutage at most.
const (
	referenceOutage = 15 * time.Second
	minOutage       = 3 * time.Second
	maxOutage       = 20 * time.Second
)

// referenceSchedule is the schedule of a 30-minute run: every fault at
// least once, each in its own stretch of traffic, and a quiet tail (the
// last 6 minutes) before the end. A root-key rotation takes at least the
// rotator's grace period (about 40s with the default settings); faults are
// injected one at a time, each once the previous one has settled, so in a
// short run the ones after the rotation move later (see Run).
var referenceSchedule = []Fault{
	{Kind: FaultKill, At: 2 * time.Minute, Replica: 0},
	{Kind: FaultDropPostgres, At: 5*time.Minute + 30*time.Second},
	{Kind: FaultRemoveToken, At: 9 * time.Minute},
	{Kind: FaultRotateRootKey, At: 12*time.Minute + 30*time.Second},
	{Kind: FaultTerm, At: 16*time.Minute + 30*time.Second, Replica: 1},
	{Kind: FaultDropPostgres, At: 20 * time.Minute},
	{Kind: FaultRemoveToken, At: 23*time.Minute + 30*time.Second},
}

// Schedule returns the faults of a run of duration d: the reference
// schedule with every time scaled by d/30m (a 5-minute run injects the
// same faults six times closer together), and the token outage scaled
// likewise but kept within 3s..20s.
func Schedule(d time.Duration) []Fault {
	scale := func(t time.Duration) time.Duration {
		return time.Duration(float64(t) * float64(d) / float64(ReferenceDuration))
	}
	outage := min(max(scale(referenceOutage), minOutage), maxOutage).Round(100 * time.Millisecond)
	out := make([]Fault, len(referenceSchedule))
	for i, f := range referenceSchedule {
		f.At = scale(f.At).Round(100 * time.Millisecond)
		if f.Kind == FaultRemoveToken {
			f.Outage = outage
		}
		out[i] = f
	}
	return out
}

// FormatSchedule prints a schedule, one fault a line.
func FormatSchedule(faults []Fault) string {
	var b strings.Builder
	for i, f := range faults {
		fmt.Fprintf(&b, "  %d. t+%s  %s\n", i+1, clock(f.At), f)
	}
	return b.String()
}

// clock formats an offset as [h:]mm:ss.t.
func clock(d time.Duration) string {
	neg := d < 0
	if neg {
		d = -d
	}
	d = d.Round(100 * time.Millisecond)
	h, m := d/time.Hour, d%time.Hour/time.Minute
	s := float64(d%time.Minute) / float64(time.Second)
	out := fmt.Sprintf("%02d:%04.1f", m, s)
	if h > 0 {
		out = fmt.Sprintf("%d:%s", h, out)
	}
	if neg {
		out = "-" + out
	}
	return out
}

// replicaName names replica i: a, b, ...
func replicaName(i int) string { return string(rune('a' + i)) }

// settleBounds are the bounds of a fault's window after its restore (see
// Recover): at least minSettle, at most maxSettle (10s to 30s, a 60th of
// the run).
func settleBounds(d time.Duration) (minSettle, maxSettle time.Duration) {
	return time.Second, min(max(d/60, 10*time.Second), 30*time.Second)
}

// readyInterval is how often a replica runs its readiness checks (the
// server's default ReadyInterval). After the token comes back, a replica
// counts as ready only by a /readyz read at least this long after the
// restore, so that a round of checks has run since.
const readyInterval = 5 * time.Second

// faultGap is the least time between one fault having settled and the next.
const faultGap = time.Second
