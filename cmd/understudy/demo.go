package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/config"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
	"github.com/understudy-ai/understudy/service"
)

type demoOptions struct {
	duration, outageAt, outageFor, openFor time.Duration
	rate, conversations                    int
	streamShare                            float64
	logLevel, report, store                string
	cluster                                bool
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("understudy demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o demoOptions
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long to send traffic")
	fs.IntVar(&o.rate, "rate", 20, "requests per second")
	fs.IntVar(&o.conversations, "conversations", 8, "conversations the traffic is spread over")
	fs.DurationVar(&o.outageAt, "outage-at", 0, "when deepseek goes down (default: a third of --duration)")
	fs.DurationVar(&o.outageFor, "outage-for", 0, "how long deepseek stays down (default: a third of --duration)")
	fs.DurationVar(&o.openFor, "open-for", 4*time.Second, "breaker.open_for (the SPEC default, 5m, is too long for a demo)")
	fs.Float64Var(&o.streamShare, "stream-share", 0.25, "share of the requests sent with \"stream\": true (0 to 1)")
	fs.StringVar(&o.logLevel, "log-level", "warn", "worker log level (JSON on stderr)")
	fs.StringVar(&o.report, "report", "text", "final replay report: text, json or none")
	fs.StringVar(&o.store, "store", "", "JetStream store directory (default: a temporary one, removed at the end)")
	fs.BoolVar(&o.cluster, "cluster", false, "three clustered NATS nodes and three worker replicas; a node and a replica are lost on the way")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if o.duration <= 0 || o.rate <= 0 || o.conversations <= 0 || o.openFor <= 0 {
		fmt.Fprintln(stderr, "understudy demo: --duration, --rate, --conversations and --open-for must be positive")
		return exitUsage
	}
	if !(o.streamShare >= 0 && o.streamShare <= 1) {
		fmt.Fprintln(stderr, "understudy demo: --stream-share must be 0 to 1")
		return exitUsage
	}
	if o.outageAt == 0 {
		o.outageAt = o.duration / 3
	}
	if o.outageFor == 0 {
		o.outageFor = o.duration / 3
	}
	if o.store == "" {
		dir, err := os.MkdirTemp("", "understudy-demo-")
		if err != nil {
			fmt.Fprintf(stderr, "understudy demo: %v\n", err)
			return exitFailed
		}
		defer os.RemoveAll(dir)
		o.store = dir
	}
	if o.cluster {
		return demoCluster(ctx, o, stdout, stderr)
	}
	return demo(ctx, o, stdout, stderr)
}

// demoOutageMode is deepseek's mode during the outage: a 503 for a request
// that does not stream, an error event after two chunks for one that does
// (the client sees a reset, then the next provider's answer).
const demoOutageMode = sim.ModeErrorEvent

// demoConfig is the configuration the demo runs: embedded NATS serving this
// process only, three simulated providers, a short breaker.
func demoConfig(o demoOptions) config.Config {
	cfg := config.Default()
	cfg.NATS = broker.Config{StoreDir: o.store, Listen: "-"}
	cfg.Metrics.Listen = ""
	cfg.Log.Level = o.logLevel
	cfg.Breaker.ConsecutiveFailures = 3
	cfg.Breaker.OpenFor = o.openFor
	cfg.Retry.Min, cfg.Retry.Max = 50*time.Millisecond, time.Second
	cfg.Worker.RequeueMin, cfg.Worker.RequeueMax = 500*time.Millisecond, 5*time.Second
	// Prices per million tokens (illustrative) for the closing report's cost.
	sims := []struct {
		name, model string
		latency     time.Duration
		price       providers.Price
	}{{"deepseek", "deepseek-v3", 60 * time.Millisecond, providers.Price{PromptPerMTok: 0.27, CompletionPerMTok: 1.10}},
		{"llama", "llama-3.3-70b", 120 * time.Millisecond, providers.Price{PromptPerMTok: 0.59, CompletionPerMTok: 0.79}},
		{"qwen", "qwen-72b", 180 * time.Millisecond, providers.Price{PromptPerMTok: 0.40, CompletionPerMTok: 1.20}}}
	cfg.Providers = nil
	for _, s := range sims {
		cfg.Providers = append(cfg.Providers, providers.Config{Name: s.name, Kind: providers.KindSim, Model: s.model,
			Timeout: 2 * time.Second, Sim: sim.Config{Model: s.model, Latency: s.latency, Jitter: s.latency / 2}, Price: &s.price})
	}
	return cfg
}

func demo(ctx context.Context, o demoOptions, stdout, stderr io.Writer) int {
	cfg := demoConfig(o)
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "understudy demo: %v\n", err)
		return exitFailed
	}
	log := newLogger(stderr, cfg.Log.Level)
	svc, err := service.Start(ctx, cfg, "demo", log)
	if err != nil {
		fmt.Fprintf(stderr, "understudy demo: %v\n", err)
		return exitFailed
	}
	defer svc.Close()
	runCtx, stopWorkers := context.WithCancel(ctx)
	workersDone := make(chan struct{})
	go func() { defer close(workersDone); _ = svc.Run(runCtx) }()
	defer func() { stopWorkers(); <-workersDone }()

	subj := cfg.SubjectScheme()
	tally := newDemoTally()
	sub, err := tally.listen(svc.Broker.Conn(), subj)
	if err != nil {
		fmt.Fprintf(stderr, "understudy demo: %v\n", err)
		return exitFailed
	}
	defer func() { _ = sub.Unsubscribe() }()

	primary := svc.Providers[0].Sim
	fmt.Fprintf(stdout, "understudy demo: %d req/s for %s over %d conversations, %.0f%% streamed; chain deepseek → llama → qwen; deepseek down from %s to %s\n",
		o.rate, o.duration, o.conversations, 100*o.streamShare, o.outageAt, o.outageAt+o.outageFor)
	start := time.Now()
	interval := time.Second / time.Duration(o.rate)
	send := time.NewTicker(interval)
	defer send.Stop()
	status := time.NewTicker(time.Second)
	defer status.Stop()
	n := 0
	outage := false
	for sending := true; sending; {
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout, "interrupted")
			return exitFailed
		case <-status.C:
			fmt.Fprintln(stdout, tally.line(time.Since(start), svc, outage))
		case now := <-send.C:
			el := now.Sub(start)
			if el >= o.duration {
				sending = false
				break
			}
			if down := el >= o.outageAt && el < o.outageAt+o.outageFor; down != outage {
				outage = down
				if down {
					primary.SetMode(demoOutageMode)
					fmt.Fprintf(stdout, "[%5.1fs] >>> deepseek outage begins (503s; streamed answers break off after 2 chunks)\n", el.Seconds())
				} else {
					primary.SetMode(sim.ModeOK)
					fmt.Fprintf(stdout, "[%5.1fs] <<< deepseek is back\n", el.Seconds())
				}
			}
			n++
			stream := demoStreamed(n, o.streamShare)
			if err := demoPublish(ctx, svc.Broker, subj, n, o.conversations, stream); err != nil {
				fmt.Fprintf(stderr, "understudy demo: publish: %v\n", err)
				return exitFailed
			}
			tally.sent(fmt.Sprintf("demo-%06d", n), stream)
		}
	}
	// Wait for the stragglers (queued retries included).
	wait := time.NewTimer(45 * time.Second)
	defer wait.Stop()
	for tally.outstanding() > 0 {
		select {
		case <-ctx.Done():
			return exitFailed
		case <-wait.C:
			fmt.Fprintf(stdout, "gave up waiting: %d requests unanswered\n", tally.outstanding())
			return demoFinish(ctx, o, svc, subj, tally, stdout, stderr)
		case <-status.C:
			fmt.Fprintln(stdout, tally.line(time.Since(start), svc, outage))
		}
	}
	fmt.Fprintln(stdout, tally.line(time.Since(start), svc, outage))
	stopWorkers()
	<-workersDone
	return demoFinish(ctx, o, svc, subj, tally, stdout, stderr)
}

