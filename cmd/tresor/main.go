// Command tresor is tresor's one binary: the server (serve, dev), the client
// (keys, encrypt, decrypt, reencrypt, datakey), root-key setup (hsm) and the
// load tool (bench). Run `tresor --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := newRootCmd(os.Stdin, os.Stdout, os.Stderr)
	if err := cmd.ExecuteContext(ctx); err != nil {
		if st, ok := status.FromError(err); ok {
			fmt.Fprintf(os.Stderr, "tresor: %s: %s\n", st.Code(), st.Message())
		} else {
			fmt.Fprintln(os.Stderr, "tresor:", err)
		}
		var ec exitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

type exitCoder interface{ ExitCode() int }

// newRootCmd builds the command tree; tests call it with their own streams.
func newRootCmd(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "tresor",
		Short:         "Key management and field encryption for financial systems",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		newServeCmd(),
		newDevCmd(),
		newCheckCmd(),
		newReportCmd(),
		newFieldsCmd(),
		newAuditCmd(),
		newSimulateCmd(),
		newTokenCmd(),
		newHSMCmd(),
		newKeysCmd(),
		newEncryptCmd(),
		newDecryptCmd(),
		newReEncryptCmd(),
		newDataKeyCmd(),
		newBenchCmd(),
		newSoakCmd(),
		newAdminCmd(),
	)
	return root
}
