package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/tresorkms/tresor/envelope"
)

// MaxChainLen is the longest chain name, in bytes.
const MaxChainLen = 128

// checkChain accepts chain names of printable ASCII without quotes or
// backslashes, so that a chain is written as is and a line's chain can be
// read without decoding JSON.
func checkChain(chain string) error {
	if chain == "" || len(chain) > MaxChainLen {
		return fmt.Errorf("chain name of %d bytes, want 1 to %d", len(chain), MaxChainLen)
	}
	for i := 0; i < len(chain); i++ {
		if c := chain[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			return fmt.Errorf("chain name %q: byte %d is not printable ASCII other than a quote or backslash", chain, i)
		}
	}
	return nil
}

// seal appends to buf the line of the event whose canonical body is body,
// at seq in chain after prev, and returns the line and its hash.
func seal(buf []byte, chain string, seq uint64, prev Digest, body []byte) ([]byte, Digest) {
	start := len(buf)
	buf = append(buf, prev[:]...)
	buf = appendHead(buf, chain, seq, &prev)
	buf = append(buf, body...)
	buf = append(buf, '}')
	hash := Digest(sha256.Sum256(buf[start:]))
	// Drop prev and the closing brace, and add the hash member.
	copy(buf[start:], buf[start+len(prev):len(buf)-1])
	buf = buf[:len(buf)-len(prev)-1]
	buf = append(buf, hashMember...)
	buf = hex.AppendEncode(buf, hash[:])
	buf = append(buf, '"', '}')
	return buf, hash
}

// decodeHex decodes exactly len(dst)*2 lowercase hex digits, so that every
// digest has one spelling.
func decodeHex(dst, src []byte) bool {
	if len(src) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := unhex(src[2*i])
		lo, ok2 := unhex(src[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// lineHead is what a line says of its place in a chain.
type lineHead struct {
	chain []byte // aliases the line
	seq   uint64
	prev  Digest
	hash  Digest
	body  int // the offset of the body ("time" on) in the line
}

var errMalformed = errors.New("malformed event line")

// parseHead reads the chain members and the hash of an event line, strictly
// in the canonical form, without decoding the rest.
func parseHead(line []byte) (lineHead, error) {
	var h lineHead
	rest, ok := bytes.CutPrefix(line, []byte(`{"chain":"`))
	if !ok {
		return h, errMalformed
	}
	i := bytes.IndexByte(rest, '"')
	if i <= 0 {
		return h, errMalformed
	}
	h.chain, rest = rest[:i], rest[i+1:]
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"seq":`)); !ok {
		return h, errMalformed
	}
	i = bytes.IndexByte(rest, ',')
	if i <= 0 || (rest[0] == '0' && i > 1) {
		return h, errMalformed
	}
	seq, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil || seq == 0 {
		return h, errMalformed
	}
	h.seq, rest = seq, rest[i:]
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"prev":"`)); !ok || len(rest) < 66 || !decodeHex(h.prev[:], rest[:64]) || rest[64] != '"' || rest[65] != ',' {
		return h, errMalformed
	}
	n := len(line)
	if n < hashSuffixLen+len(`{"chain":"","seq":1,"prev":"","time":""}`)+64 ||
		!bytes.Equal(line[n-hashSuffixLen:n-66], []byte(hashMember)) || line[n-2] != '"' || line[n-1] != '}' ||
		!decodeHex(h.hash[:], line[n-66:n-2]) {
		return h, errMalformed
	}
	if h.body = n - len(rest) + 66; h.body > n-hashSuffixLen {
		return h, errMalformed
	}
	return h, nil
}

// lineHash computes the hash of an event line: SHA-256(prev || the line
// without its hash member).
func lineHash(prev *Digest, line []byte, scratch []byte) (Digest, []byte) {
	scratch = append(scratch[:0], prev[:]...)
	scratch = append(scratch, line[:len(line)-hashSuffixLen]...)
	scratch = append(scratch, '}')
	return Digest(sha256.Sum256(scratch)), scratch
}

// RootKeys holds the root keys that sign and check checkpoints.
// *envelope.RootKeys satisfies it.
type RootKeys interface {
	// Active returns the root key that signs new checkpoints.
	Active() envelope.KEK
	// Get returns the root key with the given id.
	Get(id string) (envelope.KEK, bool)
}

// RootKeyLookup finds the root key that signed a checkpoint.
// *envelope.RootKeys satisfies it.
type RootKeyLookup interface {
	Get(id string) (envelope.KEK, bool)
}

// checkpointAAD is the associated data of every checkpoint tag.
var checkpointAAD = []byte("tresor-audit-checkpoint-v1")

// Checkpoint states that chain Chain had the head Hash at Seq. Tag is a
// digest of the other fields wrapped by the root key RootKeyID: only a
// holder of that key can make one.
type Checkpoint struct {
	Chain string
	Seq   uint64
	Hash  Digest
	Time  time.Time // UTC, to the microsecond
	// Final marks the checkpoint Log.Close wrote: the chain's writer
	// stopped cleanly here. It is part of the digest the tag wraps. The
	// store keeps no column for it: Verify reads it from the tag then.
	Final     bool
	RootKeyID string
	Tag       []byte

	// finalUnknown is set by sources that do not keep Final: verifyTag
	// sets Final from the tag.
	finalUnknown bool
}

// digest returns the value a checkpoint's tag wraps. The byte after the
// fixed associated data is 1 for a final checkpoint, 0 otherwise (as in
// checkpoints written before there were final ones).
func (c *Checkpoint) digest() []byte {
	h := sha256.New()
	h.Write(checkpointAAD)
	if c.Final {
		h.Write([]byte{1})
	} else {
		h.Write([]byte{0})
	}
	h.Write([]byte(c.Chain))
	h.Write([]byte{0})
	var n [16]byte
	binary.BigEndian.PutUint64(n[:8], c.Seq)
	binary.BigEndian.PutUint64(n[8:], uint64(c.Time.UnixMicro()))
	h.Write(n[:])
	h.Write(c.Hash[:])
	h.Write([]byte(c.RootKeyID))
	return h.Sum(nil)
}

// signCheckpoint makes the checkpoint of chain at (seq, hash) with the
// active root key.
func signCheckpoint(ctx context.Context, keys RootKeys, chain string, seq uint64, hash Digest, now time.Time) (*Checkpoint, error) {
	return signCheckpointFinal(ctx, keys, chain, seq, hash, now, false)
}

// signCheckpointFinal is signCheckpoint with Final set to final.
func signCheckpointFinal(ctx context.Context, keys RootKeys, chain string, seq uint64, hash Digest, now time.Time, final bool) (*Checkpoint, error) {
	kek := keys.Active()
	if kek == nil {
		return nil, errors.New("audit: checkpoint: no active root key")
	}
	c := &Checkpoint{Chain: chain, Seq: seq, Hash: hash, Time: now.UTC().Truncate(time.Microsecond), Final: final, RootKeyID: kek.ID()}
	tag, err := kek.Wrap(ctx, c.digest(), checkpointAAD)
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint of chain %q at seq %d: sign with root key %q: %w", chain, seq, c.RootKeyID, err)
	}
	c.Tag = tag
	return c, nil
}

