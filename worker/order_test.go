package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// orderedSetup is a replica keeping conversation order, with ack wait 1 s
// so that a dead replica's requests come back within seconds.
func orderedSetup(id string) setup {
	s := defaultSetup()
	s.cfg.Ordering = OrderingConversation
	s.cfg.AckWait = time.Second
	s.breaker.ConsecutiveFailures = 3
	s.breaker.OpenFor = 300 * time.Millisecond
	s.id = id
	return s
}

// turnRequest is request k of conversation conv; its only message is its
// id, so the provider's recorded bodies say which request was sent.
func turnRequest(conv string, k int) chat.Request {
	id := fmt.Sprintf("%s#%d", conv, k)
	return chat.Request{ID: id, Messages: []chat.Message{{Role: chat.RoleUser, Content: id}}}
}

// heardInOrder records, per conversation, the ids of the replies heard
// live, in the order heard.
type heardInOrder struct {
	mu     sync.Mutex
	byConv map[string][]string
}

func listenInOrder(t *testing.T, b *broker.Broker) *heardInOrder {
	t.Helper()
	h := &heardInOrder{byConv: map[string][]string{}}
	sub, err := b.Conn().Subscribe(subj.AllReplies(), func(m *nats.Msg) {
		var r chat.Reply
		_ = json.Unmarshal(m.Data, &r)
		h.mu.Lock()
		h.byConv[r.ConversationID] = append(h.byConv[r.ConversationID], r.ID)
		h.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return h
}

func (h *heardInOrder) ids(conv string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.byConv[conv])
}

// turnOf is k of an id conv#k.
func turnOf(t *testing.T, id string) int {
	t.Helper()
	k, err := strconv.Atoi(id[strings.LastIndexByte(id, '#')+1:])
	if err != nil {
		t.Fatalf("id %q: %v", id, err)
	}
	return k
}

// Issue 11: three replicas, bursts of five requests in each of 50
// conversations, an outage of the only provider in the middle (requests
// queued) and a replica cut off mid-burst: every conversation's requests
// are sent to the provider one at a time in publish order, and their
// replies stored and heard in publish order, exactly once.
func TestConversationOrderAcrossReplicas(t *testing.T) {
	const convs, burst = 50, 5
	topo := broker.Topology{AckWait: time.Second}
	srv := listeningBroker(t, topo)
	proxy := proxyTo(t, srv)
	doomed := joinBroker(t, proxy.URL(), topo, nil)
	heard := listenInOrder(t, srv)
	f := newFleet(t, "deepseek")
	deepseek := f.sim("deepseek")
	deepseek.Record(100000)
	deepseek.SetLatency(10 * time.Millisecond)

	startPool(t, srv, f, orderedSetup("replica-1"))
	startPool(t, srv, f, orderedSetup("replica-2"))
	startPool(t, doomed, f, orderedSetup("replica-3"))

	conv := func(c int) string { return fmt.Sprintf("c-%02d", c) }
	publishBursts := func(from, to int) {
		for c := from; c < to; c++ {
			for k := range burst {
				publish(t, srv, conv(c), turnRequest(conv(c), k), "")
			}
		}
	}
	publishBursts(0, convs/2)
	poll.Until(t, 15*time.Second, "20 replies", func() bool { return len(replies(t, srv)) >= 20 })
	poll.Until(t, 10*time.Second, "replica-3 at work", func() bool {
		return claimedBy(t, srv, "replica-3")
	})
	// Mid-burst: the provider goes down and replica-3 is cut off for good
	// (what a crash looks like to the rest of the pool).
	deepseek.SetMode(sim.ModeError)
	publishBursts(convs/2, convs)
	proxy.Refuse(true)
	proxy.Cut()
	poll.Until(t, 15*time.Second, "requests queued during the outage", func() bool {
		return len(events(t, srv, chat.EventRetry)) >= 10
	})
	deepseek.SetMode(sim.ModeOK)

	got := waitReplies(t, srv, convs*burst)
	for id, r := range got {
		if r.Status != chat.StatusOK {
			t.Errorf("%s: status %s (%+v), want ok", id, r.Status, r.Error)
		}
	}
	// Stored in publish order, per conversation.
	storedOrder := map[string][]string{}
	for _, r := range replies(t, srv) {
		storedOrder[r.ConversationID] = append(storedOrder[r.ConversationID], r.ID)
	}
	// Sent to the provider in publish order: a request is sent again only
	// while it is its conversation's head (a retry, or a takeover of a
	// cut-off replica's), never after a later one.
	sent := map[string][]int{}
	for _, b := range deepseek.Received() {
		id := b.Messages[len(b.Messages)-1].Content
		c := id[:strings.LastIndexByte(id, '#')]
		sent[c] = append(sent[c], turnOf(t, id))
	}
	for c := range convs {
		want := make([]string, burst)
		for k := range burst {
			want[k] = turnRequest(conv(c), k).ID
		}
		if got := storedOrder[conv(c)]; !slices.Equal(got, want) {
			t.Errorf("%s: replies stored in the order %v, want %v", conv(c), got, want)
		}
		poll.Until(t, 5*time.Second, conv(c)+"'s replies heard", func() bool { return len(heard.ids(conv(c))) >= burst })
		if got := heard.ids(conv(c)); !slices.Equal(got, want) {
			t.Errorf("%s: replies heard in the order %v, want %v, each once", conv(c), got, want)
		}
		if s := sent[conv(c)]; !slices.IsSorted(s) || len(s) < burst {
			t.Errorf("%s: requests sent to the provider in the order %v, want every one, each after the ones before", conv(c), s)
		}
	}
	settled(t, srv, 20*time.Second)
}

// Issue 11: a conversation whose head is given up on (dead-lettered) moves
// on: the failed reply first, then the next requests' answers, in order.
func TestConversationMovesOnPastADeadLetteredHead(t *testing.T) {
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	heard := listenInOrder(t, b)
	f := newFleet(t, "deepseek")
	f.sim("deepseek").SetLatency(20 * time.Millisecond)

	past := time.Now().Add(-time.Minute)
	head := turnRequest("c-1", 0)
	head.Deadline = past
	publish(t, b, "c-1", head, "")                           // deadline_exceeded
	publish(t, b, "c-1", `{"id":"c-1#1","messages":[]}`, "") // invalid_request
	for k := 2; k < 5; k++ {
		publish(t, b, "c-1", turnRequest("c-1", k), "")
	}
	startPool(t, b, f, orderedSetup("replica-1"))
	startPool(t, b, f, orderedSetup("replica-2"))

	want := []string{"c-1#0", "c-1#1", "c-1#2", "c-1#3", "c-1#4"}
	got := waitReplies(t, b, len(want))
	var order []string
	for _, r := range replies(t, b) {
		order = append(order, r.ID)
	}
	if !slices.Equal(order, want) {
		t.Errorf("replies stored in the order %v, want %v", order, want)
	}
	if r := replyTo(t, got, "c-1#0"); r.Status != chat.StatusFailed || r.Error.Code != chat.CodeDeadlineExceeded {
		t.Errorf("head's reply %+v, want failed deadline_exceeded", r.Reply)
	}
	if r := replyTo(t, got, "c-1#1"); r.Status != chat.StatusFailed || r.Error.Code != chat.CodeInvalidRequest {
		t.Errorf("second reply %+v, want failed invalid_request", r.Reply)
	}
	if n := len(stored(t, b, chat.KindDead, subj.AllDead())); n != 2 {
		t.Errorf("%d dead letters, want 2", n)
	}
	poll.Until(t, 5*time.Second, "every reply heard", func() bool { return len(heard.ids("c-1")) >= len(want) })
	if h := heard.ids("c-1"); !slices.Equal(h, want) {
		t.Errorf("replies heard in the order %v, want %v", h, want)
	}
	settled(t, b, 10*time.Second)
}

// A request whose settlement was recorded but whose ack was lost is acked
// on its next delivery without a provider call; one stored before ordering
// was switched on (acked, below the consumer's ack floor; refused, so no
// claim says it was answered) holds nobody up.
func TestOrderSkipsWhatIsSettled(t *testing.T) {
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	f := newFleet(t, "deepseek")
	s := defaultSetup()
	s.id = "unordered"
	r := startPool(t, b, f, s)
	publish(t, b, "c-1", `{"id":"c-1#0","messages":[]}`, "")
	waitReplies(t, b, 1)
	settled(t, b, 10*time.Second)
	r.stop()

	startPool(t, b, f, orderedSetup("ordered"))
	publish(t, b, "c-1", turnRequest("c-1", 1), "")
	waitReplies(t, b, 2)

	// Settled, and then delivered again: acked without a call.
	if err := b.Settle(context.Background(), "c-2", 100); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "c-2", turnRequest("c-2", 0), "") // sequence 4 < 100
	settled(t, b, 10*time.Second)
	if n := len(replies(t, b)); n != 2 {
		t.Errorf("%d replies, want 2 (none for a request already settled)", n)
	}
	if h := f.sim("deepseek").Hits(); h != 1 {
		t.Errorf("provider called %d times, want 1", h)
	}
}

