package client

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math"
	mrand "math/rand/v2"
	"testing"
	"testing/iotest"
	"time"

	"google.golang.org/grpc/codes"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// streamTestKey is the named key the stream tests create.
const streamTestKey = "streams"

// streamEnv is a test server with streamTestKey, a client of it, and
// local encryption through that client.
type streamEnv struct {
	s *TestServer
	c *Client
	l *LocalEncryption
	e *Encryptor
}

func newStreamEnv(t *testing.T, policy CachePolicy) *streamEnv {
	t.Helper()
	s := StartTestServer(t)
	c := s.Client(t, nil)
	if _, err := c.CreateKey(context.Background(), &tresorv1.CreateKeyRequest{KeyId: streamTestKey, Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatalf("CreateKey() err = %v", err)
	}
	env := &streamEnv{s: s, c: c, l: streamLocal(t, c, policy)}
	env.e = streamEncryptor(t, env.l, streamTestKey)
	return env
}

// streamLocal is local encryption through c: another process, as far as
// caches go.
func streamLocal(t *testing.T, c *Client, policy CachePolicy) *LocalEncryption {
	t.Helper()
	l, err := NewLocalEncryption(c, policy)
	if err != nil {
		t.Fatalf("NewLocalEncryption() err = %v", err)
	}
	return l
}

func streamEncryptor(t *testing.T, l *LocalEncryption, key string) *Encryptor {
	t.Helper()
	e, err := l.Encryptor(key, []byte("tenant=7"))
	if err != nil {
		t.Fatalf("Encryptor() err = %v", err)
	}
	return e
}

// sealStream seals pt with aad in chunks of chunkSize.
func sealStream(t *testing.T, e *Encryptor, pt, aad []byte, chunkSize int) []byte {
	t.Helper()
	var b bytes.Buffer
	n, err := e.encryptStream(context.Background(), &b, bytes.NewReader(pt), aad, chunkSize, rand.Reader)
	if err != nil || n != int64(len(pt)) {
		t.Fatalf("encryptStream(%d bytes) = %d, %v, want %[1]d, nil", len(pt), n, err)
	}
	return b.Bytes()
}

// splitStream splits a stream into its prefix (header, chunk size, salt)
// and its chunks, as their lengths say; ok is false when there is no
// stream prefix.
func splitStream(b []byte) (prefix []byte, chunks [][]byte, ok bool) {
	h, hl, err := parseHeader(b)
	if err != nil || h.kind != kindStream || len(b) < hl+streamPrefixTail {
		return nil, nil, false
	}
	cs := int(binary.BigEndian.Uint32(b[hl:]))
	if cs < streamMinChunk || cs > streamMaxChunk {
		return nil, nil, false
	}
	prefix, rest := b[:hl+streamPrefixTail], b[hl+streamPrefixTail:]
	for len(rest) > cs+tagLen {
		chunks = append(chunks, rest[:cs+tagLen])
		rest = rest[cs+tagLen:]
	}
	return prefix, append(chunks, rest), true
}

func TestStreamRoundTrip(t *testing.T) {
	env := newStreamEnv(t, CachePolicy{})
	ctx := context.Background()
	const cs = streamMinChunk
	big := make([]byte, 1<<20+123)
	rand.Read(big)
	tests := []struct {
		name  string
		pt    []byte
		aad   []byte
		chunk int // 0: EncryptStream's
		read  func(io.Reader) io.Reader
	}{
		{"empty", []byte{}, nil, cs, nil},
		{"one byte", []byte{7}, []byte("aad"), cs, nil},
		{"chunk-1", fuzzPattern(cs - 1), nil, cs, nil},
		{"chunk", fuzzPattern(cs), []byte("aad"), cs, nil},
		{"chunk+1", fuzzPattern(cs + 1), nil, cs, nil},
		{"3 chunks", fuzzPattern(3 * cs), []byte("aad"), cs, nil},
		{"3 chunks read a byte at a time", fuzzPattern(3*cs + 5), []byte("aad"), cs, iotest.OneByteReader},
		{"3 chunks read by halves", fuzzPattern(3*cs + 5), nil, cs, iotest.HalfReader},
		{"3 chunks EOF with data", fuzzPattern(3*cs + 5), nil, cs, iotest.DataErrReader},
		{"largest chunk", fuzzPattern(100), nil, streamMaxChunk, nil},
		{"1 MiB random", big, []byte("aad"), 0, nil},
		{"1 MiB random read by halves", big, nil, 0, iotest.HalfReader},
		{"64 KiB", big[:streamDefaultChunk], nil, 0, nil},
	}
	// opener is another process: it unwraps the data key through tresor,
	// once for all.
	opener := streamLocal(t, env.c, CachePolicy{})
	reader := func(b []byte, read func(io.Reader) io.Reader) io.Reader {
		if read == nil {
			return bytes.NewReader(b)
		}
		return read(bytes.NewReader(b))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stream bytes.Buffer
			var n int64
			var err error
			chunk := tt.chunk
			if chunk == 0 {
				chunk = streamDefaultChunk
				n, err = env.e.EncryptStream(ctx, &stream, reader(tt.pt, tt.read), tt.aad)
			} else {
				n, err = env.e.encryptStream(ctx, &stream, reader(tt.pt, tt.read), tt.aad, chunk, rand.Reader)
			}
			if err != nil || n != int64(len(tt.pt)) {
				t.Fatalf("EncryptStream(%d bytes) = %d, %v, want %[1]d, nil", len(tt.pt), n, err)
			}
			chunks := len(tt.pt)/chunk + 1
			prefix, got, ok := splitStream(stream.Bytes())
			if !ok || len(got) != chunks || stream.Len() != len(prefix)+len(tt.pt)+chunks*tagLen {
				t.Fatalf("EncryptStream(%d bytes) wrote %d bytes in %d chunks, want %d chunks of %d bytes after the prefix",
					len(tt.pt), stream.Len(), len(got), chunks, chunk+tagLen)
			}
			for _, e := range []*Encryptor{env.e, streamEncryptor(t, opener, streamTestKey)} {
				var out bytes.Buffer
				n, err := e.DecryptStream(ctx, &out, reader(stream.Bytes(), tt.read), tt.aad)
				if err != nil || n != int64(len(tt.pt)) || !bytes.Equal(out.Bytes(), tt.pt) {
					t.Fatalf("DecryptStream() = %d, %v and %d bytes, want the %d bytes sealed, nil", n, err, out.Len(), len(tt.pt))
				}
			}
		})
	}
	if st := opener.Stats(); st.DataKeysUnwrapped != 1 {
		t.Errorf("opener.Stats() = %+v, want 1 data key unwrapped for every stream", st)
	}
	if st := env.l.Stats(); st.DataKeysUnwrapped != 0 || st.DataKeysGenerated != 1 {
		t.Errorf("sealer.Stats() = %+v, want 1 data key generated, none unwrapped", st)
	}
}

