package authn

import (
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestTokenCacheBounded(t *testing.T) {
	tests := []struct {
		size, inserts, wantMax int
	}{
		{size: 0, inserts: 10, wantMax: 0},
		{size: 1, inserts: 10, wantMax: 1},
		{size: 100, inserts: 1000, wantMax: 100 + maxCacheShards},
		{size: 10000, inserts: 30000, wantMax: 10000 + maxCacheShards},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			c := newTokenCache(tc.size)
			var last [32]byte
			for i := range tc.inserts {
				last = sha256.Sum256(fmt.Appendf(nil, "token-%d", i))
				c.put(last, &verifiedToken{subject: "s", exp: time.Now().Add(time.Minute)})
			}
			if got := c.len(); got > tc.wantMax || (tc.size > 0 && got == 0) {
				t.Fatalf("cache len after %d puts = %d, want 1..%d", tc.inserts, got, tc.wantMax)
			}
			if tc.size > 0 && c.get(last) == nil {
				t.Fatalf("get(last put) = nil, want the entry")
			}
			c.purge()
			if got := c.len(); got != 0 {
				t.Fatalf("cache len after purge = %d, want 0", got)
			}
		})
	}
}

func TestTokenCacheConcurrent(t *testing.T) {
	c := newTokenCache(256)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := sha256.Sum256(fmt.Appendf(nil, "%d-%d", g, i%300))
				if c.get(k) == nil {
					c.put(k, &verifiedToken{})
				}
				if i%500 == 0 {
					c.remove(k)
				}
				if g == 0 && i%700 == 0 {
					c.purge()
				}
			}
		})
	}
	wg.Wait()
	if got := c.len(); got > 256+maxCacheShards {
		t.Fatalf("cache len = %d, want <= %d", got, 256+maxCacheShards)
	}
}
