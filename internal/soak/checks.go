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
	allInjected, allRecovered := true, true
	var faultProblems []string
	for i, f := range faults {
		rec := Recover(calls, FaultTiming{Injected: f.injected, Restored: f.restored, Replicas: f.replicas, ReadyAt: f.readyAt}, minSettle, maxSettle)
		windows[i] = rec.Window
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

	errs := map[errKey]*ErrorCount{}
	errCount := func(k errKey) *ErrorCount {
		e := errs[k]
		if e == nil {
			e = &ErrorCount{Method: k.method.String(), Code: k.code.String(), Message: firstErr[k]}
			errs[k] = e
		}
		return e
	}
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
		e := errCount(errKey{c.Method, c.Code})
		if in {
			e.InFault++
			s.ErrorsInFault++
		} else {
			e.Outside++
			s.ErrorsOutside++
		}
	}
	attributeUnrecorded(&h.traffic.unrecorded, windows, s, errCount)
	for m := range numMethods {
		s.Latency[m.String()], s.LatencyCalm[m.String()] = Latencies(lat[m]), Latencies(calm[m])
	}
	for _, e := range errs {
		s.Errors = append(s.Errors, *e)
	}
	sort.Slice(s.Errors, func(i, j int) bool {
		a, b := s.Errors[i], s.Errors[j]
		return a.Method < b.Method || a.Method == b.Method && a.Code < b.Code
	})
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
	check("no wrong results during the run", s.NViolations == 0, fmt.Sprintf("%d calls succeeded with a wrong result", s.NViolations))
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

// attributeUnrecorded adds the calls past the record bound to the counts
// of s, by the second they started in: a failure counts in a fault window
// only when that whole second is in one, else outside; a success counts
// as a call outside the windows only when no window touches its second.
// Both err on the side of a higher error rate outside the windows.
func attributeUnrecorded(u *unrecorded, windows []Window, s *Summary, errCount func(errKey) *ErrorCount) {
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
		inside := false
		for _, w := range windows {
			inside = inside || (w.Start <= sec.Start && sec.End <= w.End)
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
