package authn_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/authn"
	"github.com/tresorkms/tresor/internal/devpki"
)

// tlsEnv is a TLS server using a ServerTLS over files in a folder.
type tlsEnv struct {
	files   authn.TLSFiles
	stls    *authn.ServerTLS
	addr    string
	ca, ca2 *devpki.CA
	roots   *x509.CertPool // trusts server certificates of ca
	// sessions, when set, gives each client identity its own session
	// cache (a shared one would resume one client's session for another).
	sessions map[*devpki.Pair]tls.ClientSessionCache
}

func newTLSEnv(t *testing.T) *tlsEnv {
	t.Helper()
	p := newPKI(t)
	dir := t.TempDir()
	e := &tlsEnv{
		files: authn.TLSFiles{
			CertFile:     filepath.Join(dir, "server.pem"),
			KeyFile:      filepath.Join(dir, "server-key.pem"),
			ClientCAFile: filepath.Join(dir, "client-ca.pem"),
		},
		ca: p.ca, ca2: p.ca2, roots: p.ca.Pool(),
	}
	e.writeServerCert(t)
	writeFile(t, e.files.ClientCAFile, e.ca.CertPEM)
	var logs logBuffer
	s, err := authn.NewServerTLS(e.files, logs.logger())
	if err != nil {
		t.Fatalf("NewServerTLS err = %v, want nil", err)
	}
	e.stls = s
	ln, err := tls.Listen("tcp", "127.0.0.1:0", s.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	e.addr = ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
				if err := tc.Handshake(); err != nil {
					return
				}
				_, _ = tc.Write([]byte("ok"))
				_, _ = io.Copy(io.Discard, tc) // until the client closes
			}()
		}
	}()
	return e
}

func (e *tlsEnv) writeServerCert(t *testing.T) *x509.Certificate {
	t.Helper()
	srv, err := e.ca.IssueServer([]string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, e.files.CertFile, srv.CertPEM)
	writeFile(t, e.files.KeyFile, srv.KeyPEM)
	return leaf(t, srv)
}

// dial connects with client (nil: no client certificate) and reports the
// server certificate, whether the session resumed, and the error.
func (e *tlsEnv) dial(t *testing.T, client *devpki.Pair, version uint16) (*x509.Certificate, bool, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.roots, ServerName: "127.0.0.1", MinVersion: version, MaxVersion: version}
	if e.sessions != nil && client != nil {
		if e.sessions[client] == nil {
			e.sessions[client] = tls.NewLRUClientSessionCache(8)
		}
		cfg.ClientSessionCache = e.sessions[client]
	}
	if client != nil {
		cert, err := client.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.addr, cfg)
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	// With TLS 1.3 a refused client certificate shows at the first read.
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		return nil, false, err
	}
	st := c.ConnectionState()
	return st.PeerCertificates[0], st.DidResume, nil
}

