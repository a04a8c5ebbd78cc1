package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// run is the input of summarize: a harness as the run leaves it, the
// schedule, the faults as injected and what was found at the end.
type run struct {
	h      *harness
	sched  []Fault
	faults []faultRun
	end    ending
}

// passingRun is a one-minute run of two replicas that passes every check:
// every fault of the schedule injected and restored, calls of every
// method on both replicas every 20ms, all succeeding, flat memory, every
// remembered item checked, replica a killed once (its chain unclosed) and
// b stopped with SIGTERM once, both stopped cleanly at the end.
func passingRun() *run {
	sched := Schedule(MinDuration)
	var calls []Call
	for i := range int(MinDuration / (20 * time.Millisecond)) {
		at := time.Duration(i) * 20 * time.Millisecond
		calls = append(calls, Call{Start: at, End: at + 5*time.Millisecond, Method: Method(i % int(numMethods)), Replica: int8(i / int(numMethods) % 2)})
	}
	var faults []faultRun
	for _, f := range sched {
		fr := faultRun{Fault: f, injected: f.At, restored: f.At + time.Second, replicas: []int{0, 1}}
		if f.Kind == FaultKill || f.Kind == FaultTerm {
			fr.replicas = []int{f.Replica}
		}
		for range fr.replicas {
			fr.readyAt = append(fr.readyAt, fr.restored+100*time.Millisecond)
		}
		faults = append(faults, fr)
	}
	flat := func() []Sample {
		var ss []Sample
		for i := range 20 {
			ss = append(ss, Sample{At: time.Duration(i) * 3 * time.Second, Goroutines: 40, HeapInuse: 12 << 20, RSS: 64 << 20})
		}
		return ss
	}
	h := &harness{
		opts:     Options{Seed: 1, Duration: MinDuration, Clients: 1, WorkDir: "/tmp/soak-test", Log: io.Discard},
		db:       &database{where: "postgres://127.0.0.1/soak_test"},
		tok:      &token{roots: []string{"pkcs11:object=root-1", "pkcs11:object=root-2"}},
		replicas: []*replica{{cfg: replicaConfig{name: "a"}}, {cfg: replicaConfig{name: "b"}}},
		traffic:  &traffic{lastOK: make([]atomic.Int64, 2)},
		clients:  []*client{{calls: calls, firstErr: map[errKey]string{}}},
		series:   map[[2]int][]Sample{{0, 1}: flat(), {1, 1}: flat()},
	}
	return &run{h: h, sched: sched, faults: faults, end: ending{
		elapsed:    MinDuration,
		remembered: []Remembered{{Kind: "ciphertext", Seen: 900, Kept: 60, Checked: 60}, {Kind: "data key", Seen: 300, Kept: 20, Checked: 20}, {Kind: "document", Seen: 300, Kept: 20, Checked: 20}},
		audit: AuditReport{Events: 3000, Chains: 4, Checkpoints: 40, Uncovered: 12, Unclosed: []string{"host-a1"}, PerChain: []AuditChain{
			{Chain: "host-a1", Events: 700, Uncovered: 12}, {Chain: "host-a2", Events: 800, Closed: true},
			{Chain: "host-b1", Events: 700, Closed: true}, {Chain: "host-b2", Events: 800, Closed: true},
		}},
		cleanStops: 2,
	}}
}

// failCalls makes n recorded calls from t+at on fail with Unavailable.
func failCalls(r *run, at time.Duration, n int) {
	calls := r.h.clients[0].calls
	i, _ := slices.BinarySearchFunc(calls, at, func(c Call, at time.Duration) int { return int(c.Start - at) })
	for j := i; j < i+n; j++ {
		calls[j].Code = codes.Unavailable
	}
}

// setCall gives the first recorded call that starts at or after t+at the
// method, replica and code, and returns its start.
func setCall(r *run, at time.Duration, m Method, replica int, code codes.Code) time.Duration {
	calls := r.h.clients[0].calls
	i, _ := slices.BinarySearchFunc(calls, at, func(c Call, at time.Duration) int { return int(c.Start - at) })
	calls[i].Method, calls[i].Replica, calls[i].Code = m, int8(replica), code
	return calls[i].Start
}

// faultOf returns the first fault of kind in r.
func faultOf(r *run, kind FaultKind) faultRun {
	for _, f := range r.faults {
		if f.Kind == kind {
			return f
		}
	}
	panic("no fault of kind " + string(kind))
}

