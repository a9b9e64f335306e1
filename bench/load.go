package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/providers/sim"
)

// conversations the requests are spread over.
const conversations = 64

// idMarker starts the system message of every bench request; the provider
// wrapper finds the request's id after it.
const idMarker = "bench request "

// traffic is the requests of one measurement (a scenario at one worker
// count, or the baseline): their send and answer times, indexed by the
// number at the end of their id, and split into consecutive phases.
type traffic struct {
	prefix  string // subject prefix
	tag     string // ids are tag-<n>
	payload string // the user message

	sent     []atomic.Int64 // unix ns of the publish
	done     []atomic.Int64 // unix ns of the reply heard (0: none yet)
	provider []atomic.Int64 // ns the in-process providers spent on it
	attempts []atomic.Int64 // ms the reply's attempts took, as the worker saw them
	bounds   []int          // phase p is [bounds[p], bounds[p+1])
	answered []atomic.Int64 // per phase
	failed   atomic.Int64   // replies whose status is not ok
	pubErr   atomic.Int64
	// inRow, when not 0, puts the load phase's requests in conversations
	// of inRow requests each, published in a row ("o-0" first); the other
	// phases keep the round robin over conversations.
	inRow int

	// Streamed requests only (stream is set; the slices are nil otherwise).
	stream        bool
	firstChunk    []atomic.Int64 // unix ns of the first chunk heard with text (0: none yet)
	providerFirst []atomic.Int64 // ns from the provider's handler start to its first chunk flushed
	chunks        []atomic.Int64 // per phase: stream messages heard (text, resets, done)

	slots chan struct{} // the closed loop's window: one token per request unanswered
}

// phases of a measurement, in order.
const (
	phaseWarm = iota
	phaseLoad
	phaseCool
	phasePaced
	phases
)

// newTraffic sizes the phases; window is how many requests the closed loop
// keeps unanswered.
func newTraffic(prefix, tag string, payload, window, warm, load, cool, paced int) *traffic {
	n := warm + load + cool + paced
	t := &traffic{prefix: prefix, tag: tag, payload: words(payload), slots: make(chan struct{}, max(window, 1)),
		sent: make([]atomic.Int64, n), done: make([]atomic.Int64, n),
		provider: make([]atomic.Int64, n), attempts: make([]atomic.Int64, n),
		bounds: []int{0, warm, warm + load, warm + load + cool, n}, answered: make([]atomic.Int64, phases)}
	return t
}

// newSteadyTraffic sizes the phases of a steady closed loop (steadyLoop)
// of load requests kept window unanswered: a warm-up of twice the window
// at least (a window published at once on idle workers is a burst, not a
// steady load), a cool-down of one window, and half as many as load for
// the latencies.
func newSteadyTraffic(prefix string, payload, window, load int) *traffic {
	return newTraffic(prefix, prefix, payload, window, max(2*window, min(200, load/20)), load, window, load/2)
}

// streamed makes every request of t ask for a streamed answer, timed to its
// first chunk.
func (t *traffic) streamed() {
	n := len(t.sent)
	t.stream = true
	t.firstChunk, t.providerFirst, t.chunks = make([]atomic.Int64, n), make([]atomic.Int64, n), make([]atomic.Int64, phases)
}

// streamTraffic makes t's requests ask for streamed answers and listens to
// their chunks: it returns the streaming figures to fill, the answering
// provider's settings, and the end of the listening.
func (r *runner) streamTraffic(t *traffic) (*StreamResult, sim.Config, func(), error) {
	t.streamed()
	chunks, err := t.listenChunks(r.nc)
	if err != nil {
		return nil, sim.Config{}, nil, err
	}
	st := &StreamResult{Words: streamWords, ChunkDelayMS: float64(streamChunkDelay) / float64(time.Millisecond)}
	return st, sim.Config{Words: streamWords, ChunkDelay: streamChunkDelay}, func() { _ = chunks.Unsubscribe() }, nil
}

// words is a user message of n bytes of ordinary words.
func words(n int) string {
	const text = "the quick brown fox jumps over the lazy dog while the provider keeps talking "
	var b strings.Builder
	for b.Len() < n {
		b.WriteString(text)
	}
	return b.String()[:n]
}

