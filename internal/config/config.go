// Package config reads tresor's configuration: one YAML file, decoded
// strictly (an unknown key is an error), then overridden by environment
// variables named after the keys (TRESOR_ROOT_KEY_URI for root_key.uri).
//
// Reach for [Load]; [Default] shows every key with its default.
//
// Keys of named-key rotation and replication (see [Keys], [Scheduler] and
// [Cache]):
//
//   - keys.default_usage_limit (default 1073741824 = 2^30): how many
//     messages one version of an AES-256-GCM key may encrypt before the key
//     rotates, for keys that set no limit of their own. GCM draws a random
//     96-bit nonce per message; NIST SP 800-38D (section 8.3) caps such a
//     key at 2^32 invocations so that the chance of a repeated nonce stays
//     below 2^-32. 2^30 keeps a factor-of-four margin under that cap, which
//     absorbs the uses replicas reserve and never spend. AES-256-SIV keys
//     are deterministic, draw no nonce and are not counted. At most 2^32.
//   - keys.usage_block (default 1024): how many uses a replica reserves from
//     the key store at a time. Larger blocks mean fewer store writes; a
//     crash wastes at most one block per key, counted as used.
//   - scheduler.interval (default 1m): how often the scheduler scans the
//     keys to rotate, retire and destroy; at least 1s.
//   - scheduler.lease_ttl (default 30s): how long a replica holds the
//     scheduler lease without renewing it; another replica takes over when
//     it lapses. At least 1s.
//   - cache.sync_interval (default 2s): how often a replica checks the
//     revisions of its cached keys in the store and drops stale ones; the
//     bound on how long a rotation made on one replica takes to be used by
//     the others. At least 100ms and at most cache.max_age.
//   - cache.stale_grace (default 15m): how long past cache.max_age a cached
//     keyset keeps serving when reloading it fails because the root key
//     (HSM, KMS) or the key store is unavailable, so that an outage does not
//     fail every key the moment its entry expires. Each such key is logged
//     (once a minute) and reloaded at most every few seconds; past the
//     grace, calls fail with UNAVAILABLE. A key changed meanwhile (here or
//     on another replica) is never served stale. 0 turns it off; at most 24h.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
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
	Keys    Keys    `yaml:"keys"`
	// Scheduler runs the key-lifecycle jobs (rotation, retirement,
	// destruction) on one replica at a time.
	Scheduler Scheduler `yaml:"scheduler"`
	Log       Log       `yaml:"log"`
	Auth      Auth      `yaml:"auth"`
	Policy    Policy    `yaml:"policy"`
	// RateLimits are per-principal token buckets by action class and one
	// global bucket.
	RateLimits RateLimits `yaml:"rate_limits"`
	// Budgets count uses of sensitive data per principal in fixed windows,
	// in the key store, so they hold across replicas.
	Budgets []Budget `yaml:"budgets"`
	// Audit is the tamper-evident audit log of every call.
	Audit Audit `yaml:"audit"`
	// Anomaly is the per-principal anomaly detection whose risk score the
	// policy sees as context.risk.
	Anomaly Anomaly `yaml:"anomaly"`
	// Fields configures field protection (FieldService).
	Fields Fields `yaml:"fields"`
}

// Audit configures the audit log. Every call, allowed or refused, is one
// event in a hash chain; checkpoints are MACed under the root key.
type Audit struct {
	// Enabled turns the audit log on (the default).
	Enabled bool `yaml:"enabled"`
	// Store writes events to the key store (SQLite or PostgreSQL), where
	// tresor audit verify and AdminService read them. On by default.
	Store bool `yaml:"store"`
	// File also appends events to this JSON lines file ("" none).
	File string `yaml:"file"`
	// Chain names this server's hash chain. Empty (the default): a new
	// chain each time the server starts, named after the host with a
	// random suffix. Set it to continue one chain across restarts; then no
	// two processes may ever share it.
	Chain string `yaml:"chain"`
	// PseudonymKey names the HMAC_SHA256 key in the keyring (wrapped by the
	// root key like every key) from which the key that HMACs token subjects
	// and source addresses is derived. It is created at start-up when
	// missing; replicas sharing a store share it, so pseudonyms match.
	PseudonymKey string `yaml:"pseudonym_key"`
	// FailOpen lets calls succeed when their event cannot be written
	// (counted and logged). Off by default: the call fails (fail closed).
	FailOpen bool `yaml:"fail_open"`
	// CheckpointEvery and CheckpointInterval: a checkpoint is written after
	// this many events or this long, whichever comes first.
	CheckpointEvery    int           `yaml:"checkpoint_every"`
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
}