// inFault is a time inside the window of r's first fault of kind: 200ms
// after its injection.
func inFault(r *run, kind FaultKind) time.Duration {
	return faultOf(r, kind).injected + 200*time.Millisecond
}

// TestSummarize: the passing run passes, and each check failing alone
// fails the run.
func TestSummarize(t *testing.T) {
	const (
		faultsInjected = "faults injected"
		recovered      = "recovered after every fault"
		trafficRan     = "traffic ran"
		noWrong        = "no wrong results during the run"
		errorsOutside  = "errors outside fault windows"
		ciphertexts    = "every remembered ciphertext checks out"
		dataKeys       = "every remembered data key checks out"
		documents      = "every remembered document checks out"
		auditVerifies  = "audit log verifies"
		memory         = "memory and goroutines bounded"
		stayedUp       = "replicas stayed up"
		cleanShutdown  = "clean shutdown"
	)
	tests := []struct {
		name   string
		change func(*run)
		want   string // the one check that fails; "" for none
	}{
		{"passing", func(*run) {}, ""},
		{"a fault failed", func(r *run) { r.faults[1].err = errors.New("terminating connections: refused") }, faultsInjected},
		{"a fault left out", func(r *run) { r.faults = r.faults[:len(r.faults)-1] }, faultsInjected},
		{"a replica not ready after a fault", func(r *run) { r.faults[1].readyAt = []time.Duration{-1, r.faults[1].readyAt[1]} }, recovered},
		{"a method never succeeded", func(r *run) {
			r.h.clients[0].calls = slices.DeleteFunc(r.h.clients[0].calls, func(c Call) bool { return c.Method == MethodRotateKey })
		}, trafficRan},
		{"a wrong result", func(r *run) { r.h.traffic.nViolation = 1 }, noWrong},
		{"recorded calls failed outside the windows", func(r *run) { failCalls(r, 55*time.Second, 10) }, errorsOutside},
		{"calls past the record bound failed outside the windows", func(r *run) {
			for range 10 {
				r.h.traffic.unrecorded.add(55*time.Second+time.Duration(r.h.traffic.unrecorded.n)*time.Millisecond, MethodEncrypt, codes.Unavailable)
			}
		}, errorsOutside},
		{"calls past the record bound failed within a window", func(r *run) {
			// The SIGTERM fault at 33s: its window runs to 35s.
			for range 10 {
				r.h.traffic.unrecorded.add(33*time.Second+500*time.Millisecond, MethodEncrypt, codes.Unavailable)
			}
		}, ""},
		{"calls past the record bound succeeded", func(r *run) {
			for i := range 1000 {
				r.h.traffic.unrecorded.add(50*time.Second+time.Duration(i)*time.Millisecond, MethodDecrypt, codes.OK)
			}
		}, ""},
		{"a retryable code within a window", func(r *run) {
			for i, c := range []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted} {
				setCall(r, inFault(r, FaultRemoveToken)+time.Duration(i)*20*time.Millisecond, MethodDecrypt, 0, c)
			}
		}, ""},
		{"InvalidArgument on Decrypt within a window", func(r *run) { setCall(r, inFault(r, FaultRemoveToken), MethodDecrypt, 0, codes.InvalidArgument) }, noWrong},
		{"InvalidArgument on RevealDocument within a window", func(r *run) {
			setCall(r, inFault(r, FaultRemoveToken), MethodRevealDocument, 1, codes.InvalidArgument)
		}, noWrong},
		{"Internal on Encrypt within the root-key rotation", func(r *run) {
			setCall(r, inFault(r, FaultRotateRootKey), MethodEncrypt, 0, codes.Internal)
		}, noWrong},
		{"NotFound on ProtectDocument within a window", func(r *run) {
			setCall(r, inFault(r, FaultDropPostgres), MethodProtectDocument, 0, codes.NotFound)
		}, noWrong},
		{"FailedPrecondition on RotateKey within the root-key rotation", func(r *run) {
			setCall(r, inFault(r, FaultRotateRootKey), MethodRotateKey, 1, codes.FailedPrecondition)
		}, noWrong},
		{"Unauthenticated within a window", func(r *run) { setCall(r, inFault(r, FaultKill), MethodEncrypt, 0, codes.Unauthenticated) }, noWrong},
		{"InvalidArgument on Decrypt outside the windows", func(r *run) { setCall(r, 55*time.Second, MethodDecrypt, 0, codes.InvalidArgument) }, noWrong},
		{"Canceled on the replica SIGTERM stops", func(r *run) {
			f := faultOf(r, FaultTerm)
			setCall(r, inFault(r, FaultTerm), MethodEncrypt, f.Replica, codes.Canceled)
		}, ""},
		{"Canceled on the replica SIGKILL stops", func(r *run) {
			f := faultOf(r, FaultKill)
			setCall(r, inFault(r, FaultKill), MethodEncrypt, f.Replica, codes.Canceled)
		}, ""},
		{"Canceled on the other replica than SIGTERM stops", func(r *run) {
			f := faultOf(r, FaultTerm)
			setCall(r, inFault(r, FaultTerm), MethodEncrypt, 1-f.Replica, codes.Canceled)
		}, noWrong},
		{"Canceled within a window that stops no replica", func(r *run) { setCall(r, inFault(r, FaultRemoveToken), MethodEncrypt, 0, codes.Canceled) }, noWrong},
		{"Canceled outside the windows", func(r *run) { setCall(r, 55*time.Second, MethodEncrypt, 0, codes.Canceled) }, noWrong},
		{"past the record bound: InvalidArgument within a window", func(r *run) {
			r.h.traffic.unrecorded.add(33*time.Second+500*time.Millisecond, MethodDecrypt, codes.InvalidArgument)
		}, noWrong},
		{"past the record bound: Canceled within a SIGTERM window", func(r *run) {
			r.h.traffic.unrecorded.add(33*time.Second+500*time.Millisecond, MethodDecrypt, codes.Canceled)
		}, ""},
		{"past the record bound: Canceled within a window that stops no replica", func(r *run) {
			at := faultOf(r, FaultRemoveToken).injected.Truncate(time.Second) + time.Second
			r.h.traffic.unrecorded.add(at, MethodDecrypt, codes.Canceled)
		}, noWrong},
		{"no ciphertext kept", func(r *run) { r.end.remembered[0].Kept, r.end.remembered[0].Checked = 0, 0 }, ciphertexts},
		{"a data key failed", func(r *run) { r.end.remembered[1].Failed = 1 }, dataKeys},
		{"a document not checked", func(r *run) { r.end.remembered[2].Checked-- }, documents},
		{"audit verify failed", func(r *run) { r.end.auditErr = errors.New("audit log does NOT verify") }, auditVerifies},
		{"audit: no events", func(r *run) {
			r.end.audit = AuditReport{Chains: 3, PerChain: []AuditChain{{Chain: "x", Closed: true}, {Chain: "y", Closed: true}, {Chain: "z", Closed: true}}}
		}, auditVerifies},
		{"audit: more unclosed chains than kills", func(r *run) {
			r.end.audit.PerChain[1].Closed = false
			r.end.audit.Unclosed = append(r.end.audit.Unclosed, "host-a2")
		}, auditVerifies},
		{"audit: the newest chain unclosed", func(r *run) { r.end.audit.PerChain[3].Closed = false }, auditVerifies},
		{"memory grew", func(r *run) {
			ss := r.h.series[[2]int{0, 1}]
			for i := range ss {
				ss[i].Goroutines = float64(40 + 50*i)
			}
		}, memory},
		{"a replica never judged", func(r *run) { delete(r.h.series, [2]int{1, 1}) }, memory},
		{"a replica exited by itself", func(r *run) {
			r.h.replicas[1].unexpected = []exit{{at: 30 * time.Second, err: "exit status 2"}}
		}, stayedUp},
		{"a replica did not stop cleanly", func(r *run) {
			r.end.cleanStops = 1
			r.end.stopProblems = []string{"replica b did not exit by itself on SIGTERM"}
		}, cleanShutdown},
		{"fewer clean stops than replicas", func(r *run) { r.end.cleanStops = 1 }, cleanShutdown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := passingRun()
			tt.change(r)
			s := r.h.summarize(r.sched, r.faults, r.end)
			var want []string
			if tt.want != "" {
				want = []string{tt.want}
			}
			if got := s.FailedChecks(); !slices.Equal(got, want) || s.Passed != (tt.want == "") {
				for _, c := range s.Checks {
					t.Logf("%v %s: %s", c.Pass, c.Name, c.Detail)
				}
				t.Errorf("summarize() passed %v, failed checks %q; want passed %v, failed %q", s.Passed, got, tt.want == "", want)
			}
			if len(s.Checks) != 12 {
				t.Errorf("summarize() made %d checks, want 12", len(s.Checks))
			}
		})
	}
}

