package envelope

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestFlightCallersStopWaiting: every caller of a coalesced load stops
// waiting when its own context ends, the one that started the load
// included, and the load goes on for the callers still waiting.
func TestFlightCallersStopWaiting(t *testing.T) {
	var f flight
	release := make(chan struct{})
	load := func() (*loadedKey, error) {
		<-release
		return &loadedKey{}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := f.do(ctx, "k", load)
		first <- err
	}()
	// The second caller joins the first one's flight (or, if it comes
	// late, starts its own); it must get the key either way.
	second := make(chan *loadedKey, 1)
	go func() {
		time.Sleep(10 * time.Millisecond)
		lk, _ := f.do(context.Background(), "k", load)
		second <- lk
	}()
	cancel()
	select {
	case err := <-first:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("do() for the caller that started the load, after its context ended, err = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("do() kept the caller that started the load waiting after its context ended")
	}
	close(release)
	select {
	case lk := <-second:
		if lk == nil {
			t.Errorf("do() for a waiting caller = nil, want the loaded key")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("do() for a waiting caller never returned")
	}
}
