package audit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
)

// MinPseudonymKeySize is the shortest key NewPseudonymizer accepts, in bytes.
const MinPseudonymKeySize = 32

// pseudonymPrefix starts every pseudonym.
const pseudonymPrefix = "h:"

// Kinds of identifiers a Pseudonymizer replaces. The kind is bound into
// the pseudonym, so that equal values of different kinds do not match.
const (
	KindSubject = "subject"
	KindSource  = "source"
)

// Pseudonymizer replaces identifiers that could be personal data (a token
// subject, a client address) with keyed pseudonyms: "h:" and 22 characters
// of base64url of HMAC-SHA256(key, kind || 0 || value). Equal values give
// equal pseudonyms, so a query can look one up; without the key, a
// pseudonym cannot be tied to a value, even by trying likely values.
type Pseudonymizer struct {
	key   []byte
	cache *pseudonymCache
}

// pseudonymCache remembers recent pseudonyms: a busy service sees the same
// few subjects and addresses on every call, and an HMAC per event and
// identifier is a measurable share of an audited call. It holds at most
// maxCachedPseudonyms entries and starts over when full.
type pseudonymCache struct {
	mu sync.RWMutex
	m  map[string]string
}

const maxCachedPseudonyms = 4096

// NewPseudonymizer returns a Pseudonymizer with a copy of key, which must
// be at least MinPseudonymKeySize bytes (random, from configuration, kept
// secret and stable: a new key makes new pseudonyms).
func NewPseudonymizer(key []byte) (*Pseudonymizer, error) {
	if len(key) < MinPseudonymKeySize {
		return nil, fmt.Errorf("%w: pseudonym key of %d bytes, want at least %d", ErrInvalidOptions, len(key), MinPseudonymKeySize)
	}
	return &Pseudonymizer{key: append([]byte(nil), key...), cache: &pseudonymCache{m: map[string]string{}}}, nil
}

// Pseudonym returns the pseudonym of value as an identifier of kind, or ""
// for "".
func (p *Pseudonymizer) Pseudonym(kind, value string) string {
	if value == "" {
		return ""
	}
	var arr [128]byte
	ck := append(append(append(arr[:0], kind...), 0), value...)
	p.cache.mu.RLock()
	got, ok := p.cache.m[string(ck)]
	p.cache.mu.RUnlock()
	if ok {
		return got
	}
	got = p.compute(kind, value)
	p.cache.mu.Lock()
	if len(p.cache.m) >= maxCachedPseudonyms {
		clear(p.cache.m)
	}
	p.cache.m[string(ck)] = got
	p.cache.mu.Unlock()
	return got
}

// compute is the HMAC behind Pseudonym.
func (p *Pseudonymizer) compute(kind, value string) string {
	m := hmac.New(sha256.New, p.key)
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(value))
	var buf [sha256.Size]byte
	sum := m.Sum(buf[:0])
	return pseudonymPrefix + base64.RawURLEncoding.EncodeToString(sum)[:22]
}

// Subject returns the pseudonym of a token subject.
func (p *Pseudonymizer) Subject(subject string) string { return p.Pseudonym(KindSubject, subject) }

// Source returns the pseudonym of a client address: of its host part when
// it is host:port, so that one client's connections share one pseudonym.
func (p *Pseudonymizer) Source(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	return p.Pseudonym(KindSource, strings.ToLower(addr))
}

// String keeps the key out of logs and error messages.
func (p Pseudonymizer) String() string { return "audit.Pseudonymizer([REDACTED])" }

// GoString keeps the key out of %#v.
func (p Pseudonymizer) GoString() string { return p.String() }

// LogValue keeps the key out of slog records.
func (p Pseudonymizer) LogValue() slog.Value { return slog.StringValue(p.String()) }