// Anomaly configures anomaly detection and the graduated response the
// policy decides (examples/policies/anomaly.cedar).
type Anomaly struct {
	// Enabled scores every call (the default).
	Enabled bool `yaml:"enabled"`
	// MaxPrincipals bounds the baselines kept; the idlest are dropped.
	MaxPrincipals int `yaml:"max_principals"`
	// ExpectedRate is the request rate (per second) a new principal is
	// compared with before it has a baseline of its own; 0 means the
	// monitor's default (10/s).
	ExpectedRate float64 `yaml:"expected_rate"`
	// MinRisk is the lowest risk score for which the policy is asked for a
	// response (the anomaly actions); calls below it are only scored.
	MinRisk int `yaml:"min_risk"`
	// How long each response lasts once applied.
	LogFor      time.Duration `yaml:"log_for"`
	StepUpFor   time.Duration `yaml:"step_up_for"`
	ThrottleFor time.Duration `yaml:"throttle_for"`
	BlockFor    time.Duration `yaml:"block_for"`
}

// Fields configures FieldService.
type Fields struct {
	// SchemaDir holds classification schemas (*.yaml, *.yml, *.json) that
	// are stored at start-up; "" none.
	SchemaDir string `yaml:"schema_dir"`
	// MaxDocumentBytes and MaxDepth bound a document; larger or deeper ones
	// are refused before they are parsed further.
	MaxDocumentBytes int `yaml:"max_document_bytes"`
	MaxDepth         int `yaml:"max_depth"`
}

// Auth configures how callers authenticate beyond their client certificate.
type Auth struct {
	// RequireToken refuses calls without a bearer access token. On by
	// default; off means a client certificate alone authenticates (the
	// policy still sees context.auth == "mtls" and can refuse).
	RequireToken bool `yaml:"require_token"`
	// Token configures access-token verification. An empty issuer accepts
	// no tokens (then require_token must be off).
	Token Token `yaml:"token"`
}

// Token configures OAuth 2.0 / OIDC access-token verification.
type Token struct {
	// Issuer must equal the token's iss claim.
	Issuer string `yaml:"issuer"`
	// Audiences: the token's aud must hold one of them.
	Audiences []string `yaml:"audiences"`
	// JWKSFile is a static JWKS for closed networks, re-read when it
	// changes. Empty: OIDC discovery at the issuer.
	JWKSFile string `yaml:"jwks_file"`
	// CAFile is the CA bundle for discovery and JWKS fetches; empty uses
	// the system roots.
	CAFile string `yaml:"ca_file"`
	// Algorithms allowed in tokens. HS* and none are refused.
	Algorithms []string `yaml:"algorithms"`
	// ClockSkew tolerated on exp, nbf and iat.
	ClockSkew time.Duration `yaml:"clock_skew"`
	// MaxLifetime refuses tokens that live longer (exp - iat).
	MaxLifetime time.Duration `yaml:"max_lifetime"`
	// RolesClaim and ScopesClaim name the claims (dotted paths) that hold
	// the caller's roles and scopes.
	RolesClaim  string `yaml:"roles_claim"`
	ScopesClaim string `yaml:"scopes_claim"`
}

