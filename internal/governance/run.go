package governance

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/policy"
)

// ErrUnknownCheck means Options.Skip names no check.
var ErrUnknownCheck = errors.New("governance: unknown check")

// KeyStore is what the key-inventory check reads and then closes.
// store.Store satisfies it.
type KeyStore interface {
	KeyLister
	UsageReader
	Close() error
}

// Options configure Run.
type Options struct {
	// ConfigPath is the configuration file.
	ConfigPath string
	// Env holds the environment overrides (os.Environ form); nil means the
	// process environment, as for `tresor serve`.
	Env []string
	// Now returns the time the checks run at; nil means time.Now.
	Now func() time.Time
	// TLSWarnWithin: certificates that expire this soon are warnings; 0
	// means DefaultTLSWarnWithin.
	TLSWarnWithin time.Duration
	// RotationGrace: how late a scheduled rotation may be; 0 means
	// DefaultRotationGrace.
	RotationGrace time.Duration
	// Skip names checks not to run (PolicyCheck, SchemaCheck, TLSCheck,
	// KeysCheck), e.g. the key inventory where the store is out of reach.
	// The configuration is always checked.
	Skip []string
	// PolicyOptions turns the policy section into policy.Options; nil uses
	// the schema file, directory and time zone as they are.
	PolicyOptions func(config.Policy) (policy.Options, error)
	// OpenStore opens the key store at a store URL for reading; nil skips
	// the key inventory. It must not create a store that does not exist,
	// and must not open the root key.
	OpenStore func(ctx context.Context, storeURL string) (KeyStore, error)
	// Schemas returns the source of the classification schemas the
	// configuration names; nil, or a nil source, skips the schema check.
	Schemas func(config.Config) SchemaSource
}

// Run loads the configuration and runs every check not skipped: config,
// policies, TLS, the key inventory, then the classification schemas
// against the inventory. A configuration that does not load stops the
// other checks (each is reported skipped). It returns an error only for
// options it cannot use (an unknown check in Skip) or when ctx ends;
// everything else is a finding.
func Run(ctx context.Context, opts Options) (Report, error) {
	for _, s := range opts.Skip {
		if !slices.Contains(AllChecks(), s) || s == ConfigCheck {
			return Report{}, fmt.Errorf("%w: %q: want one of %s", ErrUnknownCheck, s, strings.Join(AllChecks()[1:], ", "))
		}
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	at := now()
	var findings []Finding
	var skipped []string
	skip := func(check, why string) {
		skipped = append(skipped, check)
		findings = append(findings, Finding{Check: check, Severity: SeverityInfo, Message: "not checked: " + why})
	}
	skipFlag := func(check string) bool {
		if slices.Contains(opts.Skip, check) {
			skip(check, "skipped on request")
			return true
		}
		return false
	}

	cfg, ok, fs := CheckConfig(opts.ConfigPath, opts.Env)
	findings = append(findings, fs...)
	if !ok {
		for _, c := range AllChecks()[1:] {
			skip(c, "the configuration did not load")
		}
		return NewReport(at, opts.ConfigPath, findings, skipped, nil), nil
	}

	if !skipFlag(PolicyCheck) {
		findings = append(findings, checkPolicySection(cfg.Policy, opts.PolicyOptions)...)
	}
	if !skipFlag(TLSCheck) {
		warn := opts.TLSWarnWithin
		if warn <= 0 {
			warn = DefaultTLSWarnWithin
		}
		findings = append(findings, CheckTLS(TLSFiles{
			CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile,
			ClientCAFile: cfg.TLS.ClientCAFile, TokenCAFile: cfg.Auth.Token.CAFile,
		}, at, warn)...)
	}

	var keys []KeyInfo
	var summary *KeySummary
	switch {
	case skipFlag(KeysCheck):
	case opts.OpenStore == nil:
		skip(KeysCheck, "no key store reader")
	default:
		grace := opts.RotationGrace
		if grace <= 0 {
			grace = DefaultRotationGrace
		}
		var fs []Finding
		keys, fs = readInventory(ctx, opts.OpenStore, cfg.Store.URL)
		findings = append(findings, fs...)
		if keys != nil {
			kf, sum := CheckKeys(keys, KeyRules{Now: at, RotationGrace: grace, DefaultUsageLimit: cfg.Keys.DefaultUsageLimit})
			findings = append(findings, kf...)
			summary = &sum
			findings = append(findings, Finding{Check: KeysCheck, Severity: SeverityInfo, Subject: storeSubject(cfg.Store.URL),
				Message: fmt.Sprintf("read %d keys (metadata only)", sum.Total)})
		}
	}

	var src SchemaSource
	if opts.Schemas != nil {
		src = opts.Schemas(cfg)
	}
	switch {
	case skipFlag(SchemaCheck):
	case src == nil:
		skip(SchemaCheck, "no classification schema directory configured")
	default:
		findings = append(findings, CheckSchemas(ctx, src, keys)...)
	}
	if err := ctx.Err(); err != nil {
		return Report{}, err
	}
	return NewReport(at, opts.ConfigPath, findings, skipped, summary), nil
}

func checkPolicySection(c config.Policy, toOptions func(config.Policy) (policy.Options, error)) []Finding {
	popts := policy.Options{SchemaFile: c.SchemaFile, PolicyDir: c.Dir}
	if toOptions != nil {
		var err error
		if popts, err = toOptions(c); err != nil {
			return []Finding{{Check: PolicyCheck, Severity: SeverityError, Subject: c.Dir, Message: err.Error(), Err: err}}
		}
	}
	return CheckPolicies(popts)
}

// readInventory opens the store, reads every key and closes it. A store
// that cannot be opened or read is an error finding, and keys are nil.
func readInventory(ctx context.Context, open func(context.Context, string) (KeyStore, error), storeURL string) ([]KeyInfo, []Finding) {
	subject := storeSubject(storeURL)
	fail := func(err error) []Finding {
		return []Finding{{Check: KeysCheck, Severity: SeverityError, Subject: subject, Message: err.Error(), Err: err}}
	}
	st, err := open(ctx, storeURL)
	if err != nil {
		return nil, fail(fmt.Errorf("key store: %w", err))
	}
	keys, err := ReadKeys(ctx, st, st)
	cerr := st.Close()
	if err != nil {
		return nil, fail(err)
	}
	if cerr != nil {
		return nil, fail(fmt.Errorf("key store: close: %w", cerr))
	}
	if keys == nil {
		keys = []KeyInfo{}
	}
	return keys, nil
}

// storeSubject names a key store in a report without its secrets: a SQLite
// path as it is, a PostgreSQL URL without password and parameters.
func storeSubject(storeURL string) string {
	if !strings.Contains(storeURL, "://") || strings.HasPrefix(storeURL, "sqlite://") {
		return storeURL
	}
	u, err := url.Parse(storeURL)
	if err != nil {
		// Unparseable: the scheme alone.
		return storeURL[:strings.Index(storeURL, "://")] + "://(unparseable URL)"
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	u.RawQuery = ""
	u.Fragment = ""
	return u.String()
}
