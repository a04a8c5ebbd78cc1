// Package soak runs tresor under mixed traffic for a set time while it
// injects faults, then checks that nothing was lost: the soak and fault
// run of `tresor soak`.
//
// Reach for [Run]. It sets up two replicas (`tresor serve` processes) on
// one fresh PostgreSQL database and one SoftHSM2 token with a root key,
// mutual TLS from a local CA and bearer tokens from the development
// issuer; creates named keys of every type and a classification schema;
// then drives Encrypt/Decrypt, GenerateDataKey and Decrypt of the wrapped
// key, ProtectDocument/RevealDocument, ReEncrypt and an occasional
// RotateKey from several clients spread over both replicas. Meanwhile it
// injects the faults of [Schedule]: a replica killed with SIGKILL and one
// stopped with SIGTERM (each restarted), PostgreSQL connections
// terminated, the token's files taken away and put back, and a root-key
// rotation to a new key in the token. At the end it checks that every
// remembered ciphertext, data key and document still decrypts to what was
// sent through each replica, that the audit log verifies with a closed
// chain for each process stopped gracefully and unclosed ones only for the
// killed, that memory and goroutines did not grow without bound
// ([JudgeGrowth]), that calls outside the fault windows ([Recover]) did
// not fail, and that no call failed, inside a window or not, with a code
// that a fault does not explain (only Unavailable, DeadlineExceeded,
// ResourceExhausted, Aborted, and Canceled from a replica being stopped,
// are: every request of the traffic is genuine); [Summary] holds what it
// measured.
//
// It is a development tool: it only ever starts replicas on loopback.
package soak

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tresorkms/tresor/internal/authn/devissuer"
	"github.com/tresorkms/tresor/internal/devtoken"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// DefaultPostgresURL is the server a run creates its database on when
// Options.PostgresURL is empty: a maintenance database on which the user
// may create databases (trust authentication on loopback).
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Defaults of Options.
const (
	DefaultClients = 8
	// DefaultRate is the rate `tresor soak` asks for: steady load that
	// leaves a small machine room for PostgreSQL and the token, rather
	// than a saturating closed loop.
	DefaultRate          = 200.0
	DefaultRemember      = 20_000
	DefaultTokenLifetime = 5 * time.Minute
	// maxRecorded bounds the calls recorded (24 bytes each); later calls
	// are counted by the second they started in and their outcome only
	// (see unrecorded), without their latency.
	maxRecorded = 4 << 20
)

// MaxOutsideErrorRate is the check on calls outside the fault windows: at
// most this fraction of them may fail.
const MaxOutsideErrorRate = 0.001

