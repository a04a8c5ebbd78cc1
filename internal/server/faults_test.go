package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
	"github.com/tresorkms/tresor/internal/store/pgtest"
	"github.com/tresorkms/tresor/kms/awskms"
	"github.com/tresorkms/tresor/kms/pkcs11"
	"github.com/tresorkms/tresor/localkms"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
	"github.com/tresorkms/tresor/softhsm"
)

// The fault tests run the server over gRPC against real peers that go away
// and come back: a SoftHSM2 token, a local-kms process, PostgreSQL
// connections. They fail, never skip, when a peer is missing.

func TestMain(m *testing.M) {
	code := m.Run()
	if hsm.dir != "" {
		os.RemoveAll(hsm.dir)
	}
	os.Exit(code)
}

// faultClock is the keyring's clock in the fault tests: Advance moves it
// and runs the cache timers that came due.
type faultClock struct {
	mu     sync.Mutex
	t      time.Time
	timers []*faultTimer
}

type faultTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFaultClock() *faultClock {
	return &faultClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
}

func (c *faultClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *faultClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	tm := &faultTimer{at: c.t.Add(d), f: f}
	c.timers = append(c.timers, tm)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !tm.stopped
		tm.stopped = true
		return was
	}
}

func (c *faultClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	var due []*faultTimer
	for _, tm := range c.timers {
		if !tm.stopped && !tm.at.After(c.t) {
			tm.stopped = true
			due = append(due, tm)
		}
	}
	c.mu.Unlock()
	for _, tm := range due {
		tm.f()
	}
}

// outageSchema protects $.iban under the key "warm".
const outageSchema = `
name: outage
version: 1
default_tier: public
tiers:
  restricted: {protection: aead, key: warm, sensitivity: restricted}
  public:     {protection: none}
fields:
  - {path: "$.iban", tier: restricted}
`

// rootKeyOutage is a real root key that a test takes away and brings back.
type rootKeyOutage struct {
	kek  envelope.KEK
	down func(t *testing.T)
	up   func(t *testing.T)
	// secrets must appear in no error and no log (PINs, say).
	secrets []string
}

const (
	faultMaxAge = time.Minute
	faultGrace  = 10 * time.Minute
	// unavailableRootKey is the message of every call that needs the root
	// key while it is unreachable.
	unavailableRootKey = "root key provider unavailable; retry later"
)

// checkUnavailable fails t unless err is UNAVAILABLE with message want and
// holds none of secrets.
func checkUnavailable(t *testing.T, what string, err error, want string, secrets []string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.Unavailable || st.Message() != want {
		t.Errorf("%s err = %v, want Unavailable %q", what, err, want)
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(fmt.Sprint(err), s) {
			t.Errorf("%s err = %v, which holds the secret %q", what, err, s)
		}
	}
}

