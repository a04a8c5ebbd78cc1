package client

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"

	"google.golang.org/grpc/codes"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// Fuzz targets for the SDK's parsers: the header, messages and streams.
// Run one at a time, on one core:
//
//	go test -run '^$' -fuzz '^FuzzDecryptStream$' -fuzztime 3m -parallel 1 ./client
//
// Plain `go test` runs their seeds and the corpus under testdata/fuzz.
// TRESOR_WRITE_FUZZ_SEEDS=1 go test -run '^TestWriteFuzzSeeds$' ./client
// rewrites the committed seeds.

// fuzzKMS stands in for tresor in local encryption, backed by a real AEAD
// so that it refuses what tresor would. GenerateDataKey derives the data
// key from the key name and key context (deterministic, so that seeds
// stay valid from run to run) and wraps it as "tresor:v1:" and the
// unpadded base64url of nonce || AES-256-GCM(master key, data key, key
// context). Decrypt opens that, failing as the server does, and names
// the key GenerateDataKey was given, as the server does. The base64 is
// deliberately not strict: two strings may wrap one data key, as a
// header's bytes are authenticated whatever the unwrapping accepts.
type fuzzKMS struct {
	master []byte
	aead   cipher.AEAD
	// fail, when set, is every Decrypt's error.
	fail error
	// names maps each data key generated to its key's name.
	names sync.Map

	generated, decrypted atomic.Int64
}

func newFuzzKMS(tb testing.TB) *fuzzKMS {
	tb.Helper()
	master := sha256.Sum256([]byte("tresor SDK fuzz master key"))
	aead, err := newGCM(master[:])
	if err != nil {
		tb.Fatal(err)
	}
	return &fuzzKMS{master: master[:], aead: aead}
}

func (k *fuzzKMS) GenerateDataKey(_ context.Context, req *tresorv1.GenerateDataKeyRequest) (*tresorv1.GenerateDataKeyResponse, error) {
	k.generated.Add(1)
	mac := hmac.New(sha256.New, k.master)
	mac.Write([]byte(req.GetKey()))
	mac.Write([]byte{0})
	mac.Write(req.GetAssociatedData())
	dk := mac.Sum(nil)
	k.names.Store(string(dk), req.GetKey())
	n := sha256.Sum256(dk)
	nonce := n[:nonceLen:nonceLen]
	wrapped := k.aead.Seal(nonce, nonce, dk, req.GetAssociatedData())
	return &tresorv1.GenerateDataKeyResponse{
		Plaintext:  dk,
		Ciphertext: wrappedKeyPrefix + base64.RawURLEncoding.EncodeToString(wrapped),
		KeyVersion: 1,
	}, nil
}

func (k *fuzzKMS) Decrypt(_ context.Context, req *tresorv1.DecryptRequest) (*tresorv1.DecryptResponse, error) {
	k.decrypted.Add(1)
	if k.fail != nil {
		return nil, k.fail
	}
	refused := &Error{Method: tresorv1.CryptoService_Decrypt_FullMethodName, Code: codes.InvalidArgument, Message: serverDecryptMessage}
	s, ok := strings.CutPrefix(req.GetCiphertext(), wrappedKeyPrefix)
	if !ok {
		return nil, refused
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < nonceLen+tagLen {
		return nil, refused
	}
	pt, err := k.aead.Open(nil, b[:nonceLen], b[nonceLen:], req.GetAssociatedData())
	if err != nil {
		return nil, refused
	}
	name, _ := k.names.Load(string(pt))
	key, _ := name.(string)
	return &tresorv1.DecryptResponse{Plaintext: pt, Key: key, KeyVersion: 1}, nil
}

// newFuzzLocal is local encryption against a fuzzKMS.
func newFuzzLocal(tb testing.TB, policy CachePolicy) (*LocalEncryption, *fuzzKMS) {
	tb.Helper()
	kms := newFuzzKMS(tb)
	l, err := newLocalEncryption(kms, kms, policy)
	if err != nil {
		tb.Fatalf("newLocalEncryption() err = %v", err)
	}
	return l, kms
}

// fuzzSeed is an input and, for a valid one, its plaintext and the key
// and key context of the only Encryptor that opens it.
type fuzzSeed struct {
	name       string
	in, aad    []byte
	want       []byte // nil: must fail
	key        string
	keyContext []byte
	op, i, j   uint16 // FuzzDecryptStream's edit
}

// fuzzReaders are the Encryptors the fuzz targets open every input with:
// each opens only the valid inputs of its key and key context.
func fuzzReaders(tb testing.TB, l *LocalEncryption) []*Encryptor {
	tb.Helper()
	var out []*Encryptor
	for _, r := range []struct {
		key        string
		keyContext []byte
	}{
		{"payments", nil},
		{"payments", []byte("tenant=7")},
		{"cards", fuzzLongContext},
	} {
		e, err := l.Encryptor(r.key, r.keyContext)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// fuzzLongContext is the longest key context.
var fuzzLongContext = bytes.Repeat([]byte("c"), maxKeyContext)

// fuzzPattern is n bytes of a fixed pattern.
func fuzzPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>8)
	}
	return b
}