// Options configure a run.
type Options struct {
	// Duration is how long the traffic runs, at least MinDuration. The
	// fault schedule scales to it (see Schedule).
	Duration time.Duration
	// Clients is the number of concurrent callers (DefaultClients).
	Clients int
	// Seed seeds the traffic's random choices and data; 0 picks one,
	// printed so that a run can be repeated.
	Seed uint64
	// Rate bounds the calls per second of all clients together; 0 means
	// closed loop (each client calls again as soon as a call returns).
	Rate float64
	// PostgresURL is the server to create the run's database on
	// (DefaultPostgresURL).
	PostgresURL string
	// WorkDir holds the configuration, certificates, token and replica
	// logs. Empty: a new temporary directory, removed after a run that
	// passed unless Keep.
	WorkDir string
	// SoftHSMDir is the SoftHSM2 configuration directory the token is
	// created in (default WorkDir/softhsm). A process uses one SoftHSM2
	// configuration: a caller that opened another token already passes
	// its directory.
	SoftHSMDir string
	// Keep keeps the database and the work directory.
	Keep bool
	// Remember bounds the ciphertexts, data keys and documents kept for
	// the final check (DefaultRemember; 60%, 20% and 20% of it).
	Remember int
	// TokenLifetime is the lifetime of the clients' tokens; they are
	// minted again after two thirds of it (DefaultTokenLifetime).
	TokenLifetime time.Duration
	// ServeCommand returns the command that runs `tresor serve --config
	// config`. Its Env, if set, holds variables added to the replicas'
	// environment. Required.
	ServeCommand func(config string) *exec.Cmd
	// VerifyAudit verifies the audit log in the store the configuration
	// names, with the root keys of the configuration and extraRootKeys
	// (those rotated away from). Required.
	VerifyAudit func(ctx context.Context, config string, extraRootKeys []string) (AuditReport, error)
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

func (o Options) withDefaults() (Options, error) {
	if o.Duration < MinDuration {
		return o, fmt.Errorf("soak: duration %v is shorter than %v", o.Duration, MinDuration)
	}
	if o.Clients == 0 {
		o.Clients = DefaultClients
	}
	if o.Clients < 1 || o.Clients > 256 {
		return o, fmt.Errorf("soak: %d clients, want 1 to 256", o.Clients)
	}
	if o.Rate < 0 || math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) {
		return o, fmt.Errorf("soak: rate %v, want 0 (closed loop) or a positive number", o.Rate)
	}
	if o.Seed == 0 {
		var b [8]byte
		rand.Read(b[:]) // never fails
		o.Seed = binary.LittleEndian.Uint64(b[:]) | 1
	}
	if o.PostgresURL == "" {
		o.PostgresURL = DefaultPostgresURL
	}
	if o.Remember == 0 {
		o.Remember = DefaultRemember
	}
	if o.Remember < 10 {
		return o, fmt.Errorf("soak: remember %d items, want at least 10", o.Remember)
	}
	if o.TokenLifetime == 0 {
		o.TokenLifetime = DefaultTokenLifetime
	}
	if o.TokenLifetime < 10*time.Second || o.TokenLifetime > 15*time.Minute {
		return o, fmt.Errorf("soak: token lifetime %v, want 10s to 15m", o.TokenLifetime)
	}
	if o.ServeCommand == nil || o.VerifyAudit == nil {
		return o, errors.New("soak: Options.ServeCommand and Options.VerifyAudit are required")
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	return o, nil
}

// replicaCount is how many replicas a run starts.
const replicaCount = 2

// harness is one run.
type harness struct {
	opts    Options
	tempDir bool // WorkDir was created here

	logMu sync.Mutex
	t0    atomic.Pointer[time.Time] // the start of the traffic; nil before

	db       *database
	tok      *token
	id       *identity
	replicas []*replica
	admin    []stubs // connections of setup, faults and final checks
	sources  []*devtoken.Source
	traffic  *traffic
	clients  []*client

	seriesMu   sync.Mutex
	series     map[[2]int][]Sample // (replica, generation) -> samples
	sampleErrs atomic.Int64
}

func (h *harness) logf(format string, args ...any) {
	h.logMu.Lock()
	defer h.logMu.Unlock()
	at := "setup"
	if t0 := h.t0.Load(); t0 != nil {
		at = "t+" + clock(time.Since(*t0))
	}
	fmt.Fprintf(h.opts.Log, "soak %s: %s\n", at, fmt.Sprintf(format, args...))
}

// since is the time since the start of the traffic (0 before).
func (h *harness) since() time.Duration {
	if t0 := h.t0.Load(); t0 != nil {
		return time.Since(*t0)
	}
	return 0
}

// faultRun is one fault as it happened.
type faultRun struct {
	Fault
	injected, restored time.Duration
	replicas           []int
	readyAt            []time.Duration // per affected replica; -1: not seen ready
	detail             string
	err                error
}

// Run runs the soak: setup, traffic with the faults of Schedule, final
// checks. Its error means the run could not be carried out (setup failed,
// or ctx ended); a run whose checks failed returns a Summary with Passed
// false.
func Run(ctx context.Context, opts Options) (*Summary, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	h := &harness{opts: opts, series: map[[2]int][]Sample{}}
	passed := false
	defer func() { h.cleanup(passed) }()
	if err := h.setup(ctx); err != nil {
		return nil, err
	}
	sum, err := h.run(ctx)
	if err != nil {
		return nil, err
	}
	passed = sum.Passed
	return sum, nil
}

// setup creates the database, the token, the identity and the replicas'
// configuration, starts the replicas and creates the keys and the schema.
func (h *harness) setup(ctx context.Context) error {
	o := &h.opts
	if o.WorkDir == "" {
		dir, err := os.MkdirTemp("", "tresor-soak-")
		if err != nil {
			return fmt.Errorf("soak: %w", err)
		}
		o.WorkDir, h.tempDir = dir, true
	} else {
		abs, err := filepath.Abs(o.WorkDir)
		if err != nil {
			return fmt.Errorf("soak: %w", err)
		}
		o.WorkDir = abs
		if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
			return fmt.Errorf("soak: %w", err)
		}
	}
	if o.SoftHSMDir == "" {
		o.SoftHSMDir = filepath.Join(o.WorkDir, "softhsm")
	}
	h.logf("work dir %s, seed %d, %d clients, rate %s", o.WorkDir, o.Seed, o.Clients, rateString(o.Rate))
	var err error
	if h.db, err = createDatabase(ctx, o.PostgresURL); err != nil {
		return err
	}
	h.logf("database %s", h.db.where)
	if h.tok, err = newToken(ctx, o.SoftHSMDir); err != nil {
		return err
	}
	h.logf("SoftHSM2 token %q (%s), root key %s", h.tok.Label, h.tok.dir, h.tok.roots[0])
	if h.id, err = newIdentity(o.WorkDir); err != nil {
		return err
	}
	env := childEnv(h.tok.Env())
	for i := range replicaCount {
		c := replicaConfig{name: replicaName(i), storeURL: h.db.url, rootKeyURI: h.tok.roots[0], path: filepath.Join(o.WorkDir, "replica-"+replicaName(i)+".yaml")}
		for _, p := range []*string{&c.grpc, &c.http, &c.metrics} {
			if *p, err = freePort(); err != nil {
				return err
			}
		}
		if err := c.write(h.id); err != nil {
			return err
		}
		h.replicas = append(h.replicas, &replica{cfg: c, logPath: filepath.Join(o.WorkDir, "replica-"+replicaName(i)+".log"), command: o.ServeCommand, env: env, since: h.since})
	}
	for _, r := range h.replicas {
		if err := r.start(ctx); err != nil {
			return err
		}
		h.logf("replica %s serving: gRPC %s, metrics %s, log %s", r.cfg.name, r.cfg.grpc, r.cfg.metrics, r.logPath)
	}
	for i, r := range h.replicas {
		src, err := h.tokens(fmt.Sprintf("soak-admin-%d", i))
		if err != nil {
			return err
		}
		conn, err := dial(r.cfg.grpc, h.id, src)
		if err != nil {
			return err
		}
		h.admin = append(h.admin, newStubs(conn))
	}
	return h.createKeys(ctx)
}

