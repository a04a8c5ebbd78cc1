package store

import (
	"errors"
	"testing"
)

func TestPageToken(t *testing.T) {
	for _, name := range []string{"a", "payments/card-pan", "clé ✓", "k1:", "a b?c#d"} {
		t.Run(name, func(t *testing.T) {
			token := encodePageToken(name)
			got, err := decodePageToken(token)
			if err != nil || got != name {
				t.Errorf("decodePageToken(%q) = %q, %v; want %q, nil", token, got, err, name)
			}
		})
	}
}

func TestDecodePageTokenInvalid(t *testing.T) {
	tests := []struct {
		name  string
		token string
	}{
		{"not base64", "!!!"},
		{"padded", encodePageToken("a") + "="},
		{"no prefix", "YWJj"},                // "abc"
		{"prefix only", encodePageToken("")}, // "k1:"
		{"not UTF-8", "azE6_w"},              // "k1:\xff"
		{"standard alphabet", "azE6+/8"},     // '+' and '/' are not base64url
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := decodePageToken(tt.token); !errors.Is(err, ErrInvalidPageToken) {
				t.Errorf("decodePageToken(%q) = %q, %v; want ErrInvalidPageToken", tt.token, got, err)
			}
		})
	}
}

func TestPageSize(t *testing.T) {
	tests := []struct{ in, want int }{
		{-5, DefaultPageSize}, {0, DefaultPageSize}, {1, 1}, {MaxPageSize, MaxPageSize}, {MaxPageSize + 1, MaxPageSize},
	}
	for _, tt := range tests {
		if got := pageSize(tt.in); got != tt.want {
			t.Errorf("pageSize(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}
}