// fuzzMessage builds a message by hand, from the format's description
// alone: header, a fixed nonce, AES-256-GCM over header || aad.
func fuzzMessage(tb testing.TB, kms *fuzzKMS, key string, keyContext, pt, aad []byte, nonceByte byte) []byte {
	tb.Helper()
	resp, err := kms.GenerateDataKey(context.Background(), &tresorv1.GenerateDataKeyRequest{Key: key, AssociatedData: keyContext})
	if err != nil {
		tb.Fatal(err)
	}
	aead, err := newGCM(resp.GetPlaintext())
	if err != nil {
		tb.Fatal(err)
	}
	hdr := appendHeader(nil, kindMessage, resp.GetCiphertext(), keyContext)
	nonce := bytes.Repeat([]byte{nonceByte}, nonceLen)
	ad := append(bytes.Clone(hdr), aad...)
	return aead.Seal(append(bytes.Clone(hdr), nonce...), nonce, pt, ad)
}

// fuzzMessages are valid messages (with their plaintexts) and streams
// given to Decrypt (which must fail).
func fuzzMessages(tb testing.TB, kms *fuzzKMS, streams []fuzzSeed) []fuzzSeed {
	tb.Helper()
	long := fuzzLongContext
	seeds := []fuzzSeed{
		{name: "empty", in: fuzzMessage(tb, kms, "payments", nil, []byte{}, nil, 1), want: []byte{}, key: "payments"},
		{name: "short", in: fuzzMessage(tb, kms, "payments", nil, []byte("x"), nil, 2), want: []byte("x"), key: "payments"},
		{name: "aad", in: fuzzMessage(tb, kms, "payments", []byte("tenant=7"), fuzzPattern(100), []byte("row 12"), 3), aad: []byte("row 12"), want: fuzzPattern(100), key: "payments", keyContext: []byte("tenant=7")},
		{name: "long context", in: fuzzMessage(tb, kms, "cards", long, fuzzPattern(33), nil, 4), want: fuzzPattern(33), key: "cards", keyContext: long},
		// Valid messages no reader may open: another key, another key
		// context.
		{name: "other key", in: fuzzMessage(tb, kms, "other", []byte("tenant=7"), fuzzPattern(10), nil, 5), want: fuzzPattern(10), key: "other", keyContext: []byte("tenant=7")},
		{name: "other context", in: fuzzMessage(tb, kms, "payments", []byte("tenant=8"), fuzzPattern(10), nil, 6), want: fuzzPattern(10), key: "payments", keyContext: []byte("tenant=8")},
	}
	for _, s := range seeds[:3] {
		// The same with another aad, and cut to its header.
		seeds = append(seeds, fuzzSeed{name: s.name + " other aad", in: s.in, aad: []byte("other")})
		_, hl, err := parseHeader(s.in)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, fuzzSeed{name: s.name + " header only", in: s.in[:hl], aad: s.aad})
		seeds = append(seeds, fuzzSeed{name: s.name + " no tag", in: s.in[:hl+nonceLen+tagLen-1], aad: s.aad})
	}
	for _, s := range streams {
		if s.want != nil && s.op == 0 {
			seeds = append(seeds, fuzzSeed{name: "stream " + s.name, in: s.in, aad: s.aad})
		}
	}
	return append(seeds,
		fuzzSeed{name: "nil"},
		fuzzSeed{name: "magic", in: []byte(magic)},
		fuzzSeed{name: "not tresor", in: fuzzPattern(80)},
	)
}

