package fields

import (
	"strings"
	"unicode/utf8"
)

// applyMask masks s by spec. It never returns more of s than spec keeps; a
// value too short to keep anything safely is masked whole.
func applyMask(s string, spec MaskSpec) string {
	switch spec.Format {
	case MaskCard, MaskDigits:
		return maskClass(s, spec.KeepLast, isDigitRune, 0)
	case MaskIBAN:
		// The country code and the last KeepLast letters or digits stay.
		return maskClass(s, spec.KeepLast, isAlnumRune, 2)
	case MaskEmail:
		at := strings.LastIndexByte(s, '@')
		if at <= 0 || at == len(s)-1 {
			return maskClass(s, 0, func(rune) bool { return true }, 0)
		}
		r, _ := utf8.DecodeRuneInString(s)
		return string(r) + "***" + s[at:]
	default:
		return maskClass(s, spec.KeepLast, func(rune) bool { return true }, 0)
	}
}

func isDigitRune(r rune) bool { return r >= '0' && r <= '9' }

func isAlnumRune(r rune) bool {
	return (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
}

// maskClass replaces the runes of class with '*', except the first keepFirst
// and the last keepLast of them; other runes stay. If keeping them would show
// half or more of the class's runes, everything is masked.
func maskClass(s string, keepLast int, class func(rune) bool, keepFirst int) string {
	total := 0
	for _, r := range s {
		if class(r) {
			total++
		}
	}
	if 2*(keepLast+keepFirst) >= total {
		keepLast, keepFirst = 0, 0
	}
	var b strings.Builder
	b.Grow(len(s))
	i := 0
	for _, r := range s {
		if !class(r) {
			b.WriteRune(r)
			continue
		}
		if i < keepFirst || i >= total-keepLast {
			b.WriteRune(r)
		} else {
			b.WriteByte('*')
		}
		i++
	}
	return b.String()
}
