package replay_test

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/replay"
)

// outage publishes a scripted incident and returns what it published.
type outageScript struct {
	since       time.Time
	transitions []replay.Transition
	qwenOpened  time.Time
}

// publishOutage: 20 requests served by deepseek; deepseek fails 5 times
// (llama answers) and its breaker opens; 15 more served by llama while
// deepseek is skipped; deepseek half-opens and closes; 20 served by deepseek;
// one request fails after a timeout and an error (retry, failed reply, dead
// letter); two stay unanswered (one after a retry); one is unreadable (failed
// invalid_request reply and dead letter found by stream sequence). Before the
// window: one request (answered inside it) and qwen's breaker opening, never
// closed. On worker w-2 llama's breaker opens and stays open.
func publishOutage(t *testing.T, tr trail) outageScript {
	conv := func(i int) string { return fmt.Sprintf("c-%d", i%6) }
	id := func(i int) string { return fmt.Sprintf("r-%02d", i) }

	// Before the window.
	tr.request("c-old", "old-1")
	tr.attempt("c-old", "old-1", "deepseek", chat.OutcomeOK)
	var s outageScript
	s.qwenOpened = tr.breaker("w-1", "qwen", "closed", "open")
	s.since = time.Now()
	for !time.Now().After(s.since) { // the stored times to come are strictly later
	}
	tr.ok("c-old", "old-1", "deepseek", false)

	tt := func(at time.Time, worker, p, from, to string) {
		s.transitions = append(s.transitions, replay.Transition{At: at, Provider: p, From: from, To: to, Worker: worker})
	}
	for i := 1; i <= 20; i++ {
		tr.request(conv(i), id(i))
		tr.attempt(conv(i), id(i), "deepseek", chat.OutcomeOK)
		tr.ok(conv(i), id(i), "deepseek", false)
	}
	for i := 21; i <= 25; i++ {
		tr.request(conv(i), id(i))
		tr.attempt(conv(i), id(i), "deepseek", chat.OutcomeError)
		tr.attempt(conv(i), id(i), "llama", chat.OutcomeOK)
		tr.ok(conv(i), id(i), "llama", true)
	}
	tt(tr.breaker("w-1", "deepseek", "closed", "open"), "w-1", "deepseek", "closed", "open")
	for i := 26; i <= 40; i++ {
		tr.request(conv(i), id(i))
		tr.attempt(conv(i), id(i), "deepseek", chat.OutcomeBreakerOpen)
		tr.attempt(conv(i), id(i), "llama", chat.OutcomeOK)
		tr.ok(conv(i), id(i), "llama", true)
	}
	tt(tr.breaker("w-1", "deepseek", "open", "half-open"), "w-1", "deepseek", "open", "half-open")
	tt(tr.breaker("w-1", "deepseek", "half-open", "closed"), "w-1", "deepseek", "half-open", "closed")
	for i := 41; i <= 60; i++ {
		tr.request(conv(i), id(i))
		tr.attempt(conv(i), id(i), "deepseek", chat.OutcomeOK)
		tr.ok(conv(i), id(i), "deepseek", false)
	}
	// r-61 fails.
	seq := tr.request("c-1", "r-61")
	tr.attempt("c-1", "r-61", "deepseek", chat.OutcomeTimeout)
	tr.attempt("c-1", "r-61", "llama", chat.OutcomeError)
	tr.retry("c-1", "r-61")
	tr.failed("c-1", "r-61", "r-61", chat.CodeDeadlineExceeded)
	tr.dead("c-1", []byte(`{"id":"r-61"}`), "r-61", chat.CodeDeadlineExceeded, seq)
	// r-62 and r-63 are never answered.
	tr.request("c-2", "r-62")
	tr.retry("c-2", "r-62")
	tr.request("c-3", "r-63")
	tt(tr.breaker("w-2", "llama", "closed", "open"), "w-2", "llama", "closed", "open")
	// An unreadable request.
	garbage := []byte("not json at all")
	seq = tr.raw("c-4", garbage, nil)
	tr.failed("c-4", "", fmt.Sprintf("invalid-%d", seq), chat.CodeInvalidRequest)
	tr.dead("c-4", garbage, "", chat.CodeInvalidRequest, seq)
	return s
}

