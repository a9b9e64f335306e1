package worker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// storedWrites counts every message ever stored in the requests, replies,
// dead letters and claims (the last sequence: deletions and the claims
// bucket's one-entry history do not hide a write).
func storedWrites(t *testing.T, b *broker.Broker) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	names := map[string]string{
		"requests": subj.Stream(chat.KindRequests), "replies": subj.Stream(chat.KindReplies),
		"dead":   subj.Stream(chat.KindDead),
		"claims": "KV_" + subj.Stream(chat.KindClaims),
	}
	for kind, name := range names {
		st, err := b.JetStream().Stream(context.Background(), name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info, err := st.Info(context.Background())
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		out[kind] = info.State.LastSeq
	}
	return out
}

// TestStoredWritesPerRequest counts what a request costs the server: on the
// happy path the request, its claim and its reply, nothing more (the
// answering attempt is in the reply; a later message with the id finds the
// reply); a fallback adds the failed call's event; a skip of a provider whose
// breaker is open is in the reply too.
func TestStoredWritesPerRequest(t *testing.T) {
	const n = 12
	tests := []struct {
		name    string
		primary sim.Mode
		open    bool // the primary's breaker is open: every request skips it
		want    map[string]uint64
	}{
		{"happy path", sim.ModeOK, false, map[string]uint64{"requests": n, "claims": n, "replies": n, "events": 0, "dead": 0}},
		{"fallback", sim.ModeError, false, map[string]uint64{"requests": n, "claims": n, "replies": n, "events": n, "dead": 0}},
		// The skip called nobody: it is in the reply, like the answer.
		{"primary open", sim.ModeOK, true, map[string]uint64{"requests": n, "claims": n, "replies": n, "events": 0, "dead": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBroker(t, broker.Topology{})
			f := newFleet(t, "deepseek", "llama")
			f.sim("deepseek").SetMode(tt.primary)
			r := startPool(t, b, f, keepCalling())
			if tt.open {
				r.chain.Links()[0].Breaker.ForceOpen(time.Now().Add(time.Hour))
			}
			for i := range n {
				publish(t, b, fmt.Sprintf("c-%d", i%3), request(fmt.Sprintf("w-%d", i)), "")
			}
			waitReplies(t, b, n)
			got := storedWrites(t, b)
			// Attempt events only (forcing the breaker open records a
			// transition).
			got["events"] = uint64(len(events(t, b, chat.EventAttempt)))
			for kind, want := range tt.want {
				if got[kind] != want {
					t.Errorf("%s: %d stored writes for %d requests, want %d", kind, got[kind], n, want)
				}
			}
		})
	}
}

// TestHeldAttemptEventsWithoutAnOkReply: the events an ok reply would carry
// (the answer, skips) are written when no ok reply of the delivery is
// stored, so every attempt stays on record.
func TestHeldAttemptEventsWithoutAnOkReply(t *testing.T) {
	t.Run("an answer that cannot be stored", func(t *testing.T) {
		b := newBroker(t, broker.Topology{})
		big, _ := bigAnswer(t, 1_100_000)
		s := keepCalling()
		runPool(t, b, NewChain([]*Link{{Provider: big, Timeout: 5 * time.Second, Breaker: newTestBreaker(big.Name(), s)}}, s.retry), s)
		publish(t, b, "c-1", request("huge"), "")
		if r := waitReplies(t, b, 1)["huge"]; r.Status != chat.StatusFailed {
			t.Fatalf("reply %+v, want failed", r.Reply)
		}
		poll.Until(t, 5*time.Second, "the answering attempt's event", func() bool {
			evs := events(t, b, chat.EventAttempt)
			return len(evs) == 1 && evs[0].Outcome == chat.OutcomeOK && evs[0].RequestID == "huge"
		})
	})
	t.Run("a skip before a ladder that failed", func(t *testing.T) {
		b := newBroker(t, broker.Topology{})
		f := newFleet(t, "deepseek", "llama")
		f.sim("llama").SetMode(sim.ModeError)
		r := startPool(t, b, f, keepCalling())
		r.chain.Links()[0].Breaker.ForceOpen(time.Now().Add(time.Hour))
		publish(t, b, "c-1", request("waits"), "")
		poll.Until(t, 5*time.Second, "the skip's and the failed call's events", func() bool {
			var skip, failed bool
			for _, ev := range events(t, b, chat.EventAttempt) {
				skip = skip || ev.Provider == "deepseek" && ev.Outcome == chat.OutcomeBreakerOpen && ev.Delivery == 1
				failed = failed || ev.Provider == "llama" && ev.Outcome == chat.OutcomeError && ev.Delivery == 1
			}
			return skip && failed
		})
	})
}

