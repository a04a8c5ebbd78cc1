package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/fields"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/monitor"
	"github.com/tresorkms/tresor/internal/server"
	"github.com/tresorkms/tresor/internal/store"
)

func newServeCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run the tresor server from a configuration file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path, nil)
			if err != nil {
				return err
			}
			logger, err := newLogger(cmd.ErrOrStderr(), cfg.Log)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, logger, nil)
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "configuration file (YAML)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func newCheckCmd() *cobra.Command { return newGovernanceCheckCmd() }

func newLogger(w io.Writer, c config.Log) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

// openStore opens the key store a store URL names: PostgreSQL for
// postgres:// and postgresql:// URLs (the store several replicas share),
// SQLite for sqlite:///path.db or a plain path. Its errors never show a
// password from the URL.
func openStore(ctx context.Context, url string) (store.Store, error) {
	switch {
	case strings.HasPrefix(url, "sqlite://"):
		return store.OpenSQLite(ctx, strings.TrimPrefix(url, "sqlite://"))
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		st, err := store.OpenPostgres(ctx, url)
		if err != nil {
			// Not the URL: OpenPostgres names user, host and database, and
			// pgx shows a URL it cannot parse with its passwords xxxxx.
			return nil, fmt.Errorf("store.url: %w", err)
		}
		return st, nil
	case strings.Contains(url, "://"):
		return nil, fmt.Errorf("store.url: unknown store scheme %q; want sqlite:///path/keys.db or postgres://user@host:5432/db", url[:strings.Index(url, "://")])
	default:
		return store.OpenSQLite(ctx, url)
	}
}

// serve opens the store and the root key, builds the server and runs it
// until ctx ends. ready, when not nil, is called with the server once it
// listens.
func serve(ctx context.Context, cfg config.Config, logger *slog.Logger, ready func(*server.Server)) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The perimeter (TLS files, policies, token keys) first: a typo in a
	// path must not leave a new empty key store behind.
	per, err := newPerimeter(ctx, cfg, logger)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	defer per.Close()
	st, err := openStore(ctx, cfg.Store.URL)
	if err != nil {
		return fmt.Errorf("refusing to start: key store: %w", err)
	}
	defer st.Close()
	rootMetrics := newRootKeyMetrics()
	rk, err := openInstrumentedRootKeys(ctx, cfg, st, logger, rootMetrics)
	if err != nil {
		return fmt.Errorf("refusing to start: root key: %w", err)
	}
	defer rk.Close()
	ring, err := envelope.New(st, rk.set, envelope.Options{
		MaxPlaintextSize: cfg.Limits.MaxPlaintextBytes,
		CacheMaxKeys:     cfg.Cache.MaxKeys,
		CacheMaxAge:      cfg.Cache.MaxAge,
		// Usage limits of AES-256-GCM key versions (see internal/config).
		DefaultUsageLimit: cfg.Keys.DefaultUsageLimit,
		UsageBlock:        cfg.Keys.UsageBlock,
		// A keyset past max_age keeps serving this long while its root key
		// or the store is unreachable (0 in the file turns it off).
		CacheStaleGrace: cmp.Or(cfg.Cache.StaleGrace, envelope.NoStaleGrace),
		Logger:          logger,
	})
	if err != nil {
		return err
	}
	if err := per.countBudgetsIn(st, cfg.Budgets); err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	opts := server.Options{
		GRPCAddr:        cfg.Listen.GRPC,
		HTTPAddr:        cfg.Listen.HTTP,
		MaxRequestBytes: cfg.Limits.MaxRequestBytes,
		Logger:          logger,
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := registerServiceMetrics(reg, ring, st, rootMetrics); err != nil {
		return err
	}
	per.serverOptions(&opts, reg)
	if cfg.Listen.Metrics != "" {
		addr, err := serveMetrics(ctx, cfg.Listen.Metrics, reg, logger)
		if err != nil {
			return fmt.Errorf("refusing to start: %w", err)
		}
		logger.InfoContext(ctx, "serving metrics", "addr", addr)
	}
	opts.RootKeys = rk.rotator
	opts.Ready = append(opts.Ready,
		server.ReadinessCheck{Name: "root_key", Check: rootKeyReady(rk.set)},
		server.ReadinessCheck{Name: "store", Check: storeReady(st)})
	opts.Schemas = server.NewSchemaRegistry(st, server.KeyTypes(ring), nil)
	opts.Documents = fields.Options{MaxDocumentBytes: cfg.Fields.MaxDocumentBytes, MaxDepth: cfg.Fields.MaxDepth}
	if err := loadSchemaDir(ctx, opts.Schemas, cfg.Fields.SchemaDir, logger); err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	if cfg.Audit.Enabled {
		auditLog, reader, closeAudit, err := openAudit(ctx, cfg.Audit, st, ring, rk.set, reg, logger)
		if err != nil {
			return fmt.Errorf("refusing to start: %w", err)
		}
		defer closeAudit()
		opts.Observer, opts.Audit = server.NewAuditObserver(auditLog), reader
		opts.Ready = append(opts.Ready, server.ReadinessCheck{Name: "audit", Check: auditLog.Ready})
	}
	if cfg.Anomaly.Enabled && opts.Authorizer != nil {
		m, err := newMonitor(cfg)
		if err != nil {
			return fmt.Errorf("refusing to start: %w", err)
		}
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "tresor_anomaly_principals", Help: "Principals whose baselines the anomaly monitor keeps.",
			}, func() float64 { return float64(m.Stats().Principals) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "tresor_anomaly_principals_evicted_total", Help: "Idle principals dropped to stay within anomaly.max_principals.",
			}, func() float64 { return float64(m.Stats().Evicted) }))
		opts.Anomaly, opts.AnomalyMinRisk = m, cfg.Anomaly.MinRisk
	}
	srv, err := server.New(ring, opts)
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	stopRotator := rk.run(ctx)
	defer stopRotator()
	defer startJobs(ctx, cfg, ring, st, logger)()
	grpcAddr, httpAddr := srv.Addrs()
	logger.InfoContext(ctx, "tresor serving", "grpc", grpcAddr, "http", httpAddr, "root_key", rk.set.ID(), "store", storeKind(cfg.Store.URL))
	if ready != nil {
		ready(srv)
	}
	return srv.Serve(ctx)
}