// fuzzStreams are valid streams (with their plaintexts) of 4096-byte
// chunks from l, with salts from a fixed seed, and edits of them.
func fuzzStreams(tb testing.TB, l *LocalEncryption) []fuzzSeed {
	tb.Helper()
	random := rand.NewChaCha8([32]byte{'s', 'a', 'l', 't'})
	seal := func(key string, keyContext, pt, aad []byte) []byte {
		e, err := l.Encryptor(key, keyContext)
		if err != nil {
			tb.Fatal(err)
		}
		var b bytes.Buffer
		if _, err := e.encryptStream(context.Background(), &b, bytes.NewReader(pt), aad, streamMinChunk, random); err != nil {
			tb.Fatalf("encryptStream() err = %v", err)
		}
		return b.Bytes()
	}
	var seeds []fuzzSeed
	for _, c := range []struct {
		name string
		size int
		aad  []byte
	}{
		{"empty", 0, nil},
		{"one byte", 1, []byte("aad")},
		{"chunk-1", streamMinChunk - 1, nil},
		{"chunk", streamMinChunk, nil},
		{"two and a bit", 2*streamMinChunk + 100, []byte("aad")},
	} {
		pt := fuzzPattern(c.size)
		seeds = append(seeds, fuzzSeed{name: c.name, in: seal("payments", []byte("tenant=7"), pt, c.aad), aad: c.aad, want: pt, key: "payments", keyContext: []byte("tenant=7")})
	}
	last := seeds[len(seeds)-1]
	for _, op := range []struct {
		name     string
		op, i, j uint16
	}{
		{"truncated", fuzzOpCut, 5000, 0},
		{"swapped", fuzzOpSwap, 0, 1},
		{"swapped last", fuzzOpSwap, 1, 2},
		{"dropped last", fuzzOpDrop, 2, 0},
		{"duplicated", fuzzOpDup, 0, 0},
		{"trailing", fuzzOpTrail, 0, 7},
		{"one byte reads", fuzzOpOneByte, 0, 0},
	} {
		seeds = append(seeds, fuzzSeed{name: op.name, in: last.in, aad: last.aad, want: last.want, key: last.key, keyContext: last.keyContext, op: op.op, i: op.i, j: op.j})
	}
	return seeds
}

// FuzzDecryptStream's edits: the low 3 bits of op choose one, and bit 3
// reads the stream a byte at a time.
const (
	fuzzOpNone    = 0
	fuzzOpCut     = 1 // cut at byte i (modulo length+1)
	fuzzOpSwap    = 2 // swap chunks i and j
	fuzzOpDrop    = 3 // drop chunk i
	fuzzOpDup     = 4 // repeat chunk i
	fuzzOpTrail   = 5 // append i%16+1 bytes of value j
	fuzzOpOneByte = 8
)

// fuzzEdit applies op to a stream; it returns the stream as is when op
// is none or the stream has no chunks to speak of.
func fuzzEdit(b []byte, op, i, j uint16) []byte {
	switch op & 7 {
	case fuzzOpCut:
		return b[:int(i)%(len(b)+1)]
	case fuzzOpTrail:
		return append(bytes.Clone(b), bytes.Repeat([]byte{byte(j)}, int(i)%16+1)...)
	}
	prefix, chunks, ok := splitStream(b)
	if !ok || len(chunks) == 0 {
		return b
	}
	ci, cj := int(i)%len(chunks), int(j)%len(chunks)
	switch op & 7 {
	case fuzzOpSwap:
		chunks[ci], chunks[cj] = chunks[cj], chunks[ci]
	case fuzzOpDrop:
		chunks = append(chunks[:ci:ci], chunks[ci+1:]...)
	case fuzzOpDup:
		chunks = append(chunks[:ci+1:ci+1], chunks[ci:]...)
	default:
		return b
	}
	return append(bytes.Clone(prefix), bytes.Join(chunks, nil)...)
}

