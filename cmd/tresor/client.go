package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/tresorkms/tresor/internal/authn/devissuer"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// clientFlags are the connection flags of every client command, with
// defaults from TRESOR_ADDR, TRESOR_CA, TRESOR_CERT and TRESOR_KEY.
type clientFlags struct {
	addr, ca, cert, key string
	token, tokenFile    string
	devDir              string
	timeout             time.Duration
}

func (f *clientFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.addr, "addr", envOr("TRESOR_ADDR", "127.0.0.1:8443"), "server gRPC address (TRESOR_ADDR)")
	fs.StringVar(&f.ca, "ca", os.Getenv("TRESOR_CA"), "CA bundle that signed the server certificate (TRESOR_CA)")
	fs.StringVar(&f.cert, "cert", os.Getenv("TRESOR_CERT"), "client certificate for mutual TLS (TRESOR_CERT)")
	fs.StringVar(&f.key, "key-file", os.Getenv("TRESOR_KEY"), "client certificate's private key (TRESOR_KEY)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the bearer access token (default: TRESOR_TOKEN; when neither is set and TRESOR_DEV_DIR is, a development token is minted)")
	fs.StringVar(&f.token, "token", "", "bearer access token (visible to other users in the process list: prefer --token-file or TRESOR_TOKEN)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "deadline of each call")
	f.devDir = os.Getenv("TRESOR_DEV_DIR")
}

// bearer returns the access token to send: --token, else a development
// token bound to the client certificate when TRESOR_DEV_DIR names tresor
// dev's folder, else none.
func (f *clientFlags) bearer() (string, error) {
	if f.token != "" {
		return f.token, nil
	}
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if t := os.Getenv("TRESOR_TOKEN"); t != "" {
		return t, nil
	}
	if f.devDir == "" {
		return "", nil
	}
	return mintDevToken(f.devDir, devissuer.TokenRequest{Subject: "dev-user", Audience: devAudience, Lifetime: 5 * time.Minute}, f.cert)
}

// bearerCredentials sends a bearer token with every call, over TLS only.
type bearerCredentials string

func (b bearerCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearerCredentials) RequireTransportSecurity() bool { return true }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// dial connects over TLS (mutual TLS when a client certificate is given).
func (f *clientFlags) dial() (*grpc.ClientConn, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.ca != "" {
		pool, err := readCertPool(f.ca)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		cfg.RootCAs = pool
	}
	if f.cert != "" || f.key != "" {
		c, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key-file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	tok, err := f.bearer()
	if err != nil {
		return nil, err
	}
	if tok != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerCredentials(tok)))
	}
	return grpc.NewClient(f.addr, opts...)
}

// clientCmd builds a command that dials the server and runs fn.
func clientCmd(use, short string, args cobra.PositionalArgs, setup func(*pflag.FlagSet), fn func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error) *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use: use, Short: short, Args: args,
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := cf.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			if cf.timeout > 0 {
				ctx, cancel := context.WithTimeout(cmd.Context(), cf.timeout)
				defer cancel()
				cmd.SetContext(ctx)
			}
			return fn(cmd, conn, args)
		},
	}
	cf.register(cmd.Flags())
	if setup != nil {
		setup(cmd.Flags())
	}
	return cmd
}

// printJSON prints m as indented JSON. protojson varies its whitespace
// from build to build on purpose; json.Indent makes the output stable for
// scripts that diff it.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}

