package soak

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/status"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// inject injects one fault, waits until it is restored, and says how it
// went.
func (h *harness) inject(ctx context.Context, f Fault) faultRun {
	fr := faultRun{Fault: f, injected: h.since()}
	all := make([]int, len(h.replicas))
	for i := range all {
		all[i] = i
	}
	h.logf("injecting: %s", f)
	switch f.Kind {
	case FaultKill, FaultTerm:
		r := h.replicas[f.Replica]
		fr.replicas = []int{f.Replica}
		sig := syscall.SIGKILL
		if f.Kind == FaultTerm {
			sig = syscall.SIGTERM
		}
		began := time.Now()
		clean, err := r.stop(ctx, sig)
		exited := time.Since(began)
		exit := "killed"
		switch {
		case f.Kind == FaultTerm && clean && err == nil:
			exit = "exited cleanly"
		case f.Kind == FaultTerm:
			exit = fmt.Sprintf("did not exit cleanly: %v", err)
			fr.err = fmt.Errorf("replica %s after SIGTERM: %w", r.cfg.name, err)
		}
		if err := r.start(ctx); err != nil {
			fr.err = errors.Join(fr.err, err)
		}
		fr.restored = h.since()
		fr.detail = fmt.Sprintf("replica %s %s after %v; listening again %v after the signal", r.cfg.name, exit, exited.Round(time.Millisecond), (fr.restored - fr.injected).Round(time.Millisecond))
	case FaultDropPostgres:
		fr.replicas = all
		n, err := h.db.terminateConnections(ctx)
		fr.restored = h.since()
		fr.err = err
		fr.detail = fmt.Sprintf("terminated %d connections", n)
	case FaultRemoveToken:
		fr.replicas = all
		if err := h.tok.remove(); err != nil {
			fr.err = err
			fr.restored = h.since()
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(f.Outage):
		}
		if err := h.tok.restore(); err != nil {
			fr.err = err
		}
		fr.restored = h.since()
		fr.detail = fmt.Sprintf("token %q away for %v", h.tok.Label, (fr.restored - fr.injected).Round(time.Millisecond))
	case FaultRotateRootKey:
		fr.replicas = all
		fr.detail, fr.err = h.rotateRootKey(ctx)
		fr.restored = h.since()
	}
	if fr.err != nil {
		h.logf("fault %s FAILED: %v", f.Kind, fr.err)
	} else {
		h.logf("restored: %s", fr.detail)
	}
	return fr
}

// readyClient is an HTTPS client for the replicas' /readyz, with the
// client certificate (every port of a replica requires one).
func (h *harness) readyClient() *http.Client {
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: h.id.clientTLS}}
}