// fuzzRegistry maps input and aad to the valid inputs' seeds.
type fuzzRegistry map[[2]string]fuzzSeed

func newFuzzRegistry(seeds []fuzzSeed, edit bool) fuzzRegistry {
	r := fuzzRegistry{}
	for _, s := range seeds {
		in := s.in
		if edit {
			in = fuzzEdit(in, s.op, s.i, s.j)
		}
		if s.want != nil && (!edit || s.op&7 == 0) {
			r[[2]string{string(in), string(s.aad)}] = s
		}
	}
	return r
}

// lookup returns the plaintext of in with aad for reader e, if it is
// valid and of e's key and key context.
func (r fuzzRegistry) lookup(e *Encryptor, in, aad []byte) ([]byte, bool) {
	s, ok := r[[2]string{string(in), string(aad)}]
	if !ok || s.key != e.key || !bytes.Equal(s.keyContext, e.keyContext) {
		return nil, false
	}
	return s.want, true
}

// FuzzParseHeader: parseHeader on any bytes. What parses re-encodes to
// exactly the bytes it was parsed from, and nothing is read past the
// input; readStreamPrefix, reading the same bytes incrementally, agrees
// with it and reads no further than the stream's prefix.
func FuzzParseHeader(f *testing.F) {
	for _, s := range fuzzHeaderSeeds(f) {
		f.Add(s.in)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		b = b[:len(b):len(b)] // reading past the end panics
		h, n, err := parseHeader(b)
		if !bytes.Equal(b, in) {
			t.Fatalf("parseHeader(%x) modified its input", in)
		}
		if err != nil {
			if err != errFormat || n != 0 || h.kind != 0 || h.wrapped != nil || h.keyContext != nil {
				t.Fatalf("parseHeader(%x) = %v, %d, %v, want a zero header, 0, errFormat", b, h, n, err)
			}
		} else {
			if n > len(b) || (h.kind != kindMessage && h.kind != kindStream) || checkWrappedKey(string(h.wrapped)) != nil || len(h.keyContext) > maxKeyContext {
				t.Fatalf("parseHeader(%x) = %v, %d: out of bounds", b, h, n)
			}
			if got := appendHeader(nil, h.kind, string(h.wrapped), h.keyContext); !bytes.Equal(got, b[:n]) {
				t.Fatalf("parseHeader(%x): appendHeader gives %x, want the parsed %x", b, got, b[:n])
			}
		}

		r := bytes.NewReader(b)
		prefix, rh, rn, rerr := readStreamPrefix(r)
		read := len(b) - r.Len()
		if read > fixedHeaderLen+maxWrappedKey+2+maxKeyContext+streamPrefixTail {
			t.Fatalf("readStreamPrefix(%x) read %d bytes, more than any prefix", b, read)
		}
		if rerr != nil {
			if rerr != ErrDecryptionFailed || prefix != nil {
				t.Fatalf("readStreamPrefix(%x) err = %v, want exactly ErrDecryptionFailed", b, rerr)
			}
			if err == nil && h.kind == kindStream {
				if read > n+streamPrefixTail {
					t.Fatalf("readStreamPrefix(%x) read %d bytes, past the %d-byte prefix", b, read, n+streamPrefixTail)
				}
				if len(b) >= n+streamPrefixTail {
					if cs := binary.BigEndian.Uint32(b[n:]); cs >= streamMinChunk && cs <= streamMaxChunk {
						t.Fatalf("readStreamPrefix(%x) err = %v, want the prefix parseHeader accepts", b, rerr)
					}
				}
			}
			return
		}
		if err != nil || h.kind != kindStream || rn != n || read != n+streamPrefixTail || !bytes.Equal(prefix, b[:read]) ||
			rh.kind != h.kind || !bytes.Equal(rh.wrapped, h.wrapped) || !bytes.Equal(rh.keyContext, h.keyContext) {
			t.Fatalf("readStreamPrefix(%x) = %x, %d (read %d), want what parseHeader gives: %d, %v", b, prefix, rn, read, n, err)
		}
	})
}