func TestDecryptStreamTampered(t *testing.T) {
	env := newStreamEnv(t, CachePolicy{})
	ctx := context.Background()
	const cs = streamMinChunk
	aad := []byte("invoice 7")
	stream := sealStream(t, env.e, fuzzPattern(2*cs+1000), aad, cs) // chunks of cs, cs, 1000
	exact := sealStream(t, env.e, fuzzPattern(2*cs), aad, cs)       // chunks of cs, cs, 0
	other := sealStream(t, env.e, fuzzPattern(2*cs+1000), aad, cs)  // same data key, another salt
	msg, err := env.e.Encrypt(ctx, []byte("a message"), aad)
	if err != nil {
		t.Fatalf("Encrypt() err = %v", err)
	}
	p, c, _ := splitStream(stream)
	op, oc, _ := splitStream(other)
	h, hl, _ := parseHeader(stream)
	wkLen, pl, c0 := len(h.wrapped), len(p), len(c[0])
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	flip := func(i int) []byte {
		b := bytes.Clone(stream)
		b[(i+len(b))%len(b)] ^= 0x10
		return b
	}
	set := func(i int, v ...byte) []byte {
		b := bytes.Clone(stream)
		copy(b[i:], v)
		return b
	}
	chunkSize := func(v uint32) []byte { return set(hl, binary.BigEndian.AppendUint32(nil, v)...) }
	tests := []struct {
		name  string
		in    []byte
		aad   []byte
		wrote int // plaintext written before the failure
	}{
		{"wrong aad", stream, []byte("invoice 8"), 0},
		{"no aad", stream, nil, 0},
		{"empty", nil, aad, 0},
		{"cut in magic", stream[:2], aad, 0},
		{"cut after fixed header", stream[:fixedHeaderLen], aad, 0},
		{"cut in wrapped key", stream[:fixedHeaderLen+5], aad, 0},
		{"cut before context length", stream[:fixedHeaderLen+wkLen], aad, 0},
		{"cut in key context", stream[:hl-2], aad, 0},
		{"cut after header", stream[:hl], aad, 0},
		{"cut in chunk size", stream[:hl+2], aad, 0},
		{"cut in salt", stream[:hl+20], aad, 0},
		{"cut after salt", stream[:pl], aad, 0},
		{"cut in first chunk", stream[:pl+100], aad, 0},
		{"cut at chunk boundary", stream[:pl+c0], aad, cs},
		{"cut in second chunk", stream[:pl+c0+100], aad, cs},
		{"cut to less than a tag", stream[:pl+2*c0+5], aad, 2 * cs},
		{"cut in last tag", stream[:len(stream)-1], aad, 2 * cs},
		{"drop last chunk", join(p, c[0], c[1]), aad, 2 * cs},
		{"drop empty last chunk", exact[:len(exact)-tagLen], aad, 2 * cs},
		{"drop first chunk", join(p, c[1], c[2]), aad, 0},
		{"swap first chunks", join(p, c[1], c[0], c[2]), aad, 0},
		{"swap last chunks", join(p, c[0], c[2], c[1]), aad, cs},
		{"repeat a chunk", join(p, c[0], c[0], c[1], c[2]), aad, cs},
		{"chunk of another stream", join(p, oc[0], c[1], c[2]), aad, 0},
		{"prefix of another stream", join(op, c[0], c[1], c[2]), aad, 0},
		{"trailing byte", join(stream, []byte{0}), aad, 2 * cs},
		{"trailing chunk", join(stream, c[2]), aad, 2 * cs},
		{"trailing byte after empty chunk", join(exact, []byte{0}), aad, 2 * cs},
		{"flipped magic", flip(0), aad, 0},
		{"flipped version", flip(4), aad, 0},
		{"message kind", set(5, kindMessage), aad, 0},
		{"flipped suite", flip(6), aad, 0},
		{"flipped wrapped key length", flip(8), aad, 0},
		{"flipped wrapped key", flip(fixedHeaderLen + wkLen - 3), aad, 0},
		{"flipped key context", flip(hl - 1), aad, 0},
		{"flipped chunk size", flip(hl + 3), aad, 0},
		{"flipped salt", flip(hl + 4 + 7), aad, 0},
		{"flipped first chunk", flip(pl + 10), aad, 0},
		{"flipped first tag", flip(pl + c0 - 1), aad, 0},
		{"flipped last chunk", flip(-20), aad, 2 * cs},
		{"flipped last tag", flip(-1), aad, 2 * cs},
		{"chunk size 0", chunkSize(0), aad, 0},
		{"chunk size below 4096", chunkSize(streamMinChunk - 1), aad, 0},
		{"chunk size above 16 MiB", chunkSize(streamMaxChunk + 1), aad, 0},
		{"chunk size 2^32-1", chunkSize(math.MaxUint32), aad, 0},
		{"a message", msg, aad, 0},
		{"not tresor", fuzzPattern(200), aad, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			n, err := env.e.DecryptStream(ctx, &out, bytes.NewReader(tt.in), tt.aad)
			if err != ErrDecryptionFailed {
				t.Errorf("DecryptStream(...) err = %v, want exactly ErrDecryptionFailed", err)
			}
			if n != int64(tt.wrote) || out.Len() != tt.wrote {
				t.Errorf("DecryptStream(...) = %d and wrote %d bytes, want %d", n, out.Len(), tt.wrote)
			}
		})
	}
	t.Run("Decrypt of a stream", func(t *testing.T) {
		for _, in := range [][]byte{stream, exact, set(5, kindMessage)} {
			if pt, err := env.e.Decrypt(ctx, in, aad); err != ErrDecryptionFailed || pt != nil {
				t.Errorf("Decrypt(stream) = %d bytes, %v, want exactly ErrDecryptionFailed", len(pt), err)
			}
		}
	})
}