// cutAfterReply is a worker's link that dies the moment its reply is
// stored: the reply landed, nothing after it (the ack, a claim write)
// reaches the server — what a worker killed between its reply and its ack
// leaves behind.
type cutAfterReply struct {
	Broker
	proxy  interface{ Cut() }
	refuse func(bool)
}

func (c *cutAfterReply) PublishReply(ctx context.Context, conv, msgID string, r *chat.Reply) (bool, error) {
	dup, err := c.Broker.PublishReply(ctx, conv, msgID, r)
	if err == nil {
		c.refuse(true)
		c.proxy.Cut()
	}
	return dup, err
}

// TestWorkerLostAfterItsReplyCallsNoProvider: an answer lets its claim
// lapse (no "answered" write), so the redelivery of a request whose worker
// was lost between its reply and its ack finds the claim still held and
// the reply stored: acked without a second call or a second reply.
func TestWorkerLostAfterItsReplyCallsNoProvider(t *testing.T) {
	const ackWait = time.Second
	topo := broker.Topology{AckWait: ackWait}
	srv := listeningBroker(t, topo)
	proxy := proxyTo(t, srv)
	viaProxy := joinBroker(t, proxy.URL(), topo, nil)
	heard := listen(t, srv)
	f := newFleet(t, "deepseek")
	s := defaultSetup()
	s.cfg.AckWait = ackWait
	s.id = "lost"
	startPool(t, &cutAfterReply{Broker: viaProxy, proxy: proxy, refuse: proxy.Refuse}, f, s)
	publish(t, srv, "c-1", request("once"), "")
	poll.Until(t, 10*time.Second, "the reply stored", func() bool { return len(replies(t, srv)) == 1 })
	s.id = "survivor"
	startPool(t, srv, f, s)
	settled(t, srv, 20*time.Second)
	if h := f.sim("deepseek").Hits(); h != 1 {
		t.Errorf("provider called %d times, want 1", h)
	}
	r := waitReplies(t, srv, 1)["once"]
	sameAnswer(t, heard, r)
}

// blindReplies cannot look for replies while blind is set.
type blindReplies struct {
	Broker
	blind atomic.Bool
	looks atomic.Int32
}

func (b *blindReplies) FindReply(ctx context.Context, conv, id string, since time.Time) (bool, error) {
	b.looks.Add(1)
	if b.blind.Load() {
		return false, errors.New("replies stream unreachable")
	}
	return b.Broker.FindReply(ctx, conv, id, since)
}

// TestHeldIDWhoseReplyCannotBeReadWaits: a message whose id is held (its
// answer's claim lapsed) and whose reply cannot be looked for is put back,
// never sent to a provider; once the reply can be read it is acked.
func TestHeldIDWhoseReplyCannotBeReadWaits(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek")
	blind := &blindReplies{Broker: b}
	startPool(t, blind, f, defaultSetup())
	publish(t, b, "c-1", request("dup"), "")
	waitReplies(t, b, 1)
	blind.blind.Store(true)
	publish(t, b, "c-1", request("dup"), "") // the same id, another message
	poll.Until(t, 5*time.Second, "two looks for the reply, both failed", func() bool { return blind.looks.Load() >= 2 })
	if _, ack, err := b.Backlog(context.Background()); err != nil || ack != 1 {
		t.Errorf("ack pending %d (%v), want the second message held back", ack, err)
	}
	blind.blind.Store(false)
	settled(t, b, 10*time.Second)
	if h := f.sim("deepseek").Hits(); h != 1 {
		t.Errorf("provider called %d times, want 1", h)
	}
	if n := len(replies(t, b)); n != 1 {
		t.Errorf("%d replies stored, want 1", n)
	}
}
