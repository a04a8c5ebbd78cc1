package authn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// TLSFiles names the PEM files of the server's mTLS material.
type TLSFiles struct {
	// CertFile holds the server certificate chain, leaf first.
	CertFile string
	// KeyFile holds the server certificate's private key.
	KeyFile string
	// ClientCAFile holds the CA certificates client certificates must
	// chain to (at least one).
	ClientCAFile string
}

// ServerTLS holds the server's mTLS material loaded from [TLSFiles] and
// reloads it on demand ([ServerTLS.Reload]) or when the files change
// ([ServerTLS.Run]). Reloaded material applies to new handshakes; open
// connections keep theirs. It is safe for concurrent use.
type ServerTLS struct {
	files  TLSFiles
	logger *slog.Logger

	cur      atomic.Pointer[tlsMaterial]
	reloadMu sync.Mutex
	attempt  [3]fileStamp // the files as the last Reload saw them; guarded by reloadMu
}

// tlsMaterial is one immutable load of the files.
type tlsMaterial struct {
	cert *tls.Certificate
	cas  *x509.CertPool
}

// NewServerTLS loads the files (all required; ClientCAFile must hold at
// least one PEM certificate) and returns a reloader. A nil logger discards.
func NewServerTLS(files TLSFiles, logger *slog.Logger) (*ServerTLS, error) {
	if files.CertFile == "" || files.KeyFile == "" || files.ClientCAFile == "" {
		return nil, fmt.Errorf("%w: TLS CertFile, KeyFile and ClientCAFile are all required", ErrInvalidConfig)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &ServerTLS{files: files, logger: logger}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Config returns a new server tls.Config: TLS 1.2 or later, ALPN h2 and
// http/1.1, client certificates required and verified against the client
// CAs. Its GetConfigForClient hands each handshake the current certificate
// and CA pool, so a reload applies without a restart. Each call returns a
// fresh value, since servers (net/http) modify theirs.
func (s *ServerTLS) Config() *tls.Config {
	cfg := s.configFor(s.cur.Load())
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return s.configFor(s.cur.Load()), nil
	}
	return cfg
}

func (s *ServerTLS) configFor(m *tlsMaterial) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    m.cas,
		Certificates: []tls.Certificate{*m.cert},
	}
}

// Reload re-reads the files. On any error it keeps the material in use and
// returns the error (which never holds key bytes).
func (s *ServerTLS) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.attempt = s.stamps()
	m, err := loadTLSMaterial(s.files)
	if err != nil {
		return err
	}
	s.cur.Store(m)
	return nil
}

func loadTLSMaterial(f TLSFiles) (*tlsMaterial, error) {
	certPEM, err := os.ReadFile(f.CertFile)
	if err != nil {
		return nil, fmt.Errorf("authn: TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("authn: TLS key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	clear(keyPEM)
	if err != nil {
		// crypto/tls errors describe the problem, not the key bytes.
		return nil, fmt.Errorf("authn: TLS certificate %s and key %s: %w", f.CertFile, f.KeyFile, err)
	}
	caPEM, err := os.ReadFile(f.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("authn: client CA file: %w", err)
	}
	cas, err := ParseCertificates(caPEM)
	if err != nil {
		return nil, fmt.Errorf("authn: client CA file %s: %w", f.ClientCAFile, err)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("%w: client CA file %s holds no PEM certificate", ErrInvalidConfig, f.ClientCAFile)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	return &tlsMaterial{cert: &cert, cas: pool}, nil
}

// ParseCertificates parses every CERTIFICATE block of PEM data (other
// blocks are skipped); an error names the certificate that does not parse,
// by its position.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return certs, nil
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
}

// fileStamp identifies a version of a file.
type fileStamp struct {
	mod  int64 // UnixNano
	size int64
	ok   bool
}

func (s *ServerTLS) stamps() [3]fileStamp {
	var out [3]fileStamp
	for i, p := range []string{s.files.CertFile, s.files.KeyFile, s.files.ClientCAFile} {
		if fi, err := os.Stat(p); err == nil {
			out[i] = fileStamp{mod: fi.ModTime().UnixNano(), size: fi.Size(), ok: true}
		}
	}
	return out
}

// Run polls the files' modification times and sizes every interval until
// ctx ends, and reloads when they change. A failed reload is logged (never
// with key bytes) and the old material stays; it is retried when the files
// change again.
func (s *ServerTLS) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.reloadMu.Lock()
		same := s.attempt == s.stamps()
		s.reloadMu.Unlock()
		if same {
			continue
		}
		if err := s.Reload(); err != nil {
			s.logger.Warn("authn: TLS reload failed; keeping the current certificate and client CAs", "err", err)
			continue
		}
		s.logger.Info("authn: TLS certificate and client CAs reloaded")
	}
}
