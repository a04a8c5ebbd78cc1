package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// metrics are the chain's Prometheus collectors. Labels are method names,
// codes, actions, classes and tiers: never identities, keys or payloads.
type metrics struct {
	calls     *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	authFails *prometheus.CounterVec
	denials   *prometheus.CounterVec
	limits    *prometheus.CounterVec
	budgets   *prometheus.CounterVec
	anomalies *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tresor_rpc_calls_total", Help: "Calls by full method name and status code, refused calls included.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tresor_rpc_duration_seconds", Help: "Call duration through the whole chain.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"method"}),
		authFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tresor_authn_failures_total", Help: "Calls refused by authentication, by reason.",
		}, []string{"reason"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tresor_authz_denials_total", Help: "Calls refused by the policy, by action.",
		}, []string{"action"}),
		limits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tresor_rate_limited_total", Help: "Calls refused by a rate limit, by action class.",
		}, []string{"class"}),
		budgets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tresor_budget_exhausted_total", Help: "Calls refused by a usage budget, by action and tier.",
		}, []string{"action", "tier"}),
		anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tresor_anomaly_responses_total", Help: "Calls made under an anomaly response, by response (log, step_up, throttle, block).",
		}, []string{"response"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.calls, m.latency, m.authFails, m.denials, m.limits, m.budgets, m.anomalies} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observe(method string, code codes.Code, d time.Duration) {
	m.calls.WithLabelValues(method, code.String()).Inc()
	m.latency.WithLabelValues(method).Observe(d.Seconds())
}

func (m *metrics) authFailed(reason string)            { m.authFails.WithLabelValues(reason).Inc() }
func (m *metrics) anomalyResponse(response string)     { m.anomalies.WithLabelValues(response).Inc() }
func (m *metrics) denied(action string)                { m.denials.WithLabelValues(action).Inc() }
func (m *metrics) limited(class string)                { m.limits.WithLabelValues(class).Inc() }
func (m *metrics) budgetExhausted(action, tier string) { m.budgets.WithLabelValues(action, tier).Inc() }
