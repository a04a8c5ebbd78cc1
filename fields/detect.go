package fields

import "strings"

// detectorSet is a set of detectors, one bit each.
type detectorSet uint8

const (
	detCard detectorSet = 1 << iota
	detIBAN
	detSSN
	detEIN
	detEmail
	detPhone
)

func detectorBit(name string) (detectorSet, bool) {
	for i, n := range allDetectors {
		if n == name {
			return 1 << i, true
		}
	}
	return 0, false
}

// detect returns the detectors in set that find something in s.
func detect(s string, set detectorSet) detectorSet {
	var found detectorSet
	if set&(detCard|detSSN|detEIN|detPhone) != 0 {
		found |= scanNumberRuns(s, set)
	}
	if set&detIBAN != 0 && hasIBAN(s) {
		found |= detIBAN
	}
	if set&detEmail != 0 && hasEmail(s) {
		found |= detEmail
	}
	return found
}

func isAlnum(c byte) bool {
	return isDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isRunChar(c byte) bool {
	return isDigit(c) || c == ' ' || c == '-' || c == '.' || c == '(' || c == ')' || c == '+'
}

// scanNumberRuns splits s into runs of digits and separators that stand
// apart from letters, and checks each run for cards, SSNs, EINs and phones.
func scanNumberRuns(s string, set detectorSet) detectorSet {
	var found detectorSet
	for i := 0; i < len(s); {
		if !isRunChar(s[i]) {
			i++
			continue
		}
		j := i
		for j < len(s) && isRunChar(s[j]) {
			j++
		}
		run := trimRun(s[i:j])
		start := i + strings.Index(s[i:j], run)
		end := start + len(run)
		i = j
		// A run glued to letters ("A1234567") is an identifier, not a number.
		if run == "" || (start > 0 && isAlnum(s[start-1])) || (end < len(s) && isAlnum(s[end])) {
			continue
		}
		if set&detCard != 0 && isCard(run) {
			found |= detCard
		}
		if set&detSSN != 0 && isSSN(run) {
			found |= detSSN
		}
		if set&detEIN != 0 && isEIN(run) {
			found |= detEIN
		}
		if set&detPhone != 0 && isPhone(run) {
			found |= detPhone
		}
	}
	return found
}

// trimRun drops separators at the ends of a run, keeping a leading '+' or
// '(' and a trailing ')' that belong to a phone number.
func trimRun(r string) string {
	for len(r) > 0 && !isDigit(r[0]) && r[0] != '+' && r[0] != '(' {
		r = r[1:]
	}
	for len(r) > 0 && !isDigit(r[len(r)-1]) && r[len(r)-1] != ')' {
		r = r[:len(r)-1]
	}
	return r
}

// digitsOf returns the digits of r and whether every other character is one
// of seps, never two separators in a row.
func digitsOf(r string, seps string, buf []byte) ([]byte, bool) {
	prevSep := true
	for i := 0; i < len(r); i++ {
		c := r[i]
		if isDigit(c) {
			buf = append(buf, c)
			prevSep = false
			continue
		}
		if prevSep || !containsByte(seps, c) {
			return nil, false
		}
		prevSep = true
	}
	return buf, !prevSep
}

func containsByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

// isCard: 13 to 19 digits, spaces or dashes between groups, a known issuer
// prefix, and a valid Luhn check digit.
func isCard(r string) bool {
	var buf [32]byte
	d, ok := digitsOf(r, " -", buf[:0])
	if !ok || len(d) < 13 || len(d) > 19 {
		return false
	}
	return knownIIN(d) && luhn(d)
}

// knownIIN reports whether digits start like a card of a major network.
func knownIIN(d []byte) bool {
	p2 := int(d[0]-'0')*10 + int(d[1]-'0')
	p4 := p2*100 + int(d[2]-'0')*10 + int(d[3]-'0')
	switch {
	case d[0] == '4': // Visa
		return true
	case p2 >= 51 && p2 <= 55, p4 >= 2221 && p4 <= 2720: // Mastercard
		return true
	case p2 == 34 || p2 == 37: // American Express
		return true
	case p4 == 6011 || p2 == 65 || (p4 >= 6440 && p4 <= 6499): // Discover
		return true
	case p2 == 35: // JCB
		return true
	case p2 == 36 || p2 == 38 || p2 == 30: // Diners Club
		return true
	case p2 == 62: // UnionPay
		return true
	case p2 == 50 || (p2 >= 56 && p2 <= 69): // Maestro
		return true
	}
	return false
}

// luhn checks the Luhn (mod 10) check digit.
func luhn(d []byte) bool {
	sum := 0
	double := false
	for i := len(d) - 1; i >= 0; i-- {
		n := int(d[i] - '0')
		if double {
			n *= 2
			if n > 9 {
				n -= 9
			}
		}
		sum += n
		double = !double
	}
	return sum%10 == 0
}

// isSSN: AAA-GG-SSSS, area not 000, 666 or 900-999, group not 00, serial
// not 0000.
func isSSN(r string) bool {
	if len(r) != 11 || r[3] != '-' || r[6] != '-' {
		return false
	}
	for _, i := range [...]int{0, 1, 2, 4, 5, 7, 8, 9, 10} {
		if !isDigit(r[i]) {
			return false
		}
	}
	area, group, serial := r[0:3], r[4:6], r[7:11]
	return area != "000" && area != "666" && area[0] != '9' && group != "00" && serial != "0000"
}

// validEINPrefix lists the IRS's EIN prefixes (campus and internet
// assignments).
var validEINPrefix = func() (v [100]bool) {
	for _, rg := range [][2]int{{1, 6}, {10, 16}, {20, 27}, {30, 39}, {40, 48}, {50, 68}, {71, 77}, {80, 88}, {90, 95}, {98, 99}} {
		for i := rg[0]; i <= rg[1]; i++ {
			v[i] = true
		}
	}
	return v
}()

// isEIN: NN-NNNNNNN with a prefix the IRS assigns.
func isEIN(r string) bool {
	if len(r) != 10 || r[2] != '-' {
		return false
	}
	for i := 0; i < len(r); i++ {
		if i != 2 && !isDigit(r[i]) {
			return false
		}
	}
	return validEINPrefix[int(r[0]-'0')*10+int(r[1]-'0')]
}

// isPhone: "+" then 8 to 15 digits (E.164) with optional separators, or a
// national number of 10 or 11 digits written in at least three groups, such
// as (555) 123-4567 or 020 7946 0958. A plain run of digits is not a phone:
// too many account numbers and amounts look like one.
func isPhone(r string) bool {
	plus := r[0] == '+'
	body := r
	if plus {
		body = r[1:]
	}
	digits, groups := 0, 0
	inDigits := false
	parens := 0
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case isDigit(c):
			digits++
			if !inDigits {
				groups++
			}
			inDigits = true
			continue
		case c == '(':
			parens++
			if parens > 1 {
				return false
			}
		case c == ')':
			parens--
			if parens < 0 {
				return false
			}
		case c == ' ' || c == '-' || c == '.':
		default:
			return false
		}
		inDigits = false
	}
	if parens != 0 || body == "" || !isDigit(body[len(body)-1]) {
		return false
	}
	if plus {
		return digits >= 8 && digits <= 15 && body[0] != '0'
	}
	return digits >= 10 && digits <= 11 && groups >= 3
}