func TestOrderingConfig(t *testing.T) {
	c := DefaultConfig()
	for _, tt := range []struct {
		ordering      string
		maxDeliveries int
		wantErr       string
	}{
		{ordering: ""},
		{ordering: "none", maxDeliveries: 3},
		{ordering: "conversation"},
		{ordering: "fifo", wantErr: "worker.ordering:"},
		{ordering: "conversation", maxDeliveries: 3, wantErr: "worker.max_deliveries:"},
	} {
		c.Ordering, c.MaxDeliveries = tt.ordering, tt.maxDeliveries
		err := c.Validate()
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.HasPrefix(err.Error(), tt.wantErr)) {
			t.Errorf("ordering %q max_deliveries %d: Validate() = %v, want %q", tt.ordering, tt.maxDeliveries, err, tt.wantErr)
		}
	}
	c = DefaultConfig()
	if c.OrderWaiting = -1; c.Validate() == nil || !strings.HasPrefix(c.Validate().Error(), "worker.order_waiting:") {
		t.Errorf("order_waiting -1: Validate() = %v, want worker.order_waiting: ...", c.Validate())
	}
	for _, tt := range []struct{ concurrency, waiting, want int }{{64, 0, 1024}, {2000, 0, 2000}, {64, 10, 10}} {
		c.Concurrency, c.OrderWaiting = tt.concurrency, tt.waiting
		if got := c.waitingRoom(); got != tt.want {
			t.Errorf("concurrency %d order_waiting %d: room %d, want %d", tt.concurrency, tt.waiting, got, tt.want)
		}
	}
}