func newKeysCmd() *cobra.Command {
	keys := &cobra.Command{Use: "keys", Short: "Create, inspect, rotate and manage named keys"}
	var typ, rotation, retireAfter string
	var labels []string
	var usageLimit int64
	var retireVersions uint32
	create := clientCmd("create NAME", "Create a key (AES256_GCM by default)", cobra.ExactArgs(1), func(fs *pflag.FlagSet) {
		fs.StringVar(&typ, "type", "AES256_GCM", "AES256_GCM (randomized), AES256_SIV (deterministic), HMAC_SHA256 (blind indexes) or FF1_AES256 (tokenization; never rotates)")
		fs.StringVar(&rotation, "rotation-period", "", "rotate automatically this often, e.g. 720h")
		fs.StringSliceVar(&labels, "label", nil, "label key=value (repeatable); owner= and sensitivity= are read by policies")
		fs.Int64Var(&usageLimit, "usage-limit", 0, "messages a version may encrypt before the key rotates (0: the server's default)")
		fs.StringVar(&retireAfter, "retire-after", "", "retire versions superseded this long ago, e.g. 2160h")
		fs.Uint32Var(&retireVersions, "retire-after-versions", 0, "retire versions once this many newer ones exist")
	}, func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
		req := &tresorv1.CreateKeyRequest{KeyId: args[0]}
		switch strings.ToUpper(typ) {
		case "AES256_GCM":
			req.Type = tresorv1.KeyType_KEY_TYPE_AES256_GCM
		case "AES256_SIV":
			req.Type = tresorv1.KeyType_KEY_TYPE_AES256_SIV
		case "HMAC_SHA256":
			req.Type = tresorv1.KeyType_KEY_TYPE_HMAC_SHA256
		case "FF1_AES256":
			req.Type = tresorv1.KeyType_KEY_TYPE_FF1_AES256
		default:
			return fmt.Errorf("--type %q: want AES256_GCM, AES256_SIV, HMAC_SHA256 or FF1_AES256", typ)
		}
		if rotation != "" {
			d, err := time.ParseDuration(rotation)
			if err != nil {
				return fmt.Errorf("--rotation-period: %w", err)
			}
			req.RotationPeriod = durationpb.New(d)
		}
		l, err := parseLabels(labels)
		if err != nil {
			return err
		}
		req.Labels = l
		req.UsageLimit = usageLimit
		if retireAfter != "" {
			d, err := time.ParseDuration(retireAfter)
			if err != nil {
				return fmt.Errorf("--retire-after: %w", err)
			}
			req.RetireAfter = durationpb.New(d)
		}
		req.RetireAfterVersions = retireVersions
		k, err := tresorv1.NewKeyServiceClient(conn).CreateKey(cmd.Context(), req)
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), k)
	})
	get := clientCmd("get NAME", "Show a key", cobra.ExactArgs(1), nil, func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
		k, err := tresorv1.NewKeyServiceClient(conn).GetKey(cmd.Context(), &tresorv1.GetKeyRequest{Key: args[0]})
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), k)
	})
	var pageSize int32
	var pageToken string
	list := clientCmd("list", "List keys", cobra.NoArgs, func(fs *pflag.FlagSet) {
		fs.Int32Var(&pageSize, "page-size", 100, "keys per page")
		fs.StringVar(&pageToken, "page-token", "", "page token from a previous list")
	}, func(cmd *cobra.Command, conn *grpc.ClientConn, _ []string) error {
		resp, err := tresorv1.NewKeyServiceClient(conn).ListKeys(cmd.Context(), &tresorv1.ListKeysRequest{PageSize: pageSize, PageToken: pageToken})
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), resp)
	})
	rotate := clientCmd("rotate NAME", "Add a key version and make it primary", cobra.ExactArgs(1), nil, func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
		k, err := tresorv1.NewKeyServiceClient(conn).RotateKey(cmd.Context(), &tresorv1.RotateKeyRequest{Key: args[0]})
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), k)
	})
	disable := clientCmd("disable NAME", "Stop a key from encrypting and decrypting", cobra.ExactArgs(1), nil, func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
		k, err := tresorv1.NewKeyServiceClient(conn).DisableKey(cmd.Context(), &tresorv1.DisableKeyRequest{Key: args[0]})
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), k)
	})
	enable := clientCmd("enable NAME", "Enable a disabled key", cobra.ExactArgs(1), nil, func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
		k, err := tresorv1.NewKeyServiceClient(conn).EnableKey(cmd.Context(), &tresorv1.EnableKeyRequest{Key: args[0]})
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), k)
	})
	var minVersion uint32
	var updRotation string
	var updLabels []string
	update := clientCmd("update NAME", "Change a key's rotation period, minimum decryption version or labels", cobra.ExactArgs(1), func(fs *pflag.FlagSet) {
		fs.Uint32Var(&minVersion, "min-decryption-version", 0, "oldest version that may decrypt")
		fs.StringVar(&updRotation, "rotation-period", "", "rotation period, e.g. 720h (0 turns it off)")
		fs.StringSliceVar(&updLabels, "label", nil, "label key=value; replaces all labels (repeatable)")
	}, func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
		req := &tresorv1.UpdateKeyRequest{Key: args[0], UpdateMask: &fieldmaskpb.FieldMask{}}
		fs := cmd.Flags()
		if fs.Changed("min-decryption-version") {
			req.MinDecryptionVersion = minVersion
			req.UpdateMask.Paths = append(req.UpdateMask.Paths, "min_decryption_version")
		}
		if fs.Changed("rotation-period") {
			d, err := time.ParseDuration(updRotation)
			if err != nil {
				return fmt.Errorf("--rotation-period: %w", err)
			}
			req.RotationPeriod = durationpb.New(d)
			req.UpdateMask.Paths = append(req.UpdateMask.Paths, "rotation_period")
		}
		if fs.Changed("label") {
			l, err := parseLabels(updLabels)
			if err != nil {
				return err
			}
			req.Labels = l
			req.UpdateMask.Paths = append(req.UpdateMask.Paths, "labels")
		}
		if len(req.UpdateMask.Paths) == 0 {
			return errors.New("nothing to update: give --min-decryption-version, --rotation-period or --label")
		}
		k, err := tresorv1.NewKeyServiceClient(conn).UpdateKey(cmd.Context(), req)
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), k)
	})
	var wait time.Duration
	scheduleDeletion := clientCmd("schedule-deletion NAME", "Schedule a key's destruction after a waiting period (7 to 30 days)", cobra.ExactArgs(1), func(fs *pflag.FlagSet) {
		fs.DurationVar(&wait, "wait", 30*24*time.Hour, "waiting period, 168h to 720h")
	}, func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
		k, err := tresorv1.NewKeyServiceClient(conn).ScheduleKeyDeletion(cmd.Context(), &tresorv1.ScheduleKeyDeletionRequest{Key: args[0], WaitingPeriod: durationpb.New(wait)})
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), k)
	})
	cancelDeletion := clientCmd("cancel-deletion NAME", "Cancel a scheduled deletion (the key comes back disabled)", cobra.ExactArgs(1), nil, func(cmd *cobra.Command, conn *grpc.ClientConn, args []string) error {
		k, err := tresorv1.NewKeyServiceClient(conn).CancelKeyDeletion(cmd.Context(), &tresorv1.CancelKeyDeletionRequest{Key: args[0]})
		if err != nil {
			return err
		}
		return printJSON(cmd.OutOrStdout(), k)
	})
	keys.AddCommand(create, get, list, rotate, disable, enable, update, scheduleDeletion, cancelDeletion)
	return keys
}

func parseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("--label %q: want key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

// input reads the command's data: the file named by --in, or stdin.
func input(cmd *cobra.Command, path string) ([]byte, error) {
	if path != "" && path != "-" {
		return os.ReadFile(path)
	}
	return io.ReadAll(io.LimitReader(cmd.InOrStdin(), 8<<20))
}

// output writes to the file named by --out, or stdout.
func output(cmd *cobra.Command, path string, data []byte) error {
	if path != "" && path != "-" {
		return os.WriteFile(path, data, 0o600)
	}
	_, err := cmd.OutOrStdout().Write(data)
	return err
}

type dataFlags struct{ in, out, aad string }

func (d *dataFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&d.in, "in", "", "read input from this file instead of stdin")
	fs.StringVar(&d.out, "out", "", "write output to this file instead of stdout")
	fs.StringVar(&d.aad, "aad", "", "associated data (encryption context), as text")
}

func newEncryptCmd() *cobra.Command {
	var d dataFlags
	var key string
	cmd := clientCmd("encrypt --key NAME", "Encrypt stdin (or --in) and print the ciphertext", cobra.NoArgs, func(fs *pflag.FlagSet) {
		d.register(fs)
		fs.StringVar(&key, "key", "", "key name")
	}, func(cmd *cobra.Command, conn *grpc.ClientConn, _ []string) error {
		pt, err := input(cmd, d.in)
		if err != nil {
			return err
		}
		resp, err := tresorv1.NewCryptoServiceClient(conn).Encrypt(cmd.Context(), &tresorv1.EncryptRequest{Key: key, Plaintext: pt, AssociatedData: []byte(d.aad)})
		if err != nil {
			return err
		}
		return output(cmd, d.out, []byte(resp.GetCiphertext()+"\n"))
	})
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

func newDecryptCmd() *cobra.Command {
	var d dataFlags
	return clientCmd("decrypt", "Decrypt a ciphertext from stdin (or --in) and write the plaintext", cobra.NoArgs, d.register,
		func(cmd *cobra.Command, conn *grpc.ClientConn, _ []string) error {
			ct, err := input(cmd, d.in)
			if err != nil {
				return err
			}
			resp, err := tresorv1.NewCryptoServiceClient(conn).Decrypt(cmd.Context(), &tresorv1.DecryptRequest{Ciphertext: strings.TrimSpace(string(ct)), AssociatedData: []byte(d.aad)})
			if err != nil {
				return err
			}
			return output(cmd, d.out, resp.GetPlaintext())
		})
}

func newReEncryptCmd() *cobra.Command {
	var d dataFlags
	var dest string
	return clientCmd("reencrypt", "Move a ciphertext to the newest key version (or --to another key) without seeing the plaintext", cobra.NoArgs, func(fs *pflag.FlagSet) {
		d.register(fs)
		fs.StringVar(&dest, "to", "", "destination key (default: the ciphertext's own key)")
	}, func(cmd *cobra.Command, conn *grpc.ClientConn, _ []string) error {
		ct, err := input(cmd, d.in)
		if err != nil {
			return err
		}
		resp, err := tresorv1.NewCryptoServiceClient(conn).ReEncrypt(cmd.Context(), &tresorv1.ReEncryptRequest{Ciphertext: strings.TrimSpace(string(ct)), AssociatedData: []byte(d.aad), DestinationKey: dest})
		if err != nil {
			return err
		}
		return output(cmd, d.out, []byte(resp.GetCiphertext()+"\n"))
	})
}

func newDataKeyCmd() *cobra.Command {
	var key, aad string
	var noPlaintext bool
	cmd := clientCmd("datakey --key NAME", "Generate an AES-256 data key: plaintext (base64) and its ciphertext, as JSON", cobra.NoArgs, func(fs *pflag.FlagSet) {
		fs.StringVar(&key, "key", "", "key name that wraps the data key")
		fs.StringVar(&aad, "aad", "", "associated data (encryption context), as text")
		fs.BoolVar(&noPlaintext, "no-plaintext", false, "return only the wrapped data key")
	}, func(cmd *cobra.Command, conn *grpc.ClientConn, _ []string) error {
		c := tresorv1.NewCryptoServiceClient(conn)
		if noPlaintext {
			resp, err := c.GenerateDataKeyWithoutPlaintext(cmd.Context(), &tresorv1.GenerateDataKeyWithoutPlaintextRequest{Key: key, AssociatedData: []byte(aad)})
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), resp)
		}
		resp, err := c.GenerateDataKey(cmd.Context(), &tresorv1.GenerateDataKeyRequest{Key: key, AssociatedData: []byte(aad)})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "{\n  \"plaintext\": %q,\n  \"ciphertext\": %q,\n  \"keyVersion\": %d\n}\n",
			base64.StdEncoding.EncodeToString(resp.GetPlaintext()), resp.GetCiphertext(), resp.GetKeyVersion())
		return err
	})
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

// readCertPool reads a PEM bundle of CA certificates.
func readCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
