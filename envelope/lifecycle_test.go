package envelope

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/store"
)

func TestScheduleKeyDeletionWaitingPeriod(t *testing.T) {
	tests := []struct {
		name    string
		wait    time.Duration
		want    time.Duration // from now; 0 when refused
		wantErr error
	}{
		{"unset means 30 days", 0, 30 * 24 * time.Hour, nil},
		{"7 days", 7 * 24 * time.Hour, 7 * 24 * time.Hour, nil},
		{"30 days", 30 * 24 * time.Hour, 30 * 24 * time.Hour, nil},
		{"1 day", 24 * time.Hour, 0, ErrInvalidArgument},
		{"just under 7 days", 7*24*time.Hour - time.Second, 0, ErrInvalidArgument},
		{"31 days", 31 * 24 * time.Hour, 0, ErrInvalidArgument},
		{"negative", -time.Hour, 0, ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFixture(t, Options{})
			f.createKey(t, "k", store.KeyTypeAES256GCM)
			before := snapshot(t, f.store)
			k, err := f.ring.ScheduleKeyDeletion(ctx, "k", tt.wait)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("ScheduleKeyDeletion(k, %v) err = %v, want %v", tt.wait, err, tt.wantErr)
				}
				if after := snapshot(t, f.store); after != before {
					t.Errorf("refused ScheduleKeyDeletion changed the store: %s -> %s", before, after)
				}
				return
			}
			if err != nil {
				t.Fatalf("ScheduleKeyDeletion(k, %v) err = %v, want nil", tt.wait, err)
			}
			if k.State != store.KeyStateDeletionScheduled || !k.DeletionTime.Equal(f.now.Now().Add(tt.want)) {
				t.Errorf("ScheduleKeyDeletion(k, %v) = %v at %v, want DELETION_SCHEDULED at now+%v", tt.wait, k.State, k.DeletionTime, tt.want)
			}
		})
	}
}