// TestDecryptStreamReadsOnlyThePrefix: a bad prefix is refused as soon as
// the field that is wrong has been read, never after reading further.
func TestDecryptStreamReadsOnlyThePrefix(t *testing.T) {
	l, _ := newFuzzLocal(t, CachePolicy{})
	e := streamEncryptor(t, l, "payments")
	stream := sealStream(t, e, nil, nil, streamMinChunk)
	h, hl, _ := parseHeader(stream)
	wk := fixedHeaderLen + len(h.wrapped)
	set := func(i int, v ...byte) []byte {
		b := bytes.Clone(stream)
		copy(b[i:], v)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		read int
	}{
		{"magic", set(0, 'X'), fixedHeaderLen},
		{"message kind", set(5, kindMessage), fixedHeaderLen},
		{"no wrapped key", set(7, 0, 0), fixedHeaderLen},
		{"wrapped key too long", set(7, 0x08, 0x01), fixedHeaderLen},
		{"context too long", set(wk, 0x20, 0x01), wk + 2},
		{"wrapped key not printable", set(fixedHeaderLen+12, 0), hl + streamPrefixTail},
		{"chunk size", set(hl, 0, 0, 0x0f, 0xff), hl + streamPrefixTail},
		{"no chunks", stream[:hl+streamPrefixTail], hl + streamPrefixTail},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bytes.NewReader(tt.in)
			_, err := e.DecryptStream(context.Background(), io.Discard, r, nil)
			if err != ErrDecryptionFailed {
				t.Errorf("DecryptStream(...) err = %v, want exactly ErrDecryptionFailed", err)
			}
			if read := len(tt.in) - r.Len(); read != tt.read {
				t.Errorf("DecryptStream(...) read %d bytes, want %d", read, tt.read)
			}
		})
	}
}

