package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// LoadTLS builds the HTTPS configuration: a certificate per hostname from
// TLS_CERT_DIR (HOST.crt and HOST.key; a wildcard *.example.com is stored
// as _.example.com.crt), picked by SNI; the default certificate
// (TLS_CERT_FILE) for any other name; and, when TLS_SELF_SIGNED is set and
// no default is given, a self-signed development certificate. TLS 1.2+.
//
// With ACME, hosts that have no certificate of their own get one from the
// ACME CA (acme, the Manager of NewACME), before the default certificate is
// used.
//
// expiry, when not nil, is told each certificate's expiry (CertExpiry).
func LoadTLS(cfg Config, acme *autocert.Manager, expiry *CertExpiry) (*tls.Config, error) {
	byName := map[string]*tls.Certificate{}
	if cfg.TLSCertDir != "" {
		certs, err := filepath.Glob(filepath.Join(cfg.TLSCertDir, "*.crt"))
		if err != nil {
			return nil, err
		}
		for _, crt := range certs {
			key := strings.TrimSuffix(crt, ".crt") + ".key"
			c, err := tls.LoadX509KeyPair(crt, key)
			if err != nil {
				return nil, fmt.Errorf("TLS_CERT_DIR: %s: %w", filepath.Base(crt), err)
			}
			name := strings.TrimSuffix(filepath.Base(crt), ".crt")
			if rest, ok := strings.CutPrefix(name, "_."); ok {
				name = "*." + rest
			}
			byName[strings.ToLower(name)] = &c
			expiry.observe(name, &c)
		}
	}
	var def *tls.Certificate
	switch {
	case cfg.TLSCertFile != "":
		c, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS_CERT_FILE/TLS_KEY_FILE: %w", err)
		}
		def = &c
	case cfg.TLSSelfSigned:
		c, err := SelfSigned(append([]string{"localhost"}, cfg.GatewayHosts...))
		if err != nil {
			return nil, err
		}
		def = c
	}
	expiry.observe("default", def)
	if def == nil && len(byName) == 0 && acme == nil {
		return nil, errors.New("no TLS certificate: set TLS_CERT_DIR, TLS_CERT_FILE/TLS_KEY_FILE or TLS_SELF_SIGNED=true")
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1", acmeALPN},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
			if c, ok := byName[name]; ok {
				return c, nil
			}
			if i := strings.IndexByte(name, '.'); i > 0 {
				if c, ok := byName["*"+name[i:]]; ok {
					return c, nil
				}
			}
			if acme != nil {
				c, err := acme.GetCertificate(hello)
				if err == nil {
					expiry.observe(name, c)
				}
				if err == nil || def == nil {
					return c, err
				}
			}
			if def != nil {
				return def, nil
			}
			return nil, fmt.Errorf("no certificate for %q", name)
		},
	}, nil
}

// SelfSigned makes a development certificate for names (DNS names or IPs)
// and 127.0.0.1, valid for a year.
func SelfSigned(names []string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "pipeops gateway (development)"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// acmeALPN is the TLS-ALPN-01 challenge protocol, answered by autocert.
const acmeALPN = "acme-tls/1"

// ACME is the gateway's ACME client: the certificate manager that LoadTLS and
// the HTTP listener use, and the transport it reaches the CA with. It lives
// as long as the gateway's Run; Close ends its traffic to the CA.
type ACME struct {
	Manager   *autocert.Manager
	transport *acmeTransport
}

// errACMEClosed is what an ACME request gets once the gateway has stopped.
var errACMEClosed = errors.New("acme: the gateway has stopped")

// acmeTransport carries the ACME client's requests until it is closed.
// autocert's renewal timers cannot be stopped, so without it a renewal that
// comes due after shutdown (in tests, or in a process that embeds the
// gateway) would still order certificates from the CA.
type acmeTransport struct {
	base   *http.Transport
	closed atomic.Bool
}

func (t *acmeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.closed.Load() {
		if r.Body != nil {
			r.Body.Close() // a RoundTripper owns the body, even on error
		}
		return nil, errACMEClosed
	}
	return t.base.RoundTrip(r)
}

// NewACME builds the certificate manager. It asks the ACME CA only for hosts
// allowed by allow (routed hosts and the gateway's own), so that a flood of
// made-up names cannot exhaust the CA's rate limits. The CA's HTTPS is
// verified against ACME_CA_FILE when set (a private CA), the system roots
// otherwise; ACME_RENEW_BEFORE, when set, replaces autocert's renewal point
// (a third of the certificate's lifetime before it ends, at most 30 days).
func NewACME(cfg Config, allow func(host string) bool) (*ACME, error) {
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
	}
	if cfg.ACMECAFile != "" {
		roots, err := loadRoots(cfg.ACMECAFile)
		if err != nil {
			return nil, fmt.Errorf("ACME_CA_FILE: %w", err)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	t := &acmeTransport{base: tr}
	dir := cfg.ACMEDirectory
	if dir == "" {
		dir = autocert.DefaultACMEDirectory
	}
	m := &autocert.Manager{
		Prompt:      autocert.AcceptTOS,
		Cache:       autocert.DirCache(cfg.ACMECacheDir),
		Email:       cfg.ACMEEmail,
		RenewBefore: cfg.ACMERenewBefore,
		Client:      &acme.Client{DirectoryURL: dir, HTTPClient: &http.Client{Transport: t}},
		HostPolicy: func(_ context.Context, host string) error {
			if !allow(policyHost(host)) {
				return fmt.Errorf("acme: %q has no route on this gateway", host)
			}
			return nil
		},
	}
	return &ACME{Manager: m, transport: t}, nil
}

// Close stops all further traffic to the CA (renewals included) and closes
// the idle connections to it. Call it once the listeners are shut down. A
// renewal that is waiting between two polls of the CA (autocert gives it a
// context of its own) ends at its next request, at most the poll interval
// later.
func (a *ACME) Close() {
	a.transport.closed.Store(true)
	a.transport.base.CloseIdleConnections()
}

// policyHost puts a name the way the host policy compares names: lower
// case, no trailing dot, and no port (autocert hands the policy an HTTP-01
// request's Host header as it came, port included when not 80).
func policyHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// loadRoots reads a PEM file of CA certificates; a file without any is an
// error, not an empty pool that would trust nothing.
func loadRoots(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s has no PEM certificate", path)
	}
	return pool, nil
}