func rateString(r float64) string {
	if r == 0 {
		return "unbounded (closed loop)"
	}
	return fmt.Sprintf("%g calls/s", r)
}

// tokens returns a token source for subject: tokens bound to the client
// certificate, minted again after two thirds of their lifetime.
func (h *harness) tokens(subject string) (*devtoken.Source, error) {
	src, err := devtoken.New(devtoken.Config{Issuer: h.id.issuer,
		Token: devissuer.TokenRequest{Subject: subject, Audience: tokenAudience, Lifetime: h.opts.TokenLifetime, BindTo: h.id.clientCert}})
	if err != nil {
		return nil, fmt.Errorf("soak: %w", err)
	}
	h.sources = append(h.sources, src)
	return src, nil
}

// minted is how many tokens the run's sources minted.
func (h *harness) minted() int64 {
	var n int64
	for _, s := range h.sources {
		n += s.Minted()
	}
	return n
}

// createKeys creates the run's keys and stores its schema, retrying while
// the replicas warm up.
func (h *harness) createKeys(ctx context.Context) error {
	specs := append(slices.Clone(cryptoKeys), docKeys...)
	for i, k := range specs {
		err := h.retry(ctx, 30*time.Second, func(ctx context.Context) error {
			_, err := h.admin[i%len(h.admin)].keys.CreateKey(ctx, &tresorv1.CreateKeyRequest{KeyId: k.name, Type: k.typ,
				Labels: map[string]string{"owner": clientWorkload, "sensitivity": "confidential"}})
			return err
		})
		if err != nil {
			return fmt.Errorf("soak: CreateKey(%s): %w", k.name, err)
		}
	}
	err := h.retry(ctx, 30*time.Second, func(ctx context.Context) error {
		_, err := h.admin[0].fields.PutSchema(ctx, &tresorv1.PutSchemaRequest{Definition: schemaYAML})
		return err
	})
	if err != nil {
		return fmt.Errorf("soak: PutSchema(%s): %w", schemaName, err)
	}
	h.logf("created %d keys and schema %s", len(specs), schemaName)
	return nil
}

