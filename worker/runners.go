package worker

import (
	"sync"
	"sync/atomic"
	"time"
)

// runners runs the pool's deliveries on goroutines kept for the next one.
// A delivery grows its goroutine's stack to what a provider call and the
// JSON codecs need, copying it at each doubling; a kept goroutine has grown
// already (in the zero-latency benchmark, stack copying was 9 % of the
// worker's CPU). An idle runner exits after runnerIdle, and all of them
// once close is called.
type runners struct {
	work chan func()
	done chan struct{}
	wg   sync.WaitGroup
	// started counts the runners started; idle those waiting for work.
	started atomic.Int64
	idle    atomic.Int32
}

// runnerIdle is how long a runner waits for another delivery.
const runnerIdle = 10 * time.Second

func newRunners() *runners {
	return &runners{work: make(chan func()), done: make(chan struct{})}
}

// Go runs fn on an idle runner, or a new one. Not after close.
func (r *runners) Go(fn func()) {
	select {
	case r.work <- fn:
		return
	default:
	}
	r.wg.Add(1)
	r.started.Add(1)
	go r.run(fn)
}

func (r *runners) run(fn func()) {
	defer r.wg.Done()
	idle := time.NewTimer(runnerIdle)
	defer idle.Stop()
	for {
		fn()
		idle.Reset(runnerIdle)
		r.idle.Add(1)
		select {
		case fn = <-r.work:
			r.idle.Add(-1)
		case <-idle.C:
			r.idle.Add(-1)
			return
		case <-r.done:
			r.idle.Add(-1)
			return
		}
	}
}

// closeAndWait lets the runners go once their work is done, and waits.
func (r *runners) closeAndWait() {
	close(r.done)
	r.wg.Wait()
}
