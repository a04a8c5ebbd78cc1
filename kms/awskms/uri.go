package awskms

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/tresorkms/tresor/kms"
)

// Scheme is the URI scheme of AWS KMS root keys.
const Scheme = "aws-kms"

// URI is a parsed, validated aws-kms:// root-key URI. Make one with
// [ParseURI]; [URI.String] gives back its canonical form.
type URI struct {
	// Key names the KMS key: a key ARN, an alias ARN, alias/NAME or a key id.
	Key string
	// Region is the AWS region: the ARN's, or region=. Empty means the
	// SDK's default chain decides.
	Region string
	// Endpoint overrides the KMS endpoint (scheme://host[:port]); empty
	// means the SDK's endpoint for the region.
	Endpoint string
}

var (
	keyIDPattern     = regexp.MustCompile(`^(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|mrk-[0-9a-fA-F]{32})$`)
	aliasPattern     = regexp.MustCompile(`^alias/[a-zA-Z0-9/_-]{1,250}$`)
	regionPattern    = regexp.MustCompile(`^[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}$`)
	partitionPattern = regexp.MustCompile(`^aws(?:-[a-z]+)*$`)
	accountPattern   = regexp.MustCompile(`^[0-9]{12}$`)
)

func invalidURI(format string, args ...any) error {
	return fmt.Errorf("%w: awskms: "+format, append([]any{kms.ErrInvalidURI}, args...)...)
}

// ParseURI parses and validates a root-key URI:
//
//	aws-kms://arn:aws:kms:REGION:ACCOUNT:key/KEY-ID[?endpoint=URL]
//	aws-kms://arn:aws:kms:REGION:ACCOUNT:alias/NAME[?endpoint=URL]
//	aws-kms://alias/NAME[?region=REGION][&endpoint=URL]
//	aws-kms://KEY-ID[?region=REGION][&endpoint=URL]
//
// The scheme is case-insensitive. Query parameters are region (which must
// match an ARN's region) and endpoint, each at most once, percent-decoded.
// endpoint is an https URL, or an http URL on a loopback address (plain
// HTTP elsewhere would carry data keys in the clear); it has no user
// information, path, query or fragment. Errors wrap kms.ErrInvalidURI and
// quote no values.
func ParseURI(s string) (URI, error) {
	return parseURI(s, false)
}

// parseURI is ParseURI; with noKey, the key may be left out (CreateRootKey).
func parseURI(s string, noKey bool) (URI, error) {
	const prefix = Scheme + "://"
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return URI{}, invalidURI("the URI does not start with %q", prefix)
	}
	rest := s[len(prefix):]
	if strings.IndexByte(rest, '#') >= 0 {
		return URI{}, invalidURI("the URI has a fragment ('#')")
	}
	key, query, _ := strings.Cut(rest, "?")
	var u URI
	if query != "" {
		seen := map[string]bool{}
		for i, attr := range strings.Split(query, "&") {
			name, raw, ok := strings.Cut(attr, "=")
			if !ok || name == "" {
				return URI{}, invalidURI("query parameter %d is not name=value", i+1)
			}
			if seen[name] {
				return URI{}, invalidURI("query parameter %q appears twice", name)
			}
			seen[name] = true
			val, err := url.QueryUnescape(raw)
			if err != nil {
				return URI{}, invalidURI("query parameter %q: malformed percent-encoding", name)
			}
			if val == "" {
				return URI{}, invalidURI("query parameter %q is empty", name)
			}
			switch name {
			case "region":
				if !regionPattern.MatchString(val) {
					return URI{}, invalidURI("region is not an AWS region name such as eu-west-1")
				}
				u.Region = val
			case "endpoint":
				ep, err := parseEndpoint(val)
				if err != nil {
					return URI{}, err
				}
				u.Endpoint = ep
			default:
				return URI{}, invalidURI("unknown query parameter %q; want region or endpoint (credentials come from the AWS SDK's default chain, never from the URI)", name)
			}
		}
	}
	switch {
	case key == "" && noKey:
	case key == "":
		return URI{}, invalidURI("the URI names no key; want aws-kms://arn:aws:kms:REGION:ACCOUNT:key/ID or aws-kms://alias/NAME?region=REGION")
	case strings.HasPrefix(key, "arn:"):
		region, err := checkARN(key)
		if err != nil {
			return URI{}, err
		}
		if u.Region != "" && u.Region != region {
			return URI{}, invalidURI("region= differs from the ARN's region; leave it out")
		}
		u.Region = region
	case strings.HasPrefix(key, "alias/"):
		if err := checkAlias(key); err != nil {
			return URI{}, err
		}
	case keyIDPattern.MatchString(key):
	default:
		return URI{}, invalidURI("the key is neither a KMS key ARN, an alias ARN, alias/NAME nor a key id")
	}
	u.Key = key
	return u, nil
}