// settle waits, after a fault's restore, until every replica it affects
// has answered a call that started after the restore and its /readyz has
// answered 200 (after the token came back: a /readyz read at least
// readyInterval after the restore), or until maxSettle after the restore.
// It returns when each replica was seen ready (-1: not seen).
func (h *harness) settle(ctx context.Context, client *http.Client, fr faultRun, maxSettle time.Duration) []time.Duration {
	readyAt := make([]time.Duration, len(fr.replicas))
	for i := range readyAt {
		readyAt[i] = -1
	}
	readyFrom := fr.restored
	if fr.Kind == FaultRemoveToken {
		readyFrom += readyInterval
	}
	for {
		done := true
		for i, r := range fr.replicas {
			if readyAt[i] < 0 && h.since() >= readyFrom {
				if at := h.since(); h.replicas[r].ready(ctx, client) == nil {
					readyAt[i] = at
				}
			}
			done = done && readyAt[i] >= 0 && h.traffic.lastOK[r].Load() > int64(fr.restored)
		}
		if done || h.since() > fr.restored+maxSettle || ctx.Err() != nil {
			if !done {
				h.logf("fault %s: not settled %v after its restore", fr.Kind, maxSettle)
			}
			return readyAt
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rotateRootKey creates the next root key in the token, starts a
// root-key rotation to it and waits until the job is done.
func (h *harness) rotateRootKey(ctx context.Context) (string, error) {
	from := len(h.tok.roots)
	uri, err := h.tok.newRootKey(ctx)
	if err != nil {
		return "", err
	}
	return h.rotateRootKeyTo(ctx, uri, fmt.Sprintf("root-%d to root-%d", from, from+1))
}

// rotateRootKeyTo starts a root-key rotation to the root key at uri and
// waits until the job is done; what names the rotation in the detail it
// returns.
func (h *harness) rotateRootKeyTo(ctx context.Context, uri, what string) (string, error) {
	began := time.Now()
	job, err := h.startRootKeyRotation(ctx, uri)
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for i := 0; ; i++ {
		var got *tresorv1.RootKeyRotation
		err := h.retry(ctx, time.Minute, func(ctx context.Context) error {
			r, err := h.admin[i%len(h.admin)].admin.GetRootKeyRotation(ctx, &tresorv1.GetRootKeyRotationRequest{})
			got = r.GetRotation()
			return err
		})
		if err != nil {
			return "", fmt.Errorf("GetRootKeyRotation: %w", err)
		}
		if got.GetId() == job.GetId() && got.GetState() == tresorv1.RootKeyRotationState_ROOT_KEY_ROTATION_STATE_DONE {
			return fmt.Sprintf("job %s re-wrapped %d of %d keysets from %s in %v", got.GetId(), got.GetRewrapped(), got.GetTotal(), what, time.Since(began).Round(time.Millisecond)), nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("root-key rotation %s not done after %v: %d of %d re-wrapped", job.GetId(), time.Since(began).Round(time.Second), got.GetRewrapped(), got.GetTotal())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startRootKeyRotation asks for a root-key rotation to the root key at
// uri and returns its job. RotateRootKey is retried while no replica
// answers (Unavailable, DeadlineExceeded). An attempt that a replica
// carried out but whose answer was lost (the client's deadline passed)
// makes the retry fail: with FailedPrecondition while the job runs
// ("a rotation is already running"), with InvalidArgument once it is
// done (the key is then the active one); or the retries end with
// DeadlineExceeded or Unavailable. So on any failure the latest job
// decides: when it is to the key at uri, it is this rotation's, as
// nothing else rotates to the key this fault just created.
func (h *harness) startRootKeyRotation(ctx context.Context, uri string) (*tresorv1.RootKeyRotation, error) {
	var job *tresorv1.RootKeyRotation
	n := 0
	err := h.retry(ctx, time.Minute, func(ctx context.Context) error {
		r, err := h.admin[n%len(h.admin)].admin.RotateRootKey(ctx, &tresorv1.RotateRootKeyRequest{RootKeyUri: uri})
		n++
		job = r.GetRotation()
		return err
	})
	if err == nil {
		return job, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("RotateRootKey: %w", err)
	}
	var latest *tresorv1.RootKeyRotation
	lerr := h.retry(ctx, time.Minute, func(ctx context.Context) error {
		r, err := h.admin[n%len(h.admin)].admin.GetRootKeyRotation(ctx, &tresorv1.GetRootKeyRotationRequest{})
		n++
		latest = r.GetRotation()
		return err
	})
	if lerr != nil {
		return nil, fmt.Errorf("RotateRootKey: %w; then GetRootKeyRotation: %w", err, lerr)
	}
	if !sameRootKey(latest.GetToRootKey(), uri) {
		return nil, fmt.Errorf("RotateRootKey: %w; the latest job, %s, is to another root key", err, latest.GetId())
	}
	h.logf("RotateRootKey failed (%s), but the latest job, %s, is to the new root key: waiting for it", status.Code(err), latest.GetId())
	return latest, nil
}

// sameRootKey reports whether a root key id (as a rotation job names its
// keys: pkcs11:token=...;object=...[;id=...]) names the token and object
// that uri names. The query (module path, PIN file) is left out of ids.
func sameRootKey(id, uri string) bool {
	a, b := pkcs11Path(id), pkcs11Path(uri)
	return a["token"] != "" && a["object"] != "" && a["token"] == b["token"] && a["object"] == b["object"]
}

// pkcs11Path returns the path attributes of a pkcs11: URI or id,
// percent-decoded; nil for anything else.
func pkcs11Path(u string) map[string]string {
	p, ok := strings.CutPrefix(u, "pkcs11:")
	if !ok {
		return nil
	}
	p, _, _ = strings.Cut(p, "?")
	attrs := map[string]string{}
	for _, a := range strings.Split(p, ";") {
		name, val, _ := strings.Cut(a, "=")
		if v, err := url.PathUnescape(val); err == nil {
			val = v
		}
		attrs[name] = val
	}
	return attrs
}
