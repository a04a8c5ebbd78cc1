// Package provider opens a root key from its URI, whichever provider holds
// it. Reach for [Open]: it dispatches on the URI scheme.
//
//	pkcs11:token=tresor;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tresor/pin
//	aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
//	aws-kms://alias/tresor-root?region=eu-west-1
//	local-file:///var/lib/tresor/root.key   (development only)
package provider

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/awskms"
	"github.com/tresorkms/tresor/kms/localkek"
	"github.com/tresorkms/tresor/kms/pkcs11"
)

// Open opens the root key uri names: pkcs11: with kms/pkcs11, aws-kms://
// with kms/awskms, local-file:// with kms/localkek. Unknown schemes fail
// with an error wrapping kms.ErrInvalidURI. Errors name the scheme, never
// the whole URI, which may hold a secret. A nil logger means slog.Default().
func Open(ctx context.Context, uri string, logger *slog.Logger) (kms.RootKey, error) {
	if logger == nil {
		logger = slog.Default()
	}
	switch scheme := Scheme(uri); scheme {
	case "pkcs11":
		k, err := pkcs11.Open(ctx, uri, pkcs11.WithLogger(logger))
		if err != nil {
			return nil, err
		}
		return k, nil
	case "local-file":
		path, err := localkek.ParseURI(uri)
		if err != nil {
			return nil, err
		}
		k, err := localkek.Open(ctx, path, logger)
		if err != nil {
			return nil, err
		}
		return k, nil
	case awskms.Scheme:
		k, err := awskms.Open(ctx, uri, awskms.WithLogger(logger))
		if err != nil {
			return nil, err
		}
		return k, nil
	case "":
		return nil, fmt.Errorf("%w: the root key URI has no scheme; want pkcs11:, aws-kms:// or local-file://", kms.ErrInvalidURI)
	default:
		return nil, fmt.Errorf("%w: unknown root key provider %q; want pkcs11:, aws-kms:// or local-file://", kms.ErrInvalidURI, scheme)
	}
}

// Scheme returns the URI's scheme in lower case, or "" if it has none.
func Scheme(uri string) string {
	i := strings.IndexByte(uri, ':')
	if i <= 0 || i > 32 {
		return ""
	}
	for j := 0; j < i; j++ {
		c := uri[j]
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (j == 0 || !(c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return ""
		}
	}
	return strings.ToLower(uri[:i])
}
