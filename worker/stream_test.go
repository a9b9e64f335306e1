package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

// streamFleet is a fleet of sim providers built from configs.
func streamFleet(t *testing.T, cfgs ...providers.Config) *fleet {
	t.Helper()
	f := &fleet{}
	for _, c := range cfgs {
		c.Kind = providers.KindSim
		if c.Model == "" {
			c.Model = "model-" + c.Name
		}
		if c.Timeout == 0 {
			c.Timeout = 2 * time.Second
		}
		b, err := providers.Build(c, 16)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		f.names = append(f.names, c.Name)
		f.built = append(f.built, b)
		f.sims = append(f.sims, b.Sim)
	}
	return f
}

func streamRequest(id string) chat.Request {
	r := request(id)
	on := true
	r.Stream = &on
	return r
}

// chunks reads the request id's stream as CHAT_STREAM holds it.
func chunks(t *testing.T, b *broker.Broker, conv, id string) []chat.Chunk {
	t.Helper()
	var out []chat.Chunk
	for _, m := range stored(t, b, chat.KindStream, subj.Chunk(conv)) {
		var c chat.Chunk
		if err := json.Unmarshal(m.Data, &c); err != nil {
			t.Fatalf("chunk %q: %v", m.Data, err)
		}
		if c.ID == id {
			out = append(out, c)
		}
	}
	return out
}

// waitDone polls until the request's stream has its last message.
func waitDone(t *testing.T, b *broker.Broker, conv, id string) []chat.Chunk {
	t.Helper()
	var got []chat.Chunk
	poll.Until(t, 20*time.Second, id+"'s stream done", func() bool {
		got = chunks(t, b, conv, id)
		return len(got) > 0 && got[len(got)-1].Done
	})
	return got
}

// shape renders a stream as the client sees it: "alpha:2 reset(cut alpha->beta) beta:5 done".
func shape(t *testing.T, cs []chat.Chunk) string {
	t.Helper()
	var parts []string
	run, prov := 0, ""
	flush := func() {
		if run > 0 {
			parts = append(parts, fmt.Sprintf("%s:%d", prov, run))
		}
		run = 0
	}
	for i, c := range cs {
		if c.Seq != uint64(i+1) {
			t.Errorf("message %d has seq %d, want %d (%+v)", i, c.Seq, i+1, cs)
		}
		switch {
		case c.Reset:
			flush()
			parts = append(parts, fmt.Sprintf("reset(%s %s->%s)", c.Reason, c.Failed, c.Provider))
		case c.Done:
			flush()
			parts = append(parts, "done"+c.Error)
		default:
			if c.Provider != prov {
				flush()
			}
			prov = c.Provider
			run++
		}
	}
	flush()
	return strings.Join(parts, " ")
}

// text is what a client shows: the deltas after the last reset.
func text(cs []chat.Chunk) string {
	var sb strings.Builder
	for _, c := range cs {
		if c.Reset {
			sb.Reset()
		}
		sb.WriteString(c.Delta)
	}
	return sb.String()
}

func TestStreamMidAnswerFailover(t *testing.T) {
	tests := []struct {
		mode  sim.Mode
		idle  time.Duration
		shape string
	}{
		{mode: sim.ModeCut, shape: "alpha:2 reset(cut alpha->beta) beta:5 done"},
		{mode: sim.ModeErrorEvent, shape: "alpha:2 reset(cut alpha->beta) beta:5 done"},
		{mode: sim.ModeStall, idle: 200 * time.Millisecond, shape: "alpha:2 reset(cut alpha->beta) beta:5 done"},
		// A 429 before the first chunk: nothing to take back.
		{mode: sim.ModeRateLimit, shape: "beta:5 done"},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			b := newBroker(t, broker.Topology{})
			f := streamFleet(t, providers.Config{Name: "alpha", StreamIdleTimeout: tt.idle}, providers.Config{Name: "beta"})
			f.sim("alpha").SetMode(tt.mode)
			startPool(t, b, f, keepCalling())
			publish(t, b, "c1", streamRequest("r1"), "")
			got := waitDone(t, b, "c1", "r1")
			if s := shape(t, got); s != tt.shape {
				t.Errorf("client saw %s, want %s", s, tt.shape)
			}
			r := replyTo(t, waitReplies(t, b, 1), "r1")
			if r.Status != chat.StatusOK || !r.Degraded || r.Provider != "beta" || r.Content != text(got) {
				t.Errorf("reply %+v; client text %q", r.Reply, text(got))
			}
			a0, a1 := r.Attempts[0], r.Attempts[len(r.Attempts)-1]
			wantA0 := chat.OutcomeCut
			if tt.mode == sim.ModeRateLimit {
				wantA0 = chat.OutcomeRateLimited
			} else if a0.Chunks != 2 {
				t.Errorf("first attempt %+v, want 2 chunks", a0)
			}
			if a0.Outcome != wantA0 || a1.Outcome != chat.OutcomeOK || a1.Chunks != 5 {
				t.Errorf("attempts %+v, want %s then ok with 5 chunks", r.Attempts, wantA0)
			}
		})
	}
}

