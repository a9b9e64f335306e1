package replay_test

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/replay"
)

// handMade is a report over five minutes with a breaker outage, and names
// that need escaping.
func handMade() *replay.Report {
	t0 := time.Date(2026, 1, 20, 12, 0, 0, 0, time.UTC)
	minute := func(i, req int, ok map[string]int, failed, unanswered, retries int, open ...string) replay.Minute {
		if open == nil {
			open = []string{}
		}
		return replay.Minute{Start: t0.Add(time.Duration(i) * time.Minute), Requests: req, OK: ok, Failed: failed,
			Unanswered: unanswered, Retries: retries, BreakerOpen: open}
	}
	evil := `<script>alert("x")</script>`
	return &replay.Report{
		Since: t0, Until: t0.Add(5 * time.Minute),
		Requests: 50, OK: 46, Failed: 2, Unanswered: 2, DeadLetters: 2, Degraded: 16,
		ByProvider: map[string]int{"deepseek": 30, "llama": 15, evil: 1},
		Attempts: map[string]map[chat.Outcome]int{
			"deepseek": {chat.OutcomeOK: 30, chat.OutcomeError: 5, chat.OutcomeBreakerOpen: 12},
			"llama":    {chat.OutcomeOK: 15},
			evil:       {chat.OutcomeOK: 1, "weird": 2},
		},
		BreakerTransitions: []replay.Transition{
			{At: t0.Add(70 * time.Second), Provider: "deepseek", From: "closed", To: "open", Worker: evil},
			{At: t0.Add(190 * time.Second), Provider: "deepseek", From: "open", To: "half-open"},
			{At: t0.Add(195 * time.Second), Provider: "deepseek", From: "half-open", To: "closed"},
		},
		BreakerOpen:  []replay.OpenPeriod{{Provider: "deepseek", From: t0.Add(70 * time.Second), To: t0.Add(195 * time.Second)}},
		LatencyMS:    replay.Latency{P50: 800, P90: 1500, P99: 4000, Max: 9000},
		FailedByCode: map[string]int{chat.CodeDeadlineExceeded: 2},
		Retries:      3,
		Timeline: []replay.Minute{
			minute(0, 10, map[string]int{"deepseek": 10}, 0, 0, 0),
			minute(1, 10, map[string]int{"deepseek": 2, "llama": 7}, 1, 0, 1, "deepseek"),
			minute(2, 10, map[string]int{"llama": 8, evil: 1}, 1, 0, 2, "deepseek"),
			minute(3, 10, map[string]int{"deepseek": 8}, 0, 2, 0, "deepseek"),
			minute(4, 10, map[string]int{"deepseek": 10}, 0, 0, 0),
		},
	}
}

// parseHTML checks that page is well-formed (html/template output of this
// package is also well-formed XML) and returns the number of <g
// class="minute"> inside <svg id="timeline">, and every attribute value.
func parseHTML(t *testing.T, page []byte) (minutes int, attrs []string, svgs int) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(page))
	dec.Strict = true
	inChart := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("page does not parse: %v\n%s", err, page)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			for _, a := range el.Attr {
				attrs = append(attrs, a.Value)
			}
			if el.Name.Local == "script" || el.Name.Local == "link" || el.Name.Local == "img" || el.Name.Local == "iframe" {
				t.Errorf("page has a <%s> element", el.Name.Local)
			}
			if inChart > 0 {
				inChart++
			}
			if el.Name.Local == "svg" && slices.Contains(attrs[len(attrs)-len(el.Attr):], "timeline") {
				inChart, svgs = 1, svgs+1
			}
			if inChart > 0 && el.Name.Local == "g" && len(el.Attr) == 1 && el.Attr[0].Value == "minute" {
				minutes++
			}
		case xml.EndElement:
			if inChart > 0 {
				inChart--
			}
		}
	}
	return minutes, attrs, svgs
}

func TestWriteHTML(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	script := publishOutage(t, tr)
	built, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], replay.Options{Since: script.since})
	if err != nil {
		t.Fatal(err)
	}
	empty, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], replay.Options{Since: time.Now().Add(-time.Hour), Until: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		report *replay.Report
	}{
		{"hand made, five minutes", handMade()},
		{"scripted outage", built},
		{"empty", empty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tt.report.WriteHTML(&buf); err != nil {
				t.Fatal(err)
			}
			page := buf.Bytes()
			minutes, attrs, svgs := parseHTML(t, page)
			if want := len(tt.report.Timeline); minutes != want {
				t.Errorf("%d minute groups in the chart, want %d", minutes, want)
			}
			if want := min(len(tt.report.Timeline), 1); svgs != want {
				t.Errorf("%d timeline charts, want %d", svgs, want)
			}
			low := strings.ToLower(string(page))
			for _, bad := range []string{"http://", "https://", "//cdn", "<script", "@import", "url(", "src="} {
				if strings.Contains(low, bad) {
					t.Errorf("page contains %q", bad)
				}
			}
			for _, a := range attrs {
				if strings.Contains(a, "//") {
					t.Errorf("attribute value %q looks like a reference", a)
				}
			}
			if !strings.HasPrefix(string(page), "<!DOCTYPE html>") {
				t.Errorf("page does not start with a doctype")
			}
			if tt.report.Requests > 0 && !strings.Contains(string(page), "breaker-open") && len(tt.report.BreakerOpen) > 0 {
				t.Errorf("no breaker-open shading")
			}
		})
	}
	t.Run("escaping", func(t *testing.T) {
		var buf bytes.Buffer
		if err := handMade().WriteHTML(&buf); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), "&lt;script&gt;") {
			t.Errorf("provider name not escaped")
		}
	})
}