// streamWriter fails (or, when short, writes half and says nothing) once
// it has written after times.
type streamWriter struct {
	after int
	short bool
	err   error
	cb    func()
	bytes.Buffer
}

func (w *streamWriter) Write(p []byte) (int, error) {
	if w.cb != nil {
		w.cb()
	}
	if w.after == 0 {
		if w.short {
			return w.Buffer.Write(p[:len(p)/2])
		}
		return 0, w.err
	}
	w.after--
	return w.Buffer.Write(p)
}

func TestStreamIOErrors(t *testing.T) {
	env := newStreamEnv(t, CachePolicy{})
	ctx := context.Background()
	const cs = streamMinChunk
	errIO := errors.New("disk on fire")
	pt := fuzzPattern(2*cs + 1000)
	stream := sealStream(t, env.e, pt, nil, cs)
	p, c, _ := splitStream(stream)
	_, hl, _ := parseHeader(stream)
	failing := func(b []byte) io.Reader { return io.MultiReader(bytes.NewReader(b), iotest.ErrReader(errIO)) }

	t.Run("EncryptStream", func(t *testing.T) {
		tests := []struct {
			name   string
			src    io.Reader
			dst    *streamWriter
			random io.Reader
			n      int64
			want   error
		}{
			{"reader fails at once", failing(nil), &streamWriter{after: -1}, rand.Reader, 0, errIO},
			{"reader fails in second chunk", failing(pt[:cs+100]), &streamWriter{after: -1}, rand.Reader, cs + 100, errIO},
			{"writer fails on prefix", bytes.NewReader(pt), &streamWriter{err: errIO}, rand.Reader, 0, errIO},
			{"writer fails on first chunk", bytes.NewReader(pt), &streamWriter{after: 1, err: errIO}, rand.Reader, cs, errIO},
			{"short write", bytes.NewReader(pt), &streamWriter{after: 2, short: true}, rand.Reader, 2 * cs, io.ErrShortWrite},
			{"no randomness", bytes.NewReader(pt), &streamWriter{after: -1}, iotest.ErrReader(errIO), 0, errIO},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				n, err := env.e.encryptStream(ctx, tt.dst, tt.src, nil, cs, tt.random)
				if !errors.Is(err, tt.want) || errors.Is(err, ErrDecryptionFailed) {
					t.Errorf("EncryptStream(...) err = %v, want %v", err, tt.want)
				}
				if n != tt.n {
					t.Errorf("EncryptStream(...) = %d, want %d bytes read", n, tt.n)
				}
			})
		}
	})

	t.Run("DecryptStream", func(t *testing.T) {
		tests := []struct {
			name string
			src  io.Reader
			dst  *streamWriter
			n    int64
			want error
		}{
			{"reader fails at once", failing(nil), &streamWriter{after: -1}, 0, errIO},
			{"reader fails in fixed header", failing(stream[:3]), &streamWriter{after: -1}, 0, errIO},
			{"reader fails in wrapped key", failing(stream[:fixedHeaderLen+5]), &streamWriter{after: -1}, 0, errIO},
			{"reader fails in salt", failing(stream[:hl+10]), &streamWriter{after: -1}, 0, errIO},
			{"reader fails in first chunk", failing(stream[:len(p)+100]), &streamWriter{after: -1}, 0, errIO},
			{"reader fails after first chunk", failing(stream[:len(p)+len(c[0])]), &streamWriter{after: -1}, cs, errIO},
			{"writer fails on first chunk", bytes.NewReader(stream), &streamWriter{err: errIO}, 0, errIO},
			{"writer fails on last chunk", bytes.NewReader(stream), &streamWriter{after: 2, err: errIO}, 2 * cs, errIO},
			{"short write", bytes.NewReader(stream), &streamWriter{after: 1, short: true}, cs, io.ErrShortWrite},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				n, err := env.e.DecryptStream(ctx, tt.dst, tt.src, nil)
				if !errors.Is(err, tt.want) || errors.Is(err, ErrDecryptionFailed) {
					t.Errorf("DecryptStream(...) err = %v, want %v", err, tt.want)
				}
				if n != tt.n {
					t.Errorf("DecryptStream(...) = %d, want %d bytes written", n, tt.n)
				}
			})
		}
	})
}

// streamCancelReader calls cancel once it has given after bytes.
type streamCancelReader struct {
	r      io.Reader
	after  int
	cancel func()
}

