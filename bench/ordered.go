package bench

import (
	"context"
	"fmt"

	"github.com/understudy-ai/understudy/providers/sim"
)

// worker.ordering values the ordered scenario compares.
const (
	orderingNone         = "none"
	orderingConversation = "conversation"
)

// orderedConversations are the conversation counts ordered measures: many
// short conversations (the chat case) and a few deep ones.
var orderedConversations = []int{1000, 10}

// ordered measures the ordered scenario with w worker processes: for each
// of orderedConversations, ordering none and then conversation, back to
// back, each with fresh streams and workers. Each case publishes a burst of
// Ordered requests, conversation after conversation (the hard case for
// order: each conversation's requests in a row), to a provider answering at
// once, so the figures are what order costs the pipeline itself.
func (r *runner) ordered(ctx context.Context, w int) ([]Result, error) {
	var out []Result
	for _, convs := range orderedConversations {
		var none float64
		for _, ordering := range []string{orderingNone, orderingConversation} {
			res, err := r.orderedCase(ctx, w, convs, ordering)
			if err != nil {
				return out, fmt.Errorf("ordering %s across %d conversations: %w", ordering, convs, err)
			}
			if ordering == orderingNone {
				none = res.RPS
			}
			if none > 0 {
				res.RatioToUnordered = res.RPS / none
			}
			out = append(out, res)
		}
	}
	return out, nil
}

// orderedCase is one case of ordered: Ordered requests spread over convs
// conversations (fewer when there are fewer requests than that), each one's
// in a row.
func (r *runner) orderedCase(ctx context.Context, w, convs int, ordering string) (Result, error) {
	o := r.o
	prefix := fmt.Sprintf("ub%s-ordered-%s-%d-%d", r.runID, ordering, convs, w)
	defer r.deleteStreams(prefix)
	load := o.Ordered
	inRow := (load + convs - 1) / convs
	res := Result{Scenario: ScenarioOrdered, Workers: w, Ordering: ordering, Conversations: (load + inRow - 1) / inRow}
	warm := max(20*w, min(200, load/20))
	t := newTraffic(prefix, prefix, o.Payload, 2*w*o.Concurrency, warm, load, 0, 0)
	t.inRow = inRow
	sub, err := t.listen(r.nc)
	if err != nil {
		return res, err
	}
	defer func() { _ = sub.Unsubscribe() }()

	cfg := workerConfig{natsURL: r.url, prefix: prefix, concurrency: o.Concurrency, failuresToOpen: 5, ordering: ordering}
	answerURL := o.ProviderURL
	if answerURL == "" {
		answer, err := startProvider(t, sim.Config{}, sim.ModeOK)
		if err != nil {
			return res, err
		}
		defer answer.close()
		answerURL = answer.url
	}
	cfg.chain = []chainLink{{"answer", answerURL}}
	workers, ready, stop, err := r.launchWorkers(ctx, prefix, ScenarioOrdered, w, cfg)
	defer stop()
	if err != nil {
		return res, err
	}

	label := fmt.Sprintf("%s ×%d", res.label(), w)
	r.prog.phase(label, "warming up")
	if err := t.closedLoop(ctx, r.js, phaseWarm, r.prog.watch); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	before, err := r.stored(ctx, prefix)
	if err != nil {
		return res, err
	}
	r.prog.phase(label, "burst")
	start := r.usage(workers)
	took, err := t.burst(ctx, r.js, phaseLoad, r.prog.watch)
	if err != nil {
		return res, err
	}
	end := r.usage(workers)
	res.Measured, res.Seconds = load, took.Seconds()
	res.RPS = float64(load) / res.Seconds
	res.LatencyRate = res.RPS
	res.CPU = cpuPer1k(start, end, load, true)
	res.PeakRSSMB = peaks(end, true)
	res.MemPerInflightKB = memPerInflight(ready, end, w*o.Concurrency)
	e2e, ovh := t.latencies(phaseLoad)
	res.EndToEndMS, res.OverheadMS = quantiles(e2e), quantiles(ovh)
	return res, r.settle(ctx, &res, t, workers, prefix, before, load)
}