// ibanLengths are the IBAN lengths of common countries (ISO 13616 registry).
var ibanLengths = map[string]int{
	"AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
	"CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
	"FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
	"HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
	"LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
	"NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
	"SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}

func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }

// hasIBAN finds an IBAN: two uppercase letters, two check digits, then
// letters and digits (single spaces allowed between groups), of the
// country's length (15 to 34 for countries not listed), passing the ISO
// 13616 mod-97 check.
func hasIBAN(s string) bool {
	for i := 0; i+4 <= len(s); i++ {
		if !isUpper(s[i]) || !isUpper(s[i+1]) || !isDigit(s[i+2]) || !isDigit(s[i+3]) {
			continue
		}
		if i > 0 && isAlnum(s[i-1]) {
			continue
		}
		var buf [34]byte
		n := 0
		j := i
		for j < len(s) && n < len(buf) {
			c := s[j]
			if c == ' ' && j+1 < len(s) && isAlnum(s[j+1]) && n > 0 {
				j++
				continue
			}
			if !isDigit(c) && !isUpper(c) {
				break
			}
			buf[n] = c
			n++
			j++
		}
		want, known := ibanLengths[string(buf[:2])]
		switch {
		case known && n >= want:
			if ibanChecksum(buf[:want]) {
				return true
			}
		case !known && n >= 15 && n <= 34:
			if ibanChecksum(buf[:n]) {
				return true
			}
		}
	}
	return false
}

// ibanChecksum computes mod 97 of the IBAN with its first four characters
// moved to the end and letters as 10..35; a valid IBAN gives 1.
func ibanChecksum(b []byte) bool {
	if len(b) < 15 {
		return false
	}
	rem := 0
	add := func(c byte) {
		if isDigit(c) {
			rem = (rem*10 + int(c-'0')) % 97
		} else {
			v := int(c-'A') + 10
			rem = (rem*100 + v) % 97
		}
	}
	for _, c := range b[4:] {
		add(c)
	}
	for _, c := range b[:4] {
		add(c)
	}
	return rem == 1
}

func isEmailLocal(c byte) bool {
	return isAlnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'
}

// hasEmail finds local@domain.tld: a local part, a domain of dot-separated
// labels, and a top-level domain of two or more letters.
func hasEmail(s string) bool {
	for at := 0; at < len(s); at++ {
		if s[at] != '@' {
			continue
		}
		i := at
		for i > 0 && isEmailLocal(s[i-1]) {
			i--
		}
		if i == at || s[i] == '.' || s[at-1] == '.' {
			continue
		}
		j := at + 1
		for j < len(s) && (isAlnum(s[j]) || s[j] == '-' || s[j] == '.') {
			j++
		}
		domain := s[at+1 : j]
		for len(domain) > 0 && domain[len(domain)-1] == '.' {
			domain = domain[:len(domain)-1]
		}
		if validDomain(domain) {
			return true
		}
	}
	return false
}

func validDomain(d string) bool {
	labels := 0
	start := 0
	for i := 0; i <= len(d); i++ {
		if i < len(d) && d[i] != '.' {
			continue
		}
		l := d[start:i]
		if l == "" || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		labels++
		if i == len(d) {
			if len(l) < 2 {
				return false
			}
			for k := 0; k < len(l); k++ {
				if isDigit(l[k]) || l[k] == '-' {
					return false
				}
			}
		}
		start = i + 1
	}
	return labels >= 2
}