func (r *streamCancelReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p[:min(len(p), r.after)])
	if r.after -= n; r.after == 0 {
		r.cancel()
	}
	return n, err
}

func TestStreamContext(t *testing.T) {
	env := newStreamEnv(t, CachePolicy{})
	const cs = streamMinChunk
	pt := fuzzPattern(3 * cs)
	stream := sealStream(t, env.e, pt, nil, cs)
	generated := env.s.Calls(tresorv1.CryptoService_GenerateDataKey_FullMethodName)
	canceled := func() context.Context {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}
	expired := func() context.Context {
		ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		t.Cleanup(cancel)
		return ctx
	}

	t.Run("EncryptStream", func(t *testing.T) {
		tests := []struct {
			name        string
			ctx         func() (context.Context, io.Reader)
			n           int64
			want, want2 error
		}{
			{"canceled", func() (context.Context, io.Reader) { return canceled(), bytes.NewReader(pt) }, 0, ErrCanceled, context.Canceled},
			{"deadline passed", func() (context.Context, io.Reader) { return expired(), bytes.NewReader(pt) }, 0, ErrDeadlineExceeded, context.DeadlineExceeded},
			{"canceled after a chunk", func() (context.Context, io.Reader) {
				ctx, cancel := context.WithCancel(context.Background())
				t.Cleanup(cancel)
				return ctx, &streamCancelReader{r: bytes.NewReader(pt), after: cs, cancel: cancel}
			}, cs, ErrCanceled, context.Canceled},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx, src := tt.ctx()
				var out bytes.Buffer
				n, err := env.e.encryptStream(ctx, &out, src, nil, cs, rand.Reader)
				if !errors.Is(err, tt.want) || !errors.Is(err, tt.want2) {
					t.Errorf("EncryptStream(...) err = %v, want %v and %v", err, tt.want, tt.want2)
				}
				if n != tt.n {
					t.Errorf("EncryptStream(...) = %d, want %d", n, tt.n)
				}
				if prefix, chunks, _ := splitStream(out.Bytes()); tt.n > 0 && (len(chunks) != 1 || out.Len() != len(prefix)+cs+tagLen) {
					t.Errorf("EncryptStream(...) wrote %d bytes, want the prefix and one chunk", out.Len())
				} else if tt.n == 0 && out.Len() != 0 {
					t.Errorf("EncryptStream(...) wrote %d bytes, want none", out.Len())
				}
			})
		}
		if got := env.s.Calls(tresorv1.CryptoService_GenerateDataKey_FullMethodName); got != generated {
			t.Errorf("GenerateDataKey calls = %d, want %d", got, generated)
		}
	})

	t.Run("DecryptStream", func(t *testing.T) {
		tests := []struct {
			name        string
			ctx         func() (context.Context, *streamWriter)
			n           int64
			want, want2 error
		}{
			{"canceled", func() (context.Context, *streamWriter) { return canceled(), &streamWriter{after: -1} }, 0, ErrCanceled, context.Canceled},
			{"deadline passed", func() (context.Context, *streamWriter) { return expired(), &streamWriter{after: -1} }, 0, ErrDeadlineExceeded, context.DeadlineExceeded},
			{"canceled after a chunk", func() (context.Context, *streamWriter) {
				ctx, cancel := context.WithCancel(context.Background())
				t.Cleanup(cancel)
				return ctx, &streamWriter{after: -1, cb: cancel}
			}, cs, ErrCanceled, context.Canceled},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx, dst := tt.ctx()
				n, err := env.e.DecryptStream(ctx, dst, bytes.NewReader(stream), nil)
				if !errors.Is(err, tt.want) || !errors.Is(err, tt.want2) {
					t.Errorf("DecryptStream(...) err = %v, want %v and %v", err, tt.want, tt.want2)
				}
				if n != tt.n || int64(dst.Len()) != tt.n {
					t.Errorf("DecryptStream(...) = %d and wrote %d bytes, want %d", n, dst.Len(), tt.n)
				}
			})
		}
	})
}

