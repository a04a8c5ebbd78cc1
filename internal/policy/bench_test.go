package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const generatedPolicies = 94

// generatedPolicySet returns realistic per-service policies: n services,
// each with one of four shapes.
func generatedPolicySet(n int) string {
	var b strings.Builder
	for i := range n {
		svc := fmt.Sprintf("svc-%03d", i)
		wl := "spiffe://bank.example/" + svc
		switch i % 4 {
		case 0: // a service encrypts and decrypts with the keys labelled for it, up to confidential
			fmt.Fprintf(&b, `@id("%s-crypto")
permit (principal, action in [Tresor::Action::"protect", Tresor::Action::"reveal"], resource is Tresor::Key)
when { principal.workload == %q && resource.hasTag("app") && resource.getTag("app") == %q && resource.tier_level <= 3 };
`, svc, wl, svc)
		case 1: // an ingest service may only encrypt, with the right token scope, for its upstream's keys
			fmt.Fprintf(&b, `@id("%s-ingest")
permit (principal, action in Tresor::Action::"protect", resource is Tresor::Key)
when { principal.workload == %q && principal.scopes.contains("kms:encrypt") && resource.owner == "spiffe://bank.example/svc-%03d" };
`, svc, wl, i-1)
		case 2: // a team reads the metadata of its keys
			fmt.Fprintf(&b, `@id("%s-team-metadata")
permit (principal in Tresor::Role::"team-%03d", action in Tresor::Action::"read_metadata", resource is Tresor::Key)
when { resource.hasTag("team") && resource.getTag("team") == "team-%03d" };
`, svc, i, i)
		case 3: // a back-office tool reveals documents for one purpose, from its own subnet
			fmt.Fprintf(&b, `@id("%s-kyc-reveal")
permit (principal, action == Tresor::Action::"Decrypt", resource is Tresor::Key)
when { principal.workload == %q && context has purpose && context.purpose == "kyc-review" &&
       resource.tier_level <= 3 && context.source_ip.isInRange(ip("10.%d.0.0/16")) };
`, svc, wl, 100+i)
		}
	}
	return b.String()
}

