package governance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The checks, in the order a report shows them.
const (
	ConfigCheck = "config" // the configuration file
	PolicyCheck = "policy" // Cedar policies against the Cedar schema
	SchemaCheck = "schema" // classification schemas against the key inventory
	TLSCheck    = "tls"    // server certificate, client CA bundle, token CA bundle
	KeysCheck   = "keys"   // the key inventory
)

// AllChecks lists every check, in report order.
func AllChecks() []string {
	return []string{ConfigCheck, PolicyCheck, SchemaCheck, TLSCheck, KeysCheck}
}

// Exit codes; see the package documentation.
const (
	ExitOK       = 0
	ExitWarnings = 1
	ExitErrors   = 2
	ExitNotRun   = 3
)

// FormatVersion is the version of the JSON report's layout. Fields are only
// ever added within one version.
const FormatVersion = 1

// Severity says how bad a finding is. The zero value is invalid.
type Severity int

const (
	// SeverityInfo is a note: a check passed, or was skipped and why.
	SeverityInfo Severity = iota + 1
	// SeverityWarning needs attention but does not stop a release.
	SeverityWarning
	// SeverityError stops a release: the server would refuse to start, or
	// something would fail.
	SeverityError
)

// ErrInvalidSeverity means a string names no severity.
var ErrInvalidSeverity = errors.New("governance: invalid severity")

// String returns "info", "warning" or "error".
func (s Severity) String() string {
	switch s {
	case SeverityInfo:
		return "info"
	case SeverityWarning:
		return "warning"
	case SeverityError:
		return "error"
	default:
		return fmt.Sprintf("Severity(%d)", int(s))
	}
}

