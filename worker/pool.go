package worker

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// Broker is what the pool needs of JetStream; *broker.Broker provides it.
type Broker interface {
	Fetch(max int, wait time.Duration) (<-chan *broker.Delivery, func() error, error)
	Claim(ctx context.Context, id string, seq uint64, worker string, stale time.Duration) (*broker.Claim, broker.ClaimResult, error)
	Finish(ctx context.Context, id string, seq uint64, worker string) error
	Answered(ctx context.Context, id string, stale time.Duration) (answered, held bool, err error)
	FindReply(ctx context.Context, conv, id string, since time.Time) (bool, error)
	PublishReply(ctx context.Context, conv, msgID string, reply *chat.Reply) (duplicate bool, err error)
	PublishDead(ctx context.Context, data []byte, d broker.DeadLetter) error
	PublishEvent(ev *chat.Event, key string)
	PublishStatus(conv string, v any)
	Request(ctx context.Context, seq uint64) (*broker.Stored, error)
	OnMaxDeliveries(fn func(streamSeq, deliveries uint64)) (stop func(), err error)
	Consumer(ctx context.Context) (broker.ConsumerState, error)
	Subjects() chat.Subjects
}

var _ Broker = (*broker.Broker)(nil)

// fetchWait bounds one pull: how long a pull waits for requests, and so how
// long a stop or a change of provider availability may take to be noticed.
const fetchWait = time.Second

// idleRecheck bounds how long a pool that stopped pulling (no provider
// available) goes without looking again.
const idleRecheck = 500 * time.Millisecond

// Options are the pieces a Pool is built from.
type Options struct {
	Broker  Broker
	Chain   *Chain
	Config  Config
	Metrics *Metrics // nil: a private, unregistered set
	Log     zerolog.Logger
	// ID names this worker process in events; default host-pid.
	ID string
}

// Pool is one process's set of workers.
type Pool struct {
	b       Broker
	chain   *Chain
	cfg     Config
	m       *Metrics
	log     zerolog.Logger
	id      string
	subj    chat.Subjects
	release chan struct{}
	// serverAckWait is the consumer's ack wait as the server has it
	// (nanoseconds; 0 until read): keep-alives and write budgets follow it.
	serverAckWait atomic.Int64
	// turns keeps per-conversation order; nil without it.
	turns *turns
	// work holds a slot per delivery worked on (past its turn), with
	// per-conversation order; nil without it, when every delivery in hand
	// is worked on.
	work chan struct{}
}

// New returns a pool. Wire the chain's breakers' transitions to
// Pool.BreakerChanged so they are recorded.
func New(o Options) *Pool {
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.ID == "" {
		host, _ := os.Hostname()
		o.ID = host + "-" + strconv.Itoa(os.Getpid())
	}
	return &Pool{b: o.Broker, chain: o.Chain, cfg: o.Config, m: o.Metrics, log: o.Log, id: o.ID,
		subj: o.Broker.Subjects(), release: make(chan struct{}, 1)}
}

// ID is the worker id recorded in events.
func (p *Pool) ID() string { return p.id }

// BreakerChanged records a breaker transition: metric, event and log line.
// It may block briefly (publishing the event), so call it from a goroutine
// fed by the breakers' hooks, not from a hook itself. A transition imposed by
// a peer replica's verdict is recorded too, marked peer: it changes what
// this replica does, and the peer's own record says nothing of this
// replica's timers (a forced open half-opens here by itself). replay folds
// the replicas' records into one transition per change of the pool.
func (p *Pool) BreakerChanged(t breaker.Transition) {
	p.m.breaker(t)
	p.log.Info().Str("provider", t.Provider).Str("from", t.From.String()).Str("to", t.To.String()).
		Bool("from_peer", t.Forced).Msg("breaker transition")
	p.b.PublishEvent(&chat.Event{Type: chat.EventBreaker, At: t.At, Worker: p.id, Provider: t.Provider,
		From: t.From.String(), To: t.To.String(), Peer: t.Forced}, t.Provider)
}

