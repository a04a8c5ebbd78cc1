package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/awskms"
	"github.com/tresorkms/tresor/kms/provider"
)

// The service's own metrics, beside the call chain's (internal/server) and
// the audit log's (auditing.go): root-key provider calls, the keyset cache
// and root-key rotation progress. Labels are provider kinds, operations,
// error kinds and job states, from fixed sets: never a key name, a root-key
// id or URI, a PIN or any payload.

// rootKeyCallBuckets span a local file (microseconds), a PKCS#11 HSM
// (milliseconds) and a cloud KMS (tens to hundreds of milliseconds, seconds
// when it struggles).
var rootKeyCallBuckets = []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// rootKeyMetrics records the calls made to root-key providers. It is a
// prometheus.Collector; a nil *rootKeyMetrics records nothing.
type rootKeyMetrics struct {
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
}

func newRootKeyMetrics() *rootKeyMetrics {
	return &rootKeyMetrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tresor_root_key_call_duration_seconds",
			Help:    "Duration of root-key provider calls (failed ones included), by provider kind (pkcs11, aws-kms, local-file) and operation (wrap, unwrap).",
			Buckets: rootKeyCallBuckets,
		}, []string{"provider", "op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tresor_root_key_call_errors_total",
			Help: "Failed root-key provider calls, by provider kind, operation and kind of error (unavailable: the HSM or KMS could not be reached; other).",
		}, []string{"provider", "op", "kind"}),
	}
}

// Describe implements prometheus.Collector.
func (m *rootKeyMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.duration.Describe(ch)
	m.errors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *rootKeyMetrics) Collect(ch chan<- prometheus.Metric) {
	m.duration.Collect(ch)
	m.errors.Collect(ch)
}

// Root-key operations and error kinds, the values of the op and kind labels.
const (
	rootKeyOpWrap      = "wrap"
	rootKeyOpUnwrap    = "unwrap"
	rootKeyUnavailable = "unavailable"
	rootKeyOtherError  = "other"
)

// rootKeyProvider returns the provider label of a root-key URI: its scheme
// when it is one tresor knows, else "other". Never the URI itself, whose
// key id or ARN may name a customer.
func rootKeyProvider(uri string) string {
	switch s := provider.Scheme(uri); s {
	case "pkcs11", "local-file", awskms.Scheme:
		return s
	default:
		return "other"
	}
}

// opener returns open with every root key it opens instrumented (see
// instrumentRootKey). A nil m returns open unchanged.
func (m *rootKeyMetrics) opener(open func(context.Context, string) (kms.RootKey, error)) func(context.Context, string) (kms.RootKey, error) {
	if m == nil {
		return open
	}
	return func(ctx context.Context, uri string) (kms.RootKey, error) {
		k, err := open(ctx, uri)
		if err != nil {
			return nil, err
		}
		return m.instrumentRootKey(rootKeyProvider(uri), k), nil
	}
}

// instrumentRootKey returns k with the latency of its Wrap and Unwrap calls
// and their errors recorded under the provider label. ID and Close pass
// through.
func (m *rootKeyMetrics) instrumentRootKey(providerKind string, k kms.RootKey) kms.RootKey {
	if m == nil || k == nil {
		return k
	}
	// Every series of the provider exists from the start, at zero, so that
	// rates and alerts on errors work before the first failure.
	for _, op := range []string{rootKeyOpWrap, rootKeyOpUnwrap} {
		m.duration.WithLabelValues(providerKind, op)
		m.errors.WithLabelValues(providerKind, op, rootKeyUnavailable)
		m.errors.WithLabelValues(providerKind, op, rootKeyOtherError)
	}
	return &instrumentedRootKey{RootKey: k, m: m, provider: providerKind}
}

// instrumentedRootKey is a root key whose calls are recorded.
type instrumentedRootKey struct {
	kms.RootKey
	m        *rootKeyMetrics
	provider string
}

var _ envelope.KEK = (*instrumentedRootKey)(nil)

func (k *instrumentedRootKey) Wrap(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	start := time.Now()
	out, err := k.RootKey.Wrap(ctx, plaintext, associatedData)
	k.m.observe(k.provider, rootKeyOpWrap, start, err)
	return out, err
}

func (k *instrumentedRootKey) Unwrap(ctx context.Context, wrapped, associatedData []byte) ([]byte, error) {
	start := time.Now()
	out, err := k.RootKey.Unwrap(ctx, wrapped, associatedData)
	k.m.observe(k.provider, rootKeyOpUnwrap, start, err)
	return out, err
}

