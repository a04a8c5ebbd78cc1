package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/kms"
	"github.com/tresorkms/tresor/kms/pkcs11"
)

// gcmRootKey is a fake root key backed by a real AES-256-GCM.
type gcmRootKey struct {
	id   string
	aead cipher.AEAD
}

func newGCMRootKey(t *testing.T, id string) *gcmRootKey {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return &gcmRootKey{id: id, aead: aead}
}

func (k *gcmRootKey) ID() string { return k.id }

func (k *gcmRootKey) Wrap(_ context.Context, plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, k.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return k.aead.Seal(nonce, nonce, plaintext, aad), nil
}

func (k *gcmRootKey) Unwrap(_ context.Context, wrapped, aad []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(wrapped) < n {
		return nil, kms.ErrUnwrap
	}
	pt, err := k.aead.Open(nil, wrapped[:n], wrapped[n:], aad)
	if err != nil {
		return nil, kms.ErrUnwrap
	}
	return pt, nil
}

func (k *gcmRootKey) Close() error { return nil }

// downRootKey is a root key whose provider cannot be reached.
type downRootKey struct{ id string }

func (k downRootKey) ID() string { return k.id }
func (k downRootKey) Wrap(context.Context, []byte, []byte) ([]byte, error) {
	return nil, fmt.Errorf("pkcs11: token removed: %w", kms.ErrUnavailable)
}
func (k downRootKey) Unwrap(context.Context, []byte, []byte) ([]byte, error) {
	return nil, fmt.Errorf("pkcs11: token removed: %w", kms.ErrUnavailable)
}
func (k downRootKey) Close() error { return nil }

// sample is one gathered series: its labels and its value (a counter's or
// gauge's value, a histogram's sample count).
type sample struct {
	labels map[string]string
	value  float64
}

// gather gathers reg into series by family name.
func gather(t *testing.T, reg prometheus.Gatherer) map[string][]sample {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather() err = %v, want nil", err)
	}
	out := map[string][]sample{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			s := sample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				s.value = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				s.value = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				s.value = float64(m.GetHistogram().GetSampleCount())
			}
			out[f.GetName()] = append(out[f.GetName()], s)
		}
	}
	return out
}

// value returns the value of family's series with exactly the labels
// given as name, value pairs.
func value(t *testing.T, got map[string][]sample, family string, labels ...string) float64 {
	t.Helper()
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, s := range got[family] {
		if len(s.labels) != len(want) {
			continue
		}
		match := true
		for k, v := range want {
			if s.labels[k] != v {
				match = false
			}
		}
		if match {
			return s.value
		}
	}
	t.Fatalf("no series %s%v; gathered %v", family, want, got[family])
	return 0
}

