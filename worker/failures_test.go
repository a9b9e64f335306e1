package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

func TestAllProvidersDownQueuesInsteadOfFailing(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek", "llama")
	for _, s := range f.sims {
		s.SetMode(sim.ModeError)
	}
	s := keepCalling()
	startPool(t, b, f, s)
	for i := range 3 {
		publish(t, b, "c-1", request(fmt.Sprintf("r-%d", i)), "")
	}
	poll.Until(t, 10*time.Second, "requests retried at least 3 times", func() bool {
		return len(events(t, b, chat.EventRetry)) >= 9
	})
	if n := len(replies(t, b)); n != 0 {
		t.Fatalf("%d replies while every provider was down, want 0 (requests wait)", n)
	}
	if n := len(stored(t, b, chat.KindDead, subj.AllDead())); n != 0 {
		t.Fatalf("%d dead letters while requests still had time", n)
	}
	for _, ev := range events(t, b, chat.EventRetry) {
		if ev.DelayMS < 100 || ev.DelayMS > 400 {
			t.Errorf("retry delay %dms outside [requeue_min, requeue_max]", ev.DelayMS)
		}
	}
	f.sim("llama").SetMode(sim.ModeOK)
	got := waitReplies(t, b, 3)
	for id, r := range got {
		if r.Status != chat.StatusOK || r.Provider != "llama" || r.Deliveries < 2 {
			t.Errorf("%s: status %s provider %s deliveries %d, want ok from llama after redeliveries", id, r.Status, r.Provider, r.Deliveries)
		}
		// The reply tells why it waited: the attempts of the last
		// AttemptDeliveries deliveries, each numbered, ending in the ok.
		first := uint64(1)
		if r.Deliveries > AttemptDeliveries {
			first = r.Deliveries - AttemptDeliveries + 1
		}
		n := len(r.Attempts)
		if n != 2*int(r.Deliveries-first+1) || r.Attempts[0].Delivery != first || r.Attempts[n-1].Delivery != r.Deliveries ||
			r.Attempts[n-1].Outcome != chat.OutcomeOK {
			t.Errorf("%s answered on delivery %d with attempts %+v, want two per delivery from %d", id, r.Deliveries, r.Attempts, first)
		}
	}
}

func TestRequeueDelayGrowsAndIsCapped(t *testing.T) {
	p := &Pool{cfg: Config{RequeueMin: time.Second, RequeueMax: 10 * time.Second}}
	for n, want := range map[uint64]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 60: 10 * time.Second} {
		if got := p.requeueDelay(n); got != want {
			t.Errorf("delivery %d: %s, want %s", n, got, want)
		}
	}
}

func TestStopsPullingWhileEveryBreakerIsOpen(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek", "llama")
	for _, s := range f.sims {
		s.SetMode(sim.ModeError)
	}
	s := defaultSetup()
	s.breaker = breaker.Config{ConsecutiveFailures: 1, OpenFor: 3 * time.Second}
	r := startPool(t, b, f, s)
	publish(t, b, "c-1", request("trip"), "")
	poll.Until(t, 5*time.Second, "both breakers open", func() bool {
		return r.chain.Links()[0].Breaker.State() == breaker.Open && r.chain.Links()[1].Breaker.State() == breaker.Open
	})
	hits := f.sim("deepseek").Hits() + f.sim("llama").Hits()
	// The pull in progress when the breakers opened runs out; no new one
	// is made while both are open.
	waiting := func() int {
		c, err := b.JetStream().Consumer(context.Background(), subj.Stream(chat.KindRequests), chat.ConsumerWorkers)
		if err != nil {
			t.Fatal(err)
		}
		return c.CachedInfo().NumWaiting
	}
	poll.Until(t, 5*time.Second, "no pull request outstanding", func() bool { return waiting() == 0 })
	for i := range 5 {
		publish(t, b, "c-2", request(fmt.Sprintf("wait-%d", i)), "")
	}
	// The consumer's pending count follows the stream asynchronously; had
	// any of the 5 been delivered, it would never reach 5.
	poll.Until(t, 5*time.Second, "5 requests pending", func() bool {
		pending, _, err := b.Backlog(context.Background())
		return err == nil && pending == 5
	})
	if n := waiting(); n != 0 {
		t.Fatalf("%d pulls waiting with every breaker open; want 0", n)
	}
	if r.chain.Links()[0].Breaker.State() != breaker.Open {
		t.Fatal("breaker half-opened before the check: the test's open_for is too short for this machine")
	}
	for _, s := range f.sims {
		s.SetMode(sim.ModeOK)
	}
	got := waitReplies(t, b, 6)
	for i := range 5 {
		// The first delivery came after the breakers half-opened; requests
		// that found both probes taken were put back once.
		if r := got[fmt.Sprintf("wait-%d", i)]; r.Status != chat.StatusOK || r.Deliveries > 2 {
			t.Errorf("wait-%d: %s after %d deliveries; want ok within 2", i, r.Status, r.Deliveries)
		}
	}
	if extra := f.sim("deepseek").Hits() + f.sim("llama").Hits() - hits; extra > 6+2 {
		t.Errorf("%d provider calls for 6 requests after recovery", extra)
	}
}