func (t *traffic) id(n int) string { return t.tag + "-" + strconv.Itoa(n) }

// index is the number of id, when id is one of t's.
func (t *traffic) index(id string) (int, bool) {
	rest, ok := strings.CutPrefix(id, t.tag+"-")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n >= 0 && n < len(t.sent)
}

func (t *traffic) phaseOf(n int) int {
	for p := phases - 1; p > 0; p-- {
		if n >= t.bounds[p] {
			return p
		}
	}
	return 0
}

// request is the JSON of request n, as a chat API publishes it.
func (t *traffic) request(n int) []byte {
	id := t.id(n)
	b := make([]byte, 0, len(t.payload)+2*len(id)+128)
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","messages":[{"role":"system","content":"`+idMarker...)
	b = append(b, id...)
	b = append(b, `"},{"role":"user","content":"`...)
	b = append(b, t.payload...)
	if t.stream {
		return append(b, `"}],"stream":true}`...)
	}
	return append(b, `"}]}`...)
}

func (t *traffic) conversation(n int) string {
	if t.inRow > 0 && t.phaseOf(n) == phaseLoad {
		return "o-" + strconv.Itoa((n-t.bounds[phaseLoad])/t.inRow)
	}
	return "c-" + strconv.Itoa(n%conversations)
}

// publish sends request n asynchronously with its id as Nats-Msg-Id.
func (t *traffic) publish(js jetstream.JetStream, n int) {
	m := &nats.Msg{Subject: t.prefix + ".requests." + t.conversation(n), Data: t.request(n), Header: nats.Header{}}
	m.Header.Set("Nats-Msg-Id", t.id(n))
	t.sent[n].Store(time.Now().UnixNano())
	if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
		t.pubErr.Add(1)
	}
}

// benchReply is what the bench reads of a reply.
type benchReply struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Attempts []struct {
		LatencyMS int64 `json:"latency_ms"`
	} `json:"attempts"`
}

// listen counts the replies heard on the reply subjects (the first per id).
func (t *traffic) listen(nc *nats.Conn) (*nats.Subscription, error) {
	sub, err := nc.Subscribe(t.prefix+".replies.*", func(m *nats.Msg) {
		now := time.Now().UnixNano()
		var r benchReply
		if json.Unmarshal(m.Data, &r) != nil {
			return
		}
		n, ok := t.index(r.ID)
		if !ok || !t.done[n].CompareAndSwap(0, now) {
			return
		}
		var ms int64
		for _, a := range r.Attempts {
			ms += a.LatencyMS
		}
		t.attempts[n].Store(ms)
		if r.Status != "ok" {
			t.failed.Add(1)
		}
		t.answered[t.phaseOf(n)].Add(1)
		select {
		case <-t.slots:
		default:
		}
	})
	if err != nil {
		return nil, err
	}
	_ = sub.SetPendingLimits(-1, -1)
	return sub, nc.Flush()
}

// benchChunk is what the bench reads of a streamed chunk.
type benchChunk struct {
	ID    string `json:"id"`
	Delta string `json:"delta"`
}

// listenChunks counts the chunks heard on the stream subjects and notes when
// each request's first chunk with text came.
func (t *traffic) listenChunks(nc *nats.Conn) (*nats.Subscription, error) {
	sub, err := nc.Subscribe(t.prefix+".stream.*", func(m *nats.Msg) {
		now := time.Now().UnixNano()
		var c benchChunk
		if json.Unmarshal(m.Data, &c) != nil {
			return
		}
		n, ok := t.index(c.ID)
		if !ok {
			return
		}
		t.chunks[t.phaseOf(n)].Add(1)
		if c.Delta != "" {
			t.firstChunk[n].CompareAndSwap(0, now)
		}
	})
	if err != nil {
		return nil, err
	}
	_ = sub.SetPendingLimits(-1, -1)
	return sub, nc.Flush()
}

// watch is called while a phase waits for its replies: answered so far,
// out of total.
type watch func(answered, total int)