func TestRootKeyMetricsRecordCallsAndErrors(t *testing.T) {
	ctx := context.Background()
	m := newRootKeyMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

	ok := m.instrumentRootKey("pkcs11", newGCMRootKey(t, "pkcs11:token=t;object=root-1"))
	down := m.instrumentRootKey("aws-kms", downRootKey{id: "arn:aws:kms:eu-west-1:111122223333:key/customer-7"})
	if ok.ID() != "pkcs11:token=t;object=root-1" {
		t.Errorf("instrumented ID() = %q, want the wrapped key's", ok.ID())
	}
	aad := []byte("keys/customer-ssn-key")
	for range 3 {
		w, err := ok.Wrap(ctx, []byte("keyset"), aad)
		if err != nil {
			t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
		}
		if pt, err := ok.Unwrap(ctx, w, aad); err != nil || string(pt) != "keyset" {
			t.Fatalf("Unwrap(Wrap(pt, aad), aad) = %q, %v; want %q, nil", pt, err, "keyset")
		}
	}
	if _, err := ok.Unwrap(ctx, []byte("tampered wrapped keyset"), aad); !errors.Is(err, kms.ErrUnwrap) {
		t.Errorf("Unwrap(tampered) err = %v, want kms.ErrUnwrap passed through", err)
	}
	if _, err := down.Wrap(ctx, []byte("keyset"), aad); !errors.Is(err, kms.ErrUnavailable) {
		t.Errorf("Wrap() on a provider down err = %v, want kms.ErrUnavailable passed through", err)
	}
	for range 2 {
		if _, err := down.Unwrap(ctx, []byte("x"), aad); !errors.Is(err, kms.ErrUnavailable) {
			t.Errorf("Unwrap() on a provider down err = %v, want kms.ErrUnavailable passed through", err)
		}
	}

	got := gather(t, reg)
	for _, c := range []struct {
		family string
		labels []string
		want   float64
	}{
		{"tresor_root_key_call_duration_seconds", []string{"provider", "pkcs11", "op", "wrap"}, 3},
		{"tresor_root_key_call_duration_seconds", []string{"provider", "pkcs11", "op", "unwrap"}, 4},
		{"tresor_root_key_call_duration_seconds", []string{"provider", "aws-kms", "op", "wrap"}, 1},
		{"tresor_root_key_call_duration_seconds", []string{"provider", "aws-kms", "op", "unwrap"}, 2},
		{"tresor_root_key_call_errors_total", []string{"provider", "pkcs11", "op", "wrap", "kind", "other"}, 0},
		{"tresor_root_key_call_errors_total", []string{"provider", "pkcs11", "op", "unwrap", "kind", "other"}, 1},
		{"tresor_root_key_call_errors_total", []string{"provider", "pkcs11", "op", "unwrap", "kind", "unavailable"}, 0},
		{"tresor_root_key_call_errors_total", []string{"provider", "aws-kms", "op", "wrap", "kind", "unavailable"}, 1},
		{"tresor_root_key_call_errors_total", []string{"provider", "aws-kms", "op", "unwrap", "kind", "unavailable"}, 2},
		{"tresor_root_key_call_errors_total", []string{"provider", "aws-kms", "op", "unwrap", "kind", "other"}, 0},
	} {
		if v := value(t, got, c.family, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, v, c.want)
		}
	}
	// The latency is observed: a histogram's sum is positive after calls.
	families, _ := reg.Gather()
	for _, f := range families {
		if f.GetName() != "tresor_root_key_call_duration_seconds" {
			continue
		}
		for _, mt := range f.GetMetric() {
			if h := mt.GetHistogram(); h.GetSampleCount() > 0 && h.GetSampleSum() <= 0 {
				t.Errorf("duration histogram %v: %d samples, sum %v; want a positive sum", mt.GetLabel(), h.GetSampleCount(), h.GetSampleSum())
			}
		}
	}
}

func TestRootKeyMetricsOpener(t *testing.T) {
	ctx := context.Background()
	m := newRootKeyMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	base := func(_ context.Context, uri string) (kms.RootKey, error) {
		if strings.HasPrefix(uri, "bad") {
			return nil, kms.ErrInvalidURI
		}
		return newGCMRootKey(t, uri), nil
	}
	open := m.opener(base)
	for _, c := range []struct{ uri, provider string }{
		{"pkcs11:token=customer-acme;object=root-1?pin-source=/etc/tresor/pin", "pkcs11"},
		{"aws-kms://arn:aws:kms:eu-west-1:111122223333:key/customer-acme", "aws-kms"},
		{"local-file:///var/lib/tresor/customer-acme.key", "local-file"},
		{"vault://customer-acme", "other"},
	} {
		if got := rootKeyProvider(c.uri); got != c.provider {
			t.Errorf("rootKeyProvider(%q) = %q, want %q", c.uri, got, c.provider)
		}
		k, err := open(ctx, c.uri)
		if err != nil {
			t.Fatalf("open(%q) err = %v, want nil", c.uri, err)
		}
		if _, err := k.Wrap(ctx, []byte("keyset"), nil); err != nil {
			t.Fatal(err)
		}
		if err := k.Close(); err != nil {
			t.Errorf("Close() err = %v, want nil", err)
		}
	}
	if _, err := open(ctx, "bad:uri"); !errors.Is(err, kms.ErrInvalidURI) {
		t.Errorf("open(bad) err = %v, want kms.ErrInvalidURI passed through", err)
	}
	got := gather(t, reg)
	for _, p := range []string{"pkcs11", "aws-kms", "local-file", "other"} {
		if v := value(t, got, "tresor_root_key_call_duration_seconds", "provider", p, "op", "wrap"); v != 1 {
			t.Errorf("wrap calls of provider %s = %v, want 1", p, v)
		}
	}
	checkNoSecretLabels(t, reg, "customer-acme", "/etc/tresor/pin")

	// Without metrics, open is returned as it is.
	var none *rootKeyMetrics
	k, err := none.opener(base)(ctx, "local-file:///k")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.(*gcmRootKey); !ok {
		t.Errorf("nil metrics opener returned %T, want the key unwrapped", k)
	}
}