// storedRank is where each request's reply stands among the stored ones.
func storedRank(t *testing.T, b *broker.Broker) map[string]int {
	t.Helper()
	rank := map[string]int{}
	for i, r := range replies(t, b) {
		rank[r.ID] = i
	}
	return rank
}

// Issue 11: a conversation's deep queue does not hold up another's head.
// One replica of concurrency 4, conversation a with 20 requests queued
// first, then conversation b with one: b's request waits for no more than
// a few of a's (today it waited behind a's requests cycling through the
// slots and the queue).
func TestDeepConversationDoesNotHoldUpAnother(t *testing.T) {
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	f := newFleet(t, "deepseek")
	f.sim("deepseek").SetLatency(20 * time.Millisecond)
	const deep = 20
	for k := range deep {
		publish(t, b, "a", turnRequest("a", k), "")
	}
	publish(t, b, "b", turnRequest("b", 0), "")
	s := orderedSetup("replica-1")
	s.cfg.Concurrency = 4
	startPool(t, b, f, s)

	waitReplies(t, b, deep+1)
	rank := storedRank(t, b)
	t.Logf("b's reply stored %dth of %d", rank["b#0"]+1, deep+1)
	if rank["b#0"] > rank["a#9"] {
		t.Errorf("b's only reply stored %dth, after a's 10th (%dth): held up by a's queue", rank["b#0"]+1, rank["a#9"]+1)
	}
	settled(t, b, 10*time.Second)
}