// retry calls fn until it succeeds, fails with another code than
// Unavailable or DeadlineExceeded, or within has passed.
func (h *harness) retry(ctx context.Context, within time.Duration, fn func(context.Context) error) error {
	deadline := time.Now().Add(within)
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if c := status.Code(err); (c != codes.Unavailable && c != codes.DeadlineExceeded) || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// run drives the traffic and the faults, then checks.
func (h *harness) run(ctx context.Context) (*Summary, error) {
	o := h.opts
	sched := Schedule(o.Duration)
	minSettle, maxSettle := settleBounds(o.Duration)
	h.logf("fault schedule over %v (faults are expected to have settled %v..%v after their restore):\n%s", o.Duration, minSettle, maxSettle, FormatSchedule(sched))

	per := max(o.Remember*3/5, 1)
	h.traffic = &traffic{
		callTimeout: 10 * time.Second,
		rotateEvery: min(max(o.Duration/60, 2*time.Second), 30*time.Second),
		ciphertexts: newReservoir(per, o.Seed),
		dataKeys:    newReservoir(max(o.Remember/5, 1), o.Seed+1),
		documents:   newReservoir(max(o.Remember/5, 1), o.Seed+2),
		lastOK:      make([]atomic.Int64, len(h.replicas)),
	}
	if o.Rate > 0 {
		h.traffic.limiter = rate.NewLimiter(rate.Limit(o.Rate), o.Clients)
	}
	for i := range o.Clients {
		c := &client{t: h.traffic, id: i, rng: mrand.New(mrand.NewPCG(o.Seed, uint64(i+1))), maxCalls: maxRecorded / o.Clients, firstErr: map[errKey]string{}}
		src, err := h.tokens(fmt.Sprintf("soak-client-%d", i))
		if err != nil {
			return nil, err
		}
		for _, r := range h.replicas {
			conn, err := dial(r.cfg.grpc, h.id, src)
			if err != nil {
				return nil, err
			}
			c.replicas = append(c.replicas, newStubs(conn))
		}
		h.clients = append(h.clients, c)
	}

	t0 := time.Now()
	h.traffic.t0 = t0
	h.t0.Store(&t0)
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	var wg sync.WaitGroup
	for _, c := range h.clients {
		wg.Go(func() { c.run(trafficCtx) })
	}
	sampleCtx, stopSampling := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSampling()
	every := min(max(o.Duration/360, time.Second), 5*time.Second)
	var sampler sync.WaitGroup
	sampler.Go(func() { h.sample(sampleCtx, every) })
	h.logf("traffic started; sampling /metrics every %v", every)

	var faults []faultRun
	progress := time.NewTicker(max(o.Duration/10, 10*time.Second))
	defer progress.Stop()
	// waitUntil waits until offset at, printing progress.
	waitUntil := func(at time.Duration) error {
		t := time.NewTimer(time.Until(t0.Add(at)))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return fmt.Errorf("soak: interrupted at t+%s: %w", clock(h.since()), ctx.Err())
			case <-progress.C:
				h.logf("%d calls, %d failed", h.traffic.calls.Load(), h.traffic.failed.Load())
			case <-t.C:
				return nil
			}
		}
	}
	ready := h.readyClient()
	settled := time.Duration(0)
	for _, f := range sched {
		at := max(f.At, settled+faultGap)
		if err := waitUntil(at); err != nil {
			stopTraffic()
			wg.Wait()
			return nil, err
		}
		fr := h.inject(ctx, f)
		fr.readyAt = h.settle(ctx, ready, fr, maxSettle)
		settled = h.since()
		faults = append(faults, fr)
	}
	if settled > o.Duration {
		h.logf("the faults settled after the planned end: the traffic runs until t+%s", clock(settled))
	}
	if err := waitUntil(max(o.Duration, settled)); err != nil {
		stopTraffic()
		wg.Wait()
		return nil, err
	}
	stopTraffic()
	wg.Wait()
	elapsed := h.since()
	h.logf("traffic stopped: %d calls, %d failed", h.traffic.calls.Load(), h.traffic.failed.Load())

	checkCtx := context.WithoutCancel(ctx)
	remembered := h.checkRemembered(checkCtx)
	stopSampling()
	sampler.Wait()

	h.closeConns()
	end := ending{elapsed: elapsed, remembered: remembered}
	end.stopProblems, end.cleanStops = stopReplicas(checkCtx, h.replicas)
	h.logf("replicas stopped; verifying the audit log")
	extra := h.tok.roots[:len(h.tok.roots)-1]
	end.audit, end.auditErr = o.VerifyAudit(checkCtx, h.replicas[0].cfg.path, extra)

	return h.summarize(sched, faults, end), nil
}