func TestBuildScriptedOutage(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	script := publishOutage(t, tr)
	ctx := testCtx(t, 30*time.Second)

	var progress bytes.Buffer
	r, err := replay.Build(ctx, b, subjs[0], replay.Options{Since: script.since, Progress: &progress})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	counts := []struct {
		name      string
		got, want int
	}{
		{"requests", r.Requests, 64},
		{"ok", r.OK, 60},
		{"failed", r.Failed, 2},
		{"unanswered", r.Unanswered, 2},
		{"dead_letters", r.DeadLetters, 2},
		{"degraded", r.Degraded, 20},
		{"retries", r.Retries, 2},
		{"duplicate_requests", r.DuplicateRequests, 0},
		{"duplicate_replies", r.DuplicateReplies, 0},
	}
	for _, c := range counts {
		t.Run(c.name, func(t *testing.T) {
			if c.got != c.want {
				t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
			}
		})
	}
	maps := []struct {
		name      string
		got, want any
	}{
		{"by_provider", r.ByProvider, map[string]int{"deepseek": 40, "llama": 20}},
		{"attempts", r.Attempts, map[string]map[chat.Outcome]int{
			"deepseek": {chat.OutcomeOK: 40, chat.OutcomeError: 5, chat.OutcomeBreakerOpen: 15, chat.OutcomeTimeout: 1},
			"llama":    {chat.OutcomeOK: 20, chat.OutcomeError: 1},
		}},
		{"failed_by_code", r.FailedByCode, map[string]int{chat.CodeDeadlineExceeded: 1, chat.CodeInvalidRequest: 1}},
		{"breaker_transitions", r.BreakerTransitions, script.transitions},
	}
	for _, c := range maps {
		t.Run(c.name, func(t *testing.T) {
			if !reflect.DeepEqual(c.got, c.want) {
				t.Errorf("%s =\n%+v\nwant\n%+v", c.name, c.got, c.want)
			}
		})
	}
	t.Run("breaker_open", func(t *testing.T) {
		tr := script.transitions
		want := []replay.OpenPeriod{
			{Provider: "qwen", From: script.qwenOpened},
			{Provider: "deepseek", From: tr[0].At, To: tr[2].At},
			{Provider: "llama", From: tr[3].At},
		}
		if !reflect.DeepEqual(r.BreakerOpen, want) {
			t.Errorf("breaker_open =\n%+v\nwant\n%+v", r.BreakerOpen, want)
		}
	})
	t.Run("latency", func(t *testing.T) {
		l := r.LatencyMS
		if l.P50 < 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.Max || l.Max > 30_000 {
			t.Errorf("latency_ms %+v is not ordered or too long", l)
		}
	})
	t.Run("timeline", func(t *testing.T) {
		if len(r.Timeline) == 0 || len(r.Timeline) > 3 {
			t.Fatalf("timeline has %d minutes, want 1 to 3", len(r.Timeline))
		}
		var requests, failed, unanswered, retries int
		ok := map[string]int{}
		deepseekOpen := false
		for i, m := range r.Timeline {
			if i > 0 && m.Start.Sub(r.Timeline[i-1].Start) != time.Minute {
				t.Errorf("minute %d starts at %s, not a minute after the previous one", i, m.Start)
			}
			if !m.Start.Equal(m.Start.Truncate(time.Minute)) {
				t.Errorf("minute %d starts at %s, not on a minute", i, m.Start)
			}
			requests += m.Requests
			failed += m.Failed
			unanswered += m.Unanswered
			retries += m.Retries
			for p, n := range m.OK {
				ok[p] += n
			}
			if !containsStr(m.BreakerOpen, "qwen") {
				t.Errorf("minute %s: qwen's breaker (open since before the window) not listed: %v", m.Start, m.BreakerOpen)
			}
			deepseekOpen = deepseekOpen || containsStr(m.BreakerOpen, "deepseek")
		}
		if requests != 64 || failed != 2 || unanswered != 2 || retries != 2 || !reflect.DeepEqual(ok, r.ByProvider) {
			t.Errorf("timeline sums: requests %d failed %d unanswered %d retries %d ok %v", requests, failed, unanswered, retries, ok)
		}
		if !deepseekOpen {
			t.Errorf("no minute lists deepseek's breaker as open")
		}
	})
	t.Run("progress", func(t *testing.T) {
		out := progress.String()
		if !strings.HasSuffix(out, "\n") || !strings.Contains(out, "CHAT_REQUESTS") || !strings.Contains(out, "64 requests in the window") {
			t.Errorf("progress output %q", out)
		}
	})
	t.Run("renderers", func(t *testing.T) {
		var text, page bytes.Buffer
		if err := r.WriteText(&text); err != nil {
			t.Fatal(err)
		}
		if err := r.WriteHTML(&page); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"requests                  64", "deepseek", "closed -> open", "half-open -> closed", "p50", "Timeline"} {
			if !strings.Contains(text.String(), want) {
				t.Errorf("text report lacks %q:\n%s", want, text.String())
			}
		}
		t.Logf("text report:\n%s", text.String())
	})
}