// Run pulls and processes requests until ctx ends, then drains: it stops
// pulling, lets in-flight requests finish for up to Config.ShutdownGrace,
// and puts back whatever is still running. It returns nil after a drain.
func (p *Pool) Run(ctx context.Context) error {
	// In-flight work outlives ctx by the grace period; hard ends it.
	hard, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()

	p.readConsumer(ctx)
	if p.cfg.Ordering == OrderingConversation {
		stopTurns, err := p.startTurns(ctx)
		if err != nil {
			return err
		}
		defer stopTurns()
	}
	var advisories handlers
	stopAdv, err := p.b.OnMaxDeliveries(func(seq, deliveries uint64) {
		if advisories.enter() {
			defer advisories.done()
			p.maxDeliveries(hard, seq, deliveries)
		}
	})
	if err != nil {
		return err
	}
	// The connection may close once Run returns: a running advisory
	// handler finishes its writes first.
	defer advisories.closeAndWait()
	defer stopAdv()
	go p.watchBacklog(ctx)

	// The grace period runs from the moment ctx ends, not from the end of
	// the pull in progress then (which may take up to fetchWait).
	go p.graceTimer(ctx, hard, abort)

	// Deliveries in hand: worked on, or (with per-conversation order)
	// waiting for their turn without a work slot.
	inHand := p.cfg.Concurrency
	if p.turns != nil {
		inHand += p.turns.room
	}
	slots := make(chan struct{}, inHand)
	run := newRunners()
	for ctx.Err() == nil {
		if at := p.chain.NextAvailable(time.Now()); at.After(time.Now()) {
			p.log.Debug().Time("until", at).Msg("no provider available; not pulling")
			// Look again at least every idleRecheck: a peer replica's
			// verdict may reopen a provider before that time.
			sleep(ctx, min(time.Until(at), idleRecheck))
			continue
		}
		free := p.pullSize(slots)
		if free <= 0 {
			select {
			case <-p.release:
			case <-ctx.Done():
			}
			continue
		}
		if want := pullGatherMin(p.cfg.Concurrency); free < want && len(slots) > 0 {
			free = p.gather(ctx, slots, want)
		}
		msgs, batchErr, err := p.b.Fetch(free, fetchWait)
		if err != nil {
			p.log.Warn().Err(err).Msg("pull failed; retrying")
			sleep(ctx, fetchWait)
			continue
		}
		for d := range msgs {
			if ctx.Err() != nil {
				// Pulled as the drain began: give it back, delayed past
				// the end of this pull so it cannot land here again.
				_ = d.NakWithDelay(fetchWait)
				continue
			}
			slots <- struct{}{}
			p.m.inFlight.Inc()
			run.Go(func() {
				defer func() {
					<-slots
					p.m.inFlight.Dec()
					p.freed()
				}()
				p.handle(hard, d)
			})
		}
		if err := batchErr(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			p.log.Warn().Err(err).Msg("pull ended with an error")
			sleep(ctx, fetchWait/4)
		}
	}
	p.log.Info().Msg("stopped pulling; waiting for in-flight requests")
	run.closeAndWait()
	p.log.Info().Msg("drained")
	return nil
}

// pullSize is how many deliveries a pull may ask for now: the free places
// in hand, and with per-conversation order no more than the work slots not
// spoken for (the ones in hand and not parked will want one), and while the
// waiting room is full a few, to find other conversations' heads: more
// would mostly be put back at once.
func (p *Pool) pullSize(slots chan struct{}) int {
	free := cap(slots) - len(slots)
	if t := p.turns; t != nil {
		parked := t.parkedNow()
		free = min(free, p.cfg.Concurrency-(len(slots)-parked), max(t.room-parked, roomFullPull(p.cfg.Concurrency)))
	}
	return free
}

// A busy pool pulls a few deliveries at a time rather than one each time
// a delivery ends: every pull is a request to the server and a
// subscription of its own. With a 1 s provider and 2,000 in flight, pulls
// of one were 2,000 a second. It waits up to pullGather for
// pullGatherMin(concurrency) places to be free; an idle one pulls at once.
const pullGather = 5 * time.Millisecond

func pullGatherMin(concurrency int) int { return max(1, concurrency/16) }

// gather waits, up to pullGather, for want places to pull; it returns how
// many there are then (at least one: the caller had one).
func (p *Pool) gather(ctx context.Context, slots chan struct{}, want int) int {
	t := time.NewTimer(pullGather)
	defer t.Stop()
	free := p.pullSize(slots)
	for free < want {
		select {
		case <-p.release:
			free = max(p.pullSize(slots), free)
		case <-t.C:
			return free
		case <-ctx.Done():
			return free
		}
	}
	return free
}

// roomFullPull is how many deliveries a pull asks for while the waiting
// room is full.
func roomFullPull(concurrency int) int { return max(1, concurrency/8) }

// freed wakes the pull loop: a delivery left, or parked.
func (p *Pool) freed() {
	select {
	case p.release <- struct{}{}:
	default:
	}
}

// graceTimer ends in-flight work (abort) once ShutdownGrace has passed since
// ctx ended; in-flight requests then put themselves back.
func (p *Pool) graceTimer(ctx, hard context.Context, abort context.CancelFunc) {
	select {
	case <-ctx.Done():
	case <-hard.Done():
		return
	}
	p.log.Info().Dur("grace", p.cfg.ShutdownGrace).Msg("draining: finishing in-flight requests")
	t := time.NewTimer(p.cfg.ShutdownGrace)
	defer t.Stop()
	select {
	case <-t.C:
		p.log.Warn().Msg("shutdown grace over: putting back the requests still in flight")
		abort()
	case <-hard.Done():
	}
}