// ParseSeverity is the inverse of String.
func ParseSeverity(s string) (Severity, error) {
	for v := SeverityInfo; v <= SeverityError; v++ {
		if v.String() == s {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrInvalidSeverity, s)
}

// MarshalText writes the severity's name.
func (s Severity) MarshalText() ([]byte, error) {
	if s < SeverityInfo || s > SeverityError {
		return nil, fmt.Errorf("%w: %d", ErrInvalidSeverity, int(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText reads a severity's name.
func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Finding is one result of a check.
type Finding struct {
	// Check is the check that found it: ConfigCheck, PolicyCheck, ...
	Check    string   `json:"check"`
	Severity Severity `json:"severity"`
	// Subject is what it is about: a file, a key name, the key store. Never
	// a secret.
	Subject string `json:"subject"`
	Message string `json:"message"`
	// Err is the underlying error, if any, for errors.Is; it is not part of
	// the report (its text is in Message, filtered).
	Err error `json:"-"`
}

// Report is the result of a governance run.
type Report struct {
	// Version is FormatVersion.
	Version int       `json:"version"`
	Time    time.Time `json:"time"`
	// Config is the configuration file the checks read.
	Config string `json:"config"`
	// Status is "ok", "warnings" or "errors".
	Status  string  `json:"status"`
	Summary Summary `json:"summary"`
	// Keys summarizes the key inventory; nil when it could not be read or
	// was not checked.
	Keys     *KeySummary `json:"keys"`
	Findings []Finding   `json:"findings"`
}

// Summary counts findings, overall and by check.
type Summary struct {
	Errors   int           `json:"errors"`
	Warnings int           `json:"warnings"`
	Infos    int           `json:"infos"`
	Checks   []CheckStatus `json:"checks"`
}

// CheckStatus is the outcome of one check.
type CheckStatus struct {
	Check string `json:"check"`
	// Status is "ok", "warnings", "errors" or "skipped".
	Status   string `json:"status"`
	Errors   int    `json:"errors"`
	Warnings int    `json:"warnings"`
	Infos    int    `json:"infos"`
}

// NewReport builds a report from findings: it filters secrets out of every
// Subject and Message (see Redact), orders the findings by check (in the
// order of AllChecks, others after them by name), then most severe first,
// then by subject, and counts them. skipped names the checks that did not
// run; keys may be nil.
func NewReport(at time.Time, configPath string, findings []Finding, skipped []string, keys *KeySummary) Report {
	fs := make([]Finding, len(findings))
	for i, f := range findings {
		f.Subject = Redact(f.Subject)
		f.Message = Redact(f.Message)
		fs[i] = f
	}
	slices.SortStableFunc(fs, func(a, b Finding) int {
		if c := checkRank(a.Check) - checkRank(b.Check); c != 0 {
			return c
		}
		if c := strings.Compare(a.Check, b.Check); c != 0 {
			return c
		}
		if c := int(b.Severity) - int(a.Severity); c != 0 {
			return c
		}
		return strings.Compare(a.Subject, b.Subject)
	})
	r := Report{
		Version:  FormatVersion,
		Time:     at.UTC(),
		Config:   Redact(configPath),
		Findings: fs,
		Keys:     keys,
	}
	names := AllChecks()
	for _, f := range fs {
		if !slices.Contains(names, f.Check) {
			names = append(names, f.Check)
		}
	}
	for _, name := range names {
		cs := CheckStatus{Check: name, Status: "ok"}
		for _, f := range fs {
			if f.Check != name {
				continue
			}
			switch f.Severity {
			case SeverityError:
				cs.Errors++
			case SeverityWarning:
				cs.Warnings++
			default:
				cs.Infos++
			}
		}
		switch {
		case cs.Errors > 0:
			cs.Status = "errors"
		case cs.Warnings > 0:
			cs.Status = "warnings"
		case slices.Contains(skipped, name):
			cs.Status = "skipped"
		}
		r.Summary.Errors += cs.Errors
		r.Summary.Warnings += cs.Warnings
		r.Summary.Infos += cs.Infos
		r.Summary.Checks = append(r.Summary.Checks, cs)
	}
	r.Status = [...]string{ExitOK: "ok", ExitWarnings: "warnings", ExitErrors: "errors"}[r.exitCode()]
	return r
}

func checkRank(check string) int {
	all := AllChecks()
	if i := slices.Index(all, check); i >= 0 {
		return i
	}
	return len(all)
}

// ExitCode returns ExitErrors when the report holds an error, else
// ExitWarnings when it holds a warning, else ExitOK.
func (r Report) ExitCode() int { return r.exitCode() }

func (r Report) exitCode() int {
	code := ExitOK
	for _, f := range r.Findings {
		switch f.Severity {
		case SeverityError:
			return ExitErrors
		case SeverityWarning:
			code = ExitWarnings
		}
	}
	return code
}

// Errors returns the findings of severity error.
func (r Report) Errors() []Finding { return r.bySeverity(SeverityError) }

// Warnings returns the findings of severity warning.
func (r Report) Warnings() []Finding { return r.bySeverity(SeverityWarning) }

func (r Report) bySeverity(s Severity) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Severity == s {
			out = append(out, f)
		}
	}
	return out
}

// JSON returns the report as indented JSON, ending in a newline. Field
// names are stable (see FormatVersion); findings is never null.
func (r Report) JSON() ([]byte, error) {
	if r.Findings == nil {
		r.Findings = []Finding{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("governance: report to JSON: %w", err)
	}
	return buf.Bytes(), nil
}

// Text returns a readable summary: the overall result, then each check's
// status and findings, most severe first.
func (r Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tresor governance report, %s\n", r.Time.Format(time.RFC3339))
	if r.Config != "" {
		fmt.Fprintf(&b, "configuration: %s\n", r.Config)
	}
	fmt.Fprintf(&b, "result: %s: %s, %s, %s (exit code %d)\n",
		strings.ToUpper(r.Status), plural(r.Summary.Errors, "error"), plural(r.Summary.Warnings, "warning"),
		plural(r.Summary.Infos, "note"), r.exitCode())
	for _, cs := range r.Summary.Checks {
		fmt.Fprintf(&b, "\n%s: %s", cs.Check, cs.Status)
		if cs.Check == KeysCheck && r.Keys != nil {
			fmt.Fprintf(&b, " (%s)", r.Keys.line())
		}
		b.WriteByte('\n')
		for _, f := range r.Findings {
			if f.Check != cs.Check {
				continue
			}
			label := map[Severity]string{SeverityError: "ERROR", SeverityWarning: "WARNING", SeverityInfo: "info"}[f.Severity]
			if f.Severity == SeverityInfo && cs.Status == "skipped" {
				label = "skipped"
			}
			if f.Subject != "" {
				fmt.Fprintf(&b, "  %-8s %s: %s\n", label, f.Subject, f.Message)
			} else {
				fmt.Fprintf(&b, "  %-8s %s\n", label, f.Message)
			}
		}
	}
	return b.String()
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
