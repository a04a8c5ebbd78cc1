package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tresorkms/tresor/fields"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/governance"
)

// exitCodesHelp is the exit-code scheme of `tresor check` and `tresor report`.
const exitCodesHelp = `Exit codes:
  0  no errors (and, with --strict, no warnings)
  1  warnings and no errors (with --strict only; without it warnings exit 0)
  2  errors: a release must not go out with this configuration
  3  the checks could not run (bad flags, report not written)`

// governanceFlags are the flags check and report share.
type governanceFlags struct {
	config    string
	strict    bool
	warnDays  int
	grace     time.Duration
	skip      []string
	schemaDir string
}

func (g *governanceFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&g.config, "config", "", "configuration file (YAML); required")
	f.BoolVar(&g.strict, "strict", false, "exit 1 on warnings (default: warnings are printed and exit 0)")
	f.IntVar(&g.warnDays, "tls-warn-days", 30, "warn about certificates that expire within this many days")
	f.DurationVar(&g.grace, "rotation-grace", governance.DefaultRotationGrace, "how late a scheduled key rotation may be before it is a warning")
	f.StringSliceVar(&g.skip, "skip", nil, "checks not to run: policy, schema, tls, keys (e.g. --skip keys where the key store is out of reach)")
	f.StringVar(&g.schemaDir, "schema-dir", "", "directory of classification schemas (*.yaml, *.json) to check against the key inventory")
	// Flag errors exit 3 too, not 1 (which means warnings).
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return notRun(err) })
}

// newReportCmd is `tresor report`: the governance checks, written as JSON
// or text.
func newReportCmd() *cobra.Command {
	var g governanceFlags
	var format, out string
	cmd := &cobra.Command{
		Use:   "report --config FILE [--format json|text] [--out FILE]",
		Short: "Write the governance report (configuration, policies, schemas, TLS, key inventory) as JSON or text",
		Long: `Runs the same checks as tresor check and writes the report as JSON (stable
field names; see internal/governance) or as the readable summary.

The key inventory reads metadata from the key store only: the root key (HSM,
KMS) is not opened, and a SQLite store that does not exist is not created.

` + exitCodesHelp,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "json" && format != "text" {
				return notRun(fmt.Errorf("--format %q: want json or text", format))
			}
			return runGovernance(cmd.Context(), g, func(r governance.Report) error {
				var data []byte
				if format == "json" {
					var err error
					if data, err = r.JSON(); err != nil {
						return err
					}
				} else {
					data = []byte(r.Text())
				}
				if out == "" || out == "-" {
					_, err := cmd.OutOrStdout().Write(data)
					return err
				}
				return os.WriteFile(out, data, 0o600)
			})
		},
	}
	g.register(cmd)
	cmd.Flags().StringVar(&format, "format", "json", "json or text")
	cmd.Flags().StringVar(&out, "out", "", "write the report to this file (default: standard output)")
	return cmd
}

// newGovernanceCheckCmd is `tresor check`: the governance checks, printed
// as text.
func newGovernanceCheckCmd() *cobra.Command {
	var g governanceFlags
	cmd := &cobra.Command{
		Use:   "check --config FILE [--strict]",
		Short: "Validate a configuration before a release: config, policies, schemas, TLS, key inventory",
		Long: `Validates the whole configuration without starting the server: the
configuration file, the Cedar policies against their schema, classification
schemas against the key inventory, the TLS material (a certificate that
expires within --tls-warn-days is a warning), and the key inventory (keys
overdue for rotation, keys with no owner label, primary versions near their
usage limit, keys pending deletion). Prints a summary; tresor report writes
the same as JSON.

The key inventory reads metadata from the key store only: the root key (HSM,
KMS) is not opened, and a SQLite store that does not exist is not created.

` + exitCodesHelp,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runGovernance(cmd.Context(), g, func(r governance.Report) error {
				_, err := io.WriteString(cmd.OutOrStdout(), r.Text())
				return err
			})
		},
	}
	g.register(cmd)
	return cmd
}