func containsStr(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestBuildEmptyWindow(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	now := time.Now()
	tests := []struct {
		name    string
		publish func()
		opt     replay.Options
	}{
		{"fresh streams", func() {}, replay.Options{Since: now.Add(-time.Hour)}},
		{"traffic after the window", func() {
			tr.request("c-1", "late-1")
			tr.ok("c-1", "late-1", "deepseek", false)
			tr.attempt("c-1", "late-1", "deepseek", chat.OutcomeOK)
			tr.retry("c-1", "late-1")
		}, replay.Options{Since: now.Add(-time.Hour), Until: now}},
		{"another conversation", func() {}, replay.Options{Since: now.Add(-time.Hour), Conversation: "nobody"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.publish()
			r, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], tt.opt)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if r.Requests+r.OK+r.Failed+r.Unanswered+r.DeadLetters+r.Degraded+r.Retries+r.DuplicateReplies+r.DuplicateRequests != 0 ||
				len(r.ByProvider)+len(r.Attempts)+len(r.BreakerTransitions)+len(r.Timeline)+len(r.FailedByCode)+len(r.BreakerOpen) != 0 ||
				r.LatencyMS != (replay.Latency{}) {
				t.Errorf("report not empty: %+v", r)
			}
			var buf bytes.Buffer
			for name, write := range map[string]func() error{
				"json": func() error { return r.WriteJSON(&buf) },
				"text": func() error { return r.WriteText(&buf) },
				"html": func() error { return r.WriteHTML(&buf) },
			} {
				buf.Reset()
				if err := write(); err != nil || buf.Len() == 0 {
					t.Errorf("%s: %d bytes, error %v", name, buf.Len(), err)
				}
			}
			if err := r.WriteJSON(&buf); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(buf.String(), `"by_provider": {}`) || !strings.Contains(buf.String(), `"timeline": []`) {
				t.Errorf("empty collections are not {} and []:\n%s", buf.String())
			}
		})
	}
}