func TestKeysetCacheMetrics(t *testing.T) {
	ctx := context.Background()
	st := openTestStore(t)
	root := newGCMRootKey(t, "local-file:test")
	ring, err := envelope.New(st, root, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := registerServiceMetrics(reg, ring, st, nil); err != nil {
		t.Fatalf("registerServiceMetrics() err = %v, want nil", err)
	}
	for _, name := range []string{"cache-a", "cache-b"} {
		if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: name, Type: store.KeyTypeAES256GCM}); err != nil {
			t.Fatalf("CreateKey(%q) err = %v, want nil", name, err)
		}
	}
	// A cold keyring: its first use of each key misses, later uses hit.
	cold, err := envelope.New(st, root, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg = prometheus.NewRegistry()
	if err := registerServiceMetrics(reg, cold, st, nil); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, _, err := cold.Encrypt(ctx, "cache-a", []byte("pt"), nil); err != nil {
			t.Fatalf("Encrypt() err = %v, want nil", err)
		}
	}
	stats := cold.Cache().Stats()
	got := gather(t, reg)
	if v := value(t, got, "tresor_keyset_cache_hits_total"); v != float64(stats.Hits) || v < 4 {
		t.Errorf("tresor_keyset_cache_hits_total = %v, want Stats().Hits %d (at least 4)", v, stats.Hits)
	}
	if v := value(t, got, "tresor_keyset_cache_misses_total"); v != float64(stats.Misses) || v < 1 {
		t.Errorf("tresor_keyset_cache_misses_total = %v, want Stats().Misses %d (at least 1)", v, stats.Misses)
	}
	if v := value(t, got, "tresor_keyset_cache_stale_total"); v != 0 {
		t.Errorf("tresor_keyset_cache_stale_total = %v, want 0", v)
	}
	if v := value(t, got, "tresor_keyset_cache_keys"); v != 1 {
		t.Errorf("tresor_keyset_cache_keys = %v, want 1", v)
	}
}

// countingRotations counts the reads of the latest rotation.
type countingRotations struct {
	mu    sync.Mutex
	reads int
	r     store.RootKeyRotation
	err   error
}

func (c *countingRotations) LatestRootKeyRotation(context.Context) (store.RootKeyRotation, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	return c.r, c.err
}

func (c *countingRotations) set(r store.RootKeyRotation, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.r, c.err = r, err
}

