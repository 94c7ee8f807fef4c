package server

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
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
	cfg, err := LoadTLS(Config{TLSCertDir: dir, TLSSelfSigned: true, GatewayHosts: []string{"gw.example.com"}})
	if err != nil {
		t.Fatal(err)
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
	if _, err := LoadTLS(Config{}); err == nil {
		t.Fatal("LoadTLS with no certificate source succeeded")
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "x.crt"), []byte("junk"), 0o600)
	if _, err := LoadTLS(Config{TLSCertDir: bad}); err == nil {
		t.Fatal("a broken certificate file was accepted")
	}
}