// closedLoop sends the requests of phase p keeping the window's worth of
// them unanswered, and waits for every reply.
func (t *traffic) closedLoop(ctx context.Context, js jetstream.JetStream, p int, w watch) error {
	for n := t.bounds[p]; n < t.bounds[p+1]; n++ {
		select {
		case t.slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		t.publish(js, n)
		if n%256 == 0 && w != nil {
			w(int(t.answered[p].Load()), t.size(p))
		}
	}
	return t.wait(ctx, p, w)
}

// steady is the measured part of a steady closed loop: from the load
// phase's first publish to its last reply heard.
type steady struct {
	took time.Duration
	// completed is the replies heard in took, whatever their phase (the
	// warm-up's last, the cool-down's first): at a steady state, the
	// loop's rate is completed / took.
	completed int
	// measured is the replies heard from begin's call to end's: what the
	// usage read by the two covers.
	measured int
	// slowest is the load phase's longest publish → reply.
	slowest time.Duration
}

// steadyLoop sends the warm-up, load and cool-down requests in one closed
// loop keeping the window's worth unanswered, so that the load phase runs
// as a steady load would, full at both ends: the warm-up's last requests
// are still in flight when it starts, the cool-down's first when it ends.
// begin is called as the load's first request is published, end once its
// last reply is heard (within steadyPoll). Every reply is waited for.
func (t *traffic) steadyLoop(ctx context.Context, js jetstream.JetStream, w watch, begin, end func()) (steady, error) {
	var start, stop time.Time
	ended := make(chan struct{})
	for n := t.bounds[phaseWarm]; n < t.bounds[phaseCool+1]; n++ {
		select {
		case t.slots <- struct{}{}:
		case <-ctx.Done():
			return steady{}, ctx.Err()
		}
		if n == t.bounds[phaseLoad] {
			begin()
			start = time.Now()
			go func() {
				defer close(ended)
				tick := time.NewTicker(steadyPoll)
				defer tick.Stop()
				for int(t.answered[phaseLoad].Load()) < t.size(phaseLoad) {
					select {
					case <-tick.C:
					case <-ctx.Done():
						return
					}
				}
				end()
				stop = time.Now()
			}()
		}
		t.publish(js, n)
		if n%256 == 0 && w != nil {
			w(int(t.answered[phaseLoad].Load()), t.size(phaseLoad))
		}
	}
	for _, p := range []int{phaseWarm, phaseLoad, phaseCool} {
		if err := t.wait(ctx, p, w); err != nil {
			return steady{}, err
		}
	}
	<-ended
	if stop.IsZero() {
		return steady{}, ctx.Err()
	}
	last := t.lastDone(phaseLoad)
	st := steady{took: time.Duration(last - start.UnixNano())}
	for n := t.bounds[phaseLoad]; n < t.bounds[phaseLoad+1]; n++ {
		st.slowest = max(st.slowest, time.Duration(t.done[n].Load()-t.sent[n].Load()))
	}
	for n := t.bounds[phaseWarm]; n < t.bounds[phaseCool+1]; n++ {
		d := t.done[n].Load()
		if d > start.UnixNano() && d <= last {
			st.completed++
		}
		if d > start.UnixNano() && d <= stop.UnixNano() {
			st.measured++
		}
	}
	return st, nil
}

// steadyPoll is how often steadyLoop looks whether the load phase is
// answered.
const steadyPoll = 2 * time.Millisecond

// paced sends the requests of phase p at rate per second, whatever the
// replies do, and waits for every reply.
func (t *traffic) paced(ctx context.Context, js jetstream.JetStream, p int, rate float64, w watch) error {
	start := time.Now()
	every := time.Duration(float64(time.Second) / rate)
	for i, n := 0, t.bounds[p]; n < t.bounds[p+1]; i, n = i+1, n+1 {
		if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		t.publish(js, n)
		if n%256 == 0 && w != nil {
			w(int(t.answered[p].Load()), t.bounds[p+1]-t.bounds[p])
		}
	}
	return t.wait(ctx, p, w)
}

// publishAll sends the requests of phase p as fast as the server takes
// them, and waits for every publish to be acknowledged.
func (t *traffic) publishAll(ctx context.Context, js jetstream.JetStream, p int) error {
	for n := t.bounds[p]; n < t.bounds[p+1]; n++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t.publish(js, n)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("publishes not acknowledged within 5 minutes")
	}
	if e := t.pubErr.Load(); e > 0 {
		return fmt.Errorf("%d publishes failed", e)
	}
	return nil
}

