package replay_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/replay"
)

// TestBuildFirstChunk: the time to first chunk is spread per provider of
// the first chunk, over the replies that streamed only.
func TestBuildFirstChunk(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	since := time.Now().Add(-time.Second)
	reply := func(id string, r chat.Reply) {
		t.Helper()
		tr.request("c-1", id)
		r.ID, r.ConversationID, r.Status = id, "c-1", chat.StatusOK
		if r.Deliveries == 0 {
			r.Deliveries = 1
		}
		tr.reply(r, id)
	}
	streamed := func(provider string, chunks int) chat.Attempt {
		return chat.Attempt{Provider: provider, Outcome: chat.OutcomeOK, Delivery: 1, Chunks: chunks, FirstChunkMS: 5}
	}
	// deepseek streams: 100, 200, 300 ms, and 0 ms (first_chunk_ms omitted).
	for i, ms := range []int64{100, 200, 300, 0} {
		reply("ds-"+string(rune('a'+i)), chat.Reply{Provider: "deepseek", FirstChunkMS: ms,
			Attempts: []chat.Attempt{streamed("deepseek", 4)}})
	}
	// deepseek cut after 2 chunks, llama answered: the first chunk was
	// deepseek's.
	cut := streamed("deepseek", 2)
	cut.Outcome = chat.OutcomeCut
	reply("cut", chat.Reply{Provider: "llama", Degraded: true, FirstChunkMS: 400,
		Attempts: []chat.Attempt{cut, streamed("llama", 3)}})
	// deepseek timed out before its first chunk: llama's came first.
	reply("late", chat.Reply{Provider: "llama", Degraded: true, FirstChunkMS: 900,
		Attempts: []chat.Attempt{{Provider: "deepseek", Outcome: chat.OutcomeTimeout, Delivery: 1}, streamed("llama", 3)}})
	// Redelivered: the first delivery's chunks were deepseek's, this
	// delivery's first chunk llama's.
	again := streamed("llama", 3)
	again.Delivery = 2
	reply("again", chat.Reply{Provider: "llama", Degraded: true, Deliveries: 2, FirstChunkMS: 50,
		Attempts: []chat.Attempt{streamed("deepseek", 2), again}})
	// Not streamed: not counted.
	reply("whole", chat.Reply{Provider: "deepseek", Attempts: []chat.Attempt{{Provider: "deepseek", Outcome: chat.OutcomeOK, Delivery: 1}}})
	tr.request("c-1", "plain")
	tr.ok("c-1", "plain", "qwen", false)

	r, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], replay.Options{Since: since})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var got struct {
		FirstChunk json.RawMessage `json:"first_chunk_ms"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := `{"deepseek":{"n":5,"p50":200,"p99":400},"llama":{"n":2,"p50":50,"p99":900}}`
	if c := compact(t, got.FirstChunk); c != want {
		t.Errorf("first_chunk_ms = %s, want %s", c, want)
	}
	var text, page bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteHTML(&page); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Time to first chunk", "200 ms", "900 ms"} {
		if !strings.Contains(text.String(), want) || !strings.Contains(page.String(), want) {
			t.Errorf("text or HTML lacks %q", want)
		}
	}
	if strings.Contains(text.String(), "qwen    1") {
		t.Errorf("a reply that did not stream is in the time to first chunk:\n%s", text.String())
	}

	// No streamed replies: an empty object, and "none".
	b2, subjs2 := newBroker(t, "chat")
	tr2 := trail{t: t, js: b2.JetStream(), subj: subjs2[0]}
	tr2.request("c-1", "plain")
	tr2.ok("c-1", "plain", "qwen", false)
	r, err = replay.Build(testCtx(t, 20*time.Second), b2, subjs2[0], replay.Options{Since: since})
	if err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"first_chunk_ms": {}`) {
		t.Errorf("JSON without streamed replies lacks an empty first_chunk_ms:\n%s", buf.String())
	}
}
