package authn

import (
	"bytes"
	"crypto/x509"
	"sync"
)

// certCacheSize bounds a certCache; a full cache is emptied.
const certCacheSize = 1024

// certCache remembers the workload ID and thumbprint of the client
// certificates seen, so that the calls of one connection (which all present
// the same *x509.Certificate) hash and format them once.
//
// It is keyed by the certificate's pointer. The map holds the certificate,
// so the pointer cannot be reused for another certificate while the entry
// exists; a hit further requires the certificate's DER to be the one the
// entry was computed from (the same bytes, usually the same array), so a
// certificate whose Raw was replaced is recomputed. Certificates are
// otherwise treated as immutable, as crypto/tls treats a connection's peer
// certificates. Certificates without an identity are not cached.
type certCache struct {
	mu sync.RWMutex
	m  map[*x509.Certificate]certIdentity
}

type certIdentity struct {
	raw                  []byte // cert.Raw when the entry was made
	workload, thumbprint string
}

// identity returns WorkloadID(cert) and Thumbprint(cert) for a non-nil cert.
func (c *certCache) identity(cert *x509.Certificate) (workload, thumbprint string, err error) {
	c.mu.RLock()
	id, ok := c.m[cert]
	c.mu.RUnlock()
	if ok && bytes.Equal(id.raw, cert.Raw) {
		return id.workload, id.thumbprint, nil
	}
	if workload, err = WorkloadID(cert); err != nil {
		return "", "", err
	}
	id = certIdentity{raw: cert.Raw, workload: workload, thumbprint: Thumbprint(cert)}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= certCacheSize {
		c.m = make(map[*x509.Certificate]certIdentity)
	}
	c.m[cert] = id
	c.mu.Unlock()
	return id.workload, id.thumbprint, nil
}
