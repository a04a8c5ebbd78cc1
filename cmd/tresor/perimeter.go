package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/limits"
	"github.com/tresorkms/tresor/internal/policy"
	"github.com/tresorkms/tresor/internal/server"
)

// perimeter is what guards every call: TLS that reloads, the authenticator,
// the policy, rate limits and budgets.
type perimeter struct {
	tls     *authn.ServerTLS
	authn   *authn.Authenticator
	policy  *policy.Reloading
	limiter *limits.Limiter
	budgets *limits.Budgets
}

// policyOptions turns the policy section into policy.Options.
func policyOptions(c config.Policy) (policy.Options, error) {
	loc, err := time.LoadLocation(c.Timezone)
	if err != nil {
		return policy.Options{}, fmt.Errorf("policy.timezone: %w", err)
	}
	return policy.Options{SchemaFile: c.SchemaFile, PolicyDir: c.Dir, Location: loc}, nil
}

// authnConfig turns the auth section into authn.Config.
func authnConfig(c config.Auth) (authn.Config, error) {
	ac := authn.Config{RequireToken: c.RequireToken}
	t := c.Token
	if t.Issuer == "" {
		return ac, nil
	}
	client := &http.Client{Timeout: 10 * time.Second}
	if t.CAFile != "" {
		pool, err := readCertPool(t.CAFile)
		if err != nil {
			return ac, fmt.Errorf("auth.token.ca_file: %w", err)
		}
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}}
	}
	ac.Tokens = &authn.TokenConfig{
		Issuer:      t.Issuer,
		Audiences:   t.Audiences,
		JWKSFile:    t.JWKSFile,
		HTTPClient:  client,
		Algorithms:  t.Algorithms,
		ClockSkew:   t.ClockSkew,
		MaxLifetime: t.MaxLifetime,
		RolesClaim:  t.RolesClaim,
		ScopesClaim: t.ScopesClaim,
	}
	return ac, nil
}

// newPerimeter builds the perimeter from the configuration, all but the
// budgets (countBudgetsIn, once the key store is open), and starts its
// reload loops, which stop with ctx.
func newPerimeter(ctx context.Context, cfg config.Config, logger *slog.Logger) (*perimeter, error) {
	p := &perimeter{}
	var err error
	p.tls, err = authn.NewServerTLS(authn.TLSFiles{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, ClientCAFile: cfg.TLS.ClientCAFile}, logger)
	if err != nil {
		return nil, err
	}
	popts, err := policyOptions(cfg.Policy)
	if err != nil {
		return nil, err
	}
	p.policy, err = policy.NewReloading(popts, logger)
	if err != nil {
		return nil, err
	}
	ac, err := authnConfig(cfg.Auth)
	if err != nil {
		return nil, err
	}
	p.authn, err = authn.New(ctx, ac)
	if err != nil {
		return nil, err
	}
	rc := limits.RateConfig{
		Global:        limits.Rate{PerSecond: cfg.RateLimits.Global.PerSecond, Burst: cfg.RateLimits.Global.Burst},
		Classes:       map[string]limits.Rate{},
		MaxPrincipals: cfg.RateLimits.MaxPrincipals,
	}
	for name, r := range cfg.RateLimits.Classes {
		rc.Classes[name] = limits.Rate{PerSecond: r.PerSecond, Burst: r.Burst}
	}
	p.limiter, err = limits.NewLimiter(rc, time.Now)
	if err != nil {
		p.authn.Close()
		return nil, err
	}
	interval := cfg.Policy.ReloadInterval
	go p.tls.Run(ctx, interval)
	go p.policy.Run(ctx, interval)
	return p, nil
}

// countBudgetsIn sets up the decrypt budgets, counted in st (the key store,
// so that they hold across replicas).
func (p *perimeter) countBudgetsIn(st limits.BudgetStore, budgets []config.Budget) error {
	rules := make([]limits.BudgetRule, 0, len(budgets))
	for _, b := range budgets {
		r := limits.BudgetRule{Action: b.Action, Tier: b.Tier}
		for _, w := range b.Windows {
			r.Windows = append(r.Windows, limits.Window{Period: w.Period, Limit: w.Limit})
		}
		rules = append(rules, r)
	}
	var err error
	p.budgets, err = limits.NewBudgets(st, rules, time.Now)
	return err
}

// serverOptions fills the perimeter's part of server.Options.
func (p *perimeter) serverOptions(o *server.Options, reg *prometheus.Registry) {
	o.TLS = p.tls.Config()
	o.Authenticator = p.authn
	o.Authorizer = p.policy
	o.Limiter = p.limiter
	o.Budgets = p.budgets
	o.Metrics = reg
}

// serveMetrics serves reg at /metrics over plain HTTP on addr until ctx
// ends: for a Prometheus scraper on loopback or a management network. It
// is never served on the API listeners, whose callers are workloads.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, logger *slog.Logger) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("listen.metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	go func() { _ = srv.Serve(lis) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return lis.Addr().String(), nil
}

func (p *perimeter) Close() {
	if p.authn != nil {
		p.authn.Close()
	}
}
