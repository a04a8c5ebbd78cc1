//go:build !noawskms

package awskms

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/tresorkms/tresor/kms"
)

// unavailableCodes are the KMS error codes that say KMS cannot serve the
// call now: throttling, service faults, and a key that is disabled, pending
// deletion, gone, or not ours to use. The call may succeed later (after the
// load drops, the key is enabled again, or a policy is fixed); none of
// them says anything about the ciphertext.
var unavailableCodes = map[string]bool{
	// Throttling and limits.
	"ThrottlingException": true, "Throttling": true, "ThrottledException": true,
	"RequestLimitExceeded": true, "TooManyRequestsException": true, "LimitExceededException": true,
	"RequestThrottled": true, "RequestThrottledException": true, "SlowDown": true,
	// Service faults.
	"KMSInternalException": true, "InternalFailure": true, "InternalFailureException": true,
	"InternalServerError": true, "InternalError": true, "ServiceUnavailable": true,
	"ServiceUnavailableException": true, "DependencyTimeoutException": true,
	"KeyUnavailableException": true, "RequestTimeout": true, "RequestTimeoutException": true,
	"CustomKeyStoreInvalidStateException": true,
	// The key's state, and permissions.
	"DisabledException": true, "KMSInvalidStateException": true, "NotFoundException": true,
	"InvalidKeyUsageException": true, "AccessDeniedException": true,
	"UnrecognizedClientException": true, "InvalidClientTokenId": true, "ExpiredTokenException": true,
	"ExpiredToken": true, "InvalidSignatureException": true, "SignatureDoesNotMatch": true,
	"IncompleteSignature": true, "MissingAuthenticationToken": true, "MissingAuthenticationTokenException": true,
}

// errorCode returns the KMS error code in err, or "".
func errorCode(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode()
	}
	return ""
}

// isUnavailable reports whether err says KMS cannot serve the call now:
// every error that is not an answer from KMS (connection refused or reset,
// DNS, TLS, timeouts, credentials, retry quota), and the answers in
// unavailableCodes or with a server fault (HTTP 5xx).
func isUnavailable(err error) bool {
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) {
		return true
	}
	if unavailableCodes[apiErr.ErrorCode()] || apiErr.ErrorFault() == smithy.FaultServer {
		return true
	}
	var re *smithyhttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() >= 500
}

// callError turns a failed KMS call into the error a caller gets. In an
// unwrap, every answer that is not in isUnavailable is kms.ErrUnwrap, with
// no detail. The messages name the operation, the endpoint and what went
// wrong (see describe), never payload bytes.
func callError(what, op, endpoint string, err error, unwrap bool) error {
	if isUnavailable(err) {
		return fmt.Errorf("%w: awskms: %s: KMS %s on %s: %s", kms.ErrUnavailable, what, op, endpoint, describe(err))
	}
	if unwrap {
		return errUnwrap
	}
	return fmt.Errorf("awskms: %s: KMS %s on %s failed: %s", what, op, endpoint, describe(err))
}

// describe says what went wrong in err without payload. Two kinds of SDK
// error may carry payload: an answer from KMS, whose message KMS may build
// from the request (local-kms quotes plaintext in some), and an answer that
// could not be decoded, whose text quotes the response body (which may hold
// a data key). For those it gives only the KMS error code, HTTP status and
// request id. Every other error (connection refused or reset, DNS, TLS,
// timeouts, credentials, retry quota) is built from addresses, the
// configuration and system errors, and is given as is, without the SDK's
// "operation error" prefix or the request URL, since the message names the
// operation and the endpoint already.
func describe(err error) string {
	var b strings.Builder
	var attempts *retry.MaxAttemptsError
	var apiErr smithy.APIError
	var deser *smithy.DeserializationError
	switch {
	case errors.As(err, &apiErr):
		b.WriteString(safeCode(apiErr.ErrorCode()))
	case errors.As(err, &deser):
		b.WriteString("an answer that could not be decoded")
	default:
		var ue *url.Error
		var op *smithy.OperationError
		switch {
		case errors.As(err, &ue) && ue.Err != nil:
			b.WriteString(ue.Err.Error()) // without the URL: the message names the endpoint
		case errors.As(err, &op) && op.Err != nil:
			b.WriteString(op.Err.Error())
		default:
			b.WriteString(err.Error())
		}
		if errors.As(err, &attempts) {
			fmt.Fprintf(&b, " (after %d attempts)", attempts.Attempt)
		}
		return b.String()
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		fmt.Fprintf(&b, " (HTTP %d", re.HTTPStatusCode())
		if id := re.ServiceRequestID(); id != "" {
			fmt.Fprintf(&b, ", request id %s", safeCode(id))
		}
		b.WriteString(")")
	}
	if errors.As(err, &attempts) {
		fmt.Fprintf(&b, " after %d attempts", attempts.Attempt)
	}
	return b.String()
}

// safeCode keeps an error code or request id printable and short.
func safeCode(s string) string {
	if len(s) > 128 {
		s = s[:128]
	}
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' || r == ':' || r == '#' {
			return r
		}
		return '?'
	}, s)
}