// fuzzHeaderSeeds are headers of every shape parseHeader tells apart.
func fuzzHeaderSeeds(tb testing.TB) []fuzzSeed {
	tb.Helper()
	kms := newFuzzKMS(tb)
	wk := func(keyContext []byte) string {
		resp, err := kms.GenerateDataKey(context.Background(), &tresorv1.GenerateDataKeyRequest{Key: "payments", AssociatedData: keyContext})
		if err != nil {
			tb.Fatal(err)
		}
		return resp.GetCiphertext()
	}
	w := wk(nil)
	maxW := wrappedKeyPrefix + strings.Repeat("A", maxWrappedKey-len(wrappedKeyPrefix))
	maxC := bytes.Repeat([]byte{0xff}, maxKeyContext)
	tail := func(cs uint32) []byte {
		return append(binary.BigEndian.AppendUint32(nil, cs), bytes.Repeat([]byte{9}, streamSaltLen)...)
	}
	set := func(b []byte, i int, v byte) []byte { b = bytes.Clone(b); b[i] = v; return b }
	msg := appendHeader(nil, kindMessage, w, nil)
	stream := appendHeader(nil, kindStream, wk([]byte("tenant=7")), []byte("tenant=7"))
	return []fuzzSeed{
		{name: "nil"},
		{name: "message", in: msg},
		{name: "message body", in: append(bytes.Clone(msg), fuzzPattern(40)...)},
		{name: "stream prefix", in: append(bytes.Clone(stream), tail(streamDefaultChunk)...)},
		{name: "stream prefix short", in: append(bytes.Clone(stream), tail(streamMinChunk)[:20]...)},
		{name: "stream min chunk", in: append(bytes.Clone(stream), tail(streamMinChunk)...)},
		{name: "stream max chunk", in: append(bytes.Clone(stream), tail(streamMaxChunk)...)},
		{name: "stream small chunk", in: append(bytes.Clone(stream), tail(streamMinChunk-1)...)},
		{name: "stream big chunk", in: append(bytes.Clone(stream), tail(streamMaxChunk+1)...)},
		{name: "longest", in: append(appendHeader(nil, kindStream, maxW, maxC), tail(streamMinChunk)...)},
		{name: "wrapped too long", in: appendHeader(nil, kindMessage, maxW+"A", nil)},
		{name: "context too long", in: appendHeader(nil, kindMessage, w, append(maxC, 0))},
		{name: "no wrapped key", in: appendHeader(nil, kindMessage, "", nil)},
		{name: "other prefix", in: appendHeader(nil, kindMessage, "tresor:v2:abc", nil)},
		{name: "space in key", in: appendHeader(nil, kindMessage, "tresor:v1:a b", nil)},
		{name: "cut", in: msg[:len(msg)-1]},
		{name: "fixed only", in: msg[:fixedHeaderLen]},
		{name: "kind 3", in: set(msg, 5, 3)},
		{name: "version 2", in: set(msg, 4, 2)},
		{name: "suite 2", in: set(msg, 6, 2)},
		{name: "magic", in: set(msg, 0, 's')},
	}
}

// FuzzDecrypt: Decrypt of any bytes with any aad, by Encryptors of three
// keys and key contexts, fails with exactly ErrDecryptionFailed, unless
// they are a valid message with its aad, of the Encryptor's key and key
// context, which opens to exactly its plaintext.
func FuzzDecrypt(f *testing.F) {
	l, kms := newFuzzLocal(f, CachePolicy{})
	seeds := fuzzMessages(f, kms, fuzzStreams(f, l))
	valid := newFuzzRegistry(seeds, false)
	for _, s := range seeds {
		f.Add(s.in, s.aad)
	}
	readers := fuzzReaders(f, l)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, msg, aad []byte) {
		in := bytes.Clone(msg)
		for _, e := range readers {
			pt, err := e.Decrypt(ctx, msg, aad)
			if !bytes.Equal(msg, in) {
				t.Fatalf("Decrypt(%x) modified its input", in)
			}
			want, ok := valid.lookup(e, msg, aad)
			switch {
			case ok && (err != nil || !bytes.Equal(pt, want)):
				t.Fatalf("%s/%.20q Decrypt(valid %x, %q) = %d bytes, %v, want its %d bytes, nil", e.key, e.keyContext, msg, aad, len(pt), err, len(want))
			case !ok && (err != ErrDecryptionFailed || pt != nil):
				t.Fatalf("%s/%.20q Decrypt(%x, %q) = %d bytes, %v, want nil, exactly ErrDecryptionFailed", e.key, e.keyContext, msg, aad, len(pt), err)
			}
		}
	})
}