// TestSummarizeWrongCodes: a failure with a code no fault explains is
// listed by method and code, in the check's detail and the text, and
// counted where it happened; a retryable failure is not listed.
func TestSummarizeWrongCodes(t *testing.T) {
	r := passingRun()
	setCall(r, inFault(r, FaultRemoveToken), MethodDecrypt, 0, codes.InvalidArgument)
	setCall(r, inFault(r, FaultRemoveToken)+20*time.Millisecond, MethodDecrypt, 1, codes.InvalidArgument)
	setCall(r, inFault(r, FaultRemoveToken)+40*time.Millisecond, MethodDecrypt, 1, codes.Unavailable)
	setCall(r, 55*time.Second, MethodRevealDocument, 0, codes.Internal)
	r.h.clients[0].firstErr[errKey{MethodDecrypt, codes.InvalidArgument}] = "decryption failed"
	s := r.h.summarize(r.sched, r.faults, r.end)
	want := []ErrorCount{
		{Method: "Decrypt", Code: "InvalidArgument", InFault: 2, Message: "decryption failed"},
		{Method: "RevealDocument", Code: "Internal", Outside: 1},
	}
	if !slices.Equal(s.WrongCodes, want) || s.NWrongCodes != 3 {
		t.Errorf("wrong codes %+v (%d); want %+v (3)", s.WrongCodes, s.NWrongCodes, want)
	}
	if s.Passed {
		t.Error("the run passed")
	}
	var detail string
	for _, c := range s.Checks {
		if c.Name == "no wrong results during the run" {
			detail = c.Detail
		}
	}
	if wantDetail := "Decrypt InvalidArgument 2 (2 in fault windows), RevealDocument Internal 1 (0 in fault windows)"; !strings.Contains(detail, wantDetail) {
		t.Errorf("check detail %q, want it to hold %q", detail, wantDetail)
	}
	var text strings.Builder
	if err := s.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	_, listed, _ := strings.Cut(text.String(), "FAILED WITH A CODE NO FAULT EXPLAINS: 3\n")
	listed, _, _ = strings.Cut(listed, "\n\n")
	lines := strings.Split(listed, "\n")
	if listed == "" {
		t.Errorf("WriteText() lists no wrong codes:\n%s", text.String())
	}
	for _, w := range []string{"Decrypt InvalidArgument 2 0 decryption failed", "RevealDocument Internal 0 1"} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.Join(strings.Fields(l), " ") == w }) {
			t.Errorf("WriteText() holds no line %q:\n%s", w, text.String())
		}
	}
}

