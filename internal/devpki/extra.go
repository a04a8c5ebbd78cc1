package devpki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/url"
	"time"
)

// IssueClientWindow issues a client certificate like [CA.IssueClient] but
// valid only from notBefore to notAfter, so tests can make certificates
// that are expired or not yet valid.
func (ca *CA) IssueClientWindow(cn, spiffeID string, notBefore, notAfter time.Time) (Pair, error) {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if spiffeID != "" {
		u, err := url.Parse(spiffeID)
		if err != nil {
			return Pair{}, fmt.Errorf("devpki: SPIFFE ID %q: %w", spiffeID, err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	return ca.issue(tmpl)
}
