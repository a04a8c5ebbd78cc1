package governance

import "regexp"

var (
	// userinfoPassword matches the password of a URL's userinfo:
	// scheme://user:PASSWORD@host.
	userinfoPassword = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s"'` + "`" + `]*):[^@\s"'` + "`" + `]*@`)
	// secretParam matches secret-bearing parameters in URLs, DSNs and
	// PKCS#11 URIs: pin-value=..., password=..., access_token=..., secret=...
	// (not token=, which in a PKCS#11 URI is a token's label)
	secretParam = regexp.MustCompile(`(?i)\b(pin-value|pin|password|passwd|pwd|secret|access_token|refresh_token|id_token|client_secret)=[^&;\s"'` + "`" + `]*`)
	// quotedValue matches a value a YAML decoder or strconv quotes in its
	// errors ("cannot unmarshal !!str `...` into int", parsing "...").
	yamlValue    = regexp.MustCompile("`[^`]*`")
	strconvValue = regexp.MustCompile(`parsing "(?:[^"\\]|\\.)*"`)
)

// Redact masks secrets that an error message might quote: the password of
// a URL (postgres://user:xxxxx@host), and the values of pin-value,
// password, token and similar parameters. Every report runs its subjects
// and messages through it; it is a safety net, not a license to put secrets
// in messages.
func Redact(s string) string {
	s = userinfoPassword.ReplaceAllString(s, "${1}:xxxxx@")
	return secretParam.ReplaceAllString(s, "${1}=xxxxx")
}

// redactValues also masks the values a configuration decoder quotes in its
// errors, which may be anything the file or an environment variable held
// (a password under the wrong key, say).
func redactValues(s string) string {
	s = yamlValue.ReplaceAllString(s, "`xxxxx`")
	return strconvValue.ReplaceAllString(s, `parsing "xxxxx"`)
}