func TestServerTLSHandshakes(t *testing.T) {
	e := newTLSEnv(t)
	good, err := e.ca.IssueClient("payments", "spiffe://bank.test/payments", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := e.ca2.IssueClient("payments", "spiffe://bank.test/payments", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := e.ca.IssueClientWindow("payments", "spiffe://bank.test/payments", time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	notYet, err := e.ca.IssueClientWindow("payments", "", time.Now().Add(time.Hour), time.Now().Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := e.ca.IssueServer([]string{"127.0.0.1"}, time.Hour) // no client auth EKU
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		client *devpki.Pair
		ok     bool
	}{
		{"client of the CA", &good, true},
		{"client of another CA", &otherCA, false},
		{"expired client", &expired, false},
		{"not yet valid client", &notYet, false},
		{"server certificate as client", &serverCert, false},
		{"no client certificate", nil, false},
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, tc := range tests {
			t.Run(tls.VersionName(v)+"/"+tc.name, func(t *testing.T) {
				_, _, err := e.dial(t, tc.client, v)
				if (err == nil) != tc.ok {
					t.Fatalf("handshake err = %v, want ok = %v", err, tc.ok)
				}
			})
		}
	}
}

func TestServerTLSConfig(t *testing.T) {
	e := newTLSEnv(t)
	c1, c2 := e.stls.Config(), e.stls.Config()
	if c1 == c2 {
		t.Fatal("Config() returned the same *tls.Config twice, want a fresh one per call")
	}
	if c1.MinVersion != tls.VersionTLS12 || c1.ClientAuth != tls.RequireAndVerifyClientCert || c1.ClientCAs == nil ||
		!slices.Equal(c1.NextProtos, []string{"h2", "http/1.1"}) || c1.GetConfigForClient == nil {
		t.Fatalf("Config() = %+v, want TLS1.2+, h2, required client certs, ClientCAs and GetConfigForClient", c1)
	}
	inner, err := c1.GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil || inner.ClientAuth != tls.RequireAndVerifyClientCert || inner.ClientCAs == nil || len(inner.Certificates) != 1 || inner.MinVersion != tls.VersionTLS12 {
		t.Fatalf("GetConfigForClient() = %+v, %v; want the current material with client auth", inner, err)
	}
}

func TestServerTLSReload(t *testing.T) {
	e := newTLSEnv(t)
	e.sessions = map[*devpki.Pair]tls.ClientSessionCache{}
	ca1Client, err := e.ca.IssueClient("a", "spiffe://bank.test/a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca2Client, err := e.ca2.IssueClient("b", "spiffe://bank.test/b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.dial(t, &ca1Client, tls.VersionTLS13); err != nil {
		t.Fatalf("handshake(CA1 client) err = %v, want nil", err)
	}
	if _, resumed, err := e.dial(t, &ca1Client, tls.VersionTLS13); err != nil || !resumed {
		t.Fatalf("second handshake(CA1 client) resumed = %v, err = %v; want a resumed session", resumed, err)
	}
	if _, _, err := e.dial(t, &ca2Client, tls.VersionTLS13); err == nil {
		t.Fatal("handshake(CA2 client) err = nil before the reload, want refused")
	}

	t.Run("new client CA bundle", func(t *testing.T) {
		writeFile(t, e.files.ClientCAFile, e.ca2.CertPEM)
		if err := e.stls.Reload(); err != nil {
			t.Fatalf("Reload() err = %v, want nil", err)
		}
		if _, _, err := e.dial(t, &ca2Client, tls.VersionTLS13); err != nil {
			t.Fatalf("handshake(CA2 client) err = %v, want nil", err)
		}
		// Neither a full handshake nor resuming an earlier session lets an
		// old-CA client in.
		if _, _, err := e.dial(t, &ca1Client, tls.VersionTLS13); err == nil {
			t.Fatal("handshake(CA1 client, resuming) err = nil, want refused")
		}
		e.sessions = nil
		if _, _, err := e.dial(t, &ca1Client, tls.VersionTLS12); err == nil {
			t.Fatal("handshake(CA1 client) err = nil, want refused")
		}
	})
	t.Run("new server certificate", func(t *testing.T) {
		before, _, err := e.dial(t, &ca2Client, tls.VersionTLS13)
		if err != nil {
			t.Fatal(err)
		}
		want := e.writeServerCert(t)
		if err := e.stls.Reload(); err != nil {
			t.Fatalf("Reload() err = %v, want nil", err)
		}
		got, _, err := e.dial(t, &ca2Client, tls.VersionTLS13)
		if err != nil {
			t.Fatalf("handshake after Reload err = %v, want nil", err)
		}
		if got.SerialNumber.Cmp(want.SerialNumber) != 0 || got.SerialNumber.Cmp(before.SerialNumber) == 0 {
			t.Fatalf("server certificate serial = %v, want the new %v (old %v)", got.SerialNumber, want.SerialNumber, before.SerialNumber)
		}
	})
	t.Run("broken files keep the old material", func(t *testing.T) {
		other, err := e.ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		keyBody := pemBody(t, other.KeyPEM)
		writeFile(t, e.files.KeyFile, other.KeyPEM) // does not match the certificate
		err = e.stls.Reload()
		if err == nil {
			t.Fatal("Reload(mismatched key) err = nil, want an error")
		}
		if strings.Contains(err.Error(), keyBody[:40]) {
			t.Fatalf("Reload() err = %q contains key bytes", err)
		}
		e.writeServerCert(t)
		writeFile(t, e.files.ClientCAFile, []byte("no certificates here"))
		if err := e.stls.Reload(); !errors.Is(err, authn.ErrInvalidConfig) {
			t.Fatalf("Reload(empty CA bundle) err = %v, want ErrInvalidConfig", err)
		}
		if _, _, err := e.dial(t, &ca2Client, tls.VersionTLS13); err != nil {
			t.Fatalf("handshake after failed reloads err = %v, want nil (old material)", err)
		}
	})
}

func TestServerTLSRun(t *testing.T) {
	e := newTLSEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.stls.Run(ctx, 10*time.Millisecond)
	}()
	defer func() { cancel(); <-done }()
	ca2Client, err := e.ca2.IssueClient("b", "spiffe://bank.test/b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Different content and size, so the change shows even within one
	// mtime tick.
	writeFile(t, e.files.ClientCAFile, append(append([]byte{}, e.ca2.CertPEM...), e.ca.CertPEM...))
	waitFor(t, "Run to load the new CA bundle", func() bool {
		_, _, err := e.dial(t, &ca2Client, tls.VersionTLS13)
		return err == nil
	})
}

func TestNewServerTLSErrors(t *testing.T) {
	p := newPKI(t)
	dir := t.TempDir()
	srv, err := p.ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, ca, empty := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), filepath.Join(dir, "ca.pem"), filepath.Join(dir, "empty.pem")
	writeFile(t, cert, srv.CertPEM)
	writeFile(t, key, srv.KeyPEM)
	writeFile(t, ca, p.ca.CertPEM)
	writeFile(t, empty, srv.KeyPEM) // PEM, but no certificate
	tests := []struct {
		name  string
		files authn.TLSFiles
		want  error
	}{
		{"no cert file", authn.TLSFiles{KeyFile: key, ClientCAFile: ca}, authn.ErrInvalidConfig},
		{"no key file", authn.TLSFiles{CertFile: cert, ClientCAFile: ca}, authn.ErrInvalidConfig},
		{"no client CA file", authn.TLSFiles{CertFile: cert, KeyFile: key}, authn.ErrInvalidConfig},
		{"client CA file without certificates", authn.TLSFiles{CertFile: cert, KeyFile: key, ClientCAFile: empty}, authn.ErrInvalidConfig},
		{"missing key file", authn.TLSFiles{CertFile: cert, KeyFile: filepath.Join(dir, "nope"), ClientCAFile: ca}, nil},
		{"key file holds a certificate", authn.TLSFiles{CertFile: cert, KeyFile: cert, ClientCAFile: ca}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := authn.NewServerTLS(tc.files, nil)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("NewServerTLS(files) err = %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), pemBody(t, srv.KeyPEM)[:40]) {
				t.Fatalf("NewServerTLS(files) err = %q contains key bytes", err)
			}
		})
	}
}

func pemBody(t *testing.T, b []byte) string {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	return base64.StdEncoding.EncodeToString(blk.Bytes)
}
