package soak

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// How long a replica may take to listen after it starts, and to exit
// after SIGTERM.
const (
	startTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
)

// replica is one `tresor serve` process, restarted on the same
// configuration (and so the same ports) after each fault that stops it.
type replica struct {
	cfg     replicaConfig
	logPath string
	command func(config string) *exec.Cmd
	env     []string

	since func() time.Duration // the run's clock, for unexpected exits

	mu         sync.Mutex
	cmd        *exec.Cmd
	exited     chan struct{} // closed when cmd has exited
	exitErr    error
	stopping   bool // stop signalled the process
	generation int  // how many times it started: each start is a new series of samples
	unexpected []exit
}

// exit is a process exit no fault caused.
type exit struct {
	at  time.Duration
	err string
}

// start starts the process and waits until it listens on its gRPC port.
func (r *replica) start(ctx context.Context) error {
	exited, err := r.spawn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", r.cfg.grpc, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("soak: replica %s exited before listening (%v); see %s", r.cfg.name, r.err(), r.logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("soak: replica %s did not listen on %s within %v; see %s", r.cfg.name, r.cfg.grpc, startTimeout, r.logPath)
		}
	}
}

// spawn starts the process, its output appended to the log, and watches
// for its exit: an exit no stop caused is recorded as unexpected. The
// channel is closed when the process has exited.
func (r *replica) spawn() (<-chan struct{}, error) {
	logs, err := os.OpenFile(r.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("soak: replica %s log: %w", r.cfg.name, err)
	}
	cmd := r.command(r.cfg.path)
	cmd.Env = append(slices.Clone(r.env), cmd.Env...) // the command's own variables last: they win
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		logs.Close()
		return nil, fmt.Errorf("soak: start replica %s: %w", r.cfg.name, err)
	}
	exited := make(chan struct{})
	r.mu.Lock()
	r.cmd, r.exited, r.exitErr, r.stopping = cmd, exited, nil, false
	r.generation++
	r.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logs.Close()
		r.mu.Lock()
		r.exitErr = err
		if !r.stopping {
			r.unexpected = append(r.unexpected, exit{at: r.since(), err: fmt.Sprint(err)})
		}
		r.mu.Unlock()
		close(exited)
	}()
	return exited, nil
}

func (r *replica) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.exitErr
}

// unexpectedExits lists the exits no stop caused.
func (r *replica) unexpectedExits() []exit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.unexpected)
}

// running reports whether the process runs, and its generation.
func (r *replica) running() (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return false, r.generation
	}
	select {
	case <-r.exited:
		return false, r.generation
	default:
		return true, r.generation
	}
}

// stop sends sig and waits for the process to exit; after SIGTERM it
// waits up to stopTimeout (or until ctx ends), then kills it. It reports
// whether the process exited by itself (always false for SIGKILL) and its
// exit error. A replica that was never started, or had exited before the
// signal, is an error.
func (r *replica) stop(ctx context.Context, sig syscall.Signal) (clean bool, err error) {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.stopping = true
	r.mu.Unlock()
	if cmd == nil {
		return false, fmt.Errorf("replica %s was never started", r.cfg.name)
	}
	select {
	case <-exited:
		return false, fmt.Errorf("replica %s had already exited: %v", r.cfg.name, r.err())
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return false, fmt.Errorf("signal replica %s: %w", r.cfg.name, err)
	}
	timeout := time.NewTimer(stopTimeout)
	defer timeout.Stop()
	select {
	case <-exited:
		return sig != syscall.SIGKILL, r.err()
	case <-timeout.C:
		err = fmt.Errorf("replica %s did not exit within %v of %v: killed", r.cfg.name, stopTimeout, sig)
	case <-ctx.Done():
		err = fmt.Errorf("replica %s: %w: killed", r.cfg.name, ctx.Err())
	}
	_ = cmd.Process.Kill()
	<-exited
	return false, err
}

// stopReplicas stops every replica with SIGTERM at the end of a run. It
// returns what went wrong, one line a replica that did not exit cleanly
// by itself (an error, an exit status, a kill after stopTimeout, a
// replica not running), and how many did.
func stopReplicas(ctx context.Context, replicas []*replica) (problems []string, clean int) {
	for _, r := range replicas {
		ok, err := r.stop(ctx, syscall.SIGTERM)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("replica %s: %v", r.cfg.name, err))
		case !ok:
			problems = append(problems, fmt.Sprintf("replica %s did not exit by itself on SIGTERM", r.cfg.name))
		default:
			clean++
		}
	}
	return problems, clean
}

// metrics reads the replica's /metrics.
func (r *replica) metrics(ctx context.Context, client *http.Client) (Sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.cfg.metrics+"/metrics", nil)
	if err != nil {
		return Sample{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return Sample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Sample{}, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// ready reads the replica's /readyz: nil when it answers 200.
func (r *replica) ready(ctx context.Context, client *http.Client) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+r.cfg.http+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET /readyz: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// parseMetrics reads the gauges a Sample holds from the Prometheus text
// format. Each must be present.
func parseMetrics(r io.Reader) (Sample, error) {
	var s Sample
	found := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var dst *float64
		switch name {
		case "go_goroutines":
			dst = &s.Goroutines
		case "go_memstats_heap_inuse_bytes":
			dst = &s.HeapInuse
		case "process_resident_memory_bytes":
			dst = &s.RSS
		default:
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return Sample{}, fmt.Errorf("metric %s: %w", name, err)
		}
		*dst, found[name] = v, true
	}
	if err := sc.Err(); err != nil {
		return Sample{}, err
	}
	for _, n := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes"} {
		if !found[n] {
			return Sample{}, fmt.Errorf("metrics lack %s", n)
		}
	}
	return s, nil
}

// childEnv is the replicas' environment: this process's, without any
// TRESOR_ variable (every setting is in the configuration file, so an
// operator's environment does not change the run), with SOFTHSM2_CONF
// pointing at the run's token.
func childEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TRESOR_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}