// Issue 11: when the waiting room is full of one conversation's deep
// requests, a shallower waiter of another conversation takes the deepest
// one's place (that one goes back to the queue). Room for 12 waiters,
// conversation a with 40 requests queued first, then b, c and d with 3:
// each of b's, c's and d's requests waits here on its first delivery and
// is answered before a's 20th.
func TestWaitingRoomKeepsTheShallowest(t *testing.T) {
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	f := newFleet(t, "deepseek")
	f.sim("deepseek").SetLatency(20 * time.Millisecond)
	const deep, short = 40, 3
	others := []string{"b", "c", "d"}
	for k := range deep {
		publish(t, b, "a", turnRequest("a", k), "")
	}
	for _, c := range others {
		for k := range short {
			publish(t, b, c, turnRequest(c, k), "")
		}
	}
	s := orderedSetup("replica-1")
	s.cfg.Concurrency = 4
	s.cfg.OrderWaiting = 12
	startPool(t, b, f, s)

	got := waitReplies(t, b, deep+short*len(others))
	rank := storedRank(t, b)
	for _, c := range others {
		for k := range short {
			r := replyTo(t, got, turnRequest(c, k).ID)
			if r.Deliveries != 1 {
				t.Errorf("%s answered on delivery %d, want 1 (put back for lack of room)", r.ID, r.Deliveries)
			}
			if rank[r.ID] > rank["a#19"] {
				t.Errorf("%s stored %dth, after a's 20th (%dth)", r.ID, rank[r.ID]+1, rank["a#19"]+1)
			}
		}
	}
	settled(t, b, 10*time.Second)
}

// TestDrainPutsParkedDeliveriesBackAtOnce: when a pool drains, the
// deliveries parked in its waiting room go back to the queue at once, for
// another replica to hold, while the one it works on has the shutdown grace
// to finish.
func TestDrainPutsParkedDeliveriesBackAtOnce(t *testing.T) {
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	hung := newFleet(t, "deepseek")
	hung.sim("deepseek").SetMode(sim.ModeHang)
	s := orderedSetup("draining")
	s.cfg.ShutdownGrace = 6 * time.Second
	s.timeout = map[string]time.Duration{"deepseek": time.Minute}
	first := startPool(t, b, hung, s)
	for k := range 3 {
		publish(t, b, "c-1", turnRequest("c-1", k), "")
	}
	poll.Until(t, 5*time.Second, "the head at its provider and two parked", func() bool {
		return hung.sim("deepseek").Hits() == 1 && inHand(first.pool) == 3
	})

	stopped := make(chan struct{})
	go func() { defer close(stopped); first.stop() }()
	second := startPool(t, b, newFleet(t, "deepseek"), orderedSetup("taking-over"))
	poll.Until(t, 4*time.Second, "the parked two held by the other replica", func() bool {
		return inHand(second.pool) == 2
	})
	select {
	case <-stopped:
		t.Fatal("the draining pool returned before its grace was over: the head was not given its grace")
	default:
	}
	// Its grace over, the head goes back too, and the other replica answers
	// all three in order.
	<-stopped
	poll.Until(t, 15*time.Second, "three replies", func() bool { return len(replies(t, b)) == 3 })
	for k, r := range replies(t, b) {
		if want := fmt.Sprintf("c-1#%d", k); r.ID != want || r.Status != chat.StatusOK {
			t.Errorf("reply %d: %s %s, want %s ok", k, r.ID, r.Status, want)
		}
	}
}

// inHand reads a pool's in-flight gauge: the deliveries it holds, worked on
// or parked.
func inHand(p *Pool) float64 {
	var m dto.Metric
	if err := p.m.inFlight.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}