func TestDeadlineExceededDeadLetters(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek")
	f.sim("deepseek").SetMode(sim.ModeError)
	s := keepCalling()
	startPool(t, b, f, s)

	req := request("late")
	req.Deadline = time.Now().Add(700 * time.Millisecond)
	req.Metadata = json.RawMessage(`{"user":"u-7"}`)
	publish(t, b, "c-9", req, "late")
	past := request("already-late")
	past.Deadline = time.Now().Add(-time.Second)
	publish(t, b, "c-9", past, "")

	got := waitReplies(t, b, 2)
	for _, id := range []string{"late", "already-late"} {
		r := got[id]
		if r.Status != chat.StatusFailed || r.Error == nil || r.Error.Code != chat.CodeDeadlineExceeded {
			t.Errorf("%s: %+v, want failed deadline_exceeded", id, r.Reply)
		}
	}
	if string(got["late"].Metadata) != `{"user":"u-7"}` {
		t.Errorf("metadata %s not echoed on the failed reply", got["late"].Metadata)
	}
	if got["late"].Deliveries < 2 {
		t.Errorf("late was delivered %d times; it should have been requeued before its deadline", got["late"].Deliveries)
	}
	if h := f.sim("deepseek").HitsIn(sim.ModeError); h == 0 {
		t.Error("the provider was never tried before the deadline")
	}
	dead := stored(t, b, chat.KindDead, subj.AllDead())
	if len(dead) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dead))
	}
	for _, d := range dead {
		if d.Subject != subj.Dead("c-9") || d.Header.Get(chat.HeaderCode) != chat.CodeDeadlineExceeded ||
			d.Header.Get(chat.HeaderReason) == "" || d.Header.Get(chat.HeaderStreamSeq) == "" || d.Header.Get(chat.HeaderDeliveries) == "" {
			t.Errorf("dead letter %s headers %v", d.Subject, d.Header)
		}
		var orig chat.Request
		if err := json.Unmarshal(d.Data, &orig); err != nil || orig.ID != d.Header.Get(chat.HeaderRequestID) {
			t.Errorf("dead letter body %q is not the original request (id header %q)", d.Data, d.Header.Get(chat.HeaderRequestID))
		}
	}
	if n := len(events(t, b, chat.EventDead)); n != 2 {
		t.Errorf("%d dead events, want 2", n)
	}
}

func TestMaxDeliveriesExhaustsProviders(t *testing.T) {
	b := newBroker(t, broker.Topology{MaxDeliveries: 3})
	f := newFleet(t, "deepseek", "llama")
	for _, s := range f.sims {
		s.SetMode(sim.ModeError)
	}
	s := keepCalling()
	s.cfg.MaxDeliveries = 3
	startPool(t, b, f, s)
	publish(t, b, "c-1", request("doomed"), "")
	got := waitReplies(t, b, 1)
	r := got["doomed"]
	if r.Status != chat.StatusFailed || r.Error.Code != chat.CodeProvidersExhausted || r.Deliveries != 3 {
		t.Fatalf("%+v, want failed providers_exhausted after 3 deliveries", r.Reply)
	}
	// Every delivery's attempts, each with its delivery number.
	if len(r.Attempts) != 6 {
		t.Fatalf("attempts %+v, want the three ladders' six 503s", r.Attempts)
	}
	for i, a := range r.Attempts {
		if a.Outcome != chat.OutcomeError || a.StatusCode != 503 || a.Delivery != uint64(i/2+1) || a.Provider != []string{"deepseek", "llama"}[i%2] {
			t.Errorf("attempt %d: %+v, want %s 503 on delivery %d", i, a, []string{"deepseek", "llama"}[i%2], i/2+1)
		}
	}
	if h := f.sim("deepseek").Hits(); h != 3 {
		t.Errorf("deepseek called %d times, want once per delivery (3)", h)
	}
	if d := stored(t, b, chat.KindDead, subj.AllDead()); len(d) != 1 || d[0].Header.Get(chat.HeaderCode) != chat.CodeProvidersExhausted {
		t.Errorf("dead letters %v", d)
	}
}

