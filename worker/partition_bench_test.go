package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

// The alternative design for per-conversation order that issue 11 offered,
// built just enough to be measured next to the one built (worker/order.go):
// requests published on part.requests.<conv> are stored by a stream subject
// transform on part.requests.<partition>.<conv> (partition(P,1): a hash of
// the conversation), one durable pull consumer per partition with
// MaxAckPending 1 hands out one request of the partition at a time — that
// is what orders it — and a worker per partition decodes it, calls the
// provider over HTTP, publishes the reply with the request's id as
// Nats-Msg-Id and acks. A provider failure puts the request back with a
// delay (NakWithDelay), which with MaxAckPending 1 holds the partition.
// Replicas would share the partitions with pinned clients (priority
// groups); one process measures the same throughput shape. With partitions
// 0 the same minimal pipeline runs unordered (one consumer, 64 workers): the
// figure the partitioned ones are a share of. The minimal pipeline has no
// claim, no events and no deadline, so it is lighter than the built
// worker's: compare each design's ordered figure with its own unordered one.

const (
	partStream   = "PART_REQUESTS"
	partReplies  = "PART_REPLIES"
	partRequests = "part.requests"
)

// partitioned is the alternative design running on one JetStream server.
type partitioned struct {
	js      jetstream.JetStream
	prov    providers.Provider
	putBack time.Duration
	stops   []func()
}

// startPartitioned creates the streams and consumers for parts partitions
// (0: one unordered consumer) and starts their workers until the benchmark
// ends.
func startPartitioned(b *testing.B, js jetstream.JetStream, prov providers.Provider, parts int, putBack time.Duration) *partitioned {
	b.Helper()
	ctx := context.Background()
	sc := jetstream.StreamConfig{Name: partStream, Subjects: []string{partRequests + ".*"}, Storage: jetstream.FileStorage}
	if parts > 0 {
		sc.SubjectTransform = &jetstream.SubjectTransformConfig{Source: partRequests + ".*",
			Destination: fmt.Sprintf("%s.{{partition(%d,1)}}.{{wildcard(1)}}", partRequests, parts)}
	}
	if _, err := js.CreateStream(ctx, sc); err != nil {
		b.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: partReplies, Subjects: []string{"part.replies.*"},
		Storage: jetstream.FileStorage, Duplicates: time.Minute}); err != nil {
		b.Fatal(err)
	}
	p := &partitioned{js: js, prov: prov, putBack: putBack}
	b.Cleanup(func() {
		for _, stop := range p.stops {
			stop()
		}
	})
	if parts == 0 {
		cons := p.consumer(b, "part-all", partRequests+".*", 1024)
		work := make(chan jetstream.Msg, 64)
		cc, err := cons.Consume(func(m jetstream.Msg) { work <- m }, jetstream.PullMaxMessages(64))
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		done := make(chan struct{})
		for range 64 {
			wg.Go(func() {
				for {
					select {
					case m := <-work:
						p.handle(m)
					case <-done:
						return
					}
				}
			})
		}
		p.stops = append(p.stops, func() { cc.Stop(); close(done); wg.Wait() })
		return p
	}
	for i := range parts {
		cons := p.consumer(b, fmt.Sprintf("part-%d", i), fmt.Sprintf("%s.%d.*", partRequests, i), 1)
		cc, err := cons.Consume(p.handle, jetstream.PullMaxMessages(4))
		if err != nil {
			b.Fatal(err)
		}
		p.stops = append(p.stops, cc.Stop)
	}
	return p
}

func (p *partitioned) consumer(b *testing.B, name, filter string, maxAckPending int) jetstream.Consumer {
	b.Helper()
	cons, err := p.js.CreateConsumer(context.Background(), partStream, jetstream.ConsumerConfig{Durable: name, FilterSubject: filter,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: maxAckPending, MaxDeliver: -1})
	if err != nil {
		b.Fatal(err)
	}
	return cons
}

