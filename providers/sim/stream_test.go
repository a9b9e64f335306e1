package sim_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/providers/sim"
)

const streamBody = `{"model":"m","stream":true,"messages":[{"role":"user","content":"one two three"}]}`

type sseEvent struct{ typ, data string }

// readSSE splits a server-sent event body into its events.
func readSSE(t *testing.T, body []byte) []sseEvent {
	t.Helper()
	var out []sseEvent
	var ev sseEvent
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.data != "" {
				out = append(out, ev)
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			ev.typ = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data += strings.TrimPrefix(line, "data: ")
		}
	}
	return out
}

type streamChunk struct {
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

// deltas returns the content of the data events before [DONE] and whether
// [DONE] came.
func deltas(t *testing.T, evs []sseEvent) (parts []string, done bool) {
	t.Helper()
	for _, e := range evs {
		if e.data == "[DONE]" {
			return parts, true
		}
		if e.typ != "" {
			continue
		}
		var c streamChunk
		if err := json.Unmarshal([]byte(e.data), &c); err != nil {
			t.Fatalf("chunk %q is not JSON: %v", e.data, err)
		}
		if c.Object != "chat.completion.chunk" {
			t.Errorf("object = %q, want chat.completion.chunk", c.Object)
		}
		if len(c.Choices) == 1 && c.Choices[0].Delta.Content != "" {
			parts = append(parts, c.Choices[0].Delta.Content)
		}
	}
	return parts, false
}

func TestStreamOK(t *testing.T) {
	s := sim.New(sim.Config{Model: "sim-a"})
	u := start(t, s)
	c := newClient(t)
	a := call(t, c, http.MethodPost, u+"/chat/completions", streamBody, 5*time.Second)
	if a.err != nil || a.status != http.StatusOK {
		t.Fatalf("status %d, err %v", a.status, a.err)
	}
	if ct := a.header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q, want text/event-stream", ct)
	}
	parts, done := deltas(t, readSSE(t, a.body))
	if !done {
		t.Errorf("no [DONE] in %q", a.body)
	}
	if got, want := strings.Join(parts, ""), "[sim-a] you said 3 words"; got != want || len(parts) != 5 {
		t.Errorf("chunks %q make %q, want 5 making %q", parts, got, want)
	}
	// The streamed answer is the non-streamed one.
	plain := call(t, c, http.MethodPost, u+"/chat/completions", strings.Replace(streamBody, `"stream":true,`, "", 1), 5*time.Second)
	var comp completion
	if err := json.Unmarshal(plain.body, &comp); err != nil || comp.Choices[0].Message.Content != strings.Join(parts, "") {
		t.Errorf("non-streamed answer %q (err %v) differs from the streamed one", plain.body, err)
	}
	if got := s.Received(); len(got) != 0 {
		t.Errorf("Received without Record = %d bodies", len(got))
	}
}

func TestStreamFailures(t *testing.T) {
	tests := []struct {
		mode      sim.Mode
		cutAfter  int
		wantParts int
		check     func(t *testing.T, a answer, evs []sseEvent)
	}{
		{mode: sim.ModeCut, wantParts: 2, check: func(t *testing.T, a answer, _ []sseEvent) {
			if a.err == nil {
				t.Errorf("reading a cut stream: no error")
			}
		}},
		{mode: sim.ModeCut, cutAfter: 4, wantParts: 4},
		{mode: sim.ModeErrorEvent, wantParts: 2, check: func(t *testing.T, a answer, evs []sseEvent) {
			last := evs[len(evs)-1]
			if last.typ != "error" || !strings.Contains(last.data, `"error"`) {
				t.Errorf("last event = %+v, want an error event", last)
			}
		}},
		{mode: sim.ModeStall, wantParts: 2, check: func(t *testing.T, a answer, _ []sseEvent) {
			if a.err == nil {
				t.Errorf("a stalled stream ended without the client giving up")
			}
		}},
		{mode: sim.ModeReset, wantParts: 0},
		{mode: sim.ModeEmpty, wantParts: 0},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			s := sim.New(sim.Config{CutAfter: tt.cutAfter})
			s.SetMode(tt.mode)
			u := start(t, s)
			a := call(t, newClient(t), http.MethodPost, u+"/chat/completions", streamBody, 500*time.Millisecond)
			if a.status != http.StatusOK {
				t.Fatalf("status %d (err %v), want 200 then the failure", a.status, a.err)
			}
			evs := readSSE(t, a.body)
			parts, done := deltas(t, evs)
			if len(parts) != tt.wantParts {
				t.Errorf("%d chunks before the failure (%q), want %d", len(parts), parts, tt.wantParts)
			}
			if done != (tt.mode == sim.ModeEmpty) {
				t.Errorf("[DONE] sent: %v", done)
			}
			if tt.check != nil {
				tt.check(t, a, evs)
			}
		})
	}
}

func TestStreamErrorsBeforeFirstChunk(t *testing.T) {
	for mode, code := range map[sim.Mode]int{sim.ModeError: 503, sim.ModeRateLimit: 429, sim.ModeReject: 400, sim.ModeUnauthorized: 401} {
		s := sim.New(sim.Config{})
		s.SetMode(mode)
		u := start(t, s)
		a := call(t, newClient(t), http.MethodPost, u+"/chat/completions", streamBody, 5*time.Second)
		if a.status != code {
			t.Errorf("%s: status %d, want %d", mode, a.status, code)
		}
	}
}

// The stream modes fail a request that does not stream the same way.
func TestStreamModesNotStreaming(t *testing.T) {
	s := sim.New(sim.Config{})
	u := start(t, s)
	c := newClient(t)
	s.SetMode(sim.ModeErrorEvent)
	if a := call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 5*time.Second); a.status != 503 {
		t.Errorf("error_event, not streaming: status %d, want 503", a.status)
	}
	s.SetMode(sim.ModeCut)
	if a := call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 5*time.Second); a.err == nil {
		t.Errorf("cut, not streaming: no error reading the body")
	}
	s.SetMode(sim.ModeStall)
	if a := call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 200*time.Millisecond); a.err == nil {
		t.Errorf("stall, not streaming: answered (%d)", a.status)
	}
}

func TestStreamChunkDelayAndWords(t *testing.T) {
	const delay = 20 * time.Millisecond
	s := sim.New(sim.Config{ChunkDelay: delay, Words: 10})
	s.Record(1)
	u := start(t, s)
	began := time.Now()
	a := call(t, newClient(t), http.MethodPost, u+"/chat/completions", streamBody, 5*time.Second)
	took := time.Since(began)
	parts, done := deltas(t, readSSE(t, a.body))
	if !done || len(parts) != 10 {
		t.Fatalf("%d chunks, done %v; want 10 and [DONE]", len(parts), done)
	}
	if took < 9*delay {
		t.Errorf("10 chunks %s apart came in %s", delay, took)
	}
	if r := s.Received(); len(r) != 1 || !r[0].Stream {
		t.Errorf("Received = %+v, want one streamed request", r)
	}
}

func TestStreamConfigValidate(t *testing.T) {
	for _, c := range []sim.Config{{ChunkDelay: -1}, {CutAfter: -1}, {Words: -1}} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
	for _, m := range []string{"cut", "error_event", "stall"} {
		if _, err := sim.ParseMode(m); err != nil {
			t.Errorf("ParseMode(%q): %v", m, err)
		}
	}
}
