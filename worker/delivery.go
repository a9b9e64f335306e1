package worker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// delivery is one delivery of a request being worked on, from pick-up to
// settlement (ack, nak or term). It owns the keep-alive — InProgress to the
// server and a refresh of the request id's claim, every third of the
// server's ack wait, from pick-up until settled, writes on the way out
// included — and the claim itself.
type delivery struct {
	p        *Pool
	m        *broker.Delivery
	token    string
	req      chat.Request
	log      deliveryLog
	start    time.Time
	deadline time.Time

	// claim is held from winning it until it is finished, requeued or
	// released; nil otherwise (the keep-alive refreshes it while set).
	claim atomic.Pointer[broker.Claim]
	// lostCtx ends when another delivery took the claim over.
	lostCtx context.Context
	lose    context.CancelFunc

	ka keepAlive

	// stream publishes the answer chunk by chunk; nil when not streamed.
	stream *streamer

	// folded holds the events of the attempts an ok reply carries in
	// their place (the answer, skips), published only if no ok reply of
	// this delivery gets stored (publishFolded).
	folded []heldAttempt

	// inTurn: the request is its conversation's head (worker.ordering:
	// conversation) until its settlement is recorded.
	inTurn bool
	// waiter is its place in its conversation's line and working that
	// it holds a work slot (worker.ordering: conversation), until
	// leaveTurn.
	waiter  *waiter
	working bool
}

func (p *Pool) pickUp(m *broker.Delivery) *delivery {
	d := &delivery{p: p, m: m, token: p.subj.ConversationOf(m.Subject), start: time.Now()}
	d.log.base = p.log
	d.lostCtx, d.lose = context.WithCancel(context.Background())
	d.ka.mu.Lock() // the first tick waits for t
	d.ka.t = time.AfterFunc(p.ackWait()/3, d.keepAlive)
	d.ka.mu.Unlock()
	return d
}

// keepAlive is a delivery's keep-alive: a timer, not a goroutine of its
// own (a delivery mostly lasts far less than a third of the ack wait, and
// its keep-alive then never runs).
type keepAlive struct {
	t       *time.Timer
	mu      sync.Mutex
	stopped bool
	// ctx is a tick's, ended by stopKeepAlive; made by the first tick.
	ctx     context.Context
	cancel  context.CancelFunc
	running sync.WaitGroup
}

// keepAlive is one tick: InProgress, and a refresh of the claim while it
// is held; it arms the next until stopKeepAlive.
func (d *delivery) keepAlive() {
	k := &d.ka
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return
	}
	if k.ctx == nil {
		k.ctx, k.cancel = context.WithCancel(context.Background())
	}
	ctx := k.ctx
	k.running.Add(1)
	k.mu.Unlock()
	defer k.running.Done()

	_ = d.m.InProgress()
	if c := d.claim.Load(); c != nil {
		wctx, wcancel := context.WithTimeout(ctx, d.p.writeBudget())
		err := c.Refresh(wctx)
		wcancel()
		switch {
		case errors.Is(err, broker.ErrClaimLost):
			d.claim.CompareAndSwap(c, nil)
			d.lose()
		case err != nil && ctx.Err() == nil:
			d.log.Debug().Err(err).Msg("cannot refresh the claim")
		}
	}
	k.mu.Lock()
	if !k.stopped {
		k.t.Reset(d.p.ackWait() / 3)
	}
	k.mu.Unlock()
}

// stopKeepAlive ends the keep-alive, after settlement: a tick under way is
// cancelled and waited for; none runs after it returns.
func (d *delivery) stopKeepAlive() {
	k := &d.ka
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return
	}
	k.stopped = true
	k.t.Stop()
	cancel := k.cancel
	k.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	k.running.Wait()
	d.lose()
}

func (d *delivery) expired() bool { return !time.Now().Before(d.deadline) }

// duplicate acks a delivery whose request id has already been answered.
func (d *delivery) duplicate(why string) {
	d.p.m.requests.WithLabelValues(resultDuplicate).Inc()
	d.log.Info().Msg(why)
	d.ack()
}

func (d *delivery) ack() {
	if d.passTurn() {
		_ = d.m.Ack()
	}
}

func (d *delivery) term(reason string) {
	if d.passTurn() {
		_ = d.m.Term(reason)
	}
}

func (d *delivery) putBack(delay time.Duration) {
	if err := d.m.NakWithDelay(delay); err != nil {
		d.log.Warn().Err(err).Msg("cannot put the request back; it returns after ack_wait")
	}
}

// lapse lets go of the claim once the reply is stored, without a write:
// the claim goes stale by itself, and a later message with the id, finding
// it held, finds the reply (no write on the happy path for what the reply
// already says).
func (d *delivery) lapse() { d.claim.Store(nil) }

// finish records the id as answered and lets go of the claim.
func (d *delivery) finish(ctx context.Context) {
	c := d.claim.Swap(nil)
	if c == nil {
		d.p.finish(ctx, d.m.StreamSeq, d.req.ID, d.log.Logger())
		return
	}
	if err := d.p.write(ctx, c.Finish); err != nil {
		// The reply is stored; a redelivery finds it with FindReply.
		d.log.Warn().Err(err).Msg("cannot record the request as answered")
	}
}

// requeueClaim lets go of the claim having published nothing: the next
// delivery takes it at once, without a look for a reply.
func (d *delivery) requeueClaim(ctx context.Context) {
	d.letGo(ctx, (*broker.Claim).Requeue)
}

// release lets go of the claim after a write that may have landed: the
// next delivery takes it at once and looks for a reply first.
func (d *delivery) release(ctx context.Context) {
	d.letGo(ctx, (*broker.Claim).Release)
}

func (d *delivery) letGo(ctx context.Context, how func(*broker.Claim, context.Context) error) {
	c := d.claim.Swap(nil)
	if c == nil {
		return
	}
	wctx, cancel := d.p.writeCtx(ctx)
	defer cancel()
	if err := how(c, wctx); err != nil {
		// The claim goes stale by itself; the next delivery waits for that.
		d.log.Warn().Err(err).Msg("cannot let go of the claim")
	}
}
