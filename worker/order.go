package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// Per-conversation order (worker.ordering: conversation): a delivery is
// worked on only when its request is its conversation's head, the first
// one stored after the conversation's last settled request (see
// broker/order.go). One that is not parks in the waiting room: it waits
// without a work slot, woken when a request of its conversation settles or
// the one before it here leaves, and goes back to the queue when its head
// is queued (nobody works on it) or the room needs its place for a
// shallower waiter. The head's answer or give-up is recorded as settled
// before its ack or term, so the next request is neither sent to a provider
// nor answered before it.

// orderBroker is what per-conversation order needs of JetStream;
// *broker.Broker provides it.
type orderBroker interface {
	SetupOrder(ctx context.Context) error
	Settled(ctx context.Context, conv string) (uint64, error)
	Settle(ctx context.Context, conv string, seq uint64) error
	NextRequest(ctx context.Context, conv string, seq uint64) (*broker.Stored, error)
	AckFloor(ctx context.Context) (uint64, error)
	OnSettled(fn func(conv string)) (stop func(), err error)
}

var _ orderBroker = (*broker.Broker)(nil)

const (
	// turnRecheck is how often a conversation's first waiter here looks
	// again without being woken, and the shortest delay a delivery is put
	// back with.
	turnRecheck = 100 * time.Millisecond
	// turnSkips bounds how many answered requests not yet recorded as
	// settled one look walks past.
	turnSkips = 16
	// turnReadBudget bounds one look.
	turnReadBudget = 5 * time.Second
	// waitingRoomMin is the least room for waiters by default: a
	// conversation's backlog that fits drains without a put-back (10
	// conversations x 200 requests: 2,233 req/s with room for all against
	// 700 with 256, at a zero-latency provider; docs/BENCHMARKS.md).
	waitingRoomMin = 1024
)

// waitingRoom is how many deliveries may park: Config.OrderWaiting, by
// default max(Concurrency, waitingRoomMin).
func (c Config) waitingRoom() int {
	if c.OrderWaiting > 0 {
		return c.OrderWaiting
	}
	return max(c.Concurrency, waitingRoomMin)
}

// waiter is a delivery of an ordered conversation in this process, from
// pick-up until it is put back or, having taken its turn, ends.
type waiter struct {
	seq   uint64
	wake  chan struct{} // a settlement, or the one before it here left
	evict chan struct{} // its place in the room was given to a shallower one
	// parked: waiting in the room (turns.mu).
	parked bool
}

// turns keeps the conversations' lines in this process and the waiting
// room. A waiter's depth is how many of its conversation's waiters here
// have a lower stream sequence; only a line's first waiter looks at the
// stream, woken when its conversation settles; the next is woken when it
// leaves. The deeper ones park without a read.
type turns struct {
	b    orderBroker
	room int
	// draining ends when the pool stops pulling: parked ones go back.
	draining <-chan struct{}
	// freed tells the pull loop that a work slot's worth came free.
	freed func()

	mu     sync.Mutex
	lines  map[string][]*waiter // conversation → its waiters here, by sequence
	parked int
}

// startTurns sets the order bucket up and listens for settlements; stop
// when the pool stops.
func (p *Pool) startTurns(ctx context.Context) (stop func(), err error) {
	ob, ok := p.b.(orderBroker)
	if !ok {
		return nil, fmt.Errorf("worker.ordering %s: the broker (%T) keeps no order", OrderingConversation, p.b)
	}
	sctx, cancel := context.WithTimeout(ctx, turnReadBudget)
	defer cancel()
	if err := ob.SetupOrder(sctx); err != nil {
		return nil, err
	}
	t := &turns{b: ob, room: p.cfg.waitingRoom(), draining: ctx.Done(), freed: p.freed, lines: map[string][]*waiter{}}
	stop, err = ob.OnSettled(t.wake)
	if err != nil {
		return nil, err
	}
	p.turns = t
	p.work = make(chan struct{}, p.cfg.Concurrency)
	return stop, nil
}

// arrive puts a delivery in its conversation's line.
func (t *turns) arrive(conv string, seq uint64) *waiter {
	w := &waiter{seq: seq, wake: make(chan struct{}, 1), evict: make(chan struct{}, 1)}
	t.mu.Lock()
	defer t.mu.Unlock()
	line := t.lines[conv]
	i, _ := slices.BinarySearchFunc(line, seq, func(x *waiter, seq uint64) int { return cmp.Compare(x.seq, seq) })
	t.lines[conv] = slices.Insert(line, i, w)
	return w
}

