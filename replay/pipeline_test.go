package replay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/config"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
	"github.com/understudy-ai/understudy/replay"
	"github.com/understudy-ai/understudy/service"
)

// TestReportOfARealOutage runs the real pipeline (embedded NATS, a worker
// process, two simulated providers over HTTP) through an outage of the
// primary, then checks the report against what the providers and the
// replies themselves say.
func TestReportOfARealOutage(t *testing.T) {
	cfg := config.Default()
	cfg.NATS = broker.Config{StoreDir: t.TempDir(), Listen: "-"}
	cfg.Metrics.Listen = ""
	cfg.Breaker.ConsecutiveFailures, cfg.Breaker.OpenFor = 2, 400*time.Millisecond
	cfg.Retry.Min, cfg.Retry.Max = 5*time.Millisecond, 20*time.Millisecond
	cfg.Providers = []providers.Config{
		{Name: "deepseek", Kind: providers.KindSim, Timeout: 2 * time.Second},
		{Name: "llama", Kind: providers.KindSim, Timeout: 2 * time.Second},
	}
	svc, err := service.Start(context.Background(), cfg, "replay-test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	defer func() { stop(); <-done; svc.Close() }()
	primary, fallback := svc.Providers[0].Sim, svc.Providers[1].Sim
	subj := cfg.SubjectScheme()

	replies := func() int {
		n := 0
		_ = svc.Broker.Scan(context.Background(), subj.Stream(chat.KindReplies), "", time.Time{}, time.Time{}, func(*broker.Stored) error { n++; return nil })
		return n
	}
	send := func(phase string, n int) {
		for i := range n {
			id := fmt.Sprintf("%s-%02d", phase, i)
			data, _ := json.Marshal(chat.Request{ID: id, Messages: []chat.Message{{Role: chat.RoleUser, Content: "hi"}}})
			if err := svc.Broker.PublishRaw(context.Background(), subj.Request(fmt.Sprintf("c-%d", i%3)), data, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Before, during and after the outage, one request at a time so the
	// breaker's moments are well defined.
	total := 0
	phase := func(name string, n int) (start time.Time) {
		start = time.Now()
		for range n {
			send(fmt.Sprintf("%s-%d", name, total), 1)
			total++
			poll.Until(t, 10*time.Second, fmt.Sprintf("%d replies", total), func() bool { return replies() == total })
		}
		return start
	}
	phase("before", 5)
	primary.SetMode(sim.ModeError)
	outageStart := phase("outage", 8)
	primary.SetMode(sim.ModeOK)
	outageEnd := time.Now()
	poll.Until(t, 5*time.Second, "the breaker to half-open", func() bool { return svc.Chain.Links()[0].Breaker.OpenUntil().Before(time.Now()) })
	phase("after", 5)
	svc.Broker.FlushEvents(context.Background())

	rep, err := replay.Build(context.Background(), svc.Broker, subj, replay.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Requests != total || rep.OK != total || rep.Failed != 0 || rep.Unanswered != 0 || rep.DeadLetters != 0 {
		t.Fatalf("requests %d ok %d failed %d unanswered %d dead %d; want %d ok", rep.Requests, rep.OK, rep.Failed, rep.Unanswered, rep.DeadLetters, total)
	}
	// Who served what: the report agrees with the providers' own counters.
	if got, want := rep.ByProvider["deepseek"], int(primary.HitsIn(sim.ModeOK)); got != want {
		t.Errorf("report: deepseek served %d; the provider answered ok %d times", got, want)
	}
	if got, want := rep.ByProvider["llama"], int(fallback.Hits()); got != want {
		t.Errorf("report: llama served %d; the provider was called %d times", got, want)
	}
	if rep.Degraded != rep.ByProvider["llama"] {
		t.Errorf("degraded %d, want the fallback's %d", rep.Degraded, rep.ByProvider["llama"])
	}
	if got, want := rep.Attempts["deepseek"][chat.OutcomeError], int(primary.HitsIn(sim.ModeError)); got != want {
		t.Errorf("report: %d deepseek errors; the provider answered 503 %d times", got, want)
	}
	// Answering attempts are in the replies, not in events: counted all the same.
	if got, want := rep.Attempts["deepseek"][chat.OutcomeOK], int(primary.HitsIn(sim.ModeOK)); got != want {
		t.Errorf("report: %d deepseek ok attempts; the provider answered ok %d times", got, want)
	}
	if got, want := rep.Attempts["llama"][chat.OutcomeOK], int(fallback.Hits()); got != want {
		t.Errorf("report: %d llama ok attempts; the provider was called %d times", got, want)
	}
	if got := rep.Attempts["deepseek"][chat.OutcomeBreakerOpen]; got == 0 {
		t.Error("report: no attempt skipped by the open breaker")
	}
	// The breaker's moments: opened during the outage, closed after it.
	var opened, closed time.Time
	for _, tr := range rep.BreakerTransitions {
		if tr.Provider != "deepseek" {
			t.Errorf("transition of %s: %+v", tr.Provider, tr)
		}
		if tr.To == "open" && opened.IsZero() {
			opened = tr.At
		}
		if tr.To == "closed" {
			closed = tr.At
		}
	}
	if opened.Before(outageStart) || opened.After(outageEnd) {
		t.Errorf("breaker opened at %s, outside the outage %s..%s", opened, outageStart, outageEnd)
	}
	if closed.Before(outageEnd) {
		t.Errorf("breaker closed at %s, before the outage ended at %s", closed, outageEnd)
	}
}