// testRootKeyOutage runs the server on o's root key and takes it away:
// a cached key keeps serving within the stale grace, a key not cached and
// every call that wraps fail UNAVAILABLE and store nothing; once the grace
// is over the cached key fails too. The root key comes back and everything
// works again, without a restart, including what was encrypted before.
func testRootKeyOutage(t *testing.T, o rootKeyOutage) {
	ctx := context.Background()
	clock := newFaultClock()
	ringLogs := &syncBuffer{}
	ts := startServerWith(t, serverConfig{
		rootKeys: func(testing.TB, store.Store, envelope.KEK, string) (envelope.KEK, RootKeyRotations) {
			return o.kek, nil
		},
		ringOptions: func(opts *envelope.Options) {
			opts.Now, opts.AfterFunc = clock.Now, clock.AfterFunc
			opts.CacheMaxAge, opts.CacheStaleGrace = faultMaxAge, faultGrace
			opts.Logger = slog.New(slog.NewJSONHandler(ringLogs, nil))
		},
	})
	const (
		warmText = "IBAN DE89 3704 0044 0532 0130 00"
		coldText = "card 4111 1111 1111 1111"
	)
	secrets := append([]string{warmText, coldText, b64(warmText), b64(coldText)}, o.secrets...)

	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "warm", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Fatalf("CreateKey(warm) err = %v, want nil", err)
	}
	warm, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "warm", Plaintext: []byte(warmText)})
	if err != nil {
		t.Fatalf("Encrypt(warm) err = %v, want nil", err)
	}
	// "cold" is made by another keyring on the same store and root key:
	// the server has never loaded it.
	other, err := envelope.New(ts.store, o.kek, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.CreateKey(ctx, envelope.KeySpec{Name: "cold", Type: store.KeyTypeAES256GCM}); err != nil {
		t.Fatalf("CreateKey(cold) err = %v, want nil", err)
	}
	coldBin, _, err := other.Encrypt(ctx, "cold", []byte(coldText), nil)
	if err != nil {
		t.Fatalf("Encrypt(cold) err = %v, want nil", err)
	}
	coldCT := envelope.FormatCiphertext(coldBin)
	// A document with a field under "warm", to reveal during the outage.
	fc := tresorv1.NewFieldServiceClient(ts.conn)
	if _, err := fc.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: outageSchema}); err != nil {
		t.Fatalf("PutSchema(outage) err = %v, want nil", err)
	}
	doc, err := fc.ProtectDocument(ctx, &tresorv1.ProtectDocumentRequest{Schema: "outage", Document: `{"iban":"` + warmText + `"}`})
	if err != nil {
		t.Fatalf("ProtectDocument() err = %v, want nil", err)
	}
	reveal := func() (*tresorv1.RevealDocumentResponse, error) {
		return fc.RevealDocument(ctx, &tresorv1.RevealDocumentRequest{Schema: "outage", Document: doc.GetDocument()})
	}
	warmRev := keyRevisions(t, ts.store)

	o.down(t)
	began := time.Now()
	encWarm := func() error {
		_, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "warm", Plaintext: []byte(warmText)})
		return err
	}
	if err := encWarm(); err != nil {
		t.Errorf("Encrypt(warm) with the root key gone, within max age: err = %v, want nil (cached)", err)
	}
	clock.Advance(faultMaxAge + time.Second)
	if err := encWarm(); err != nil {
		t.Errorf("Encrypt(warm) with the root key gone, past max age: err = %v, want nil (served stale)", err)
	}
	if got, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: warm.GetCiphertext()}); err != nil || string(got.GetPlaintext()) != warmText {
		t.Errorf("Decrypt(warm) with the root key gone = %v, want the plaintext (served stale)", err)
	}
	if st := ts.ring.Cache().Stats(); st.Stale == 0 {
		t.Errorf("Cache().Stats().Stale = 0 after calls served stale, want more")
	}
	_, err = ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "cold", Plaintext: []byte(coldText)})
	checkUnavailable(t, "Encrypt(cold) with the root key gone", err, unavailableRootKey, secrets)
	_, err = ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: coldCT})
	checkUnavailable(t, "Decrypt(cold) with the root key gone", err, unavailableRootKey, secrets)
	_, err = ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "during", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM})
	checkUnavailable(t, "CreateKey(during) with the root key gone", err, unavailableRootKey, secrets)
	_, err = ts.keys.RotateKey(ctx, &tresorv1.RotateKeyRequest{Key: "warm"})
	checkUnavailable(t, "RotateKey(warm) with the root key gone", err, unavailableRootKey, secrets)
	if got := keyRevisions(t, ts.store); got != warmRev {
		t.Errorf("keys after CreateKey and RotateKey failed = %s, want %s (nothing written)", got, warmRev)
	}
	clock.Advance(faultGrace)
	checkUnavailable(t, "Encrypt(warm) past max age + grace", encWarm(), unavailableRootKey, secrets)
	// A reveal that cannot reach the root key is a retryable outage, not
	// the "decryption failed" of a tampered field.
	_, err = reveal()
	checkUnavailable(t, "RevealDocument(warm field) past max age + grace", err, unavailableRootKey, secrets)
	t.Logf("calls with the root key gone took %v", time.Since(began))

	o.up(t)
	if err := encWarm(); err != nil {
		t.Errorf("Encrypt(warm) with the root key back err = %v, want nil", err)
	}
	for _, c := range []struct {
		name, want, ct string
	}{{"warm", warmText, warm.GetCiphertext()}, {"cold", coldText, coldCT}} {
		if got, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: c.ct}); err != nil || string(got.GetPlaintext()) != c.want {
			t.Errorf("Decrypt(%s, made before the outage) with the root key back: err = %v, want the plaintext", c.name, err)
		}
	}
	if got, err := reveal(); err != nil || !strings.Contains(got.GetDocument(), warmText) {
		t.Errorf("RevealDocument() with the root key back err = %v, want the document in clear", err)
	}
	if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: "during", Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
		t.Errorf("CreateKey(during) with the root key back err = %v, want nil", err)
	}
	if _, err := ts.keys.RotateKey(ctx, &tresorv1.RotateKeyRequest{Key: "warm"}); err != nil {
		t.Errorf("RotateKey(warm) with the root key back err = %v, want nil", err)
	}

	if n := strings.Count(ringLogs.String(), "serving a cached key past cache.max_age"); n != 1 {
		t.Errorf("stale warnings logged = %d, want 1 (once a minute per key):\n%s", n, ringLogs)
	}
	if !strings.Contains(ts.logs.String(), "root key unavailable") {
		t.Errorf("server log holds no \"root key unavailable\" line, want one per failed call")
	}
	for _, log := range []string{ts.logs.String(), ringLogs.String()} {
		for _, s := range secrets {
			if strings.Contains(log, s) {
				t.Errorf("log holds the secret %q", s)
			}
		}
	}
}

