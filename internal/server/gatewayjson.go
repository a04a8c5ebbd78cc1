package server

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/proto"
)

// gatewayJSON is the REST API's JSON marshaler: grpc-gateway's JSONPb
// (protojson, so field names, base64 bytes, int64 as strings and the refusal
// of unknown fields are exactly protojson's) with a cheaper request path.
//
// JSONPb's decoder scans a request body twice: encoding/json first reads
// the value into a json.RawMessage, byte by byte, and protojson then parses
// it again. Profiles of REST Encrypt put that pre-scan at about half of the
// decoding cost. gatewayJSON's decoder reads the body once (it is already
// bounded by MaxRequestBytes) and hands it to protojson directly. The one
// difference: data after the JSON value is refused (JSONPb ignored it), as
// any JSON parser refuses it.
type gatewayJSON struct {
	runtime.JSONPb
	bodies sync.Pool // *[]byte request-body buffers, wiped before reuse
}

// Marshal marshals a message with protojson without JSONPb's extra copy
// through a bytes.Buffer; anything else goes to JSONPb.
func (j *gatewayJSON) Marshal(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		return j.MarshalOptions.Marshal(m)
	}
	return j.JSONPb.Marshal(v)
}

// NewDecoder returns a decoder reading all of r for one message.
func (j *gatewayJSON) NewDecoder(r io.Reader) runtime.Decoder {
	return &gatewayJSONDecoder{j: j, r: r}
}

type gatewayJSONDecoder struct {
	j *gatewayJSON
	r io.Reader
}

// maxPooledBody bounds the bodies whose buffers are kept for reuse.
const maxPooledBody = 256 << 10

// Decode reads the whole body and unmarshals it into v with protojson. An
// empty (or all-whitespace) body gives io.EOF, as JSONPb's decoder does: the
// gateway then leaves the message empty. Values other than messages (never
// the case for tresor's `body: "*"` methods) go to JSONPb's decoder.
func (d *gatewayJSONDecoder) Decode(v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return d.j.JSONPb.NewDecoder(d.r).Decode(v)
	}
	bp, _ := d.j.bodies.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 4<<10)
		bp = &b
	}
	raw, err := readAllWiping(d.r, (*bp)[:0])
	defer func() {
		// The body holds plaintext: wipe it before the buffer is reused.
		clear(raw[:cap(raw)])
		if cap(raw) <= maxPooledBody {
			*bp = raw[:0]
			d.j.bodies.Put(bp)
		}
	}()
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return errBodyTooLarge
		}
		return errBodyUnreadable
	}
	// protojson copies what it keeps (strings, decoded bytes): the buffer
	// can be reused once Unmarshal returns.
	body := bytes.TrimLeft(raw, " \t\r\n")
	if len(body) == 0 {
		return io.EOF
	}
	if err := d.j.UnmarshalOptions.Unmarshal(body, m); err != nil {
		// Tell an unknown field from other errors by parsing again with
		// unknown fields allowed, not by reading protojson's message (which
		// quotes the body).
		lenient := d.j.UnmarshalOptions
		lenient.DiscardUnknown = true
		if lenient.Unmarshal(body, m.ProtoReflect().New().Interface()) == nil {
			return errUnknownField
		}
		return errBadJSON
	}
	return nil
}

// readAllWiping reads r to its end into b, growing it as needed and wiping
// each array it outgrows, so no copy of the body is left behind unwiped.
func readAllWiping(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			nb := make([]byte, len(b), 2*cap(b)+512)
			copy(nb, b)
			clear(b[:cap(b)])
			b = nb
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// Decode errors. protojson's own messages quote the offending value, which
// may be plaintext; these say what is wrong without repeating the body.
var (
	errBodyTooLarge   = errors.New("request body too large")
	errBodyUnreadable = errors.New("request body could not be read")
	errUnknownField   = errors.New("request body has a field this method does not define")
	errBadJSON        = errors.New("request body is not valid JSON for this method")
)
