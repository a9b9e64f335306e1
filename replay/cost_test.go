package replay_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/replay"
)

func TestBuildCostAndSpared(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	since := time.Now().Add(-time.Second)
	okWith := func(conv, id, provider string, prompt, completion int64) {
		tr.reply(chat.Reply{ID: id, ConversationID: conv, Status: chat.StatusOK, Provider: provider,
			Usage: &chat.Usage{PromptTokens: prompt, CompletionTokens: completion}}, id)
	}
	tr.request("c-1", "r-1")
	okWith("c-1", "r-1", "deepseek", 1_000_000, 500_000)
	tr.request("c-1", "r-2")
	tr.attempt("c-1", "r-2", "deepseek", chat.OutcomeBreakerOpen)
	okWith("c-1", "r-2", "llama", 200_000, 100_000)
	tr.request("c-1", "r-3")
	tr.attempt("c-1", "r-3", "deepseek", chat.OutcomeBreakerOpen)
	okWith("c-1", "r-3", "llama", 200_000, 100_000)
	okWith("c-1", "r-3", "llama", 7, 7)       // a duplicate reply costs nothing more
	okWith("c-9", "elsewhere", "llama", 9, 9) // not a request of the window

	opt := replay.Options{Since: since, Providers: map[string]replay.ProviderInfo{
		"deepseek": {Price: &providers.Price{PromptPerMTok: 0.5, CompletionPerMTok: 2}, Timeout: 30 * time.Second},
		"llama":    {Timeout: 10 * time.Second}, // no price: tokens, no spend
	}}
	r, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], opt)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Cost   json.RawMessage `json:"cost"`
		Spared json.RawMessage `json:"spared"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	wantCost := `{"total":1.5,"by_provider":{"deepseek":{"prompt_tokens":1000000,"completion_tokens":500000,"spend":1.5},"llama":{"prompt_tokens":400000,"completion_tokens":200000}}}`
	if c := compact(t, got.Cost); c != wantCost {
		t.Errorf("cost = %s, want %s", c, wantCost)
	}
	wantSpared := `{"deepseek":{"calls":2,"wait_ms":60000}}`
	if s := compact(t, got.Spared); s != wantSpared {
		t.Errorf("spared = %s, want %s", s, wantSpared)
	}
	var text, page bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteHTML(&page); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1.5000", "1000000", "Spared by the breakers", "1m0s"} {
		if !strings.Contains(text.String(), want) || !strings.Contains(page.String(), want) {
			t.Errorf("text or HTML lacks %q", want)
		}
	}
}

func compact(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}
