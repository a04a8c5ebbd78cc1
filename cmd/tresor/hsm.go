package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tresorkms/tresor/kms/pkcs11"
)

func newHSMCmd() *cobra.Command {
	hsm := &cobra.Command{Use: "hsm", Short: "Set up root keys in a PKCS#11 token"}
	var uri string
	create := &cobra.Command{
		Use:   "create-root-key --uri URI",
		Short: "Generate a non-extractable AES-256 root key in a token",
		Long: `Generate the root key a pkcs11: URI names, inside the token: AES-256,
sensitive and non-extractable. Fails if a key with that label exists. Example:

  tresor hsm create-root-key --uri 'pkcs11:token=tresor;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tresor/pin'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := pkcs11.CreateRootKey(cmd.Context(), uri); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "root key created")
			return nil
		},
	}
	create.Flags().StringVar(&uri, "uri", "", "pkcs11: URI of the key to create")
	_ = create.MarkFlagRequired("uri")
	hsm.AddCommand(create)
	return hsm
}