func TestStreamBreakerOpensOnMidStreamFailures(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := streamFleet(t, providers.Config{Name: "alpha"}, providers.Config{Name: "beta"})
	f.sim("alpha").SetMode(sim.ModeCut)
	s := defaultSetup() // opens after 3 consecutive failures
	startPool(t, b, f, s)
	for i := range 4 {
		id := fmt.Sprintf("r%d", i)
		publish(t, b, "c1", streamRequest(id), "")
		got := waitDone(t, b, "c1", id)
		want := "alpha:2 reset(cut alpha->beta) beta:5 done"
		if i == 3 {
			want = "beta:5 done" // alpha's breaker is open: not called
		}
		if sh := shape(t, got); sh != want {
			t.Errorf("%s: client saw %s, want %s", id, sh, want)
		}
	}
	rs := waitReplies(t, b, 4)
	if a := rs["r3"].Attempts[0]; a.Provider != "alpha" || a.Outcome != chat.OutcomeBreakerOpen {
		t.Errorf("r3's first attempt %+v, want alpha breaker_open", a)
	}
}

func TestStreamDeadlineDuringAStream(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := streamFleet(t, providers.Config{Name: "slow", Sim: sim.Config{ChunkDelay: 50 * time.Millisecond, Words: 1000}})
	startPool(t, b, f, keepCalling())
	req := streamRequest("r1")
	req.Deadline = time.Now().Add(600 * time.Millisecond)
	publish(t, b, "c1", req, "")
	got := waitDone(t, b, "c1", "r1")
	last := got[len(got)-1]
	if last.Error != chat.CodeDeadlineExceeded || len(got) < 2 {
		t.Errorf("stream %s, want chunks then done with %s", shape(t, got), chat.CodeDeadlineExceeded)
	}
	r := replyTo(t, waitReplies(t, b, 1), "r1")
	if r.Status != chat.StatusFailed || r.Error.Code != chat.CodeDeadlineExceeded || r.Attempts[0].Outcome != chat.OutcomeCut || r.Attempts[0].Chunks == 0 {
		t.Errorf("reply %+v, want deadline_exceeded after a cut attempt", r.Reply)
	}
}

// A client that drops mid-answer resumes from the last seq it saw with an
// ordered consumer on the conversation's chunks, then follows live.
func TestStreamResumeAfterClientDisconnect(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := streamFleet(t, providers.Config{Name: "alpha", Sim: sim.Config{ChunkDelay: 20 * time.Millisecond, Words: 30}})
	startPool(t, b, f, keepCalling())
	publish(t, b, "c1", streamRequest("r1"), "")

	js := b.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	read := func(after uint64, stopAt int) []chat.Chunk {
		cons, err := js.OrderedConsumer(ctx, subj.Stream(chat.KindStream), jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj.Chunk("c1")}})
		if err != nil {
			t.Fatal(err)
		}
		var out []chat.Chunk
		for {
			m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				t.Fatalf("next chunk: %v", err)
			}
			var c chat.Chunk
			if err := json.Unmarshal(m.Data(), &c); err != nil {
				t.Fatal(err)
			}
			if c.ID != "r1" || c.Seq <= after {
				continue
			}
			out = append(out, c)
			if c.Done || len(out) == stopAt {
				return out
			}
		}
	}
	first := read(0, 3) // the client drops after 3 chunks
	rest := read(first[len(first)-1].Seq, 0)
	all := append(first, rest...)
	if sh := shape(t, all); sh != "alpha:30 done" {
		t.Errorf("client saw %s, want alpha:30 done", sh)
	}
	r := replyTo(t, waitReplies(t, b, 1), "r1")
	if r.Content != text(all) {
		t.Errorf("reply %q, client text %q", r.Content, text(all))
	}
}

