package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/tresorkms/tresor/internal/loadtest"
)

// newBenchCmd is `tresor bench`: it starts two tresor servers on one keyring
// (gRPC and REST on mutual TLS, SQLite store, a local-file root key) - one
// protected by the whole chain (bound bearer token, the example policies, a
// rate limiter), one open (no token, no policy) - and a bare net/http
// AES-256-GCM baseline on 127.0.0.1 inside this process, loads them in
// interleaved rounds, and prints ops/s and latencies with three ratios:
// protected gRPC Encrypt over open gRPC Encrypt (the chain's cost), gRPC
// Encrypt over the empty gRPC call (health Check), and REST Encrypt over the
// baseline. Load and servers share the machine's cores: read the ratios, not
// the absolute figures.
func newBenchCmd() *cobra.Command {
	var opts loadtest.BenchOptions
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure Encrypt over gRPC and REST against open, empty and bare baselines, on loopback",
		Long: `Starts two tresor servers on one keyring and a bare net/http AES-256-GCM
baseline on 127.0.0.1 in this process, all on mutual TLS. The protected
server runs the whole chain: a bearer token bound to the client certificate
(ES256, from a development issuer), validation, the example policies
(examples/policies; the key is owned by the bench client) and a rate limiter
set too high to refuse. The open server has no token and no policy. One run
measures, in interleaved rounds:

  grpc-empty         gRPC health Check (the empty call), protected server
  grpc-encrypt-open  gRPC Encrypt, open server
  grpc-encrypt       gRPC Encrypt, protected server
  rest-baseline      bare net/http handler: JSON in, AES-256-GCM, JSON out
  rest-encrypt       REST POST /v1/keys/bench:encrypt, protected server

--target selects them: grpc (grpc-empty, grpc-encrypt), rest (rest-baseline,
rest-encrypt), chain (grpc-encrypt-open, grpc-encrypt) or all.

It prints ops/s, p50, p99 and errors per target and the ratios
grpc-encrypt/grpc-encrypt-open, grpc-encrypt/grpc-empty and
rest-encrypt/rest-baseline. The load generator shares the cores with the
servers, so compare the ratios, not the rates. Server goroutines carry the
pprof labels side=server and server=protected|open|baseline (see
--cpuprofile).`,
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
	f.StringVar(&opts.Target, "target", "all", "grpc, rest, chain or all")
	f.StringVar(&opts.CPUProfile, "cpuprofile", "", "write a CPU profile per target and round to `PREFIX`.<target>.r<round>.pprof")
	f.IntVar(&opts.Rounds, "rounds", loadtest.DefaultRounds, "split each target's time into this many slices, run round-robin over the targets")
	f.BoolVar(&opts.HTTP1, "http1", false, "REST clients speak HTTP/1.1 instead of HTTP/2")
	return cmd
}