// ending is what a run found once the traffic stopped.
type ending struct {
	elapsed      time.Duration // the traffic's time
	remembered   []Remembered
	audit        AuditReport
	auditErr     error
	stopProblems []string // replicas that did not exit cleanly on the final SIGTERM
	cleanStops   int      // replicas that did
}

// sample reads every running replica's /metrics every interval.
func (h *harness) sample(ctx context.Context, every time.Duration) {
	client := &http.Client{Timeout: 2 * time.Second}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i, r := range h.replicas {
			up, gen := r.running()
			if !up {
				continue
			}
			s, err := r.metrics(ctx, client)
			if err != nil {
				h.sampleErrs.Add(1)
				continue
			}
			s.At = h.since()
			if up2, gen2 := r.running(); !up2 || gen2 != gen {
				continue
			}
			h.seriesMu.Lock()
			h.series[[2]int{i, gen}] = append(h.series[[2]int{i, gen}], s)
			h.seriesMu.Unlock()
		}
	}
}

// checkRemembered decrypts every remembered ciphertext and data key and
// reveals every remembered document through every replica (starting with
// a different one from item to item), over the clients' connections. An
// item is checked once every replica has answered for it, and failed when
// one answered wrong or not at all.
func (h *harness) checkRemembered(ctx context.Context) []Remembered {
	type job struct {
		it item
		n  int
	}
	var out []Remembered
	for kind, r := range []*reservoir{kindCiphertext: h.traffic.ciphertexts, kindDataKey: h.traffic.dataKeys, kindDocument: h.traffic.documents} {
		items, seen := r.snapshot()
		rem := Remembered{Kind: kindNames[kind], Seen: seen, Kept: len(items)}
		jobs := make(chan job)
		var mu sync.Mutex
		var wg sync.WaitGroup
		var firstFailure string
		for _, c := range h.clients {
			wg.Go(func() {
				for j := range jobs {
					var anyRetried bool
					var failure string
					for k := range c.replicas {
						replica := (j.n + k) % len(c.replicas)
						retried, err := h.checkItem(ctx, c.replicas[replica], j.it)
						anyRetried = anyRetried || retried
						if err != nil && failure == "" {
							failure = fmt.Sprintf("replica %s: %v", replicaName(replica), err)
						}
					}
					mu.Lock()
					rem.Checked++
					if anyRetried {
						rem.Retried++
					}
					if failure != "" {
						rem.Failed++
						if firstFailure == "" {
							firstFailure = failure
						}
					}
					mu.Unlock()
				}
			})
		}
		for n, it := range items {
			jobs <- job{it, n}
		}
		close(jobs)
		wg.Wait()
		if firstFailure != "" {
			h.logf("%s check: first failure: %s", rem.Kind, firstFailure)
		}
		h.logf("checked %d remembered %ss: %d failed", rem.Checked, rem.Kind, rem.Failed)
		out = append(out, rem)
	}
	return out
}

