package replay_test

import (
	"maps"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/replay"
)

// TestFoldedAttemptsCountOnce: an ok reply carries its delivery's answering
// attempt and skips in place of their events; a call that failed has its
// event. Each attempt counts once, whether the reply or an event holds it,
// and streams of earlier workers (every attempt an event, the reply too)
// count the same.
func TestFoldedAttemptsCountOnce(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	since := time.Now()
	skip := chat.Attempt{Provider: "deepseek", Outcome: chat.OutcomeBreakerOpen, Delivery: 1}
	failed := chat.Attempt{Provider: "deepseek", Outcome: chat.OutcomeError, StatusCode: 503, LatencyMS: 40, Delivery: 1}
	answer := chat.Attempt{Provider: "llama", Outcome: chat.OutcomeOK, StatusCode: 200, LatencyMS: 40, Delivery: 1}
	reply := func(conv, id string, deliveries uint64, attempts ...chat.Attempt) {
		r := chat.Reply{ID: id, ConversationID: conv, Status: chat.StatusOK, Content: "hi", Provider: "llama",
			Degraded: true, Deliveries: deliveries, Attempts: attempts}
		tr.reply(r, id)
	}
	// Today's workers: a skip and the answer in the reply alone.
	tr.request("c-1", "skipped")
	reply("c-1", "skipped", 1, skip, answer)
	// A failed call: its event, and the reply.
	tr.request("c-1", "fell-back")
	tr.attempt("c-1", "fell-back", "deepseek", chat.OutcomeError)
	reply("c-1", "fell-back", 1, failed, answer)
	// Put back once (its skip an event, delivery 1), answered on delivery 2.
	tr.request("c-2", "second")
	tr.event(chat.Event{Type: chat.EventAttempt, Worker: "w-1", RequestID: "second", ConversationID: "c-2", Delivery: 1,
		Provider: "deepseek", Outcome: chat.OutcomeBreakerOpen}, "c-2")
	again := answer
	again.Delivery = 2
	reply("c-2", "second", 2, skip, again)
	// An earlier worker: every attempt an event as well.
	tr.request("c-3", "old")
	tr.event(chat.Event{Type: chat.EventAttempt, Worker: "w-1", RequestID: "old", ConversationID: "c-3", Delivery: 1,
		Provider: "deepseek", Outcome: chat.OutcomeBreakerOpen}, "c-3")
	tr.event(chat.Event{Type: chat.EventAttempt, Worker: "w-1", RequestID: "old", ConversationID: "c-3", Delivery: 1,
		Provider: "llama", Outcome: chat.OutcomeOK, StatusCode: 200}, "c-3")
	reply("c-3", "old", 1, skip, answer)

	r, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], replay.Options{Since: since})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[chat.Outcome]int{
		"deepseek": {chat.OutcomeBreakerOpen: 3, chat.OutcomeError: 1},
		"llama":    {chat.OutcomeOK: 4},
	}
	for p, byOutcome := range want {
		if !maps.Equal(r.Attempts[p], byOutcome) {
			t.Errorf("attempts of %s = %v, want %v", p, r.Attempts[p], byOutcome)
		}
	}
	if len(r.Attempts) != len(want) {
		t.Errorf("attempts = %v, want %v", r.Attempts, want)
	}
}
