package awskms

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/kms"
)

// Fuzz target for the aws-kms:// root-key URI. Run it with
//
//	go test -run '^$' -fuzz '^FuzzParseURI$' -fuzztime 1m -parallel 1 ./kms/awskms
//
// (or `make fuzz`); plain `go test` runs its seeds and any corpus under
// testdata/fuzz.

// FuzzParseURI: any string gives a URI or an error wrapping
// kms.ErrInvalidURI that quotes no query value. A URI that parses names a
// key, and its canonical form (String) parses back to the same URI and the
// same string; so does the form CreateRootKey accepts, without a key.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"aws-kms://" + testKeyARN,
		"aws-kms://" + testKeyARN + "?endpoint=http://127.0.0.1:4566",
		"aws-kms://" + testKeyARN + "?region=eu-west-1",
		"AWS-KMS://" + testKeyARN,
		"aws-kms://arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
		"aws-kms://arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/" + testKeyID,
		"aws-kms://arn:aws:kms:eu-west-2:111122223333:alias/tresor/root-1",
		"aws-kms://alias/tresor-root",
		"aws-kms://alias/tresor_root-1?region=eu-west-2&endpoint=http://127.0.0.1:4566",
		"aws-kms://alias/a?endpoint=http%3A%2F%2F127.0.0.1%3A4566%2F&region=eu-west-2",
		"aws-kms://" + testKeyID + "?region=ap-southeast-2",
		"aws-kms://alias/a?endpoint=HTTPS://VPCE-1.KMS.eu-west-1.vpce.amazonaws.com/",
		"aws-kms://alias/a?endpoint=http://localhost:8080",
		"aws-kms://alias/a?endpoint=http://[::1]:8080",
		"aws-kms://alias/a?endpoint=https://[fe80::1%25en0]:443",
		"aws-kms://alias/a?endpoint=https://[fe80::1%2525en0]:443",
		"aws-kms://alias/a?endpoint=https://h:0443",
		"aws-kms://alias/a?endpoint=https://a+b.example",
		"aws-kms://?region=eu-west-1", "aws-kms://", "", "pkcs11:token=t;object=o", "aws-kms:" + testKeyARN,
		"aws-kms://alias/a#x", "aws-kms://alias/aws/s3?region=eu-west-1", "aws-kms://alias/a%20b",
		"aws-kms://arn:aws:kms:eu-west-1:111122223333:grant/x", "aws-kms://" + testKeyARN + "?region=eu-west-2",
		"aws-kms://alias/a?region=eu-west-1&region=eu-west-2", "aws-kms://alias/a?region=", "aws-kms://alias/a?region",
		"aws-kms://alias/a?secret-access-key=wJalrXUtnFEMI", "aws-kms://alias/a?endpoint=%zz",
		"aws-kms://alias/a?endpoint=http://10.0.0.5:4566", "aws-kms://alias/a?endpoint=https://AKIA:secret99@kms.example.com",
		"aws-kms://alias/a?endpoint=https://kms.example.com/kms", "aws-kms://alias/a?endpoint=https://kms.example.com:99999",
		"aws-kms://alias/a?endpoint=https://kms.example.com?x", "aws-kms://alias/a?endpoint=https:opaque",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, noKey := range []bool{false, true} {
			u, err := parseURI(s, noKey)
			if err != nil {
				if !errors.Is(err, kms.ErrInvalidURI) {
					t.Fatalf("parseURI(%q, %v) err = %v, want kms.ErrInvalidURI", s, noKey, err)
				}
				checkNoValueInError(t, s, err)
				continue
			}
			if u.Key == "" && !noKey {
				t.Fatalf("ParseURI(%q) = %+v, nil; want a key", s, u)
			}
			c := u.String()
			again, err := parseURI(c, noKey)
			if err != nil {
				t.Fatalf("parseURI(%q.String() = %q, %v) err = %v, want nil", s, c, noKey, err)
			}
			if again != u {
				t.Fatalf("parseURI(%q.String() = %q, %v) = %+v, want %+v", s, c, noKey, again, u)
			}
			if c2 := again.String(); c2 != c {
				t.Fatalf("canonical form of %q is %q, then %q", s, c, c2)
			}
		}
	})
}

// checkNoValueInError fails t if err quotes (as %q does) a query value of
// s, as written or decoded, or holds the password of an endpoint's user
// information. A value that is part of a parameter name, which errors do
// quote, is not checked.
func checkNoValueInError(t *testing.T, s string, err error) {
	t.Helper()
	_, query, ok := strings.Cut(s, "?")
	if !ok {
		return
	}
	var names []string
	for attr := range strings.SplitSeq(query, "&") {
		name, _, _ := strings.Cut(attr, "=")
		names = append(names, name)
	}
	msg := err.Error()
	for attr := range strings.SplitSeq(query, "&") {
		_, raw, _ := strings.Cut(attr, "=")
		vals := []string{raw}
		if dec, derr := url.QueryUnescape(raw); derr == nil {
			vals = append(vals, dec)
			if ep, perr := url.Parse(dec); perr == nil && ep.User != nil {
				if p, set := ep.User.Password(); set && len(p) >= 8 && strings.Contains(msg, p) {
					t.Fatalf("ParseURI(%q) err = %q, which holds the endpoint's password", s, msg)
				}
			}
		}
		for _, v := range vals {
			if v != "" && !strings.Contains(strings.Join(names, "\x00"), v) && strings.Contains(msg, strconv.Quote(v)) {
				t.Fatalf("ParseURI(%q) err = %q, which quotes a query value", s, msg)
			}
		}
	}
}