func TestWriteJSONKeys(t *testing.T) {
	b, subjs := newBroker(t, "chat")
	tr := trail{t: t, js: b.JetStream(), subj: subjs[0]}
	script := publishOutage(t, tr)
	built, err := replay.Build(testCtx(t, 20*time.Second), b, subjs[0], replay.Options{Since: script.since, Conversation: "c-1"})
	if err != nil {
		t.Fatal(err)
	}
	spec := []string{"requests", "ok", "failed", "unanswered", "dead_letters", "degraded", "by_provider", "attempts",
		"breaker_transitions", "latency_ms", "timeline"}
	extras := []string{"since", "until", "conversation", "retries", "failed_by_code", "breaker_open", "duplicate_requests", "duplicate_replies", "cost", "spared", "impact", "first_chunk_ms"}
	for _, tt := range []struct {
		name   string
		report *replay.Report
	}{{"built", built}, {"hand made", handMade()}} {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tt.report.WriteJSON(&buf); err != nil {
				t.Fatal(err)
			}
			var top map[string]json.RawMessage
			if err := json.Unmarshal(buf.Bytes(), &top); err != nil {
				t.Fatal(err)
			}
			want := append(slices.Clone(spec), extras...)
			if tt.report.Conversation == "" {
				want = slices.DeleteFunc(want, func(k string) bool { return k == "conversation" })
			}
			checkKeys(t, "report", top, want)
			var lat map[string]json.RawMessage
			if err := json.Unmarshal(top["latency_ms"], &lat); err != nil {
				t.Fatal(err)
			}
			checkKeys(t, "latency_ms", lat, []string{"p50", "p90", "p99", "max"})
			var transitions []map[string]json.RawMessage
			if err := json.Unmarshal(top["breaker_transitions"], &transitions); err != nil || len(transitions) == 0 {
				t.Fatalf("breaker_transitions: %v, %d", err, len(transitions))
			}
			checkKeys(t, "breaker_transitions[0]", transitions[0], []string{"at", "provider", "from", "to", "worker"})
			var timeline []map[string]json.RawMessage
			if err := json.Unmarshal(top["timeline"], &timeline); err != nil || len(timeline) == 0 {
				t.Fatalf("timeline: %v, %d", err, len(timeline))
			}
			checkKeys(t, "timeline[0]", timeline[0], []string{"start", "requests", "ok", "failed", "unanswered", "retries", "breaker_open", "latency_ms"})
			var attempts map[string]map[string]int
			if err := json.Unmarshal(top["attempts"], &attempts); err != nil || attempts["deepseek"]["ok"] == 0 {
				t.Errorf("attempts %v (%v): not provider → outcome → count", attempts, err)
			}
			// Round trip.
			var back replay.Report
			if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back.Requests != tt.report.Requests || len(back.Timeline) != len(tt.report.Timeline) {
				t.Errorf("round trip: %v", err)
			}
		})
	}
}

func checkKeys(t *testing.T, what string, m map[string]json.RawMessage, want []string) {
	t.Helper()
	var got []string
	for k := range m {
		got = append(got, k)
	}
	slices.Sort(got)
	want = slices.Clone(want)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s keys = %v, want %v", what, got, want)
	}
}

func TestWriteText(t *testing.T) {
	var buf bytes.Buffer
	if err := handMade().WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"requests                  50",
		"deadline_exceeded 2",
		"deepseek                         30  65.2%",
		"weird",
		"2026-01-20T12:01:10.000Z  deepseek",
		"closed -> open",
		"p50 800 ms   p90 1500 ms   p99 4000 ms   max 9000 ms",
		"2026-01-20 12:00  10  ########################################  deepseek 10",
		"12:01             10  ########============================xxxx  deepseek 2  llama 7  failed 1  retries 1  open: deepseek",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q", want)
		}
	}
	t.Logf("\n%s", out)

	// Quiet minutes fold.
	r := handMade()
	quiet := r.Timeline[4]
	for i := range 10 {
		r.Timeline = append(r.Timeline, replay.Minute{Start: quiet.Start.Add(time.Duration(i+1) * time.Minute), OK: map[string]int{}, BreakerOpen: []string{}})
	}
	buf.Reset()
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "(10 quiet minutes, to 12:14)") {
		t.Errorf("quiet minutes not folded:\n%s", buf.String())
	}
}