// A worker stopped mid-stream: the next delivery publishes a reset and
// answers again, its seq following on; one reply is stored.
func TestStreamWorkerStoppedMidStream(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := streamFleet(t, providers.Config{Name: "alpha", Sim: sim.Config{ChunkDelay: 30 * time.Millisecond, Words: 20}})
	s := keepCalling()
	s.cfg.ShutdownGrace = 0
	s.id = "first"
	first := startPool(t, b, f, s)
	publish(t, b, "c1", streamRequest("r1"), "")
	poll.Until(t, 10*time.Second, "3 chunks", func() bool { return len(chunks(t, b, "c1", "r1")) >= 3 })
	first.stop()
	s.id = "second"
	startPool(t, b, f, s)
	got := waitDone(t, b, "c1", "r1")
	sh := shape(t, got)
	if !strings.Contains(sh, "reset(redelivered ->alpha) alpha:20 done") || !strings.HasPrefix(sh, "alpha:") {
		t.Errorf("client saw %s, want alpha's chunks, reset(redelivered ->alpha) alpha:20 done", sh)
	}
	r := replyTo(t, waitReplies(t, b, 1), "r1")
	if r.Content != text(got) || r.Deliveries < 2 {
		t.Errorf("reply %+v, client text %q", r.Reply, text(got))
	}
	lastReset := 0
	for i, c := range got {
		if c.Reset {
			lastReset = i
		}
	}
	for _, c := range got[lastReset:] {
		if c.Delivery < 2 {
			t.Errorf("message %+v of the first delivery after the reset", c)
		}
	}
}

// A request that does not ask to stream is not streamed; stream_default
// streams it.
func TestStreamOptIn(t *testing.T) {
	b := newBroker(t, broker.Topology{})
	f := streamFleet(t, providers.Config{Name: "alpha"})
	s := keepCalling()
	s.cfg.StreamDefault = true
	startPool(t, b, f, s)
	off := false
	plain := request("r-off")
	plain.Stream = &off
	publish(t, b, "c1", plain, "")
	publish(t, b, "c1", request("r-default"), "")
	waitDone(t, b, "c1", "r-default")
	waitReplies(t, b, 2)
	if got := chunks(t, b, "c1", "r-off"); len(got) != 0 {
		t.Errorf("stream false: %d chunks published", len(got))
	}
}

// Each chunk is published as it arrives: the first is in CHAT_STREAM while
// the provider waits its chunk delay before the second (a reader that
// waited to fill a buffer, or for the next event, would publish both
// together, after the delay).
func TestStreamFirstChunkBeforeTheSecond(t *testing.T) {
	const delay = 2 * time.Second
	b := newBroker(t, broker.Topology{})
	f := streamFleet(t, providers.Config{Name: "slow", Timeout: 10 * time.Second, Sim: sim.Config{ChunkDelay: delay}})
	startPool(t, b, f, keepCalling())
	// The rest of the answer is not waited for: the provider stops first.
	t.Cleanup(func() { _ = f.sim("slow").Close() })
	publish(t, b, "c1", streamRequest("r1"), "")
	var got []chat.Chunk
	poll.Until(t, 20*time.Second, "r1's first chunk stored", func() bool {
		got = chunks(t, b, "c1", "r1")
		return len(got) > 0
	})
	if s := shape(t, got); s != "slow:1" {
		t.Errorf("when the first chunk was stored the client saw %s, want slow:1 (the second is %s away)", s, delay)
	}
	poll.Until(t, 20*time.Second, "r1's second chunk stored", func() bool {
		got = chunks(t, b, "c1", "r1")
		return len(got) > 1
	})
}