// leave takes a waiter out of its line (and the room); the line's new
// first waiter is woken.
func (t *turns) leave(conv string, w *waiter) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.unparkLocked(w)
	line := t.lines[conv]
	i := slices.Index(line, w)
	if i < 0 {
		return
	}
	line = slices.Delete(line, i, i+1)
	if len(line) == 0 {
		delete(t.lines, conv)
		return
	}
	t.lines[conv] = line
	if i == 0 {
		signal(line[0].wake)
	}
}

// wake is a settlement heard in conv: its first waiter here looks again.
func (t *turns) wake(conv string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if line := t.lines[conv]; len(line) > 0 {
		signal(line[0].wake)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// depth is how many of conv's waiters here come before w.
func (t *turns) depth(conv string, w *waiter) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.depthLocked(conv, w)
}

func (t *turns) depthLocked(conv string, w *waiter) int {
	n := 0
	for _, x := range t.lines[conv] {
		if x.seq >= w.seq {
			break
		}
		n++
	}
	return n
}

// park gives w a place in the room: a free one, or the deepest parked
// waiter's when w is shallower (that one is told to go back). False: the
// room is full of waiters no deeper than w.
func (t *turns) park(conv string, w *waiter) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w.parked {
		return true
	}
	if t.parked >= t.room {
		deepest, most := (*waiter)(nil), -1
		for _, line := range t.lines {
			for i := len(line) - 1; i > most; i-- {
				if line[i].parked {
					deepest, most = line[i], i
					break
				}
			}
		}
		if deepest == nil || most <= t.depthLocked(conv, w) {
			return false
		}
		t.unparkLocked(deepest)
		signal(deepest.evict)
	}
	w.parked = true
	t.parked++
	t.freed()
	return true
}

// goBack sends the parked waiters of conv deeper than w back to the queue
// (w's head is queued: they would only wait for it).
func (t *turns) goBack(conv string, w *waiter) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, x := range t.lines[conv] {
		if x.seq > w.seq && x.parked {
			t.unparkLocked(x)
			signal(x.evict)
		}
	}
}

func (t *turns) unpark(w *waiter) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.unparkLocked(w)
}

func (t *turns) unparkLocked(w *waiter) {
	if w.parked {
		w.parked = false
		t.parked--
	}
}

// parkedNow is how many waiters are parked.
func (t *turns) parkedNow() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.parked
}

// turn is what a look at a conversation found.
type turn int

const (
	turnMine    turn = iota // the delivery's request is the head
	turnSettled             // it was settled already (its ack was lost)
	turnHeld                // a live worker works on the head
	turnQueued              // nobody works on the head right now
)

// takeTurn reports whether the delivery may be worked on: ordering is off,
// or its request is its conversation's head and it holds a work slot.
// Otherwise the delivery has been settled (acked: it was settled already)
// or put back.
func (d *delivery) takeTurn(ctx context.Context) bool {
	t := d.p.turns
	if t == nil {
		return true
	}
	if !chat.ValidConversationID(d.token) {
		return d.enterWork(ctx) // no conversation to keep in order
	}
	w := t.arrive(d.token, d.m.StreamSeq)
	d.waiter = w
	log := d.p.log.With().Str("conversation_id", d.token).Uint64("stream_seq", d.m.StreamSeq).
		Uint64("delivery", d.m.NumDelivered).Logger()
	var queued time.Time // since when its head has been seen queued
	recheck := time.NewTimer(turnRecheck)
	defer recheck.Stop()
	for {
		var tick <-chan time.Time
		if t.depth(d.token, w) > 0 {
			// Behind another of its conversation here: nothing to read.
			queued = time.Time{}
			if !t.park(d.token, w) {
				log.Debug().Msg("waiting room full of shallower waiters; putting the request back")
				d.putBack(d.p.turnDelay(d.m.NumDelivered))
				return false
			}
		} else {
			v, err := d.lookAtTurn(ctx, t.b)
			switch {
			case err != nil:
				log.Warn().Err(err).Msg("cannot tell whose turn it is in the conversation; putting the request back")
				d.putBack(d.p.cfg.RequeueMin)
				return false
			case v == turnMine:
				t.unpark(w)
				d.inTurn = true
				return d.enterWork(ctx)
			case v == turnSettled:
				log.Info().Msg("request already settled in its conversation's order; acking")
				_ = d.m.Ack()
				return false
			case v == turnHeld:
				queued = time.Time{}
			case queued.IsZero():
				queued = time.Now()
			case time.Since(queued) >= d.p.turnHoldQueued():
				delay := d.p.turnDelay(d.m.NumDelivered)
				log.Debug().Dur("delay", delay).Msg("nobody works on the conversation's head; putting the request back")
				t.goBack(d.token, w)
				d.putBack(delay)
				return false
			}
			if !t.park(d.token, w) {
				log.Debug().Msg("waiting room full; putting the request back")
				d.putBack(d.p.turnDelay(d.m.NumDelivered))
				return false
			}
			// A wake-up lost to a lagging read, or a head still queued.
			recheck.Reset(turnRecheck)
			tick = recheck.C
		}
		select {
		case <-w.wake:
		case <-tick:
		case <-w.evict:
			delay := d.p.turnDelay(d.m.NumDelivered)
			log.Debug().Dur("delay", delay).Msg("waiting room place given to a shallower request; putting the request back")
			d.putBack(delay)
			return false
		case <-t.draining:
			d.putBack(0)
			return false
		case <-ctx.Done():
			d.putBack(0)
			return false
		}
	}
}

