package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

// auditTests are the cases of the audit log (store.AuditLog); Run runs them
// with the others.
var auditTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"AuditEmpty", testAuditEmpty},
	{"AuditRoundTrip", testAuditRoundTrip},
	{"AuditPaging", testAuditPaging},
	{"AuditChains", testAuditChains},
	{"AuditLatestCheckpoints", testAuditLatestCheckpoints},
	{"AuditConflictWritesNothing", testAuditConflictWritesNothing},
	{"AuditInvalid", testAuditInvalid},
	{"AuditConcurrentAppends", testAuditConcurrentAppends},
	{"AuditNoAliasing", testAuditNoAliasing},
	{"AuditContextCanceled", testAuditContextCanceled},
}

// auditRecord returns event seq of chain, with data and hash that name it.
func auditRecord(chain string, seq uint64) store.AuditRecord {
	return store.AuditRecord{
		Chain: chain,
		Seq:   seq,
		Time:  time.Date(2031, 5, 6, 7, 8, 9, 123456789, loc).Add(time.Duration(seq) * time.Second),
		Data:  []byte(fmt.Sprintf(`{"chain":%q,"seq":%d,"bytes":"\u0000\xff"}`, chain, seq)),
		Hash:  []byte(fmt.Sprintf("hash-%s-%d\x00\xff", chain, seq)),
	}
}

// auditRecords returns events from..to (inclusive) of chain.
func auditRecords(chain string, from, to uint64) []store.AuditRecord {
	var out []store.AuditRecord
	for seq := from; seq <= to; seq++ {
		out = append(out, auditRecord(chain, seq))
	}
	return out
}

// auditCheckpoint returns a checkpoint of chain at seq.
func auditCheckpoint(chain string, seq uint64) *store.AuditCheckpointRecord {
	return &store.AuditCheckpointRecord{
		Chain:     chain,
		Seq:       seq,
		Hash:      auditRecord(chain, seq).Hash,
		Time:      time.Date(2032, 1, 2, 3, 4, 5, 999999999, loc),
		RootKeyID: "pkcs11:token=tresor;object=root-1",
		Tag:       []byte{0, 1, 2, 0xfe, 0xff},
	}
}

// diffAudit describes how got differs from want (stored: times in UTC to the
// microsecond); "" when they are equal.
func diffAudit(got, want []store.AuditRecord) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d records, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		wt := w.Time.UTC().Truncate(time.Microsecond)
		switch {
		case g.Chain != w.Chain || g.Seq != w.Seq:
			return fmt.Sprintf("record %d is (%q, %d), want (%q, %d)", i, g.Chain, g.Seq, w.Chain, w.Seq)
		case !g.Time.Equal(wt) || g.Time.Location() != time.UTC:
			return fmt.Sprintf("record %d (seq %d) Time = %v, want %v", i, g.Seq, g.Time, wt)
		case !bytes.Equal(g.Data, w.Data):
			return fmt.Sprintf("record %d (seq %d) Data = %q, want %q", i, g.Seq, g.Data, w.Data)
		case !bytes.Equal(g.Hash, w.Hash):
			return fmt.Sprintf("record %d (seq %d) Hash = %q, want %q", i, g.Seq, g.Hash, w.Hash)
		}
	}
	return ""
}

// checkAuditHead checks AuditHead(chain) against wantSeq and the hash of
// that record (nil for 0).
func checkAuditHead(t *testing.T, s store.Store, chain string, wantSeq uint64) {
	t.Helper()
	seq, hash, err := s.AuditHead(t.Context(), chain)
	var wantHash []byte
	if wantSeq > 0 {
		wantHash = auditRecord(chain, wantSeq).Hash
	}
	if err != nil || seq != wantSeq || !bytes.Equal(hash, wantHash) {
		t.Errorf("AuditHead(ctx, %q) = %d, %q, %v; want %d, %q, nil", chain, seq, hash, err, wantSeq, wantHash)
	}
}

