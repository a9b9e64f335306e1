package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/faultproxy"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

// listeningBroker starts an embedded server reachable over TCP, so other
// connections (direct or through a fault proxy) can join it.
func listeningBroker(t *testing.T, topo broker.Topology) *broker.Broker {
	t.Helper()
	b, err := broker.Connect(context.Background(), broker.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"}, "test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	setupTopo(t, b, topo)
	return b
}

func setupTopo(t *testing.T, b *broker.Broker, topo broker.Topology) {
	t.Helper()
	topo.Subjects = subj
	if topo.AckWait == 0 {
		topo.AckWait = 5 * time.Second
	}
	if err := b.Setup(context.Background(), topo); err != nil {
		t.Fatal(err)
	}
}

// joinBroker connects another client to url (a server or a proxy) with the
// same topology; clock, when not nil, is its wall clock.
func joinBroker(t *testing.T, url string, topo broker.Topology, clock broker.Clock) *broker.Broker {
	t.Helper()
	b, err := broker.Connect(context.Background(), broker.Config{URL: url}, "test-join", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if clock != nil {
		b.SetClock(clock)
	}
	setupTopo(t, b, topo)
	return b
}

func proxyTo(t *testing.T, b *broker.Broker) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(strings.TrimPrefix(b.ClientURL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// liveReplies counts the replies heard on the reply subjects as they are
// published (what a chat API's core subscription hears), by request id.
type liveReplies struct {
	mu   sync.Mutex
	byID map[string][]chat.Reply
}

func listen(t *testing.T, b *broker.Broker) *liveReplies {
	t.Helper()
	l := &liveReplies{byID: map[string][]chat.Reply{}}
	sub, err := b.Conn().Subscribe(subj.AllReplies(), func(m *nats.Msg) {
		var r chat.Reply
		_ = json.Unmarshal(m.Data, &r)
		l.mu.Lock()
		l.byID[r.ID] = append(l.byID[r.ID], r)
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

func (l *liveReplies) heard(id string) []chat.Reply {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]chat.Reply(nil), l.byID[id]...)
}

// settled waits until no delivery of the workers consumer is outstanding.
func settled(t *testing.T, b *broker.Broker, within time.Duration) {
	t.Helper()
	poll.Until(t, within, "every delivery settled", func() bool {
		pending, ack, err := b.Backlog(context.Background())
		return err == nil && pending == 0 && ack == 0
	})
}

// bigAnswer is an OpenAI-compatible provider whose answer is n bytes long.
func bigAnswer(t *testing.T, n int) (*providers.Built, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	content := strings.Repeat("x", n)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"id": "c1", "object": "chat.completion", "created": 1, "model": "big",
			"choices": []map[string]any{{"index": 0, "finish_reason": "stop",
				"message": map[string]any{"role": "assistant", "content": content}}},
			"usage": map[string]any{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
		})
	}))
	t.Cleanup(srv.Close)
	b, err := providers.Build(providers.Config{Name: "big", Kind: providers.KindOpenAI, BaseURL: srv.URL + "/v1", Model: "big", Timeout: 5 * time.Second}, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b, &hits
}

// Item 1 of issue 7: output that cannot be stored ends the request at once,
// with one small failed reply and one dead letter; the provider is never
// called again for it.
func TestOutputThatCannotBeStoredEndsTheRequest(t *testing.T) {
	t.Run("metadata that escapes past max_payload is refused", func(t *testing.T) {
		b := newBroker(t, broker.Topology{})
		f := newFleet(t, "deepseek")
		startPool(t, b, f, keepCalling())
		// Published as raw bytes: 200 KB of '<', which the reply's JSON
		// escaping would turn into 1.2 MB.
		publish(t, b, "c-1", `{"id":"lt","messages":[{"role":"user","content":"hi"}],"metadata":{"x":"`+strings.Repeat("<", 200_000)+`"}}`, "")
		r := replyTo(t, waitReplies(t, b, 1), "lt")
		if r.Status != chat.StatusFailed || r.Error.Code != chat.CodeInvalidRequest || r.Deliveries != 1 {
			t.Errorf("reply %s %+v after %d deliveries, want failed invalid_request on the first", r.Status, r.Error, r.Deliveries)
		}
		settled(t, b, 5*time.Second)
		if h := f.sim("deepseek").Hits(); h > 1 {
			t.Errorf("provider called %d times for a request whose reply cannot be stored", h)
		}
		if d := stored(t, b, chat.KindDead, subj.AllDead()); len(d) != 1 {
			t.Errorf("%d dead letters, want 1", len(d))
		}
	})
	t.Run("an answer over max_payload fails reply_too_large", func(t *testing.T) {
		b := newBroker(t, broker.Topology{})
		big, hits := bigAnswer(t, 1_100_000)
		s := keepCalling()
		links := []*Link{{Provider: big, Timeout: 5 * time.Second, Breaker: newTestBreaker(big.Name(), s)}}
		runPool(t, b, NewChain(links, s.retry), s)
		publish(t, b, "c-1", request("huge"), "")
		r := waitReplies(t, b, 1)["huge"]
		if r.Status != chat.StatusFailed || r.Error.Code != chat.CodeReplyTooLarge || r.Deliveries != 1 {
			t.Errorf("reply %s %+v after %d deliveries, want failed reply_too_large on the first", r.Status, r.Error, r.Deliveries)
		}
		settled(t, b, 5*time.Second)
		if h := hits.Load(); h != 1 {
			t.Errorf("provider called %d times, want 1", h)
		}
		if d := stored(t, b, chat.KindDead, subj.AllDead()); len(d) != 1 || d[0].Header.Get(chat.HeaderCode) != chat.CodeReplyTooLarge {
			t.Errorf("dead letters %v, want one reply_too_large", d)
		}
	})
	t.Run("echoes are not HTML-escaped", func(t *testing.T) {
		b := newBroker(t, broker.Topology{})
		f := newFleet(t, "deepseek")
		startPool(t, b, f, defaultSetup())
		publish(t, b, "c-1", `{"id":"html","messages":[{"role":"user","content":"hi"}],"metadata":{"note":"<b>&</b>"}}`, "")
		waitReplies(t, b, 1)
		raw := stored(t, b, chat.KindReplies, subj.AllReplies())[0].Data
		if !strings.Contains(string(raw), `"metadata":{"note":"<b>&</b>"}`) {
			t.Errorf("reply %s: metadata escaped", raw)
		}
	})
}

// slowReplies is a server slow to store replies, as a busy cluster or a
// leader election makes it: a reply is stored delay after its first
// publish, whatever the publisher's timeouts; a publish is acknowledged once
// it is stored, if the publisher still waits.
type slowReplies struct {
	Broker
	delay  time.Duration
	mu     sync.Mutex
	stored map[string]chan struct{}
}

func (s *slowReplies) PublishReply(ctx context.Context, conv, msgID string, r *chat.Reply) (bool, error) {
	s.mu.Lock()
	if s.stored == nil {
		s.stored = map[string]chan struct{}{}
	}
	done, ok := s.stored[msgID]
	if !ok {
		done = make(chan struct{})
		s.stored[msgID] = done
		go func() {
			defer close(done)
			time.Sleep(s.delay)
			_, _ = s.Broker.PublishReply(context.Background(), conv, msgID, r)
		}()
	}
	s.mu.Unlock()
	select {
	case <-done:
		return s.Broker.PublishReply(ctx, conv, msgID, r) // a repeat: dropped, acknowledged
	case <-ctx.Done():
		return false, fmt.Errorf("publish reply: %w", ctx.Err())
	}
}

// sameAnswer fails the test unless every reply heard live is the stored one
// (a publish repeated after a lost acknowledgement is heard again, and
// identical: listeners keep the first per id).
func sameAnswer(t *testing.T, l *liveReplies, stored storedReply) {
	t.Helper()
	poll.Until(t, 5*time.Second, "the reply heard live", func() bool { return len(l.heard(stored.ID)) > 0 })
	for _, live := range l.heard(stored.ID) {
		if live.Status != stored.Status || live.LatencyMS != stored.LatencyMS || live.Deliveries != stored.Deliveries {
			t.Errorf("heard %+v live, stored %+v: two different answers", live, stored.Reply)
		}
	}
}

// Item 2 of issue 7: the keep-alive runs until the delivery is settled, so a
// reply write slower than ack_wait is not redelivered to a second worker.
func TestSlowReplyWriteIsNotRedelivered(t *testing.T) {
	const ackWait = time.Second
	b := newBroker(t, broker.Topology{AckWait: ackWait})
	f := newFleet(t, "deepseek")
	heard := listen(t, b)
	s := defaultSetup()
	s.cfg.AckWait = ackWait
	s.id = "slow"
	startPool(t, &slowReplies{Broker: b, delay: 2500 * time.Millisecond}, f, s)
	s.id = "fast"
	startPool(t, b, f, s)
	publish(t, b, "c-1", request("slow-write"), "")
	r := waitReplies(t, b, 1)["slow-write"]
	settled(t, b, 10*time.Second)
	if h := f.sim("deepseek").Hits(); h != 1 {
		t.Errorf("provider called %d times, want 1", h)
	}
	if r.Deliveries != 1 {
		t.Errorf("answered on delivery %d, want 1", r.Deliveries)
	}
	sameAnswer(t, heard, r)
}

// Item 2 of issue 7, through a real slow link: when the link to the holder
// slows past ack_wait and the server redelivers to another worker, the
// second worker neither calls a provider nor publishes a reply.
func TestRedeliveryWhileTheHolderLivesCallsNoProvider(t *testing.T) {
	const ackWait = time.Second
	topo := broker.Topology{AckWait: ackWait}
	srv := listeningBroker(t, topo)
	proxy := proxyTo(t, srv)
	viaProxy := joinBroker(t, proxy.URL(), topo, nil)
	heard := listen(t, srv)
	f := newFleet(t, "deepseek")
	f.sim("deepseek").SetLatency(300 * time.Millisecond)
	s := defaultSetup()
	s.cfg.AckWait = ackWait
	s.cfg.Concurrency = 1
	s.id = "behind-a-slow-link"
	startPool(t, viaProxy, f, s)
	publish(t, srv, "c-1", request("slow-link"), "")
	poll.Until(t, 10*time.Second, "the provider called", func() bool { return f.sim("deepseek").Hits() == 1 })
	proxy.SetLatency(1500 * time.Millisecond)
	s.id = "direct"
	startPool(t, srv, f, s)
	r := waitReplies(t, srv, 1)["slow-link"]
	if r.Status != chat.StatusOK {
		t.Fatalf("reply %+v", r.Reply)
	}
	settled(t, srv, 20*time.Second)
	if h := f.sim("deepseek").Hits(); h != 1 {
		t.Errorf("provider called %d times, want 1", h)
	}
	sameAnswer(t, heard, r)
}

func skewed(d time.Duration) broker.Clock { return func() time.Time { return time.Now().Add(d) } }

// Item 3 of issue 7: liveness, not wall clocks, decides who owns a request.
func TestSkewedClocksNeitherStealNorBlock(t *testing.T) {
	const ackWait = time.Second
	topo := broker.Topology{AckWait: ackWait}
	s := defaultSetup()
	s.cfg.AckWait = ackWait
	s.cfg.Concurrency = 1

	t.Run("a clock a minute ahead does not steal a live claim", func(t *testing.T) {
		srv := listeningBroker(t, topo)
		behind := joinBroker(t, srv.ClientURL(), topo, skewed(-time.Minute))
		ahead := joinBroker(t, srv.ClientURL(), topo, skewed(time.Minute))
		heard := listen(t, srv)
		f := newFleet(t, "deepseek")
		f.sim("deepseek").SetLatency(1500 * time.Millisecond)
		s := s
		s.id = "behind"
		startPool(t, behind, f, s)
		publish(t, srv, "c-1", request("twice"), "")
		poll.Until(t, 10*time.Second, "the provider called", func() bool { return f.sim("deepseek").Hits() == 1 })
		s.id = "ahead"
		startPool(t, ahead, f, s)
		// The same id again, as a client retry past the duplicate window.
		publish(t, srv, "c-1", request("twice"), "")
		r := waitReplies(t, srv, 1)["twice"]
		settled(t, srv, 15*time.Second)
		if h := f.sim("deepseek").Hits(); h != 1 {
			t.Errorf("provider called %d times, want 1", h)
		}
		sameAnswer(t, heard, r)
	})

	t.Run("a dead holder whose clock was ahead does not block", func(t *testing.T) {
		srv := listeningBroker(t, topo)
		proxy := proxyTo(t, srv)
		ahead := joinBroker(t, proxy.URL(), topo, skewed(time.Minute))
		behind := joinBroker(t, srv.ClientURL(), topo, skewed(-time.Minute))
		f := newFleet(t, "deepseek")
		f.sim("deepseek").SetMode(sim.ModeHang)
		s := s
		s.id = "ahead"
		startPool(t, ahead, f, s)
		publish(t, srv, "c-1", request("orphan"), "")
		poll.Until(t, 10*time.Second, "the provider called", func() bool { return f.sim("deepseek").Hits() == 1 })
		// The holder drops off the network for good.
		proxy.Refuse(true)
		proxy.Cut()
		f.sim("deepseek").SetMode(sim.ModeOK)
		s.id = "behind"
		startPool(t, behind, f, s)
		r := waitReplies(t, srv, 1)["orphan"]
		if r.Status != chat.StatusOK {
			t.Errorf("reply %+v, want ok from the surviving worker", r.Reply)
		}
	})
}

// Item 5 of issue 7: a deadline is a deadline.
func TestDeadlineNearerThanRequeueMin(t *testing.T) {
	// A pool whose provider is down and a request due in 1.5 s, less than
	// requeue_min away.
	start := func(t *testing.T, id string) (*broker.Broker, *fleet, chat.Request) {
		s := keepCalling()
		s.cfg.RequeueMin, s.cfg.RequeueMax = 2*time.Second, 4*time.Second
		b := newBroker(t, broker.Topology{})
		f := newFleet(t, "deepseek")
		f.sim("deepseek").SetMode(sim.ModeError)
		startPool(t, b, f, s)
		req := request(id)
		req.Deadline = time.Now().Add(1500 * time.Millisecond)
		publish(t, b, "c-1", req, "")
		return b, f, req
	}

	t.Run("a provider back before the deadline is asked", func(t *testing.T) {
		b, f, _ := start(t, "last-second")
		poll.Until(t, 5*time.Second, "the first ladder", func() bool { return f.sim("deepseek").Hits() >= 1 })
		f.sim("deepseek").SetMode(sim.ModeOK)
		r := waitReplies(t, b, 1)["last-second"]
		if r.Status != chat.StatusOK {
			t.Errorf("reply %s %+v, want ok: the provider came back before the deadline", r.Status, r.Error)
		}
	})

	t.Run("deadline_exceeded only once it has passed", func(t *testing.T) {
		b, _, req := start(t, "expires")
		r := waitReplies(t, b, 1)["expires"]
		if r.Status != chat.StatusFailed || r.Error.Code != chat.CodeDeadlineExceeded {
			t.Fatalf("reply %s %+v, want deadline_exceeded", r.Status, r.Error)
		}
		at := stored(t, b, chat.KindReplies, subj.AllReplies())[0].Time
		if at.Before(req.Deadline) {
			t.Errorf("deadline_exceeded stored %s before the deadline", req.Deadline.Sub(at))
		}
	})
}

// failingSearch cannot search the replies stream.
type failingSearch struct {
	Broker
}

func (f *failingSearch) FindReply(context.Context, string, string, time.Time) (bool, error) {
	return false, errors.New("simulated: replies stream unreachable")
}

// Item 5 of issue 7: an error while deciding is never a verdict.
func TestMaxDeliveriesReadErrorLeavesTheRequest(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	heard := listen(t, b)
	f := newFleet(t, "deepseek")
	publish(t, b, "c-1", request("answered"), "")
	// Answered by a worker that died before recording it: the reply is
	// stored, the claim is not finished.
	if _, err := b.PublishReply(context.Background(), "c-1", "answered", &chat.Reply{ID: "answered", ConversationID: "c-1", Status: chat.StatusOK}); err != nil {
		t.Fatal(err)
	}
	s := defaultSetup()
	p := New(Options{Broker: &failingSearch{Broker: b}, Chain: NewChain(testLinks(f, s), s.retry), Config: s.cfg, Log: zerolog.Nop(), ID: "w"})
	p.maxDeliveries(context.Background(), 1, 7)
	if d := stored(t, b, chat.KindDead, subj.AllDead()); len(d) != 0 {
		t.Errorf("%d dead letters for a request that was answered", len(d))
	}
	// A marker on the same subject, published after: once it is heard,
	// anything published before it on that subject has been heard too.
	if _, err := b.PublishReply(context.Background(), "c-1", "marker", &chat.Reply{ID: "marker", ConversationID: "c-1", Status: chat.StatusOK}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "the marker heard", func() bool { return len(heard.heard("marker")) == 1 })
	if got := heard.heard("answered"); len(got) != 1 || got[0].Status != chat.StatusOK {
		t.Errorf("heard %+v live, want only the ok one", got)
	}
}

// blockingAdvisories hands the test the pool's MAX_DELIVERIES handler and
// makes reading the request wait until released.
type blockingAdvisories struct {
	Broker
	handler chan func(seq, deliveries uint64)
	reading chan struct{}
	release chan struct{}
}

func (b *blockingAdvisories) OnMaxDeliveries(fn func(seq, deliveries uint64)) (func(), error) {
	b.handler <- fn
	return func() {}, nil
}

func (b *blockingAdvisories) Request(ctx context.Context, seq uint64) (*broker.Stored, error) {
	close(b.reading)
	<-b.release
	return b.Broker.Request(ctx, seq)
}

// Item 5 of issue 7: shutdown waits for a running advisory handler before
// the connection is closed.
func TestShutdownWaitsForTheAdvisoryHandler(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek")
	s := defaultSetup()
	bb := &blockingAdvisories{Broker: b, handler: make(chan func(uint64, uint64), 1), reading: make(chan struct{}), release: make(chan struct{})}
	p := New(Options{Broker: bb, Chain: NewChain(testLinks(f, s), s.retry), Config: s.cfg, Log: zerolog.Nop(), ID: "w"})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); _ = p.Run(ctx) }()
	handler := <-bb.handler
	go handler(1, 3)
	<-bb.reading
	cancel()
	select {
	case <-ran:
		t.Fatal("Run returned while an advisory handler was still running")
	case <-time.After(1500 * time.Millisecond):
	}
	close(bb.release)
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the handler finished")
	}
}