// demoStreamed reports whether request n (from 1) streams: share of them,
// spread evenly.
func demoStreamed(n int, share float64) bool {
	return math.Floor(float64(n)*share) > math.Floor(float64(n-1)*share)
}

func demoPublish(ctx context.Context, b *broker.Broker, subj chat.Subjects, n, convs int, stream bool) error {
	id := fmt.Sprintf("demo-%06d", n)
	conv := fmt.Sprintf("c-%02d", n%convs)
	req := chat.Request{ID: id, Messages: []chat.Message{{Role: chat.RoleSystem, Content: "You are Lucy."},
		{Role: chat.RoleUser, Content: fmt.Sprintf("message number %d, tell me something", n)}},
		Deadline: time.Now().Add(40 * time.Second).UTC(), Metadata: json.RawMessage(`{"source":"demo"}`)}
	if stream {
		req.Stream = &stream
	}
	data, _ := json.Marshal(req)
	hdr := nats.Header{}
	hdr.Set(chat.HeaderMsgID, id)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return b.PublishRaw(pctx, subj.Request(conv), data, hdr)
}

// demoFinish checks, from the CHAT_REPLIES stream itself, that every request
// got exactly one reply, prints the summary and the replay report.
func demoFinish(ctx context.Context, o demoOptions, svc *service.Service, subj chat.Subjects, t *demoTally, stdout, stderr io.Writer) int {
	c, err := demoCheck(ctx, svc.Broker, subj, t)
	if err != nil {
		fmt.Fprintf(stderr, "understudy demo: reading replies: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "\nsummary: sent %d, replies stored %d, unanswered %d, answered more than once %d; served by %s; failed %d; hits deepseek %d llama %d qwen %d\n",
		c.sent, c.stored, c.missing, c.doubled, t.byProviderString(), t.failedCount(),
		svc.Providers[0].Sim.Hits(), svc.Providers[1].Sim.Hits(), svc.Providers[2].Sim.Hits())
	return demoVerdict(ctx, o, svc.Broker, subj, c, stdout, stderr)
}

// demoCounts is what the replies stream says of the requests sent.
type demoCounts struct {
	sent, stored, missing, doubled int
	// doubledIDs names the ids answered more than once (sorted, at most 5).
	doubledIDs []string
}

// demoCheck counts, from the CHAT_REPLIES stream itself, the replies to the
// requests of t. The scan may be served by a replica still catching up (a
// restarted node): a reply missing is looked for again, a few times.
func demoCheck(ctx context.Context, b *broker.Broker, subj chat.Subjects, t *demoTally) (demoCounts, error) {
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	b.FlushEvents(sctx) // the report reads them
	t.mu.Lock()
	live := make(map[string]int, len(t.ids))
	for id, n := range t.ids {
		live[id] = n
	}
	t.mu.Unlock()
	var c demoCounts
	for try := 0; ; try++ {
		stored := map[string]int{}
		err := b.Scan(sctx, subj.Stream(chat.KindReplies), subj.AllReplies(), time.Time{}, time.Time{}, func(s *broker.Stored) error {
			stored[s.Header.Get(chat.HeaderMsgID)]++
			return nil
		})
		if err != nil {
			return c, err
		}
		// Exactly once, twice checked: in the stream (which would drop a
		// second publish of an id) and as heard live on the reply subjects
		// (which would not: a chat API listening there would have seen it).
		c = demoCounts{sent: len(live), stored: len(stored)}
		for id, heard := range live {
			switch {
			case stored[id] == 0:
				c.missing++
			case stored[id] > 1 || heard > 1:
				c.doubled++
				c.doubledIDs = append(c.doubledIDs, fmt.Sprintf("%s (stored %d, heard live %d)", id, stored[id], heard))
			}
		}
		sort.Strings(c.doubledIDs)
		c.doubledIDs = c.doubledIDs[:min(len(c.doubledIDs), 5)]
		if c.missing == 0 || try == 4 {
			return c, nil
		}
		select {
		case <-sctx.Done():
			return c, sctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// demoVerdict prints the replay report and the exactly-once verdict.
func demoVerdict(ctx context.Context, o demoOptions, b *broker.Broker, subj chat.Subjects, c demoCounts, stdout, stderr io.Writer) int {
	if o.report != "none" {
		if err := demoReport(ctx, b, subj, demoConfig(o).Providers, o.report, stdout); err != nil {
			fmt.Fprintf(stderr, "understudy demo: replay report: %v\n", err)
			return exitFailed
		}
	}
	if c.missing > 0 || c.doubled > 0 || c.sent == 0 {
		if c.doubled > 0 {
			fmt.Fprintf(stdout, "answered more than once: %s\n", strings.Join(c.doubledIDs, ", "))
		}
		fmt.Fprintln(stdout, "FAIL: not every request was answered exactly once")
		return exitFailed
	}
	fmt.Fprintln(stdout, "OK: every request was answered exactly once")
	return exitOK
}

// demoTally follows the run live from the replies subject.
type demoTally struct {
	mu         sync.Mutex
	ids        map[string]int // id → different replies heard live
	first      map[string]string
	byProvider map[string]int
	failed     int
	streamed   int
	// resets holds the resets heard live, by request id and seq (a chunk
	// published again is heard again).
	resets map[string]struct{}
}

// demoSubscription is the tally's subscriptions: the replies and the
// streamed chunks.
type demoSubscription []*nats.Subscription

func (s demoSubscription) Unsubscribe() error {
	var err error
	for _, sub := range s {
		err = errors.Join(err, sub.Unsubscribe())
	}
	return err
}

// listen follows the replies heard live on every reply subject, and the
// resets on every stream subject.
func (t *demoTally) listen(nc *nats.Conn, subj chat.Subjects) (demoSubscription, error) {
	replies, err := nc.Subscribe(subj.AllReplies(), func(m *nats.Msg) {
		var r chat.Reply
		if json.Unmarshal(m.Data, &r) == nil {
			t.replied(&r, m.Data)
		}
	})
	if err != nil {
		return nil, err
	}
	chunks, err := nc.Subscribe(subj.AllChunks(), func(m *nats.Msg) {
		var c chat.Chunk
		if json.Unmarshal(m.Data, &c) == nil && c.Reset {
			t.reset(&c)
		}
	})
	if err != nil {
		_ = replies.Unsubscribe()
		return nil, err
	}
	return demoSubscription{replies, chunks}, nil
}

func newDemoTally() *demoTally {
	return &demoTally{ids: map[string]int{}, first: map[string]string{}, byProvider: map[string]int{}, resets: map[string]struct{}{}}
}

func (t *demoTally) sent(id string, stream bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.ids[id]; !ok {
		t.ids[id] = 0
		if stream {
			t.streamed++
		}
	}
}

func (t *demoTally) reset(c *chat.Chunk) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.resets[c.ID+"/"+strconv.FormatUint(c.Seq, 10)] = struct{}{}
}

// replied counts a reply heard live. A publish repeated after a lost
// acknowledgement is heard again, byte for byte: a listener keeps the first
// per id, so only a different answer counts twice.
func (t *demoTally) replied(r *chat.Reply, raw []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if first, ok := t.first[r.ID]; ok && first == string(raw) {
		return
	}
	if _, ok := t.first[r.ID]; !ok {
		t.first[r.ID] = string(raw)
	}
	t.ids[r.ID]++
	if t.ids[r.ID] > 1 {
		return
	}
	if r.Status == chat.StatusOK {
		t.byProvider[r.Provider]++
	} else {
		t.failed++
	}
}

func (t *demoTally) outstanding() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.ids {
		if c == 0 {
			n++
		}
	}
	return n
}

func (t *demoTally) failedCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *demoTally) byProviderString() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	names := make([]string, 0, len(t.byProvider))
	for n := range t.byProvider {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %d", n, t.byProvider[n]))
	}
	return strings.Join(parts, ", ")
}

func (t *demoTally) line(el time.Duration, svc *service.Service, outage bool) string {
	t.mu.Lock()
	sent, answered := len(t.ids), 0
	for _, c := range t.ids {
		if c > 0 {
			answered++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[%5.1fs] sent %4d  answered %4d  waiting %3d  failed %d | streamed %d  resets %d | served:",
		el.Seconds(), sent, answered, sent-answered, t.failed, t.streamed, len(t.resets))
	for _, l := range svc.Chain.Links() {
		fmt.Fprintf(&b, " %s %d", l.Provider.Name(), t.byProvider[l.Provider.Name()])
	}
	t.mu.Unlock()
	b.WriteString(" | breakers:")
	for _, l := range svc.Chain.Links() {
		fmt.Fprintf(&b, " %s=%s", l.Provider.Name(), l.Breaker.State())
	}
	if outage {
		b.WriteString(" | deepseek DOWN")
	}
	return b.String()
}