func testAuditEmpty(t *testing.T, s store.Store) {
	checkAuditHead(t, s, "c", 0)
	if got, err := s.ListAudit(t.Context(), "c", 0, 10); err != nil || len(got) != 0 {
		t.Errorf("ListAudit(ctx, %q, 0, 10) = %d records, %v; want 0, nil", "c", len(got), err)
	}
	if got, err := s.ListAuditChains(t.Context()); err != nil || len(got) != 0 {
		t.Errorf("ListAuditChains(ctx) = %q, %v; want none, nil", got, err)
	}
	if got, err := s.ListAuditCheckpoints(t.Context(), "c"); err != nil || len(got) != 0 {
		t.Errorf("ListAuditCheckpoints(ctx, %q) = %d, %v; want 0, nil", "c", len(got), err)
	}
}

func testAuditRoundTrip(t *testing.T, s store.Store) {
	ctx := t.Context()
	first := auditRecords("replica-1", 1, 3)
	if err := s.AppendAudit(ctx, first, nil); err != nil {
		t.Fatalf("AppendAudit(ctx, events 1..3, nil) err = %v, want nil", err)
	}
	second := auditRecords("replica-1", 4, 5)
	cp := auditCheckpoint("replica-1", 5)
	if err := s.AppendAudit(ctx, second, cp); err != nil {
		t.Fatalf("AppendAudit(ctx, events 4..5, checkpoint 5) err = %v, want nil", err)
	}
	// A checkpoint alone.
	if err := s.AppendAudit(ctx, nil, auditCheckpoint("replica-1", 2)); err != nil {
		t.Fatalf("AppendAudit(ctx, nil, checkpoint 2) err = %v, want nil", err)
	}
	checkAuditHead(t, s, "replica-1", 5)

	got, err := s.ListAudit(ctx, "replica-1", 0, 100)
	if err != nil {
		t.Fatalf("ListAudit(ctx, %q, 0, 100) err = %v, want nil", "replica-1", err)
	}
	if d := diffAudit(got, append(first, second...)); d != "" {
		t.Errorf("ListAudit(ctx, %q, 0, 100): %s", "replica-1", d)
	}

	cps, err := s.ListAuditCheckpoints(ctx, "replica-1")
	if err != nil {
		t.Fatalf("ListAuditCheckpoints(ctx, %q) err = %v, want nil", "replica-1", err)
	}
	want := []*store.AuditCheckpointRecord{auditCheckpoint("replica-1", 2), cp}
	if len(cps) != len(want) {
		t.Fatalf("ListAuditCheckpoints(ctx, %q) = %d checkpoints, want %d", "replica-1", len(cps), len(want))
	}
	for i, w := range want {
		if d := diffCheckpoint(cps[i], *w); d != "" {
			t.Errorf("ListAuditCheckpoints(ctx, %q)[%d]: %s", "replica-1", i, d)
		}
	}
}

// diffCheckpoint describes how got differs from want as stored (time in
// UTC to the microsecond); "" when they are equal.
func diffCheckpoint(got, want store.AuditCheckpointRecord) string {
	wt := want.Time.UTC().Truncate(time.Microsecond)
	if got.Chain != want.Chain || got.Seq != want.Seq || !bytes.Equal(got.Hash, want.Hash) || !got.Time.Equal(wt) ||
		got.Time.Location() != time.UTC || got.RootKeyID != want.RootKeyID || !bytes.Equal(got.Tag, want.Tag) {
		return fmt.Sprintf("got %+v, want %+v with Time %v", got, want, wt)
	}
	return ""
}

func testAuditPaging(t *testing.T, s store.Store) {
	ctx := t.Context()
	const n = store.DefaultAuditPage + 5
	all := auditRecords("c", 1, n)
	if err := s.AppendAudit(ctx, all, nil); err != nil {
		t.Fatalf("AppendAudit(ctx, %d events, nil) err = %v, want nil", n, err)
	}
	tests := []struct {
		name     string
		afterSeq uint64
		limit    int
		want     []store.AuditRecord
	}{
		{"first page", 0, 2, all[:2]},
		{"middle", 2, 3, all[2:5]},
		{"last, short", n - 1, 10, all[n-1:]},
		{"past the end", n, 10, nil},
		{"default page size", 0, 0, all[:store.DefaultAuditPage]},
		{"negative limit", 3, -1, all[3 : 3+store.DefaultAuditPage]},
		{"huge afterSeq", 1<<64 - 1, 10, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.ListAudit(ctx, "c", tt.afterSeq, tt.limit)
			if err != nil {
				t.Fatalf("ListAudit(ctx, %q, %d, %d) err = %v, want nil", "c", tt.afterSeq, tt.limit, err)
			}
			if d := diffAudit(got, tt.want); d != "" {
				t.Errorf("ListAudit(ctx, %q, %d, %d): %s", "c", tt.afterSeq, tt.limit, d)
			}
		})
	}
}

