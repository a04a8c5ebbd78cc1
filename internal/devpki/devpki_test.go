package devpki

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"
)

func TestWriteDir(t *testing.T) {
	dir := t.TempDir()
	f, err := WriteDir(dir, []string{"127.0.0.1", "localhost"}, "dev-client")
	if err != nil {
		t.Fatalf("WriteDir() err = %v, want nil", err)
	}
	caPEM, err := os.ReadFile(f.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("CA file %s holds no certificate", f.CACert)
	}
	tests := []struct {
		name      string
		cert, key string
		usage     x509.ExtKeyUsage
		check     func(*x509.Certificate) string
	}{
		{"server", f.ServerCert, f.ServerKey, x509.ExtKeyUsageServerAuth, func(c *x509.Certificate) string {
			if err := c.VerifyHostname("127.0.0.1"); err != nil {
				return err.Error()
			}
			return ""
		}},
		{"client", f.ClientCert, f.ClientKey, x509.ExtKeyUsageClientAuth, func(c *x509.Certificate) string {
			if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://tresor.dev/dev-client" || c.Subject.CommonName != "dev-client" {
				return "want CN dev-client and SPIFFE ID spiffe://tresor.dev/dev-client"
			}
			return ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pair, err := tls.LoadX509KeyPair(tt.cert, tt.key)
			if err != nil {
				t.Fatalf("LoadX509KeyPair(%s) err = %v", tt.name, err)
			}
			leaf := pair.Leaf
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{tt.usage}}); err != nil {
				t.Errorf("%s certificate does not verify against the CA for %v: %v", tt.name, tt.usage, err)
			}
			if msg := tt.check(leaf); msg != "" {
				t.Errorf("%s certificate: %s", tt.name, msg)
			}
			st, err := os.Stat(tt.key)
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("%s key mode = %v, %v; want 0600", tt.name, st.Mode().Perm(), err)
			}
		})
	}
	// A second run keeps the existing material.
	before, _ := os.ReadFile(f.ClientCert)
	if _, err := WriteDir(dir, []string{"127.0.0.1"}, "dev-client"); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(f.ClientCert)
	if string(before) != string(after) {
		t.Errorf("WriteDir() a second time replaced the client certificate, want it kept")
	}
}

func TestCertificatesExpire(t *testing.T) {
	ca, err := NewCA("short", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueClient("c", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: time.Now().Add(2 * time.Minute), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Errorf("Verify() two minutes after a one-minute certificate expired: err = nil, want an expiry error")
	}
}
