package governance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tresorkms/tresor/internal/policy"
)

// CheckPolicies loads the Cedar schema and policies opts names, validating
// every policy against the schema in strict mode (policy.Load). Every
// problem policy.Load reports is an error finding of its own, naming the
// policy file (or the schema file, or the directory) as its subject: a
// policy that references an attribute the schema does not define, one that
// does not parse, a schema that does not parse or describe tresor's model.
// Err wraps policy.ErrInvalidPolicy or policy.ErrInvalidSchema, when
// policy.Load's error did.
func CheckPolicies(opts policy.Options) []Finding {
	eng, err := policy.Load(opts)
	if err == nil {
		schema := opts.SchemaFile
		if schema == "" {
			schema = filepath.Join(opts.PolicyDir, policy.DefaultSchemaFile)
		}
		return []Finding{{
			Check: PolicyCheck, Severity: SeverityInfo, Subject: opts.PolicyDir,
			Message: fmt.Sprintf("%d policies validate against %s (%d actions)", len(eng.PolicyIDs()), filepath.Base(schema), len(eng.Actions())),
		}}
	}
	errs := splitJoined(err)
	names := cedarFiles(opts.PolicyDir)
	var out []Finding
	for _, e := range errs {
		out = append(out, Finding{
			Check: PolicyCheck, Severity: SeverityError,
			Subject: policySubject(e, opts, names), Message: e.Error(), Err: e,
		})
	}
	return out
}

// splitJoined returns the errors errors.Join joined into err, or err
// alone. (An error of fmt.Errorf with several %w also unwraps to a list,
// but its message is not the list's messages a line each.)
func splitJoined(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	errs := j.Unwrap()
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	if len(errs) < 2 || strings.Join(msgs, "\n") != err.Error() {
		return []error{err}
	}
	return errs
}

// policySubject returns the file a policy.Load error is about: the policy
// file its message names (the longest name, so that a.cedar does not match
// in ba.cedar), else the schema file for a schema error, else the directory.
func policySubject(err error, opts policy.Options, names []string) string {
	msg := err.Error()
	best := ""
	for _, n := range names {
		if len(n) > len(best) && containsWord(msg, n) {
			best = n
		}
	}
	switch {
	case best != "":
		return filepath.Join(opts.PolicyDir, best)
	case errors.Is(err, policy.ErrInvalidSchema) || strings.Contains(msg, "schema"):
		if opts.SchemaFile != "" {
			return opts.SchemaFile
		}
		return filepath.Join(opts.PolicyDir, policy.DefaultSchemaFile)
	default:
		return opts.PolicyDir
	}
}

// containsWord reports whether name occurs in msg not preceded by a
// character that could be part of a file name.
func containsWord(msg, name string) bool {
	for i := 0; ; {
		j := strings.Index(msg[i:], name)
		if j < 0 {
			return false
		}
		j += i
		if j == 0 || strings.ContainsRune(" \t:,(\"'/", rune(msg[j-1])) {
			return true
		}
		i = j + 1
	}
}

// cedarFiles lists the *.cedar files in dir, or nothing if it cannot be
// read (policy.Load reports that).
func cedarFiles(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var names []string
	for _, de := range entries {
		if strings.HasSuffix(de.Name(), ".cedar") {
			names = append(names, de.Name())
		}
	}
	slices.Sort(names)
	return names
}