func testAuditChains(t *testing.T, s store.Store) {
	ctx := t.Context()
	// One batch may hold several chains.
	batch := append(auditRecords("b", 1, 2), auditRecords("a/ü", 1, 1)...)
	batch = append(batch, auditRecords("B", 1, 3)...)
	if err := s.AppendAudit(ctx, batch, nil); err != nil {
		t.Fatalf("AppendAudit(ctx, 3 chains, nil) err = %v, want nil", err)
	}
	if err := s.AppendAudit(ctx, auditRecords("a", 1, 1), nil); err != nil {
		t.Fatalf("AppendAudit(ctx, chain a, nil) err = %v, want nil", err)
	}
	got, err := s.ListAuditChains(ctx)
	if want := []string{"B", "a", "a/ü", "b"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("ListAuditChains(ctx) = %q, %v; want %q, nil", got, err, want)
	}
	for chain, head := range map[string]uint64{"B": 3, "a": 1, "a/ü": 1, "b": 2, "c": 0} {
		checkAuditHead(t, s, chain, head)
	}
}

func testAuditConflictWritesNothing(t *testing.T, s store.Store) {
	ctx := t.Context()
	if err := s.AppendAudit(ctx, auditRecords("c", 1, 3), auditCheckpoint("c", 3)); err != nil {
		t.Fatalf("AppendAudit(ctx, events 1..3, checkpoint 3) err = %v, want nil", err)
	}
	tests := []struct {
		name   string
		events []store.AuditRecord
		cp     *store.AuditCheckpointRecord
	}{
		{"event stored", auditRecords("c", 3, 5), nil},
		{"first event stored", auditRecords("c", 1, 4), nil},
		{"checkpoint stored", auditRecords("c", 4, 5), auditCheckpoint("c", 3)},
		{"checkpoint alone stored", nil, auditCheckpoint("c", 3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.AppendAudit(ctx, tt.events, tt.cp)
			if !errors.Is(err, store.ErrConflict) {
				t.Errorf("AppendAudit(ctx, %d events, %v) err = %v, want ErrConflict", len(tt.events), tt.cp != nil, err)
			}
			checkAuditHead(t, s, "c", 3)
			if cps, err := s.ListAuditCheckpoints(ctx, "c"); err != nil || len(cps) != 1 {
				t.Errorf("ListAuditCheckpoints(ctx, %q) = %d, %v; want 1, nil", "c", len(cps), err)
			}
		})
	}
	got, err := s.ListAudit(ctx, "c", 0, 100)
	if err != nil {
		t.Fatalf("ListAudit(ctx, %q, 0, 100) err = %v, want nil", "c", err)
	}
	if d := diffAudit(got, auditRecords("c", 1, 3)); d != "" {
		t.Errorf("ListAudit(ctx, %q, 0, 100) after conflicts: %s", "c", d)
	}
}

