package main

import (
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

func newAdminCmd() *cobra.Command {
	admin := &cobra.Command{Use: "admin", Short: "Administer the service: root-key rotation"}
	rotate := clientCmd("rotate-root-key URI", "Re-wrap every keyset with a new root key, in the background", cobra.ExactArgs(1), nil,
		func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
			resp, err := tresorv1.NewAdminServiceClient(conn).RotateRootKey(cmd.Context(), &tresorv1.RotateRootKeyRequest{RootKeyUri: args[0]})
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), resp.GetRotation())
		})
	rotate.Long = `Start re-wrapping every stored keyset from the active root key to the root
key at URI: a new key in the same HSM, or one of another provider. New keysets
are wrapped by the new key at once; the old key keeps unwrapping until the job
is done. No ciphertext and no data key changes. Follow the job with
'tresor admin root-key-status'. Examples:

  tresor admin rotate-root-key 'pkcs11:token=tresor;object=root-2?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tresor/pin'
  tresor admin rotate-root-key 'aws-kms://arn:aws:kms:eu-central-1:111122223333:key/...'`
	status := clientCmd("root-key-status", "Show the latest root-key rotation", cobra.NoArgs, nil,
		func(cmd *cobra.Command, conn *grpc.ClientConn, _ []string) error {
			resp, err := tresorv1.NewAdminServiceClient(conn).GetRootKeyRotation(cmd.Context(), &tresorv1.GetRootKeyRotationRequest{})
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), resp.GetRotation())
		})
	admin.AddCommand(rotate, status)
	return admin
}
