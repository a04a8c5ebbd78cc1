package pkcs11

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/kms"
)

// Fuzz target for the PKCS#11 root-key URI. Run it with
//
//	go test -run '^$' -fuzz '^FuzzParseURI$' -fuzztime 1m -parallel 1 ./kms/pkcs11
//
// (or `make fuzz`); plain `go test` runs its seeds and any corpus under
// testdata/fuzz.

// FuzzParseURI: any string gives a URI or an error wrapping
// kms.ErrInvalidURI. An error quotes no attribute value, and never holds
// that of pin-value or pin-source (where a PIN may have been pasted). A URI that parses has its
// required parts, and its canonical form (String) parses back to the same
// URI and the same string.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=tresor;object=root-1" + testQuery,
		"PKCS11:object=root-1;token=tresor?pin-source=/etc/tresor/pin&module-path=" + testModule,
		"pkcs11:token=My%20Token;object=root%2F1%3B%25" + testQuery,
		"pkcs11:token=a%c3%a9;object=k" + testQuery,
		"pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=1a2b;token=tresor;object=root-1;id=%01%ff;type=secret-key" + testQuery,
		"pkcs11:token=a&b=c;object=x:[]@!$'()*+," + testQuery,
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:///etc/pin",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:/etc/pin",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=FILE://localhost/etc/pin",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=/etc//x/../pin",
		"pkcs11:token=t;object=o?module-path=/opt/my%20hsm/lib.so&pin-source=/p",
		"pkcs11:token=t;object=o?module-path=/a?b=c&pin-source=/p?q",
		"pkcs11:token=" + strings.Repeat("x", 33) + ";object=o" + testQuery,
		"", "pkcs11:", "pkcs11:?", "local-file:///x",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-value=98761234",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=98761234",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=|/bin/getpin",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=https://x/pin",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=file://host/pin",
		"pkcs11:token=t;object=o?module-name=softhsm2&pin-source=/p",
		"pkcs11:token=t;object=o;slot-id=3" + testQuery,
		"pkcs11:token=t;token=u;object=o" + testQuery,
		"pkcs11:token=t;object" + testQuery,
		"pkcs11:token=t%2;object=o" + testQuery,
		"pkcs11:token=t;object=o" + testQuery + "#x",
		"pkcs11:token=t;object=o;id=" + testQuery,
		"pkcs11:token=%ff;object=o" + testQuery,
		"pkcs11:token=t%00;object=o" + testQuery,
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=/p%00x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			if !errors.Is(err, kms.ErrInvalidURI) {
				t.Fatalf("ParseURI(%q) err = %v, want kms.ErrInvalidURI", s, err)
			}
			checkNoPINInError(t, s, err)
			return
		}
		if u.Token == "" || u.Object == "" || u.ModulePath == "" || u.PINSource == "" || len(u.Token) > 32 {
			t.Fatalf("ParseURI(%q) = %+v, nil; want token (at most 32 bytes), object, module-path and pin-source", s, u)
		}
		if !strings.HasPrefix(u.PINSource, "/") || !strings.HasPrefix(u.ModulePath, "/") {
			t.Fatalf("ParseURI(%q) = %+v, nil; want absolute module-path and pin-source", s, u)
		}
		c := u.String()
		again, err := ParseURI(c)
		if err != nil {
			t.Fatalf("ParseURI(%q.String() = %q) err = %v, want nil", s, c, err)
		}
		if !reflect.DeepEqual(again, u) {
			t.Fatalf("ParseURI(%q.String() = %q) = %+v, want %+v", s, c, again, u)
		}
		if c2 := again.String(); c2 != c {
			t.Fatalf("canonical form of %q is %q, then %q", s, c, c2)
		}
	})
}

// checkNoPINInError fails t if err quotes the value of any attribute of s,
// as written or percent-decoded, or holds a pin-value or pin-source value
// of 8 bytes or more: a PIN pasted into a URI must not reach a log. A value
// that is part of an attribute name (which errors do quote) is skipped.
func checkNoPINInError(t *testing.T, s string, err error) {
	t.Helper()
	rest := s
	if len(rest) >= len("pkcs11:") {
		rest = rest[len("pkcs11:"):]
	}
	var names []string
	attrs := strings.FieldsFunc(rest, func(r rune) bool { return r == ';' || r == '&' || r == '?' })
	for _, attr := range attrs {
		name, _, _ := strings.Cut(attr, "=")
		names = append(names, name)
	}
	allNames := strings.Join(names, "\x00")
	msg := err.Error()
	for _, attr := range attrs {
		name, raw, _ := strings.Cut(attr, "=")
		vals := []string{raw}
		if dec, derr := decode(name, raw, func(byte) bool { return true }); derr == nil {
			vals = append(vals, dec)
		}
		for _, v := range vals {
			if v == "" || strings.Contains(allNames, v) {
				continue
			}
			pin := name == "pin-value" || name == "pin-source"
			if strings.Contains(msg, strconv.Quote(v)) || (pin && len(v) >= 8 && strings.Contains(msg, v)) {
				t.Fatalf("ParseURI(%q) err = %q, which quotes the %s value", s, msg, name)
			}
		}
	}
}