func testAuditInvalid(t *testing.T, s store.Store) {
	ctx := t.Context()
	with := func(f func(r *store.AuditRecord)) []store.AuditRecord {
		rs := auditRecords("c", 1, 2)
		f(&rs[1])
		return rs
	}
	cpWith := func(f func(c *store.AuditCheckpointRecord)) *store.AuditCheckpointRecord {
		c := auditCheckpoint("c", 2)
		f(c)
		return c
	}
	tests := []struct {
		name   string
		events []store.AuditRecord
		cp     *store.AuditCheckpointRecord
	}{
		{"nothing", nil, nil},
		{"empty chain", with(func(r *store.AuditRecord) { r.Chain = "" }), nil},
		{"long chain", with(func(r *store.AuditRecord) { r.Chain = strings.Repeat("c", store.MaxAuditChain+1) }), nil},
		{"chain not UTF-8", with(func(r *store.AuditRecord) { r.Chain = "c\xff" }), nil},
		{"chain with NUL", with(func(r *store.AuditRecord) { r.Chain = "c\x00" }), nil},
		{"seq 0", with(func(r *store.AuditRecord) { r.Seq = 0 }), nil},
		{"seq above int64", with(func(r *store.AuditRecord) { r.Seq = 1 << 63 }), nil},
		{"no data", with(func(r *store.AuditRecord) { r.Data = nil }), nil},
		{"no hash", with(func(r *store.AuditRecord) { r.Hash = []byte{} }), nil},
		{"seq twice", with(func(r *store.AuditRecord) { r.Seq = 1 }), nil},
		{"checkpoint without tag", auditRecords("c", 1, 2), cpWith(func(c *store.AuditCheckpointRecord) { c.Tag = nil })},
		{"checkpoint without root key", auditRecords("c", 1, 2), cpWith(func(c *store.AuditCheckpointRecord) { c.RootKeyID = "" })},
		{"checkpoint without hash", auditRecords("c", 1, 2), cpWith(func(c *store.AuditCheckpointRecord) { c.Hash = nil })},
		{"checkpoint seq 0", auditRecords("c", 1, 2), cpWith(func(c *store.AuditCheckpointRecord) { c.Seq = 0 })},
		{"checkpoint without chain", auditRecords("c", 1, 2), cpWith(func(c *store.AuditCheckpointRecord) { c.Chain = "" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.AppendAudit(ctx, tt.events, tt.cp); !errors.Is(err, store.ErrInvalidAudit) {
				t.Errorf("AppendAudit(ctx, %d events, checkpoint %v) err = %v, want ErrInvalidAudit", len(tt.events), tt.cp != nil, err)
			}
		})
	}
	if chains, err := s.ListAuditChains(ctx); err != nil || len(chains) != 0 {
		t.Errorf("ListAuditChains(ctx) after invalid appends = %q, %v; want none, nil", chains, err)
	}
	if cps, err := s.ListAuditCheckpoints(ctx, "c"); err != nil || len(cps) != 0 {
		t.Errorf("ListAuditCheckpoints(ctx, %q) after invalid appends = %d, %v; want 0, nil", "c", len(cps), err)
	}
}

// testAuditConcurrentAppends checks that of writers racing to append the
// same sequence numbers exactly one wins and the others get ErrConflict.
func testAuditConcurrentAppends(t *testing.T, s store.Store) {
	ctx := t.Context()
	const writers, rounds = 4, 5
	for round := range uint64(rounds) {
		var (
			wg        sync.WaitGroup
			mu        sync.Mutex
			won       int
			otherErrs []error
		)
		for w := range writers {
			wg.Go(func() {
				batch := auditRecords("c", 2*round+1, 2*round+2)
				batch[0].Data = fmt.Appendf(nil, "writer %d", w)
				err := s.AppendAudit(ctx, batch, nil)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					won++
				case !errors.Is(err, store.ErrConflict):
					otherErrs = append(otherErrs, err)
				}
			})
		}
		wg.Wait()
		if won != 1 || len(otherErrs) > 0 {
			t.Fatalf("round %d: %d concurrent AppendAudit calls of the same seqs: %d succeeded, other errors %v; want 1 and only ErrConflict",
				round, writers, won, otherErrs)
		}
	}
	got, err := s.ListAudit(ctx, "c", 0, 100)
	if err != nil || len(got) != 2*rounds {
		t.Fatalf("ListAudit(ctx, %q, 0, 100) = %d records, %v; want %d, nil", "c", len(got), err, 2*rounds)
	}
	for i, r := range got {
		if r.Seq != uint64(i+1) {
			t.Errorf("ListAudit(ctx, %q, 0, 100)[%d].Seq = %d, want %d", "c", i, r.Seq, i+1)
		}
	}
}

