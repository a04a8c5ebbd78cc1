package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestParseTier(t *testing.T) {
	tests := []struct {
		in      string
		want    Tier
		wantErr bool
	}{
		{"public", TierPublic, false},
		{"internal", TierInternal, false},
		{"confidential", TierConfidential, false},
		{"restricted", TierRestricted, false},
		{"Restricted", 0, true},
		{"secret", 0, true},
		{"", 0, true},
		{" public", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTier(tc.in)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("ParseTier(%q) = %v, %v, want %v, err %v", tc.in, got, err, tc.want, tc.wantErr)
			}
			if tc.wantErr && !errors.Is(err, ErrInvalidTier) {
				t.Errorf("ParseTier(%q) err = %v, want ErrInvalidTier", tc.in, err)
			}
			if !tc.wantErr && got.String() != tc.in {
				t.Errorf("ParseTier(%q).String() = %q, want %q", tc.in, got.String(), tc.in)
			}
		})
	}
	if TierPublic >= TierInternal || TierInternal >= TierConfidential || TierConfidential >= TierRestricted {
		t.Errorf("tiers are not ordered public < internal < confidential < restricted")
	}
	if TierPublic != 1 || TierRestricted != 4 {
		t.Errorf("TierPublic, TierRestricted = %d, %d, want 1, 4 (the tier_level policies see)", TierPublic, TierRestricted)
	}
	for _, bad := range []Tier{0, 5, -1} {
		if got, want := bad.String(), "Tier("; !strings.HasPrefix(got, want) {
			t.Errorf("Tier(%d).String() = %q, want prefix %q", int(bad), got, want)
		}
	}
}

func TestParseTransactionValue(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" for an error
	}{
		{"12500.00", "12500.0"},
		{"12500", "12500.0"},
		{"12500.5", "12500.5"},
		{"0.0001", "0.0001"},
		{"0", "0.0"},
		{"007.10", "7.1"},
		{"922337203685477.5807", "922337203685477.5807"},
		{"922337203685477.5808", ""},
		{"1000000000000000", ""},
		{"99999999999999999999999.0", ""},
		{"1.00001", ""},
		{"-5.00", ""},
		{"+5.00", ""},
		{"1e3", ""},
		{"1,000.00", ""},
		{" 1.0", ""},
		{"1.", ""},
		{".5", ""},
		{"1.2.3", ""},
		{"1.-2", ""},
		{"", ""},
		{"NaN", ""},
		{"１.0", ""}, // a full-width digit
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTransactionValue(tc.in)
			if tc.want == "" {
				if !errors.Is(err, ErrInvalidTransactionValue) {
					t.Errorf("ParseTransactionValue(%q) = %q, %v, want ErrInvalidTransactionValue", tc.in, got, err)
				}
				if tc.in != "" && strings.Contains(err.Error(), tc.in) {
					t.Errorf("ParseTransactionValue(%q) err = %q, repeats the value", tc.in, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseTransactionValue(%q) = %q, %v, want %q, nil", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestResourceKindString(t *testing.T) {
	for k, want := range map[ResourceKind]string{ResourceKey: "key", ResourceService: "service", 0: "ResourceKind(0)"} {
		if got := k.String(); got != want {
			t.Errorf("ResourceKind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}
