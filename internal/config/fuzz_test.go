package config

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/fields"
	"github.com/tresorkms/tresor/internal/limits"
	"github.com/tresorkms/tresor/internal/monitor"
	"github.com/tresorkms/tresor/internal/store"
)

// Fuzz target for the configuration file and its environment overrides.
// Run it with
//
//	go test -run '^$' -fuzz '^FuzzParse$' -fuzztime 1m -parallel 1 ./internal/config
//
// (or `make fuzz`); plain `go test` runs its seeds and any corpus under
// testdata/fuzz.

// full sets every key of the file, most away from their defaults.
const full = `
listen: {grpc: "0.0.0.0:8443", http: "0.0.0.0:8444", metrics: "127.0.0.1:9090"}
tls: {cert_file: /etc/tresor/server.pem, key_file: /etc/tresor/server-key.pem, client_ca_file: /etc/tresor/clients.pem}
store: {url: "postgres://tresor@db:5432/tresor?sslmode=verify-full"}
root_key: {uri: "aws-kms://alias/tresor-root?region=eu-west-1"}
limits: {max_plaintext_bytes: 4194304, max_request_bytes: 8388608}
cache: {max_keys: 1, max_age: 1h, sync_interval: 100ms, stale_grace: 24h}
keys: {default_usage_limit: 4294967296, usage_block: 1048576}
scheduler: {interval: 1s, lease_ttl: 1s}
log: {level: debug, format: text}
auth:
  require_token: false
  token:
    issuer: https://idp.bank.example
    audiences: [tresor, tresor-admin]
    jwks_file: /etc/tresor/jwks.json
    ca_file: /etc/tresor/idp-ca.pem
    algorithms: [ES256, EdDSA]
    clock_skew: 5m
    max_lifetime: 1h
    roles_claim: realm_access.roles
    scopes_claim: scp
policy: {schema_file: /etc/tresor/tresor.cedarschema, dir: /etc/tresor/policies, timezone: America/New_York, reload_interval: 1s}
rate_limits:
  global: {per_second: 5000.5, burst: 10000}
  classes:
    crypto: {per_second: 1000, burst: 2000}
    read: {per_second: 0, burst: 0}
    admin: {per_second: 1, burst: 1}
    health: {per_second: 100, burst: 100}
  max_principals: 1
budgets:
  - {action: decrypt, tier: restricted, windows: [{period: 1s, limit: 5}, {period: 24h, limit: 1000}]}
  - {action: searchable, tier: public, windows: [{period: 1m, limit: 9223372036854775807}]}
audit: {enabled: true, store: false, file: /var/log/tresor/audit.jsonl, chain: replica-1, pseudonym_key: pseud, fail_open: true, checkpoint_every: 1, checkpoint_interval: 1ns}
anomaly: {enabled: true, max_principals: 1, expected_rate: 0.5, min_risk: 0, log_for: 1ns, step_up_for: 1m, throttle_for: 1h, block_for: 24h}
fields: {schema_dir: /etc/tresor/schemas, max_document_bytes: 67108864, max_depth: 256}
`

// fuzzBudgetStore counts nothing; NewBudgets only needs one.
type fuzzBudgetStore struct{}

func (fuzzBudgetStore) ConsumeBudget(context.Context, int64, []store.BudgetWindow) (int, error) {
	return -1, nil
}

// fuzzKEK is a root key that NewRootKeys accepts; the fuzz target never
// wraps with it.
type fuzzKEK struct{ gcm cipher.AEAD }

func (k fuzzKEK) ID() string { return "fuzz-root" }
func (k fuzzKEK) Wrap(_ context.Context, pt, aad []byte) ([]byte, error) {
	nonce := make([]byte, k.gcm.NonceSize())
	return k.gcm.Seal(nonce, nonce, pt, aad), nil
}
func (k fuzzKEK) Unwrap(_ context.Context, ct, aad []byte) ([]byte, error) {
	if len(ct) < k.gcm.NonceSize() {
		return nil, errors.New("unwrap failed")
	}
	return k.gcm.Open(nil, ct[:k.gcm.NonceSize()], ct[k.gcm.NonceSize():], aad)
}