// hsm is the SoftHSM2 token of the fault tests, made once per process:
// SoftHSM2 reads its configuration at C_Initialize, so SOFTHSM2_CONF is set
// before any root key opens.
var hsm struct {
	once  sync.Once
	dir   string
	token *softhsm.Token
	uri   string
	err   error
}

func softHSMToken(t *testing.T) (*softhsm.Token, string) {
	t.Helper()
	hsm.once.Do(func() {
		if hsm.err = softhsm.Available(); hsm.err != nil {
			return
		}
		if hsm.dir, hsm.err = os.MkdirTemp("", "tresor-server-faults-"); hsm.err != nil {
			return
		}
		ctx := context.Background()
		if hsm.token, hsm.err = softhsm.NewToken(ctx, hsm.dir, "tresor-faults"); hsm.err != nil {
			return
		}
		if hsm.err = hsm.token.SetProcessEnv(); hsm.err != nil {
			return
		}
		hsm.uri = hsm.token.URI("root-1")
		hsm.err = pkcs11.CreateRootKey(ctx, hsm.uri)
	})
	if hsm.err != nil {
		t.Fatalf("the SoftHSM2 fault test needs SoftHSM2 (make test-deps installs it): %v", hsm.err)
	}
	return hsm.token, hsm.uri
}

// TestSoftHSMTokenDisappears moves the SoftHSM2 token's files away under
// the running server, as a token pulled out, and puts them back. The root
// key is the one pkcs11.RootKey, never reopened: SoftHSM2 sees a token that
// came back only after the module is finalized and initialized again, which
// the root key does itself (see kms/pkcs11), so the server recovers without
// a restart.
func TestSoftHSMTokenDisappears(t *testing.T) {
	tok, uri := softHSMToken(t)
	tokens := filepath.Join(filepath.Dir(tok.ConfigPath), "tokens")
	entries, err := os.ReadDir(tokens)
	if err != nil || len(entries) != 1 {
		t.Fatalf("ReadDir(%s) = %d entries, %v; want the one token", tokens, len(entries), err)
	}
	present := filepath.Join(tokens, entries[0].Name())
	gone := filepath.Join(filepath.Dir(tokens), "pulled-out")
	t.Cleanup(func() { os.Rename(gone, present) })
	pin, err := os.ReadFile(tok.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	// A short recovery backoff keeps the test fast; up waits it out so the
	// first call after the token is back tries to recover it.
	const backoff = 20 * time.Millisecond
	k, err := pkcs11.Open(context.Background(), uri, pkcs11.WithRecoveryBackoff(backoff, backoff))
	if err != nil {
		t.Fatalf("pkcs11.Open() err = %v, want nil", err)
	}
	t.Cleanup(func() { k.Close() })
	testRootKeyOutage(t, rootKeyOutage{
		kek: k,
		down: func(t *testing.T) {
			if err := os.Rename(present, gone); err != nil {
				t.Fatal(err)
			}
		},
		up: func(t *testing.T) {
			if err := os.Rename(gone, present); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * backoff)
		},
		secrets: []string{string(pin)},
	})
	if st := k.Stats(); st.Recoveries == 0 {
		t.Errorf("Stats().Recoveries = 0, want the root key to have recovered the token by itself")
	}
}

