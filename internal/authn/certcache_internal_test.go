package authn

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"
)

func testCert(t *testing.T, cn string, uris ...string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertCache(t *testing.T) {
	var c certCache
	a := testCert(t, "a", "spiffe://bank.test/a")
	b := testCert(t, "b", "spiffe://bank.test/b")
	check := func(cert *x509.Certificate, want string) {
		t.Helper()
		w, tp, err := c.identity(cert)
		if err != nil || w != want || tp != Thumbprint(cert) {
			t.Fatalf("identity(%s) = %q, %q, %v; want %q, %q", want, w, tp, err, want, Thumbprint(cert))
		}
	}
	for range 2 {
		check(a, "spiffe://bank.test/a")
		check(b, "spiffe://bank.test/b")
	}
	// A certificate whose DER was replaced (here the whole certificate) is
	// not answered for from its pointer's entry.
	p := new(x509.Certificate)
	*p = *a
	check(p, "spiffe://bank.test/a")
	*p = *b
	check(p, "spiffe://bank.test/b")
	// The same DER in a copy of the same bytes is the same certificate.
	*p = *a
	p.Raw = append([]byte(nil), a.Raw...)
	check(p, "spiffe://bank.test/a")

	// Certificates without an identity are refused every time, uncached.
	none := testCert(t, "", "spiffe://bank.test/1", "spiffe://bank.test/2")
	for range 2 {
		if _, _, err := c.identity(none); !errors.Is(err, ErrNoIdentity) {
			t.Fatalf("identity(two SPIFFE IDs) err = %v, want ErrNoIdentity", err)
		}
	}
	if _, ok := c.m[none]; ok {
		t.Errorf("a certificate without an identity was cached")
	}

	// The cache is bounded.
	for range certCacheSize + 10 {
		cp := new(x509.Certificate)
		*cp = *a
		check(cp, "spiffe://bank.test/a")
	}
	if n := len(c.m); n > certCacheSize {
		t.Errorf("certificate cache holds %d entries, want at most %d", n, certCacheSize)
	}
}