// handle works on one request: decode, call, reply, ack; a failed call puts
// it back with putBack.
func (p *partitioned) handle(m jetstream.Msg) {
	subject := m.Subject()
	conv := subject[strings.LastIndexByte(subject, '.')+1:]
	req, err := chat.DecodeRequest(m.Data(), conv, chat.DecodeLimits{})
	if err != nil {
		_ = m.Term()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := p.prov.Complete(ctx, &providers.Request{Messages: req.Messages})
	if err != nil {
		_ = m.NakWithDelay(p.putBack)
		return
	}
	data, _ := json.Marshal(chat.Reply{ID: req.ID, ConversationID: conv, Status: "ok", Content: resp.Content,
		Provider: p.prov.Name(), Model: resp.Model})
	reply := &nats.Msg{Subject: "part.replies." + conv, Data: data, Header: nats.Header{}}
	reply.Header.Set(chat.HeaderMsgID, req.ID)
	if _, err := p.js.PublishMsg(ctx, reply); err != nil {
		_ = m.NakWithDelay(p.putBack)
		return
	}
	_ = m.Ack()
}

// BenchmarkPartitionedOrder measures the partitioned design in the shapes
// of BenchmarkOrdering (one process, requests published conversation after
// conversation, 1,000 conversations and 10, providers 0 and 50 ms), with 16
// and 64 partitions and unordered (partitions=0). Run it in the same
// sitting as BenchmarkOrdering:
//
//	go test -run='^$' -bench='^Benchmark(Ordering|PartitionedOrder)$' -benchtime=2000x ./worker/
func BenchmarkPartitionedOrder(b *testing.B) {
	for _, latency := range []time.Duration{0, 50 * time.Millisecond} {
		for _, convs := range []int{1000, 10} {
			for _, parts := range []int{0, 16, 64} {
				b.Run(fmt.Sprintf("latency=%s/conversations=%d/partitions=%d", latency, convs, parts), func(b *testing.B) {
					benchPartitioned(b, latency, convs, parts)
				})
			}
		}
	}
}

func benchPartitioned(b *testing.B, latency time.Duration, convs, parts int) {
	bk := newBenchBroker(b)
	f := newFleet(b, "deepseek")
	f.sim("deepseek").SetLatency(latency)
	js := bk.JetStream()
	startPartitioned(b, js, f.built[0], parts, 100*time.Millisecond)
	b.ResetTimer()
	publishInRows(b, js, convs, func(conv string) string { return partRequests + "." + conv })
	waitStored(b, js, partReplies)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// headWait: the conversation whose head waits for its provider, the
// request id that makes the provider answer 503 to its first call, and how
// long the head is put back for.
const (
	headWaitConv  = "c-stuck"
	headWaitID    = "stuck-head"
	headWaitDelay = time.Second
)

// BenchmarkWaitingHead measures what a conversation whose head waits
// for a provider holds up: its head's first call is answered 503 and the
// request put back for 1 s; it and a second request of its conversation
// are published first, then one request in each of 256 other
// conversations. delayed-convs is how many of those others were answered
// after the waiting head (held up by it); the built design holds only the
// head's own conversation, a partition holds every conversation hashed to
// it. Provider latency 0.
//
//	go test -run='^$' -bench=WaitingHead -benchtime=1x ./worker/
func BenchmarkWaitingHead(b *testing.B) {
	for _, design := range []string{"built", "partitions=16", "partitions=64"} {
		b.Run("design="+design, func(b *testing.B) {
			var delayed, headMS float64
			for range b.N {
				d, h := headWait(b, design)
				delayed += float64(d)
				headMS += float64(h.Milliseconds())
			}
			b.ReportMetric(delayed/float64(b.N), "delayed-convs")
			b.ReportMetric(headMS/float64(b.N), "head-ms")
		})
	}
}

// headWait runs the case once: how many other conversations were answered
// after the waiting head, and how long the head took.
func headWait(b *testing.B, design string) (delayed int, head time.Duration) {
	const others = 256
	bk := newBenchBroker(b)
	prov, stuckCalls := failingHead(b)
	js := bk.JetStream()
	replies, prefix := subj.Reply("*"), subj.Request("")
	if design == "built" {
		f := &fleet{names: []string{prov.Name()}, built: []*providers.Built{prov}}
		s := defaultSetup()
		s.cfg.Concurrency = 64
		s.cfg.Ordering = OrderingConversation
		s.cfg.RequeueMin, s.cfg.RequeueMax = headWaitDelay, headWaitDelay
		startPool(b, bk, f, s)
		poll.Until(b, 10*time.Second, "the order bucket", func() bool { _, err := bk.Settled(context.Background(), "c-0"); return err == nil })
	} else {
		var parts int
		_, _ = fmt.Sscanf(design, "partitions=%d", &parts)
		startPartitioned(b, js, prov, parts, headWaitDelay)
		replies, prefix = "part.replies.*", partRequests+"."
	}

	var mu sync.Mutex
	at := map[string]time.Time{}
	sub, err := bk.Conn().Subscribe(replies, func(m *nats.Msg) {
		var r chat.Reply
		if json.Unmarshal(m.Data, &r) == nil {
			mu.Lock()
			if _, ok := at[r.ID]; !ok {
				at[r.ID] = time.Now()
			}
			mu.Unlock()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	if err := bk.Conn().Flush(); err != nil {
		b.Fatal(err)
	}

	start := time.Now()
	pub := func(conv, id string) {
		// The id in the content: the provider sees only the messages.
		data, _ := json.Marshal(chat.Request{ID: id, Messages: []chat.Message{{Role: chat.RoleUser, Content: "hello from " + id}}})
		if _, err := js.Publish(context.Background(), prefix+conv, data); err != nil {
			b.Fatal(err)
		}
	}
	pub(headWaitConv, headWaitID)
	pub(headWaitConv, "stuck-next")
	for i := range others {
		pub(fmt.Sprintf("c-%d", i), fmt.Sprintf("other-%d", i))
	}
	poll.Until(b, time.Minute, fmt.Sprintf("%d replies", others+2), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(at) >= others+2
	})
	mu.Lock()
	defer mu.Unlock()
	if stuckCalls.Load() < 2 {
		b.Fatalf("the head's provider was called %d times, want a failure then an answer", stuckCalls.Load())
	}
	if !at["stuck-next"].After(at[headWaitID]) {
		b.Fatalf("%s: the waiting head's conversation was answered out of order", design)
	}
	for i := range others {
		if at[fmt.Sprintf("other-%d", i)].After(at[headWaitID]) {
			delayed++
		}
	}
	return delayed, at[headWaitID].Sub(start)
}

// failingHead is an OpenAI-compatible provider over HTTP (a sim behind a
// handler) that answers 503 to the first call for headWaitID and counts
// that request's calls.
func failingHead(b *testing.B) (*providers.Built, *atomic.Int64) {
	b.Helper()
	s := sim.New(sim.Config{})
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if bytes.Contains(body, []byte(headWaitID)) && calls.Add(1) == 1 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		s.ServeHTTP(w, r)
	}))
	b.Cleanup(func() { srv.Close(); _ = s.Close() })
	prov, err := providers.Build(providers.Config{Name: "deepseek", Kind: providers.KindOpenAI, BaseURL: srv.URL + "/v1",
		Model: "sim-1", Timeout: 2 * time.Second}, 64)
	if err != nil {
		b.Fatal(err)
	}
	return prov, &calls
}
