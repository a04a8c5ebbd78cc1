package fields

import "testing"

func TestDetectors(t *testing.T) {
	tests := []struct {
		in   string
		want detectorSet
	}{
		// Cards: Luhn and issuer prefix.
		{"4111111111111111", detCard},
		{"card 4111 1111 1111 1111 thanks", detCard},
		{"5500-0000-0000-0004", detCard},
		{"378282246310005", detCard},
		{"4111111111111112", 0},       // bad Luhn
		{"1234567812345670", 0},       // Luhn-valid, no issuer
		{"41111111111", 0},            // too short
		{"A4111111111111111", 0},      // glued to a letter
		{"4111111111111111111111", 0}, // too long
		// IBAN: mod 97 and length.
		{"DE89370400440532013000", detIBAN},
		{"pay DE89 3704 0044 0532 0130 00 now", detIBAN},
		{"GB82WEST12345698765432", detIBAN},
		{"FR1420041010050500013M02606", detIBAN},
		{"DE89370400440532013001", 0}, // bad checksum
		{"DE8937040044053201300", 0},  // too short for DE
		// SSN: invalid ranges.
		{"ssn 123-45-6789", detSSN},
		{"000-45-6789", 0},
		{"666-45-6789", 0},
		{"900-45-6789", 0},
		{"123-00-6789", 0},
		{"123-45-0000", 0},
		{"123456789", 0},
		// EIN: valid prefixes.
		{"EIN 12-3456789", detEIN},
		{"07-3456789", 0},
		{"89-3456789", 0},
		// E-mail.
		{"write to jane.doe+bank@example.co.uk", detEmail},
		{"a@b.io", detEmail},
		{"user@localhost", 0},
		{"@example.com", 0},
		{"x@example.c", 0},
		// Phones versus plain numbers.
		{"+44 20 7946 0958", detPhone},
		{"+14155552671", detPhone},
		{"(415) 555-2671", detPhone},
		{"415-555-2671", detPhone},
		{"4155552671", 0}, // a plain number
		{"2024-01-15", 0}, // a date
		{"+12345", 0},     // too short
		{"123456", 0},     // an amount
		{"1,234,567.89", 0},
		{"order 20240115 shipped", 0},
	}
	all := detCard | detIBAN | detSSN | detEIN | detEmail | detPhone
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := detect(tt.in, all); got != tt.want {
				t.Errorf("detect(%q) = %06b, want %06b", tt.in, got, tt.want)
			}
		})
	}
}

func TestMasks(t *testing.T) {
	tests := []struct {
		in   string
		spec MaskSpec
		want string
	}{
		{"4111 1111 1111 1111", MaskSpec{MaskCard, 4}, "**** **** **** 1111"},
		{"4111111111111111", MaskSpec{MaskCard, 4}, "************1111"},
		{"4111-1111-1111-1111", MaskSpec{MaskCard, 0}, "****-****-****-****"},
		{"DE89 3704 0044 0532 0130 00", MaskSpec{MaskIBAN, 4}, "DE** **** **** **** **30 00"},
		{"DE89370400440532013000", MaskSpec{MaskIBAN, 4}, "DE****************3000"},
		{"jane.doe@example.com", MaskSpec{MaskEmail, 4}, "j***@example.com"},
		{"not-an-email", MaskSpec{MaskEmail, 4}, "************"},
		{"123-45-6789", MaskSpec{MaskDigits, 4}, "***-**-6789"},
		{"Müller-Lüdenscheidt", MaskSpec{MaskText, 3}, "****************idt"},
		{"1234", MaskSpec{MaskDigits, 4}, "****"}, // too short to keep anything
		{"secret", MaskSpec{MaskText, 0}, "******"},
	}
	for _, tt := range tests {
		t.Run(string(tt.spec.Format)+"/"+tt.want, func(t *testing.T) {
			if got := applyMask(tt.in, tt.spec); got != tt.want {
				t.Errorf("applyMask(%+v) = %q, want %q", tt.spec, got, tt.want)
			}
		})
	}
}
