package soak

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Summary is what a run measured and checked. Passed is false when any
// check failed.
type Summary struct {
	Passed    bool    `json:"passed"`
	Seed      uint64  `json:"seed"`
	DurationS float64 `json:"duration_s"` // planned traffic time
	ElapsedS  float64 `json:"elapsed_s"`  // actual traffic time
	Clients   int     `json:"clients"`
	Replicas  int     `json:"replicas"`
	Database  string  `json:"database"`
	WorkDir   string  `json:"workdir"`

	Requests      int64                   `json:"requests"`
	ByMethod      map[string]int64        `json:"requests_by_method"`
	Latency       map[string]LatencyStats `json:"latency_ok_calls"`
	LatencyCalm   map[string]LatencyStats `json:"latency_ok_calls_outside_fault_windows"`
	Errors        []ErrorCount            `json:"errors"`
	ErrorsInFault int64                   `json:"errors_in_fault_windows"`
	ErrorsOutside int64                   `json:"errors_outside_fault_windows"`
	CallsOutside  int64                   `json:"calls_outside_fault_windows"`
	Unrecorded    int64                   `json:"calls_not_recorded"` // past the record bound: counted, latency not recorded
	Rotations     int64                   `json:"key_rotations"`
	TokensMinted  int64                   `json:"tokens_minted"`
	Violations    []Violation             `json:"violations"`
	NViolations   int64                   `json:"violation_count"`
	// WrongCodes are the failed calls whose code no fault explains (see
	// expectedCode), by method and code; NWrongCodes counts them. Each
	// fails the run, inside a fault window or not.
	WrongCodes  []ErrorCount `json:"wrong_codes"`
	NWrongCodes int64        `json:"wrong_code_count"`

	Faults []FaultReport  `json:"faults"`
	Memory []SeriesReport `json:"memory"`
	Remem  []Remembered   `json:"remembered"`
	Audit  *AuditReport   `json:"audit,omitempty"`
	Checks []Check        `json:"checks"`
}

// ErrorCount is how many calls of a method failed with a code, inside and
// outside the fault windows, and the first message seen.
type ErrorCount struct {
	Method  string `json:"method"`
	Code    string `json:"code"`
	InFault int64  `json:"in_fault"`
	Outside int64  `json:"outside"`
	Message string `json:"first_message"`
}

// FaultReport is one injected fault and its effect.
type FaultReport struct {
	Kind       FaultKind `json:"kind"`
	What       string    `json:"what"`
	PlannedS   float64   `json:"planned_s"`
	InjectedS  float64   `json:"injected_s"`
	RestoredS  float64   `json:"restored_s"`
	WindowEndS float64   `json:"window_end_s"`
	Detail     string    `json:"detail"`
	// Per affected replica: how long after the restore a call that
	// started after it first succeeded, and how long until /readyz
	// answered 200 (-1: not within the settle bound).
	Replicas      []string         `json:"replicas"`
	CallsOKAfterS []float64        `json:"calls_ok_after_s"`
	ReadyAfterS   []float64        `json:"ready_after_s"`
	Errors        int64            `json:"errors_in_window"`
	ErrorCodes    map[string]int64 `json:"errors_in_window_by_code"`
	Calls         int64            `json:"calls_in_window"`
	Err           string           `json:"error,omitempty"`
}

// SeriesReport is one replica process's memory and goroutines.
type SeriesReport struct {
	Replica    string     `json:"replica"`
	Start      int        `json:"start"` // 1 for the first process, 2 after a restart, ...
	Samples    int        `json:"samples"`
	FromS      float64    `json:"from_s"`
	ToS        float64    `json:"to_s"`
	Goroutines [2]float64 `json:"goroutines_first_last"`
	HeapMiB    [2]float64 `json:"heap_inuse_mib_first_last"`
	RSSMiB     [2]float64 `json:"rss_mib_first_last"`
	Judged     bool       `json:"judged"`
	Pass       bool       `json:"pass"`
	Verdict    string     `json:"verdict"`
}

