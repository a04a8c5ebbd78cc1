// Package governance checks a tresor deployment before a release: the
// configuration file, the Cedar policies against their schema, the
// classification schemas against the key inventory, the TLS material, and
// the key inventory itself (keys overdue for rotation, keys with no owner,
// versions near their usage limit, keys pending deletion). Each problem is a
// [Finding] with a [Severity]; a [Report] collects them and writes them as
// JSON ([Report.JSON]) or as a readable summary ([Report.Text]), and says
// how the process should exit ([Report.ExitCode]).
//
// Reach for [Run]: it loads the configuration and runs every check. Each
// check is also a function of small inputs, for tests and for callers that
// have the pieces already: [CheckConfig], [CheckPolicies], [CheckSchemas],
// [CheckTLS], and [ReadKeys] followed by [CheckKeys].
//
// The checks read; they change no key, usage count or policy. The key
// inventory is metadata read through two one-method interfaces
// ([KeyLister], [UsageReader]); no root key, HSM or KMS is opened and no
// keyset is unwrapped. (tresor check opens the key store as the server
// does, which brings an older store's schema up to date and needs the
// server's database rights: there is no read-only open yet.)
//
// No finding holds a secret: messages never include key material, and
// every Subject and Message passes through a filter that masks passwords in
// URLs and pin-value, password and token parameters (see [Redact]), in case
// an underlying error quotes one.
//
// Exit codes ([Report.ExitCode]), from least to most severe:
//
//	0  ExitOK        no warnings or errors (informational findings only)
//	1  ExitWarnings  warnings, no errors
//	2  ExitErrors    at least one error
//	3  ExitNotRun    the checks could not run (bad flags, unwritable output)
//
// Report.ExitCode returns 0, 1 or 2; ExitNotRun is for the command that
// could not produce a report at all.
package governance