// TestSummarizeCountsUnrecorded: calls past the record bound are in the
// totals and the error counts.
func TestSummarizeCountsUnrecorded(t *testing.T) {
	r := passingRun()
	base := r.h.summarize(r.sched, r.faults, r.end)
	r = passingRun()
	u := &r.h.traffic.unrecorded
	for i := range 100 {
		u.add(50*time.Second+time.Duration(i)*time.Millisecond, MethodDecrypt, codes.OK) // outside the windows
	}
	u.add(34*time.Second, MethodDecrypt, codes.OK)                           // within the SIGTERM fault's window: not outside
	u.add(33*time.Second+time.Millisecond, MethodEncrypt, codes.Unavailable) // whole second within a window
	u.add(35*time.Second, MethodEncrypt, codes.Unavailable)                  // second only partly within: counted outside
	s := r.h.summarize(r.sched, r.faults, r.end)
	if s.Unrecorded != 103 || s.Requests != base.Requests+103 || s.ByMethod["Decrypt"] != base.ByMethod["Decrypt"]+101 {
		t.Errorf("unrecorded %d, requests %d (+%d), Decrypt %d (+%d); want 103, +103, +101", s.Unrecorded, s.Requests, s.Requests-base.Requests,
			s.ByMethod["Decrypt"], s.ByMethod["Decrypt"]-base.ByMethod["Decrypt"])
	}
	if s.CallsOutside != base.CallsOutside+101 || s.ErrorsOutside != 1 || s.ErrorsInFault != 1 {
		t.Errorf("calls outside +%d, errors outside %d, in faults %d; want +101, 1, 1", s.CallsOutside-base.CallsOutside, s.ErrorsOutside, s.ErrorsInFault)
	}
	if len(s.Errors) != 1 || s.Errors[0] != (ErrorCount{Method: "Encrypt", Code: "Unavailable", InFault: 1, Outside: 1}) {
		t.Errorf("errors = %+v, want Encrypt Unavailable once in a fault, once outside", s.Errors)
	}
}

