// Package audit is tresor's tamper-evident audit log: one event per call,
// allowed or denied, in a hash chain per writer, with checkpoints that a
// root key signs, written to the key store and to JSON-lines files.
//
// Reach for [New] to start a [Log] over one or more sinks ([OpenFileSink],
// [NewStoreSink]) and call [Log.Record] once per call: it returns when the
// event is durable in every sink (events of concurrent calls share one
// write: group commit), and fails when it is not, so that the call can fail
// closed. [Verify] checks a log read back through a [Source]
// ([NewFileSource], [NewStoreSource]) and names the first event that was
// modified, removed, inserted or reordered, and any forged checkpoint;
// [Query] filters one.
//
// An event never holds plaintext, key material or tokens: the caller fills
// in identifiers, counts and outcomes only, and Record replaces the token
// subject and the source address with keyed pseudonyms ([Pseudonymizer]).
//
// # Format
//
// Every event is one line of JSON in a fixed canonical form (fields in a
// fixed order, no spaces, empty fields left out), the same bytes in a file
// and in the store:
//
//	{"chain":"replica-1","seq":7,"prev":"<hex>","time":"2031-05-06T07:08:09.123456Z",...,"hash":"<hex>"}
//
// Its hash is SHA-256(prev || the line without its ",\"hash\":..." member),
// so that it covers every byte of the line, and prev is the hash of the
// chain's previous event (32 zero bytes for seq 1). Every [Options.CheckpointEvery]
// events or [Options.CheckpointInterval], and on Close, the writer adds a
// [Checkpoint]: the chain's head (seq and hash) with a tag made by wrapping
// a digest of it with the active root key. Anyone who can rewrite the log
// but not use the root key can recompute hashes after the last checkpoint,
// or cut the log there; everything up to the last checkpoint is covered.
//
// # Anchors and final checkpoints
//
// A chain also vouches for the chains written before it. The first event
// of a new chain (seq 1) ends with an "anchors" member: for every other
// chain its sink held when the [Log] started, that chain's latest
// checkpoint ([Anchor]: chain, seq, hash), so that the anchors are hashed
// with the event and covered by the chain's checkpoints (the writer
// checkpoints that first event at once). [Verify] checks that every
// anchored chain still holds a checkpoint at exactly that seq with that
// hash: deleting a whole older chain, or cutting it below a checkpoint a
// later chain anchored, fails verification.
//
// [Log.Close] marks its last checkpoint final ([Checkpoint.Final], part of
// the digest its tag wraps). When nothing was recorded since the last
// checkpoint, Close first records a close event ([ActionClose]), since a
// chain holds one checkpoint per seq. [Verify] reports which chains end
// with a final checkpoint ([ChainReport.Closed]) and which others do not
// ([Report.Unclosed]): a writer that crashed, one still writing, or a chain
// cut after a checkpoint.
//
// What a log without an outside witness cannot show: the newest chains
// deleted whole (no later chain anchors them), and a chain's tail after
// the checkpoint a later chain anchored, or after its last checkpoint,
// cut off (the newest chain's then looks like a crash or a running
// writer, and is counted in [Report.Uncovered] when it had events after
// its last checkpoint). Copy checkpoints somewhere the log's writers
// cannot reach to close that gap.
package audit

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tresorkms/tresor/internal/jsontext"
	"strconv"
	"time"
	"unicode/utf8"
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrUnavailable means an event could not be written durably to every
	// sink. The call it audits must fail (unless the log fails open).
	ErrUnavailable = errors.New("audit: log unavailable")
	// ErrClosed means the log was closed before the event was written.
	ErrClosed = errors.New("audit: log closed")
	// ErrTampered means Verify found a modified, removed, inserted or
	// reordered event, or a forged checkpoint. The error is a *VerifyError
	// that says where.
	ErrTampered = errors.New("audit: log tampered with")
	// ErrUnknownRootKey means a checkpoint names a root key that Verify was
	// not given, so it could not be checked.
	ErrUnknownRootKey = errors.New("audit: checkpoint root key unknown")
	// ErrInvalidOptions means New got options it cannot use.
	ErrInvalidOptions = errors.New("audit: invalid options")
)

// Digest is a SHA-256 hash of the chain. It is written as lowercase hex.
type Digest [32]byte

// MarshalText implements encoding.TextMarshaler.
func (d Digest) MarshalText() ([]byte, error) { return hex.AppendEncode(nil, d[:]), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) != 2*len(d) {
		return fmt.Errorf("audit: digest of %d hex digits, want %d", len(b), 2*len(d))
	}
	_, err := hex.Decode(d[:], b)
	return err
}

