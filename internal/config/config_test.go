package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

const base = `
listen:
  grpc: 127.0.0.1:9443
tls:
  cert_file: /etc/tresor/server.pem
  key_file: /etc/tresor/server-key.pem
  client_ca_file: /etc/tresor/clients.pem
store:
  url: sqlite:///var/lib/tresor/keys.db
root_key:
  uri: pkcs11:token=tresor;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tresor/pin
cache:
  max_age: 90s
auth:
  token:
    issuer: https://idp.bank.example
    audiences: [tresor]
policy:
  schema_file: /etc/tresor/policies/tresor.cedarschema
  dir: /etc/tresor/policies
  timezone: Europe/Berlin
rate_limits:
  classes:
    crypto: {per_second: 1000, burst: 2000}
budgets:
  - action: decrypt
    tier: restricted
    windows: [{period: 1s, limit: 5}, {period: 24h, limit: 1000}]
`

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		env     []string
		check   func(Config) string
		wantErr string
	}{
		{name: "defaults fill the rest", yaml: base, check: func(c Config) string {
			if c.Listen.GRPC != "127.0.0.1:9443" || c.Listen.HTTP != "127.0.0.1:8444" || c.Cache.MaxAge != 90*time.Second || c.Limits.MaxPlaintextBytes != 64<<10 {
				return "got " + c.Listen.GRPC + " " + c.Listen.HTTP + " " + c.Cache.MaxAge.String()
			}
			return ""
		}},
		{name: "environment overrides", yaml: base, env: []string{"TRESOR_LISTEN_GRPC=0.0.0.0:1", "TRESOR_CACHE_MAX_AGE=2m", "TRESOR_LIMITS_MAX_PLAINTEXT_BYTES=100", "PATH=/bin", "TRESOR_ADDR=ignored"}, check: func(c Config) string {
			if c.Listen.GRPC != "0.0.0.0:1" || c.Cache.MaxAge != 2*time.Minute || c.Limits.MaxPlaintextBytes != 100 {
				return "overrides not applied"
			}
			return ""
		}},
		{name: "unknown key", yaml: base + "surprise: 1\n", wantErr: "surprise"},
		{name: "unknown nested key", yaml: strings.Replace(base, "  grpc:", "  grpcc:", 1), wantErr: "grpcc"},
		{name: "unknown environment variable", yaml: base, env: []string{"TRESOR_LISTEN_GRPCC=x"}, wantErr: "TRESOR_LISTEN_GRPCC"},
		{name: "bad environment value", yaml: base, env: []string{"TRESOR_CACHE_MAX_AGE=soon"}, wantErr: "TRESOR_CACHE_MAX_AGE"},
		{name: "missing root key", yaml: strings.Replace(base, "  uri: pkcs11", "  uri: ''\n  #", 1), wantErr: "root_key.uri is required"},
		{name: "missing TLS", yaml: strings.Replace(base, "  cert_file: /etc/tresor/server.pem\n", "", 1), wantErr: "tls.cert_file"},
		{name: "no client CA", yaml: strings.Replace(base, "  client_ca_file: /etc/tresor/clients.pem\n", "", 1), wantErr: "tls.client_ca_file is required"},
		{name: "file too large", yaml: base + "#" + strings.Repeat("x", 1<<20) + "\n", wantErr: "larger than"},
		{name: "bad log level", yaml: base + "log:\n  level: loud\n", wantErr: "log.level"},
		{name: "plaintext limit too large", yaml: base + "limits:\n  max_plaintext_bytes: 99999999\n", wantErr: "max_plaintext_bytes"},
		{name: "not YAML", yaml: "listen: [", wantErr: "invalid"},
		{name: "perimeter sections parsed", yaml: base, check: func(c Config) string {
			if !c.Auth.RequireToken || c.Auth.Token.MaxLifetime != 15*time.Minute || c.Policy.Timezone != "Europe/Berlin" ||
				c.RateLimits.Classes["crypto"].Burst != 2000 || len(c.Budgets) != 1 || c.Budgets[0].Windows[1].Limit != 1000 {
				return "perimeter sections not as written"
			}
			return ""
		}},
		{name: "audiences from the environment", yaml: base, env: []string{"TRESOR_AUTH_TOKEN_AUDIENCES=a, b", "TRESOR_AUTH_REQUIRE_TOKEN=false"}, check: func(c Config) string {
			if len(c.Auth.Token.Audiences) != 2 || c.Auth.Token.Audiences[1] != "b" || c.Auth.RequireToken {
				return "audiences or require_token not overridden"
			}
			return ""
		}},
		{name: "token required without issuer", yaml: strings.Replace(base, "issuer: https://idp.bank.example", "issuer: ''", 1), wantErr: "auth.token.issuer is required"},
		{name: "HS256 allowed", yaml: base + "  \n", env: []string{"TRESOR_AUTH_TOKEN_ALGORITHMS=ES256,HS256"}, wantErr: `"HS256" is refused`},
		{name: "alg none allowed", yaml: base, env: []string{"TRESOR_AUTH_TOKEN_ALGORITHMS=none"}, wantErr: `"none" is refused`},
		{name: "no audience", yaml: strings.Replace(base, "    audiences: [tresor]\n", "", 1), wantErr: "auth.token.audiences"},
		{name: "no policy", yaml: strings.Replace(base, "  dir: /etc/tresor/policies\n", "", 1), wantErr: "policy.schema_file and policy.dir are required"},
		{name: "bad timezone", yaml: strings.Replace(base, "Europe/Berlin", "Mars/Olympus", 1), wantErr: "policy.timezone"},
		{name: "unknown rate class", yaml: strings.Replace(base, "    crypto: {", "    crpyto: {", 1), wantErr: "unknown class"},
		{name: "burst missing", yaml: strings.Replace(base, ", burst: 2000", "", 1), wantErr: "burst positive"},
		{name: "budget tier unknown", yaml: strings.Replace(base, "tier: restricted", "tier: secret", 1), wantErr: "budgets[0].tier"},
		{name: "budget action unknown", yaml: strings.Replace(base, "action: decrypt", "action: encrypt", 1), wantErr: "want decrypt or searchable"},
		{name: "budget window too short", yaml: strings.Replace(base, "period: 1s", "period: 10ms", 1), wantErr: "budgets[0].windows[0]"},
		{name: "rotation defaults", yaml: base, check: func(c Config) string {
			if c.Keys.DefaultUsageLimit != 1<<30 || c.Keys.UsageBlock != 1024 || c.Scheduler.Interval != time.Minute ||
				c.Scheduler.LeaseTTL != 30*time.Second || c.Cache.SyncInterval != 2*time.Second {
				return fmt.Sprintf("rotation defaults = %+v %+v sync %v, want 2^30, 1024, 1m, 30s, 2s", c.Keys, c.Scheduler, c.Cache.SyncInterval)
			}
			return ""
		}},
		{name: "rotation keys from file and environment", yaml: base + "keys:\n  default_usage_limit: 1000000\nscheduler:\n  interval: 10s\n",
			env: []string{"TRESOR_KEYS_USAGE_BLOCK=64", "TRESOR_SCHEDULER_LEASE_TTL=45s", "TRESOR_CACHE_SYNC_INTERVAL=5s"}, check: func(c Config) string {
				if c.Keys.DefaultUsageLimit != 1_000_000 || c.Keys.UsageBlock != 64 || c.Scheduler.Interval != 10*time.Second ||
					c.Scheduler.LeaseTTL != 45*time.Second || c.Cache.SyncInterval != 5*time.Second {
					return fmt.Sprintf("rotation keys = %+v %+v sync %v, not as written", c.Keys, c.Scheduler, c.Cache.SyncInterval)
				}
				return ""
			}},
		{name: "usage limit above 2^32", yaml: base + "keys:\n  default_usage_limit: 4294967297\n", wantErr: "keys.default_usage_limit"},
		{name: "usage limit zero", yaml: base + "keys:\n  default_usage_limit: 0\n", wantErr: "keys.default_usage_limit"},
		{name: "usage block zero", yaml: base, env: []string{"TRESOR_KEYS_USAGE_BLOCK=0"}, wantErr: "keys.usage_block"},
		{name: "scheduler interval too short", yaml: base + "scheduler:\n  interval: 10ms\n", wantErr: "scheduler.interval"},
		{name: "lease ttl too short", yaml: base, env: []string{"TRESOR_SCHEDULER_LEASE_TTL=0s"}, wantErr: "scheduler.lease_ttl"},
		{name: "sync interval above max age", yaml: base, env: []string{"TRESOR_CACHE_SYNC_INTERVAL=5m"}, wantErr: "cache.sync_interval"},
		{name: "sync interval zero", yaml: base, env: []string{"TRESOR_CACHE_SYNC_INTERVAL=0s"}, wantErr: "cache.sync_interval"},
		{name: "stale grace default", yaml: base, check: func(c Config) string {
			if c.Cache.StaleGrace != 15*time.Minute {
				return fmt.Sprintf("cache.stale_grace = %v, want 15m", c.Cache.StaleGrace)
			}
			return ""
		}},
		{name: "stale grace from file", yaml: strings.Replace(base, "  max_age: 90s\n", "  max_age: 90s\n  stale_grace: 1h\n", 1), check: func(c Config) string {
			if c.Cache.StaleGrace != time.Hour {
				return fmt.Sprintf("cache.stale_grace = %v, want 1h", c.Cache.StaleGrace)
			}
			return ""
		}},
		{name: "stale grace off", yaml: base, env: []string{"TRESOR_CACHE_STALE_GRACE=0s"}, check: func(c Config) string {
			if c.Cache.StaleGrace != 0 {
				return fmt.Sprintf("cache.stale_grace = %v, want 0 (off)", c.Cache.StaleGrace)
			}
			return ""
		}},
		{name: "stale grace negative", yaml: base, env: []string{"TRESOR_CACHE_STALE_GRACE=-1s"}, wantErr: "cache.stale_grace"},
		{name: "stale grace above a day", yaml: base, env: []string{"TRESOR_CACHE_STALE_GRACE=25h"}, wantErr: "cache.stale_grace"},
		// Found by FuzzParse: each passed Validate, then made serve refuse to start.
		{name: "NaN rate", yaml: base, env: []string{"TRESOR_RATE_LIMITS_GLOBAL_PER_SECOND=NaN", "TRESOR_RATE_LIMITS_GLOBAL_BURST=1"}, wantErr: "rate_limits.global"},
		{name: "infinite rate", yaml: strings.Replace(base, "per_second: 1000", "per_second: .inf", 1), wantErr: "rate_limits.classes.crypto"},
		{name: "NaN expected rate", yaml: base, env: []string{"TRESOR_ANOMALY_EXPECTED_RATE=NaN"}, wantErr: "anomaly.expected_rate"},
		{name: "negative expected rate", yaml: base, env: []string{"TRESOR_ANOMALY_EXPECTED_RATE=-1"}, wantErr: "anomaly.expected_rate"},
		{name: "budget twice", yaml: strings.Replace(base, "budgets:\n", "budgets:\n  - {action: decrypt, tier: restricted, windows: [{period: 1h, limit: 9}]}\n", 1), wantErr: "budgets[1]: a budget for action"},
		{name: "budget window period twice", yaml: strings.Replace(base, "{period: 24h, limit: 1000}", "{period: 1s, limit: 1000}", 1), wantErr: "budgets[0].windows[1]: period 1s appears twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if env == nil {
				env = []string{}
			}
			cfg, err := Parse(strings.NewReader(tt.yaml), env)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse() err = %v, want ErrInvalid mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse() err = %v, want nil", err)
			}
			if msg := tt.check(cfg); msg != "" {
				t.Errorf("Parse(): %s", msg)
			}
		})
	}
}

func TestEnvNamesCoverEveryKey(t *testing.T) {
	names := strings.Join(EnvNames(), " ")
	for _, want := range []string{"TRESOR_LISTEN_GRPC", "TRESOR_TLS_CLIENT_CA_FILE", "TRESOR_STORE_URL", "TRESOR_ROOT_KEY_URI", "TRESOR_CACHE_MAX_AGE", "TRESOR_CACHE_SYNC_INTERVAL", "TRESOR_CACHE_STALE_GRACE", "TRESOR_KEYS_DEFAULT_USAGE_LIMIT", "TRESOR_KEYS_USAGE_BLOCK", "TRESOR_SCHEDULER_INTERVAL", "TRESOR_SCHEDULER_LEASE_TTL"} {
		if !strings.Contains(names, want) {
			t.Errorf("EnvNames() = %s, want it to contain %s", names, want)
		}
	}
}
