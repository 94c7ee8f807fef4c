// Package pebbletest runs a real ACME CA for tests: pebble, with
// pebble-challtestsrv as its DNS server answering 127.0.0.1 for every name,
// so that the CA validates challenges against servers of the test on
// loopback. Both are built by `make pebble` into .testenv/bin.
//
// Each Start is a CA of its own (pebble keeps everything in memory): its
// own root, intermediate and accounts, stopped when the test ends. A missing
// binary is handled by the rule of package testenv: a skip, or a failure in
// CI.
package pebbletest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
)

// Options say where the CA validates challenges and what it issues.
type Options struct {
	// HTTPPort and TLSPort are the ports on 127.0.0.1 where the CA makes
	// its HTTP-01 requests and TLS-ALPN-01 handshakes (a real CA uses 80
	// and 443). Required.
	HTTPPort, TLSPort int
	// Validity is how long issued certificates are valid, whole seconds;
	// zero is pebble's default (90 days).
	Validity time.Duration
}

// CA is a pebble: its listeners' certificates from New, running after Run.
type CA struct {
	// DirectoryURL is the ACME directory (HTTPS, on 127.0.0.1), set by Run.
	DirectoryURL string
	// ManagementURL serves the CA's root and intermediate (see Issuers),
	// set by Run.
	ManagementURL string
	// ServerRoots verifies pebble's HTTPS listeners: a private CA made for
	// this run (not the ACME CA, whose root signs the issued certificates).
	// ServerRootsFile is the same root as a PEM file.
	ServerRoots     *x509.CertPool
	ServerRootsFile string
	// ServerCertificate is a certificate for 127.0.0.1 and localhost signed
	// by ServerRoots, for servers a test puts in front of pebble.
	ServerCertificate tls.Certificate

	dir string // configuration, certificates and logs
}

// Binaries returns the paths of pebble and pebble-challtestsrv: from
// .testenv/bin (`make pebble`), else from PATH, else an error wrapping
// testenv.ErrUnavailable.
func Binaries() (pebble, challtestsrv string, err error) {
	pebble, errP := find("pebble")
	challtestsrv, errC := find("pebble-challtestsrv")
	return pebble, challtestsrv, errors.Join(errP, errC)
}

func find(name string) (string, error) { return testenv.FindTool(name, "pebble") }

// startTimeout bounds each server's start; a start that fails (a port taken
// between FreePort and the bind) is tried again, up to startAttempts times.
const (
	startTimeout  = 15 * time.Second
	startAttempts = 3
)

