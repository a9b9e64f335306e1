package replay_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/replay"
)

func TestBuildImpact(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	since := time.Now().Add(-time.Second)
	retry := func(conv, id string, delayMS int64) {
		tr.event(chat.Event{Type: chat.EventRetry, Worker: "w-1", RequestID: id, ConversationID: conv, DelayMS: delayMS}, conv)
	}
	tr.request("c-1", "before-1")
	tr.ok("c-1", "before-1", "deepseek", false)
	tr.breaker("w-1", "deepseek", "closed", "open")
	tr.request("c-1", "open-1")
	retry("c-1", "open-1", 1000)
	retry("c-1", "open-1", 2000)
	tr.ok("c-1", "open-1", "llama", true)
	tr.request("c-1", "open-2")
	retry("c-1", "open-2", 500)
	tr.failed("c-1", "open-2", "open-2", chat.CodeProvidersExhausted)
	tr.request("c-1", "open-3")
	tr.ok("c-1", "open-3", "llama", true)
	tr.breaker("w-1", "deepseek", "open", "half-open")
	tr.breaker("w-2", "deepseek", "half-open", "closed")
	tr.request("c-1", "after-1")
	tr.ok("c-1", "after-1", "deepseek", false)

	r, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], replay.Options{Since: since})
	if err != nil {
		t.Fatal(err)
	}
	im := r.Impact
	if im.DegradedShare != 0.5 {
		t.Errorf("degraded_share = %v, want 0.5 (2 of 4 ok)", im.DegradedShare)
	}
	if im.LatencyOpen.N != 3 || im.LatencyClosed.N != 2 {
		t.Errorf("answered inside open periods %d, outside %d; want 3 and 2", im.LatencyOpen.N, im.LatencyClosed.N)
	}
	if q := im.Queued; q.Requests != 2 || q.MaxMS != 3000 || q.WaitMS.P50 != 500 || q.WaitMS.P99 != 3000 {
		t.Errorf("queued = %+v, want 2 requests, p50 500, p99 and max 3000", q)
	}
	if im.FailedByCode[chat.CodeProvidersExhausted] != 1 {
		t.Errorf("failed_by_code = %v", im.FailedByCode)
	}
	n := 0
	for _, m := range r.Timeline {
		n += m.LatencyMS.N
	}
	if n != 5 {
		t.Errorf("timeline latencies count %d answered, want 5", n)
	}
	var text, page, js bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteHTML(&page); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Impact on users", "50.0% of ok", "2 requests, put back for p50 500ms", "providers_exhausted 1"} {
		if !strings.Contains(text.String(), want) || !strings.Contains(page.String(), want) {
			t.Errorf("text or HTML lacks %q:\n%s", want, text.String())
		}
	}
	for _, want := range []string{`class="latency-p50"`, `class="latency-p99"`} {
		if !strings.Contains(page.String(), want) {
			t.Errorf("HTML chart lacks %s", want)
		}
	}
	for _, want := range []string{`"impact"`, `"latency_open_ms"`, `"latency_closed_ms"`, `"degraded_share": 0.5`} {
		if !strings.Contains(js.String(), want) {
			t.Errorf("JSON lacks %s", want)
		}
	}
}
