package secret

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretsNeverPrint(t *testing.T) {
	const value = "hunter2-s3cr3t"
	type wrapper struct {
		B Bytes
		S String
	}
	w := wrapper{B: Bytes(value), S: String(value)}

	var logBuf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logBuf, nil))
	logger.Info("msg", "b", w.B, "s", w.S)
	var textBuf bytes.Buffer
	slog.New(slog.NewTextHandler(&textBuf, nil)).Info("msg", "b", w.B, "s", w.S, "w", w)

	jsonOut, err := json.Marshal(w)
	if err != nil {
		t.Fatalf("json.Marshal(wrapper) err = %v, want nil", err)
	}

	tests := []struct {
		name string
		got  string
	}{
		{"%v bytes", fmt.Sprintf("%v", w.B)},
		{"%s bytes", fmt.Sprintf("%s", w.B)},
		{"%x bytes", fmt.Sprintf("%x", w.B)},
		{"%q bytes", fmt.Sprintf("%q", w.B)},
		{"%#v bytes", fmt.Sprintf("%#v", w.B)},
		{"%v string", fmt.Sprintf("%v", w.S)},
		{"%q string", fmt.Sprintf("%q", w.S)},
		{"%#v string", fmt.Sprintf("%#v", w.S)},
		{"%+v struct", fmt.Sprintf("%+v", w)},
		{"%#v struct", fmt.Sprintf("%#v", w)},
		{"error wrap", fmt.Errorf("failed with %v: %w", w.S, errors.New("x")).Error()},
		{"slog json", logBuf.String()},
		{"slog text", textBuf.String()},
		{"json", string(jsonOut)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if strings.Contains(tt.got, value) {
				t.Errorf("%s printed %q, which contains the secret", tt.name, tt.got)
			}
			if !strings.Contains(tt.got, Redacted) {
				t.Errorf("%s printed %q, want it to contain %q", tt.name, tt.got, Redacted)
			}
		})
	}
}

func TestBytesWipe(t *testing.T) {
	b := Bytes("key material")
	b.Wipe()
	for i, c := range b {
		if c != 0 {
			t.Fatalf("after Wipe, b[%d] = %#x, want 0", i, c)
		}
	}
}