func testAuditNoAliasing(t *testing.T, s store.Store) {
	ctx := t.Context()
	events := auditRecords("c", 1, 1)
	cp := auditCheckpoint("c", 1)
	if err := s.AppendAudit(ctx, events, cp); err != nil {
		t.Fatalf("AppendAudit(ctx, event 1, checkpoint 1) err = %v, want nil", err)
	}
	events[0].Data[0], events[0].Hash[0], cp.Tag[0] = 'X', 'X', 'X'
	got, err := s.ListAudit(ctx, "c", 0, 10)
	if err != nil {
		t.Fatalf("ListAudit(ctx, %q, 0, 10) err = %v, want nil", "c", err)
	}
	if d := diffAudit(got, auditRecords("c", 1, 1)); d != "" {
		t.Fatalf("ListAudit(ctx, %q, 0, 10) after the caller changed its arguments: %s", "c", d)
	}
	got[0].Data[0] = 'Y'
	again, err := s.ListAudit(ctx, "c", 0, 10)
	if err != nil {
		t.Fatalf("ListAudit(ctx, %q, 0, 10) err = %v, want nil", "c", err)
	}
	if d := diffAudit(again, auditRecords("c", 1, 1)); d != "" {
		t.Errorf("ListAudit(ctx, %q, 0, 10) after the caller changed a result: %s", "c", d)
	}
	cps, err := s.ListAuditCheckpoints(ctx, "c")
	if err != nil || len(cps) != 1 || !bytes.Equal(cps[0].Tag, auditCheckpoint("c", 1).Tag) {
		t.Errorf("ListAuditCheckpoints(ctx, %q) = %+v, %v; want the tag as given before the caller changed it", "c", cps, err)
	}
}

func testAuditContextCanceled(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.AppendAudit(ctx, auditRecords("c", 1, 1), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("AppendAudit(canceled ctx) err = %v, want context.Canceled", err)
	}
	if _, _, err := s.AuditHead(ctx, "c"); !errors.Is(err, context.Canceled) {
		t.Errorf("AuditHead(canceled ctx) err = %v, want context.Canceled", err)
	}
	if _, err := s.ListAudit(ctx, "c", 0, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("ListAudit(canceled ctx) err = %v, want context.Canceled", err)
	}
	if _, err := s.ListAuditChains(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ListAuditChains(canceled ctx) err = %v, want context.Canceled", err)
	}
	if _, err := s.ListAuditCheckpoints(ctx, "c"); !errors.Is(err, context.Canceled) {
		t.Errorf("ListAuditCheckpoints(canceled ctx) err = %v, want context.Canceled", err)
	}
	checkAuditHead(t, s, "c", 0)
}

func testAuditLatestCheckpoints(t *testing.T, s store.Store) {
	ctx := t.Context()
	if got, err := s.LatestAuditCheckpoints(ctx); err != nil || len(got) != 0 {
		t.Fatalf("LatestAuditCheckpoints(ctx) on an empty log = %v, %v; want none, nil", got, err)
	}
	for _, w := range []struct {
		chain   string
		from    uint64
		to      uint64
		checkAt uint64 // 0: no checkpoint
	}{
		{"b", 1, 3, 2}, {"b", 4, 6, 6}, {"a", 1, 2, 1}, {"c", 1, 4, 0}, {"a", 3, 5, 5}, {"a", 6, 7, 0},
	} {
		var cp *store.AuditCheckpointRecord
		if w.checkAt > 0 {
			cp = auditCheckpoint(w.chain, w.checkAt)
		}
		if err := s.AppendAudit(ctx, auditRecords(w.chain, w.from, w.to), cp); err != nil {
			t.Fatalf("AppendAudit(ctx, %s %d..%d) err = %v, want nil", w.chain, w.from, w.to, err)
		}
	}
	got, err := s.LatestAuditCheckpoints(ctx)
	if err != nil {
		t.Fatalf("LatestAuditCheckpoints(ctx) err = %v, want nil", err)
	}
	want := []*store.AuditCheckpointRecord{auditCheckpoint("a", 5), auditCheckpoint("b", 6)}
	if len(got) != len(want) {
		t.Fatalf("LatestAuditCheckpoints(ctx) = %d checkpoints, want a at 5 and b at 6 (c has none)", len(got))
	}
	for i := range want {
		if d := diffCheckpoint(got[i], *want[i]); d != "" {
			t.Errorf("LatestAuditCheckpoints(ctx)[%d]: %s", i, d)
		}
	}
}