// TestStreamKeyCache: a stream is one message of the CachePolicy, whatever
// its size, and shares its data key with messages, for sealing and for
// opening.
func TestStreamKeyCache(t *testing.T) {
	now := time.Now()
	env := newStreamEnv(t, CachePolicy{MaxMessages: 2, MaxBytes: 1000, MaxAge: time.Minute})
	env.l.setClock(func() time.Time { return now })
	ctx := context.Background()
	const cs = streamMinChunk
	calls := func(m string) int64 { return env.s.Calls(m) }
	generate, decrypt := tresorv1.CryptoService_GenerateDataKey_FullMethodName, tresorv1.CryptoService_Decrypt_FullMethodName

	stream1 := sealStream(t, env.e, fuzzPattern(3*cs+1), nil, cs) // key 1: one message, 0 bytes
	msg1, err := env.e.Encrypt(ctx, fuzzPattern(1000), nil)       // key 1: two messages, 1000 bytes
	if err != nil {
		t.Fatalf("Encrypt() err = %v", err)
	}
	if got := calls(generate); got != 1 {
		t.Fatalf("GenerateDataKey calls = %d after a %d-byte stream and a message at MaxBytes, want 1", got, 3*cs+1)
	}
	stream2 := sealStream(t, env.e, fuzzPattern(10), nil, cs) // MaxMessages: key 2
	msg2, err := env.e.Encrypt(ctx, []byte("x"), nil)         // key 2
	if err != nil {
		t.Fatalf("Encrypt() err = %v", err)
	}
	if got := calls(generate); got != 2 {
		t.Fatalf("GenerateDataKey calls = %d after MaxMessages, want 2", got)
	}
	// The sealer opens its own without asking tresor.
	sealerOpens := func(streams ...[]byte) {
		t.Helper()
		before := calls(decrypt)
		for _, s := range streams {
			if _, err := env.e.DecryptStream(ctx, io.Discard, bytes.NewReader(s), nil); err != nil {
				t.Fatalf("DecryptStream() err = %v", err)
			}
		}
		if got := calls(decrypt) - before; got != 0 {
			t.Errorf("Decrypt calls = %d for the sealer's own streams, want 0", got)
		}
	}
	sealerOpens(stream1, stream2)
	now = now.Add(2 * time.Minute)
	stream3 := sealStream(t, env.e, fuzzPattern(10), nil, cs) // MaxAge: key 3
	if got, st := calls(generate), env.l.Stats(); got != 3 || st.DataKeysGenerated != 3 {
		t.Fatalf("GenerateDataKey calls = %d, Stats() = %+v after MaxAge, want 3", got, st)
	}
	sealerOpens(stream3)

	// Another process opens a stream and a message under one data key
	// with one unwrap, whichever comes first.
	tests := []struct {
		name        string
		stream, msg []byte
		streamFirst bool
	}{
		{"stream then message", stream1, msg1, true},
		{"message then stream", stream2, msg2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local := streamLocal(t, env.c, CachePolicy{})
			opener := streamEncryptor(t, local, streamTestKey)
			before := calls(decrypt)
			openStream := func() {
				if _, err := opener.DecryptStream(ctx, io.Discard, bytes.NewReader(tt.stream), nil); err != nil {
					t.Fatalf("DecryptStream() err = %v", err)
				}
			}
			if tt.streamFirst {
				openStream()
			}
			if _, err := opener.Decrypt(ctx, tt.msg, nil); err != nil {
				t.Fatalf("Decrypt() err = %v", err)
			}
			if !tt.streamFirst {
				openStream()
			}
			if got, st := calls(decrypt)-before, local.Stats(); got != 1 || st.DataKeysUnwrapped != 1 {
				t.Errorf("Decrypt calls = %d, Stats() = %+v, want one unwrap for both", got, st)
			}
		})
	}
}

// TestStreamKeyErrors: failures to get a data key keep their own error.
func TestStreamKeyErrors(t *testing.T) {
	env := newStreamEnv(t, CachePolicy{})
	ctx := context.Background()
	stream := sealStream(t, env.e, fuzzPattern(100), nil, streamMinChunk)
	stranger := env.s.Client(t, func(cfg *Config) {
		cfg.TLS = env.s.OtherTLS
		cfg.Tokens = env.s.tokens(t, env.s.OtherTLS, TestOtherID)
	})
	strangerLocal := streamLocal(t, stranger, CachePolicy{})

	fake, _ := newFuzzLocal(t, CachePolicy{})
	fakeStream := sealStream(t, streamEncryptor(t, fake, "payments"), fuzzPattern(100), nil, streamMinChunk)
	down, kms := newFuzzLocal(t, CachePolicy{})
	kms.fail = &Error{Method: tresorv1.CryptoService_Decrypt_FullMethodName, Code: codes.Unavailable, Message: "connection refused"}

	t.Run("EncryptStream", func(t *testing.T) {
		tests := []struct {
			name string
			e    *Encryptor
			want error
		}{
			{"no such key", streamEncryptor(t, env.l, "no-such-key"), ErrNotFound},
			{"permission denied", streamEncryptor(t, strangerLocal, streamTestKey), ErrPermissionDenied},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var out bytes.Buffer
				n, err := tt.e.EncryptStream(ctx, &out, bytes.NewReader([]byte("x")), nil)
				if !errors.Is(err, tt.want) || n != 0 || out.Len() != 0 {
					t.Errorf("EncryptStream(...) = %d, %v and wrote %d bytes, want 0, %v, nothing", n, err, out.Len(), tt.want)
				}
			})
		}
	})
	t.Run("DecryptStream", func(t *testing.T) {
		tests := []struct {
			name   string
			e      *Encryptor
			stream []byte
			want   error
		}{
			{"permission denied", streamEncryptor(t, strangerLocal, streamTestKey), stream, ErrPermissionDenied},
			{"unavailable", streamEncryptor(t, down, "payments"), fakeStream, ErrUnavailable},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var out bytes.Buffer
				n, err := tt.e.DecryptStream(ctx, &out, bytes.NewReader(tt.stream), nil)
				if !errors.Is(err, tt.want) || errors.Is(err, ErrDecryptionFailed) || n != 0 || out.Len() != 0 {
					t.Errorf("DecryptStream(...) = %d, %v and wrote %d bytes, want 0, %v, nothing", n, err, out.Len(), tt.want)
				}
			})
		}
	})
}

