package fields

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDocument(t *testing.T) {
	tests := []struct {
		name, doc string
		want      error
	}{
		{"ok", `{"a":[1,-2.5e+10,"x\u00e9\n",true,false,null,{}]}`, nil},
		{"not an object", `[1,2]`, ErrInvalidDocument},
		{"truncated", `{"a":`, ErrInvalidDocument},
		{"trailing", `{"a":1} x`, ErrInvalidDocument},
		{"two values", `{"a":1}{}`, ErrInvalidDocument},
		{"bad number", `{"a":01}`, ErrInvalidDocument},
		{"bad literal", `{"a":nul}`, ErrInvalidDocument},
		{"control char", "{\"a\":\"x\x01\"}", ErrInvalidDocument},
		{"bad escape", `{"a":"\q"}`, ErrInvalidDocument},
		{"bad utf8", "{\"a\":\"\xff\"}", ErrInvalidDocument},
		{"trailing comma", `{"a":1,}`, ErrInvalidDocument},
		{"duplicate key", `{"a":1,"b":2,"a":3}`, ErrInvalidDocument},
		{"duplicate escaped key", `{"a":1,"\u0061":2}`, ErrInvalidDocument},
		{"duplicate in big object", `{"k1":1,"k2":1,"k3":1,"k4":1,"k5":1,"k6":1,"k7":1,"k8":1,"k9":1,"k1":2}`, ErrInvalidDocument},
		{"33 deep", `{"a":` + strings.Repeat("[", 32) + strings.Repeat("]", 32) + `}`, ErrDocumentTooDeep},
		{"32 deep", `{"a":` + strings.Repeat("[", 31) + strings.Repeat("]", 31) + `}`, nil},
		{"too deep then garbage", `{"a":` + strings.Repeat("[", 40) + `!!!`, ErrDocumentTooDeep},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := parseDocument([]byte(tt.doc), 32)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("parseDocument(%.40q) err = %v, want %v", tt.doc, err, tt.want)
			}
			if err == nil {
				if got := string(encode(nil, &n)); got != tt.doc {
					t.Errorf("encode(parseDocument(%q)) = %q, want the input", tt.doc, got)
				}
			}
		})
	}
}