func TestRootKeyRotationMetrics(t *testing.T) {
	src := &countingRotations{err: fmt.Errorf("latest root key rotation: none started: %w", store.ErrNotFound)}
	now := time.Unix(1_700_000_000, 0)
	p := newRotationProgress(src, 5*time.Second, time.Second)
	p.now = func() time.Time { return now }
	reg := prometheus.NewRegistry()
	for _, c := range p.collectors() {
		reg.MustRegister(c)
	}
	check := func(when string, total, rewrapped, running float64) {
		t.Helper()
		got := gather(t, reg)
		if v := value(t, got, "tresor_root_key_rotation_keysets", "state", "total"); v != total {
			t.Errorf("%s: keysets{state=total} = %v, want %v", when, v, total)
		}
		if v := value(t, got, "tresor_root_key_rotation_keysets", "state", "rewrapped"); v != rewrapped {
			t.Errorf("%s: keysets{state=rewrapped} = %v, want %v", when, v, rewrapped)
		}
		if v := value(t, got, "tresor_root_key_rotation_running"); v != running {
			t.Errorf("%s: running = %v, want %v", when, v, running)
		}
	}
	check("no rotation", 0, 0, 0)
	src.set(store.RootKeyRotation{ID: "rkr-customer-7", FromURI: "pkcs11:token=a;object=old", ToURI: "pkcs11:token=a;object=new",
		FromID: "old", ToID: "new", State: store.RotationRunning, Total: 120, Rewrapped: 30}, nil)
	check("within the cache time", 0, 0, 0)
	now = now.Add(5 * time.Second)
	check("running", 120, 30, 1)
	for range 10 {
		check("running, scraped again", 120, 30, 1)
	}
	if src.reads != 2 {
		t.Errorf("%d store reads for 13 scrapes over two cache periods, want 2", src.reads)
	}
	now = now.Add(5 * time.Second)
	src.set(store.RootKeyRotation{}, fmt.Errorf("latest root key rotation: %w", store.ErrUnavailable))
	check("store down: last values", 120, 30, 1)
	now = now.Add(5 * time.Second)
	src.set(store.RootKeyRotation{State: store.RotationDone, Total: 120, Rewrapped: 120}, nil)
	check("done", 120, 120, 0)
	checkNoSecretLabels(t, reg, "rkr-customer-7", "object=old", "object=new")

	// Against a real store, through registerServiceMetrics.
	ctx := context.Background()
	st := openTestStore(t)
	ring, err := envelope.New(st, newGCMRootKey(t, "old-root"), envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: "k", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.StartRootKeyRotation(ctx, store.RootKeyRotation{ID: "rkr-1", FromURI: "local-file:///old", ToURI: "local-file:///new", FromID: "old-root", ToID: "new-root", Total: 1}); err != nil {
		t.Fatal(err)
	}
	reg = prometheus.NewRegistry()
	if err := registerServiceMetrics(reg, ring, st, nil); err != nil {
		t.Fatal(err)
	}
	got := gather(t, reg)
	if v := value(t, got, "tresor_root_key_rotation_running"); v != 1 {
		t.Errorf("store rotation running: tresor_root_key_rotation_running = %v, want 1", v)
	}
	if v := value(t, got, "tresor_root_key_rotation_keysets", "state", "total"); v != 1 {
		t.Errorf("store rotation of one keyset: keysets{state=total} = %v, want 1", v)
	}
}

func openTestStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// checkNoSecretLabels fails if any label value of any series reg gathers
// contains one of secrets.
func checkNoSecretLabels(t *testing.T, reg prometheus.Gatherer, secrets ...string) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather() err = %v, want nil", err)
	}
	n := 0
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				n++
				for _, s := range secrets {
					if s != "" && strings.Contains(l.GetValue(), s) {
						t.Errorf("metric %s label %s=%q contains %q", f.GetName(), l.GetName(), l.GetValue(), s)
					}
				}
			}
		}
	}
	if n == 0 {
		t.Error("gathered no label at all; the check checked nothing")
	}
}

// pkcs11Secrets returns what a PKCS#11 root-key URI reveals: the URI, its
// PIN source path and the PIN.
func pkcs11Secrets(t *testing.T, uri string) []string {
	t.Helper()
	u, err := pkcs11.ParseURI(uri)
	if err != nil {
		t.Fatalf("pkcs11.ParseURI(dev root key) err = %v", err)
	}
	pin, err := os.ReadFile(u.PINSource)
	if err != nil {
		t.Fatal(err)
	}
	return []string{uri, u.PINSource, strings.TrimSpace(string(pin)), "object=" + u.Object, "token=" + u.Token}
}

