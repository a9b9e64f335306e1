package bench

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Scenarios, in the order they run.
const (
	ScenarioZero     = "zero"     // one provider answering at once
	ScenarioFallback = "fallback" // the primary answers 503 to every call and its breaker never opens
	ScenarioOpen     = "open"     // the primary's breaker is open: every request skips it
	ScenarioSlow     = "slow"     // a provider taking 1 s, Inflight requests in flight a worker
	ScenarioBacklog  = "backlog"  // Backlog requests queued before the workers start
	ScenarioStream   = "stream"   // "stream": true, a provider streaming streamWords chunks
	ScenarioOrdered  = "ordered"  // worker.ordering conversation against none, across 1,000 conversations and 10
)

// Scenarios lists every scenario in running order.
var Scenarios = []string{ScenarioZero, ScenarioFallback, ScenarioOpen, ScenarioSlow, ScenarioBacklog, ScenarioStream, ScenarioOrdered}

// ErrInvalidOption is wrapped by every error about an option's value.
var ErrInvalidOption = errors.New("invalid option")

// Options of a run. The zero value of each field means its default.
type Options struct {
	// Binary is the understudy executable re-run as the workers (`serve`)
	// and as the NATS server child. Required.
	Binary string
	// NATSURL is a NATS server to run against. Default "": a JetStream
	// server in a child process of the bench.
	NATSURL string
	// NATSPID is the process id of the server at NATSURL, to count its CPU
	// and memory (optional; same machine only).
	NATSPID int
	// ProviderURL is an OpenAI-compatible base URL serving the answers (an
	// `understudy sim` elsewhere). Default "": simulated providers in the
	// bench process. Failing primaries and the stream scenario's streaming
	// provider are always in-process.
	ProviderURL string
	// Workers lists the worker process counts each scenario runs with.
	// Default [1].
	Workers []int
	// Concurrency is worker.concurrency of every scenario but slow, and the
	// baseline loop's. Default 64.
	Concurrency int
	// Inflight is worker.concurrency of slow. Default 2000.
	Inflight int
	// Requests is how many requests measure a scenario's throughput (half as
	// many more measure its latency). Default 10,000.
	Requests int
	// Backlog is how many requests backlog queues. Default 100,000.
	Backlog int
	// Ordered is how many requests each case of ordered publishes.
	// Default 2,000.
	Ordered int
	// Payload is the size of each request's user message in bytes.
	// Default 256.
	Payload int
	// Rate is the request rate (per second) of every latency phase
	// (backlog's and ordered's excepted: they measure while draining).
	// Default 0: half the scenario's measured throughput (open: zero's
	// rate when lower).
	Rate float64
	// Scenarios to run. Default all, in the order of Scenarios.
	Scenarios []string
	// CPUProfile, when not empty, is where the zero scenario's first worker
	// process writes a CPU profile of its throughput phase.
	CPUProfile string
	// Progress receives a progress line, redrawn with carriage returns.
	// Default nil: none.
	Progress io.Writer
}

func (o *Options) setDefaults() {
	if len(o.Workers) == 0 {
		o.Workers = []int{1}
	}
	if o.Concurrency == 0 {
		o.Concurrency = 64
	}
	if o.Inflight == 0 {
		o.Inflight = 2000
	}
	if o.Requests == 0 {
		o.Requests = 10000
	}
	if o.Backlog == 0 {
		o.Backlog = 100000
	}
	if o.Ordered == 0 {
		o.Ordered = 2000
	}
	if o.Payload == 0 {
		o.Payload = 256
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = Scenarios
	}
}

// Validate reports the first invalid option.
func (o Options) Validate() error {
	if o.Binary == "" {
		return fmt.Errorf("%w: the understudy binary is required", ErrInvalidOption)
	}
	for _, w := range o.Workers {
		if w < 1 || w > 16 {
			return fmt.Errorf("%w: --workers: each count must be within 1..16, got %d", ErrInvalidOption, w)
		}
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"--concurrency", o.Concurrency}, {"--inflight", o.Inflight}, {"--requests", o.Requests}, {"--payload", o.Payload}} {
		if c.v < 1 {
			return fmt.Errorf("%w: %s: must be positive, got %d", ErrInvalidOption, c.name, c.v)
		}
	}
	if o.Rate < 0 {
		return fmt.Errorf("%w: --rate: must not be negative, got %g", ErrInvalidOption, o.Rate)
	}
	if o.Requests < 10 || o.Backlog < 10 || o.Ordered < 10 {
		return fmt.Errorf("%w: --requests: at least 10", ErrInvalidOption)
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(Scenarios, s) {
			return fmt.Errorf("%w: --scenario: unknown %q (%s or all)", ErrInvalidOption, s, strings.Join(Scenarios, ", "))
		}
	}
	return nil
}

// ParseScenarios reads "all" or a comma-separated list, returned in running
// order.
func ParseScenarios(s string) ([]string, error) {
	if s == "" || s == "all" {
		return Scenarios, nil
	}
	want := map[string]bool{}
	for part := range strings.SplitSeq(s, ",") {
		p := strings.TrimSpace(part)
		if !slices.Contains(Scenarios, p) {
			return nil, fmt.Errorf("%w: --scenario: unknown %q (%s or all)", ErrInvalidOption, p, strings.Join(Scenarios, ", "))
		}
		want[p] = true
	}
	var out []string
	for _, sc := range Scenarios {
		if want[sc] {
			out = append(out, sc)
		}
	}
	return out, nil
}

// ParseWorkers reads a count ("2") or a range ("1..3").
func ParseWorkers(s string) ([]int, error) {
	var from, to int
	if a, b, ok := strings.Cut(s, ".."); ok {
		if _, err := fmt.Sscanf(a+" "+b, "%d %d", &from, &to); err != nil || from < 1 || to < from {
			return nil, fmt.Errorf("%w: --workers: %q is not N or A..B", ErrInvalidOption, s)
		}
	} else {
		if _, err := fmt.Sscanf(s, "%d", &from); err != nil || from < 1 {
			return nil, fmt.Errorf("%w: --workers: %q is not N or A..B", ErrInvalidOption, s)
		}
		to = from
	}
	var out []int
	for w := from; w <= to; w++ {
		out = append(out, w)
	}
	return out, nil
}
