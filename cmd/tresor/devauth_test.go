package main

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/devpki"
)

// TestTokensFromTheDevIssuerServeErrorsLogged: the dev issuer's server logs
// why it stopped serving, but not when it was closed.
func TestTokensFromTheDevIssuerServeErrorsLogged(t *testing.T) {
	ca, err := devpki.NewCA("issuer test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		prepare func(*http.Server, net.Listener)
		wantLog string // "" for nothing logged
	}{
		{"listener gone", func(_ *http.Server, lis net.Listener) { lis.Close() }, "dev: token issuer stopped serving"},
		{"server closed", func(srv *http.Server, _ net.Listener) { srv.Close() }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer lis.Close()
			srv := &http.Server{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, ReadHeaderTimeout: time.Second}
			var logs bytes.Buffer
			tt.prepare(srv, lis)
			serveTLSLogged(srv, lis, slog.New(slog.NewTextHandler(&logs, nil)))
			switch got := logs.String(); {
			case tt.wantLog == "" && got != "":
				t.Errorf("serveTLSLogged() logged %q, want nothing", got)
			case tt.wantLog != "" && (!strings.Contains(got, tt.wantLog) || !strings.Contains(got, "level=ERROR")):
				t.Errorf("serveTLSLogged() logged %q, want an error with %q", got, tt.wantLog)
			}
		})
	}
}