// TestMetricLabelsCarryNoSecrets opens the dev root key (a SoftHSM2 token,
// PIN from a file) the way serve does, uses keys with telling names, and
// checks every label value of the whole registry.
func TestMetricLabelsCarryNoSecrets(t *testing.T) {
	ctx := context.Background()
	st := openTestStore(t)
	cfg := devCfg
	m := newRootKeyMetrics()
	rk, err := openInstrumentedRootKeys(ctx, cfg, st, slog.New(slog.DiscardHandler), m)
	if err != nil {
		t.Fatalf("openInstrumentedRootKeys() err = %v, want nil", err)
	}
	defer rk.Close()
	ring, err := envelope.New(st, rk.set, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := registerServiceMetrics(reg, ring, st, m); err != nil {
		t.Fatal(err)
	}
	names := []string{"customer-ssn-key", "acme-corp-payroll", "patient-records-7"}
	plaintexts := []string{"123-45-6789", "DE89370400440532013000"}
	secrets := append(slices.Clone(names), plaintexts...)
	secrets = append(secrets, pkcs11Secrets(t, cfg.RootKey.URI)...)
	secrets = append(secrets, rk.set.IDs()...)
	for _, name := range names {
		if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: name, Type: store.KeyTypeAES256GCM}); err != nil {
			t.Fatalf("CreateKey(%q) err = %v, want nil", name, err)
		}
		for _, pt := range plaintexts {
			ct, _, err := ring.Encrypt(ctx, name, []byte(pt), []byte("customer=42"))
			if err != nil {
				t.Fatalf("Encrypt() err = %v, want nil", err)
			}
			secrets = append(secrets, envelope.FormatCiphertext(ct))
		}
	}
	if _, err := ring.RotateKey(ctx, names[0]); err != nil {
		t.Fatalf("RotateKey() err = %v, want nil", err)
	}
	// A cold keyring unwraps through the HSM.
	cold, err := envelope.New(st, rk.set, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cold.Encrypt(ctx, names[1], []byte(plaintexts[0]), nil); err != nil {
		t.Fatalf("Encrypt() on a cold keyring err = %v, want nil", err)
	}
	got := gather(t, reg)
	if v := value(t, got, "tresor_root_key_call_duration_seconds", "provider", "pkcs11", "op", "wrap"); v < float64(len(names)) {
		t.Errorf("pkcs11 wraps = %v, want at least %d", v, len(names))
	}
	if v := value(t, got, "tresor_root_key_call_duration_seconds", "provider", "pkcs11", "op", "unwrap"); v < 1 {
		t.Errorf("pkcs11 unwraps = %v, want at least 1", v)
	}
	for _, f := range []string{"tresor_keyset_cache_hits_total", "tresor_keyset_cache_misses_total", "tresor_keyset_cache_keys", "tresor_root_key_rotation_running", "tresor_root_key_rotation_keysets", "tresor_root_key_call_errors_total"} {
		if len(got[f]) == 0 {
			t.Errorf("family %s not gathered", f)
		}
	}
	checkNoSecretLabels(t, reg, secrets...)
}

// TestServeMetricsEndpoint serves the dev configuration with listen.metrics,
// uses keys with telling names through the CLI, and scrapes /metrics: the
// service's families are there, and nothing in the page names a key, a
// root key, the PIN or a payload.
func TestServeMetricsEndpoint(t *testing.T) {
	cfg := devCfg
	cfg.Listen.Metrics = freeAddr(t)
	conn := startDev(t, cfg)
	with := func(args ...string) []string { return append(args, conn...) }
	name := "customer-ssn-key-" + strings.ToLower(rand.Text()[:6])
	const ssn = "123-45-6789"
	mustRun(t, "", with("keys", "create", name)...)
	ct := mustRun(t, ssn, with("encrypt", "--key", name, "--aad", "customer=42")...)
	if got := mustRun(t, ct, with("decrypt", "--aad", "customer=42")...); got != ssn {
		t.Fatalf("decrypt = %q, want %q", got, ssn)
	}

	resp, err := http.Get("http://" + cfg.Listen.Metrics + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics err = %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics = %d, %v", resp.StatusCode, err)
	}
	page := string(body)
	for _, want := range []string{
		`tresor_root_key_call_duration_seconds_count{op="wrap",provider="pkcs11"}`,
		`tresor_root_key_call_errors_total{kind="unavailable",op="unwrap",provider="pkcs11"} 0`,
		"tresor_keyset_cache_hits_total ",
		"tresor_keyset_cache_misses_total ",
		"tresor_keyset_cache_keys ",
		`tresor_root_key_rotation_keysets{state="total"}`,
		`tresor_root_key_rotation_keysets{state="rewrapped"}`,
		"tresor_root_key_rotation_running 0",
		"tresor_anomaly_principals ",
		"tresor_anomaly_principals_evicted_total 0",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	secrets := append([]string{name, ssn, ct, strings.TrimSpace(ct), "customer=42"}, pkcs11Secrets(t, cfg.RootKey.URI)...)
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, "#") {
			continue // HELP and TYPE: fixed text
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				t.Errorf("/metrics line %q contains %q", line, s)
			}
		}
	}
}