// Remembered is how many items of a kind were handed back, kept, and
// checked at the end. An item is checked once every replica answered for
// it, and failed when one answered wrong or not at all.
type Remembered struct {
	Kind    string `json:"kind"`
	Seen    int64  `json:"seen"`
	Kept    int    `json:"kept"`
	Checked int    `json:"checked"`
	Failed  int    `json:"failed"`
	Retried int    `json:"retried"`
}

// AuditReport is what verifying the audit log found (audit.Report).
type AuditReport struct {
	Events      int64 `json:"events"`
	Chains      int   `json:"chains"`
	Checkpoints int64 `json:"checkpoints"`
	Anchors     int64 `json:"anchors"`
	Uncovered   int64 `json:"uncovered"`
	// Unclosed names the chains without a final checkpoint, but for the
	// newest chain (audit.Report.Unclosed).
	Unclosed []string `json:"unclosed"`
	// PerChain is each chain's report, the newest included; empty when
	// the verifier gives only the counts.
	PerChain []AuditChain `json:"per_chain,omitempty"`
}

// AuditChain is what verifying one chain found (audit.ChainReport): one
// replica process's events.
type AuditChain struct {
	Chain     string `json:"chain"`
	Events    int64  `json:"events"`
	Uncovered int64  `json:"uncovered"` // events after its last checkpoint
	Closed    bool   `json:"closed"`    // it ends with a final checkpoint
}

