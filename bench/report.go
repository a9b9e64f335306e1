package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of one `understudy bench` run; its JSON is what
// --json prints.
type Report struct {
	Machine  Machine  `json:"machine"`
	Settings Settings `json:"settings"`
	// CPUIncludes says which processes each cpu_seconds_per_1000 figure
	// counts.
	CPUIncludes map[string]string `json:"cpu_includes"`
	// Baseline is the raw JetStream request→reply loop on the same server.
	Baseline Result `json:"baseline"`
	// Floors are the guarantees' own I/O without Understudy's code, beside
	// zero and stream with the fewest workers (floor-zero, floor-stream).
	Floors  []Result `json:"floors,omitempty"`
	Results []Result `json:"results"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs        int    `json:"cpus"`
	GOOS        string `json:"goos"`
	GOARCH      string `json:"goarch"`
	GoVersion   string `json:"go_version"`
	NATS        string `json:"nats"` // "child process (nats-server v2.x, embedded library)" or the URL
	NATSVersion string `json:"nats_server_version"`
}

// Settings are the run's options as applied.
type Settings struct {
	Scenarios   []string `json:"scenarios"`
	Workers     []int    `json:"workers"`
	Concurrency int      `json:"concurrency"`
	Inflight    int      `json:"inflight"`
	Requests    int      `json:"requests"`
	Backlog     int      `json:"backlog_requests"`
	Ordered     int      `json:"ordered_requests"`
	Payload     int      `json:"payload_bytes"`
	// Rate is the latency phases' request rate when given (0: half the
	// measured throughput).
	Rate      float64 `json:"rate,omitempty"`
	Providers string  `json:"providers"`
}

// Result is one scenario at one worker count (or the baseline).
type Result struct {
	Scenario string `json:"scenario"`
	Workers  int    `json:"workers"`
	// Sent counts every request the bench published for this measurement
	// (warm-up, throughput and latency phases); Answered those that got a
	// reply, Failed those whose reply is not "ok".
	Sent     int `json:"sent"`
	Answered int `json:"answered"`
	Failed   int `json:"failed"`
	// Measured is the number of requests the throughput is computed over,
	// in Seconds.
	Measured int     `json:"measured"`
	Seconds  float64 `json:"seconds"`
	// SlowestMS is the throughput phase's longest publish → reply (steady
	// closed loops): one far above the others (a redelivery after the ack
	// wait, a stall of the machine) stretches Seconds, and the throughput
	// is not a steady one; the text report says so past slowWarning.
	SlowestMS float64 `json:"slowest_ms,omitempty"`
	RPS       float64 `json:"requests_per_second"`
	// RatioToBaseline is RPS over the baseline's.
	RatioToBaseline float64 `json:"ratio_to_baseline"`
	// RatioToFloor is RPS over its floor's: what Understudy's own code
	// leaves of what the guarantees' I/O allows (zero and stream).
	RatioToFloor float64 `json:"ratio_to_floor,omitempty"`
	// RatioToFewestWorkers is RPS over the same scenario's with the fewest
	// workers of the run (scaling runs only).
	RatioToFewestWorkers float64 `json:"ratio_to_fewest_workers,omitempty"`
	// Ordering is worker.ordering, Conversations how many conversations
	// the measured requests were spread over, each one's in a row
	// (ordered only).
	Ordering      string `json:"ordering,omitempty"`
	Conversations int    `json:"conversations,omitempty"`
	// RatioToUnordered is RPS over the ordered case's with ordering none,
	// the same conversations and workers, measured just before it (ordered
	// only; 1 for ordering none itself).
	RatioToUnordered float64 `json:"ratio_to_unordered,omitempty"`
	// IdealRPS is what the provider's latency allows (slow only).
	IdealRPS float64 `json:"ideal_requests_per_second,omitempty"`
	// LatencyRate is the request rate the latencies were measured at
	// (Options.Rate when given, else half the measured throughput; open:
	// zero's rate when that is lower, so that the two compare; backlog and
	// ordered: while draining).
	LatencyRate float64   `json:"latency_rate"`
	EndToEndMS  Quantiles `json:"end_to_end_ms"`
	OverheadMS  Quantiles `json:"overhead_ms"`
	// SkipCostUS is open's overhead p50 minus zero's at the same worker
	// count (and rate, see LatencyRate): what a skipped provider adds to a request's
	// latency; SkipCPUUS the worker CPU it adds (open only, with zero).
	SkipCostUS *float64 `json:"skip_cost_us,omitempty"`
	SkipCPUUS  *float64 `json:"skip_cpu_us,omitempty"`
	CPU        CPU      `json:"cpu_seconds_per_1000"`
	PeakRSSMB  RSS      `json:"peak_rss_mb"`
	// MemPerInflightKB is the workers' peak RSS minus their RSS when ready,
	// over the most requests they can hold at once (workers × concurrency).
	MemPerInflightKB float64 `json:"memory_per_in_flight_kb"`
	// RSSDrainMB samples the workers' RSS at each tenth of a backlog's drain.
	RSSDrainMB []float64 `json:"rss_during_drain_mb,omitempty"`
	// StoredPerRequest is the messages JetStream stored per request (every
	// write, KV updates included), and by stream.
	StoredPerRequest float64            `json:"stored_messages_per_request"`
	StoredByStream   map[string]float64 `json:"stored_per_request_by_stream"`
	// Stream is the streaming figures (stream only).
	Stream *StreamResult `json:"stream,omitempty"`
}

// StreamResult is what the stream scenario measures besides the figures of
// every scenario.
type StreamResult struct {
	// Words is the chunks of text each answer streams, ChunkDelayMS the
	// provider's wait between two.
	Words        int     `json:"words"`
	ChunkDelayMS float64 `json:"chunk_delay_ms"`
	// FirstChunkMS is the time from the publish to the first chunk with
	// text heard on <prefix>.stream.<conv> (latency phase);
	// ProviderFirstChunkMS the provider's own time to its first chunk (its
	// handler's start to the chunk flushed); FirstChunkOverheadMS the
	// first minus the second, per request.
	FirstChunkMS         Quantiles `json:"first_chunk_ms"`
	ProviderFirstChunkMS Quantiles `json:"provider_first_chunk_ms"`
	FirstChunkOverheadMS Quantiles `json:"first_chunk_overhead_ms"`
	// Requests is the throughput phase's requests, Chunks the stream
	// messages heard for them (text, done), ChunksPerRequest the same per
	// request, ChunksPerSecond at the measured requests/s.
	Requests int `json:"requests"`
	Chunks   int `json:"chunks"`
	// Streamed is how many of the throughput phase's requests had a chunk
	// with text heard (a worker that cannot read a request's earlier chunks
	// answers it whole, unstreamed).
	Streamed         int     `json:"streamed_requests"`
	ChunksPerRequest float64 `json:"chunks_per_request"`
	ChunksPerSecond  float64 `json:"chunks_per_second"`
	// ChunksPerCoreSecond is Chunks over the worker processes' CPU seconds
	// in the throughput phase: chunks/s per core; nil when not measured.
	ChunksPerCoreSecond *float64 `json:"chunks_per_core_second"`
}

// Quantiles of a latency, in milliseconds.
type Quantiles struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
}

// CPU is CPU seconds per 1,000 requests by process; nil when not measured.
type CPU struct {
	Worker *float64 `json:"worker"`
	NATS   *float64 `json:"nats_server"`
	Bench  *float64 `json:"bench"`
	All    *float64 `json:"all"`
}

// RSS is peak resident memory in MiB by process.
type RSS struct {
	Worker *float64 `json:"worker"`
	NATS   *float64 `json:"nats_server"`
	Bench  *float64 `json:"bench"`
}

// slowWarning: a throughput phase whose slowest request took longer is
// flagged.
const slowWarning = 5 * time.Second

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func quantiles(sorted []time.Duration) Quantiles {
	if len(sorted) == 0 {
		return Quantiles{}
	}
	at := func(q float64) float64 {
		i := min(int(q*float64(len(sorted))), len(sorted)-1)
		return float64(sorted[i].Microseconds()) / 1000
	}
	return Quantiles{P50: at(0.50), P99: at(0.99)}
}

func ptr(v float64) *float64 { return &v }

func mib(b int64) *float64 { return ptr(float64(b) / (1 << 20)) }

// Text writes the report as a table, with what each CPU figure includes.
func (r *Report) Text(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "understudy bench: %d CPUs %s/%s %s; NATS: %s (nats-server %s)\n", m.CPUs, m.GOOS, m.GOARCH, m.GoVersion, m.NATS, m.NATSVersion)
	s := r.Settings
	fmt.Fprintf(w, "concurrency %d per worker, slow in-flight %d, %d requests a scenario (backlog %d, ordered %d a case), payload %d B, providers: %s\n\n",
		s.Concurrency, s.Inflight, s.Requests, s.Backlog, s.Ordered, s.Payload, s.Providers)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tworkers\treq/s\t× raw\t× fewest\te2e p50\tp99 ms\tovh p50\tp99 ms\tCPU s/1k worker\tnats\tbench\tall\tpeak RSS MB worker\tnats\tKB/in-flight\tstored/req\t")
	row := func(x Result) {
		fewest := "-"
		if x.RatioToFewestWorkers != 0 {
			fewest = fmt.Sprintf("%.2f", x.RatioToFewestWorkers)
		}
		workers := "-"
		if x.Workers > 0 {
			workers = fmt.Sprint(x.Workers)
		}
		kb := "-"
		if x.MemPerInflightKB != 0 {
			kb = fmt.Sprintf("%.0f", x.MemPerInflightKB)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.2f\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t\n",
			x.label(), workers, x.RPS, x.RatioToBaseline, fewest, x.EndToEndMS.P50, x.EndToEndMS.P99, x.OverheadMS.P50, x.OverheadMS.P99,
			num(x.CPU.Worker, "%.3f"), num(x.CPU.NATS, "%.3f"), num(x.CPU.Bench, "%.3f"), num(x.CPU.All, "%.3f"),
			num(x.PeakRSSMB.Worker, "%.0f"), num(x.PeakRSSMB.NATS, "%.0f"), kb, x.StoredPerRequest)
	}
	row(r.Baseline)
	for _, x := range r.Floors {
		row(x)
	}
	for _, x := range r.Results {
		row(x)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	for _, x := range append(append([]Result{r.Baseline}, r.Floors...), r.Results...) {
		var notes []string
		if x.Ordering == orderingConversation && x.RatioToUnordered > 0 {
			notes = append(notes, fmt.Sprintf("ordering conversation keeps %.2f of ordering none's req/s across %d conversations (%d requests a conversation, in a row)",
				x.RatioToUnordered, x.Conversations, x.Measured/max(x.Conversations, 1)))
		}
		if x.SlowestMS > float64(slowWarning/time.Millisecond) {
			notes = append(notes, fmt.Sprintf("a request of the throughput phase took %.1f s: its req/s is not a steady figure, run again", x.SlowestMS/1000))
		}
		if x.RatioToFloor > 0 {
			notes = append(notes, fmt.Sprintf("%.2f of %s's req/s", x.RatioToFloor, floorOf(x.Scenario)))
		}
		if x.IdealRPS > 0 {
			notes = append(notes, fmt.Sprintf("%.0f%% of the ideal %.0f req/s", 100*x.RPS/x.IdealRPS, x.IdealRPS))
		}
		if x.SkipCostUS != nil {
			notes = append(notes, fmt.Sprintf("the skipped provider adds %.0f µs to a request's overhead p50 (against zero's, at the same rate) and %s µs of worker CPU",
				*x.SkipCostUS, num(x.SkipCPUUS, "%.0f")))
		}
		if len(x.RSSDrainMB) > 0 {
			var mb []string
			for _, v := range x.RSSDrainMB {
				mb = append(mb, fmt.Sprintf("%.0f", v))
			}
			notes = append(notes, "worker RSS MB at each tenth of the drain: "+strings.Join(mb, " "))
		}
		if st := x.Stream; st != nil {
			notes = append(notes, fmt.Sprintf("first chunk p50 %.2f p99 %.2f ms, provider's own p50 %.2f p99 %.2f ms, overhead p50 %.2f p99 %.2f ms; "+
				"%.1f chunks a request (%d words, %g ms apart), %.0f chunks/s, %s chunks/s per core of worker CPU",
				st.FirstChunkMS.P50, st.FirstChunkMS.P99, st.ProviderFirstChunkMS.P50, st.ProviderFirstChunkMS.P99,
				st.FirstChunkOverheadMS.P50, st.FirstChunkOverheadMS.P99,
				st.ChunksPerRequest, st.Words, st.ChunkDelayMS, st.ChunksPerSecond, num(st.ChunksPerCoreSecond, "%.0f")))
			if st.Streamed < st.Requests {
				notes = append(notes, fmt.Sprintf("only %d of %d requests streamed (the others were answered whole)", st.Streamed, st.Requests))
			}
		}
		if x.Failed > 0 || x.Answered < x.Sent {
			notes = append(notes, fmt.Sprintf("%d of %d answered, %d failed", x.Answered, x.Sent, x.Failed))
		}
		if len(notes) > 0 {
			name := x.label()
			if x.Workers > 0 {
				name += fmt.Sprintf(" ×%d", x.Workers)
			}
			fmt.Fprintf(w, "%s: %s\n", name, strings.Join(notes, "; "))
		}
	}
	if s.Rate > 0 {
		fmt.Fprintf(w, "latencies: at %g req/s (backlog and ordered: while draining); overhead = end to end minus the provider's own time\n", s.Rate)
	} else {
		fmt.Fprintln(w, "latencies: at half the measured throughput (open: at zero's rate if lower; backlog and ordered: while draining); overhead = end to end minus the provider's own time")
	}
	for _, x := range r.Results {
		if x.Ordering != "" {
			fmt.Fprintf(w, "ordered: a burst of %d requests, each conversation's in a row, published as fast as the server takes them; provider latency 0; req/s = requests / (first publish → last reply)\n", r.Settings.Ordered)
			break
		}
	}
	for _, x := range r.Results {
		if x.Stream != nil {
			fmt.Fprintln(w, "stream: first chunk = publish to the first chunk with text heard on the stream subject; its overhead = that minus the provider's own time to its first chunk")
			break
		}
	}
	if len(r.Floors) > 0 {
		fmt.Fprintln(w, "floor-*: the guarantees' own I/O with no Understudy code, in a process of its own in the worker column: pull, claim write, the same simulated provider over HTTP (fallback: a failing one first and its attempt event; stream: each event published as a chunk), reply write, ack; latencies at its scenario's rate")
	}
	for _, k := range []string{"worker", "nats_server", "bench", "all"} {
		fmt.Fprintf(w, "CPU %s: %s\n", k, r.CPUIncludes[k])
	}
}

// label names a result's row: the scenario, and for ordered its ordering
// and conversations ("ordered conversation/10").
func (x Result) label() string {
	if x.Ordering == "" {
		return x.Scenario
	}
	return fmt.Sprintf("%s %s/%d", x.Scenario, x.Ordering, x.Conversations)
}

func num(v *float64, format string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf(format, *v)
}
