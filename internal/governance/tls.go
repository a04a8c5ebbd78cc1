package governance

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/tresorkms/tresor/internal/authn"
	"os"
	"time"
)

// DefaultTLSWarnWithin is how soon before it expires a certificate is
// reported as a warning, unless Options.TLSWarnWithin says otherwise.
const DefaultTLSWarnWithin = 30 * 24 * time.Hour

// ErrNoCertificate means a file that should hold PEM certificates holds
// none.
var ErrNoCertificate = errors.New("governance: no PEM certificate in file")

// TLSFiles are the TLS files a deployment reads. Empty names are not checked.
type TLSFiles struct {
	// CertFile is the server's certificate chain and KeyFile its private
	// key: the key must match the first certificate.
	CertFile, KeyFile string
	// ClientCAFile is the CA bundle client certificates are verified against.
	ClientCAFile string
	// TokenCAFile is the CA bundle of OIDC discovery and JWKS fetches.
	TokenCAFile string
}

// CheckTLS reads each file and checks every certificate in it against now:
// an unreadable file, one with no certificate, a key that does not match
// the server certificate, or a certificate that has expired or is not yet
// valid is an error; one that expires within warnWithin is a warning. A
// file that passes gets an informational finding with its earliest expiry.
// The private key is read only to match it to the certificate; nothing of
// it is reported.
func CheckTLS(files TLSFiles, now time.Time, warnWithin time.Duration) []Finding {
	var out []Finding
	for _, f := range []struct{ path, what string }{
		{files.CertFile, "server certificate"},
		{files.ClientCAFile, "client CA bundle"},
		{files.TokenCAFile, "token CA bundle"},
	} {
		if f.path == "" {
			continue
		}
		out = append(out, checkCertFile(f.path, f.what, now, warnWithin)...)
	}
	if files.CertFile != "" && files.KeyFile != "" {
		if _, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile); err != nil {
			// The tls package's errors name the problem, never key bytes.
			out = append(out, Finding{Check: TLSCheck, Severity: SeverityError, Subject: files.KeyFile,
				Message: fmt.Sprintf("server key does not load with %s: %v", files.CertFile, err), Err: err})
		}
	}
	return out
}

func checkCertFile(path, what string, now time.Time, warnWithin time.Duration) []Finding {
	finding := func(s Severity, err error, format string, args ...any) Finding {
		return Finding{Check: TLSCheck, Severity: s, Subject: path, Message: fmt.Sprintf(format, args...), Err: err}
	}
	certs, err := readCertificates(path)
	if err != nil {
		return []Finding{finding(SeverityError, err, "%s: %v", what, err)}
	}
	var out []Finding
	earliest := certs[0]
	for _, c := range certs {
		name := certName(c)
		switch {
		case now.After(c.NotAfter):
			out = append(out, finding(SeverityError, nil, "%s: certificate %s expired on %s (%s ago)",
				what, name, day(c.NotAfter), human(now.Sub(c.NotAfter))))
		case now.Before(c.NotBefore):
			out = append(out, finding(SeverityError, nil, "%s: certificate %s is not valid until %s (in %s)",
				what, name, day(c.NotBefore), human(c.NotBefore.Sub(now))))
		case c.NotAfter.Sub(now) <= warnWithin:
			out = append(out, finding(SeverityWarning, nil, "%s: certificate %s expires on %s (in %s); renew it",
				what, name, day(c.NotAfter), human(c.NotAfter.Sub(now))))
		}
		if c.NotAfter.Before(earliest.NotAfter) {
			earliest = c
		}
	}
	if len(out) == 0 {
		out = append(out, finding(SeverityInfo, nil, "%s: %d certificate(s) valid; the first to expire, %s, expires on %s",
			what, len(certs), certName(earliest), day(earliest.NotAfter)))
	}
	return out
}

// readCertificates parses every CERTIFICATE block of a PEM file.
func readCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := authn.ParseCertificates(data)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, ErrNoCertificate
	}
	return certs, nil
}

func certName(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("serial %x", c.SerialNumber)
}

func day(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 MST") }

// human writes a duration in days when it is two days or more.
func human(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	if d >= 48*time.Hour {
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	return d.Round(time.Minute).String()
}
