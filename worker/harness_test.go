package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The nats-server embedded in each test leaves a few global timers.
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*Server).startGoRoutine"),
		goleak.IgnoreAnyFunction("github.com/nats-io/nats-server/v2/server.(*Server).ReadyForConnections"),
		// A pool's last pull, which nats.go ends by itself up to a second
		// after its MaxWait even once the connection has closed.
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*pullConsumer).fetch.func1"),
	)
}

var subj, _ = chat.NewSubjects("chat")

// newBroker starts an embedded JetStream server in a temporary store and
// sets up the topology.
func newBroker(t testing.TB, topo broker.Topology) *broker.Broker {
	t.Helper()
	ctx := context.Background()
	b, err := broker.Connect(ctx, broker.Config{StoreDir: t.TempDir(), Listen: "-"}, "test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	topo.Subjects = subj
	if topo.AckWait == 0 {
		topo.AckWait = 5 * time.Second
	}
	if err := b.Setup(ctx, topo); err != nil {
		t.Fatal(err)
	}
	return b
}

// fleet is a set of simulated providers in chain order.
type fleet struct {
	names []string
	sims  []*sim.Server
	built []*providers.Built
}

func newFleet(t testing.TB, names ...string) *fleet {
	t.Helper()
	f := &fleet{names: names}
	for _, n := range names {
		b, err := providers.Build(providers.Config{Name: n, Kind: providers.KindSim, Model: "model-" + n, Timeout: 2 * time.Second}, 16)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		f.built = append(f.built, b)
		f.sims = append(f.sims, b.Sim)
	}
	return f
}

func (f *fleet) sim(name string) *sim.Server {
	for i, n := range f.names {
		if n == name {
			return f.sims[i]
		}
	}
	panic("no provider " + name)
}

// setup is what a test pool is built from.
type setup struct {
	cfg     Config
	retry   RetryConfig
	breaker breaker.Config
	timeout map[string]time.Duration
	// id names the pool (default: the test's name); two pools of one test
	// need different ones.
	id string
}

func defaultSetup() setup {
	cfg := DefaultConfig()
	cfg.Concurrency = 16
	cfg.AckWait = 5 * time.Second
	cfg.RequeueMin, cfg.RequeueMax = 100*time.Millisecond, 400*time.Millisecond
	cfg.ShutdownGrace = 5 * time.Second
	return setup{cfg: cfg, retry: RetryConfig{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond, Factor: 2, Jitter: true},
		breaker: breaker.Config{ConsecutiveFailures: 3, OpenFor: time.Hour}}
}

// keepCalling is the default setup with a breaker that practically never
// opens, for tests that want a failing provider called on every ladder.
func keepCalling() setup {
	s := defaultSetup()
	s.breaker.ConsecutiveFailures = 1000
	return s
}

// running is a pool working in the background.
type running struct {
	pool  *Pool
	chain *Chain
	stop  func()
}

// startPool runs a pool over bk and the fleet's providers until the test
// ends (or stop is called); breaker transitions are recorded by the pool.
func startPool(t testing.TB, bk Broker, f *fleet, s setup) *running {
	t.Helper()
	var mu sync.Mutex
	var pool *Pool
	var links []*Link
	for _, b := range f.built {
		br := breaker.New(b.Name(), s.breaker, func(tr breaker.Transition) {
			mu.Lock()
			p := pool
			mu.Unlock()
			if p != nil {
				p.BreakerChanged(tr)
			}
		})
		links = append(links, &Link{Provider: b, Timeout: linkTimeout(b, s), Breaker: br})
	}
	mu.Lock()
	defer mu.Unlock()
	r := runPool(t, bk, NewChain(links, s.retry), s)
	pool = r.pool
	return r
}

// testLinks is the fleet as a chain's links, with breakers of their own.
func testLinks(f *fleet, s setup) []*Link {
	var links []*Link
	for _, b := range f.built {
		links = append(links, &Link{Provider: b, Timeout: linkTimeout(b, s), Breaker: newTestBreaker(b.Name(), s)})
	}
	return links
}

func linkTimeout(b *providers.Built, s setup) time.Duration {
	if d, ok := s.timeout[b.Name()]; ok {
		return d
	}
	return b.Timeout
}

func newTestBreaker(name string, s setup) *breaker.Breaker { return breaker.New(name, s.breaker, nil) }

// runPool runs a pool over bk and chain until the test ends (or stop is
// called).
func runPool(t testing.TB, bk Broker, chain *Chain, s setup) *running {
	t.Helper()
	id := s.id
	if id == "" {
		id = t.Name()
	}
	pool := New(Options{Broker: bk, Chain: chain, Config: s.cfg, Log: testLog(), ID: id})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = pool.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return &running{pool: pool, chain: chain, stop: stop}
}

// publish stores a request; msgID "" publishes without Nats-Msg-Id.
func publish(t *testing.T, b *broker.Broker, conv string, req any, msgID string) {
	t.Helper()
	var data []byte
	switch r := req.(type) {
	case []byte:
		data = r
	case string:
		data = []byte(r)
	default:
		var err error
		if data, err = json.Marshal(req); err != nil {
			t.Fatal(err)
		}
	}
	hdr := nats.Header{}
	if msgID != "" {
		hdr.Set(chat.HeaderMsgID, msgID)
	}
	if err := b.PublishRaw(context.Background(), subj.Request(conv), data, hdr); err != nil {
		t.Fatal(err)
	}
}

func request(id string) chat.Request {
	return chat.Request{ID: id, Messages: []chat.Message{{Role: chat.RoleUser, Content: "hello there"}}}
}

// storedReply is a reply read back from CHAT_REPLIES.
type storedReply struct {
	chat.Reply
	Subject string
	MsgID   string
}

// replies reads every stored reply.
func replies(t *testing.T, b *broker.Broker) []storedReply {
	t.Helper()
	var out []storedReply
	err := b.Scan(context.Background(), subj.Stream(chat.KindReplies), subj.AllReplies(), time.Time{}, time.Time{}, func(s *broker.Stored) error {
		var r storedReply
		if err := json.Unmarshal(s.Data, &r.Reply); err != nil {
			return fmt.Errorf("reply %q: %w", s.Data, err)
		}
		r.Subject, r.MsgID = s.Subject, s.Header.Get(chat.HeaderMsgID)
		out = append(out, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitReplies polls until n replies are stored and returns them by id.
func waitReplies(t *testing.T, b *broker.Broker, n int) map[string]storedReply {
	t.Helper()
	var got []storedReply
	poll.Until(t, 20*time.Second, fmt.Sprintf("%d replies", n), func() bool {
		got = replies(t, b)
		return len(got) >= n
	})
	byID := map[string]storedReply{}
	for _, r := range got {
		if _, dup := byID[r.MsgID]; dup {
			t.Fatalf("two replies stored for %q", r.MsgID)
		}
		byID[r.MsgID] = r
	}
	if len(got) != n {
		t.Fatalf("%d replies stored, want %d", len(got), n)
	}
	return byID
}

// stored reads every message of a stream kind matching filter.
func stored(t *testing.T, b *broker.Broker, kind, filter string) []*broker.Stored {
	t.Helper()
	var out []*broker.Stored
	if err := b.Scan(context.Background(), subj.Stream(kind), filter, time.Time{}, time.Time{}, func(s *broker.Stored) error {
		out = append(out, s)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// events reads the stored events of one type.
func events(t *testing.T, b *broker.Broker, typ chat.EventType) []chat.Event {
	t.Helper()
	var out []chat.Event
	for _, s := range stored(t, b, chat.KindEvents, subj.Prefix()+".events."+string(typ)+".>") {
		var ev chat.Event
		if err := json.Unmarshal(s.Data, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// claimedBy reports whether worker has claimed a request id (its claim
// is kept, lapsed, after the answer).
func claimedBy(t *testing.T, b *broker.Broker, worker string) bool {
	t.Helper()
	bucket := subj.Stream(chat.KindClaims)
	found := false
	err := b.Scan(context.Background(), "KV_"+bucket, "$KV."+bucket+".>", time.Time{}, time.Time{}, func(s *broker.Stored) error {
		var v struct {
			Worker string `json:"worker"`
		}
		if json.Unmarshal(s.Data, &v) == nil && v.Worker == worker {
			found = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func testLog() zerolog.Logger {
	if os.Getenv("UNDERSTUDY_TEST_LOG") != "" {
		return zerolog.New(os.Stderr).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

// replyTo is the reply to request id among replies keyed by message id (a
// refused request's reply is stored under invalid-<seq>).
func replyTo(t *testing.T, replies map[string]storedReply, id string) storedReply {
	t.Helper()
	for _, r := range replies {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("no reply to %q among %d", id, len(replies))
	return storedReply{}
}