// verifyTag checks the checkpoint's tag with the root key it names. It
// returns ErrUnknownRootKey when keys lacks that key, and a plain error
// when the tag does not verify. When the source does not keep Final, it
// sets Final to what the tag says.
func (c *Checkpoint) verifyTag(ctx context.Context, keys RootKeyLookup) error {
	kek, ok := keys.Get(c.RootKeyID)
	if !ok || kek == nil {
		return fmt.Errorf("%w: %q", ErrUnknownRootKey, c.RootKeyID)
	}
	got, err := kek.Unwrap(ctx, c.Tag, checkpointAAD)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("tag does not verify with root key %q", c.RootKeyID)
	}
	if subtle.ConstantTimeCompare(got, c.digest()) == 1 {
		return nil
	}
	if c.finalUnknown && !c.Final {
		f := *c
		f.Final = true
		if subtle.ConstantTimeCompare(got, f.digest()) == 1 {
			c.Final = true
			return nil
		}
	}
	return fmt.Errorf("tag does not match the checkpoint (root key %q)", c.RootKeyID)
}

// checkpointJSON is a checkpoint's line in a file.
type checkpointJSON struct {
	Type      string `json:"type"`
	Chain     string `json:"chain"`
	Seq       uint64 `json:"seq"`
	Hash      Digest `json:"hash"`
	Time      string `json:"time"`
	Final     bool   `json:"final,omitempty"`
	RootKeyID string `json:"root_key_id"`
	Tag       string `json:"tag"`
}

// checkpointPrefix starts every checkpoint line, and no event line.
const checkpointPrefix = `{"type":"checkpoint",`

// appendCheckpoint appends the canonical line of c, without a newline.
func appendCheckpoint(b []byte, c *Checkpoint) []byte {
	b = append(b, checkpointPrefix...)
	b = append(b, `"chain":`...)
	b = appendString(b, c.Chain)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, c.Seq, 10)
	b = append(b, `,"hash":"`...)
	b = hex.AppendEncode(b, c.Hash[:])
	b = append(b, `","time":"`...)
	b = c.Time.UTC().AppendFormat(b, timeLayout)
	b = append(b, '"')
	if c.Final {
		b = append(b, `,"final":true`...)
	}
	b = append(b, `,"root_key_id":`...)
	b = appendString(b, c.RootKeyID)
	b = append(b, `,"tag":"`...)
	b = base64.StdEncoding.AppendEncode(b, c.Tag)
	return append(b, '"', '}')
}

// parseCheckpoint decodes a checkpoint line, which must be in canonical form.
func parseCheckpoint(line []byte) (*Checkpoint, error) {
	var j checkpointJSON
	if err := json.Unmarshal(line, &j); err != nil {
		return nil, fmt.Errorf("malformed checkpoint line: %w", err)
	}
	t, err := time.Parse(timeLayout, j.Time)
	if err != nil {
		return nil, fmt.Errorf("malformed checkpoint line: time: %w", err)
	}
	tag, err := base64.StdEncoding.DecodeString(j.Tag)
	if err != nil {
		return nil, fmt.Errorf("malformed checkpoint line: tag: %w", err)
	}
	c := &Checkpoint{Chain: j.Chain, Seq: j.Seq, Hash: j.Hash, Time: t, Final: j.Final, RootKeyID: j.RootKeyID, Tag: tag}
	if j.Type != "checkpoint" || !bytes.Equal(appendCheckpoint(nil, c), line) {
		return nil, errors.New("checkpoint line is not in canonical form")
	}
	return c, nil
}
