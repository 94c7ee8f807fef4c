package authn

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pipeops/tunnel/shared/auth"
)

// Metrics are the Prometheus collectors of the gateway's keyset.JWKS and
// its Revocations. Make one
// with NewMetrics and give it to both (and to any number of each): the
// counters add up. A nil *Metrics counts nothing. Safe for concurrent use.
type Metrics struct {
	jwksFetches      *prometheus.CounterVec
	jwksLastSuccess  prometheus.Gauge
	revocationChecks *prometheus.CounterVec
	refused          *prometheus.CounterVec
}

// NewMetrics returns the collectors, registered on reg. With a nil reg they
// count but are exposed nowhere. It panics, like prometheus.MustRegister,
// when reg already has collectors of the same names: that is a wiring
// mistake, found at start-up.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "pipeops_gateway", "authn"
	m := &Metrics{
		jwksFetches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "jwks_fetches_total", Help: "Fetches of the control plane's JWKS, by result (ok, error)."}, []string{"result"}),
		jwksLastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "jwks_last_success_timestamp_seconds", Help: "When the JWKS was last fetched successfully (Unix time); alert on its age."}),
		revocationChecks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "revocation_checks_total", Help: "Token revocation checks, by how they were answered: " +
				"cached, queried, stale (cached answer served because the token store failed), error."}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tokens_refused_total", Help: "Tokens refused, by cause: invalid, wrong_kind, revoked, " +
				"not_as_recorded (signed with the real key but with claims that differ from the token's record: " +
				"a forgery by a holder of the signing key), error."}, []string{"cause"}),
	}
	// Create the series up front so that dashboards see zeros, not gaps.
	for _, r := range []string{"ok", "error"} {
		m.jwksFetches.WithLabelValues(r)
	}
	for _, r := range []string{"cached", "queried", "stale", "error"} {
		m.revocationChecks.WithLabelValues(r)
	}
	for _, c := range []string{"invalid", "wrong_kind", "revoked", "not_as_recorded", "error"} {
		m.refused.WithLabelValues(c)
	}
	if reg != nil {
		reg.MustRegister(m.jwksFetches, m.jwksLastSuccess, m.revocationChecks, m.refused)
	}
	return m
}

// JWKSFetched counts a good fetch of the key set (keyset.Observer).
func (m *Metrics) JWKSFetched(at time.Time) {
	if m == nil {
		return
	}
	m.jwksFetches.WithLabelValues("ok").Inc()
	m.jwksLastSuccess.Set(float64(at.UnixNano()) / 1e9)
}

// JWKSFetchFailed counts a failed fetch of the key set (keyset.Observer).
func (m *Metrics) JWKSFetchFailed() {
	if m == nil {
		return
	}
	m.jwksFetches.WithLabelValues("error").Inc()
}

func (m *Metrics) revocationCheck(result string) {
	if m == nil {
		return
	}
	m.revocationChecks.WithLabelValues(result).Inc()
}

// TokenRefused counts a token a verifier refused; give it to
// auth.Verifier.OnRefuse.
func (m *Metrics) TokenRefused(err error) {
	if m == nil {
		return
	}
	m.refused.WithLabelValues(auth.Cause(err)).Inc()
}