func TestEveryProviderRejectingFailsAtOnce(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek", "llama")
	for _, s := range f.sims {
		s.SetMode(sim.ModeReject)
	}
	r := startPool(t, b, f, defaultSetup())
	publish(t, b, "c-1", request("refused"), "")
	rep := replyTo(t, waitReplies(t, b, 1), "refused")
	if rep.Status != chat.StatusFailed || rep.Error.Code != chat.CodeInvalidRequest || rep.Deliveries != 1 {
		t.Fatalf("%+v, want failed invalid_request on the first delivery: no provider will take it", rep.Reply)
	}
	if n := len(events(t, b, chat.EventRetry)); n != 0 {
		t.Errorf("%d retries of a request every provider rejects", n)
	}
	if st := r.chain.Links()[0].Breaker.State(); st != breaker.Closed {
		t.Errorf("rejections moved the breaker to %s", st)
	}
	if d := stored(t, b, chat.KindDead, subj.AllDead()); len(d) != 1 || d[0].Header.Get(chat.HeaderCode) != chat.CodeInvalidRequest {
		t.Errorf("dead letters %v", d)
	}
}

func TestRejectedWhileAnotherProviderIsOpenWaits(t *testing.T) {
	// The primary refuses the request, but the fallback, which might take
	// it, is open: that is an outage to wait out, not an invalid request.
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek", "llama")
	f.sim("deepseek").SetMode(sim.ModeReject)
	r := startPool(t, b, f, defaultSetup())
	r.chain.Links()[1].Breaker.ForceOpen(time.Now().Add(time.Hour))
	publish(t, b, "c-1", request("wait-for-llama"), "")
	poll.Until(t, 10*time.Second, "a queued retry", func() bool { return len(events(t, b, chat.EventRetry)) >= 1 })
	if n := len(replies(t, b)); n != 0 {
		t.Fatalf("%d replies; want the request waiting for the open fallback", n)
	}
}

func TestRateLimitSkipsProviderUntilRetryAfter(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek", "llama")
	f.sim("deepseek").SetMode(sim.ModeRateLimit) // Retry-After: 1
	s := defaultSetup()
	s.breaker.ConsecutiveFailures = 1
	r := startPool(t, b, f, s)

	publish(t, b, "c-1", request("r-0"), "")
	waitReplies(t, b, 1)
	for i := 1; i < 5; i++ {
		publish(t, b, "c-1", request(fmt.Sprintf("r-%d", i)), "")
	}
	got := waitReplies(t, b, 5)
	if a := got["r-0"].Attempts; a[0].Outcome != chat.OutcomeRateLimited || a[0].StatusCode != 429 || got["r-0"].Provider != "llama" {
		t.Fatalf("r-0 attempts %+v, want 429 then llama", a)
	}
	if r.chain.Links()[0].Breaker.State() != breaker.Closed {
		t.Fatal("a 429 tripped the breaker")
	}
	// Within the Retry-After second the others skip deepseek entirely.
	if h := f.sim("deepseek").Hits(); h != 1 {
		t.Errorf("deepseek called %d times within its Retry-After, want 1", h)
	}
	f.sim("deepseek").SetMode(sim.ModeOK)
	poll.Until(t, 5*time.Second, "deepseek back in the chain after Retry-After", func() bool {
		return r.chain.NextAvailable(time.Now()).IsZero() || !r.chain.Links()[0].cooling(time.Now())
	})
	publish(t, b, "c-1", request("after"), "")
	if rep := waitReplies(t, b, 6)["after"]; rep.Provider != "deepseek" || rep.Degraded {
		t.Errorf("after Retry-After served by %s, want deepseek", rep.Provider)
	}
}