func TestBuildWindowAndConversation(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	since := time.Now()
	// Before the cut: a-1 ok, a-2 unanswered, b-1 ok by llama, b-2 unanswered.
	tr.request("conv-a", "a-1")
	tr.request("conv-a", "a-2")
	tr.request("conv-b", "b-1")
	tr.request("conv-b", "b-2")
	cut := time.Now()
	for !time.Now().After(cut) {
	}
	// After it: a-3 and b-3, answered; the answers to a-1 and b-1 come late.
	tr.request("conv-a", "a-3")
	tr.request("conv-b", "b-3")
	tr.ok("conv-a", "a-1", "deepseek", false)
	tr.ok("conv-b", "b-1", "llama", true)
	tr.ok("conv-a", "a-3", "deepseek", false)
	tr.ok("conv-b", "b-3", "deepseek", false)
	tr.attempt("conv-a", "a-3", "deepseek", chat.OutcomeOK)
	tr.attempt("conv-a", "a-1", "deepseek", chat.OutcomeOK)
	// The same request published again after the duplicate window would
	// count once; here a reply re-published without its header.
	tr.publish(subjs[0].Reply("conv-a"), mustJSON(t, chat.Reply{ID: "a-1", Status: chat.StatusOK, Provider: "deepseek"}), nil)

	tests := []struct {
		name string
		opt  replay.Options
		want [5]int // requests, ok, unanswered, degraded, duplicate replies
		prov map[string]int
		// attempts: an ok reply's answering attempt counts once, from
		// its event (a-1, a-3: as earlier workers wrote them) or from the
		// reply alone (b-1, b-3)
		att int
	}{
		{"everything", replay.Options{Since: since}, [5]int{6, 4, 2, 1, 1}, map[string]int{"deepseek": 3, "llama": 1}, 4},
		{"until the cut", replay.Options{Since: since, Until: cut}, [5]int{4, 2, 2, 1, 1}, map[string]int{"deepseek": 1, "llama": 1}, 2},
		{"conversation a", replay.Options{Since: since, Conversation: "conv-a"}, [5]int{3, 2, 1, 0, 1}, map[string]int{"deepseek": 2}, 2},
		{"conversation b until the cut", replay.Options{Since: since, Until: cut, Conversation: "conv-b"}, [5]int{2, 1, 1, 1, 0}, map[string]int{"llama": 1}, 1},
		{"after the cut", replay.Options{Since: cut}, [5]int{2, 2, 0, 0, 0}, map[string]int{"deepseek": 2}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], tt.opt)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			got := [5]int{r.Requests, r.OK, r.Unanswered, r.Degraded, r.DuplicateReplies}
			if got != tt.want {
				t.Errorf("requests, ok, unanswered, degraded, duplicate replies = %v, want %v", got, tt.want)
			}
			if !maps.Equal(r.ByProvider, tt.prov) {
				t.Errorf("by_provider = %v, want %v", r.ByProvider, tt.prov)
			}
			n := 0
			for _, byOutcome := range r.Attempts {
				for _, c := range byOutcome {
					n += c
				}
			}
			if n != tt.att {
				t.Errorf("%d attempts, want %d", n, tt.att)
			}
		})
	}
}

func TestBuildInvalidOptions(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	now := time.Now()
	tests := []struct {
		name string
		opt  replay.Options
		subj chat.Subjects
		want string
	}{
		{"since after until", replay.Options{Since: now, Until: now.Add(-time.Minute)}, subjs[0], "must be before until"},
		{"since equal to until", replay.Options{Since: now, Until: now}, subjs[0], "must be before until"},
		{"since in the future", replay.Options{Since: now.Add(time.Hour)}, subjs[0], "must be before until"},
		{"bad conversation", replay.Options{Conversation: "a.b"}, subjs[0], `conversation "a.b"`},
		{"wildcard conversation", replay.Options{Conversation: "*"}, subjs[0], "not a conversation id"},
		{"long conversation", replay.Options{Conversation: strings.Repeat("x", 129)}, subjs[0], "not a conversation id"},
		{"zero subjects", replay.Options{}, chat.Subjects{}, "prefix is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := replay.Build(testCtx(t, 10*time.Second), b, tt.subj, tt.opt)
			if !errors.Is(err, replay.ErrInvalidOption) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build: %v, want ErrInvalidOption with %q", err, tt.want)
			}
		})
	}
	if _, err := replay.Build(testCtx(t, 10*time.Second), nil, subjs[0], replay.Options{}); !errors.Is(err, replay.ErrInvalidOption) {
		t.Errorf("Build with a nil source: %v", err)
	}
}