// TestLocalKMSStopped stops local-kms under the running server and starts
// it again with the same data.
func TestLocalKMSStopped(t *testing.T) {
	ctx := context.Background()
	srv, err := localkms.Start(ctx, localkms.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("the local-kms fault test needs local-kms: localkms.Start() err = %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, kv := range srv.ClientEnv() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	for _, k := range []string{"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_MAX_ATTEMPTS"} {
		t.Setenv(k, "")
	}
	uri, err := awskms.CreateRootKey(ctx, "aws-kms://alias/tresor-faults?region="+srv.Region()+"&endpoint="+srv.Endpoint())
	if err != nil {
		t.Fatalf("awskms.CreateRootKey() err = %v, want nil", err)
	}
	k, err := awskms.Open(ctx, uri, awskms.WithMaxAttempts(2))
	if err != nil {
		t.Fatalf("awskms.Open() err = %v, want nil", err)
	}
	t.Cleanup(func() { k.Close() })
	endpoint := srv.Endpoint()
	testRootKeyOutage(t, rootKeyOutage{
		kek: k,
		down: func(t *testing.T) {
			if err := srv.Stop(); err != nil {
				t.Fatalf("Stop() err = %v, want nil", err)
			}
		},
		up: func(t *testing.T) {
			if err := srv.Restart(ctx); err != nil {
				t.Fatalf("Restart() err = %v, want nil", err)
			}
			if srv.Endpoint() != endpoint {
				t.Fatalf("local-kms came back on %s, not %s (its port was taken)", srv.Endpoint(), endpoint)
			}
		},
		secrets: []string{os.Getenv("AWS_SECRET_ACCESS_KEY")},
	})
}

// TestPostgresConnectionsDrop kills the server's PostgreSQL connections
// over and over while callers encrypt, create and rotate keys. Every call
// succeeds or fails UNAVAILABLE, the service recovers without a restart,
// and nothing is half written: every stored key unwraps, its versions are
// consistent, and everything encrypted decrypts.
func TestPostgresConnectionsDrop(t *testing.T) {
	const (
		kills    = 15
		rotators = 3
		creators = 2
		sealers  = 4
	)
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	st, err := store.OpenPostgres(ctx, url+"&pool_max_conns=8")
	if err != nil {
		t.Fatalf("OpenPostgres() err = %v, want nil", err)
	}
	t.Cleanup(func() { st.Close() })
	var rootKey envelope.KEK
	ts := startServerWith(t, serverConfig{
		store: st,
		rootKeys: func(_ testing.TB, _ store.Store, kek envelope.KEK, _ string) (envelope.KEK, RootKeyRotations) {
			rootKey = kek
			return kek, nil
		},
		// Every encryption reserves its use in the store, so every call
		// meets the dropped connections.
		ringOptions: func(o *envelope.Options) { o.UsageBlock = 1 },
	})
	for i := range max(rotators, sealers) {
		if _, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: fmt.Sprintf("k%d", i), Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM}); err != nil {
			t.Fatalf("CreateKey(k%d) err = %v, want nil", i, err)
		}
	}

	var (
		mu          sync.Mutex
		outcomes    = map[string]map[codes.Code]int{}
		sealed      = map[string]string{} // ciphertext -> plaintext
		rotated     = map[string][2]int{} // key -> rotations that succeeded, that may have
		unavailable atomic.Int64
	)
	// check records a call's outcome and fails t unless it is OK or
	// UNAVAILABLE with a clear message.
	check := func(what string, err error) bool {
		st, _ := status.FromError(err)
		mu.Lock()
		if outcomes[what] == nil {
			outcomes[what] = map[codes.Code]int{}
		}
		outcomes[what][st.Code()]++
		mu.Unlock()
		switch st.Code() {
		case codes.OK:
			return true
		case codes.Unavailable:
			unavailable.Add(1)
			if m := st.Message(); m != "key store unavailable; retry later" {
				t.Errorf("%s while connections drop: message %q, want \"key store unavailable; retry later\"", what, m)
			}
		default:
			t.Errorf("%s while connections drop err = %v, want OK or Unavailable", what, err)
		}
		return false
	}
	done := make(chan struct{})
	stopped := func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	var wg sync.WaitGroup
	for i := range sealers {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", i)
			for n := 0; !stopped(); n++ {
				pt := fmt.Sprintf("payment %d of %s", n, key)
				resp, err := ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: key, Plaintext: []byte(pt)})
				if check("Encrypt", err) {
					mu.Lock()
					sealed[resp.GetCiphertext()] = pt
					mu.Unlock()
				}
			}
		})
	}
	for i := range rotators {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", i)
			for !stopped() {
				_, err := ts.keys.RotateKey(ctx, &tresorv1.RotateKeyRequest{Key: key})
				ok := check("RotateKey", err)
				mu.Lock()
				r := rotated[key]
				if ok {
					r[0]++
				}
				r[1]++
				rotated[key] = r
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	for i := range creators {
		wg.Go(func() {
			for n := 0; !stopped(); n++ {
				_, err := ts.keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: fmt.Sprintf("new-%d-%d", i, n), Type: tresorv1.KeyType_KEY_TYPE_AES256_GCM})
				check("CreateKey", err)
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	raw, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close(ctx)
	began := time.Now()
	for range kills {
		time.Sleep(40 * time.Millisecond)
		if _, err := raw.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	t.Logf("%d kills in %v; outcomes by call: %v", kills, time.Since(began), outcomes)
	if unavailable.Load() == 0 {
		t.Errorf("no call failed while connections dropped %d times; the test tests nothing", kills)
	}

	// The service recovers without a restart: the first call may still
	// meet a dropped connection, the next ones must not.
	var recovered error
	for range 3 {
		if _, recovered = ts.crypto.Encrypt(ctx, &tresorv1.EncryptRequest{Key: "k0", Plaintext: []byte("after")}); recovered == nil {
			break
		}
	}
	if recovered != nil {
		t.Fatalf("Encrypt() after the drops err = %v, want nil (recovered)", recovered)
	}

	// Nothing is half written: a fresh keyring unwraps every stored key and
	// uses it, and every key's versions are consistent.
	fresh, err := envelope.New(st, rootKey, envelope.Options{})
	if err != nil {
		t.Fatal(err)
	}
	keys, _, err := st.ListKeys(ctx, 1000, "")
	if err != nil {
		t.Fatalf("ListKeys() err = %v, want nil", err)
	}
	for _, k := range keys {
		for i, v := range k.Versions {
			if v.Number != uint32(i+1) {
				t.Errorf("key %s versions = %v, want 1 to %d in order", k.Name, k.Versions, len(k.Versions))
				break
			}
		}
		if int(k.PrimaryVersion) != len(k.Versions) {
			t.Errorf("key %s primary version %d of %d versions, want the last", k.Name, k.PrimaryVersion, len(k.Versions))
		}
		if r, ok := rotated[k.Name]; ok && (int(k.PrimaryVersion) < 1+r[0] || int(k.PrimaryVersion) > 1+r[1]) {
			t.Errorf("key %s primary version %d after %d rotations that succeeded of %d tried, want between %d and %d", k.Name, k.PrimaryVersion, r[0], r[1], 1+r[0], 1+r[1])
		}
		ct, _, err := fresh.Encrypt(ctx, k.Name, []byte("check"), nil)
		if err != nil {
			t.Errorf("Encrypt(%s) on a fresh keyring err = %v, want nil (the stored keyset unwraps)", k.Name, err)
			continue
		}
		if pt, _, err := fresh.Decrypt(ctx, ct, nil); err != nil || string(pt) != "check" {
			t.Errorf("Decrypt(Encrypt(%s)) on a fresh keyring = %q, %v, want \"check\", nil", k.Name, pt, err)
		}
	}
	for ct, want := range sealed {
		resp, err := ts.crypto.Decrypt(ctx, &tresorv1.DecryptRequest{Ciphertext: ct})
		if err != nil || string(resp.GetPlaintext()) != want {
			t.Errorf("Decrypt(ciphertext of %q, sealed while connections dropped) err = %v, want the plaintext", want, err)
		}
	}
	t.Logf("%d keys in the store checked, %d ciphertexts decrypted", len(keys), len(sealed))
}