func storeKind(url string) string {
	if i := strings.Index(url, "://"); i > 0 {
		return url[:i]
	}
	return "sqlite"
}

// rootKeyReady checks that the active root key wraps and unwraps.
func rootKeyReady(roots *envelope.RootKeys) func(context.Context) error {
	return func(ctx context.Context) error {
		aad := []byte("tresor-readiness")
		w, err := roots.Wrap(ctx, []byte("ready"), aad)
		if err != nil {
			return err
		}
		_, err = roots.Unwrap(ctx, w, aad)
		return err
	}
}

// storeReady checks that the key store answers a read.
func storeReady(st store.Store) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := st.KeyRevisions(ctx, []string{"tresor-readiness"})
		return err
	}
}

// newMonitor builds the anomaly monitor the configuration describes.
func newMonitor(cfg config.Config) (*monitor.Monitor, error) {
	loc, err := time.LoadLocation(cfg.Policy.Timezone)
	if err != nil {
		return nil, fmt.Errorf("policy.timezone: %w", err)
	}
	expiry := monitor.DefaultExpiry
	expiry[monitor.Log], expiry[monitor.StepUp] = cfg.Anomaly.LogFor, cfg.Anomaly.StepUpFor
	expiry[monitor.Throttle], expiry[monitor.Block] = cfg.Anomaly.ThrottleFor, cfg.Anomaly.BlockFor
	m, err := monitor.New(monitor.Options{Location: loc, MaxPrincipals: cfg.Anomaly.MaxPrincipals, PriorRate: cfg.Anomaly.ExpectedRate, Expiry: expiry})
	if err != nil {
		return nil, fmt.Errorf("anomaly: %w", err)
	}
	return m, nil
}