// String returns the digest in hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// Authentication strengths (Event.Auth).
const (
	AuthMTLS       = "mtls"        // the client certificate only
	AuthToken      = "token"       // mTLS and a bearer token
	AuthBoundToken = "bound_token" // mTLS and a token bound to the certificate
)

// ActionClose is the Action of the event [Log.Close] records when the chain
// head already has a checkpoint, to carry the final one.
const ActionClose = "audit.Close"

// ActionProbe is the Action of the event the log records, while its last
// write failed and no call writes, to find out whether its sinks are back.
const ActionProbe = "audit.Probe"

// Policy decisions (Event.Decision).
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
)

// FieldCounts counts the fields a field-protection call handled.
type FieldCounts struct {
	Protected int `json:"protected,omitempty"`
	Revealed  int `json:"revealed,omitempty"`
	Masked    int `json:"masked,omitempty"`
	Withheld  int `json:"withheld,omitempty"`
	Redacted  int `json:"redacted,omitempty"`
	// Findings counts what payload inspection found (never the values).
	Findings int `json:"findings,omitempty"`
}

// Event is one audited call. The caller of [Log.Record] fills in what the
// call did; the log sets Chain, Seq, Prev and Hash, and Time when it is
// zero. No field may hold plaintext, key material or a token.
type Event struct {
	Chain string    `json:"chain"` // the writer; set by the log
	Seq   uint64    `json:"seq"`   // from 1 within Chain; set by the log
	Prev  Digest    `json:"prev"`  // Hash of the chain's previous event; set by the log
	Time  time.Time `json:"time"`  // when the call started, UTC, to the microsecond

	RequestID string `json:"request_id,omitempty"`
	Method    string `json:"method,omitempty"` // full gRPC method name
	Action    string `json:"action,omitempty"` // the policy action, e.g. "Encrypt"
	Workload  string `json:"workload,omitempty"`
	// Subject is the token subject. Record replaces it with its pseudonym.
	Subject string `json:"subject,omitempty"`
	Auth    string `json:"auth,omitempty"` // AuthMTLS, AuthToken or AuthBoundToken
	// Source is the peer address. Record replaces it with the pseudonym of
	// its host part.
	Source      string   `json:"source,omitempty"`
	Resources   []string `json:"resources,omitempty"`    // key and schema names
	KeyVersions []string `json:"key_versions,omitempty"` // "name:3"
	Decision    string   `json:"decision,omitempty"`     // DecisionAllow, DecisionDeny or ""
	Policies    []string `json:"policies,omitempty"`     // ids of the policies that decided
	Code        string   `json:"code,omitempty"`         // gRPC code name, e.g. "OK"
	// LatencyMicros is how long the call took, in microseconds.
	LatencyMicros int64       `json:"latency_us,omitempty"`
	Fields        FieldCounts `json:"fields,omitzero"`
	Risk          int         `json:"risk,omitempty"`     // anomaly score
	Response      string      `json:"response,omitempty"` // anomaly response
	// Anchors are the latest checkpoints of the other chains of the sink
	// when this chain started; only in its first event. Set by the log.
	Anchors []Anchor `json:"anchors,omitempty"`

	Hash Digest `json:"hash"` // SHA-256(Prev || canonical line); set by the log
}

// Anchor names a checkpoint of another chain: that chain had the head Hash
// at Seq, and held a checkpoint of it, when the anchoring chain started.
type Anchor struct {
	Chain string `json:"chain"`
	Seq   uint64 `json:"seq"`
	Hash  Digest `json:"hash"`
}

// timeLayout is the canonical time format: UTC, microseconds, fixed width.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// hashMember is what follows the canonical body in a line: the hash member
// and the closing brace. A line ends with hashMember, 64 hex digits, `"}`.
const hashMember = `,"hash":"`

// hashSuffixLen is the length of the hash member and closing brace.
const hashSuffixLen = len(hashMember) + 64 + 2

