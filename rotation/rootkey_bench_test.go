//go:build cgo && unix

package rotation

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"
	"google.golang.org/protobuf/proto"

	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/store"
)

// BenchmarkRewrapSoftHSM measures the re-wrap rate with both root keys in
// one SoftHSM2 token. Its sub-benchmarks:
//
//   - tresor: a whole root-key job over b.N keysets in SQLite, with the
//     default options: Start (which opens the new key), then the job on
//     this replica until it is done: listing, unwrap and wrap in the token
//     (automatic Workers: one call at a time for a local token), one
//     transaction per batch of DefaultRewrapBatch, Finish.
//   - tresor-4workers: the same with 4 root-key calls at once.
//   - raw: the baseline, raw miekg/pkcs11 calls on one session: C_Decrypt
//     with root-1 then C_Encrypt with root-2 (CKM_AES_GCM, a fresh 12-byte
//     IV, a 16-byte tag), with the sizes of a real keyset and its
//     associated data, and no store.
//   - raw-4sessions: the baseline on 4 sessions at once.
//
// Each reports keysets/s (wall time) and cpu-ns/op (the process's CPU time
// per keyset); filling the store is not timed. Run it with
//
//	go test -run '^$' -bench RewrapSoftHSM -benchtime 5000x -count 3 ./rotation
func BenchmarkRewrapSoftHSM(b *testing.B) {
	ctx := context.Background()
	from, err := openKey(ctx, hsm.root1)
	if err != nil {
		b.Fatal(err)
	}
	defer from.Close()
	ptLen, aadLen := keysetSizes(b, from)

	for _, workers := range []int{0, 4} {
		name := "tresor"
		if workers > 0 {
			name = fmt.Sprintf("tresor-%dworkers", workers)
		}
		b.Run(name, func(b *testing.B) {
			b.StopTimer()
			st := openSQLite(b)
			roots, err := envelope.NewRootKeys(from)
			if err != nil {
				b.Fatal(err)
			}
			ring, err := envelope.New(st, roots, envelope.Options{})
			if err != nil {
				b.Fatal(err)
			}
			fillKeys(b, ring, b.N)
			rot, err := NewRootKeyRotator(st, roots, OpenerFunc(openKey), RootKeyOptions{ActiveURI: hsm.root1, Workers: workers, Grace: time.Nanosecond, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer rot.Close()
			b.StartTimer()
			start, cpu0 := time.Now(), cpuTime(b)
			if _, err := rot.Start(ctx, hsm.root2); err != nil {
				b.Fatalf("Start() err = %v", err)
			}
			if err := rot.step(ctx); err != nil {
				b.Fatalf("step() err = %v", err)
			}
			elapsed, cpu := time.Since(start), cpuTime(b)-cpu0
			b.StopTimer()
			job, err := st.LatestRootKeyRotation(ctx)
			if err != nil || job.State != store.RotationDone || job.Rewrapped != int64(b.N) {
				b.Fatalf("job = %+v, %v; want done with %d re-wrapped", job, err, b.N)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "keysets/s")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}

	for _, sessions := range []int{1, 4} {
		name := "raw"
		if sessions > 1 {
			name = fmt.Sprintf("raw-%dsessions", sessions)
		}
		b.Run(name, func(b *testing.B) {
			b.StopTimer()
			c := rawModule(b)
			slot := rawSlot(b, c)
			type sess struct {
				sh         p11.SessionHandle
				key1, key2 p11.ObjectHandle
			}
			ss := make([]sess, sessions)
			for i := range ss {
				sh, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION)
				if err != nil {
					b.Fatalf("OpenSession err = %v", err)
				}
				defer c.CloseSession(sh)
				ss[i] = sess{sh, rawKey(b, c, sh, "root-1"), rawKey(b, c, sh, "root-2")}
			}
			aad1, aad2 := make([]byte, aadLen), make([]byte, aadLen)
			aad2[0] = 1
			pt := make([]byte, ptLen)
			_, _ = rand.Read(pt)
			// b.N keysets wrapped by root-1, as the store holds them.
			wrapped := make([][]byte, b.N)
			for i := range wrapped {
				iv := make([]byte, 12)
				_, _ = rand.Read(iv)
				ct, err := rawGCM(c, ss[0].sh, ss[0].key1, iv, aad1, pt, true)
				if err != nil {
					b.Fatalf("C_Encrypt err = %v", err)
				}
				wrapped[i] = append(iv, ct...)
			}
			b.StartTimer()
			start, cpu0 := time.Now(), cpuTime(b)
			errs := make(chan error, sessions)
			for w := range sessions {
				go func() {
					s := ss[w]
					for i := w; i < b.N; i += sessions {
						got, err := rawGCM(c, s.sh, s.key1, wrapped[i][:12], aad1, wrapped[i][12:], false)
						if err != nil {
							errs <- fmt.Errorf("C_Decrypt: %w", err)
							return
						}
						iv := make([]byte, 12)
						_, _ = rand.Read(iv)
						if _, err := rawGCM(c, s.sh, s.key2, iv, aad2, got, true); err != nil {
							errs <- fmt.Errorf("C_Encrypt: %w", err)
							return
						}
					}
					errs <- nil
				}()
			}
			for range sessions {
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
			elapsed, cpu := time.Since(start), cpuTime(b)-cpu0
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "keysets/s")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime returns the process's user and system CPU time so far (SoftHSM2
// and SQLite included): a measure that other processes on a shared machine
// disturb far less than wall time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("Getrusage err = %v, want nil", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// keysetSizes returns the sizes of a real serialized keyset (one
// AES-256-GCM key) and of its associated data, as the benchmarks' keys
// hold them.
func keysetSizes(b *testing.B, from envelope.KEK) (ptLen, aadLen int) {
	b.Helper()
	st := openSQLite(b)
	ring, err := envelope.New(st, from, envelope.Options{})
	if err != nil {
		b.Fatal(err)
	}
	fillKeys(b, ring, 1)
	k, err := st.GetKey(context.Background(), benchKeyName(0))
	if err != nil {
		b.Fatal(err)
	}
	var enc tinkpb.EncryptedKeyset
	if err := proto.Unmarshal(k.WrappedKeyset, &enc); err != nil {
		b.Fatal(err)
	}
	const overhead = 1 + 12 + 16 // kms/pkcs11's format byte, IV and tag
	ptLen = len(enc.GetEncryptedKeyset()) - overhead
	aadLen = len("tresor-keyset-v1") + 2 + len(k.Name) + 2 + len(k.RootKeyID)
	return ptLen, aadLen
}

func benchKeyName(i int) string { return fmt.Sprintf("key-%07d", i) }

// fillKeys creates n AES-256-GCM keys through ring: each keyset wrapped by
// the ring's active root key, bound to its own name.
func fillKeys(b testing.TB, ring *envelope.Keyring, n int) {
	b.Helper()
	ctx := context.Background()
	for i := range n {
		if _, err := ring.CreateKey(ctx, envelope.KeySpec{Name: benchKeyName(i), Type: store.KeyTypeAES256GCM}); err != nil {
			b.Fatalf("CreateKey() err = %v", err)
		}
	}
}

// rawModule returns a miekg/pkcs11 context on SoftHSM2, which the
// process initialized already (kms/pkcs11 did, opening root-1); it is
// never finalized here.
func rawModule(b *testing.B) *p11.Ctx {
	b.Helper()
	c := p11.New(hsm.token.ModulePath)
	if c == nil {
		b.Fatalf("pkcs11.New(%s) = nil", hsm.token.ModulePath)
	}
	if err := c.Initialize(); err != nil && err != p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		b.Fatalf("C_Initialize err = %v", err)
	}
	return c
}

func rawSlot(b *testing.B, c *p11.Ctx) uint {
	b.Helper()
	slots, err := c.GetSlotList(true)
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err == nil && ti.Label == hsm.token.Label {
			return s
		}
	}
	b.Fatalf("no slot holds token %q", hsm.token.Label)
	return 0
}

// rawKey finds the AES key labelled label; the session shares the login
// kms/pkcs11 made.
func rawKey(b *testing.B, c *p11.Ctx, sh p11.SessionHandle, label string) p11.ObjectHandle {
	b.Helper()
	if err := c.FindObjectsInit(sh, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}); err != nil {
		b.Fatal(err)
	}
	objs, _, err := c.FindObjects(sh, 2)
	_ = c.FindObjectsFinal(sh)
	if err != nil || len(objs) != 1 {
		b.Fatalf("FindObjects(%s) = %d objects, %v; want 1", label, len(objs), err)
	}
	return objs[0]
}

// rawGCM encrypts (or decrypts) in with CKM_AES_GCM.
func rawGCM(c *p11.Ctx, sh p11.SessionHandle, key p11.ObjectHandle, iv, aad, in []byte, encrypt bool) ([]byte, error) {
	params := p11.NewGCMParams(iv, aad, 128)
	defer params.Free()
	mech := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}
	if encrypt {
		if err := c.EncryptInit(sh, mech, key); err != nil {
			return nil, err
		}
		return c.Encrypt(sh, in)
	}
	if err := c.DecryptInit(sh, mech, key); err != nil {
		return nil, err
	}
	return c.Decrypt(sh, in)
}
