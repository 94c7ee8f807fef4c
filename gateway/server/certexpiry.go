package server

import (
	"crypto/tls"
	"crypto/x509"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// maxCertNames bounds the certificates whose expiry is exported: the names
// come from configuration and from hosts the ACME policy allowed (routed
// hosts), but the bound keeps a table of millions of routes from making a
// series each.
const maxCertNames = 10000

// CertExpiry exports when each certificate the gateway serves expires, as
// pipeops_gateway_tls_certificate_expiry_timestamp_seconds{name}: the name
// is the certificate's file name for TLS_CERT_DIR, "default" for the default
// certificate, and the host for ACME ones. Recorded when a certificate is
// loaded and each time an ACME certificate is served, so a renewal shows at
// its next handshake. A nil *CertExpiry records nothing.
type CertExpiry struct {
	gauge *prometheus.GaugeVec

	mu   sync.Mutex
	seen map[string]int64 // name -> NotAfter (Unix seconds) last exported
}

// NewCertExpiry registers the gauge on reg.
func NewCertExpiry(reg prometheus.Registerer) *CertExpiry {
	e := &CertExpiry{
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pipeops_gateway_tls_certificate_expiry_timestamp_seconds",
			Help: "When each TLS certificate the gateway serves expires (Unix time), by certificate name.",
		}, []string{"name"}),
		seen: map[string]int64{},
	}
	reg.MustRegister(e.gauge)
	return e
}

// observe records c's expiry under name.
func (e *CertExpiry) observe(name string, c *tls.Certificate) {
	if e == nil || c == nil || len(c.Certificate) == 0 {
		return
	}
	leaf := c.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return
		}
	}
	notAfter := leaf.NotAfter.Unix()
	e.mu.Lock()
	defer e.mu.Unlock()
	if prev, ok := e.seen[name]; ok && prev == notAfter {
		return // the common case: a handshake with a certificate already seen
	}
	if _, ok := e.seen[name]; !ok && len(e.seen) >= maxCertNames {
		return
	}
	e.seen[name] = notAfter
	e.gauge.WithLabelValues(name).Set(float64(notAfter))
}