func TestOneReplyPerRequestID(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek")
	startPool(t, b, f, defaultSetup())

	// Same id three times: twice without Nats-Msg-Id (two stream messages),
	// once with it (deduplicated by the stream itself).
	publish(t, b, "c-1", request("dup"), "")
	waitReplies(t, b, 1)
	publish(t, b, "c-1", request("dup"), "")
	publish(t, b, "c-1", request("dup"), "dup")
	publish(t, b, "c-1", request("marker"), "")
	waitReplies(t, b, 2)
	poll.Until(t, 5*time.Second, "every delivery handled", func() bool {
		pending, ack, err := b.Backlog(context.Background())
		return err == nil && pending == 0 && ack == 0
	})
	got := waitReplies(t, b, 2)
	if got["dup"].Status != chat.StatusOK {
		t.Fatalf("dup: %+v", got["dup"].Reply)
	}
	if h := f.sim("deepseek").Hits(); h != 2 {
		t.Errorf("provider called %d times for 2 distinct ids, want 2", h)
	}
}

// dyingBroker stores replies, but their acknowledgement never comes back
// (the worker's link died at that instant): the publish fails once its
// budget runs out, before the claim is recorded and the delivery acked.
type dyingBroker struct {
	Broker
	replied atomic.Int32
	release chan struct{}
}

