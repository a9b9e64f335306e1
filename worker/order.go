package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// Per-conversation order (worker.ordering: conversation): a delivery is
// worked on only when its request is its conversation's head, the first
// one stored after the conversation's last settled request (see
// broker/order.go). One that is not waits a little in its slot, woken when
// a request of its conversation settles, then goes back to the queue with a
// short delay: it holds up nobody but its own conversation. The head's
// answer or give-up is recorded as settled before its ack or term, so the
// next request is neither sent to a provider nor answered before it.

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
	// turnRecheck is how often a waiting delivery looks again without
	// being woken, and the shortest delay it is put back with.
	turnRecheck = 100 * time.Millisecond
	// turnHold is how long a delivery waits in its slot while a live worker
	// works on its conversation's head, when it is the conversation's first
	// waiter in this process.
	turnHold = 2 * time.Second
	// turnHoldQueued is how long it waits otherwise: nobody works on the
	// head (not picked up yet, or put back to wait for a provider), or
	// another waiter of its conversation comes before it, so that a long
	// queue in one conversation does not keep the slots from the others.
	turnHoldQueued = 2 * turnRecheck
	// turnSkips bounds how many answered requests not yet recorded as
	// settled one look walks past.
	turnSkips = 16
	// turnReadBudget bounds one look.
	turnReadBudget = 5 * time.Second
)

// turns wakes the deliveries waiting for their conversation's turn: the
// first of each conversation (by stream sequence) when one of its requests
// settles, the next when that one leaves. Waking them all would have every
// waiter of a long queue look at the stream after each answer.
type turns struct {
	b orderBroker

	mu      sync.Mutex
	waiting map[string]map[chan struct{}]uint64 // conversation → waiter → its sequence
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
	t := &turns{b: ob, waiting: map[string]map[chan struct{}]uint64{}}
	stop, err = ob.OnSettled(t.wake)
	if err != nil {
		return nil, err
	}
	p.turns = t
	return stop, nil
}

func (t *turns) listen(conv string, seq uint64) chan struct{} {
	ch := make(chan struct{}, 1)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.waiting[conv] == nil {
		t.waiting[conv] = map[chan struct{}]uint64{}
	}
	t.waiting[conv][ch] = seq
	return ch
}

func (t *turns) forget(conv string, ch chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.waiting[conv], ch)
	if len(t.waiting[conv]) == 0 {
		delete(t.waiting, conv)
		return
	}
	t.wakeFirst(conv)
}

func (t *turns) wake(conv string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.wakeFirst(conv)
}

// first reports whether ch is its conversation's first waiter here.
func (t *turns) first(conv string, ch chan struct{}) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.firstLocked(conv) == ch
}

func (t *turns) firstLocked(conv string) chan struct{} {
	var first chan struct{}
	var lowest uint64
	for ch, seq := range t.waiting[conv] {
		if first == nil || seq < lowest {
			first, lowest = ch, seq
		}
	}
	return first
}

func (t *turns) wakeFirst(conv string) {
	if ch := t.firstLocked(conv); ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
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
// or its request is its conversation's head. Otherwise the delivery has
// been settled (acked: it was settled already) or put back.
func (d *delivery) takeTurn(ctx context.Context) bool {
	t := d.p.turns
	if t == nil || !chat.ValidConversationID(d.token) {
		return true
	}
	wake := t.listen(d.token, d.m.StreamSeq)
	defer t.forget(d.token, wake)
	log := d.p.log.With().Str("conversation_id", d.token).Uint64("stream_seq", d.m.StreamSeq).
		Uint64("delivery", d.m.NumDelivered).Logger()
	start := time.Now()
	recheck := time.NewTimer(turnRecheck)
	defer recheck.Stop()
	for {
		v, err := d.lookAtTurn(ctx, t.b)
		hold := turnHoldQueued
		switch {
		case err != nil:
			log.Warn().Err(err).Msg("cannot tell whose turn it is in the conversation; putting the request back")
			d.putBack(d.p.cfg.RequeueMin)
			return false
		case v == turnMine:
			d.inTurn = true
			return true
		case v == turnSettled:
			log.Info().Msg("request already settled in its conversation's order; acking")
			_ = d.m.Ack()
			return false
		case v == turnHeld && t.first(d.token, wake):
			// Next in line here: worth its slot.
			hold = turnHold
		}
		if time.Since(start) >= hold {
			delay := d.p.turnDelay(d.m.NumDelivered)
			log.Debug().Dur("delay", delay).Bool("head_worked_on", v == turnHeld).Msg("not the conversation's turn; putting the request back")
			d.putBack(delay)
			return false
		}
		// Only a conversation's first waiter looks again unwoken (a wake-up
		// lost to a lagging read); the others until their hold ends.
		if t.first(d.token, wake) {
			recheck.Reset(turnRecheck)
		} else {
			recheck.Reset(hold - time.Since(start))
		}
		select {
		case <-wake:
		case <-recheck.C:
		case <-ctx.Done():
			d.putBack(0)
			return false
		}
	}
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
