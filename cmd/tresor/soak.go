package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tresorkms/tresor/internal/audit"
	"github.com/tresorkms/tresor/internal/soak"
)

func newSoakCmd() *cobra.Command {
	var o soak.Options
	var jsonFile string
	cmd := &cobra.Command{
		Use:   "soak [--duration 30m] [--clients 8] [--postgres URL] [--workdir DIR] [--seed N]",
		Short: "Run two replicas under mixed traffic while injecting faults, then check that nothing was lost",
		Long: `Start two replicas (tresor serve, this binary) on a new PostgreSQL database and
one SoftHSM2 token, drive mixed traffic from several clients spread over both
(Encrypt/Decrypt, GenerateDataKey, ProtectDocument/RevealDocument, ReEncrypt,
RotateKey) for --duration, and meanwhile: kill -9 one replica and restart it,
stop the other with SIGTERM and restart it, terminate the database's
PostgreSQL connections (twice), take the token's files away and put them back
(twice), and rotate the root key to a new key in the token. The schedule is
printed first; a shorter run compresses it.

At the end every remembered ciphertext, data key and document must decrypt
(or reveal) to what was sent, through each replica; every protected document
must hold none of its classified values in clear; the audit log must verify,
with a closed chain for every replica process stopped with SIGTERM and
unclosed chains only for those killed with SIGKILL; memory and goroutines of
each replica must not have grown without bound; calls outside the fault
windows must not have failed (at most 0.1%); and both replicas must exit
cleanly on the final SIGTERM. It prints a summary and exits 1 when a check
failed.

Needs PostgreSQL (a server where the user may create databases; the run's
database is dropped at the end unless --keep) and SoftHSM2 (make test-deps
installs both).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.PostgresURL == "" {
				o.PostgresURL = os.Getenv("TRESOR_TEST_POSTGRES_URL") // empty: soak.DefaultPostgresURL
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("soak: %w", err)
			}
			o.ServeCommand = func(path string) *exec.Cmd { return exec.Command(exe, "serve", "--config", path) }
			o.VerifyAudit = verifySoakAudit
			o.Log = cmd.ErrOrStderr()
			sum, err := soak.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			if err := sum.WriteText(cmd.OutOrStdout()); err != nil {
				return err
			}
			if jsonFile != "" {
				if err := sum.WriteJSON(jsonFile); err != nil {
					return err
				}
			}
			if !sum.Passed {
				return fmt.Errorf("soak: checks failed: %s", strings.Join(sum.FailedChecks(), ", "))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.Duration, "duration", 30*time.Minute, "how long the traffic runs (at least 1m); the fault schedule scales to it")
	f.IntVar(&o.Clients, "clients", soak.DefaultClients, "concurrent clients, spread over both replicas")
	f.Float64Var(&o.Rate, "rate", soak.DefaultRate, "calls per second of all clients together (0: each client calls again as soon as a call returns)")
	// The default is read in RunE, not shown here: cobra prints flag
	// defaults in --help and usage, and the URL may hold a password.
	f.StringVar(&o.PostgresURL, "postgres", "", "PostgreSQL server to create the run's database on (default: TRESOR_TEST_POSTGRES_URL, else "+soak.DefaultPostgresURL+")")
	f.StringVar(&o.WorkDir, "workdir", "", "directory for configuration, certificates, token and replica logs (default: a temporary directory, removed after a run that passed)")
	f.Uint64Var(&o.Seed, "seed", 0, "seed of the traffic's random choices and data (0: a random one, printed)")
	f.BoolVar(&o.Keep, "keep", false, "keep the database and the work directory")
	f.IntVar(&o.Remember, "remember", soak.DefaultRemember, "ciphertexts, data keys and documents kept (a uniform sample) for the final check")
	f.StringVar(&jsonFile, "json", "", "also write the summary as JSON to this file")
	return cmd
}

// verifySoakAudit is `tresor audit verify --config path` with the root
// keys rotated away from as --root-key: every event's hash chain and every
// checkpoint's MAC, read from the store. It reads the file alone (no
// TRESOR_ environment overrides), as the replicas do.
func verifySoakAudit(ctx context.Context, path string, extraRootKeys []string) (soak.AuditReport, error) {
	var rep soak.AuditReport
	err := withAuditLog(ctx, io.Discard, path, []string{}, "", extraRootKeys, func(src audit.Source, ae *auditEnv) error {
		r, err := audit.Verify(ctx, src, ae.roots)
		if err != nil {
			var ve *audit.VerifyError
			if errors.As(err, &ve) {
				return fmt.Errorf("audit log does NOT verify: %w", err)
			}
			return fmt.Errorf("audit verify: %w", err)
		}
		rep = soak.AuditReport{Events: r.Events, Chains: len(r.Chains), Checkpoints: r.Checkpoints, Anchors: r.Anchors, Uncovered: r.Uncovered, Unclosed: r.Unclosed}
		for _, c := range r.Chains {
			rep.PerChain = append(rep.PerChain, soak.AuditChain{Chain: c.Chain, Events: c.Events, Uncovered: c.Uncovered, Closed: c.Closed})
		}
		return nil
	})
	return rep, err
}