// Policy locates the Cedar policies and their schema.
type Policy struct {
	// SchemaFile is the Cedar schema every policy is validated against.
	SchemaFile string `yaml:"schema_file"`
	// Dir holds the *.cedar policy files.
	Dir string `yaml:"dir"`
	// Timezone is the IANA zone of business hours (context.local_time).
	Timezone string `yaml:"timezone"`
	// ReloadInterval is how often policy, schema, TLS and JWKS files are
	// checked for changes.
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// RateLimits configure the rate limiter. A rate of 0 is unlimited.
type RateLimits struct {
	Global Rate `yaml:"global"`
	// Classes: crypto, read, admin, health.
	Classes       map[string]Rate `yaml:"classes"`
	MaxPrincipals int             `yaml:"max_principals"`
}

// Rate is a token bucket.
type Rate struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// Budget limits how often each principal may use data of a tier.
type Budget struct {
	// Action is what is counted: decrypt.
	Action string `yaml:"action"`
	// Tier is the sensitivity tier: public, internal, confidential, restricted.
	Tier    string   `yaml:"tier"`
	Windows []Window `yaml:"windows"`
}

// Window is a fixed window of a budget.
type Window struct {
	Period time.Duration `yaml:"period"`
	Limit  int64         `yaml:"limit"`
}

// Listen holds the listen addresses.
type Listen struct {
	// GRPC is the gRPC listen address.
	GRPC string `yaml:"grpc"`
	// HTTP is the REST listen address; empty serves no REST API.
	HTTP string `yaml:"http"`
	// Metrics serves Prometheus metrics at /metrics over plain HTTP, for a
	// scraper on loopback or a management network; empty serves none.
	Metrics string `yaml:"metrics"`
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
	// URL is sqlite:///absolute/path.db (or a plain file path), or
	// postgres://user@host:5432/dbname?sslmode=verify-full (postgresql://
	// too; any parameter pgx accepts) for a PostgreSQL database that several
	// replicas share. Prefer a password from PGPASSWORD or PGPASSFILE to one
	// in the URL.
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
	// SyncInterval is how often cached keys are compared with the store's
	// revisions; stale ones are dropped. It bounds how long a change made
	// by another replica (a rotation, say) takes to be used here.
	SyncInterval time.Duration `yaml:"sync_interval"`
	// StaleGrace is how long past MaxAge a cached keyset keeps serving
	// while the root key or the key store is unavailable; 0 turns it off.
	StaleGrace time.Duration `yaml:"stale_grace"`
}

// Keys holds the defaults of named keys.
type Keys struct {
	// DefaultUsageLimit is how many messages one version of an AES-256-GCM
	// key may encrypt before the key rotates, for keys without a limit of
	// their own. See the package documentation for the choice of 2^30.
	DefaultUsageLimit int64 `yaml:"default_usage_limit"`
	// UsageBlock is how many uses a replica reserves from the store at once.
	UsageBlock int64 `yaml:"usage_block"`
}

// Scheduler configures the key-lifecycle scheduler.
type Scheduler struct {
	// Interval is the time between two scans of the keys.
	Interval time.Duration `yaml:"interval"`
	// LeaseTTL is how long the scheduler lease lasts unrenewed.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
}

// Bounds of the rotation keys.
const (
	// DefaultUsageLimit is keys.default_usage_limit's default, 2^30.
	DefaultUsageLimit = 1 << 30
	// MaxUsageLimit is the NIST SP 800-38D cap for random 96-bit nonces, 2^32.
	MaxUsageLimit = 1 << 32
	// MaxUsageBlock bounds keys.usage_block.
	MaxUsageBlock = 1 << 20
)

// Bounds of cache.stale_grace.
const (
	// DefaultStaleGrace is cache.stale_grace's default.
	DefaultStaleGrace = 15 * time.Minute
	// MaxStaleGrace bounds cache.stale_grace: keysets serve past their age
	// for at most a day of outage.
	MaxStaleGrace = 24 * time.Hour
)

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
		Listen:    Listen{GRPC: "127.0.0.1:8443", HTTP: "127.0.0.1:8444"},
		Limits:    Limits{MaxPlaintextBytes: 64 << 10, MaxRequestBytes: 8 << 20},
		Cache:     Cache{MaxKeys: 10_000, MaxAge: 5 * time.Minute, SyncInterval: 2 * time.Second, StaleGrace: DefaultStaleGrace},
		Keys:      Keys{DefaultUsageLimit: DefaultUsageLimit, UsageBlock: 1024},
		Scheduler: Scheduler{Interval: time.Minute, LeaseTTL: 30 * time.Second},
		Log:       Log{Level: "info", Format: "json"},
		Auth: Auth{RequireToken: true, Token: Token{
			Algorithms:  []string{"RS256", "PS256", "ES256", "EdDSA"},
			ClockSkew:   30 * time.Second,
			MaxLifetime: 15 * time.Minute,
			RolesClaim:  "roles",
			ScopesClaim: "scope",
		}},
		Policy:     Policy{Timezone: "UTC", ReloadInterval: 10 * time.Second},
		RateLimits: RateLimits{MaxPrincipals: 100_000},
		Audit: Audit{Enabled: true, Store: true, PseudonymKey: "audit-pseudonyms", CheckpointEvery: 1000,
			CheckpointInterval: 10 * time.Second},
		Anomaly: Anomaly{Enabled: true, MaxPrincipals: 100_000, MinRisk: 20, LogFor: 5 * time.Minute, StepUpFor: 15 * time.Minute,
			ThrottleFor: 10 * time.Minute, BlockFor: 30 * time.Minute},
		Fields: Fields{MaxDocumentBytes: 1 << 20, MaxDepth: 32},
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
	case "TRESOR_ADDR", "TRESOR_CA", "TRESOR_CERT", "TRESOR_KEY", "TRESOR_CONFIG", "TRESOR_DEV_DIR", "TRESOR_TOKEN":
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
		switch {
		case f.Kind() == reflect.Struct:
			collectEnvFields(f, name+"_", out)
			continue
		case f.Kind() == reflect.Map, f.Kind() == reflect.Slice && f.Type().Elem().Kind() != reflect.String:
			continue // set in the file only
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
	case f.Kind() == reflect.Int || f.Kind() == reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		f.SetInt(n)
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		f.SetBool(b)
	case f.Kind() == reflect.Float64:
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		f.SetFloat(x)
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
		var parts []string
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		f.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("unsupported type %s", f.Type())
	}
	return nil
}