// handlers counts running handlers until closed; then none may start.
type handlers struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func (h *handlers) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.wg.Add(1)
	return true
}

func (h *handlers) done() { h.wg.Done() }

func (h *handlers) closeAndWait() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.wg.Wait()
}

// ackWait is the consumer's ack wait: the server's value once read, this
// process's configuration until then.
func (p *Pool) ackWait() time.Duration {
	if v := p.serverAckWait.Load(); v > 0 {
		return time.Duration(v)
	}
	return p.cfg.AckWait
}

// readConsumer reads the consumer back from the server, in one request:
// its ack wait (keep-alives and budgets follow it) and its backlog (the
// gauges).
func (p *Pool) readConsumer(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := p.b.Consumer(qctx)
	if err != nil {
		return
	}
	if d := st.AckWait; d > 0 {
		if old := time.Duration(p.serverAckWait.Swap(int64(d))); old != d && old != 0 {
			p.log.Info().Dur("ack_wait", d).Dur("was", old).Msg("the consumer's ack_wait changed on the server; keep-alives follow it")
		}
	}
	p.m.backlogPending.Set(float64(st.Pending))
	p.m.backlogAck.Set(float64(st.AckPending))
	p.m.backlogServable.Set(float64(p.servable(st.Pending, st.AckPending, time.Now())))
}

// writeBudget bounds each write on a delivery's way out (reply, dead
// letter, claim), while the keep-alive holds the delivery and its claim: a
// claim's staleness, past which the write would be racing a takeover.
func (p *Pool) writeBudget() time.Duration { return p.claimStale() }

// writeCtx is a write's context: it outlives the shutdown grace (a write
// under way completes) but not the write budget.
func (p *Pool) writeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), p.writeBudget())
}

// write runs fn, a write that is safe to repeat (a publish deduplicated by
// its Nats-Msg-Id, a put), again after a transient failure until it lands or
// the write budget runs out. Each try gets at most an ack wait (5 s at most),
// so a try lost in a leader election is repeated soon. Repeating the same
// message matters: a publish whose acknowledgement was lost may have been
// heard live, and must not be followed by a different answer.
//
// Each try's context is derived straight from ctx (without its cancel) with
// the earlier of its own deadline and the budget's: one timer a try, not
// two; most writes land on the first.
func (p *Pool) write(ctx context.Context, fn func(context.Context) error) error {
	base := context.WithoutCancel(ctx)
	end := time.Now().Add(p.writeBudget())
	try := min(p.ackWait(), 5*time.Second)
	for {
		dl := time.Now().Add(try)
		if dl.After(end) {
			dl = end
		}
		tctx, tcancel := context.WithDeadline(base, dl)
		err := fn(tctx)
		tcancel()
		if err == nil || errors.Is(err, broker.ErrUnstorable) || time.Until(end) <= writeRetryWait {
			return err
		}
		sleep(base, writeRetryWait)
	}
}

// writeRetryWait is the pause between two tries of a write.
const writeRetryWait = 100 * time.Millisecond

// claimStale is how long a claim may go without a refresh, by the server's
// clock, before it is presumed abandoned: three ack waits, nine missed
// refreshes. A worker cut off or stalled that long loses its requests to
// the rest of the pool; one on a link slower than that would share them.
func (p *Pool) claimStale() time.Duration { return 3 * p.ackWait() }

// watchBacklog keeps the backlog gauges and the ack wait current (Run
// read them once before).
func (p *Pool) watchBacklog(ctx context.Context) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p.readConsumer(ctx)
	}
}

// servable is the backlog more workers could serve now: every request
// waiting or put back, while a provider of the chain is available; none
// while every provider is unavailable (open breakers, Retry-After), when
// extra workers would only wait too. An autoscaler scales on this, not on
// the raw backlog, which grows fastest exactly then.
func (p *Pool) servable(pending uint64, ackPending int, now time.Time) uint64 {
	if p.chain.NextAvailable(now).After(now) {
		return 0
	}
	return pending + uint64(max(ackPending, 0))
}

// requeueDelay is how long a request whose chain failed on its n-th
// delivery waits: RequeueMin doubling per delivery, capped at RequeueMax.
func (p *Pool) requeueDelay(n uint64) time.Duration {
	d := p.cfg.RequeueMin
	for i := uint64(1); i < n && d < p.cfg.RequeueMax; i++ {
		d *= 2
	}
	return min(d, p.cfg.RequeueMax)
}