// TestCallPastTheRecordBound: a call past maxCalls is not recorded but
// counted, with its outcome.
func TestCallPastTheRecordBound(t *testing.T) {
	tr := &traffic{t0: time.Now(), callTimeout: time.Second, lastOK: make([]atomic.Int64, 1)}
	c := &client{t: tr, replicas: []stubs{{}}, maxCalls: 1, firstErr: map[errKey]string{}}
	outcomes := []error{nil, status.Error(codes.Unavailable, "no replica"), nil, status.Error(codes.Unavailable, "no replica")}
	for _, err := range outcomes {
		_ = c.call(context.Background(), MethodEncrypt, 0, func(context.Context, stubs) error { return err })
	}
	u := &tr.unrecorded
	failed := int64(0)
	for k, n := range u.failed {
		if k.errKey == (errKey{MethodEncrypt, codes.Unavailable}) {
			failed += n
		}
	}
	var ok int64
	for _, n := range u.ok {
		ok += n
	}
	if len(c.calls) != 1 || u.n != 3 || u.byMethod[MethodEncrypt] != 3 || ok != 1 || failed != 2 {
		t.Errorf("recorded %d, unrecorded %d (Encrypt %d): %d ok, %d failed; want 1 recorded, 3 unrecorded: 1 ok, 2 failed",
			len(c.calls), u.n, u.byMethod[MethodEncrypt], ok, failed)
	}
	if tr.calls.Load() != 4 || tr.failed.Load() != 2 || c.firstErr[errKey{MethodEncrypt, codes.Unavailable}] != "no replica" {
		t.Errorf("progress counts %d calls, %d failed, first error %q; want 4, 2, %q", tr.calls.Load(), tr.failed.Load(), c.firstErr[errKey{MethodEncrypt, codes.Unavailable}], "no replica")
	}
}

func TestJudgeAudit(t *testing.T) {
	perChain := func(closed ...bool) []AuditChain {
		var out []AuditChain
		for i, c := range closed {
			out = append(out, AuditChain{Chain: fmt.Sprint("c", i), Events: 10, Closed: c})
		}
		return out
	}
	tests := []struct {
		name           string
		a              AuditReport
		kills, gracefl int
		wantPass       bool
		wantDetail     string
	}{
		{"one killed, three stopped", AuditReport{Events: 40, Chains: 4, Unclosed: []string{"c0"}, Uncovered: 3, PerChain: perChain(false, true, true, true)}, 1, 3, true, "3 closed"},
		{"nothing killed, nothing unclosed", AuditReport{Events: 20, Chains: 2, PerChain: perChain(true, true)}, 0, 2, true, ""},
		{"no events", AuditReport{Chains: 2, PerChain: perChain(true, true)}, 0, 2, false, "no events"},
		{"an unclosed chain without a kill", AuditReport{Events: 20, Chains: 2, Unclosed: []string{"c0"}, PerChain: perChain(false, true)}, 0, 1, false, "more than the 0 processes killed"},
		{"the newest chain unclosed", AuditReport{Events: 20, Chains: 2, PerChain: perChain(true, false)}, 0, 2, false, "more than the 0"},
		{"a gracefully stopped process left no closed chain", AuditReport{Events: 30, Chains: 3, Unclosed: []string{"c0"}, PerChain: perChain(false, true, true)}, 1, 3, false, "fewer than the 3 processes stopped gracefully"},
		{"uncovered events in a closed chain", AuditReport{Events: 20, Chains: 2, Uncovered: 5,
			PerChain: []AuditChain{{Chain: "c0", Events: 10, Closed: true, Uncovered: 5}, {Chain: "c1", Events: 10, Closed: true}}}, 0, 2, false, "5 events after the last checkpoint of a closed chain"},
		{"counts only: within the kills", AuditReport{Events: 40, Chains: 4, Unclosed: []string{"c0"}, Uncovered: 3}, 1, 3, true, ""},
		{"counts only: more unclosed than kills", AuditReport{Events: 40, Chains: 4, Unclosed: []string{"c0", "c1"}}, 1, 2, false, "2 chains unclosed"},
		{"counts only: uncovered with nothing unclosed", AuditReport{Events: 40, Chains: 2, Uncovered: 3}, 0, 2, false, "3 events after the last checkpoint"},
		{"counts only: fewer closed than stopped", AuditReport{Events: 40, Chains: 2}, 0, 3, false, "fewer than the 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pass, detail := judgeAudit(tt.a, tt.kills, tt.gracefl)
			if pass != tt.wantPass || !strings.Contains(detail, tt.wantDetail) {
				t.Errorf("judgeAudit() = %v, %q; want %v, a detail with %q", pass, detail, tt.wantPass, tt.wantDetail)
			}
		})
	}
}