// FuzzParse: a configuration file (YAML) and environment overrides (one
// NAME=value a line). Parse gives a configuration or an error wrapping
// ErrInvalid, never a panic. A configuration it returns
//   - validates again;
//   - builds every part that `tresor serve` builds from it without I/O
//     (keyring options, rate limiter, budgets, anomaly monitor, document
//     limits), each of which must accept it: serve must not refuse, or
//     panic on, a configuration that `tresor check` passed;
//   - written back as YAML, parses to the same configuration.
func FuzzParse(f *testing.F) {
	seeds := []string{base, full, "", "{}", "listen: [", "surprise: 1\n", base + "---\nlisten: {grpc: x}\n"}
	if names, err := filepath.Glob("testdata/*.yaml"); err == nil {
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				f.Fatalf("ReadFile(%s) err = %v, want nil", n, err)
			}
			seeds = append(seeds, string(b))
		}
	}
	for _, s := range seeds {
		f.Add(s, "")
	}
	for _, env := range []string{
		"TRESOR_LISTEN_GRPC=0.0.0.0:1\nTRESOR_CACHE_MAX_AGE=2m\nPATH=/bin\nTRESOR_ADDR=ignored",
		"TRESOR_AUTH_TOKEN_AUDIENCES=a, b,,\nTRESOR_AUTH_REQUIRE_TOKEN=false",
		"TRESOR_AUTH_TOKEN_ALGORITHMS=",
		"TRESOR_RATE_LIMITS_GLOBAL_PER_SECOND=NaN\nTRESOR_RATE_LIMITS_GLOBAL_BURST=1",
		"TRESOR_RATE_LIMITS_GLOBAL_PER_SECOND=+Inf\nTRESOR_RATE_LIMITS_GLOBAL_BURST=1",
		"TRESOR_ANOMALY_EXPECTED_RATE=-1",
		"TRESOR_ANOMALY_EXPECTED_RATE=NaN",
		"TRESOR_KEYS_USAGE_BLOCK=0x10",
		"TRESOR_CACHE_MAX_AGE=9223372036854775807ns",
		"TRESOR_LIMITS_MAX_PLAINTEXT_BYTES=-1",
		"TRESOR_FIELDS_MAX_DEPTH=257",
		"TRESOR_POLICY_TIMEZONE=../../etc/passwd",
		"TRESOR_BUDGETS=x",
		"TRESOR_LISTEN=x",
		"TRESOR_=x",
		"=TRESOR_X",
	} {
		f.Add(base, env)
	}
	// base with its budgets and rate limits replaced.
	withBudgets := func(budgets string) string { return base[:strings.Index(base, "budgets:")] + budgets }
	withRates := func(rates string) string {
		return strings.Replace(base, "rate_limits:\n  classes:\n    crypto: {per_second: 1000, burst: 2000}\n", rates, 1)
	}
	f.Add(withBudgets("budgets:\n  - {action: decrypt, tier: restricted, windows: [{period: 1s, limit: 5}]}\n  - {action: decrypt, tier: restricted, windows: [{period: 2s, limit: 5}]}\n"), "")
	f.Add(withBudgets("budgets:\n  - {action: decrypt, tier: restricted, windows: [{period: 1s, limit: 5}, {period: 1s, limit: 6}]}\n"), "")
	f.Add(withBudgets("budgets: []\n"), "")
	f.Add(withRates("rate_limits:\n  global: {per_second: .nan, burst: 1}\n"), "")
	f.Add(withRates("rate_limits:\n  classes: {crypto: {per_second: .inf, burst: 1}}\n"), "")
	f.Add(withRates("rate_limits:\n  classes: {\"\": {per_second: 1, burst: 1}}\n"), "")
	f.Add(base+"anomaly: {expected_rate: -.inf}\n", "")
	f.Add(base+"a: &a [*a, *a]\n", "")

	key := make([]byte, 32)
	block, err := aes.NewCipher(key)
	if err != nil {
		f.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		f.Fatal(err)
	}
	st, err := store.OpenSQLite(context.Background(), filepath.Join(f.TempDir(), "keys.db"))
	if err != nil {
		f.Fatalf("OpenSQLite() err = %v, want nil", err)
	}
	f.Cleanup(func() { st.Close() })
	kek := fuzzKEK{gcm: gcm}

	f.Fuzz(func(t *testing.T, file, envLines string) {
		env := []string{} // never nil: nil would read the process environment
		if envLines != "" {
			env = strings.Split(envLines, "\n")
		}
		cfg, err := Parse(strings.NewReader(file), env)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q, %q) err = %v, want ErrInvalid", file, env, err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse(%q, %q) returned a configuration whose Validate() err = %v", file, env, err)
		}
		checkServeParts(t, cfg, st, kek)

		// Written back, it reads the same.
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("yaml.Marshal(Parse(%q, %q)) err = %v, want nil", file, env, err)
		}
		cfg2, err := Parse(strings.NewReader(string(out)), []string{})
		if err != nil {
			t.Fatalf("Parse(yaml.Marshal(Parse(%q, %q))) err = %v, want nil; written back:\n%s", file, env, err, out)
		}
		out2, err := yaml.Marshal(cfg2)
		if err != nil || string(out2) != string(out) {
			t.Fatalf("the configuration of %q, %q does not read back the same:\n%s\nthen\n%s", file, env, out, out2)
		}
	})
}

