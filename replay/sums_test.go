package replay_test

import (
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/replay"
)

// checkSums fails unless ok + failed + unanswered = requests, in total and
// in every minute of the timeline.
func checkSums(t *testing.T, r *replay.Report) {
	t.Helper()
	if got := r.OK + r.Failed + r.Unanswered; got != r.Requests {
		t.Errorf("ok %d + failed %d + unanswered %d = %d, want requests %d", r.OK, r.Failed, r.Unanswered, got, r.Requests)
	}
	codes := 0
	for _, n := range r.FailedByCode {
		codes += n
	}
	if codes != r.Failed {
		t.Errorf("failed_by_code %v sums to %d, want failed %d", r.FailedByCode, codes, r.Failed)
	}
	total := 0
	for _, m := range r.Timeline {
		ok := 0
		for _, n := range m.OK {
			ok += n
		}
		if ok+m.Failed+m.Unanswered != m.Requests {
			t.Errorf("minute %s: ok %d + failed %d + unanswered %d != requests %d", m.Start, ok, m.Failed, m.Unanswered, m.Requests)
		}
		total += m.Requests
	}
	if total != r.Requests {
		t.Errorf("timeline requests sum to %d, want %d", total, r.Requests)
	}
}

// A request on a subject token that is not a conversation id gets a dead
// letter on <prefix>.dead._invalid and, by design, no reply: it is failed
// (by the dead letter's code) in the summary as in the timeline.
func TestBuildInvalidTokenDeadLetterIsFailed(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	since := time.Now().Add(-time.Second)
	tr.request("c-1", "ok-1")
	tr.ok("c-1", "ok-1", "deepseek", false)
	data := mustJSON(t, chat.Request{ID: "bad-1", Messages: []chat.Message{{Role: chat.RoleUser, Content: "hi"}}})
	seq := tr.publish("chat.requests.bad~token", data, msgID("bad-1")).Sequence
	tr.dead(chat.InvalidToken, data, "bad-1", chat.CodeInvalidRequest, seq)

	r, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], replay.Options{Since: since})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if r.Requests != 2 || r.Failed != 1 || r.DeadLetters != 1 || r.FailedByCode[chat.CodeInvalidRequest] != 1 {
		t.Errorf("requests %d failed %d dead letters %d failed_by_code %v, want 2, 1, 1, invalid_request 1",
			r.Requests, r.Failed, r.DeadLetters, r.FailedByCode)
	}
	c := replay.Compare(r, r)
	if c.Original.Failed != 1 || c.Original.Failed+c.Original.OK+c.Original.Unanswered != c.Original.Requests {
		t.Errorf("compare summary %+v does not add up", c.Original)
	}
}

// A request whose id was answered through another message (the same id
// published in another conversation, served there) is answered, not
// unanswered, in a report restricted to its conversation.
func TestBuildConversationAnsweredElsewhere(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	since := time.Now().Add(-time.Second)
	tr.request("conv-a", "x-1")
	tr.request("conv-b", "x-1")
	tr.attempt("conv-b", "x-1", "deepseek", chat.OutcomeOK)
	tr.ok("conv-b", "x-1", "deepseek", false)

	r, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], replay.Options{Since: since, Conversation: "conv-a"})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if r.Requests != 1 || r.OK != 1 || r.Unanswered != 0 || r.ByProvider["deepseek"] != 1 {
		t.Errorf("requests %d ok %d unanswered %d by_provider %v, want 1, 1, 0, deepseek 1", r.Requests, r.OK, r.Unanswered, r.ByProvider)
	}
}