func (m *rootKeyMetrics) observe(providerKind, op string, start time.Time, err error) {
	m.duration.WithLabelValues(providerKind, op).Observe(time.Since(start).Seconds())
	if err == nil {
		return
	}
	kind := rootKeyOtherError
	if errors.Is(err, kms.ErrUnavailable) {
		kind = rootKeyUnavailable
	}
	m.errors.WithLabelValues(providerKind, op, kind).Inc()
}

// registerServiceMetrics registers on reg the root-key call metrics of
// roots (nil: none; see openInstrumentedRootKeys), the keyset cache's
// counters of ring, and the progress of the store's latest root-key
// rotation. Cache and rotation metrics are read when scraped.
func registerServiceMetrics(reg prometheus.Registerer, ring *envelope.Keyring, st store.Store, roots *rootKeyMetrics) error {
	var cs []prometheus.Collector
	if roots != nil {
		cs = append(cs, roots)
	}
	cs = append(cs, keysetCacheCollectors(ring.Cache())...)
	cs = append(cs, newRotationProgress(st, rotationProgressTTL, rotationProgressTimeout).collectors()...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// keysetCacheCollectors read the cache's statistics when scraped.
func keysetCacheCollectors(c *envelope.KeysetCache) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tresor_keyset_cache_hits_total", Help: "Keyset cache lookups served from the cache, without a root-key call.",
		}, func() float64 { return float64(c.Stats().Hits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tresor_keyset_cache_misses_total", Help: "Keyset cache lookups that missed (absent or past cache.max_age) and loaded the keyset.",
		}, func() float64 { return float64(c.Stats().Misses) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tresor_keyset_cache_stale_total", Help: "Lookups served by an expired keyset within the stale grace because the root key or the key store was unavailable.",
		}, func() float64 { return float64(c.Stats().Stale) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tresor_keyset_cache_keys", Help: "Keysets in the cache, expired ones kept for the stale grace included.",
		}, func() float64 { return float64(c.Stats().Size) }),
	}
}

const (
	// rotationProgressTTL is how long one read of the latest root-key
	// rotation answers scrapes.
	rotationProgressTTL = 5 * time.Second
	// rotationProgressTimeout bounds that read.
	rotationProgressTimeout = 2 * time.Second
)

// rotationStore is what rotation progress needs of the key store.
type rotationStore interface {
	LatestRootKeyRotation(ctx context.Context) (store.RootKeyRotation, error)
}

// rotationProgress reads the store's latest root-key rotation for the
// scrapes of a few seconds. While the store cannot be read, the last values
// read stay.
type rotationProgress struct {
	st      rotationStore
	ttl     time.Duration
	timeout time.Duration
	now     func() time.Time

	mu      sync.Mutex // held during a read, so that concurrent scrapes share it
	readAt  time.Time  // zero: never read
	total   int64
	done    int64
	running bool
}

func newRotationProgress(st rotationStore, ttl, timeout time.Duration) *rotationProgress {
	return &rotationProgress{st: st, ttl: ttl, timeout: timeout, now: time.Now}
}

// read returns the latest rotation's progress, reading the store at most
// once per ttl.
func (p *rotationProgress) read() (total, rewrapped int64, running bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := p.now(); p.readAt.IsZero() || now.Sub(p.readAt) >= p.ttl {
		p.readAt = now
		ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
		r, err := p.st.LatestRootKeyRotation(ctx)
		cancel()
		switch {
		case err == nil:
			p.total, p.done, p.running = r.Total, r.Rewrapped, r.State == store.RotationRunning
		case errors.Is(err, store.ErrNotFound):
			p.total, p.done, p.running = 0, 0, false
		default:
			// Keep the last values; the store's own health shows in
			// readiness.
		}
	}
	return p.total, p.done, p.running
}

func (p *rotationProgress) collectors() []prometheus.Collector {
	const keysets = "tresor_root_key_rotation_keysets"
	const keysetsHelp = "Keysets of the latest root-key rotation: total, to re-wrap when it started; rewrapped, so far."
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: keysets, Help: keysetsHelp, ConstLabels: prometheus.Labels{"state": "total"},
		}, func() float64 { t, _, _ := p.read(); return float64(t) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: keysets, Help: keysetsHelp, ConstLabels: prometheus.Labels{"state": "rewrapped"},
		}, func() float64 { _, r, _ := p.read(); return float64(r) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tresor_root_key_rotation_running", Help: "1 while a root-key rotation re-wraps keysets, else 0.",
		}, func() float64 {
			if _, _, running := p.read(); running {
				return 1
			}
			return 0
		}),
	}
}