func TestEncryptStreamChunkSize(t *testing.T) {
	l, _ := newFuzzLocal(t, CachePolicy{})
	e := streamEncryptor(t, l, "payments")
	for _, cs := range []int{-1, 0, streamMinChunk - 1, streamMaxChunk + 1} {
		var out bytes.Buffer
		n, err := e.encryptStream(context.Background(), &out, bytes.NewReader([]byte("x")), nil, cs, rand.Reader)
		if err == nil || n != 0 || out.Len() != 0 {
			t.Errorf("encryptStream(chunk size %d) = %d, %v and wrote %d bytes, want an error and nothing", cs, n, err, out.Len())
		}
	}
	if st := l.Stats(); st.DataKeysGenerated != 0 {
		t.Errorf("Stats() = %+v, want no data key for a refused chunk size", st)
	}
}

// TestStreamChunkLimit: chunk 2^32-1 is the last a stream may have.
func TestStreamChunkLimit(t *testing.T) {
	prefix, key := make([]byte, 64), make([]byte, dataKeyLen)
	sealer, err := newStreamCipher(key, prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	opener, err := newStreamCipher(key, prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	sealer.next, opener.next = math.MaxUint32, math.MaxUint32
	ct, err := sealer.seal(nil, []byte("x"), false)
	if err != nil {
		t.Fatalf("seal(chunk 2^32-1) err = %v, want nil", err)
	}
	if pt, err := opener.open(nil, ct, false); err != nil || string(pt) != "x" {
		t.Fatalf("open(chunk 2^32-1) = %q, %v, want x, nil", pt, err)
	}
	if _, err := sealer.seal(nil, []byte("x"), true); !errors.Is(err, errStreamTooLong) {
		t.Errorf("seal(chunk 2^32) err = %v, want errStreamTooLong", err)
	}
	if _, err := opener.open(nil, ct, true); !errors.Is(err, errStreamTooLong) {
		t.Errorf("open(chunk 2^32) err = %v, want errStreamTooLong", err)
	}
}

// TestStreamFormat opens EncryptStream's output as the format's
// documentation says, and pins the bytes of one stream.
func TestStreamFormat(t *testing.T) {
	ctx := context.Background()
	l, kms := newFuzzLocal(t, CachePolicy{})
	keyContext := []byte("tenant=7")
	e, err := l.Encryptor("payments", keyContext)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := kms.GenerateDataKey(ctx, &tresorv1.GenerateDataKeyRequest{Key: "payments", AssociatedData: keyContext})
	if err != nil {
		t.Fatal(err)
	}
	pt := fuzzPattern(2*streamDefaultChunk + 10)
	aad := []byte("invoice 7")
	var out bytes.Buffer
	if _, err := e.EncryptStream(ctx, &out, bytes.NewReader(pt), aad); err != nil {
		t.Fatalf("EncryptStream() err = %v", err)
	}
	b := out.Bytes()

	wk := dk.GetCiphertext()
	hdr := append([]byte("TSDK\x01\x02\x01"), byte(len(wk)>>8), byte(len(wk)))
	hdr = append(append(hdr, wk...), 0, byte(len(keyContext)))
	hdr = append(append(hdr, keyContext...), 0, 1, 0, 0) // chunk size 65536
	if !bytes.HasPrefix(b, hdr) {
		t.Fatalf("EncryptStream() starts %x, want %x", b[:len(hdr)], hdr)
	}
	prefix := b[:len(hdr)+32]
	salt := prefix[len(hdr):]
	digest := sha256.Sum256(append(bytes.Clone(prefix), aad...))
	key, err := hkdf.Key(sha256.New, dk.GetPlaintext(), salt, "tresor sdk stream v1"+string(digest[:]), 32)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := newGCM(key)
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	rest := b[len(prefix):]
	for i, size := range []int{streamDefaultChunk, streamDefaultChunk, 10} {
		nonce := make([]byte, 12)
		binary.BigEndian.PutUint32(nonce[7:], uint32(i))
		if i == 2 {
			nonce[11] = 1
		}
		if len(rest) < size+16 {
			t.Fatalf("chunk %d: %d bytes left, want %d", i, len(rest), size+16)
		}
		chunk, err := aead.Open(nil, nonce, rest[:size+16], nil)
		if err != nil {
			t.Fatalf("chunk %d does not open as documented: %v", i, err)
		}
		got, rest = append(got, chunk...), rest[size+16:]
	}
	if len(rest) != 0 || !bytes.Equal(got, pt) {
		t.Fatalf("the documented reading gives %d bytes and leaves %d, want the %d sealed and none", len(got), len(rest), len(pt))
	}

	// One stream's bytes, fixed: the format is version 1 for good.
	out.Reset()
	random := mrand.NewChaCha8([32]byte{'k', 'a', 't'})
	if _, err := e.encryptStream(ctx, &out, bytes.NewReader(fuzzPattern(5000)), aad, streamMinChunk, random); err != nil {
		t.Fatalf("encryptStream() err = %v", err)
	}
	sum := sha256.Sum256(out.Bytes())
	const want = "3d6e67b0adb305330a1a538a5cdc95d6f5421ec9efdcde79129fd163d63c6ff1"
	if got := hex.EncodeToString(sum[:]); got != want {
		t.Errorf("SHA-256 of a fixed stream = %s, want %s", got, want)
	}
}

// TestStreamNoPerChunkAllocs: a stream allocates the same whatever its
// number of chunks.
func TestStreamNoPerChunkAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	ctx := context.Background()
	l, _ := newFuzzLocal(t, CachePolicy{})
	e := streamEncryptor(t, l, "payments")
	allocs := func(size int) (enc, dec float64) {
		pt := fuzzPattern(size)
		stream := sealStream(t, e, pt, nil, streamMinChunk)
		r := bytes.NewReader(pt)
		enc = testing.AllocsPerRun(20, func() {
			r.Reset(pt)
			if _, err := e.encryptStream(ctx, io.Discard, r, nil, streamMinChunk, rand.Reader); err != nil {
				t.Fatal(err)
			}
		})
		sr := bytes.NewReader(stream)
		dec = testing.AllocsPerRun(20, func() {
			sr.Reset(stream)
			if _, err := e.DecryptStream(ctx, io.Discard, sr, nil); err != nil {
				t.Fatal(err)
			}
		})
		return enc, dec
	}
	enc1, dec1 := allocs(10)
	enc64, dec64 := allocs(64*streamMinChunk + 10)
	if enc64 != enc1 || dec64 != dec1 {
		t.Errorf("allocations for 1 chunk and 65 chunks: EncryptStream %v and %v, DecryptStream %v and %v, want the same", enc1, enc64, dec1, dec64)
	}
}

func BenchmarkEncryptStream1MiB(b *testing.B) {
	l, _ := newFuzzLocal(b, CachePolicy{})
	e, err := l.Encryptor("payments", nil)
	if err != nil {
		b.Fatal(err)
	}
	pt := fuzzPattern(1 << 20)
	r := bytes.NewReader(pt)
	ctx := context.Background()
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(pt)
		if _, err := e.EncryptStream(ctx, io.Discard, r, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecryptStream1MiB(b *testing.B) {
	l, _ := newFuzzLocal(b, CachePolicy{})
	e, err := l.Encryptor("payments", nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var stream bytes.Buffer
	if _, err := e.EncryptStream(ctx, &stream, bytes.NewReader(fuzzPattern(1<<20)), nil); err != nil {
		b.Fatal(err)
	}
	r := bytes.NewReader(stream.Bytes())
	b.SetBytes(1 << 20)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(stream.Bytes())
		if _, err := e.DecryptStream(ctx, io.Discard, r, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawGCMChunks1MiB is the floor for the two above: the same
// 64 KiB chunks copied into a buffer and sealed in place with AES-256-GCM.
func BenchmarkRawGCMChunks1MiB(b *testing.B) {
	aead, err := newGCM(make([]byte, dataKeyLen))
	if err != nil {
		b.Fatal(err)
	}
	pt := fuzzPattern(1 << 20)
	buf := make([]byte, streamDefaultChunk+tagLen)
	nonce := make([]byte, nonceLen)
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		for i := 0; i < len(pt); i += streamDefaultChunk {
			binary.BigEndian.PutUint32(nonce[7:], uint32(i/streamDefaultChunk))
			n := copy(buf, pt[i:i+streamDefaultChunk])
			aead.Seal(buf[:0], nonce, buf[:n], nil)
		}
	}
}