// checkServeParts builds what `tresor serve` builds from cfg without I/O,
// as cmd/tresor does, and fails t if any part refuses it.
func checkServeParts(t *testing.T, cfg Config, st store.Store, kek envelope.KEK) {
	t.Helper()
	stale := cfg.Cache.StaleGrace
	if stale == 0 {
		stale = envelope.NoStaleGrace
	}
	ring, err := envelope.New(st, kek, envelope.Options{
		MaxPlaintextSize:  cfg.Limits.MaxPlaintextBytes,
		CacheMaxKeys:      cfg.Cache.MaxKeys,
		CacheMaxAge:       cfg.Cache.MaxAge,
		DefaultUsageLimit: cfg.Keys.DefaultUsageLimit,
		UsageBlock:        cfg.Keys.UsageBlock,
		CacheStaleGrace:   stale,
	})
	if err != nil {
		t.Fatalf("envelope.New(options of a valid configuration) err = %v, want nil", err)
	}
	if _, err := fields.New(ring, fields.Options{MaxDocumentBytes: cfg.Fields.MaxDocumentBytes, MaxDepth: cfg.Fields.MaxDepth}); err != nil {
		t.Fatalf("fields.New(limits of a valid configuration) err = %v, want nil", err)
	}
	rc := limits.RateConfig{
		Global:        limits.Rate{PerSecond: cfg.RateLimits.Global.PerSecond, Burst: cfg.RateLimits.Global.Burst},
		Classes:       map[string]limits.Rate{},
		MaxPrincipals: cfg.RateLimits.MaxPrincipals,
	}
	for name, r := range cfg.RateLimits.Classes {
		rc.Classes[name] = limits.Rate{PerSecond: r.PerSecond, Burst: r.Burst}
	}
	if _, err := limits.NewLimiter(rc, time.Now); err != nil {
		t.Fatalf("limits.NewLimiter(rate limits of a valid configuration) err = %v, want nil", err)
	}
	rules := make([]limits.BudgetRule, 0, len(cfg.Budgets))
	for _, b := range cfg.Budgets {
		r := limits.BudgetRule{Action: b.Action, Tier: b.Tier}
		for _, w := range b.Windows {
			r.Windows = append(r.Windows, limits.Window{Period: w.Period, Limit: w.Limit})
		}
		rules = append(rules, r)
	}
	if _, err := limits.NewBudgets(fuzzBudgetStore{}, rules, time.Now); err != nil {
		t.Fatalf("limits.NewBudgets(budgets of a valid configuration) err = %v, want nil", err)
	}
	if cfg.Anomaly.Enabled {
		loc, err := time.LoadLocation(cfg.Policy.Timezone)
		if err != nil {
			t.Fatalf("time.LoadLocation(timezone of a valid configuration) err = %v, want nil", err)
		}
		expiry := monitor.DefaultExpiry
		expiry[monitor.Log], expiry[monitor.StepUp] = cfg.Anomaly.LogFor, cfg.Anomaly.StepUpFor
		expiry[monitor.Throttle], expiry[monitor.Block] = cfg.Anomaly.ThrottleFor, cfg.Anomaly.BlockFor
		if _, err := monitor.New(monitor.Options{Location: loc, MaxPrincipals: cfg.Anomaly.MaxPrincipals, PriorRate: cfg.Anomaly.ExpectedRate, Expiry: expiry}); err != nil {
			t.Fatalf("monitor.New(anomaly options of a valid configuration) err = %v, want nil", err)
		}
	}
}