// Item 6 of issue 7: a request refused as invalid does not reserve its id.
func TestCorrectedResendIsAnswered(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek")
	startPool(t, b, f, defaultSetup())
	publish(t, b, "c-1", `{"id":"fix-me","messages":[]}`, "")
	poll.Until(t, 10*time.Second, "the failed reply", func() bool { return len(replies(t, b)) == 1 })
	publish(t, b, "c-1", request("fix-me"), "")
	poll.Until(t, 10*time.Second, "the corrected request answered", func() bool { return len(replies(t, b)) == 2 })
	var statuses []string
	for _, r := range replies(t, b) {
		if r.ID != "fix-me" {
			t.Errorf("reply for %q", r.ID)
		}
		statuses = append(statuses, r.Status)
	}
	if fmt.Sprint(statuses) != "[failed ok]" {
		t.Errorf("stored replies %v, want [failed ok]", statuses)
	}
}

// Item 9 of issue 7: the keep-alive follows the consumer's ack_wait as the
// server has it, not this process's configuration (a rolling change of
// ack_wait leaves replicas configured differently).
func TestKeepAliveFollowsTheServersAckWait(t *testing.T) {
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	f := newFleet(t, "deepseek")
	f.sim("deepseek").SetLatency(2500 * time.Millisecond)
	s := defaultSetup()
	s.cfg.AckWait = 30 * time.Second // an old replica's configuration
	s.timeout = map[string]time.Duration{"deepseek": 10 * time.Second}
	startPool(t, b, f, s)
	publish(t, b, "c-1", request("long"), "")
	r := waitReplies(t, b, 1)["long"]
	settled(t, b, 10*time.Second)
	if r.Deliveries != 1 {
		t.Errorf("answered on delivery %d, want 1", r.Deliveries)
	}
	if h := f.sim("deepseek").Hits(); h != 1 {
		t.Errorf("provider called %d times, want 1", h)
	}
}

// lostReply's first reply publish is lost (its node went down before
// storing it; in a cluster, live listeners may have heard it): the publish
// times out.
type lostReply struct {
	Broker
	lost atomic.Bool
}

func (l *lostReply) PublishReply(ctx context.Context, conv, msgID string, r *chat.Reply) (bool, error) {
	if l.lost.CompareAndSwap(false, true) {
		return false, fmt.Errorf("publish reply: %w", context.DeadlineExceeded)
	}
	return l.Broker.PublishReply(ctx, conv, msgID, r)
}

// A reply publish that times out is retried with the same reply, not
// answered anew: a reply heard live is never followed by another answer.
func TestReplyPublishTimeoutRetriesTheSameReply(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	heard := listen(t, b)
	f := newFleet(t, "deepseek")
	startPool(t, &lostReply{Broker: b}, f, defaultSetup())
	publish(t, b, "c-1", request("lost-ack"), "")
	r := waitReplies(t, b, 1)["lost-ack"]
	settled(t, b, 10*time.Second)
	if h := f.sim("deepseek").Hits(); h != 1 {
		t.Errorf("provider called %d times, want 1: the same reply is published again", h)
	}
	sameAnswer(t, heard, r)
}
