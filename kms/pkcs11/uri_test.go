package pkcs11

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/kms"
)

const (
	testModule = "/usr/lib/softhsm/libsofthsm2.so"
	testQuery  = "?module-path=" + testModule + "&pin-source=/etc/tresor/pin"
)

func TestParseURI(t *testing.T) {
	good := []struct {
		name string
		in   string
		want URI
	}{
		{"minimal", "pkcs11:token=tresor;object=root-1" + testQuery,
			URI{Token: "tresor", Object: "root-1", ModulePath: testModule, PINSource: "/etc/tresor/pin"}},
		{"upper-case scheme, reordered", "PKCS11:object=root-1;token=tresor?pin-source=/etc/tresor/pin&module-path=" + testModule,
			URI{Token: "tresor", Object: "root-1", ModulePath: testModule, PINSource: "/etc/tresor/pin"}},
		{"percent-decoding", "pkcs11:token=My%20Token;object=root%2F1%3B%25" + testQuery,
			URI{Token: "My Token", Object: "root/1;%", ModulePath: testModule, PINSource: "/etc/tresor/pin"}},
		{"lower-case hex", "pkcs11:token=a%c3%a9;object=k" + testQuery,
			URI{Token: "aé", Object: "k", ModulePath: testModule, PINSource: "/etc/tresor/pin"}},
		{"id and token attributes", "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=1a2b;token=tresor;object=root-1;id=%01%ff;type=secret-key" + testQuery,
			URI{Token: "tresor", Object: "root-1", ID: []byte{1, 0xff}, Serial: "1a2b", Manufacturer: "SoftHSM project", Model: "SoftHSM v2", ModulePath: testModule, PINSource: "/etc/tresor/pin"}},
		{"path reserved characters", "pkcs11:token=a&b=c;object=x:[]@!$'()*+," + testQuery,
			URI{Token: "a&b=c", Object: "x:[]@!$'()*+,", ModulePath: testModule, PINSource: "/etc/tresor/pin"}},
		{"pin-source file:///", "pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:///etc/pin",
			URI{Token: "t", Object: "o", ModulePath: "/m.so", PINSource: "/etc/pin"}},
		{"pin-source file:/", "pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:/etc/pin",
			URI{Token: "t", Object: "o", ModulePath: "/m.so", PINSource: "/etc/pin"}},
		{"pin-source file://localhost/", "pkcs11:token=t;object=o?module-path=/m.so&pin-source=FILE://localhost/etc/pin",
			URI{Token: "t", Object: "o", ModulePath: "/m.so", PINSource: "/etc/pin"}},
		{"pin-source cleaned", "pkcs11:token=t;object=o?module-path=/m.so&pin-source=/etc//x/../pin",
			URI{Token: "t", Object: "o", ModulePath: "/m.so", PINSource: "/etc/pin"}},
		{"encoded module path", "pkcs11:token=t;object=o?module-path=/opt/my%20hsm/lib.so&pin-source=/p",
			URI{Token: "t", Object: "o", ModulePath: "/opt/my hsm/lib.so", PINSource: "/p"}},
		{"32-byte token label", "pkcs11:token=" + strings.Repeat("x", 32) + ";object=o" + testQuery,
			URI{Token: strings.Repeat("x", 32), Object: "o", ModulePath: testModule, PINSource: "/etc/tresor/pin"}},
	}
	for _, tt := range good {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseURI(tt.in)
			if err != nil {
				t.Fatalf("ParseURI(%q) err = %v, want nil", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseURI(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			again, err := ParseURI(got.String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("ParseURI(%q) = %+v, %v, want %+v, nil", got.String(), again, err, got)
			}
		})
	}

	bad := []struct {
		name, in, wantMsg string
	}{
		{"empty", "", "does not start with"},
		{"other scheme", "local-file:///x", "does not start with"},
		{"no token", "pkcs11:object=o" + testQuery, "token="},
		{"no object", "pkcs11:token=t" + testQuery, "object="},
		{"no query", "pkcs11:token=t;object=o", "module-path="},
		{"no module", "pkcs11:token=t;object=o?pin-source=/p", "module-path="},
		{"relative module", "pkcs11:token=t;object=o?module-path=lib.so&pin-source=/p", "not an absolute path"},
		{"no pin-source", "pkcs11:token=t;object=o?module-path=/m.so", "pin-source="},
		{"relative pin-source", "pkcs11:token=t;object=o?module-path=/m.so&pin-source=pin", "not an absolute path"},
		{"pin-source command", "pkcs11:token=t;object=o?module-path=/m.so&pin-source=|/bin/getpin", "commands"},
		{"pin-source http", "pkcs11:token=t;object=o?module-path=/m.so&pin-source=https://x/pin", "only file paths"},
		{"pin-source remote file", "pkcs11:token=t;object=o?module-path=/m.so&pin-source=file://host/pin", "other hosts"},
		{"pin-value refused", "pkcs11:token=t;object=o?module-path=/m.so&pin-value=123456", "pin-value is refused"},
		{"module-name", "pkcs11:token=t;object=o?module-name=softhsm2&pin-source=/p", "module-name"},
		{"slot-id", "pkcs11:token=t;object=o;slot-id=3" + testQuery, "slot-id"},
		{"library-version", "pkcs11:token=t;object=o;library-version=2" + testQuery, "library-version"},
		{"unknown path attribute", "pkcs11:token=t;object=o;colour=red" + testQuery, "unknown path attribute"},
		{"unknown query attribute", "pkcs11:token=t;object=o" + testQuery + "&x=1", "unknown query attribute"},
		{"duplicate path attribute", "pkcs11:token=t;token=u;object=o" + testQuery, "twice"},
		{"duplicate query attribute", "pkcs11:token=t;object=o" + testQuery + "&pin-source=/q", "twice"},
		{"attribute without =", "pkcs11:token=t;object" + testQuery, "not name=value"},
		{"empty attribute name", "pkcs11:=t;token=t;object=o" + testQuery, "not name=value"},
		{"trailing ;", "pkcs11:token=t;object=o;" + testQuery, "not name=value"},
		{"empty query attribute", "pkcs11:token=t;object=o" + testQuery + "&", "not name=value"},
		{"bad percent", "pkcs11:token=t%2;object=o" + testQuery, "percent-encoding"},
		{"bad percent hex", "pkcs11:token=t%zz;object=o" + testQuery, "percent-encoding"},
		{"space in path", "pkcs11:token=my token;object=o" + testQuery, "must be percent-encoded"},
		{"slash in path", "pkcs11:token=a/b;object=o" + testQuery, "must be percent-encoded"},
		{"; in query", "pkcs11:token=t;object=o?module-path=/a;b&pin-source=/p", "must be percent-encoded"},
		{"fragment", "pkcs11:token=t;object=o" + testQuery + "#x", "fragment"},
		{"type not secret-key", "pkcs11:token=t;object=o;type=private" + testQuery, "secret-key"},
		{"empty id", "pkcs11:token=t;object=o;id=" + testQuery, "id="},
		{"long token label", "pkcs11:token=" + strings.Repeat("x", 33) + ";object=o" + testQuery, "at most 32"},
		{"invalid UTF-8 label", "pkcs11:token=%ff;object=o" + testQuery, "UTF-8"},
		{"NUL in pin-source", "pkcs11:token=t;object=o?module-path=/m.so&pin-source=/p%00x", "NUL"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseURI(tt.in)
			if !errors.Is(err, kms.ErrInvalidURI) {
				t.Fatalf("ParseURI(%q) err = %v, want kms.ErrInvalidURI", tt.in, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("ParseURI(%q) err = %q, want it to mention %q", tt.in, err, tt.wantMsg)
			}
		})
	}
}

// TestParseURIErrorsHoldNoPIN: a PIN pasted into a URI must not be echoed.
func TestParseURIErrorsHoldNoPIN(t *testing.T) {
	const pin = "98761234"
	for _, in := range []string{
		"pkcs11:token=t;object=o?module-path=/m.so&pin-value=" + pin,
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=" + pin,
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=/p&pin=" + pin,
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=" + pin + "%zz",
		"pkcs11:token=t;object=o?module-path=/m.so&pin-source=" + pin + " x",
		"pkcs11:token=t;object=o;pin=" + pin + "?module-path=/m.so&pin-source=/p",
		"pkcs11:token=t;object=o?module-path=" + pin + "&pin-source=/p", // found by FuzzParseURI
	} {
		_, err := ParseURI(in)
		if err == nil {
			t.Fatalf("ParseURI(%q) err = nil, want an error", in)
		}
		if strings.Contains(err.Error(), pin) {
			t.Errorf("ParseURI(%q) err = %q, which contains the PIN", in, err)
		}
	}
}

func TestKeyID(t *testing.T) {
	tests := []struct {
		token, object string
		id            []byte
		want          string
	}{
		{"tresor", "root-1", nil, "pkcs11:token=tresor;object=root-1"},
		{"tresor", "root-1", []byte{0xab, 0x01}, "pkcs11:token=tresor;object=root-1;id=%AB%01"},
		{"my token", "a;b", nil, "pkcs11:token=my%20token;object=a%3Bb"},
	}
	for _, tt := range tests {
		if got := keyID(tt.token, tt.object, tt.id); got != tt.want {
			t.Errorf("keyID(%q, %q, %x) = %q, want %q", tt.token, tt.object, tt.id, got, tt.want)
		}
	}
}