// appendBody appends the canonical members of e that the caller sets, from
// "time" on, without braces: the part of a line that does not depend on the
// chain. Strings must be valid UTF-8 (see sanitize).
func appendBody(b []byte, e *Event) []byte {
	b = append(b, `"time":"`...)
	b = e.Time.UTC().AppendFormat(b, timeLayout)
	b = append(b, '"')
	b = appendStringMember(b, "request_id", e.RequestID)
	b = appendStringMember(b, "method", e.Method)
	b = appendStringMember(b, "action", e.Action)
	b = appendStringMember(b, "workload", e.Workload)
	b = appendStringMember(b, "subject", e.Subject)
	b = appendStringMember(b, "auth", e.Auth)
	b = appendStringMember(b, "source", e.Source)
	b = appendListMember(b, "resources", e.Resources)
	b = appendListMember(b, "key_versions", e.KeyVersions)
	b = appendStringMember(b, "decision", e.Decision)
	b = appendListMember(b, "policies", e.Policies)
	b = appendStringMember(b, "code", e.Code)
	b = appendIntMember(b, "latency_us", e.LatencyMicros)
	if e.Fields != (FieldCounts{}) {
		b = append(b, `,"fields":{`...)
		n := len(b)
		for _, f := range []struct {
			name string
			v    int
		}{{"protected", e.Fields.Protected}, {"revealed", e.Fields.Revealed}, {"masked", e.Fields.Masked},
			{"withheld", e.Fields.Withheld}, {"redacted", e.Fields.Redacted}, {"findings", e.Fields.Findings}} {
			if f.v != 0 {
				if len(b) > n {
					b = append(b, ',')
				}
				b = appendString(b, f.name)
				b = append(b, ':')
				b = strconv.AppendInt(b, int64(f.v), 10)
			}
		}
		b = append(b, '}')
	}
	b = appendIntMember(b, "risk", int64(e.Risk))
	b = appendStringMember(b, "response", e.Response)
	return appendAnchors(b, e.Anchors)
}

// anchorsMember opens the anchors member, the last of a body.
const anchorsMember = `,"anchors":[`

// appendAnchors appends the anchors member (none when anchors is empty).
func appendAnchors(b []byte, anchors []Anchor) []byte {
	if len(anchors) == 0 {
		return b
	}
	b = append(b, anchorsMember...)
	for i := range anchors {
		a := &anchors[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"chain":`...)
		b = appendString(b, a.Chain)
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, a.Seq, 10)
		b = append(b, `,"hash":"`...)
		b = hex.AppendEncode(b, a.Hash[:])
		b = append(b, '"', '}')
	}
	return append(b, ']')
}

// parseAnchors returns the anchors of an event's body (the canonical
// members from "time" on), nil when it has none. The anchors member must be
// the body's last, in canonical form. A string in a body holds no
// unescaped quote, so the member name cannot appear inside a value.
func parseAnchors(body []byte) ([]Anchor, error) {
	i := bytes.LastIndex(body, []byte(anchorsMember))
	if i < 0 {
		return nil, nil
	}
	var anchors []Anchor
	if err := json.Unmarshal(body[i+len(anchorsMember)-1:], &anchors); err != nil {
		return nil, fmt.Errorf("malformed anchors: %w", err)
	}
	if len(anchors) == 0 || !bytes.Equal(appendAnchors(nil, anchors), body[i:]) {
		return nil, errors.New("anchors are not in canonical form")
	}
	return anchors, nil
}

// appendHead appends the chain members that open a line.
func appendHead(b []byte, chain string, seq uint64, prev *Digest) []byte {
	b = append(b, `{"chain":`...)
	b = appendString(b, chain)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"prev":"`...)
	b = hex.AppendEncode(b, prev[:])
	return append(b, `",`...)
}

func appendStringMember(b []byte, name, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendString(b, v)
}

func appendIntMember(b []byte, name string, v int64) []byte {
	if v == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}

func appendListMember(b []byte, name string, vs []string) []byte {
	if len(vs) == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':', '[')
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, v)
	}
	return append(b, ']')
}

// appendString appends s as a JSON string (package jsontext: the escaping
// canonical lines are hashed with).
func appendString(b []byte, s string) []byte { return jsontext.AppendString(b, s) }

// sanitize makes every string of e valid UTF-8 (invalid bytes become
// U+FFFD), so that the canonical line decodes to the same event, and drops
// empty lists.
func sanitize(e *Event) {
	for _, p := range []*string{&e.RequestID, &e.Method, &e.Action, &e.Workload, &e.Subject,
		&e.Auth, &e.Source, &e.Decision, &e.Code, &e.Response} {
		*p = validUTF8(*p)
	}
	for _, l := range []*[]string{&e.Resources, &e.KeyVersions, &e.Policies} {
		if len(*l) == 0 {
			*l = nil
			continue
		}
		c := make([]string, len(*l))
		for i, s := range *l {
			c[i] = validUTF8(s)
		}
		*l = c
	}
}

func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b []byte
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		b = utf8.AppendRune(b, r) // RuneError for invalid bytes
		i += n
	}
	return string(b)
}
