package worker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

func TestHappyPathRepliesOnEachConversation(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek", "llama", "qwen")
	startPool(t, b, f, defaultSetup())

	convs := []string{"c-1", "c_2", "C-three"}
	for i := range 15 {
		conv := convs[i%len(convs)]
		req := request(fmt.Sprintf("req-%02d", i))
		req.Metadata = []byte(fmt.Sprintf(`{"n":%d}`, i))
		publish(t, b, conv, req, req.ID)
	}
	got := waitReplies(t, b, 15)
	for i := range 15 {
		id, conv := fmt.Sprintf("req-%02d", i), convs[i%len(convs)]
		r := got[id]
		if r.Subject != subj.Reply(conv) || r.ConversationID != conv || r.ID != id {
			t.Errorf("%s: reply on %s for conversation %q, want %s", id, r.Subject, r.ConversationID, subj.Reply(conv))
		}
		if r.Status != chat.StatusOK || r.Provider != "deepseek" || r.Model != "model-deepseek" || r.Degraded {
			t.Errorf("%s: %+v, want ok from deepseek, not degraded", id, r.Reply)
		}
		if len(r.Attempts) != 1 || r.Attempts[0].Outcome != chat.OutcomeOK || r.Attempts[0].StatusCode != 200 {
			t.Errorf("%s: attempts %+v", id, r.Attempts)
		}
		if r.Deliveries != 1 || r.Usage == nil || r.Usage.CompletionTokens == 0 || r.Content == "" {
			t.Errorf("%s: deliveries %d usage %+v content %q", id, r.Deliveries, r.Usage, r.Content)
		}
		if string(r.Metadata) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Errorf("%s: metadata %s not echoed", id, r.Metadata)
		}
	}
	if h := f.sim("deepseek").Hits(); h != 15 {
		t.Errorf("deepseek hit %d times, want 15", h)
	}
	if h := f.sim("llama").Hits() + f.sim("qwen").Hits(); h != 0 {
		t.Errorf("fallbacks hit %d times, want 0", h)
	}
	if n := len(events(t, b, chat.EventAttempt)); n != 0 {
		t.Errorf("%d attempt events, want none: each answering attempt is in its reply", n)
	}
}

func TestFallbackOnProviderErrors(t *testing.T) {
	tests := []struct {
		name        string
		mode        sim.Mode
		wantOutcome chat.Outcome
		wantStatus  int
		counts      bool // towards the breaker
	}{
		{"503", sim.ModeError, chat.OutcomeError, 503, true},
		{"401 is a configuration error", sim.ModeUnauthorized, chat.OutcomeError, 401, true},
		{"400 rejected", sim.ModeReject, chat.OutcomeRejected, 400, false},
		{"garbage body", sim.ModeGarbage, chat.OutcomeError, 0, true},
		{"no choices", sim.ModeEmpty, chat.OutcomeError, 200, true},
		{"connection reset", sim.ModeReset, chat.OutcomeError, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBroker(t, broker.Topology{})
			f := newFleet(t, "deepseek", "llama")
			f.sim("deepseek").SetMode(tt.mode)
			s := defaultSetup()
			s.breaker.ConsecutiveFailures = 2
			r := startPool(t, b, f, s)
			for i := range 3 {
				publish(t, b, "c-1", request(fmt.Sprintf("r-%d", i)), "")
				waitReplies(t, b, i+1) // one at a time: the breaker sees them in order
			}
			got := waitReplies(t, b, 3)
			first := got["r-0"]
			if first.Provider != "llama" || !first.Degraded || first.Status != chat.StatusOK {
				t.Fatalf("reply %+v, want ok from llama, degraded", first.Reply)
			}
			a := first.Attempts
			if len(a) != 2 || a[0].Provider != "deepseek" || a[0].Outcome != tt.wantOutcome || a[1].Outcome != chat.OutcomeOK {
				t.Fatalf("attempts %+v, want deepseek %s then llama ok", a, tt.wantOutcome)
			}
			if tt.wantStatus != 0 && a[0].StatusCode != tt.wantStatus {
				t.Errorf("status code %d, want %d", a[0].StatusCode, tt.wantStatus)
			}
			state := r.chain.Links()[0].Breaker.State()
			wantHits := int64(3)
			if tt.counts {
				// Two failures open the breaker: the third request skips deepseek.
				wantHits = 2
				if state != breaker.Open {
					t.Errorf("breaker %s after 2 counted failures, want open", state)
				}
				if got["r-2"].Attempts[0].Outcome != chat.OutcomeBreakerOpen {
					t.Errorf("third request attempts %+v, want deepseek skipped (breaker_open)", got["r-2"].Attempts)
				}
			} else if state != breaker.Closed {
				t.Errorf("breaker %s after rejections, want closed", state)
			}
			if h := f.sim("deepseek").Hits(); h != wantHits {
				t.Errorf("deepseek hit %d times, want %d", h, wantHits)
			}
		})
	}
}

