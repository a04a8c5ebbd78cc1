package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/audit"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/kms/provider"
)

// newAuditCmd is `tresor audit verify|query`: read the audit log where the
// server writes it (the key store, or a JSON lines file), with the root
// keys of the configuration to check the checkpoints.
func newAuditCmd() *cobra.Command {
	c := &cobra.Command{Use: "audit", Short: "Verify and query the tamper-evident audit log"}
	var cfgPath, file string
	var extraRoots []string
	flags := func(cmd *cobra.Command) {
		cmd.Flags().StringVar(&cfgPath, "config", "", "the server's configuration file (YAML): its store and root key")
		cmd.Flags().StringVar(&file, "file", "", "read this JSON lines audit file instead of the key store")
		cmd.Flags().StringArrayVar(&extraRoots, "root-key", nil, "a further root key URI whose checkpoints to check (a root key rotated away from); repeatable")
		_ = cmd.MarkFlagRequired("config")
	}
	verify := &cobra.Command{
		Use:   "verify --config FILE [--file AUDIT.jsonl]",
		Short: "Check every event's hash chain and every checkpoint's MAC; name the first bad event",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAuditLog(cmd.Context(), cmd.ErrOrStderr(), cfgPath, nil, file, extraRoots, func(src audit.Source, env *auditEnv) error {
				start := time.Now()
				r, err := audit.Verify(cmd.Context(), src, env.roots)
				took := time.Since(start)
				w := cmd.OutOrStdout()
				if err != nil {
					var ve *audit.VerifyError
					if errors.As(err, &ve) {
						return fmt.Errorf("audit log does NOT verify: %w", err)
					}
					return fmt.Errorf("audit verify: %w", err)
				}
				fmt.Fprintf(w, "audit log verifies: %d events in %d chains, %d checkpoints, %d anchors, %d events after the last checkpoint (%.0f events/s)\n",
					r.Events, len(r.Chains), r.Checkpoints, r.Anchors, r.Uncovered, float64(r.Events)/max(took.Seconds(), 1e-9))
				for _, c := range r.Chains {
					state := "open"
					if c.Closed {
						state = "closed"
					}
					fmt.Fprintf(w, "  chain %s: %d events, last seq %d, checkpointed to seq %d, %s\n", c.Chain, c.Events, c.LastSeq, c.CheckpointSeq, state)
				}
				for _, c := range r.Unclosed {
					fmt.Fprintf(w, "  warning: chain %s did not end with a final checkpoint: its server stopped without closing the log, or its end was cut\n", c)
				}
				return nil
			})
		},
	}
	flags(verify)
	var q audit.Filter
	var from, to string
	query := &cobra.Command{
		Use:   "query --config FILE [--principal P] [--action A] [--key K] [--from T] [--to T]",
		Short: "Print the audit events that match every filter, each as its line in the log",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if q.From, err = parseTime(from); err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			if q.To, err = parseTime(to); err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			return withAuditLog(cmd.Context(), cmd.ErrOrStderr(), cfgPath, nil, file, extraRoots, func(src audit.Source, env *auditEnv) error {
				w := cmd.OutOrStdout()
				return audit.QueryLines(cmd.Context(), src, env.pseud, q, func(line []byte) error {
					_, err := fmt.Fprintf(w, "%s\n", line)
					return err
				})
			})
		},
	}
	flags(query)
	query.Flags().StringVar(&q.Principal, "principal", "", "a workload identity or a token subject")
	query.Flags().StringVar(&q.Action, "action", "", "an action, such as Decrypt")
	query.Flags().StringVar(&q.Key, "key", "", "a key id (or schemas/NAME)")
	query.Flags().StringVar(&from, "from", "", "events at or after this time (RFC 3339)")
	query.Flags().StringVar(&to, "to", "", "events before this time (RFC 3339)")
	query.Flags().IntVar(&q.Limit, "limit", 0, "at most this many events (0: all)")
	c.AddCommand(verify, query)
	return c
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339, s)
}

// auditEnv is what reading the audit log needs: the root keys that MAC the
// checkpoints, and the pseudonymizer to match token subjects.
type auditEnv struct {
	roots *envelope.RootKeys
	pseud *audit.Pseudonymizer
}

// withAuditLog opens the store and root keys of the configuration (read
// with the environment overrides of env, nil for the process's) and the
// extra root keys, and calls fn with the log to read: the file when
// given, else the store.
func withAuditLog(ctx context.Context, warn io.Writer, cfgPath string, env []string, file string, extraRoots []string, fn func(audit.Source, *auditEnv) error) error {
	cfg, err := config.Load(cfgPath, env)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := openStore(ctx, cfg.Store.URL)
	if err != nil {
		return fmt.Errorf("key store: %w", err)
	}
	defer st.Close()
	rk, err := openRootKeys(ctx, cfg, st, logger)
	if err != nil {
		return fmt.Errorf("root key: %w", err)
	}
	defer rk.Close()
	for _, uri := range extraRoots {
		k, err := provider.Open(ctx, uri, logger)
		if err != nil {
			return fmt.Errorf("--root-key: %w", err)
		}
		defer k.Close()
		if err := rk.set.Add(k); err != nil {
			return fmt.Errorf("--root-key: %w", err)
		}
	}
	ae := &auditEnv{roots: rk.set}
	ring, err := envelope.New(st, rk.set, envelope.Options{Logger: logger})
	if err != nil {
		return err
	}
	// Reading never creates the key; without it, token subjects cannot be
	// matched (workloads and pseudonyms still can), and the command says so.
	if ae.pseud, err = auditPseudonymizer(ctx, ring, cfg.Audit.PseudonymKey, false); err != nil {
		fmt.Fprintf(warn, "warning: %v: --principal matches workloads and pseudonyms only\n", err)
	}
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		return fn(audit.NewFileSource(f), ae)
	}
	return fn(audit.NewStoreSource(st), ae)
}
