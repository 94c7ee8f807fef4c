package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writePair(t *testing.T, dir, base string, names []string) {
	t.Helper()
	c, err := SelfSigned(names)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, base+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600)
	os.WriteFile(filepath.Join(dir, base+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func TestLoadTLS(t *testing.T) {
	dir := t.TempDir()
	writePair(t, dir, "shop.example.com", []string{"shop.example.com"})
	writePair(t, dir, "_.apps.example.com", []string{"*.apps.example.com"})
	expiry := NewCertExpiry(prometheus.NewRegistry())
	cfg, err := LoadTLS(Config{TLSCertDir: dir, TLSSelfSigned: true, GatewayHosts: []string{"gw.example.com"}}, nil, expiry)
	if err != nil {
		t.Fatal(err)
	}
	// Every certificate's expiry is exported, under the name it is kept by.
	for name, file := range map[string]string{"shop.example.com": "shop.example.com.crt", "*.apps.example.com": "_.apps.example.com.crt"} {
		c, err := tls.LoadX509KeyPair(filepath.Join(dir, file), filepath.Join(dir, strings.TrimSuffix(file, ".crt")+".key"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := testutil.ToFloat64(expiry.gauge.WithLabelValues(name)), float64(c.Leaf.NotAfter.Unix()); got != want {
			t.Errorf("expiry of %s = %v, want %v", name, got, want)
		}
	}
	if got := testutil.ToFloat64(expiry.gauge.WithLabelValues("default")); got < float64(time.Now().Unix()) {
		t.Errorf("expiry of the self-signed default = %v, want a time in the future", got)
	}
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Fatalf("MinVersion = %x", cfg.MinVersion)
	}
	for sni, want := range map[string]string{
		"shop.example.com":   "shop.example.com",
		"SHOP.example.com.":  "shop.example.com",
		"a.apps.example.com": "*.apps.example.com",
		"gw.example.com":     "gw.example.com", // the self-signed default
		"other.example.org":  "localhost",
	} {
		c, err := cfg.GetCertificate(&tls.ClientHelloInfo{ServerName: sni})
		if err != nil {
			t.Fatalf("%s: %v", sni, err)
		}
		leaf, _ := x509.ParseCertificate(c.Certificate[0])
		if err := leaf.VerifyHostname(want); err != nil {
			t.Errorf("SNI %s got a certificate for %v, want one for %s", sni, leaf.DNSNames, want)
		}
	}
	if _, err := LoadTLS(Config{}, nil, nil); err == nil {
		t.Fatal("LoadTLS with no certificate source succeeded")
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "x.crt"), []byte("junk"), 0o600)
	if _, err := LoadTLS(Config{TLSCertDir: bad}, nil, nil); err == nil {
		t.Fatal("a broken certificate file was accepted")
	}
}

// TestACMEHostPolicy: the CA is asked only for routed and gateway hosts, and
// hosts with a certificate of their own never reach the ACME manager.
func TestACMEHostPolicy(t *testing.T) {
	allowed := map[string]bool{"shop.example.com": true}
	a, err := NewACME(Config{ACMECacheDir: t.TempDir()}, func(h string) bool { return allowed[h] })
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	m := a.Manager
	ctx := context.Background()
	// As autocert passes them: an SNI, and an HTTP-01 request's Host.
	for _, host := range []string{"SHOP.example.com", "shop.example.com.", "shop.example.com:5002"} {
		if err := m.HostPolicy(ctx, host); err != nil {
			t.Fatalf("routed host %q refused: %v", host, err)
		}
	}
	if err := m.HostPolicy(ctx, "random.example.net"); err == nil {
		t.Fatal("a host without a route was allowed to ask the CA")
	}
	dir := t.TempDir()
	writePair(t, dir, "own.example.com", []string{"own.example.com"})
	cfg, err := LoadTLS(Config{TLSCertDir: dir}, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cfg.GetCertificate(&tls.ClientHelloInfo{ServerName: "own.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if leaf, _ := x509.ParseCertificate(c.Certificate[0]); leaf.VerifyHostname("own.example.com") != nil {
		t.Fatal("a host with its own certificate did not get it")
	}
	// No route and no default: refused before any CA traffic.
	if _, err := cfg.GetCertificate(&tls.ClientHelloInfo{ServerName: "random.example.net"}); err == nil {
		t.Fatal("a certificate was produced for a host without a route")
	}
}