func TestInClear(t *testing.T) {
	classified := []classifiedValue{
		{"$.tax_id", "123-45-6789"}, {"$.email", "abcdef@ghijk.example"},
		{"$.accounts[0].iban", "DE89370400440532013000"}, {"$.accounts[0].number", "0012345678"},
	}
	protected := map[string]string{
		"$.tax_id":             `"tax_id":"1.AeF3x"`,
		"$.email":              `"email":"1.SiV9q"`,
		"$.accounts[0].iban":   `"iban":"1.GcM77","iban_bidx":"1.h4sh"`,
		"$.accounts[0].number": `"number":"7719204466"`,
	}
	doc := func(clear ...string) string {
		var parts []string
		for _, v := range classified {
			p := protected[v.path]
			if slices.Contains(clear, v.path) {
				name := v.path[strings.LastIndex(v.path, ".")+1:]
				p = fmt.Sprintf("%q:%q", name, v.value)
			}
			parts = append(parts, p)
		}
		return `{"id":"doc-1","name":"ann",` + strings.Join(parts, ",") + `}`
	}
	tests := []struct {
		name     string
		doc      string
		wantPath []string
	}{
		{"all protected", doc(), nil},
		{"tax id in clear", doc("$.tax_id"), []string{"$.tax_id"}},
		{"email in clear", doc("$.email"), []string{"$.email"}},
		{"iban in clear", doc("$.accounts[0].iban"), []string{"$.accounts[0].iban"}},
		{"account number in clear", doc("$.accounts[0].number"), []string{"$.accounts[0].number"}},
		{"every value in clear", doc("$.tax_id", "$.email", "$.accounts[0].iban", "$.accounts[0].number"), []string{"$.tax_id", "$.email", "$.accounts[0].iban", "$.accounts[0].number"}},
		{"a value copied elsewhere", doc() + ` "note":"0012345678"`, []string{"$.accounts[0].number"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inClear(tt.doc, classified); !slices.Equal(got, tt.wantPath) {
				t.Errorf("inClear() = %q, want %q", got, tt.wantPath)
			}
		})
	}
}

// TestGenDocumentClassified: every value the schema classifies is listed.
func TestGenDocumentClassified(t *testing.T) {
	c := &client{rng: rand.New(rand.NewPCG(1, 2))}
	for i := range 20 {
		doc, classified := c.genDocument(fmt.Sprint("doc-", i))
		var d struct {
			TaxID    string `json:"tax_id"`
			Email    string `json:"email"`
			Accounts []struct {
				IBAN   string `json:"iban"`
				Number string `json:"number"`
			} `json:"accounts"`
		}
		if err := decodeJSON(doc, &d); err != nil {
			t.Fatal(err)
		}
		want := []classifiedValue{{"$.tax_id", d.TaxID}, {"$.email", d.Email}}
		for j, a := range d.Accounts {
			want = append(want, classifiedValue{fmt.Sprintf("$.accounts[%d].iban", j), a.IBAN}, classifiedValue{fmt.Sprintf("$.accounts[%d].number", j), a.Number})
		}
		if !slices.Equal(classified, want) {
			t.Fatalf("genDocument() classified %d values, want %d (%d accounts)", len(classified), len(want), len(d.Accounts))
		}
	}
}

// fakeCrypto is a replica's CryptoService: Decrypt answers "ct:x" with x,
// or with other bytes when wrong.
type fakeCrypto struct {
	tresorv1.CryptoServiceClient
	wrong bool

	mu    sync.Mutex
	calls int
}

