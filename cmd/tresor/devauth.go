package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	policies "github.com/tresorkms/tresor/examples/policies"
	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/config"
)

// Development identity: the audience dev tokens carry and the policy that
// lets the dev client do everything. Production configuration has neither.
const (
	devAudience   = "tresor"
	devClientID   = "spiffe://tresor.dev/dev-client"
	devPolicyFile = "dev.cedar"
	devPolicy     = `// Written by tresor dev: the development client may do everything.
// For the bank examples, see examples/policies in the source tree.
@id("dev-client-may-do-everything")
permit (principal, action, resource)
when { principal.workload == "` + devClientID + `" };
`
)

// devPolicies writes the Cedar schema and the development policy under dir
// (first run; later runs keep what is there, edits included).
func devPolicies(dir string) (schema, policyDir string, err error) {
	policyDir = filepath.Join(dir, "policies")
	if err := os.MkdirAll(policyDir, 0o700); err != nil {
		return "", "", fmt.Errorf("dev: %w", err)
	}
	schema = filepath.Join(policyDir, policies.SchemaFile)
	b, err := policies.Files.ReadFile(policies.SchemaFile)
	if err != nil {
		return "", "", fmt.Errorf("dev: %w", err)
	}
	if err := writeIfMissing(schema, b); err != nil {
		return "", "", err
	}
	if err := writeIfMissing(filepath.Join(policyDir, devPolicyFile), []byte(devPolicy)); err != nil {
		return "", "", err
	}
	return schema, policyDir, nil
}

func writeIfMissing(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("dev: %w", err)
	}
	return f.Close()
}

// devIssuerSetup opens (or creates) the development token issuer under
// dir/issuer, publishes its JWKS to a file the server reads, and points the
// configuration at it.
func devIssuerSetup(dir, issuerAddr string, cfg *config.Config) (*devissuer.Issuer, error) {
	iss, err := devissuer.Open(filepath.Join(dir, "issuer"))
	if err != nil {
		return nil, fmt.Errorf("dev: token issuer: %w", err)
	}
	iss.SetURL("https://" + issuerAddr)
	if err := os.WriteFile(filepath.Join(dir, "issuer", "url"), []byte(iss.Issuer()+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("dev: token issuer: %w", err)
	}
	jwks := filepath.Join(dir, "issuer", "jwks.json")
	if err := iss.WriteJWKS(jwks); err != nil {
		return nil, fmt.Errorf("dev: token issuer: %w", err)
	}
	cfg.Auth.RequireToken = true
	cfg.Auth.Token.Issuer = iss.Issuer()
	cfg.Auth.Token.Audiences = []string{devAudience}
	cfg.Auth.Token.JWKSFile = jwks
	return iss, nil
}

// serveDevIssuer serves the issuer's discovery document and JWKS, and an
// OAuth 2.0 client-credentials token endpoint (POST /token, clients
// authenticated by a certificate from clientCAFile, RFC 8705) over TLS on
// addr until ctx ends: for tools that want OIDC discovery, and for the Go
// SDK's client.ClientCredentials.
func serveDevIssuer(ctx context.Context, iss *devissuer.Issuer, addr, certFile, keyFile, clientCAFile string, logger *slog.Logger) (string, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return "", err
	}
	pool, err := readCertPool(clientCAFile)
	if err != nil {
		return "", fmt.Errorf("dev: token issuer: client CA: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", iss.Handler())
	mux.Handle("/token", &devissuer.TokenEndpoint{Issuer: iss, Audience: devAudience})
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("dev: token issuer: listen on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			ClientCAs:    pool,
			ClientAuth:   tls.VerifyClientCertIfGiven,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go serveTLSLogged(srv, lis, logger)
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return lis.Addr().String(), nil
}

// serveTLSLogged serves srv over TLS on lis (srv.TLSConfig holds the
// certificate) until it is closed, and logs why it stopped serving unless
// it was closed.
func serveTLSLogged(srv *http.Server, lis net.Listener, logger *slog.Logger) {
	if err := srv.ServeTLS(lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("dev: token issuer stopped serving", "addr", lis.Addr().String(), "err", err)
	}
}

// mintDevToken mints a development token from the issuer under devDir,
// bound to the certificate in certFile when it is not empty.
func mintDevToken(devDir string, req devissuer.TokenRequest, certFile string) (string, error) {
	keyDir := filepath.Join(devDir, "issuer")
	if _, err := os.Stat(keyDir); err != nil {
		return "", fmt.Errorf("no development token issuer in %s (run tresor dev first): %w", devDir, err)
	}
	iss, err := devissuer.Open(keyDir)
	if err != nil {
		return "", err
	}
	if b, err := os.ReadFile(filepath.Join(devDir, "issuer", "url")); err == nil {
		iss.SetURL(strings.TrimSpace(string(b)))
	}
	if certFile != "" {
		cert, err := readCertificate(certFile)
		if err != nil {
			return "", err
		}
		req.BindTo = cert
	}
	return iss.Mint(req)
}

func readCertificate(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

func newTokenCmd() *cobra.Command {
	var dir, sub, audience, cert string
	var roles, scopes []string
	var lifetime time.Duration
	var bind bool
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint a short-lived development access token (tresor dev only)",
		Long: `Mint an access token from the development issuer that tresor dev created
under --dir. By default the token is bound to the development client
certificate (RFC 8705), so it is accepted only over a connection that
presents that certificate. Production deployments have no such issuer: their
tokens come from the bank's identity provider.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !bind {
				cert = ""
			} else if cert == "" {
				cert = filepath.Join(dir, "tls", "client.pem")
			}
			tok, err := mintDevToken(dir, devissuer.TokenRequest{Subject: sub, Audience: audience, Roles: roles, Scopes: scopes, Lifetime: lifetime}, cert)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "dir", envOr("TRESOR_DEV_DIR", ".tresor"), "tresor dev's folder (TRESOR_DEV_DIR)")
	cmd.Flags().StringVar(&sub, "sub", "dev-user", "subject (sub claim)")
	cmd.Flags().StringVar(&audience, "audience", devAudience, "audience (aud claim)")
	cmd.Flags().StringSliceVar(&roles, "role", nil, "role (repeatable)")
	cmd.Flags().StringSliceVar(&scopes, "scope", nil, "scope (repeatable)")
	cmd.Flags().DurationVar(&lifetime, "lifetime", 5*time.Minute, "lifetime, at most 15m")
	cmd.Flags().BoolVar(&bind, "bind", true, "bind the token to a client certificate (cnf.x5t#S256)")
	cmd.Flags().StringVar(&cert, "cert", "", "certificate to bind to (default: the dev client certificate)")
	return cmd
}
