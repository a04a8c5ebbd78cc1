package soak

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
)

// summarize attributes the calls to the fault windows and applies the
// checks.
func (h *harness) summarize(sched []Fault, faults []faultRun, end ending) *Summary {
	o := h.opts
	s := &Summary{Seed: o.Seed, DurationS: o.Duration.Seconds(), ElapsedS: end.elapsed.Seconds(), Clients: o.Clients, Replicas: len(h.replicas),
		Database: h.db.where, WorkDir: o.WorkDir, ByMethod: map[string]int64{}, Latency: map[string]LatencyStats{}, LatencyCalm: map[string]LatencyStats{},
		Rotations: h.traffic.rotations.Load(), TokensMinted: h.minted(), Remem: end.remembered}
	var calls []Call
	firstErr := map[errKey]string{}
	for _, c := range h.clients {
		calls = append(calls, c.calls...)
		for k, m := range c.firstErr {
			if _, ok := firstErr[k]; !ok {
				firstErr[k] = m
			}
		}
	}
	sort.Slice(calls, func(i, j int) bool { return calls[i].Start < calls[j].Start })
	minSettle, maxSettle := settleBounds(o.Duration)

	windows := make([]Window, len(faults))
	var stops []stopWindow
	allInjected, allRecovered := true, true
	var faultProblems []string
	for i, f := range faults {
		rec := Recover(calls, FaultTiming{Injected: f.injected, Restored: f.restored, Replicas: f.replicas, ReadyAt: f.readyAt}, minSettle, maxSettle)
		windows[i] = rec.Window
		if f.Kind == FaultKill || f.Kind == FaultTerm {
			for _, r := range f.replicas {
				stops = append(stops, stopWindow{rec.Window, r})
			}
		}
		fr := FaultReport{Kind: f.Kind, What: f.String(), PlannedS: f.At.Seconds(), InjectedS: f.injected.Seconds(), RestoredS: f.restored.Seconds(),
			WindowEndS: rec.Window.End.Seconds(), Detail: f.detail}
		secs := func(d time.Duration) float64 {
			if d < 0 {
				return -1
			}
			return math.Round(d.Seconds()*1000) / 1000
		}
		for j, r := range f.replicas {
			fr.Replicas = append(fr.Replicas, replicaName(r))
			fr.CallsOKAfterS = append(fr.CallsOKAfterS, secs(rec.CallsAfter[j]))
			fr.ReadyAfterS = append(fr.ReadyAfterS, secs(rec.ReadyAfter[j]))
		}
		if f.err != nil {
			fr.Err = f.err.Error()
			allInjected = false
			faultProblems = append(faultProblems, fmt.Sprintf("%s: %v", f.Kind, f.err))
		}
		if !rec.Recovered {
			allRecovered = false
		}
		for _, c := range calls {
			if c.Start > rec.Window.End {
				break
			}
			if InWindow(c, []Window{rec.Window}) {
				fr.Calls++
				if c.Code != codes.OK {
					fr.Errors++
					if fr.ErrorCodes == nil {
						fr.ErrorCodes = map[string]int64{}
					}
					fr.ErrorCodes[c.Code.String()]++
				}
			}
		}
		s.Faults = append(s.Faults, fr)
	}

	errs, wrong := map[errKey]*ErrorCount{}, map[errKey]*ErrorCount{}
	count := func(m map[errKey]*ErrorCount, k errKey) *ErrorCount {
		e := m[k]
		if e == nil {
			e = &ErrorCount{Method: k.method.String(), Code: k.code.String(), Message: firstErr[k]}
			m[k] = e
		}
		return e
	}
	errCount := func(k errKey) *ErrorCount { return count(errs, k) }
	wrongCount := func(k errKey) *ErrorCount { return count(wrong, k) }
	lat, calm := make([][]time.Duration, numMethods), make([][]time.Duration, numMethods)
	for _, c := range calls {
		s.Requests++
		s.ByMethod[c.Method.String()]++
		in := InWindow(c, windows)
		if !in {
			s.CallsOutside++
		}
		if c.Code == codes.OK {
			lat[c.Method] = append(lat[c.Method], c.End-c.Start)
			if !in {
				calm[c.Method] = append(calm[c.Method], c.End-c.Start)
			}
			continue
		}
		k := errKey{c.Method, c.Code}
		e := errCount(k)
		if in {
			e.InFault++
			s.ErrorsInFault++
		} else {
			e.Outside++
			s.ErrorsOutside++
		}
		if !expectedCode(c.Code, stoppedDuring(c, stops)) {
			s.NWrongCodes++
			if in {
				wrongCount(k).InFault++
			} else {
				wrongCount(k).Outside++
			}
		}
	}
	attributeUnrecorded(&h.traffic.unrecorded, windows, stops, s, errCount, wrongCount)
	for m := range numMethods {
		s.Latency[m.String()], s.LatencyCalm[m.String()] = Latencies(lat[m]), Latencies(calm[m])
	}
	s.Errors, s.WrongCodes = sortedCounts(errs), sortedCounts(wrong)
	h.traffic.mu.Lock()
	s.Violations, s.NViolations = h.traffic.violations, h.traffic.nViolation
	h.traffic.mu.Unlock()

	// Memory and goroutines.
	keys := make([][2]int, 0, len(h.series))
	for k := range h.series {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i][0] < keys[j][0] || keys[i][0] == keys[j][0] && keys[i][1] < keys[j][1]
	})
	judged := map[int]bool{}
	memOK := true
	var memProblems []string
	for _, k := range keys {
		ss := h.series[k]
		g := JudgeGrowth(ss)
		first, last := ss[0], ss[len(ss)-1]
		s.Memory = append(s.Memory, SeriesReport{Replica: replicaName(k[0]), Start: k[1], Samples: len(ss), FromS: first.At.Seconds(), ToS: last.At.Seconds(),
			Goroutines: [2]float64{first.Goroutines, last.Goroutines}, HeapMiB: [2]float64{first.HeapInuse / (1 << 20), last.HeapInuse / (1 << 20)},
			RSSMiB: [2]float64{first.RSS / (1 << 20), last.RSS / (1 << 20)}, Judged: g.Judged, Pass: g.Pass, Verdict: g.Reason})
		if g.Judged {
			judged[k[0]] = true
		}
		if !g.Pass {
			memOK = false
			memProblems = append(memProblems, fmt.Sprintf("%s#%d: %s", replicaName(k[0]), k[1], g.Reason))
		}
	}
	for i := range h.replicas {
		if !judged[i] {
			memOK = false
			memProblems = append(memProblems, fmt.Sprintf("replica %s: no process ran long enough to judge", replicaName(i)))
		}
	}

	// The checks.
	check := func(name string, pass bool, detail string) {
		s.Checks = append(s.Checks, Check{Name: name, Pass: pass, Detail: detail})
	}
	kinds := map[FaultKind]int{}
	for _, f := range faults {
		kinds[f.Kind]++
	}
	detail := fmt.Sprintf("%d of %d scheduled faults injected and restored", len(faults), len(sched))
	if len(faultProblems) > 0 {
		detail += ": " + strings.Join(faultProblems, "; ")
	}
	check("faults injected", allInjected && len(faults) == len(sched) && len(kinds) == 5, detail)
	detail = fmt.Sprintf("every affected replica answered a call and was ready within %v of each restore", maxSettle)
	if !allRecovered {
		detail = fmt.Sprintf("a replica did not answer a call or was not ready within %v of a restore (see the faults)", maxSettle)
	}
	check("recovered after every fault", allRecovered, detail)
	var noOK []string
	for m := range numMethods {
		if s.Latency[m.String()].Count == 0 {
			noOK = append(noOK, m.String())
		}
	}
	detail = "every method succeeded at least once"
	if len(noOK) > 0 {
		detail = "no successful call of " + strings.Join(noOK, ", ")
	}
	check("traffic ran", len(noOK) == 0, detail)
	detail = fmt.Sprintf("%d calls succeeded with a wrong result; %d failed with a code no fault explains", s.NViolations, s.NWrongCodes)
	if len(s.WrongCodes) > 0 {
		var ws []string
		for _, e := range s.WrongCodes {
			ws = append(ws, fmt.Sprintf("%s %s %d (%d in fault windows)", e.Method, e.Code, e.InFault+e.Outside, e.InFault))
		}
		detail += ": " + strings.Join(ws, ", ")
	}
	check("no wrong results during the run", s.NViolations == 0 && s.NWrongCodes == 0, detail)
	limit := int64(math.Floor(MaxOutsideErrorRate * float64(s.CallsOutside)))
	check("errors outside fault windows", s.ErrorsOutside <= limit,
		fmt.Sprintf("%d of %d calls outside the fault windows failed; at most %.1f%% (%d) may", s.ErrorsOutside, s.CallsOutside, MaxOutsideErrorRate*100, limit))
	for _, r := range end.remembered {
		detail := fmt.Sprintf("%d of %d kept (%d handed back) checked through every replica (%d), %d failed", r.Checked, r.Kept, r.Seen, len(h.replicas), r.Failed)
		if r.Kept == 0 {
			detail = "none kept: nothing was checked"
		}
		check("every remembered "+r.Kind+" checks out", r.Kept > 0 && r.Failed == 0 && r.Checked == r.Kept, detail)
	}
	if end.auditErr != nil {
		check("audit log verifies", false, end.auditErr.Error())
	} else {
		s.Audit = &end.audit
		kills, graceful := 0, end.cleanStops
		for _, f := range faults {
			switch {
			case f.Kind == FaultKill:
				kills++
			case f.Kind == FaultTerm && f.err == nil:
				graceful++
			}
		}
		pass, detail := judgeAudit(end.audit, kills, graceful)
		check("audit log verifies", pass, fmt.Sprintf("%s; %d checkpoints verified under %d root keys", detail, end.audit.Checkpoints, len(h.tok.roots)))
	}
	detail = fmt.Sprintf("%d process series, %d /metrics reads failed", len(keys), h.sampleErrs.Load())
	if len(memProblems) > 0 {
		detail += ": " + strings.Join(memProblems, "; ")
	}
	check("memory and goroutines bounded", memOK, detail)
	var crashed []string
	for _, r := range h.replicas {
		for _, e := range r.unexpectedExits() {
			crashed = append(crashed, fmt.Sprintf("replica %s exited by itself at t+%s: %s", r.cfg.name, clock(e.at), e.err))
		}
	}
	detail = "no replica exited but when a fault stopped it"
	if len(crashed) > 0 {
		detail = strings.Join(crashed, "; ")
	}
	check("replicas stayed up", len(crashed) == 0, detail)
	detail = fmt.Sprintf("%d of %d replicas exited cleanly on SIGTERM at the end", end.cleanStops, len(h.replicas))
	if len(end.stopProblems) > 0 {
		detail += ": " + strings.Join(end.stopProblems, "; ")
	}
	check("clean shutdown", len(end.stopProblems) == 0 && end.cleanStops == len(h.replicas), detail)
	s.Passed = true
	for _, c := range s.Checks {
		s.Passed = s.Passed && c.Pass
	}
	return s
}