// checkItem checks one remembered item, retrying a call the replica could
// not answer (Unavailable, DeadlineExceeded) up to 5 times. Its error
// names no value.
func (h *harness) checkItem(ctx context.Context, s stubs, it item) (retried bool, err error) {
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		switch it.kind {
		case kindCiphertext, kindDataKey:
			var r *tresorv1.DecryptResponse
			r, err = s.crypto.Decrypt(cctx, &tresorv1.DecryptRequest{Ciphertext: it.ciphertext, AssociatedData: it.aad})
			if err == nil && string(r.GetPlaintext()) != string(it.plaintext) {
				err = fmt.Errorf("a %s of key %s decrypted to other bytes than were sent", kindNames[it.kind], it.key)
			}
		case kindDocument:
			var r *tresorv1.RevealDocumentResponse
			r, err = s.fields.RevealDocument(cctx, &tresorv1.RevealDocumentRequest{Schema: schemaName, Document: it.ciphertext, DocumentId: string(it.aad)})
			if err == nil {
				err = sameDocument(r.GetDocument(), string(it.plaintext))
			}
		}
		cancel()
		c := status.Code(err)
		if err == nil || attempt == 4 || (c != codes.Unavailable && c != codes.DeadlineExceeded) {
			if err != nil && c != codes.Unknown {
				err = fmt.Errorf("%s: %s", c, status.Convert(err).Message())
			}
			return attempt > 0, err
		}
		time.Sleep(time.Second)
	}
}

// closeConns closes every client connection.
func (h *harness) closeConns() {
	for _, s := range h.admin {
		_ = s.conn.Close()
	}
	for _, c := range h.clients {
		for _, s := range c.replicas {
			_ = s.conn.Close()
		}
	}
}

// cleanup stops what is still running, puts the token back if a fault
// left it away, drops the database and removes a temporary work directory
// (unless Keep, or the run did not pass).
func (h *harness) cleanup(passed bool) {
	h.closeConns()
	for _, r := range h.replicas {
		if up, _ := r.running(); up {
			_, _ = r.stop(context.Background(), syscall.SIGKILL)
		}
	}
	if h.tok != nil {
		if _, err := os.Stat(h.tok.away); err == nil {
			_ = h.tok.restore()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if h.db != nil {
		if h.opts.Keep {
			h.logf("kept database %s", h.db.where)
		} else if err := h.db.drop(ctx); err != nil {
			h.logf("%v", err)
		}
	}
	if h.tempDir {
		if h.opts.Keep || !passed {
			h.logf("kept work dir %s", h.opts.WorkDir)
		} else {
			_ = os.RemoveAll(h.opts.WorkDir)
		}
	}
}
