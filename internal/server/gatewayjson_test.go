package server

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// jsonMarshalers returns the REST marshaler and the JSONPb it replaced,
// with the same options.
func jsonMarshalers() (*gatewayJSON, *runtime.JSONPb) {
	pb := runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: false},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}
	return &gatewayJSON{JSONPb: pb}, &pb
}

func TestGatewayJSONMarshalMatchesJSONPb(t *testing.T) {
	ours, theirs := jsonMarshalers()
	ts := timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC))
	tests := []struct {
		name string
		v    any
	}{
		{"encrypt response", &tresorv1.EncryptResponse{Ciphertext: "tresor:v1:abc", KeyVersion: 7}},
		{"decrypt response bytes", &tresorv1.DecryptResponse{Plaintext: []byte{0, 0xff, 0xfe, 'a'}, Key: "k", KeyVersion: 1}},
		{"empty message", &tresorv1.EncryptResponse{}},
		{"key with well-known types, map, enum", &tresorv1.Key{
			Name: "keys/k", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM, PrimaryVersion: 2,
			RotationPeriod: durationpb.New(90 * time.Second), Labels: map[string]string{"b": "2", "a": "1"},
			Versions: []*tresorv1.KeyVersion{{Version: 1, CreateTime: ts}, {Version: 2, CreateTime: ts}}, CreateTime: ts,
		}},
		{"int64 as a string", wrapperspb.Int64(-1 << 60)},
		{"non-message", map[string]int{"a": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ours.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			want, err := theirs.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Marshal() = %s, JSONPb gives %s", got, want)
			}
		})
	}
}

func TestGatewayJSONDecode(t *testing.T) {
	ours, theirs := jsonMarshalers()
	tests := []struct {
		name    string
		body    string
		want    proto.Message // nil: an error
		wantEOF bool          // empty body: io.EOF, the message left empty
		differs bool          // JSONPb accepted it; documented difference
	}{
		{name: "encrypt request", body: `{"plaintext":"AP/+YQ==","associatedData":"YWQ="}`, want: &tresorv1.EncryptRequest{Plaintext: []byte{0, 0xff, 0xfe, 'a'}, AssociatedData: []byte("ad")}},
		{name: "proto field names", body: `{"plaintext":"cA==","associated_data":"YWQ="}`, want: &tresorv1.EncryptRequest{Plaintext: []byte("p"), AssociatedData: []byte("ad")}},
		{name: "url-safe base64", body: `{"plaintext":"_-8"}`, want: &tresorv1.EncryptRequest{Plaintext: []byte{0xff, 0xef}}},
		{name: "surrounding whitespace", body: " \n\t{\"plaintext\":\"cA==\"}\r\n ", want: &tresorv1.EncryptRequest{Plaintext: []byte("p")}},
		{name: "empty object", body: `{}`, want: &tresorv1.EncryptRequest{}},
		{name: "empty body", body: ``, wantEOF: true},
		{name: "whitespace body", body: " \n ", wantEOF: true},
		{name: "unknown field", body: `{"plaintext":"cA==","surprise":1}`},
		{name: "malformed", body: `{"plaintext":`},
		{name: "not base64", body: `{"plaintext":"***"}`},
		{name: "null", body: `null`},
		{name: "array", body: `[]`},
		{name: "trailing value", body: `{"plaintext":"cA=="}{"plaintext":"cQ=="}`, differs: true},
		{name: "trailing garbage", body: `{"plaintext":"cA=="} x`, differs: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := &tresorv1.EncryptRequest{}
			err := ours.NewDecoder(strings.NewReader(tt.body)).Decode(got)
			old := &tresorv1.EncryptRequest{}
			oldErr := theirs.NewDecoder(strings.NewReader(tt.body)).Decode(old)
			switch {
			case tt.wantEOF:
				if !errors.Is(err, io.EOF) || !proto.Equal(got, &tresorv1.EncryptRequest{}) {
					t.Errorf("Decode() = %v, %v; want io.EOF and an empty message", got, err)
				}
			case tt.want == nil || tt.differs:
				if err == nil {
					t.Errorf("Decode() = %v, nil; want an error", got)
				}
			default:
				if err != nil || !proto.Equal(got, tt.want) {
					t.Errorf("Decode() = %v, %v; want %v", got, err, tt.want)
				}
			}
			// Everything but the documented difference is as JSONPb decodes it.
			if tt.differs {
				return
			}
			if (err == nil) != (oldErr == nil) || errors.Is(err, io.EOF) != errors.Is(oldErr, io.EOF) || (err == nil && !proto.Equal(got, old)) {
				t.Errorf("Decode() = %v, %v; JSONPb gives %v, %v", got, err, old, oldErr)
			}
		})
	}
}

func TestGatewayJSONDecodeKeyTypes(t *testing.T) {
	ours, theirs := jsonMarshalers()
	body := `{"rotationPeriod":"3600s","minDecryptionVersion":2,"labels":{"owner":"payments"},"updateMask":"rotationPeriod,labels"}`
	got, want := &tresorv1.UpdateKeyRequest{}, &tresorv1.UpdateKeyRequest{}
	if err := ours.NewDecoder(strings.NewReader(body)).Decode(got); err != nil {
		t.Fatal(err)
	}
	if err := theirs.NewDecoder(strings.NewReader(body)).Decode(want); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) || got.GetRotationPeriod().AsDuration() != time.Hour ||
		!proto.Equal(got.GetUpdateMask(), &fieldmaskpb.FieldMask{Paths: []string{"rotation_period", "labels"}}) {
		t.Errorf("Decode() = %v, want %v", got, want)
	}
}

// TestGatewayJSONBodyBufferReuse checks that a decoded message keeps no
// reference to the pooled body buffer: decoding another body must not
// change it.
func TestGatewayJSONBodyBufferReuse(t *testing.T) {
	ours, _ := jsonMarshalers()
	first := &tresorv1.ReEncryptRequest{}
	if err := ours.NewDecoder(strings.NewReader(`{"ciphertext":"aaaaaaaa","destinationKey":"bbbb"}`)).Decode(first); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		_ = ours.NewDecoder(strings.NewReader(`{"ciphertext":"zzzzzzzz","destinationKey":"yyyy"}`)).Decode(&tresorv1.ReEncryptRequest{})
	}
	if first.GetCiphertext() != "aaaaaaaa" || first.GetDestinationKey() != "bbbb" {
		t.Errorf("first message changed to %v after later decodes", first)
	}
}