// expectedCode reports whether a failed call of the traffic may have
// failed with code. Every request of the traffic is genuine: a key that
// exists, is enabled and of the right type, a ciphertext, wrapped data
// key or document a replica handed back with its own associated data or
// id, the stored schema. Such a request may fail only because a replica
// or its peers could not answer for a while: Unavailable (a replica,
// PostgreSQL or the token away, a root key not followed yet),
// DeadlineExceeded (the client's timeout), ResourceExhausted (load shed)
// and Aborted (a key changed concurrently too often: a RotateKey meeting
// the root-key rotation's re-wrap of the same keyset). Canceled is
// expected only from a replica that was being stopped (stopping): its
// shutdown cancels the calls still running. Any other code is a wrong
// result, inside a fault window or not: InvalidArgument ("decryption
// failed") on a ciphertext a replica made, NotFound, Internal,
// FailedPrecondition, Unauthenticated, PermissionDenied, Unknown.
//
// RotateKey gets no exception: it only ever rotates the enabled AES and
// HMAC keys of the run (FF1 keys are not rotatable and are left out), so
// FailedPrecondition (disabled, scheduled for deletion, not rotatable)
// would be a bug; concurrency surfaces as Aborted.
func expectedCode(code codes.Code, stopping bool) bool {
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		return true
	case codes.Canceled:
		return stopping
	}
	return false
}

