// Package config reads tresor's configuration: one YAML file, decoded
// strictly (an unknown key is an error), then overridden by environment
// variables named after the keys (TRESOR_ROOT_KEY_URI for root_key.uri).
//
// Reach for [Load]; [Default] shows every key with its default.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ErrInvalid means the configuration is malformed or incomplete.
var ErrInvalid = errors.New("config: invalid")

// Config is tresor's whole configuration.
type Config struct {
	Listen  Listen  `yaml:"listen"`
	TLS     TLS     `yaml:"tls"`
	Store   Store   `yaml:"store"`
	RootKey RootKey `yaml:"root_key"`
	Limits  Limits  `yaml:"limits"`
	Cache   Cache   `yaml:"cache"`
	Log     Log     `yaml:"log"`
}

// Listen holds the listen addresses.
type Listen struct {
	// GRPC is the gRPC listen address.
	GRPC string `yaml:"grpc"`
	// HTTP is the REST listen address; empty serves no REST API.
	HTTP string `yaml:"http"`
}

// TLS holds the server's TLS material. TLS cannot be turned off.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile is the CA bundle client certificates are verified
	// against. Required: every call is mutually authenticated.
	ClientCAFile string `yaml:"client_ca_file"`
}

// Store selects the key store.
type Store struct {
	// URL is sqlite:///absolute/path.db (or a plain file path).
	URL string `yaml:"url"`
}

// RootKey selects the root key.
type RootKey struct {
	// URI is pkcs11:token=...;object=...?module-path=...&pin-source=...,
	// or local-file:///path (development only).
	URI string `yaml:"uri"`
}

// Limits bound requests.
type Limits struct {
	MaxPlaintextBytes int `yaml:"max_plaintext_bytes"`
	MaxRequestBytes   int `yaml:"max_request_bytes"`
}

// Cache bounds the in-memory cache of unwrapped keysets.
type Cache struct {
	MaxKeys int           `yaml:"max_keys"`
	MaxAge  time.Duration `yaml:"max_age"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is json or text.
	Format string `yaml:"format"`
}

// Default returns the configuration with every default filled in.
func Default() Config {
	return Config{
		Listen: Listen{GRPC: "127.0.0.1:8443", HTTP: "127.0.0.1:8444"},
		Limits: Limits{MaxPlaintextBytes: 64 << 10, MaxRequestBytes: 8 << 20},
		Cache:  Cache{MaxKeys: 10_000, MaxAge: 5 * time.Minute},
		Log:    Log{Level: "info", Format: "json"},
	}
}

// Load reads the file at path over the defaults, applies environment
// overrides from env (os.Environ form; nil means the process environment)
// and validates the result.
func Load(path string, env []string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	cfg, err := Parse(f, env)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse is Load for a reader.
func Parse(r io.Reader, env []string) (Config, error) {
	cfg := Default()
	data, err := io.ReadAll(io.LimitReader(r, maxFileSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("config: read: %w", err)
	}
	if len(data) > maxFileSize {
		return Config{}, fmt.Errorf("%w: the file is larger than %d bytes", ErrInvalid, maxFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if env == nil {
		env = os.Environ()
	}
	if err := applyEnv(&cfg, env); err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// maxFileSize bounds the configuration file.
const maxFileSize = 1 << 20

// EnvPrefix starts every environment override.
const EnvPrefix = "TRESOR_"

// applyEnv sets each field whose variable (EnvPrefix, then the YAML path in
// capitals joined by '_') is present in env. A TRESOR_ variable that names no
// field is an error, as an unknown key in the file is.
func applyEnv(cfg *Config, env []string) error {
	fields := map[string]reflect.Value{}
	collectEnvFields(reflect.ValueOf(cfg).Elem(), EnvPrefix, fields)
	for _, kv := range env {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		field, known := fields[name]
		if !known {
			if isClientVariable(name) {
				continue
			}
			return fmt.Errorf("%w: environment variable %s names no configuration key", ErrInvalid, name)
		}
		if err := setFromString(field, value); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrInvalid, name, err)
		}
	}
	return nil
}

// isClientVariable reports variables the CLI's client commands read, which
// share the prefix but are not server configuration.
func isClientVariable(name string) bool {
	switch name {
	case "TRESOR_ADDR", "TRESOR_CA", "TRESOR_CERT", "TRESOR_KEY", "TRESOR_CONFIG", "TRESOR_DEV_DIR":
		return true
	}
	return false
}

// EnvNames lists every environment override, for documentation.
func EnvNames() []string {
	var cfg Config
	fields := map[string]reflect.Value{}
	collectEnvFields(reflect.ValueOf(&cfg).Elem(), EnvPrefix, fields)
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	return names
}

func collectEnvFields(v reflect.Value, prefix string, out map[string]reflect.Value) {
	t := v.Type()
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		name := prefix + strings.ToUpper(tag)
		f := v.Field(i)
		if f.Kind() == reflect.Struct {
			collectEnvFields(f, name+"_", out)
			continue
		}
		out[name] = f
	}
}

func setFromString(f reflect.Value, s string) error {
	switch {
	case f.Type() == reflect.TypeOf(time.Duration(0)):
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(s)
	case f.Kind() == reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		f.SetInt(int64(n))
	default:
		return fmt.Errorf("unsupported type %s", f.Type())
	}
	return nil
}

// Validate checks that the configuration is complete and sane.
func (c Config) Validate() error {
	var errs []error
	if c.Listen.GRPC == "" {
		errs = append(errs, errors.New("listen.grpc is required"))
	}
	if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
		errs = append(errs, errors.New("tls.cert_file and tls.key_file are required: tresor serves TLS only"))
	}
	if c.TLS.ClientCAFile == "" {
		errs = append(errs, errors.New("tls.client_ca_file is required: every caller authenticates with a client certificate (mutual TLS)"))
	}
	if c.Store.URL == "" {
		errs = append(errs, errors.New("store.url is required"))
	}
	if c.RootKey.URI == "" {
		errs = append(errs, errors.New("root_key.uri is required"))
	}
	if c.Limits.MaxPlaintextBytes <= 0 || c.Limits.MaxPlaintextBytes > 4<<20 {
		errs = append(errs, errors.New("limits.max_plaintext_bytes must be between 1 and 4194304"))
	}
	if c.Limits.MaxRequestBytes < c.Limits.MaxPlaintextBytes {
		errs = append(errs, errors.New("limits.max_request_bytes must be at least limits.max_plaintext_bytes"))
	}
	if c.Cache.MaxKeys <= 0 {
		errs = append(errs, errors.New("cache.max_keys must be positive"))
	}
	if c.Cache.MaxAge <= 0 {
		errs = append(errs, errors.New("cache.max_age must be positive"))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q: want debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		errs = append(errs, fmt.Errorf("log.format %q: want json or text", c.Log.Format))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}
