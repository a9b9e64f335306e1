package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers/sim"
)

// slowLatency is the slow scenario's provider latency.
const slowLatency = time.Second

// The stream scenario's provider streams streamWords chunks of text,
// streamChunkDelay apart.
const (
	streamWords      = 20
	streamChunkDelay = time.Millisecond
)

// runner holds what every measurement of a run shares.
type runner struct {
	o       Options
	url     string
	natsPID int // 0: the server's usage is not measured
	nc      *nats.Conn
	js      jetstream.JetStream
	runID   string
	dir     string // the workers' configuration files
	prog    *progress
	// zeroRate is the zero scenario's latency rate by worker count: open
	// measures its latency at the same rate, so the two compare.
	zeroRate map[int]float64
}

// Run measures the baseline and every scenario of o at every worker count.
func Run(ctx context.Context, o Options) (*Report, error) {
	o.setDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	r := &runner{o: o, url: o.NATSURL, natsPID: o.NATSPID, prog: &progress{w: o.Progress}, zeroRate: map[int]float64{}}
	defer r.prog.end()
	rep := &Report{
		Machine: Machine{CPUs: runtime.NumCPU(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, GoVersion: runtime.Version(),
			NATS: o.NATSURL},
		Settings: Settings{Scenarios: o.Scenarios, Workers: o.Workers, Concurrency: o.Concurrency, Inflight: o.Inflight,
			Requests: o.Requests, Backlog: o.Backlog, Ordered: o.Ordered, Payload: o.Payload, Rate: o.Rate, Providers: "in-process simulated providers over HTTP"},
	}
	if o.ProviderURL != "" {
		rep.Settings.Providers = "answers from " + o.ProviderURL + "; failing primaries in-process"
	}
	if r.url == "" {
		child, err := startNATS(o.Binary)
		if err != nil {
			return nil, err
		}
		defer child.stop()
		r.url, r.natsPID = child.url, child.pid()
		rep.Machine.NATS = "child process of the bench (embedded nats-server library)"
		rep.Machine.NATSVersion = NATSVersion
	}
	rep.CPUIncludes = cpuIncludes(o, r.natsPID != 0)
	var err error
	if r.dir, err = os.MkdirTemp("", "understudy-bench-"); err != nil {
		return nil, err
	}
	defer os.RemoveAll(r.dir)
	r.nc, err = nats.Connect(r.url, nats.Name("understudy-bench"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", r.url, err)
	}
	defer r.nc.Close()
	if o.NATSURL != "" {
		rep.Machine.NATSVersion = r.nc.ConnectedServerVersion() + " (external server)"
	}
	if r.js, err = jetstream.New(r.nc, jetstream.WithPublishAsyncMaxPending(4096)); err != nil {
		return nil, err
	}
	id := make([]byte, 3)
	_, _ = rand.Read(id)
	r.runID = hex.EncodeToString(id)

	if rep.Baseline, err = r.baseline(ctx); err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	for _, sc := range o.Scenarios {
		for _, w := range o.Workers {
			if sc == ScenarioOrdered {
				res, err := r.ordered(ctx, w)
				if err != nil {
					return nil, fmt.Errorf("%s with %d workers: %w", sc, w, err)
				}
				rep.Results = append(rep.Results, res...)
				continue
			}
			res, err := r.scenario(ctx, sc, w)
			if err != nil {
				return nil, fmt.Errorf("%s with %d workers: %w", sc, w, err)
			}
			rep.Results = append(rep.Results, res)
			if sc == ScenarioZero {
				r.zeroRate[w] = res.LatencyRate
			}
			if floorOf(sc) != "" && w == o.Workers[0] {
				f, err := r.floor(ctx, sc, res.LatencyRate)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", floorOf(sc), err)
				}
				rep.Floors = append(rep.Floors, f)
			}
		}
	}
	rep.ratios()
	return rep, nil
}

func cpuIncludes(o Options, natsMeasured bool) map[string]string {
	m := map[string]string{
		"worker":      "the `understudy serve` worker processes, together (floors: the floor's process; the baseline has none)",
		"nats_server": "the JetStream server process",
		"bench":       "the bench process: load generator, reply listener, simulated providers (baseline: also its raw request→reply loop)",
		"all":         "worker + nats_server + bench",
	}
	if o.ProviderURL != "" {
		m["bench"] = "the bench process: load generator, reply listener, failing in-process primaries (the answering provider at --provider-url is not counted)"
	}
	if !natsMeasured {
		m["nats_server"] = "not measured: give --nats-pid for a server on this machine"
		m["all"] = "worker + bench (the server is not measured)"
	}
	return m
}

// ratios fills the ratios to the baseline and to the fewest workers, and
// the open scenario's skip cost.
func (rep *Report) ratios() {
	fewest := map[string]Result{}
	for _, x := range rep.Results {
		if f, ok := fewest[x.label()]; !ok || x.Workers < f.Workers {
			fewest[x.label()] = x
		}
	}
	for i := range rep.Results {
		x := &rep.Results[i]
		if rep.Baseline.RPS > 0 {
			x.RatioToBaseline = x.RPS / rep.Baseline.RPS
		}
		for _, f := range rep.Floors {
			if f.Scenario == floorOf(x.Scenario) && f.RPS > 0 {
				x.RatioToFloor = x.RPS / f.RPS
			}
		}
		if f := fewest[x.label()]; f.Workers < x.Workers && f.RPS > 0 {
			x.RatioToFewestWorkers = x.RPS / f.RPS
		}
		if x.Scenario != ScenarioOpen {
			continue
		}
		for _, z := range rep.Results {
			if z.Scenario == ScenarioZero && z.Workers == x.Workers {
				x.SkipCostUS = ptr(1000 * (x.OverheadMS.P50 - z.OverheadMS.P50))
				if x.CPU.Worker != nil && z.CPU.Worker != nil {
					x.SkipCPUUS = ptr(1000 * (*x.CPU.Worker - *z.CPU.Worker))
				}
			}
		}
	}
	rep.Baseline.RatioToBaseline = 1
	for i := range rep.Floors {
		if rep.Baseline.RPS > 0 {
			rep.Floors[i].RatioToBaseline = rep.Floors[i].RPS / rep.Baseline.RPS
		}
	}
}

// usage is every measured process's usage at one moment.
type usage struct {
	at      time.Time
	self    procUsage
	nats    procUsage
	natsOK  bool
	workers []procUsage
	ok      bool // every worker was read
}

func (r *runner) usage(ws []*workerProc) usage {
	u := usage{at: time.Now(), self: selfUsage(), ok: true}
	if r.natsPID != 0 {
		n, err := readProc(r.natsPID)
		u.nats, u.natsOK = n, err == nil
	}
	for _, w := range ws {
		p, err := readProc(w.pid())
		u.workers = append(u.workers, p)
		u.ok = u.ok && err == nil
	}
	return u
}

// cpu is the CPU seconds per 1,000 requests between a and b, over n
// requests.
func cpuPer1k(a, b usage, n int, withWorkers bool) CPU {
	per := func(d time.Duration) *float64 { return ptr(d.Seconds() * 1000 / float64(n)) }
	var c CPU
	all := b.self.cpu - a.self.cpu
	c.Bench = per(all)
	if a.natsOK && b.natsOK {
		c.NATS = per(b.nats.cpu - a.nats.cpu)
		all += b.nats.cpu - a.nats.cpu
	}
	if w, ok := workerCPU(a, b); withWorkers && ok {
		c.Worker = per(w)
		all += w
	}
	c.All = per(all)
	return c
}

// workerCPU is the CPU time the worker processes used together between a
// and b; false when a worker could not be read.
func workerCPU(a, b usage) (time.Duration, bool) {
	if !a.ok || !b.ok || len(a.workers) != len(b.workers) {
		return 0, false
	}
	var w time.Duration
	for i := range a.workers {
		w += b.workers[i].cpu - a.workers[i].cpu
	}
	return w, true
}

// peaks fills the peak RSS figures from u (read at the end of the
// measurement).
func peaks(u usage, withWorkers bool) RSS {
	rss := RSS{Bench: mib(u.self.peakRSS)}
	if u.natsOK {
		rss.NATS = mib(u.nats.peakRSS)
	}
	if withWorkers && u.ok {
		var top int64
		for _, w := range u.workers {
			top = max(top, w.peakRSS)
		}
		rss.Worker = mib(top)
	}
	return rss
}

// resetPeaks starts the server's and the bench's peak RSS afresh.
func (r *runner) resetPeaks() {
	if r.natsPID != 0 {
		resetPeak(r.natsPID)
	}
	resetPeak(os.Getpid())
}

// stored is the number of messages ever stored in each stream of prefix
// (the last sequence: every write, KV updates included), by kind.
func (r *runner) stored(ctx context.Context, prefix string) (map[string]uint64, error) {
	subj, err := chat.NewSubjects(prefix)
	if err != nil {
		return nil, err
	}
	p := subj.Stream("")
	out := map[string]uint64{}
	names := r.js.ListStreams(ctx)
	for info := range names.Info() {
		name := strings.TrimPrefix(info.Config.Name, "KV_")
		kind, ok := strings.CutPrefix(name, p)
		if ok && kind != "" && !strings.Contains(kind, "_") {
			out[kind] += info.State.LastSeq
		}
	}
	return out, names.Err()
}

// deleteStreams removes the streams of prefix (best effort).
func (r *runner) deleteStreams(prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	subj, err := chat.NewSubjects(prefix)
	if err != nil {
		return
	}
	p := subj.Stream("")
	var doomed []string
	for name := range r.js.StreamNames(ctx).Name() {
		if strings.HasPrefix(strings.TrimPrefix(name, "KV_"), p) {
			doomed = append(doomed, name)
		}
	}
	for _, name := range doomed {
		_ = r.js.DeleteStream(ctx, name)
	}
}

func storedPerRequest(before, after map[string]uint64, n int) (float64, map[string]float64) {
	by := map[string]float64{}
	var total uint64
	for kind, v := range after {
		d := v - before[kind]
		total += d
		by[strings.ToLower(kind)] = float64(d) / float64(n)
	}
	return float64(total) / float64(n), by
}

// topology is what the workers create, for a bench that creates it first.
func topology(prefix string) (broker.Topology, error) {
	subj, err := chat.NewSubjects(prefix)
	return broker.Topology{Subjects: subj, AckWait: 30 * time.Second}, err
}

// connectBroker connects a broker to the run's server with prefix's
// topology.
func (r *runner) connectBroker(ctx context.Context, name, prefix string) (*broker.Broker, error) {
	b, err := broker.Connect(ctx, broker.Config{URL: r.url}, name, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	topo, err := topology(prefix)
	if err == nil {
		err = b.Setup(ctx, topo)
	}
	if err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// scenario runs sc with w worker processes.
func (r *runner) scenario(ctx context.Context, sc string, w int) (Result, error) {
	o := r.o
	prefix := fmt.Sprintf("ub%s-%s-%d", r.runID, sc, w)
	defer r.deleteStreams(prefix)
	res := Result{Scenario: sc, Workers: w}
	concurrency := o.Concurrency
	if sc == ScenarioSlow {
		concurrency = o.Inflight
	}
	load, window := o.Requests, 2*w*concurrency
	var t *traffic
	if sc == ScenarioBacklog {
		load = o.Backlog
		t = newTraffic(prefix, prefix, o.Payload, window, 0, load, 0, 0)
	} else {
		t = newSteadyTraffic(prefix, o.Payload, window, load)
	}
	sub, err := t.listen(r.nc)
	if err != nil {
		return res, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	answerCfg := sim.Config{}
	if sc == ScenarioStream {
		var unlisten func()
		if res.Stream, answerCfg, unlisten, err = r.streamTraffic(t); err != nil {
			return res, err
		}
		defer unlisten()
	}

	// The chain.
	cfg := workerConfig{natsURL: r.url, prefix: prefix, concurrency: concurrency, failuresToOpen: 5}
	if sc == ScenarioSlow {
		answerCfg.Latency = slowLatency
		if o.ProviderURL == "" {
			res.IdealRPS = float64(w*concurrency) / slowLatency.Seconds()
		}
	}
	if sc == ScenarioFallback || sc == ScenarioOpen {
		primary, err := startProvider(t, sim.Config{}, sim.ModeError)
		if err != nil {
			return res, err
		}
		defer primary.close()
		cfg.chain = append(cfg.chain, chainLink{"primary", primary.url})
		cfg.failuresToOpen = 1 << 30 // fallback: never opens
		if sc == ScenarioOpen {
			cfg.failuresToOpen = 1 // the warm-up's first failure opens it
		}
	}
	answerURL := o.ProviderURL
	if answerURL == "" || sc == ScenarioStream {
		answer, err := startProvider(t, answerCfg, sim.ModeOK)
		if err != nil {
			return res, err
		}
		defer answer.close()
		answerURL = answer.url
	}
	cfg.chain = append(cfg.chain, chainLink{"answer", answerURL})

	label := fmt.Sprintf("%s ×%d", sc, w)
	var before map[string]uint64
	if sc == ScenarioBacklog {
		b, err := r.connectBroker(ctx, "understudy-bench-setup", prefix)
		if err != nil {
			return res, err
		}
		b.Close()
		if before, err = r.stored(ctx, prefix); err != nil {
			return res, err
		}
		r.prog.phase(label, "queueing")
		if err := t.publishAll(ctx, r.js, phaseLoad); err != nil {
			return res, err
		}
	}

	workers, ready, stop, err := r.launchWorkers(ctx, prefix, sc, w, cfg)
	defer stop()
	if err != nil {
		return res, err
	}

	if sc == ScenarioBacklog {
		r.prog.phase(label, "draining")
		var rss []float64
		next := load / 10
		watchRSS := func(got, total int) {
			r.prog.watch(got, total)
			if got >= next && len(rss) < 10 {
				u := r.usage(workers)
				var sum int64
				for _, p := range u.workers {
					sum += p.rss
				}
				rss = append(rss, *mib(sum))
				next += load / 10
			}
		}
		start := r.usage(workers)
		if err := t.wait(ctx, phaseLoad, watchRSS); err != nil {
			return res, err
		}
		end := r.usage(workers)
		first, last := t.firstDone(phaseLoad), t.lastDone(phaseLoad)
		res.Measured, res.Seconds = load, time.Duration(last-first).Seconds()
		res.CPU = cpuPer1k(start, end, load, true)
		res.PeakRSSMB = peaks(end, true)
		res.MemPerInflightKB = memPerInflight(ready, end, w*concurrency)
		res.RSSDrainMB = rss
		e2e, ovh := t.latencies(phaseLoad)
		res.EndToEndMS, res.OverheadMS = quantiles(e2e), quantiles(ovh)
		res.LatencyRate = float64(load) / res.Seconds
	} else {
		if before, err = r.stored(ctx, prefix); err != nil {
			return res, err
		}
		profiled := sc == ScenarioZero && o.CPUProfile != "" && w == o.Workers[0]
		var start, end usage
		var profErr error
		begin := func() {
			if profiled {
				profErr = workers[0].toggleProfile(false)
			}
			start = r.usage(workers)
		}
		finish := func() {
			end = r.usage(workers)
			if profiled && profErr == nil {
				profErr = workers[0].toggleProfile(true)
			}
		}
		r.prog.phase(label, "throughput")
		st, err := t.steadyLoop(ctx, r.js, r.prog.watch, begin, finish)
		if err == nil {
			err = profErr
		}
		if err != nil {
			return res, err
		}
		res.Measured, res.Seconds, res.SlowestMS = st.completed, st.took.Seconds(), ms(st.slowest)
		res.RPS = float64(res.Measured) / res.Seconds
		res.CPU = cpuPer1k(start, end, st.measured, true)
		res.PeakRSSMB = peaks(end, true)
		res.MemPerInflightKB = memPerInflight(ready, end, w*concurrency)
		res.LatencyRate = float64(res.Measured) / res.Seconds / 2
		if rate, ok := r.zeroRate[w]; ok && sc == ScenarioOpen {
			// Zero's rate, so that the two compare, unless it is more than
			// half of what open sustains here (then queues would decide).
			res.LatencyRate = min(rate, res.LatencyRate)
		}
		if o.Rate > 0 {
			res.LatencyRate = o.Rate
		}
		r.prog.phase(label, fmt.Sprintf("latency at %.0f req/s", res.LatencyRate))
		if err := t.paced(ctx, r.js, phasePaced, res.LatencyRate, r.prog.watch); err != nil {
			return res, err
		}
		e2e, ovh := t.latencies(phasePaced)
		res.EndToEndMS, res.OverheadMS = quantiles(e2e), quantiles(ovh)
		t.streamFigures(&res)
	}
	res.RPS = float64(res.Measured) / res.Seconds
	return res, r.settle(ctx, &res, t, workers, prefix, before, len(t.sent))
}

// settle ends a measurement: it stops ws, failing when one of them had
// exited by itself, then fills res's stored messages per request since
// before, over n requests, and t's answers.
func (r *runner) settle(ctx context.Context, res *Result, t *traffic, ws []*workerProc, prefix string, before map[string]uint64, n int) error {
	if err := stopAll(ws); err != nil {
		return err
	}
	after, err := r.stored(ctx, prefix)
	if err != nil {
		return err
	}
	res.StoredPerRequest, res.StoredByStream = storedPerRequest(before, after, n)
	res.Answered, res.Sent = t.answeredAll()
	res.Failed = int(t.failed.Load())
	return nil
}

// memPerInflight is the workers' growth from ready to their peak, in KiB
// per request they can hold at once.
func memPerInflight(ready, end usage, inflight int) float64 {
	if !ready.ok || !end.ok || len(ready.workers) != len(end.workers) {
		return 0
	}
	var grow int64
	for i := range end.workers {
		grow += end.workers[i].peakRSS - ready.workers[i].rss
	}
	return float64(grow) / 1024 / float64(inflight)
}

// launchWorkers starts w `serve` processes on cfg, waits until each is
// ready, and reads their usage then (the peaks reset from there). stop
// ends the ones started, also after an error.
func (r *runner) launchWorkers(ctx context.Context, prefix, sc string, w int, cfg workerConfig) (ws []*workerProc, ready usage, stop func(), err error) {
	stop = func() {
		for _, wp := range ws {
			wp.stop()
		}
	}
	if ws, err = r.startWorkers(prefix, sc, w, cfg); err != nil {
		return ws, ready, stop, err
	}
	for _, wp := range ws {
		if err := wp.waitReady(ctx, 30*time.Second); err != nil {
			return ws, ready, stop, err
		}
	}
	ready = r.usage(ws)
	r.resetPeaks()
	return ws, ready, stop, nil
}

// startWorkers starts w `serve` processes on cfg.
func (r *runner) startWorkers(prefix, sc string, w int, cfg workerConfig) ([]*workerProc, error) {
	var ws []*workerProc
	for i := range w {
		profile := ""
		if sc == ScenarioZero && r.o.CPUProfile != "" && i == 0 && w == r.o.Workers[0] {
			profile = r.o.CPUProfile
			_ = os.Remove(profile)
		}
		wp, err := startWorker(r.o.Binary, r.dir, fmt.Sprintf("%s-w%d", prefix, i+1), cfg, profile)
		if err != nil {
			return ws, err
		}
		ws = append(ws, wp)
	}
	return ws, nil
}

// progress draws one line on a terminal: "bench: zero ×1 throughput 4500/10000".
type progress struct {
	w     io.Writer
	label string
	stage string
	last  time.Time
	width int
}

func (p *progress) phase(label, stage string) {
	if p.w == nil {
		return
	}
	p.label, p.stage = label, stage
	p.draw(fmt.Sprintf("bench: %s: %s", label, stage))
}

func (p *progress) watch(got, total int) {
	if p.w == nil || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	const bar = 30
	done := bar * got / max(total, 1)
	p.draw(fmt.Sprintf("bench: %s: %s [%s%s] %d/%d", p.label, p.stage, strings.Repeat("=", done), strings.Repeat(" ", bar-done), got, total))
}

func (p *progress) draw(line string) {
	p.last = time.Now()
	pad := max(p.width-len(line), 0)
	p.width = len(line)
	fmt.Fprintf(p.w, "\r%s%*s", line, pad, "")
}

func (p *progress) end() {
	if p.w != nil && p.width > 0 {
		fmt.Fprintf(p.w, "\r%*s\r", p.width, "")
	}
}