// New makes the private CA of pebble's HTTPS listeners (the Server* fields)
// without starting anything yet, so that a test can configure the clients
// that will trust it, and start servers on the ports it gives Run, first.
// A missing binary stops t here, as testenv.Require says.
func New(t testing.TB) *CA {
	t.Helper()
	_, _, err := Binaries()
	testenv.Require(t, "pebble", err)
	ca, err := writeServerCertificates(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// Start is New and Run.
func Start(t testing.TB, opts Options) *CA {
	t.Helper()
	ca := New(t)
	ca.Run(t, opts)
	return ca
}

// Run starts pebble-challtestsrv and pebble, stopped when t ends, and fills
// DirectoryURL and ManagementURL. Their ports are picked free just before
// each start, so servers of the test should be listening already: a port
// merely reserved (found free, not yet bound) could be picked again here.
func (c *CA) Run(t testing.TB, opts Options) {
	t.Helper()
	pebble, challtestsrv, err := Binaries()
	testenv.Require(t, "pebble", err)
	if opts.HTTPPort <= 0 || opts.TLSPort <= 0 {
		t.Fatal("pebbletest: Options.HTTPPort and TLSPort are required")
	}
	dir := c.dir

	var dnsAddr string
	startWithRetry(t, "pebble-challtestsrv", func() (*testenv.Process, error) {
		dnsPort, err1 := testenv.FreePort()
		mgmtPort, err2 := testenv.FreePort()
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		dnsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(dnsPort))
		// Only the DNS server (and the management listener, which cannot
		// be turned off): the servers under test answer the challenges.
		p, err := testenv.StartProcess("pebble-challtestsrv", challtestsrv, []string{
			"-dnsserver", dnsAddr,
			"-management", net.JoinHostPort("127.0.0.1", strconv.Itoa(mgmtPort)),
			"-defaultIPv4", "127.0.0.1", "-defaultIPv6=",
			"-http01=", "-https01=", "-tlsalpn01=", "-doh=",
		}, filepath.Join(dir, "challtestsrv.log"), nil)
		if err != nil {
			return nil, err
		}
		return p, p.WaitReady(startTimeout, func(ctx context.Context) error { return checkDNS(ctx, dnsAddr) })
	})

	startWithRetry(t, "pebble", func() (*testenv.Process, error) {
		apiPort, err1 := testenv.FreePort()
		mgmtPort, err2 := testenv.FreePort()
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		c.DirectoryURL = fmt.Sprintf("https://127.0.0.1:%d/dir", apiPort)
		c.ManagementURL = fmt.Sprintf("https://127.0.0.1:%d", mgmtPort)
		cfgPath := filepath.Join(dir, "pebble.json")
		if err := writeConfig(cfgPath, dir, apiPort, mgmtPort, opts); err != nil {
			return nil, err
		}
		cmd := exec.Command(pebble, "-config", cfgPath, "-dnsserver", dnsAddr)
		cmd.Env = append(os.Environ(),
			"PEBBLE_VA_NOSLEEP=1",      // validate at once, not after up to 5 s
			"PEBBLE_WFE_NONCEREJECT=0", // no random badNonce answers: the test is about challenges
			"PEBBLE_AUTHZREUSE=0",      // every order proves control again, renewals included
		)
		p, err := testenv.StartCommand("pebble", cmd, filepath.Join(dir, "pebble.log"))
		if err != nil {
			return nil, err
		}
		return p, p.WaitReady(startTimeout, func(ctx context.Context) error { return c.get(ctx, c.DirectoryURL, nil) })
	})
}

// startWithRetry starts a server with start, which also waits for it to be
// ready, and stops it when t ends; on failure t fails with the server log's
// tail. On t's failure the log's tail is printed too.
func startWithRetry(t testing.TB, name string, start func() (*testenv.Process, error)) {
	t.Helper()
	var last error
	for range startAttempts {
		p, err := start()
		if err == nil {
			t.Cleanup(func() {
				p.Stop(syscall.SIGTERM, 5*time.Second)
				if t.Failed() {
					t.Log(p.LogTail(40))
				}
			})
			return
		}
		if p != nil {
			p.Stop(syscall.SIGKILL, 5*time.Second)
		}
		last = err
	}
	t.Fatalf("start %s: %v", name, last)
}

// checkDNS asks the challenge server for a name, over TCP as pebble does,
// and wants 127.0.0.1 back.
func checkDNS(ctx context.Context, addr string) error {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	ips, err := r.LookupHost(ctx, "ready.pebbletest.test")
	if err != nil {
		return err
	}
	if len(ips) != 1 || ips[0] != "127.0.0.1" {
		return fmt.Errorf("DNS answered %v, want [127.0.0.1]", ips)
	}
	return nil
}

func writeConfig(path, dir string, apiPort, mgmtPort int, opts Options) error {
	type profile struct {
		Description    string `json:"description"`
		ValidityPeriod uint64 `json:"validityPeriod,omitempty"`
	}
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort)),
		"managementListenAddress":        net.JoinHostPort("127.0.0.1", strconv.Itoa(mgmtPort)),
		"certificate":                    filepath.Join(dir, "server.pem"),
		"privateKey":                     filepath.Join(dir, "server-key.pem"),
		"httpPort":                       opts.HTTPPort,
		"tlsPort":                        opts.TLSPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"keyAlgorithm":                   "ecdsa",
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"profiles": map[string]profile{"default": {
			Description:    "pebbletest",
			ValidityPeriod: uint64(opts.Validity / time.Second),
		}},
	}}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// Issuers fetches the ACME CA's root and intermediate from the management
// interface: what a certificate issued by this CA must chain to.
func (c *CA) Issuers(ctx context.Context) (root, intermediate *x509.Certificate, err error) {
	certs := make([]*x509.Certificate, 2)
	for i, path := range []string{"/roots/0", "/intermediates/0"} {
		var body []byte
		if err := c.get(ctx, c.ManagementURL+path, &body); err != nil {
			return nil, nil, err
		}
		b, _ := pem.Decode(body)
		if b == nil || b.Type != "CERTIFICATE" {
			return nil, nil, fmt.Errorf("%s: not a PEM certificate", path)
		}
		if certs[i], err = x509.ParseCertificate(b.Bytes); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return certs[0], certs[1], nil
}

// get fetches url from one of pebble's listeners, verified with
// ServerRoots, into body when body is not nil. Its connection is closed
// afterwards: nothing is left running between calls.
func (c *CA) get(ctx context.Context, url string, body *[]byte) error {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.ServerRoots}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if body != nil {
		*body = data
	}
	return nil
}

// writeServerCertificates makes the private CA of pebble's HTTPS listeners
// and their certificate, writes them into dir (server-ca.pem, server.pem,
// server-key.pem) and returns a CA with the Server* fields filled.
func writeServerCertificates(dir string) (*CA, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pebbletest listeners CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "pebbletest listener"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	ca := &CA{ServerRoots: x509.NewCertPool(), ServerRootsFile: filepath.Join(dir, "server-ca.pem"), dir: dir}
	ca.ServerRoots.AddCert(caCert)
	for _, f := range []struct {
		name, typ string
		der       []byte
	}{{"server-ca.pem", "CERTIFICATE", caDER}, {"server.pem", "CERTIFICATE", der}, {"server-key.pem", "PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(filepath.Join(dir, f.name), pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			return nil, err
		}
	}
	ca.ServerCertificate = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return ca, nil
}