// stopWindow is the window of a fault that stopped a replica (SIGKILL or
// SIGTERM), and which.
type stopWindow struct {
	Window
	replica int
}

// stoppedDuring reports whether c ran on a replica while a fault stopped
// it.
func stoppedDuring(c Call, stops []stopWindow) bool {
	for _, w := range stops {
		if int(c.Replica) == w.replica && InWindow(c, []Window{w.Window}) {
			return true
		}
	}
	return false
}

// sortedCounts returns the counts by method, then code.
func sortedCounts(m map[errKey]*ErrorCount) []ErrorCount {
	var out []ErrorCount
	for _, e := range m {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.Method < b.Method || a.Method == b.Method && a.Code < b.Code
	})
	return out
}

// attributeUnrecorded adds the calls past the record bound to the counts
// of s, by the second they started in: a failure counts in a fault window
// only when that whole second is in one, else outside; a success counts
// as a call outside the windows only when no window touches its second.
// Both err on the side of a higher error rate outside the windows. A
// failure with a code [expectedCode] does not expect is also counted by
// wrongCount; Canceled is expected only when the whole second is in the
// window of a fault that stopped a replica (the replica is not recorded).
func attributeUnrecorded(u *unrecorded, windows []Window, stops []stopWindow, s *Summary, errCount, wrongCount func(errKey) *ErrorCount) {
	u.mu.Lock()
	defer u.mu.Unlock()
	s.Unrecorded = u.n
	s.Requests += u.n
	for m, n := range u.byMethod {
		if n > 0 {
			s.ByMethod[Method(m).String()] += n
		}
	}
	second := func(i int) Call {
		return Call{Start: time.Duration(i) * time.Second, End: time.Duration(i+1)*time.Second - 1}
	}
	for i, n := range u.ok {
		if n > 0 && !InWindow(second(i), windows) {
			s.CallsOutside += n
		}
	}
	for k, n := range u.failed {
		e := errCount(k.errKey)
		sec := second(k.second)
		within := func(w Window) bool { return w.Start <= sec.Start && sec.End <= w.End }
		inside, stopping := false, false
		for _, w := range windows {
			inside = inside || within(w)
		}
		for _, w := range stops {
			stopping = stopping || within(w.Window)
		}
		if !expectedCode(k.code, stopping) {
			s.NWrongCodes += n
			if inside {
				wrongCount(k.errKey).InFault += n
			} else {
				wrongCount(k.errKey).Outside += n
			}
		}
		if inside {
			e.InFault += n
			s.ErrorsInFault += n
			continue
		}
		e.Outside += n
		s.ErrorsOutside += n
		s.CallsOutside += n
	}
}