func TestHungPrimaryTimesOutAndTripsBreaker(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek", "llama")
	f.sim("deepseek").SetMode(sim.ModeHang)
	s := defaultSetup()
	s.timeout = map[string]time.Duration{"deepseek": 200 * time.Millisecond}
	r := startPool(t, b, f, s)

	for i := range 3 {
		publish(t, b, "c-1", request(fmt.Sprintf("r-%d", i)), "")
		waitReplies(t, b, i+1)
	}
	if st := r.chain.Links()[0].Breaker.State(); st != breaker.Open {
		t.Fatalf("breaker %s after 3 timeouts, want open", st)
	}
	hits := f.sim("deepseek").Hits()
	if hits != 3 {
		t.Fatalf("deepseek hit %d times, want 3", hits)
	}
	for i := 3; i < 10; i++ {
		publish(t, b, "c-1", request(fmt.Sprintf("r-%d", i)), "")
	}
	got := waitReplies(t, b, 10)
	for id, rep := range got {
		if rep.Provider != "llama" || !rep.Degraded {
			t.Errorf("%s served by %s, want llama (degraded)", id, rep.Provider)
		}
	}
	if a := got["r-0"].Attempts[0]; a.Outcome != chat.OutcomeTimeout || a.LatencyMS < 150 {
		t.Errorf("first attempt %+v, want a timeout after ~200ms", a)
	}
	if a := got["r-5"].Attempts[0]; a.Outcome != chat.OutcomeBreakerOpen || a.LatencyMS != 0 {
		t.Errorf("attempt while open %+v, want breaker_open at no cost", a)
	}
	if h := f.sim("deepseek").Hits(); h != hits {
		t.Errorf("deepseek hit %d more times while its breaker was open", h-hits)
	}
	tr := events(t, b, chat.EventBreaker)
	if len(tr) != 1 || tr[0].Provider != "deepseek" || tr[0].From != "closed" || tr[0].To != "open" {
		t.Errorf("breaker events %+v, want one deepseek closed→open", tr)
	}
}

func TestHalfOpenSendsExactlyOneProbe(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "deepseek", "llama")
	f.sim("deepseek").SetMode(sim.ModeError)
	s := defaultSetup()
	s.cfg.Concurrency = 64
	s.breaker = breaker.Config{ConsecutiveFailures: 1, OpenFor: 300 * time.Millisecond}
	s.timeout = map[string]time.Duration{"deepseek": 10 * time.Second}
	r := startPool(t, b, f, s)
	br := r.chain.Links()[0].Breaker

	publish(t, b, "c-1", request("trip"), "")
	waitReplies(t, b, 1)
	if br.State() != breaker.Open {
		t.Fatalf("breaker %s, want open", br.State())
	}
	// The primary recovers, slowly: the probe takes 2s to answer.
	primary := f.sim("deepseek")
	primary.SetMode(sim.ModeOK)
	primary.SetLatency(2 * time.Second)
	poll.Until(t, 5*time.Second, "half-open", func() bool { return br.State() == breaker.HalfOpen })
	before := primary.Hits()

	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() { publish(t, b, "c-2", request(fmt.Sprintf("p-%02d", i)), "") })
	}
	wg.Wait()
	got := waitReplies(t, b, 31)
	byProvider := map[string]int{}
	for id, rep := range got {
		if id != "trip" {
			byProvider[rep.Provider]++
		}
	}
	if h := primary.Hits() - before; h != 1 {
		t.Errorf("recovering primary received %d calls from 30 concurrent requests, want exactly 1 probe", h)
	}
	if byProvider["deepseek"] != 1 || byProvider["llama"] != 29 {
		t.Errorf("served %v, want deepseek 1 (the probe) and llama 29", byProvider)
	}
	if br.State() != breaker.Closed {
		t.Errorf("breaker %s after a successful probe, want closed", br.State())
	}
}

func TestHungLastProviderTripsItsBreaker(t *testing.T) {
	// With one provider left, its budget is the request's time left; the
	// attempt's own timer must still fire first, so the hang counts.
	b := newBroker(t, broker.Topology{})
	f := newFleet(t, "only")
	f.sim("only").SetMode(sim.ModeHang)
	s := defaultSetup()
	s.breaker = breaker.Config{ConsecutiveFailures: 2, OpenFor: 500 * time.Millisecond}
	s.timeout = map[string]time.Duration{"only": 30 * time.Second}
	var opened atomic.Bool
	r := startPool(t, b, f, s)
	for i := range 2 {
		req := request(fmt.Sprintf("hung-%d", i))
		req.Deadline = time.Now().Add(1500 * time.Millisecond)
		publish(t, b, "c-1", req, "")
		poll.Until(t, 10*time.Second, "the attempt to time out", func() bool {
			if r.chain.Links()[0].Breaker.State() != breaker.Closed {
				opened.Store(true)
			}
			return len(events(t, b, chat.EventAttempt)) >= i+1
		})
	}
	poll.Until(t, 5*time.Second, "the breaker to open", func() bool {
		return opened.Load() || r.chain.Links()[0].Breaker.State() != breaker.Closed
	})
	// Answered deadline_exceeded once the deadline has passed.
	for id, rep := range waitReplies(t, b, 2) {
		if rep.Error == nil || rep.Error.Code != chat.CodeDeadlineExceeded {
			t.Errorf("%s: %+v, want deadline_exceeded", id, rep.Reply)
		}
	}
	for _, ev := range events(t, b, chat.EventAttempt) {
		if ev.Outcome != chat.OutcomeTimeout || ev.LatencyMS < 1000 {
			t.Errorf("attempt %+v, want a timeout of about the request's 1.5s", ev)
		}
	}
}