func (d *dyingBroker) PublishReply(ctx context.Context, conv, msgID string, r *chat.Reply) (bool, error) {
	dup, err := d.Broker.PublishReply(ctx, conv, msgID, r)
	d.replied.Add(1)
	select {
	case <-d.release:
		return dup, err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

func TestRedeliveryAfterReplyBeforeAckCallsNoProvider(t *testing.T) {
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	f := newFleet(t, "deepseek")
	s := defaultSetup()
	s.cfg.AckWait = time.Second
	dying := &dyingBroker{Broker: b, release: make(chan struct{})}
	defer close(dying.release)
	first := startPool(t, dying, f, s)
	publish(t, b, "c-1", request("once"), "")
	poll.Until(t, 5*time.Second, "the first worker to publish its reply", func() bool { return dying.replied.Load() == 1 })

	// A healthy worker gets the redelivery once ack_wait has passed.
	startPool(t, b, f, s)
	poll.Until(t, 10*time.Second, "the redelivery to be acked", func() bool {
		_, ack, err := b.Backlog(context.Background())
		return err == nil && ack == 0
	})
	if got := waitReplies(t, b, 1); got["once"].Provider != "deepseek" {
		t.Fatalf("reply %+v", got["once"].Reply)
	}
	if h := f.sim("deepseek").Hits(); h != 1 {
		t.Errorf("provider called %d times, want 1: the redelivered request was already answered", h)
	}
	_ = first
}

func TestBadInputIsAnsweredAndDeadLettered(t *testing.T) {
	long := strings.Repeat("x", 129)
	tests := []struct {
		name    string
		conv    string
		body    string
		replyID string // "" with a valid conv: reply carries id ""
		replied bool
	}{
		{"not json", "c-1", `{"id": "a", `, "", true},
		{"missing id", "c-1", `{"messages":[{"role":"user","content":"hi"}]}`, "", true},
		{"empty messages", "c-1", `{"id":"em","messages":[]}`, "em", true},
		{"messages not a list", "c-1", `{"id":"ml","messages":"hi"}`, "ml", true},
		{"unknown role", "c-1", `{"id":"ro","messages":[{"role":"tool","content":"hi"}]}`, "ro", true},
		{"mismatched conversation", "c-1", `{"id":"mm","conversation_id":"c-2","messages":[{"role":"user","content":"hi"}]}`, "mm", true},
		{"conversation id too long", long, `{"id":"tl","messages":[{"role":"user","content":"hi"}]}`, "", false},
		{"oversized payload", "c-1", `{"id":"big","messages":[{"role":"user","content":"` + strings.Repeat("a", 2000) + `"}]}`, "big", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBroker(t, broker.Topology{})
			f := newFleet(t, "deepseek")
			s := defaultSetup()
			s.cfg.MaxRequestBytes = 1024
			startPool(t, b, f, s)
			publish(t, b, tt.conv, tt.body, "")
			poll.Until(t, 10*time.Second, "dead letter", func() bool { return len(stored(t, b, chat.KindDead, subj.AllDead())) == 1 })
			dead := stored(t, b, chat.KindDead, subj.AllDead())[0]
			wantDead := subj.Dead(tt.conv)
			if !tt.replied {
				wantDead = subj.Dead(chat.InvalidToken)
			}
			if dead.Subject != wantDead || string(dead.Data) != tt.body || dead.Header.Get(chat.HeaderCode) != chat.CodeInvalidRequest {
				t.Errorf("dead letter on %s code %q body %q", dead.Subject, dead.Header.Get(chat.HeaderCode), dead.Data)
			}
			if tt.replied {
				got := waitReplies(t, b, 1)
				var r storedReply
				for _, v := range got {
					r = v
				}
				if r.Status != chat.StatusFailed || r.Error.Code != chat.CodeInvalidRequest || r.ID != tt.replyID || r.Subject != subj.Reply(tt.conv) {
					t.Errorf("reply %+v on %s, want failed invalid_request with id %q", r.Reply, r.Subject, tt.replyID)
				}
				if tt.replyID == "" && r.MsgID != "invalid-1" {
					t.Errorf("Nats-Msg-Id %q, want invalid-1", r.MsgID)
				}
			} else {
				poll.Until(t, 5*time.Second, "terminated", func() bool {
					_, ack, err := b.Backlog(context.Background())
					return err == nil && ack == 0
				})
				if n := len(replies(t, b)); n != 0 {
					t.Errorf("%d replies for an invalid conversation id, want none", n)
				}
			}
			if h := f.sim("deepseek").Hits(); h != 0 {
				t.Errorf("provider called %d times for bad input", h)
			}
		})
	}
}

// idleBroker never pulls: the pool only listens to advisories.
type idleBroker struct{ Broker }

func (idleBroker) Fetch(int, time.Duration) (<-chan *broker.Delivery, func() error, error) {
	time.Sleep(50 * time.Millisecond)
	ch := make(chan *broker.Delivery)
	close(ch)
	return ch, func() error { return nil }, nil
}

func TestDeliveriesRunOutWithoutAnAnswer(t *testing.T) {
	// Every delivery is lost (its worker dies before answering) until the
	// consumer's MaxDeliver is spent; the MAX_DELIVERIES advisory then makes
	// a live worker answer failed and dead-letter the request.
	b := newBroker(t, broker.Topology{AckWait: time.Second, MaxDeliveries: 1})
	f := newFleet(t, "deepseek")
	s := defaultSetup()
	s.cfg.MaxDeliveries = 1
	startPool(t, idleBroker{b}, f, s)
	publish(t, b, "c-7", request("lost"), "")

	cons, err := b.JetStream().Consumer(context.Background(), subj.Stream(chat.KindRequests), chat.ConsumerWorkers)
	if err != nil {
		t.Fatal(err)
	}
	maxDeliver := cons.CachedInfo().Config.MaxDeliver
	for n := 1; n <= maxDeliver; n++ {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for range batch.Messages() {
			got++ // never acked: the "worker" died
		}
		if got != 1 {
			t.Fatalf("delivery %d of %d did not come", n, maxDeliver)
		}
	}
	// The server notices the spent budget when it next looks for a message
	// for a waiting pull (in production, any live worker's).
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range batch.Messages() {
		t.Fatal("a request whose deliveries ran out was delivered again")
	}
	r := waitReplies(t, b, 1)["lost"]
	if r.Status != chat.StatusFailed || r.Error.Code != chat.CodeProvidersExhausted || r.Deliveries != uint64(maxDeliver) {
		t.Fatalf("reply %+v, want failed providers_exhausted after %d deliveries", r.Reply, maxDeliver)
	}
	dead := stored(t, b, chat.KindDead, subj.AllDead())
	if len(dead) != 1 || dead[0].Subject != subj.Dead("c-7") || dead[0].Header.Get(chat.HeaderCode) != chat.CodeProvidersExhausted {
		t.Fatalf("dead letters %+v", dead)
	}
	if h := f.sim("deepseek").Hits(); h != 0 {
		t.Errorf("provider called %d times by the advisory handler", h)
	}
}

func TestStatusShowsWorkingThenQueued(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek")
	f.sim("deepseek").SetMode(sim.ModeError)
	s := keepCalling()
	sub, err := b.Conn().SubscribeSync(subj.Status("c-5"))
	if err != nil {
		t.Fatal(err)
	}
	startPool(t, b, f, s)
	publish(t, b, "c-5", request("typing"), "")
	var states []string
	for len(states) < 2 {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("status after %v: %v", states, err)
		}
		var st struct{ ID, State string }
		if err := json.Unmarshal(m.Data, &st); err != nil || st.ID != "typing" {
			t.Fatalf("status %s: %v", m.Data, err)
		}
		states = append(states, st.State)
	}
	if states[0] != "working" || states[1] != "queued" {
		t.Errorf("states %v, want working then queued", states)
	}
	if name, err := b.JetStream().StreamNameBySubject(context.Background(), subj.Status("c-5")); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("stream %q (%v) captures the status subject; status is live only", name, err)
	}
}

