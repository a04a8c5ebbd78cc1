package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/devpki"
	"github.com/tresorkms/tresor/internal/server"
	"github.com/tresorkms/tresor/kms/localkek"
	"github.com/tresorkms/tresor/kms/pkcs11"
	"github.com/tresorkms/tresor/softhsm"
)

const (
	devTokenLabel = "tresor-dev"
	devRootObject = "root-1"
)

func newDevCmd() *cobra.Command {
	var dir, grpcAddr, httpAddr, issuerAddr string
	var noHSM bool
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run tresor on its embedded default, for development",
		Long: `Run tresor with everything it needs set up under one folder (default .tresor):
a SQLite key store, a root key in a SoftHSM2 token when softhsm2 is installed
(else a development key file, with a warning), and a local CA with a server
certificate and a client certificate for mutual TLS. The first run creates
them; later runs reuse them. It prints how to call the server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
			cfg, hsm, err := devSetup(cmd.Context(), dir, grpcAddr, httpAddr, issuerAddr, noHSM, logger)
			if err != nil {
				return err
			}
			iss, err := devissuer.Open(filepath.Join(dir, "issuer"))
			if err != nil {
				return err
			}
			iss.SetURL(cfg.Auth.Token.Issuer)
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			if _, err := serveDevIssuer(ctx, iss, issuerAddr, cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile, logger); err != nil {
				return err
			}
			return serve(ctx, cfg, logger, func(s *server.Server) {
				g, h := s.Addrs()
				printDevBanner(cmd.OutOrStdout(), dir, g, h, cfg, hsm)
			})
		},
	}
	cmd.Flags().StringVar(&dir, "dir", envOr("TRESOR_DEV_DIR", ".tresor"), "folder for the dev state (TRESOR_DEV_DIR)")
	cmd.Flags().StringVar(&grpcAddr, "grpc-addr", "127.0.0.1:8443", "gRPC listen address")
	cmd.Flags().StringVar(&httpAddr, "http-addr", "127.0.0.1:8444", "REST listen address")
	cmd.Flags().StringVar(&issuerAddr, "issuer-addr", "127.0.0.1:8445", "development token issuer's listen address (OIDC discovery, JWKS and a client-credentials token endpoint)")
	cmd.Flags().BoolVar(&noHSM, "no-hsm", false, "use a development key file even when SoftHSM2 is installed")
	return cmd
}

// devSetup creates (first run) or reuses the dev state under dir and returns
// the configuration to serve and whether the root key is in SoftHSM2.
func devSetup(ctx context.Context, dir, grpcAddr, httpAddr, issuerAddr string, noHSM bool, logger *slog.Logger) (config.Config, bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return config.Config{}, false, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return config.Config{}, false, fmt.Errorf("dev: %w", err)
	}
	files, err := devpki.WriteDir(filepath.Join(abs, "tls"), []string{"127.0.0.1", "localhost", "::1"}, "dev-client")
	if err != nil {
		return config.Config{}, false, err
	}
	rootURI, hsm, err := devRootKey(ctx, abs, noHSM, logger)
	if err != nil {
		return config.Config{}, false, err
	}
	cfg := config.Default()
	cfg.Listen = config.Listen{GRPC: grpcAddr, HTTP: httpAddr}
	cfg.TLS = config.TLS{CertFile: files.ServerCert, KeyFile: files.ServerKey, ClientCAFile: files.CACert}
	cfg.Store.URL = "sqlite://" + filepath.Join(abs, "keys.db")
	cfg.RootKey.URI = rootURI
	cfg.Log.Format = "text"
	if cfg.Policy.SchemaFile, cfg.Policy.Dir, err = devPolicies(abs); err != nil {
		return config.Config{}, false, err
	}
	if _, err := devIssuerSetup(abs, issuerAddr, &cfg); err != nil {
		return config.Config{}, false, err
	}
	if err := cfg.Validate(); err != nil {
		return config.Config{}, false, err
	}
	if err := writeDevConfig(filepath.Join(abs, "tresor.yaml"), cfg, hsm, filepath.Join(abs, "softhsm", "softhsm2.conf")); err != nil {
		return config.Config{}, false, err
	}
	return cfg, hsm, nil
}

// devRootKey returns the URI of the dev root key, creating it on first run:
// a key in a SoftHSM2 token when SoftHSM2 is installed, else a key file.
func devRootKey(ctx context.Context, dir string, noHSM bool, logger *slog.Logger) (string, bool, error) {
	if !noHSM && softhsm.Available() == nil {
		hsmDir := filepath.Join(dir, "softhsm")
		uriFile := filepath.Join(hsmDir, "root-key.uri")
		conf := filepath.Join(hsmDir, "softhsm2.conf")
		if b, err := os.ReadFile(uriFile); err == nil {
			if err := os.Setenv(softhsm.ConfEnv, conf); err != nil {
				return "", false, err
			}
			return strings.TrimSpace(string(b)), true, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", false, fmt.Errorf("dev: %w", err)
		}
		tok, err := softhsm.NewToken(ctx, hsmDir, devTokenLabel)
		if err != nil {
			return "", false, fmt.Errorf("dev: SoftHSM2 token: %w", err)
		}
		if err := tok.SetProcessEnv(); err != nil {
			return "", false, err
		}
		uri := tok.URI(devRootObject)
		if err := pkcs11.CreateRootKey(ctx, uri, pkcs11.WithLogger(logger)); err != nil {
			return "", false, fmt.Errorf("dev: create root key: %w", err)
		}
		if err := os.WriteFile(uriFile, []byte(uri+"\n"), 0o600); err != nil {
			return "", false, fmt.Errorf("dev: %w", err)
		}
		return uri, true, nil
	}
	// Create the key file only: serve opens it (and warns) once.
	path := filepath.Join(dir, "root.key")
	created, err := localkek.CreateKeyFile(path)
	if err != nil {
		return "", false, err
	}
	if created {
		logger.WarnContext(ctx, "DEVELOPMENT ONLY: created a new root key file", "path", path)
	}
	return localkek.URI(path), false, nil
}

func writeDevConfig(path string, cfg config.Config, hsm bool, softhsmConf string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by `tresor dev`. Serve it again with: tresor serve --config %s\n", path)
	if hsm {
		fmt.Fprintf(&b, "# The root key is in a SoftHSM2 token: export SOFTHSM2_CONF=%s first.\n", softhsmConf)
	}
	fmt.Fprintf(&b, "listen:\n  grpc: %q\n  http: %q\n", cfg.Listen.GRPC, cfg.Listen.HTTP)
	fmt.Fprintf(&b, "tls:\n  cert_file: %q\n  key_file: %q\n  client_ca_file: %q\n", cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile)
	fmt.Fprintf(&b, "store:\n  url: %q\n", cfg.Store.URL)
	fmt.Fprintf(&b, "root_key:\n  uri: %q\n", cfg.RootKey.URI)
	fmt.Fprintf(&b, "limits:\n  max_plaintext_bytes: %d\n  max_request_bytes: %d\n", cfg.Limits.MaxPlaintextBytes, cfg.Limits.MaxRequestBytes)
	fmt.Fprintf(&b, "cache:\n  max_keys: %d\n  max_age: %s\n", cfg.Cache.MaxKeys, cfg.Cache.MaxAge)
	fmt.Fprintf(&b, "log:\n  level: %s\n  format: %s\n", cfg.Log.Level, cfg.Log.Format)
	t := cfg.Auth.Token
	fmt.Fprintf(&b, "# Development token issuer (tresor token mints its tokens). Production points at the bank's identity provider.\n")
	fmt.Fprintf(&b, "auth:\n  require_token: %v\n  token:\n    issuer: %q\n    audiences: [%q]\n    jwks_file: %q\n    max_lifetime: %s\n", cfg.Auth.RequireToken, t.Issuer, devAudience, t.JWKSFile, t.MaxLifetime)
	fmt.Fprintf(&b, "policy:\n  schema_file: %q\n  dir: %q\n  timezone: %s\n", cfg.Policy.SchemaFile, cfg.Policy.Dir, cfg.Policy.Timezone)
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

func printDevBanner(w io.Writer, dir, grpcAddr, httpAddr string, cfg config.Config, hsm bool) {
	root := "a development key file (NOT for production)"
	if hsm {
		root = "a SoftHSM2 token (PKCS#11)"
	}
	tlsDir := filepath.Dir(cfg.TLS.ClientCAFile)
	fmt.Fprintf(w, `tresor dev is serving (state in %s, root key in %s)
  gRPC  %s
  REST  https://%s

From another shell (client commands mint a short-lived token bound to the
client certificate from the development issuer in TRESOR_DEV_DIR):
  export TRESOR_ADDR=%s TRESOR_CA=%s/ca.pem TRESOR_CERT=%s/client.pem TRESOR_KEY=%s/client-key.pem TRESOR_DEV_DIR=%s
  tresor keys create payments
  echo -n 'DE89370400440532013000' | tresor encrypt --key payments --aad customer=42 > ct.txt
  tresor decrypt --aad customer=42 < ct.txt
  curl --cacert $TRESOR_CA --cert $TRESOR_CERT --key $TRESOR_KEY -H "Authorization: Bearer $(tresor token)" \
    -X POST https://%s/v1/keys/payments:encrypt -d '{"plaintext":"aGVsbG8="}'
Stop with Ctrl-C.
`, dir, root, grpcAddr, httpAddr, grpcAddr, tlsDir, tlsDir, tlsDir, dir, httpAddr)
	if hsm {
		// Commands that open the root key themselves (tresor audit verify)
		// need the token's configuration.
		fmt.Fprintf(w, "Offline commands that open the root key (tresor audit verify --config %s) need\n  export SOFTHSM2_CONF=%s\n",
			filepath.Join(dir, "tresor.yaml"), filepath.Join(dir, "softhsm", "softhsm2.conf"))
	}
}