// checkARN validates a KMS key or alias ARN and returns its region.
func checkARN(arn string) (string, error) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 {
		return "", invalidURI("the ARN is not arn:PARTITION:kms:REGION:ACCOUNT:key/ID")
	}
	partition, service, region, account, resource := parts[1], parts[2], parts[3], parts[4], parts[5]
	switch {
	case !partitionPattern.MatchString(partition):
		return "", invalidURI("the ARN's partition is not aws, aws-cn, aws-us-gov, ...")
	case service != "kms":
		return "", invalidURI("the ARN is not a KMS ARN (arn:aws:kms:...)")
	case !regionPattern.MatchString(region):
		return "", invalidURI("the ARN's region is not an AWS region name")
	case !accountPattern.MatchString(account):
		return "", invalidURI("the ARN's account is not 12 digits")
	}
	if id, ok := strings.CutPrefix(resource, "key/"); ok {
		if !keyIDPattern.MatchString(id) {
			return "", invalidURI("the ARN's key id is not a KMS key id")
		}
		return region, nil
	}
	if strings.HasPrefix(resource, "alias/") {
		return region, checkAlias(resource)
	}
	return "", invalidURI("the ARN names neither key/ID nor alias/NAME")
}

func checkAlias(alias string) error {
	if !aliasPattern.MatchString(alias) {
		return invalidURI("the alias is not alias/NAME with NAME of 1 to 250 letters, digits, '/', '_' or '-'")
	}
	if strings.HasPrefix(alias, "alias/aws/") {
		return invalidURI("alias/aws/ names AWS managed keys, which only AWS services use; create a customer managed key")
	}
	return nil
}

// parseEndpoint validates an endpoint URL and returns it as scheme://host.
func parseEndpoint(s string) (string, error) {
	ep, err := url.Parse(s)
	if err != nil || ep.Opaque != "" || ep.Host == "" {
		return "", invalidURI("endpoint is not an absolute URL such as https://kms.eu-west-1.amazonaws.com")
	}
	scheme := strings.ToLower(ep.Scheme)
	switch {
	case ep.User != nil:
		return "", invalidURI("endpoint must not hold user information; credentials come from the AWS SDK's default chain")
	case ep.Path != "" && ep.Path != "/", ep.RawQuery != "", ep.ForceQuery, ep.Fragment != "":
		return "", invalidURI("endpoint must be scheme://host[:port] only, without path, query or fragment")
	case scheme == "https":
	case scheme == "http":
		if !isLoopback(ep.Hostname()) {
			return "", invalidURI("endpoint uses plain http on a host that is not a loopback address; use https (data keys travel in KMS's answers)")
		}
	default:
		return "", invalidURI("endpoint scheme must be https (or http on a loopback address)")
	}
	if p := ep.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", invalidURI("endpoint port is not a number from 1 to 65535")
		}
	}
	// ep.Host is decoded: an IPv6 zone ("[fe80::1%25en0]" in a URL) holds a
	// bare '%', which must be escaped again for the endpoint to parse.
	return scheme + "://" + strings.ReplaceAll(strings.ToLower(ep.Host), "%", "%25"), nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// IsAlias reports whether the URI names the key by an alias.
func (u URI) IsAlias() bool {
	return strings.HasPrefix(u.Key, "alias/") || strings.HasPrefix(u.Key, "arn:") && strings.Contains(u.Key, ":alias/")
}

// String returns the canonical URI: the key, then region= (unless the key
// is an ARN, which holds the region) and endpoint=. ParseURI(u.String())
// gives u back.
func (u URI) String() string {
	var b strings.Builder
	b.WriteString(Scheme + "://")
	b.WriteString(u.Key)
	sep := "?"
	if u.Region != "" && !strings.HasPrefix(u.Key, "arn:") {
		b.WriteString(sep + "region=" + escape(u.Region))
		sep = "&"
	}
	if u.Endpoint != "" {
		b.WriteString(sep + "endpoint=" + escape(u.Endpoint))
	}
	return b.String()
}

// escape percent-encodes s for a query value, leaving the characters of a
// URL that need no encoding there as they are.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~:/[]@", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// endpointName names where calls go, for error messages.
func (u URI) endpointName(region string) string {
	if u.Endpoint != "" {
		return u.Endpoint
	}
	if region == "" {
		return "AWS KMS"
	}
	return "AWS KMS in " + region
}