func (f *fakeCrypto) Decrypt(_ context.Context, in *tresorv1.DecryptRequest, _ ...grpc.CallOption) (*tresorv1.DecryptResponse, error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	pt := strings.TrimPrefix(in.GetCiphertext(), "ct:")
	if f.wrong {
		pt += "?"
	}
	return &tresorv1.DecryptResponse{Plaintext: []byte(pt)}, nil
}

// TestCheckRememberedThroughEveryReplica: each remembered item is checked
// through both replicas, so one replica answering wrong fails every item.
func TestCheckRememberedThroughEveryReplica(t *testing.T) {
	tests := []struct {
		name       string
		items      int
		wrong      [2]bool
		wantFailed int
	}{
		{"both right", 5, [2]bool{}, 0},
		{"replica b wrong", 5, [2]bool{false, true}, 5},
		{"replica a wrong, one item", 1, [2]bool{true, false}, 1},
		{"replica b wrong, one item", 1, [2]bool{false, true}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := &fakeCrypto{wrong: tt.wrong[0]}, &fakeCrypto{wrong: tt.wrong[1]}
			h := &harness{opts: Options{Log: io.Discard}, traffic: &traffic{ciphertexts: newReservoir(100, 1), dataKeys: newReservoir(100, 2), documents: newReservoir(100, 3)}}
			for range 2 {
				h.clients = append(h.clients, &client{replicas: []stubs{{crypto: a}, {crypto: b}}})
			}
			for i := range tt.items {
				h.traffic.ciphertexts.add(item{kind: kindCiphertext, key: "k", ciphertext: fmt.Sprint("ct:", i), plaintext: []byte(fmt.Sprint(i))})
			}
			rem := h.checkRemembered(context.Background())
			if len(rem) != 3 || rem[0].Kept != tt.items || rem[0].Checked != tt.items || rem[0].Failed != tt.wantFailed {
				t.Fatalf("checkRemembered() = %+v; want %d ciphertexts kept and checked, %d failed", rem, tt.items, tt.wantFailed)
			}
			if a.calls != tt.items || b.calls != tt.items {
				t.Errorf("Decrypt calls: replica a %d, b %d; want %d each", a.calls, b.calls, tt.items)
			}
		})
	}
}

// TestStopReplicas: the final stop counts a replica as stopped cleanly
// only when it exited by itself with status 0 on SIGTERM.
func TestStopReplicas(t *testing.T) {
	tests := []struct {
		name        string
		script      string // "": never started
		exitFirst   bool   // wait for the process to exit before the stop
		timeout     time.Duration
		wantClean   int
		wantProblem string
	}{
		{"exits 0 on SIGTERM", `trap 'exit 0' TERM; while :; do sleep 0.05; done`, false, 10 * time.Second, 1, ""},
		{"exits 3 on SIGTERM", `trap 'exit 3' TERM; while :; do sleep 0.05; done`, false, 10 * time.Second, 0, "exit status 3"},
		{"ignores SIGTERM: killed", `trap '' TERM; while :; do sleep 0.05; done`, false, 500 * time.Millisecond, 0, "killed"},
		{"had exited by itself", `exit 0`, true, 10 * time.Second, 0, "had already exited"},
		{"never started", "", false, 10 * time.Second, 0, "never started"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			r := &replica{cfg: replicaConfig{name: "a", path: filepath.Join(dir, "a.yaml")}, logPath: filepath.Join(dir, "a.log"),
				command: func(string) *exec.Cmd { return exec.Command("sh", "-c", tt.script) }, since: func() time.Duration { return 0 }}
			if tt.script != "" {
				exited, err := r.spawn()
				if err != nil {
					t.Fatal(err)
				}
				if tt.exitFirst {
					<-exited
				} else {
					time.Sleep(100 * time.Millisecond) // let the shell set its trap
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
			defer cancel()
			problems, clean := stopReplicas(ctx, []*replica{r})
			if clean != tt.wantClean || (tt.wantProblem == "") != (len(problems) == 0) || (len(problems) > 0 && !strings.Contains(problems[0], tt.wantProblem)) {
				t.Errorf("stopReplicas() = %q, %d clean; want %d clean and a problem with %q", problems, clean, tt.wantClean, tt.wantProblem)
			}
			if up, _ := r.running(); up {
				t.Errorf("the replica still runs after stopReplicas()")
			}
		})
	}
}
