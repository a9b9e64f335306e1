package worker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/internal/poll"
)

// TestRunnersReuseIdleGoroutines: work handed over while a runner is idle
// runs on it; work handed over while every runner is busy gets a new one;
// closeAndWait returns once all of it ran, with no runner left.
func TestRunnersReuseIdleGoroutines(t *testing.T) {
	r := newRunners()
	var ran atomic.Int32
	// One at a time: the first runner takes all of them.
	for i := range 5 {
		r.Go(func() { ran.Add(1) })
		poll.Until(t, 5*time.Second, "the work to run", func() bool { return ran.Load() == int32(i+1) })
		poll.Until(t, 5*time.Second, "the runner to be idle", func() bool { return r.idle.Load() == 1 })
	}
	if n := r.started.Load(); n != 1 {
		t.Errorf("%d runners started for work handed over one at a time, want 1", n)
	}
	// Three at once, each blocked: the idle runner takes one, two more start.
	release := make(chan struct{})
	for range 3 {
		r.Go(func() { <-release; ran.Add(1) })
	}
	if n := r.started.Load(); n != 3 {
		t.Errorf("%d runners in all for three blocked pieces of work, want 3", n)
	}
	close(release)
	r.closeAndWait()
	if n := ran.Load(); n != 8 {
		t.Errorf("%d pieces of work ran, want 8", n)
	}
	if n := r.idle.Load(); n != 0 {
		t.Errorf("%d runners idle after closeAndWait, want 0", n)
	}
}

// TestGatherWaitsForAFewPlaces: a busy pool's pull waits for a few places
// (woken as deliveries end), and no longer than pullGather for them.
func TestGatherWaitsForAFewPlaces(t *testing.T) {
	p := &Pool{cfg: Config{Concurrency: 32}, release: make(chan struct{}, 1)}
	slots := make(chan struct{}, 32)
	for range 31 {
		slots <- struct{}{}
	}
	want := pullGatherMin(32)
	if want != 2 {
		t.Fatalf("pullGatherMin(32) = %d, want 2", want)
	}
	got := make(chan int, 1)
	go func() { got <- p.gather(context.Background(), slots, want) }()
	<-slots // a delivery ends
	p.freed()
	if n := <-got; n != 2 {
		t.Errorf("gather = %d after a delivery ended, want 2", n)
	}
	// Nothing ends: it pulls the one place it has once pullGather is over.
	slots <- struct{}{}
	if n := p.gather(context.Background(), slots, want); n != 1 {
		t.Errorf("gather = %d with nothing ending, want 1", n)
	}
}