// Check is one final check.
type Check struct {
	Name   string `json:"name"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
}

// WriteJSON writes the summary to path.
func (s *Summary) WriteJSON(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("soak: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("soak: %w", err)
	}
	return nil
}

// WriteText prints the summary for a reader.
func (s *Summary) WriteText(w io.Writer) error {
	var b strings.Builder
	verdict := "PASSED"
	if !s.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, "\n=== tresor soak %s: %v of traffic (planned %v), %d clients, %d replicas, seed %d\n",
		verdict, seconds(s.ElapsedS), seconds(s.DurationS), s.Clients, s.Replicas, s.Seed)
	fmt.Fprintf(&b, "database %s, work dir %s\n", s.Database, s.WorkDir)

	fmt.Fprintf(&b, "\nrequests: %d (%.1f/s), %d key rotations, %d tokens minted", s.Requests, float64(s.Requests)/max(s.ElapsedS, 1e-9), s.Rotations, s.TokensMinted)
	if s.Unrecorded > 0 {
		fmt.Fprintf(&b, ", %d calls past the record bound counted without their latency", s.Unrecorded)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "method\tcalls\tok\tp50 ms\tp99 ms\tmax ms\t\toutside faults: p50 ms\tp99 ms\tmax ms\t")
	for _, m := range methodNames {
		l, c := s.Latency[m], s.LatencyCalm[m]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%.2f\t%.2f\t\t%.2f\t%.2f\t%.2f\t\n", m, s.ByMethod[m], l.Count, l.P50Ms, l.P99Ms, l.MaxMs, c.P50Ms, c.P99Ms, c.MaxMs)
	}
	tw.Flush()

	fmt.Fprintf(&b, "\nerrors: %d in fault windows, %d outside (of %d calls outside)\n", s.ErrorsInFault, s.ErrorsOutside, s.CallsOutside)
	if len(s.Errors) > 0 {
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  method\tcode\tin faults\toutside\tfirst message")
		for _, e := range s.Errors {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\n", e.Method, e.Code, e.InFault, e.Outside, e.Message)
		}
		tw.Flush()
	}
	if s.NWrongCodes > 0 {
		fmt.Fprintf(&b, "\nFAILED WITH A CODE NO FAULT EXPLAINS: %d\n", s.NWrongCodes)
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  method\tcode\tin faults\toutside\tfirst message")
		for _, e := range s.WrongCodes {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%s\n", e.Method, e.Code, e.InFault, e.Outside, e.Message)
		}
		tw.Flush()
	}
	if s.NViolations > 0 {
		fmt.Fprintf(&b, "\nWRONG RESULTS: %d\n", s.NViolations)
		for _, v := range s.Violations {
			fmt.Fprintf(&b, "  t+%s %s %s: %s\n", clock(seconds(v.AtS)), v.Method, v.Key, v.What)
		}
	}

	b.WriteString("\nfaults injected:\n")
	for i, f := range s.Faults {
		fmt.Fprintf(&b, "  %d. %s: planned t+%s, injected t+%s, restored t+%s, window to t+%s\n",
			i+1, f.What, clock(seconds(f.PlannedS)), clock(seconds(f.InjectedS)), clock(seconds(f.RestoredS)), clock(seconds(f.WindowEndS)))
		if f.Detail != "" {
			fmt.Fprintf(&b, "     %s\n", f.Detail)
		}
		var rec []string
		after := func(s float64) string {
			if s < 0 {
				return "NOT within the settle bound"
			}
			return fmt.Sprintf("%.2fs", s)
		}
		for j, r := range f.Replicas {
			rec = append(rec, fmt.Sprintf("%s: calls ok after %s, ready after %s", r, after(f.CallsOKAfterS[j]), after(f.ReadyAfterS[j])))
		}
		codes := ""
		if len(f.ErrorCodes) > 0 {
			var cs []string
			for _, c := range slices.Sorted(maps.Keys(f.ErrorCodes)) {
				cs = append(cs, fmt.Sprintf("%s %d", c, f.ErrorCodes[c]))
			}
			codes = " (" + strings.Join(cs, ", ") + ")"
		}
		fmt.Fprintf(&b, "     %d of %d calls in the window failed%s; after the restore, %s\n", f.Errors, f.Calls, codes, strings.Join(rec, "; "))
		if f.Err != "" {
			fmt.Fprintf(&b, "     INJECTION FAILED: %s\n", f.Err)
		}
	}

	b.WriteString("\nmemory and goroutines per replica process (" + GrowthRule + "):\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  process\tfrom-to\tsamples\tgoroutines\theap in use MiB\tRSS MiB\tverdict")
	for _, m := range s.Memory {
		fmt.Fprintf(tw, "  %s#%d\tt+%s-t+%s\t%d\t%.0f -> %.0f\t%.1f -> %.1f\t%.1f -> %.1f\t%s\n", m.Replica, m.Start,
			clock(seconds(m.FromS)), clock(seconds(m.ToS)), m.Samples, m.Goroutines[0], m.Goroutines[1], m.HeapMiB[0], m.HeapMiB[1], m.RSSMiB[0], m.RSSMiB[1], m.Verdict)
	}
	tw.Flush()

	b.WriteString("\nremembered and checked at the end:\n")
	for _, r := range s.Remem {
		fmt.Fprintf(&b, "  %-10s %d handed back, %d kept, %d checked through every replica, %d failed (%d needed a retry)\n", r.Kind, r.Seen, r.Kept, r.Checked, r.Failed, r.Retried)
	}
	if a := s.Audit; a != nil {
		fmt.Fprintf(&b, "audit log: %d events in %d chains, %d checkpoints, %d anchors, %d events after the last checkpoint; unclosed chains: %d\n",
			a.Events, a.Chains, a.Checkpoints, a.Anchors, a.Uncovered, len(a.Unclosed))
	}

	b.WriteString("\nchecks:\n")
	for _, c := range s.Checks {
		mark := "PASS"
		if !c.Pass {
			mark = "FAIL"
		}
		fmt.Fprintf(&b, "  %s  %s: %s\n", mark, c.Name, c.Detail)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// FailedChecks names the checks that failed.
func (s *Summary) FailedChecks() []string {
	var out []string
	for _, c := range s.Checks {
		if !c.Pass {
			out = append(out, c.Name)
		}
	}
	return slices.Clip(out)
}

// seconds converts seconds to a Duration.
func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