// runGovernance runs the checks g asks for and hands the report to write;
// it returns nil, or an error whose ExitCode (see exitCodesHelp) main
// exits with.
func runGovernance(ctx context.Context, g governanceFlags, write func(governance.Report) error) error {
	if g.config == "" {
		return notRun(errors.New(`required flag "config" not set`))
	}
	if g.warnDays < 0 {
		return notRun(fmt.Errorf("--tls-warn-days %d: want 0 or more", g.warnDays))
	}
	opts := governance.Options{
		ConfigPath:    g.config,
		TLSWarnWithin: time.Duration(g.warnDays) * 24 * time.Hour,
		RotationGrace: g.grace,
		Skip:          g.skip,
		PolicyOptions: policyOptions,
		OpenStore:     openInventoryStore,
		Schemas: func(cfg config.Config) governance.SchemaSource {
			// --schema-dir overrides fields.schema_dir.
			dir := cmp.Or(g.schemaDir, cfg.Fields.SchemaDir)
			if dir == "" {
				return nil
			}
			return governance.SchemaDir(dir, parseClassificationSchema)
		},
	}
	if g.warnDays == 0 {
		opts.TLSWarnWithin = time.Nanosecond // warn about nothing not yet expired
	}
	r, err := governance.Run(ctx, opts)
	if err != nil {
		return notRun(err)
	}
	if err := write(r); err != nil {
		return notRun(fmt.Errorf("write report: %w", err))
	}
	code := r.ExitCode()
	if code == governance.ExitWarnings && !g.strict {
		code = governance.ExitOK
	}
	if code == governance.ExitOK {
		return nil
	}
	return findingsError(code, r)
}

// parseClassificationSchema is governance's SchemaParser over package fields.
func parseClassificationSchema(data []byte) ([]governance.SchemaKey, error) {
	s, err := fields.ParseSchema(data)
	if err != nil {
		return nil, err
	}
	var keys []governance.SchemaKey
	for _, u := range s.Keys() {
		keys = append(keys, governance.SchemaKey{Name: u.Name, Type: u.KeyType})
	}
	return keys, nil
}

// openInventoryStore opens the key store for the key inventory. It opens no
// root key, and refuses a SQLite store that does not exist rather than
// create one (store.OpenSQLite would). It opens the store as serve does, so
// an older store's schema is migrated: the store has no read-only open.
func openInventoryStore(ctx context.Context, url string) (governance.KeyStore, error) {
	if path, ok := sqlitePath(url); ok {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("no SQLite key store (not created): %w", err)
		}
		if !fi.Mode().IsRegular() || fi.Size() == 0 {
			return nil, fmt.Errorf("%s is not a SQLite key store (not a file, or empty)", path)
		}
	}
	return openStore(ctx, url)
}

// sqlitePath returns the file of a SQLite store URL as openStore reads it.
func sqlitePath(url string) (string, bool) {
	switch {
	case strings.HasPrefix(url, "sqlite://"):
		return strings.TrimPrefix(url, "sqlite://"), true
	case strings.Contains(url, "://"):
		return "", false
	default:
		return url, true
	}
}

// exitError carries the exit code of a governance run to main, which exits
// with ExitCode (see exitCoder in main.go). It unwraps to the errors behind
// the error findings, so that callers can match them with errors.Is.
type exitError struct {
	code int
	msg  string
	errs []error
}

func (e *exitError) Error() string   { return e.msg }
func (e *exitError) ExitCode() int   { return e.code }
func (e *exitError) Unwrap() []error { return e.errs }

// notRun is an error of a run that produced no report: exit code 3.
func notRun(err error) error {
	return &exitError{code: governance.ExitNotRun, msg: err.Error(), errs: []error{err}}
}

// findingsError sums up a report's errors (or, under --strict, warnings)
// in one message.
func findingsError(code int, r governance.Report) error {
	list := r.Errors()
	what := "error"
	if code == governance.ExitWarnings {
		list = r.Warnings()
		what = "warning"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "check failed: %d %s(s)", len(list), what)
	e := &exitError{code: code}
	for _, f := range list {
		fmt.Fprintf(&b, "\n  %s: %s: %s", f.Check, f.Subject, f.Message)
		if f.Err != nil {
			e.errs = append(e.errs, f.Err)
		}
	}
	e.msg = b.String()
	return e
}

// noArgs is cobra.NoArgs with exit code 3.
func noArgs(cmd *cobra.Command, args []string) error {
	if err := cobra.NoArgs(cmd, args); err != nil {
		return notRun(err)
	}
	return nil
}
