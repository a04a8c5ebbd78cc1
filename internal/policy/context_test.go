package policy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cedar-policy/cedar-go/types"
)

// wantContext is the record contextRecord must build for c in loc, written
// out attribute by attribute.
func wantContext(t *testing.T, c Context, loc *time.Location) types.Record {
	t.Helper()
	local := c.Time.In(loc)
	_, offset := local.Zone()
	ip := c.SourceIP.Unmap()
	sensitivity := ""
	if c.Sensitivity != 0 {
		sensitivity = c.Sensitivity.String()
	}
	m := types.RecordMap{
		"source_ip":         types.IPAddr(netip.PrefixFrom(ip, ip.BitLen())),
		"time":              types.NewDatetime(c.Time),
		"local_time":        types.NewDatetimeFromMillis(c.Time.UnixMilli() + int64(offset)*1000),
		"weekday":           types.Long((int(local.Weekday())+6)%7 + 1),
		"auth":              types.String(c.AuthStrength),
		"sensitivity":       types.String(sensitivity),
		"sensitivity_level": types.Long(c.Sensitivity),
		"risk":              types.Long(min(max(c.Risk, 0), 100)),
	}
	if c.TransactionValue != "" {
		d, err := types.ParseDecimal(c.TransactionValue)
		if err != nil {
			t.Fatal(err)
		}
		m["transaction_value"] = d
	}
	if c.Purpose != "" {
		m["purpose"] = types.String(c.Purpose)
	}
	return types.NewRecord(m)
}

// The context memo must never answer with another context's record: each
// of these differs from the first in one input, within one millisecond, and
// the second round is served from the memo.
func TestContextRecordsAreExact(t *testing.T) {
	t0 := time.Date(2026, 3, 4, 22, 59, 59, 999_000_000, time.UTC) // 23:59:59.999 in CET, a Wednesday
	base := Context{SourceIP: netip.MustParseAddr("10.0.5.5"), Time: t0, AuthStrength: AuthToken, Sensitivity: TierConfidential}
	with := func(f func(*Context)) Context { c := base; f(&c); return c }
	contexts := []Context{
		base,
		with(func(c *Context) { c.Time = t0.Add(500 * time.Microsecond) }), // the same millisecond
		with(func(c *Context) { c.Time = t0.Add(time.Millisecond) }),       // Thursday 00:00 in CET
		with(func(c *Context) { c.Time = t0.In(cet) }),                     // the same instant elsewhere
		with(func(c *Context) { c.SourceIP = netip.MustParseAddr("10.0.5.6") }),
		with(func(c *Context) { c.SourceIP = netip.MustParseAddr("::ffff:10.0.5.5") }),
		with(func(c *Context) { c.SourceIP = netip.MustParseAddr("fe80::1%eth0") }),
		with(func(c *Context) { c.SourceIP = netip.MustParseAddr("fe80::1") }),
		with(func(c *Context) { c.AuthStrength = AuthBoundToken }),
		with(func(c *Context) { c.AuthStrength = AuthMTLS }),
		with(func(c *Context) { c.Sensitivity = 0 }),
		with(func(c *Context) { c.Sensitivity = TierRestricted }),
		with(func(c *Context) { c.TransactionValue = "10.5" }),
		with(func(c *Context) { c.TransactionValue = "10.50" }),
		with(func(c *Context) { c.TransactionValue = "105.0" }),
		with(func(c *Context) { c.Purpose = "chargeback-review" }),
		with(func(c *Context) { c.Purpose = "kyc-review" }),
		with(func(c *Context) { c.Purpose = "kyc-review"; c.TransactionValue = "1.0" }),
	}
	utc := &Engine{loc: time.UTC}
	inCET := &Engine{loc: cet}
	for round := range 3 {
		for i, c := range contexts {
			for _, e := range []*Engine{utc, inCET} {
				got, err := e.contextRecord(c)
				if err != nil {
					t.Fatalf("round %d: contextRecord(#%d) err = %v", round, i, err)
				}
				if want := wantContext(t, c, e.loc); !got.Equal(want) {
					t.Errorf("round %d: contextRecord(#%d) in %v = %v, want %v", round, i, e.loc, got, want)
				}
			}
		}
	}
	// A value that does not parse is refused every time, not served from a
	// record built for another value.
	for range 2 {
		if _, err := utc.contextRecord(with(func(c *Context) { c.TransactionValue = "1e5" })); err == nil {
			t.Errorf("contextRecord(transaction value 1e5) err = nil, want an error")
		}
	}
}

// Decisions that depend only on the context follow it from call to call at
// one instant.
func TestDecideFollowsTheContext(t *testing.T) {
	e := loadExamples(t)
	at := wednesday(20, 0)
	tests := []struct {
		name  string
		c     Context
		allow bool
	}{
		{"token", ctxAt(at, AuthToken, "10.0.5.5"), false},
		{"bound token", ctxAt(at, AuthBoundToken, "10.0.5.5"), true},
		{"mtls", ctxAt(at, AuthMTLS, "10.0.5.5"), false},
		{"bound token, large value", withValue(ctxAt(at, AuthBoundToken, "10.0.5.5"), "20000.00"), false},
		{"bound token, small value", withValue(ctxAt(at, AuthBoundToken, "10.0.5.5"), "200.00"), true},
		{"bound token, other address", ctxAt(at, AuthBoundToken, "10.0.5.6"), true},
		{"token, 10:00", ctxAt(wednesday(10, 0), AuthToken, "10.0.5.5"), true},
	}
	for range 3 {
		for _, tc := range tests {
			if d := e.Decide(req(payments, "Decrypt", paymentsPAN, tc.c)); d.Allow != tc.allow {
				t.Errorf("Decide(Decrypt restricted, %s) = %v by %q, want %v", tc.name, d.Allow, d.Policies, tc.allow)
			}
		}
	}
}
