package awskms

import (
	"errors"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/kms"
)

const (
	testKeyID  = "1234abcd-12ab-34cd-56ef-1234567890ab"
	testKeyARN = "arn:aws:kms:eu-west-1:111122223333:key/" + testKeyID
)

func TestParseURI(t *testing.T) {
	good := []struct {
		name string
		in   string
		want URI
	}{
		{"key ARN", "aws-kms://" + testKeyARN, URI{Key: testKeyARN, Region: "eu-west-1"}},
		{"key ARN, endpoint", "aws-kms://" + testKeyARN + "?endpoint=http://127.0.0.1:4566",
			URI{Key: testKeyARN, Region: "eu-west-1", Endpoint: "http://127.0.0.1:4566"}},
		{"key ARN, same region", "aws-kms://" + testKeyARN + "?region=eu-west-1", URI{Key: testKeyARN, Region: "eu-west-1"}},
		{"upper-case scheme", "AWS-KMS://" + testKeyARN, URI{Key: testKeyARN, Region: "eu-west-1"}},
		{"multi-region key", "aws-kms://arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
			URI{Key: "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab", Region: "us-east-1"}},
		{"other partition", "aws-kms://arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/" + testKeyID,
			URI{Key: "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/" + testKeyID, Region: "us-gov-west-1"}},
		{"alias ARN", "aws-kms://arn:aws:kms:eu-west-2:111122223333:alias/tresor/root-1",
			URI{Key: "arn:aws:kms:eu-west-2:111122223333:alias/tresor/root-1", Region: "eu-west-2"}},
		{"alias", "aws-kms://alias/tresor-root", URI{Key: "alias/tresor-root"}},
		{"alias, region and endpoint", "aws-kms://alias/tresor_root-1?region=eu-west-2&endpoint=http://127.0.0.1:4566",
			URI{Key: "alias/tresor_root-1", Region: "eu-west-2", Endpoint: "http://127.0.0.1:4566"}},
		{"reordered, encoded", "aws-kms://alias/a?endpoint=http%3A%2F%2F127.0.0.1%3A4566%2F&region=eu-west-2",
			URI{Key: "alias/a", Region: "eu-west-2", Endpoint: "http://127.0.0.1:4566"}},
		{"key id", "aws-kms://" + testKeyID + "?region=ap-southeast-2", URI{Key: testKeyID, Region: "ap-southeast-2"}},
		{"https endpoint, canonical", "aws-kms://alias/a?endpoint=HTTPS://VPCE-1.KMS.eu-west-1.vpce.amazonaws.com/",
			URI{Key: "alias/a", Endpoint: "https://vpce-1.kms.eu-west-1.vpce.amazonaws.com"}},
		{"localhost", "aws-kms://alias/a?endpoint=http://localhost:8080", URI{Key: "alias/a", Endpoint: "http://localhost:8080"}},
		{"IPv6 loopback", "aws-kms://alias/a?endpoint=http://[::1]:8080", URI{Key: "alias/a", Endpoint: "http://[::1]:8080"}},
		// Found by FuzzParseURI: the zone's '%' came back bare, and neither
		// String's form nor the endpoint parsed again.
		{"IPv6 zone", "aws-kms://alias/a?endpoint=https://[FE80::1%2525en0]:443", URI{Key: "alias/a", Endpoint: "https://[fe80::1%25en0]:443"}},
	}
	for _, tt := range good {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseURI(tt.in)
			if err != nil {
				t.Fatalf("ParseURI(%q) err = %v, want nil", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseURI(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			again, err := ParseURI(got.String())
			if err != nil || again != got {
				t.Errorf("ParseURI(%q) = %+v, %v, want %+v, nil", got.String(), again, err, got)
			}
		})
	}

	bad := []struct {
		name, in, wantMsg string
	}{
		{"empty", "", "does not start with"},
		{"other scheme", "pkcs11:token=t;object=o", "does not start with"},
		{"no slashes", "aws-kms:" + testKeyARN, "does not start with"},
		{"no key", "aws-kms://", "names no key"},
		{"no key, only query", "aws-kms://?region=eu-west-1", "names no key"},
		{"fragment", "aws-kms://alias/a#x", "fragment"},
		{"key name without alias/", "aws-kms://tresor-root?region=eu-west-1", "neither"},
		{"empty alias", "aws-kms://alias/", "alias"},
		{"alias with space", "aws-kms://alias/a%20b", "alias"},
		{"AWS managed alias", "aws-kms://alias/aws/s3?region=eu-west-1", "AWS managed"},
		{"short key id", "aws-kms://1234abcd?region=eu-west-1", "neither"},
		{"ARN of another service", "aws-kms://arn:aws:s3:eu-west-1:111122223333:key/" + testKeyID, "not a KMS ARN"},
		{"ARN too short", "aws-kms://arn:aws:kms:eu-west-1:111122223333", "not arn:"},
		{"ARN bad partition", "aws-kms://arn:azure:kms:eu-west-1:111122223333:key/" + testKeyID, "partition"},
		{"ARN bad region", "aws-kms://arn:aws:kms:Europe:111122223333:key/" + testKeyID, "region"},
		{"ARN no region", "aws-kms://arn:aws:kms::111122223333:key/" + testKeyID, "region"},
		{"ARN bad account", "aws-kms://arn:aws:kms:eu-west-1:1111:key/" + testKeyID, "account"},
		{"ARN bad key id", "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/not-a-key", "key id"},
		{"ARN neither key nor alias", "aws-kms://arn:aws:kms:eu-west-1:111122223333:grant/x", "neither key/ID nor alias/NAME"},
		{"region differs from ARN", "aws-kms://" + testKeyARN + "?region=eu-west-2", "differs"},
		{"bad region", "aws-kms://alias/a?region=EU", "region"},
		{"region twice", "aws-kms://alias/a?region=eu-west-1&region=eu-west-2", "twice"},
		{"empty region", "aws-kms://alias/a?region=", "empty"},
		{"unknown parameter", "aws-kms://alias/a?profile=prod", `unknown query parameter "profile"`},
		{"secret parameter", "aws-kms://alias/a?secret-access-key=x", "never from the URI"},
		{"not name=value", "aws-kms://alias/a?region", "not name=value"},
		{"bad percent-encoding", "aws-kms://alias/a?endpoint=%zz", "percent-encoding"},
		{"http endpoint not loopback", "aws-kms://alias/a?endpoint=http://kms.example.com", "plain http"},
		{"http endpoint on a LAN", "aws-kms://alias/a?endpoint=http://10.0.0.5:4566", "plain http"},
		{"endpoint with user info", "aws-kms://alias/a?endpoint=https://AKIA:secret@kms.example.com", "user information"},
		{"endpoint with path", "aws-kms://alias/a?endpoint=https://kms.example.com/kms", "path"},
		{"endpoint relative", "aws-kms://alias/a?endpoint=kms.example.com", "absolute URL"},
		{"endpoint ftp", "aws-kms://alias/a?endpoint=ftp://kms.example.com", "scheme"},
		{"endpoint bad port", "aws-kms://alias/a?endpoint=https://kms.example.com:99999", "port"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseURI(tt.in)
			if !errors.Is(err, kms.ErrInvalidURI) {
				t.Fatalf("ParseURI(%q) = %+v, %v, want kms.ErrInvalidURI", tt.in, got, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("ParseURI(%q) err = %q, want it to mention %q", tt.in, err, tt.wantMsg)
			}
			if strings.Contains(err.Error(), "secret") && tt.name == "endpoint with user info" {
				t.Errorf("ParseURI(%q) err = %q quotes the user information", tt.in, err)
			}
		})
	}
}

func TestURIString(t *testing.T) {
	tests := []struct {
		u    URI
		want string
	}{
		{URI{Key: testKeyARN, Region: "eu-west-1"}, "aws-kms://" + testKeyARN},
		{URI{Key: testKeyARN, Region: "eu-west-1", Endpoint: "http://127.0.0.1:4566"}, "aws-kms://" + testKeyARN + "?endpoint=http://127.0.0.1:4566"},
		{URI{Key: "alias/a", Region: "eu-west-2", Endpoint: "http://[::1]:1"}, "aws-kms://alias/a?region=eu-west-2&endpoint=http://[::1]:1"},
		{URI{Key: "alias/a"}, "aws-kms://alias/a"},
	}
	for _, tt := range tests {
		if got := tt.u.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.u, got, tt.want)
		}
	}
	if !(URI{Key: "alias/a"}).IsAlias() || !(URI{Key: "arn:aws:kms:eu-west-1:111122223333:alias/a"}).IsAlias() || (URI{Key: testKeyARN}).IsAlias() {
		t.Error("IsAlias() wrong for alias/a, an alias ARN or a key ARN")
	}
}