// judgeAudit is the audit check on a log that verified. Each SIGKILL
// leaves its process's chain without a final checkpoint; every process
// stopped gracefully (SIGTERM, during the run or at its end) must have
// closed its chain. So: at most kills chains are unclosed, at least
// graceful chains are closed, and events after the last checkpoint are
// only in unclosed chains. With the per-chain report, the newest chain
// (which Report.Unclosed leaves out) counts as well; without it, the
// counts of the report are judged.
func judgeAudit(a AuditReport, kills, graceful int) (bool, string) {
	var problems []string
	unclosed, closed, uncoveredClosed := len(a.Unclosed), a.Chains-len(a.Unclosed), int64(0)
	if len(a.PerChain) > 0 {
		unclosed, closed = 0, 0
		for _, c := range a.PerChain {
			if c.Closed {
				closed++
				uncoveredClosed += c.Uncovered
			} else {
				unclosed++
			}
		}
	} else if unclosed == 0 {
		uncoveredClosed = a.Uncovered
	}
	if a.Events <= 0 {
		problems = append(problems, "no events")
	}
	if unclosed > kills {
		problems = append(problems, fmt.Sprintf("%d chains unclosed, more than the %d processes killed with SIGKILL", unclosed, kills))
	}
	if closed < graceful {
		problems = append(problems, fmt.Sprintf("%d chains closed, fewer than the %d processes stopped gracefully", closed, graceful))
	}
	if uncoveredClosed > 0 {
		problems = append(problems, fmt.Sprintf("%d events after the last checkpoint of a closed chain", uncoveredClosed))
	}
	detail := fmt.Sprintf("%d events in %d chains: %d closed (%d processes stopped gracefully), %d unclosed (%d killed), %d events after the last checkpoint",
		a.Events, a.Chains, closed, graceful, unclosed, kills, a.Uncovered)
	if len(problems) > 0 {
		return false, detail + ": " + strings.Join(problems, "; ")
	}
	return true, detail
}
