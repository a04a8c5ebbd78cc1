//go:build cgo && unix

package pkcs11

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// The benchmarks wrap and unwrap a keyset-sized payload through RootKey and,
// as the baseline, with raw miekg/pkcs11 calls on the same token and key (one
// session per goroutine, C_EncryptInit + C_Encrypt with the same mechanism),
// at 1 and 8 concurrent callers:
//
//	go test -run '^$' -bench . -benchtime 2s -count 3 ./kms/pkcs11
//
// Besides ns/op (wall time), each reports cpu-ns/op: the process's CPU time
// (user + system, all threads, SoftHSM included) per operation, which other
// processes on a shared machine disturb far less than wall time.

const benchPayload = 128

var benchAAD = []byte("tenant=acme;key=payments;version=1")

// runPar runs b.N operations spread over par goroutines, each with the
// operation newOp made for it before the timer starts.
func runPar(b *testing.B, par int, newOp func(b *testing.B) (op func() error, done func())) {
	ops := make([]func() error, par)
	for i := range ops {
		op, done := newOp(b)
		ops[i] = op
		b.Cleanup(done)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	b.ResetTimer()
	for _, op := range ops {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime returns the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("Getrusage err = %v, want nil", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawSession opens a session on k's token for the raw baseline. The token
// is logged in already (k holds a session), as sessions share the login.
func rawSession(b *testing.B, k *RootKey) (*p11.Ctx, p11.SessionHandle, p11.ObjectHandle) {
	ctx := k.mod.ctx
	sh, err := ctx.OpenSession(k.tok.slotID(), p11.CKF_SERIAL_SESSION)
	if err != nil {
		b.Fatalf("OpenSession err = %v, want nil", err)
	}
	return ctx, sh, k.obj.Load().h
}

func rawWrap(c *p11.Ctx, sh p11.SessionHandle, obj p11.ObjectHandle, pt []byte) ([]byte, error) {
	iv := make([]byte, ivSize)
	_, _ = rand.Read(iv)
	params := p11.NewGCMParams(iv, benchAAD, tagSize*8)
	defer params.Free()
	if err := c.EncryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, obj); err != nil {
		return nil, err
	}
	return c.Encrypt(sh, pt)
}

func rawUnwrap(c *p11.Ctx, sh p11.SessionHandle, obj p11.ObjectHandle, iv, ct []byte) ([]byte, error) {
	params := p11.NewGCMParams(iv, benchAAD, tagSize*8)
	defer params.Free()
	if err := c.DecryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, obj); err != nil {
		return nil, err
	}
	return c.Decrypt(sh, ct)
}

func BenchmarkWrap(b *testing.B) {
	ctx := context.Background()
	pt := make([]byte, benchPayload)
	for _, par := range []int{1, 8} {
		b.Run(fmt.Sprintf("par=%d", par), func(b *testing.B) {
			b.Run("RootKey", func(b *testing.B) {
				k := openRoot(b)
				b.SetBytes(benchPayload)
				runPar(b, par, func(b *testing.B) (func() error, func()) {
					return func() error {
						_, err := k.Wrap(ctx, pt, benchAAD)
						return err
					}, func() {}
				})
				if calls := k.Calls(); calls < uint64(b.N) {
					b.Errorf("Calls() = %d, want at least b.N = %d", calls, b.N)
				}
			})
			b.Run("raw", func(b *testing.B) {
				k := openRoot(b)
				b.SetBytes(benchPayload)
				runPar(b, par, func(b *testing.B) (func() error, func()) {
					c, sh, obj := rawSession(b, k)
					return func() error {
						_, err := rawWrap(c, sh, obj, pt)
						return err
					}, func() { _ = c.CloseSession(sh) }
				})
			})
		})
	}
}

func BenchmarkUnwrap(b *testing.B) {
	ctx := context.Background()
	pt := make([]byte, benchPayload)
	for _, par := range []int{1, 8} {
		b.Run(fmt.Sprintf("par=%d", par), func(b *testing.B) {
			b.Run("RootKey", func(b *testing.B) {
				k := openRoot(b)
				wrapped, err := k.Wrap(ctx, pt, benchAAD)
				if err != nil {
					b.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
				}
				b.SetBytes(benchPayload)
				runPar(b, par, func(b *testing.B) (func() error, func()) {
					return func() error {
						_, err := k.Unwrap(ctx, wrapped, benchAAD)
						return err
					}, func() {}
				})
			})
			b.Run("raw", func(b *testing.B) {
				k := openRoot(b)
				wrapped, err := k.Wrap(ctx, pt, benchAAD)
				if err != nil {
					b.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
				}
				iv, ct := wrapped[1:1+ivSize], wrapped[1+ivSize:]
				b.SetBytes(benchPayload)
				runPar(b, par, func(b *testing.B) (func() error, func()) {
					c, sh, obj := rawSession(b, k)
					return func() error {
						_, err := rawUnwrap(c, sh, obj, iv, ct)
						return err
					}, func() { _ = c.CloseSession(sh) }
				})
			})
		})
	}
}

// nopToken answers encrypt calls at once, so that BenchmarkWrapOverhead
// measures what RootKey itself costs per call (pool, IV, output format)
// without the token's work.
type nopToken struct{ cryptoki }

func (nopToken) EncryptInit(p11.SessionHandle, []*p11.Mechanism, p11.ObjectHandle) error { return nil }
func (nopToken) Encrypt(_ p11.SessionHandle, pt []byte) ([]byte, error) {
	return make([]byte, len(pt)+tagSize), nil
}

func BenchmarkWrapOverhead(b *testing.B) {
	ctx := context.Background()
	pt := make([]byte, benchPayload)
	for _, par := range []int{1, 8} {
		b.Run(fmt.Sprintf("par=%d", par), func(b *testing.B) {
			k := openRoot(b)
			k.p11 = nopToken{k.p11}
			runPar(b, par, func(b *testing.B) (func() error, func()) {
				return func() error {
					_, err := k.Wrap(ctx, pt, benchAAD)
					return err
				}, func() {}
			})
		})
	}
}