// FuzzDecryptStream: DecryptStream of any bytes, streams edited chunk by
// chunk among them (truncated, reordered, dropped, repeated, extended),
// read whole or a byte at a time, by Encryptors of three keys and key
// contexts, fails with exactly ErrDecryptionFailed, unless they are a
// valid stream with its aad, of the Encryptor's key and key context,
// which opens to exactly its plaintext. The count returned is always what
// was written.
func FuzzDecryptStream(f *testing.F) {
	l, kms := newFuzzLocal(f, CachePolicy{})
	streams := fuzzStreams(f, l)
	valid := newFuzzRegistry(streams, true)
	for _, s := range streams {
		f.Add(s.in, s.aad, s.op, s.i, s.j)
	}
	for _, s := range fuzzMessages(f, kms, nil) {
		f.Add(s.in, s.aad, uint16(0), uint16(0), uint16(0))
	}
	readers := fuzzReaders(f, l)
	ctx := context.Background()
	var out bytes.Buffer
	f.Fuzz(func(t *testing.T, stream, aad []byte, op, i, j uint16) {
		in := fuzzEdit(stream, op, i, j)
		for _, e := range readers {
			var src io.Reader = bytes.NewReader(in)
			if op&fuzzOpOneByte != 0 {
				src = iotest.OneByteReader(src)
			}
			out.Reset()
			n, err := e.DecryptStream(ctx, &out, src, aad)
			if n != int64(out.Len()) {
				t.Fatalf("DecryptStream(%x, %q) = %d, but wrote %d bytes", in, aad, n, out.Len())
			}
			want, ok := valid.lookup(e, in, aad)
			switch {
			case ok && (err != nil || !bytes.Equal(out.Bytes(), want)):
				t.Fatalf("%s/%.20q DecryptStream(valid %x, %q) wrote %d bytes, err = %v, want its %d bytes, nil", e.key, e.keyContext, in, aad, out.Len(), err, len(want))
			case !ok && err != ErrDecryptionFailed:
				t.Fatalf("%s/%.20q DecryptStream(%x, %q) err = %v, want exactly ErrDecryptionFailed", e.key, e.keyContext, in, aad, err)
			}
		}
	})
}

// TestWriteFuzzSeeds writes the committed seed corpus; it runs only when
// TRESOR_WRITE_FUZZ_SEEDS is set.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("TRESOR_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("TRESOR_WRITE_FUZZ_SEEDS is not set")
	}
	l, kms := newFuzzLocal(t, CachePolicy{})
	streams := fuzzStreams(t, l)
	messages := fuzzMessages(t, kms, streams)
	pick := func(seeds []fuzzSeed, names ...string) []fuzzSeed {
		var out []fuzzSeed
		for _, s := range seeds {
			for _, n := range names {
				if s.name == n {
					out = append(out, s)
				}
			}
		}
		if len(out) != len(names) {
			t.Fatalf("pick(%q) found %d seeds", names, len(out))
		}
		return out
	}
	quote := func(b []byte) string { return fmt.Sprintf("[]byte(%q)\n", b) }
	write := func(target string, s fuzzSeed, lines ...string) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		name := "seed-" + strings.ReplaceAll(s.name, " ", "-")
		data := "go test fuzz v1\n" + strings.Join(lines, "")
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range pick(fuzzHeaderSeeds(t), "message", "stream prefix", "stream small chunk", "other prefix") {
		write("FuzzParseHeader", s, quote(s.in))
	}
	for _, s := range pick(messages, "aad", "aad other aad", "stream one byte") {
		write("FuzzDecrypt", s, quote(s.in), quote(s.aad))
	}
	for _, s := range pick(streams, "one byte", "chunk", "swapped") {
		write("FuzzDecryptStream", s, quote(s.in), quote(s.aad), fmt.Sprintf("uint16(%d)\n", s.op), fmt.Sprintf("uint16(%d)\n", s.i), fmt.Sprintf("uint16(%d)\n", s.j))
	}
}