// Validate checks that the configuration is complete and sane.
func (c Config) Validate() error {
	var errs []error
	if c.Audit.Enabled {
		if !c.Audit.Store && c.Audit.File == "" {
			errs = append(errs, errors.New("audit: enabled with no sink: set audit.store or audit.file"))
		}
		if c.Audit.PseudonymKey == "" {
			errs = append(errs, errors.New("audit.pseudonym_key is required: token subjects and source addresses are HMACed under it"))
		}
		if c.Audit.CheckpointEvery < 1 || c.Audit.CheckpointInterval <= 0 {
			errs = append(errs, errors.New("audit.checkpoint_every and audit.checkpoint_interval must be positive"))
		}
	}
	if c.Anomaly.Enabled && (c.Anomaly.MaxPrincipals < 1 || c.Anomaly.LogFor <= 0 || c.Anomaly.StepUpFor <= 0 || c.Anomaly.ThrottleFor <= 0 || c.Anomaly.BlockFor <= 0) {
		errs = append(errs, errors.New("anomaly: max_principals and every response duration must be positive"))
	}
	if c.Anomaly.Enabled && (!(c.Anomaly.ExpectedRate >= 0) || math.IsInf(c.Anomaly.ExpectedRate, 0)) {
		errs = append(errs, errors.New("anomaly.expected_rate must be a finite number, 0 (the default) or more"))
	}
	if c.Fields.MaxDocumentBytes < 1 || c.Fields.MaxDocumentBytes > 64<<20 || c.Fields.MaxDepth < 1 || c.Fields.MaxDepth > 256 {
		errs = append(errs, errors.New("fields: max_document_bytes must be 1 to 64 MiB and max_depth 1 to 256"))
	}
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
	if c.Cache.StaleGrace < 0 || c.Cache.StaleGrace > MaxStaleGrace {
		errs = append(errs, fmt.Errorf("cache.stale_grace must be between 0 (off) and %v", MaxStaleGrace))
	}
	errs = append(errs, c.validateRotation()...)
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
	errs = append(errs, c.validatePerimeter()...)
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// validateRotation checks keys, scheduler and cache.sync_interval.
func (c Config) validateRotation() []error {
	var errs []error
	if c.Cache.SyncInterval < 100*time.Millisecond || (c.Cache.MaxAge > 0 && c.Cache.SyncInterval > c.Cache.MaxAge) {
		errs = append(errs, errors.New("cache.sync_interval must be at least 100ms and at most cache.max_age"))
	}
	if c.Keys.DefaultUsageLimit <= 0 || c.Keys.DefaultUsageLimit > MaxUsageLimit {
		errs = append(errs, fmt.Errorf("keys.default_usage_limit must be between 1 and %d (2^32, the NIST SP 800-38D bound for AES-GCM with random nonces)", int64(MaxUsageLimit)))
	}
	if c.Keys.UsageBlock <= 0 || c.Keys.UsageBlock > MaxUsageBlock {
		errs = append(errs, fmt.Errorf("keys.usage_block must be between 1 and %d", MaxUsageBlock))
	}
	if c.Scheduler.Interval < time.Second {
		errs = append(errs, errors.New("scheduler.interval must be at least 1s"))
	}
	if c.Scheduler.LeaseTTL < time.Second {
		errs = append(errs, errors.New("scheduler.lease_ttl must be at least 1s"))
	}
	return errs
}

// validatePerimeter checks auth, policy, rate limits and budgets.
func (c Config) validatePerimeter() []error {
	var errs []error
	t := c.Auth.Token
	if t.Issuer == "" {
		if c.Auth.RequireToken {
			errs = append(errs, errors.New("auth.token.issuer is required while auth.require_token is on"))
		}
	} else {
		if len(t.Audiences) == 0 {
			errs = append(errs, errors.New("auth.token.audiences needs at least one audience"))
		}
		for _, a := range t.Algorithms {
			if a == "none" || strings.HasPrefix(strings.ToUpper(a), "HS") {
				errs = append(errs, fmt.Errorf("auth.token.algorithms: %q is refused: only asymmetric signatures are accepted", a))
			}
		}
		if t.MaxLifetime <= 0 || t.MaxLifetime > time.Hour {
			errs = append(errs, errors.New("auth.token.max_lifetime must be between 1s and 1h: tresor accepts short-lived tokens only"))
		}
		if t.ClockSkew < 0 || t.ClockSkew > 5*time.Minute {
			errs = append(errs, errors.New("auth.token.clock_skew must be between 0 and 5m"))
		}
	}
	if c.Policy.SchemaFile == "" || c.Policy.Dir == "" {
		errs = append(errs, errors.New("policy.schema_file and policy.dir are required: every call is authorized by policy (default deny)"))
	}
	if _, err := time.LoadLocation(c.Policy.Timezone); err != nil {
		errs = append(errs, fmt.Errorf("policy.timezone %q: %w", c.Policy.Timezone, err))
	}
	if c.Policy.ReloadInterval < time.Second {
		errs = append(errs, errors.New("policy.reload_interval must be at least 1s"))
	}
	checkRate := func(name string, r Rate) {
		if !(r.PerSecond >= 0) || math.IsInf(r.PerSecond, 0) || r.Burst < 0 || (r.PerSecond > 0 && r.Burst == 0) {
			errs = append(errs, fmt.Errorf("rate_limits.%s: per_second must be finite, per_second and burst non-negative, and burst positive when per_second is", name))
		}
	}
	checkRate("global", c.RateLimits.Global)
	for name, r := range c.RateLimits.Classes {
		switch name {
		case "crypto", "read", "admin", "health":
		default:
			errs = append(errs, fmt.Errorf("rate_limits.classes: unknown class %q; want crypto, read, admin or health", name))
		}
		checkRate("classes."+name, r)
	}
	if c.RateLimits.MaxPrincipals <= 0 {
		errs = append(errs, errors.New("rate_limits.max_principals must be positive"))
	}
	type budgetKey struct{ action, tier string }
	seenBudgets := map[budgetKey]bool{}
	for i, b := range c.Budgets {
		if seenBudgets[budgetKey{b.Action, b.Tier}] {
			errs = append(errs, fmt.Errorf("budgets[%d]: a budget for action %q on tier %q comes first", i, b.Action, b.Tier))
		}
		seenBudgets[budgetKey{b.Action, b.Tier}] = true
		if b.Action != "decrypt" && b.Action != "searchable" {
			errs = append(errs, fmt.Errorf("budgets[%d].action %q: want decrypt or searchable", i, b.Action))
		}
		switch b.Tier {
		case "public", "internal", "confidential", "restricted":
		default:
			errs = append(errs, fmt.Errorf("budgets[%d].tier %q: want public, internal, confidential or restricted", i, b.Tier))
		}
		if len(b.Windows) == 0 {
			errs = append(errs, fmt.Errorf("budgets[%d].windows: at least one window", i))
		}
		for j, w := range b.Windows {
			if w.Period < time.Second || w.Limit <= 0 {
				errs = append(errs, fmt.Errorf("budgets[%d].windows[%d]: period at least 1s and a positive limit", i, j))
			}
			for _, prev := range b.Windows[:j] {
				if prev.Period == w.Period {
					errs = append(errs, fmt.Errorf("budgets[%d].windows[%d]: period %v appears twice", i, j, w.Period))
					break
				}
			}
		}
	}
	return errs
}