// burst publishes the requests of phase p as fast as the server takes
// them and waits for every reply. It returns the time from the first
// publish to the last reply.
func (t *traffic) burst(ctx context.Context, js jetstream.JetStream, p int, w watch) (time.Duration, error) {
	start := time.Now()
	if err := t.publishAll(ctx, js, p); err != nil {
		return 0, err
	}
	if err := t.wait(ctx, p, w); err != nil {
		return 0, err
	}
	return time.Duration(t.lastDone(p) - start.UnixNano()), nil
}

// stallLimit: a phase fails when no reply came for this long.
const stallLimit = time.Minute

// wait waits until every request of phase p is answered, failing when no
// reply comes for stallLimit.
func (t *traffic) wait(ctx context.Context, p int, w watch) error {
	total := t.bounds[p+1] - t.bounds[p]
	last, lastAt := -1, time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got := int(t.answered[p].Load())
		if w != nil {
			w(got, total)
		}
		if got >= total {
			return nil
		}
		if got != last {
			last, lastAt = got, time.Now()
		} else if time.Since(lastAt) > stallLimit {
			return fmt.Errorf("stalled: %d of %d requests answered, none for %s (%d publishes failed)", got, total, stallLimit, t.pubErr.Load())
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// size is how many requests phase p has.
func (t *traffic) size(p int) int { return t.bounds[p+1] - t.bounds[p] }

// streamFigures fills res.Stream (when set): chunks of the throughput
// phase's requests, per request, per second at res.RPS and per second of a
// worker core (from res.CPU.Worker, when measured), and the latency
// phase's first chunks.
func (t *traffic) streamFigures(res *Result) {
	st := res.Stream
	if st == nil {
		return
	}
	// Counted now, the throughput phase's stragglers heard too.
	st.Requests, st.Chunks, st.Streamed = t.size(phaseLoad), int(t.chunks[phaseLoad].Load()), t.streamedIn(phaseLoad)
	st.ChunksPerRequest = float64(st.Chunks) / float64(st.Requests)
	st.ChunksPerSecond = st.ChunksPerRequest * res.RPS
	if w := res.CPU.Worker; w != nil && *w > 0 {
		st.ChunksPerCoreSecond = ptr(st.ChunksPerRequest * 1000 / *w)
	}
	ttfc, prov, ovh := t.firstChunks(phasePaced)
	st.FirstChunkMS, st.ProviderFirstChunkMS, st.FirstChunkOverheadMS = quantiles(ttfc), quantiles(prov), quantiles(ovh)
}

// firstDone and lastDone are the earliest and latest reply of phase p
// (unix ns).
func (t *traffic) firstDone(p int) int64 {
	first := int64(0)
	for n := t.bounds[p]; n < t.bounds[p+1]; n++ {
		if d := t.done[n].Load(); d != 0 && (first == 0 || d < first) {
			first = d
		}
	}
	return first
}

func (t *traffic) lastDone(p int) int64 {
	last := int64(0)
	for n := t.bounds[p]; n < t.bounds[p+1]; n++ {
		last = max(last, t.done[n].Load())
	}
	return last
}

// latencies are the end-to-end latencies of phase p's answered requests,
// and their overheads: end to end minus the provider's own time (measured
// by the in-process providers; when none was measured, the attempts' time
// as the worker reported it).
func (t *traffic) latencies(p int) (e2e, overhead []time.Duration) {
	for n := t.bounds[p]; n < t.bounds[p+1]; n++ {
		d := t.done[n].Load()
		if d == 0 {
			continue
		}
		total := time.Duration(d - t.sent[n].Load())
		prov := time.Duration(t.provider[n].Load())
		if prov == 0 {
			prov = time.Duration(t.attempts[n].Load()) * time.Millisecond
		}
		e2e = append(e2e, total)
		overhead = append(overhead, total-prov)
	}
	slices.Sort(e2e)
	slices.Sort(overhead)
	return e2e, overhead
}

// firstChunks are the times to the first chunk of phase p's streamed
// requests (publish → first chunk with text heard), the provider's own
// times to its first chunk (its handler's start to the chunk flushed), and
// the overheads: the first minus the second, per request. Requests without
// both times are left out.
func (t *traffic) firstChunks(p int) (ttfc, prov, overhead []time.Duration) {
	for n := t.bounds[p]; n < t.bounds[p+1]; n++ {
		first, own := t.firstChunk[n].Load(), time.Duration(t.providerFirst[n].Load())
		if first == 0 || own == 0 {
			continue
		}
		d := time.Duration(first - t.sent[n].Load())
		ttfc, prov, overhead = append(ttfc, d), append(prov, own), append(overhead, d-own)
	}
	slices.Sort(ttfc)
	slices.Sort(prov)
	slices.Sort(overhead)
	return ttfc, prov, overhead
}

// streamedIn is how many requests of phase p had a chunk with text heard.
func (t *traffic) streamedIn(p int) int {
	n := 0
	for i := t.bounds[p]; i < t.bounds[p+1]; i++ {
		if t.firstChunk[i].Load() != 0 {
			n++
		}
	}
	return n
}

// answeredAll is how many requests of every phase were answered, and sent.
func (t *traffic) answeredAll() (answered, sent int) {
	for p := range phases {
		answered += int(t.answered[p].Load())
	}
	for n := range t.sent {
		if t.sent[n].Load() != 0 {
			sent++
		}
	}
	return answered, sent
}

// provider is a simulated provider served over real HTTP by the bench,
// timing its own work per request.
type provider struct {
	sim *sim.Server
	srv *http.Server
	url string
}

// startProvider serves a sim with cfg in mode on a loopback port; the time
// each request spends in it is added to t's provider time of that request.
func startProvider(t *traffic, cfg sim.Config, mode sim.Mode) (*provider, error) {
	s := sim.New(cfg)
	s.SetMode(mode)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &provider{sim: s, url: "http://" + ln.Addr().String() + "/v1"}
	p.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		n, ok := t.indexIn(body)
		if ok && t.stream {
			fw := &firstFlush{ResponseWriter: w}
			w = fw
			defer func() {
				if !fw.at.IsZero() {
					t.providerFirst[n].CompareAndSwap(0, int64(fw.at.Sub(start)))
				}
			}()
		}
		s.ServeHTTP(w, r)
		if ok {
			t.provider[n].Add(int64(time.Since(start)))
		}
	})}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// firstFlush notes when the first body bytes written were flushed: a
// streaming provider's first chunk on the wire.
type firstFlush struct {
	http.ResponseWriter
	wrote bool
	at    time.Time
}

func (f *firstFlush) Write(b []byte) (int, error) {
	f.wrote = f.wrote || len(b) > 0
	return f.ResponseWriter.Write(b)
}

// FlushError is what http.ResponseController calls to flush.
func (f *firstFlush) FlushError() error {
	err := http.NewResponseController(f.ResponseWriter).Flush()
	if f.wrote && f.at.IsZero() {
		f.at = time.Now()
	}
	return err
}

// Unwrap gives http.ResponseController the writer underneath (to hijack).
func (f *firstFlush) Unwrap() http.ResponseWriter { return f.ResponseWriter }

// indexIn finds the request's number in a provider request's body.
func (t *traffic) indexIn(body []byte) (int, bool) {
	marker := idMarker + t.tag + "-"
	i := bytes.Index(body, []byte(marker))
	if i < 0 {
		return 0, false
	}
	rest := body[i+len(marker):]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	n, err := strconv.Atoi(string(rest[:j]))
	return n, err == nil && n < len(t.sent)
}

func (p *provider) close() {
	_ = p.sim.Close()
	_ = p.srv.Close()
}