// flakyBroker fails the first call of each publishing step, as a NATS blip
// would, then behaves.
type flakyBroker struct {
	Broker
	claimFailed, replyFailed, deadFailed atomic.Bool
}

var errBlip = errors.New("simulated NATS blip")

func (f *flakyBroker) Claim(ctx context.Context, id string, seq uint64, worker string, stale time.Duration) (*broker.Claim, broker.ClaimResult, error) {
	if f.claimFailed.CompareAndSwap(false, true) {
		return nil, 0, errBlip
	}
	return f.Broker.Claim(ctx, id, seq, worker, stale)
}

func (f *flakyBroker) PublishReply(ctx context.Context, conv, msgID string, r *chat.Reply) (bool, error) {
	if f.replyFailed.CompareAndSwap(false, true) {
		return false, errBlip
	}
	return f.Broker.PublishReply(ctx, conv, msgID, r)
}

func (f *flakyBroker) PublishDead(ctx context.Context, data []byte, d broker.DeadLetter) error {
	if f.deadFailed.CompareAndSwap(false, true) {
		return errBlip
	}
	return f.Broker.PublishDead(ctx, data, d)
}

func TestPublishFailuresPutTheRequestBack(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek")
	flaky := &flakyBroker{Broker: b}
	startPool(t, flaky, f, defaultSetup())
	publish(t, b, "c-1", request("blip"), "")
	publish(t, b, "c-1", `{"id":"bad","messages":[]}`, "")
	got := waitReplies(t, b, 2)
	if r := got["blip"]; r.Status != chat.StatusOK || r.Deliveries < 2 {
		t.Errorf("blip: %s after %d deliveries; want ok after a put-back", r.Status, r.Deliveries)
	}
	if r := replyTo(t, got, "bad"); r.Status != chat.StatusFailed || r.Error.Code != chat.CodeInvalidRequest {
		t.Errorf("bad: %+v", r.Reply)
	}
	if !flaky.claimFailed.Load() || !flaky.replyFailed.Load() || !flaky.deadFailed.Load() {
		t.Fatal("a failure was not injected")
	}
	poll.Until(t, 5*time.Second, "every delivery handled", func() bool {
		_, ack, err := b.Backlog(context.Background())
		return err == nil && ack == 0
	})
	if d := stored(t, b, chat.KindDead, subj.AllDead()); len(d) != 1 {
		t.Errorf("%d dead letters, want 1", len(d))
	}
	// The claim failure and the lost reply each cost a put-back, not a
	// second reply: the stream holds one per id (waitReplies checks), and
	// the provider was called at most once per delivery that got that far.
	if h := f.sim("deepseek").Hits(); h < 1 || h > 2 {
		t.Errorf("provider called %d times", h)
	}
}

// The backlog an autoscaler scales on is what more workers could serve now:
// nothing while every provider is unavailable.
func TestServableBacklog(t *testing.T) {
	f := newFleet(t, "deepseek", "llama")
	s := defaultSetup()
	chain := NewChain(testLinks(f, s), s.retry)
	p := &Pool{chain: chain}
	now := time.Now()
	if got := p.servable(40, 24, now); got != 64 {
		t.Errorf("servable with providers available = %d, want 64", got)
	}
	chain.Links()[0].Breaker.ForceOpen(now.Add(time.Hour))
	if got := p.servable(40, 24, now); got != 64 {
		t.Errorf("servable with one provider left = %d, want 64", got)
	}
	chain.Links()[1].Breaker.ForceOpen(now.Add(time.Hour))
	if got := p.servable(40, 24, time.Now()); got != 0 {
		t.Errorf("servable while every provider is open = %d, want 0", got)
	}
}
