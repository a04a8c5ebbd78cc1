package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/tresorkms/tresor/internal/loadtest"
)

// newBenchCmd is `tresor bench`: it starts a tresor server (gRPC and REST on
// mutual TLS, SQLite store, a local-file root key) and a bare net/http
// AES-256-GCM baseline on 127.0.0.1 inside this process, loads them one after
// the other, and prints ops/s and latencies with two ratios: gRPC Encrypt
// over the empty gRPC call (health Check), and REST Encrypt over the
// baseline. Load and servers share the machine's cores: read the ratios, not
// the absolute figures.
func newBenchCmd() *cobra.Command {
	var opts loadtest.BenchOptions
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure Encrypt over gRPC and REST against empty and bare baselines, on loopback",
		Long: `Starts a tresor server and a bare net/http AES-256-GCM baseline on 127.0.0.1
in this process, both on mutual TLS, and measures in one run:

  grpc-empty      gRPC health Check (the empty call)
  grpc-encrypt    gRPC Encrypt
  rest-baseline   bare net/http handler: JSON in, AES-256-GCM, JSON out
  rest-encrypt    REST POST /v1/keys/bench:encrypt

It prints ops/s, p50, p99 and errors per target and the ratios
grpc-encrypt/grpc-empty and rest-encrypt/rest-baseline. The load generator
shares the cores with the servers, so compare the ratios, not the rates.
Server goroutines carry the pprof label side=server (see --cpuprofile).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := loadtest.Bench(cmd.Context(), cmd.OutOrStdout(), opts)
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Concurrency, "concurrency", 64, "concurrent callers")
	f.DurationVar(&opts.Duration, "duration", 10*time.Second, "measured time per target")
	f.DurationVar(&opts.Warmup, "warmup", 2*time.Second, "unmeasured load before each target's measurement")
	f.IntVar(&opts.Size, "size", 1024, "plaintext size in bytes")
	f.StringVar(&opts.Target, "target", "all", "grpc, rest or all")
	f.StringVar(&opts.CPUProfile, "cpuprofile", "", "write a CPU profile per target to `PREFIX`.<target>.pprof")
	f.IntVar(&opts.Rounds, "rounds", loadtest.DefaultRounds, "split each target's time into this many slices, run round-robin over the targets")
	f.BoolVar(&opts.HTTP1, "http1", false, "REST clients speak HTTP/1.1 instead of HTTP/2")
	return cmd
}