// TestDeletionLifecycle walks a key through schedule, cancel, schedule and
// destruction, checking what each state allows.
func TestDeletionLifecycle(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	f.createKey(t, "k", store.KeyTypeAES256GCM)
	ct, _, err := f.ring.Encrypt(ctx, "k", []byte("4111111111111111"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	week := 7 * 24 * time.Hour
	if _, err := f.ring.ScheduleKeyDeletion(ctx, "k", week); err != nil {
		t.Fatalf("ScheduleKeyDeletion(k) err = %v, want nil", err)
	}
	due := f.now.Now().Add(week).Format(time.RFC3339)
	minVersion := uint32(1)
	refusals := []struct {
		name string
		call func() error
	}{
		{"Encrypt", func() error { _, _, err := f.ring.Encrypt(ctx, "k", []byte("x"), nil); return err }},
		{"Decrypt", func() error { _, _, err := f.ring.Decrypt(ctx, ct, []byte("ad")); return err }},
		{"GenerateDataKey", func() error { _, err := f.ring.GenerateDataKey(ctx, "k", nil); return err }},
		{"CheckUsable", func() error { return f.ring.CheckUsable(ctx, "k") }},
		{"EnableKey", func() error { _, err := f.ring.EnableKey(ctx, "k"); return err }},
		{"DisableKey", func() error { _, err := f.ring.DisableKey(ctx, "k"); return err }},
		{"RotateKey", func() error { _, err := f.ring.RotateKey(ctx, "k"); return err }},
		{"UpdateKey", func() error {
			_, err := f.ring.UpdateKey(ctx, "k", KeyUpdate{MinDecryptionVersion: &minVersion})
			return err
		}},
		{"ScheduleKeyDeletion again", func() error { _, err := f.ring.ScheduleKeyDeletion(ctx, "k", 0); return err }},
	}
	before := snapshot(t, f.store)
	for _, r := range refusals {
		t.Run("scheduled/"+r.name, func(t *testing.T) {
			err := r.call()
			if !errors.Is(err, ErrKeyDeletionScheduled) || !strings.Contains(err.Error(), `key "k" is scheduled for deletion at `+due) {
				t.Errorf("%s on a scheduled key err = %v, want ErrKeyDeletionScheduled saying %s", r.name, err, due)
			}
		})
	}
	if after := snapshot(t, f.store); after != before {
		t.Errorf("refused calls changed the store: %s -> %s", before, after)
	}
	if _, done, err := f.ring.DestroyIfDue(ctx, "k"); done || err != nil {
		t.Errorf("DestroyIfDue(k) before its time = %v, %v; want false, nil", done, err)
	}

	k, err := f.ring.CancelKeyDeletion(ctx, "k")
	if err != nil || k.State != store.KeyStateDisabled || !k.DeletionTime.IsZero() {
		t.Fatalf("CancelKeyDeletion(k) = %v %v, %v; want DISABLED without a deletion time", k.State, k.DeletionTime, err)
	}
	if _, err := f.ring.CancelKeyDeletion(ctx, "k"); !errors.Is(err, ErrKeyNotScheduled) {
		t.Errorf("CancelKeyDeletion(k) again err = %v, want ErrKeyNotScheduled", err)
	}
	if _, err := f.ring.EnableKey(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if pt, _, err := f.ring.Decrypt(ctx, ct, []byte("ad")); err != nil || string(pt) != "4111111111111111" {
		t.Fatalf("Decrypt() after cancel and enable = %v; want the plaintext", err)
	}

	if _, err := f.ring.ScheduleKeyDeletion(ctx, "k", week); err != nil {
		t.Fatal(err)
	}
	f.now.Advance(week - time.Second)
	if _, done, err := f.ring.DestroyIfDue(ctx, "k"); done || err != nil {
		t.Errorf("DestroyIfDue(k) a second early = %v, %v; want false, nil", done, err)
	}
	f.now.Advance(time.Second)
	destroyedAt := f.now.Now()
	k, done, err := f.ring.DestroyIfDue(ctx, "k")
	if !done || err != nil || k.State != store.KeyStateDestroyed || !k.DestroyTime.Equal(destroyedAt) {
		t.Fatalf("DestroyIfDue(k) when due = %v %v, %v, %v; want DESTROYED at %v", k.State, k.DestroyTime, done, err, destroyedAt)
	}
	stored, err := f.store.GetKey(ctx, "k")
	if err != nil || stored.WrappedKeyset != nil || stored.State != store.KeyStateDestroyed {
		t.Errorf("stored key after destruction = %v with %d keyset bytes, %v; want DESTROYED and no keyset", stored.State, len(stored.WrappedKeyset), err)
	}
	if lk, ok := f.ring.cache.peek("k"); ok && lk.handle != nil {
		t.Errorf("the cache still holds the destroyed key's material")
	}
	if _, done, err := f.ring.DestroyIfDue(ctx, "k"); done || err != nil {
		t.Errorf("DestroyIfDue(k) again = %v, %v; want false, nil", done, err)
	}

	// Whatever the ciphertext, a destroyed key says so: no material is left
	// to authenticate anything with.
	c, _ := ParseCiphertext(ct)
	forged := append(bytes.Clone(c.header), make([]byte, 64)...)
	wantMsg := `key "k" was destroyed at ` + destroyedAt.Format(time.RFC3339)
	destroyed := []struct {
		name string
		call func() error
	}{
		{"Decrypt", func() error { _, _, err := f.ring.Decrypt(ctx, ct, []byte("ad")); return err }},
		{"Decrypt with wrong associated data", func() error { _, _, err := f.ring.Decrypt(ctx, ct, nil); return err }},
		{"Decrypt forged", func() error { _, _, err := f.ring.Decrypt(ctx, forged, nil); return err }},
		{"ReEncrypt", func() error { _, _, _, err := f.ring.ReEncrypt(ctx, ct, []byte("ad"), ""); return err }},
		{"Encrypt", func() error { _, _, err := f.ring.Encrypt(ctx, "k", []byte("x"), nil); return err }},
		{"CancelKeyDeletion", func() error { _, err := f.ring.CancelKeyDeletion(ctx, "k"); return err }},
		{"ScheduleKeyDeletion", func() error { _, err := f.ring.ScheduleKeyDeletion(ctx, "k", 0); return err }},
		{"EnableKey", func() error { _, err := f.ring.EnableKey(ctx, "k"); return err }},
		{"RotateKey", func() error { _, err := f.ring.RotateKey(ctx, "k"); return err }},
	}
	for _, r := range destroyed {
		t.Run("destroyed/"+r.name, func(t *testing.T) {
			err := r.call()
			if !errors.Is(err, ErrKeyDestroyed) || !strings.Contains(err.Error(), wantMsg) {
				t.Errorf("%s on a destroyed key err = %v, want ErrKeyDestroyed saying %q", r.name, err, wantMsg)
			}
		})
	}
	// The key's metadata stays, so GetKey says what happened.
	if k, err := f.ring.GetKey(ctx, "k"); err != nil || k.State != store.KeyStateDestroyed || !k.DestroyTime.Equal(destroyedAt) {
		t.Errorf("GetKey(k) = %v %v, %v; want DESTROYED at %v", k.State, k.DestroyTime, err, destroyedAt)
	}
}

func TestRotateIfDue(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "daily", Type: store.KeyTypeAES256GCM, RotationPeriod: 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	f.createKey(t, "manual", store.KeyTypeAES256GCM)
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "off", Type: store.KeyTypeAES256GCM, RotationPeriod: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ring.DisableKey(ctx, "off"); err != nil {
		t.Fatal(err)
	}
	created := f.now.Now()
	steps := []struct {
		advance     time.Duration
		key         string
		wantRotated bool
		wantPrimary uint32
	}{
		{23 * time.Hour, "daily", false, 1},
		{time.Hour, "daily", true, 2},
		{0, "daily", false, 2},
		{24 * time.Hour, "daily", true, 3},
		{0, "manual", false, 1},
		{0, "off", false, 1},
	}
	for _, s := range steps {
		f.now.Advance(s.advance)
		k, done, err := f.ring.RotateIfDue(ctx, s.key)
		if err != nil || done != s.wantRotated || k.PrimaryVersion != s.wantPrimary {
			t.Errorf("RotateIfDue(%s) at +%v = primary %d, %v, %v; want %d, %v, nil", s.key, f.now.Now().Sub(created), k.PrimaryVersion, done, err, s.wantPrimary, s.wantRotated)
		}
	}
	k, _ := f.ring.GetKey(ctx, "daily")
	if next, ok := NextRotationTime(k); !ok || !next.Equal(created.Add(72*time.Hour)) {
		t.Errorf("NextRotationTime(daily) = %v, %v; want %v", next, ok, created.Add(72*time.Hour))
	}
	if _, ok := NextRotationTime(store.Key{State: store.KeyStateEnabled}); ok {
		t.Errorf("NextRotationTime(key without a period) ok = true, want false")
	}
}

func TestRetirementVersion(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// versions returns n versions, version i created at t0 + (i-1) days.
	versions := func(n int) []store.Version {
		var vs []store.Version
		for i := 1; i <= n; i++ {
			vs = append(vs, store.Version{Number: uint32(i), CreateTime: t0.Add(time.Duration(i-1) * 24 * time.Hour)})
		}
		return vs
	}
	key := func(n int, minV uint32, after time.Duration, count uint32) store.Key {
		return store.Key{Versions: versions(n), PrimaryVersion: uint32(n), MinDecryptionVersion: minV, RetireAfter: after, RetireAfterVersions: count}
	}
	day := 24 * time.Hour
	tests := []struct {
		name string
		k    store.Key
		now  time.Time
		want uint32
	}{
		{"no retention", key(5, 1, 0, 0), t0.Add(100 * day), 1},
		{"by count: 2 newer", key(5, 1, 0, 2), t0, 4},
		{"by count: 1 newer", key(5, 1, 0, 1), t0, 5},
		{"by count: more than exist", key(3, 1, 0, 5), t0, 1},
		{"by count keeps a higher minimum", key(5, 5, 0, 3), t0, 5},
		{"by age: nothing superseded long enough", key(3, 1, 2*day, 0), t0.Add(2*day - time.Second), 1},
		// v1 superseded at t0+1d, v2 at t0+2d.
		{"by age: v1 superseded 2 days", key(3, 1, 2*day, 0), t0.Add(3 * day), 2},
		{"by age: v1 and v2", key(3, 1, 2*day, 0), t0.Add(4 * day), 3},
		{"by age never passes the primary", key(3, 1, time.Hour, 0), t0.Add(100 * day), 3},
		{"single version", key(1, 1, time.Hour, 1), t0.Add(100 * day), 1},
		{"either rule retires", key(5, 1, 2*day, 3), t0.Add(4 * day), 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RetirementVersion(tt.k, tt.now); got != tt.want {
				t.Errorf("RetirementVersion() = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestRetireVersions(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "count", Type: store.KeyTypeAES256GCM, RetireAfterVersions: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ring.CreateKey(ctx, KeySpec{Name: "age", Type: store.KeyTypeAES256GCM, RetireAfter: 48 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	v1, _, err := f.ring.Encrypt(ctx, "count", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := f.ring.RotateKey(ctx, "count"); err != nil {
			t.Fatal(err)
		}
	}
	f.now.Advance(time.Hour)
	if _, err := f.ring.RotateKey(ctx, "age"); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		advance time.Duration
		key     string
		want    uint32
		retired bool
	}{
		{0, "count", 3, true},
		{0, "count", 3, false},
		{47 * time.Hour, "age", 1, false},
		{time.Hour, "age", 2, true},
	}
	for _, s := range steps {
		f.now.Advance(s.advance)
		k, done, err := f.ring.RetireVersions(ctx, s.key)
		if err != nil || done != s.retired || k.MinDecryptionVersion != s.want {
			t.Errorf("RetireVersions(%s) = min %d, %v, %v; want %d, %v, nil", s.key, k.MinDecryptionVersion, done, err, s.want, s.retired)
		}
	}
	if _, _, err := f.ring.Decrypt(ctx, v1, nil); !errors.Is(err, ErrVersionNotAllowed) {
		t.Errorf("Decrypt(retired version 1) err = %v, want ErrVersionNotAllowed", err)
	}
}