// benchEngine loads the example policies plus the generated ones.
func benchEngine(t testing.TB) *Engine {
	t.Helper()
	files := map[string]string{"zz-generated.cedar": generatedPolicySet(generatedPolicies)}
	entries, err := os.ReadDir(examplesDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range entries {
		if strings.HasSuffix(de.Name(), ".cedar") {
			text, err := os.ReadFile(filepath.Join(examplesDir, de.Name()))
			if err != nil {
				t.Fatal(err)
			}
			files[de.Name()] = string(text)
		}
	}
	return writePolicies(t, files)
}

type benchCase struct {
	name  string
	req   Request
	allow bool
}

func benchRequests() []benchCase {
	svc40 := Principal{Workload: "spiffe://bank.example/svc-040", Subject: "svc-040", Scopes: []string{"kms"},
		Roles: []string{"team-042", "reader"}}
	svc40Key := Resource{Kind: ResourceKey, Name: "svc-040-data", Tier: TierConfidential, Owner: "spiffe://bank.example/svc-039",
		Labels: map[string]string{"app": "svc-040", "team": "team-042", "env": "prod", "cost-center": "4711"}}
	kyc := Principal{Workload: "spiffe://bank.example/svc-043", Subject: "dave", Roles: []string{"kyc"}}
	kycCtx := withSensitivity(office(), TierConfidential)
	kycCtx.Purpose = "kyc-review"
	kycCtx = withIP(kycCtx, "10.143.2.3")
	return []benchCase{
		{"payments, Decrypt, own restricted key, 10:00", req(payments, "Decrypt", paymentsPAN, withValue(office(), "125.50")), true},
		{"payments, Decrypt, own restricted key, 20:00", req(payments, "Decrypt", paymentsPAN, ctxAt(wednesday(20, 0), AuthToken, "10.0.5.5")), false},
		{"analyst, Decrypt, confidential key", req(analyst, "Decrypt", ledgerKey, office()), true},
		{"analyst, Decrypt, restricted key", req(analyst, "Decrypt", ledgerSecret, office()), false},
		{"svc-040, Encrypt, labelled key", req(svc40, "Encrypt", svc40Key, office()), true},
		{"svc-040, GetKey, team key", req(svc40, "GetKey", svc40Key, office()), true},
		{"svc-043, Decrypt, kyc", req(kyc, "Decrypt", svc40Key, kycCtx), true},
		{"key-admin, RotateKey, admin net", req(keyAdmin, "RotateKey", ledgerKey, bound(withIP(office(), adminNetAddress))), true},
		{"key-admin, RotateKey, office net", req(keyAdmin, "RotateKey", ledgerKey, office()), false},
		{"approver, Encrypt, 20000", req(approver, "Encrypt", paymentsRef, withValue(office(), "20000.00")), true},
		{"ledger, Encrypt, payments key", req(ledger, "Encrypt", paymentsRef, office()), false},
		{"payments, CheckHealth", req(paymentsM, "CheckHealth", service, ctxAt(wednesday(3, 0), AuthMTLS, "10.0.5.5")), true},
	}
}

// TestBenchmarkPolicySet checks that the benchmark measures what it claims:
// at least 100 valid policies, and the decisions it times are the right ones.
func TestBenchmarkPolicySet(t *testing.T) {
	e := benchEngine(t)
	if n := len(e.PolicyIDs()); n < 100 {
		t.Fatalf("benchmark policy set has %d policies, want at least 100", n)
	}
	for _, bc := range benchRequests() {
		t.Run(bc.name, func(t *testing.T) {
			if d := e.Decide(bc.req); d.Allow != bc.allow || len(d.Errors) > 0 {
				t.Errorf("Decide(%s) = %v by %q (errors %q), want %v", bc.name, d.Allow, d.Policies, d.Errors, bc.allow)
			}
		})
	}
}

// decideLatency decides n requests, cycling through reqs, and returns the
// 50th and 99th percentile latency in microseconds.
func decideLatency(e *Engine, reqs []benchCase, n int) (p50, p99 float64) {
	lat := make([]time.Duration, n)
	for i := range n {
		r := reqs[i%len(reqs)].req
		start := time.Now()
		e.Decide(r)
		lat[i] = time.Since(start)
	}
	slices.Sort(lat)
	us := func(q float64) float64 { return float64(lat[int(q*float64(n-1))]) / float64(time.Microsecond) }
	return us(0.50), us(0.99)
}

// BenchmarkDecide100Policies decides a mix of requests against the example
// policies plus 94 generated per-service policies, and reports p50 and p99
// latency over 100k further decisions.
func BenchmarkDecide100Policies(b *testing.B) {
	e := benchEngine(b)
	reqs := benchRequests()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e.Decide(reqs[i%len(reqs)].req)
		i++
	}
	p50, p99 := decideLatency(e, reqs, 100_000)
	b.ReportMetric(p50, "p50-µs")
	b.ReportMetric(p99, "p99-µs")
}

// BenchmarkDecideWorstCase decides the request that evaluates the most
// policies: a reveal, which every protect/reveal policy may match.
func BenchmarkDecideWorstCase(b *testing.B) {
	e := benchEngine(b)
	r := req(payments, "Decrypt", paymentsPAN, withValue(office(), "125.50"))
	b.ReportAllocs()
	for b.Loop() {
		e.Decide(r)
	}
	p50, p99 := decideLatency(e, []benchCase{{req: r}}, 100_000)
	b.ReportMetric(p50, "p50-µs")
	b.ReportMetric(p99, "p99-µs")
}

func bound(c Context) Context { c.AuthStrength = AuthBoundToken; return c }