// enterWork takes a work slot (worker.ordering: conversation); false when
// the pool drains first: the delivery has been put back.
func (d *delivery) enterWork(ctx context.Context) bool {
	select {
	case d.p.work <- struct{}{}:
		d.working = true
		return true
	case <-d.p.turns.draining:
	case <-ctx.Done():
	}
	d.putBack(0)
	return false
}

// leaveTurn ends a delivery's place in its conversation's line and gives
// its work slot back; call it when the delivery ends.
func (d *delivery) leaveTurn() {
	if d.waiter != nil {
		d.p.turns.leave(d.token, d.waiter)
		d.waiter = nil
	}
	if d.working {
		d.working = false
		<-d.p.work
		d.p.freed()
	}
}

// turnHoldQueued is how long a conversation's first waiter here stays
// while nobody works on its head: longer than any turn delay (a head put
// back behind another comes back within it), so that only a head put back
// to wait for a provider, or lost, sends it and the rest of its
// conversation's line here back to the queue.
func (p *Pool) turnHoldQueued() time.Duration {
	return max(p.cfg.RequeueMin, turnRecheck) + turnRecheck
}

// turnDelay is how long a request that is not its conversation's head is
// put back for on its n-th delivery: turnRecheck doubling per delivery, up
// to RequeueMin (so it is back soon after the head is answered).
func (p *Pool) turnDelay(n uint64) time.Duration {
	d, limit := turnRecheck, max(p.cfg.RequeueMin, turnRecheck)
	for i := uint64(1); i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// lookAtTurn finds the delivery's conversation's head.
func (d *delivery) lookAtTurn(ctx context.Context, ob orderBroker) (turn, error) {
	p, conv, seq := d.p, d.token, d.m.StreamSeq
	ctx, cancel := context.WithTimeout(ctx, turnReadBudget)
	defer cancel()
	settled, err := ob.Settled(ctx, conv)
	if err != nil {
		return 0, err
	}
	if seq <= settled {
		return turnSettled, nil
	}
	floor, err := ob.AckFloor(ctx)
	if err != nil {
		return 0, err
	}
	from := max(settled, floor)
	for range turnSkips {
		head, err := ob.NextRequest(ctx, conv, from+1)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return turnMine, nil // nothing unsettled before it
		}
		if err != nil {
			return 0, err
		}
		if head.Seq >= seq {
			return turnMine, nil
		}
		req, err := chat.DecodeRequest(head.Data, conv, p.decodeLimits())
		if err != nil {
			// Refused on its first delivery, at once.
			return turnHeld, nil
		}
		answered, held, err := p.b.Answered(ctx, req.ID, p.claimStale())
		switch {
		case err != nil:
			return 0, err
		case answered:
			// Its reply is stored; its settlement is on its way.
			from = head.Seq
		case held:
			return turnHeld, nil
		default:
			return turnQueued, nil
		}
	}
	return turnHeld, nil
}

// passTurn records the delivery's request as its conversation's last
// settled one, before the ack or term that settles it. False when that
// cannot be written: the delivery has been put back instead, and its next
// delivery, finding its outcome stored, settles it again.
func (d *delivery) passTurn() bool {
	if !d.inTurn {
		return true
	}
	ob := d.p.turns.b
	err := d.p.write(context.Background(), func(ctx context.Context) error { return ob.Settle(ctx, d.token, d.m.StreamSeq) })
	if err != nil {
		d.log.Warn().Err(err).Msg("cannot record the request as settled in its conversation's order; putting it back")
		d.putBack(d.p.cfg.RequeueMin)
		return false
	}
	d.inTurn = false
	return true
}
