package sim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/understudy-ai/understudy/providers/sim"
)

const chatBody = `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"one two three"}]}`

// start starts s on a free loopback port and closes it when the test ends.
func start(t *testing.T, s *sim.Server) string {
	t.Helper()
	u, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if u != s.URL() || !strings.HasPrefix(u, "http://127.0.0.1:") || !strings.HasSuffix(u, "/v1") {
		t.Fatalf("Start returned %q, URL() %q; want http://127.0.0.1:<port>/v1", u, s.URL())
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return u
}

// newClient returns a client whose idle connections are closed when the
// test ends.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

type answer struct {
	status int
	header http.Header
	body   []byte
	err    error // from Do or from reading the body
}

// do makes one request under a context with the given timeout and reads
// the whole answer. It is safe to call from any goroutine.
func do(c *http.Client, method, url, body string, timeout time.Duration) answer {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return answer{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// call is do from the test goroutine, failing the test if the call does not
// return within timeout plus a generous bound.
func call(t *testing.T, c *http.Client, method, url, body string, timeout time.Duration) answer {
	t.Helper()
	done := make(chan answer, 1)
	go func() { done <- do(c, method, url, body, timeout) }()
	bound := time.NewTimer(timeout + 5*time.Second)
	defer bound.Stop()
	select {
	case a := <-done:
		return a
	case <-bound.C:
		t.Fatalf("%s %s did not return", method, url)
		return answer{}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type completion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index        int    `json:"index"`
		FinishReason string `json:"finish_reason"`
		Message      struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

type apiError struct {
	Error struct {
		Message string `json:"message"`
		Type    string `json:"type"`
	} `json:"error"`
}

func checkAPIError(typ string) func(t *testing.T, a answer) {
	return func(t *testing.T, a answer) {
		t.Helper()
		var e apiError
		if err := json.Unmarshal(a.body, &e); err != nil {
			t.Fatalf("error body %q is not JSON: %v", a.body, err)
		}
		if e.Error.Type != typ || e.Error.Message == "" {
			t.Errorf("error = %+v, want type %q and a message", e.Error, typ)
		}
		if ct := a.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", ct)
		}
	}
}

func TestModes(t *testing.T) {
	tests := []struct {
		mode       sim.Mode
		timeout    time.Duration // default 5s
		status     int           // 0: the request fails
		retryAfter string
		check      func(t *testing.T, a answer)
	}{
		{mode: sim.ModeOK, status: 200, check: func(t *testing.T, a answer) {
			var c completion
			if err := json.Unmarshal(a.body, &c); err != nil {
				t.Fatalf("body %q: %v", a.body, err)
			}
			const content = "[sim-1] you said 3 words"
			if c.Object != "chat.completion" || c.Model != "sim-1" || c.ID == "" || c.Created == 0 {
				t.Errorf("completion = %+v", c)
			}
			if len(c.Choices) != 1 || c.Choices[0].Message.Role != "assistant" || c.Choices[0].Message.Content != content || c.Choices[0].FinishReason != "stop" {
				t.Errorf("choices = %+v, want one assistant message %q", c.Choices, content)
			}
			if c.Usage.PromptTokens != 5 || c.Usage.CompletionTokens != 5 || c.Usage.TotalTokens != 10 {
				t.Errorf("usage = %+v, want 5 + 5 = 10", c.Usage)
			}
		}},
		{mode: sim.ModeError, status: 503, check: checkAPIError("server_error")},
		{mode: sim.ModeRateLimit, status: 429, retryAfter: "1", check: checkAPIError("rate_limit_error")},
		{mode: sim.ModeUnauthorized, status: 401, check: checkAPIError("authentication_error")},
		{mode: sim.ModeReject, status: 400, check: checkAPIError("invalid_request_error")},
		{mode: sim.ModeGarbage, status: 200, check: func(t *testing.T, a answer) {
			if json.Valid(a.body) || len(a.body) == 0 {
				t.Errorf("garbage body %q is valid JSON or empty", a.body)
			}
			if ct := a.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json (the lie is the point)", ct)
			}
		}},
		{mode: sim.ModeEmpty, status: 200, check: func(t *testing.T, a answer) {
			var c map[string]any
			if err := json.Unmarshal(a.body, &c); err != nil {
				t.Fatalf("body %q: %v", a.body, err)
			}
			if ch, ok := c["choices"].([]any); !ok || len(ch) != 0 {
				t.Errorf("choices = %v, want []", c["choices"])
			}
			if c["model"] != "sim-1" {
				t.Errorf("model = %v, want sim-1", c["model"])
			}
		}},
		{mode: sim.ModeReset, check: func(t *testing.T, a answer) {
			if a.err == nil {
				t.Fatalf("reset: got a complete answer %d %q", a.status, a.body)
			}
			if errors.Is(a.err, context.DeadlineExceeded) {
				t.Errorf("reset: %v, want a connection error, not a timeout", a.err)
			}
		}},
		{mode: sim.ModeHang, timeout: 100 * time.Millisecond, check: func(t *testing.T, a answer) {
			if !errors.Is(a.err, context.DeadlineExceeded) {
				t.Errorf("hang: %v, want the client's deadline", a.err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			s := sim.New(sim.Config{})
			u := start(t, s)
			s.SetMode(tt.mode)
			if s.Mode() != tt.mode {
				t.Fatalf("Mode() = %q after SetMode(%q)", s.Mode(), tt.mode)
			}
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			a := call(t, newClient(t), http.MethodPost, u+"/chat/completions", chatBody, timeout)
			if tt.status != 0 {
				if a.err != nil {
					t.Fatalf("request: %v", a.err)
				}
				if a.status != tt.status {
					t.Fatalf("status = %d, want %d (body %q)", a.status, tt.status, a.body)
				}
				if got := a.header.Get("Retry-After"); got != tt.retryAfter {
					t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
				}
			}
			tt.check(t, a)
			if s.Hits() != 1 || s.HitsIn(tt.mode) != 1 {
				t.Errorf("Hits() = %d, HitsIn(%s) = %d; want 1, 1", s.Hits(), tt.mode, s.HitsIn(tt.mode))
			}
		})
	}
}

func TestRetryAfterHeader(t *testing.T) {
	tests := []struct {
		ra   time.Duration
		want string
	}{
		{0, "1"},
		{time.Millisecond, "1"},
		{time.Second, "1"},
		{1500 * time.Millisecond, "2"},
		{3 * time.Second, "3"},
		{2 * time.Minute, "120"},
	}
	c := newClient(t)
	for _, tt := range tests {
		t.Run(tt.ra.String(), func(t *testing.T) {
			s := sim.New(sim.Config{RetryAfter: tt.ra})
			u := start(t, s)
			s.SetMode(sim.ModeRateLimit)
			a := call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 5*time.Second)
			if a.err != nil || a.status != 429 || a.header.Get("Retry-After") != tt.want {
				t.Errorf("answer = %d Retry-After %q (err %v), want 429 Retry-After %q", a.status, a.header.Get("Retry-After"), a.err, tt.want)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	valid := []sim.Mode{sim.ModeOK, sim.ModeError, sim.ModeRateLimit, sim.ModeHang, sim.ModeGarbage,
		sim.ModeEmpty, sim.ModeReset, sim.ModeUnauthorized, sim.ModeReject}
	for _, m := range valid {
		t.Run(string(m), func(t *testing.T) {
			got, err := sim.ParseMode(string(m))
			if err != nil || got != m {
				t.Errorf("ParseMode(%q) = %q, %v", m, got, err)
			}
		})
	}
	for _, s := range []string{"", "OK", "Error", "down", "503", " ok", "rate_limit"} {
		t.Run("invalid "+s, func(t *testing.T) {
			if got, err := sim.ParseMode(s); err == nil || got != "" {
				t.Errorf("ParseMode(%q) = %q, %v; want an error", s, got, err)
			} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", s)) || !strings.Contains(err.Error(), "ratelimit") {
				t.Errorf("error %q should name the input and list the modes", err)
			}
		})
	}
}

func TestConfigFromYAML(t *testing.T) {
	const doc = `
model: sim-deepseek
latency: 40ms
jitter: 10ms
failure_rate: 0.25
retry_after: 3s
script:
  - {after: 10s, for: 20s, mode: error}
  - {after: 1m, for: 5s, mode: ratelimit}
`
	var c sim.Config
	if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	want := sim.Config{Model: "sim-deepseek", Latency: 40 * time.Millisecond, Jitter: 10 * time.Millisecond,
		FailureRate: 0.25, RetryAfter: 3 * time.Second,
		Script: []sim.Phase{{After: 10 * time.Second, For: 20 * time.Second, Mode: sim.ModeError},
			{After: time.Minute, For: 5 * time.Second, Mode: sim.ModeRateLimit}}}
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Errorf("Config = %+v, want %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}

	var bad sim.Config
	// A bad mode reads as a string; Validate names the key and the value.
	if err := yaml.Unmarshal([]byte("script: [{after: 0s, for: 1s, mode: down}]"), &bad); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if err := bad.Validate(); err == nil {
		t.Error("a script with mode down validated")
	} else if !strings.Contains(err.Error(), "sim.script[0].mode") || !strings.Contains(err.Error(), "down") {
		t.Errorf("error %q does not name the key and the bad mode", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		c       sim.Config
		wantKey string // "": valid
	}{
		{name: "zero", c: sim.Config{}},
		{name: "full", c: sim.Config{Model: "m", Latency: time.Second, Jitter: time.Second, FailureRate: 1, RetryAfter: time.Second,
			Script: []sim.Phase{{After: 0, For: time.Second, Mode: sim.ModeHang}}}},
		{name: "latency", c: sim.Config{Latency: -time.Millisecond}, wantKey: "sim.latency"},
		{name: "jitter", c: sim.Config{Jitter: -time.Millisecond}, wantKey: "sim.jitter"},
		{name: "retry_after", c: sim.Config{RetryAfter: -time.Second}, wantKey: "sim.retry_after"},
		{name: "failure_rate negative", c: sim.Config{FailureRate: -0.1}, wantKey: "sim.failure_rate"},
		{name: "failure_rate above 1", c: sim.Config{FailureRate: 1.01}, wantKey: "sim.failure_rate"},
		{name: "script mode empty", c: sim.Config{Script: []sim.Phase{{For: time.Second}}}, wantKey: "sim.script[0].mode"},
		{name: "script mode unknown", c: sim.Config{Script: []sim.Phase{{For: time.Second, Mode: "ok"}, {For: time.Second, Mode: "down"}}}, wantKey: "sim.script[1].mode"},
		{name: "script after", c: sim.Config{Script: []sim.Phase{{After: -1, For: time.Second, Mode: sim.ModeOK}}}, wantKey: "sim.script[0].after"},
		{name: "script for zero", c: sim.Config{Script: []sim.Phase{{Mode: sim.ModeOK}}}, wantKey: "sim.script[0].for"},
		{name: "script for negative", c: sim.Config{Script: []sim.Phase{{For: -time.Second, Mode: sim.ModeOK}}}, wantKey: "sim.script[0].for"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			switch {
			case tt.wantKey == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.wantKey != "" && err == nil:
				t.Errorf("Validate accepted %+v", tt.c)
			case tt.wantKey != "" && !strings.HasPrefix(err.Error(), tt.wantKey+":"):
				t.Errorf("Validate: %q, want it to start with %q", err, tt.wantKey+":")
			}
		})
	}
}

func TestFailureRate(t *testing.T) {
	const n = 40
	tests := []struct {
		name       string
		rate       float64
		mode       sim.Mode
		wantStatus int // every answer; 0: both 200 and 503 must occur
	}{
		{"rate 1", 1, sim.ModeOK, 503},
		{"rate 0", 0, sim.ModeOK, 200},
		{"rate 1 only in mode ok", 1, sim.ModeReject, 400},
	}
	c := newClient(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim.New(sim.Config{FailureRate: tt.rate})
			u := start(t, s)
			s.SetMode(tt.mode)
			for i := range n {
				a := call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 5*time.Second)
				if a.err != nil || a.status != tt.wantStatus {
					t.Fatalf("request %d: status %d (err %v), want %d", i, a.status, a.err, tt.wantStatus)
				}
			}
			wantMode := tt.mode
			if tt.wantStatus == 503 {
				wantMode = sim.ModeError
			}
			if s.Hits() != n || s.HitsIn(wantMode) != n {
				t.Errorf("Hits() = %d, HitsIn(%s) = %d; want %d", s.Hits(), wantMode, s.HitsIn(wantMode), n)
			}
		})
	}
	t.Run("rate one half", func(t *testing.T) {
		// 200 draws: the chance that all land on one side is 2^-199.
		s := sim.New(sim.Config{FailureRate: 0.5})
		u := start(t, s)
		seen := map[int]int{}
		for range 200 {
			a := call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 5*time.Second)
			if a.err != nil {
				t.Fatal(a.err)
			}
			seen[a.status]++
		}
		if seen[200] == 0 || seen[503] == 0 || seen[200]+seen[503] != 200 {
			t.Errorf("statuses = %v, want both 200 and 503", seen)
		}
		if s.HitsIn(sim.ModeOK) != int64(seen[200]) || s.HitsIn(sim.ModeError) != int64(seen[503]) {
			t.Errorf("HitsIn ok/error = %d/%d, want %d/%d", s.HitsIn(sim.ModeOK), s.HitsIn(sim.ModeError), seen[200], seen[503])
		}
	})
}

// TestScript checks that the script's phases override the mode at the right
// times. Each observation is bracketed by the clock readings around New and
// around the call, and is only judged when that bracket lies in a single
// phase of the timeline, so a slow machine cannot make it flaky.
func TestScript(t *testing.T) {
	const p = 300 * time.Millisecond
	type span struct {
		from, to time.Duration // [from, to)
		mode     sim.Mode
		status   int
	}
	// SetMode(reject) is the base; the script puts error then ratelimit on top.
	timeline := []span{
		{0, p, sim.ModeError, 503},
		{p, 2 * p, sim.ModeReject, 400},
		{2 * p, 3 * p, sim.ModeRateLimit, 429},
		{3 * p, 1<<63 - 1, sim.ModeReject, 400},
	}
	before := time.Now()
	s := sim.New(sim.Config{Script: []sim.Phase{
		{After: 2 * p, For: p, Mode: sim.ModeRateLimit}, // order in the list does not matter
		{After: 0, For: p, Mode: sim.ModeError},
	}})
	after := time.Now()
	s.SetMode(sim.ModeReject)
	u := start(t, s)
	c := newClient(t)

	// phaseOf returns the index of the only span the bracket falls in, or -1.
	phaseOf := func(c1, c2 time.Time) int {
		lo, hi := c1.Sub(after), c2.Sub(before)
		found := -1
		for i, sp := range timeline {
			if lo < sp.to && hi >= sp.from {
				if found >= 0 {
					return -1
				}
				found = i
			}
		}
		return found
	}
	seenMode := make([]bool, len(timeline))
	seenHTTP := make([]bool, len(timeline))
	all := func(b []bool) bool {
		for _, v := range b {
			if !v {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(10 * time.Second)
	for !all(seenMode) || !all(seenHTTP) {
		if time.Now().After(deadline) {
			t.Fatalf("phases not all observed: Mode() %v, HTTP %v", seenMode, seenHTTP)
		}
		c1 := time.Now()
		m := s.Mode()
		c2 := time.Now()
		if i := phaseOf(c1, c2); i >= 0 {
			if m != timeline[i].mode {
				t.Fatalf("at %s..%s Mode() = %q, want %q", c1.Sub(after), c2.Sub(before), m, timeline[i].mode)
			}
			seenMode[i] = true
		}

		c1 = time.Now()
		a := call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 5*time.Second)
		c2 = time.Now()
		if a.err != nil {
			t.Fatal(a.err)
		}
		if i := phaseOf(c1, c2); i >= 0 {
			if a.status != timeline[i].status {
				t.Fatalf("at %s..%s status %d, want %d (%s)", c1.Sub(after), c2.Sub(before), a.status, timeline[i].status, timeline[i].mode)
			}
			seenHTTP[i] = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	if sum := s.HitsIn(sim.ModeError) + s.HitsIn(sim.ModeReject) + s.HitsIn(sim.ModeRateLimit); sum != s.Hits() {
		t.Errorf("hits by mode add up to %d, Hits() = %d", sum, s.Hits())
	}
	if s.HitsIn(sim.ModeOK) != 0 {
		t.Errorf("HitsIn(ok) = %d, want 0", s.HitsIn(sim.ModeOK))
	}
}

func TestRouting(t *testing.T) {
	s := sim.New(sim.Config{})
	u := start(t, s)
	base := strings.TrimSuffix(u, "/v1")
	c := newClient(t)
	tests := []struct {
		name, method, path, body string
		status                   int
		counted                  bool
	}{
		{"v1 path", http.MethodPost, "/v1/chat/completions", chatBody, 200, true},
		{"bare path", http.MethodPost, "/chat/completions", chatBody, 200, true},
		{"GET", http.MethodGet, "/v1/chat/completions", "", 404, false},
		{"PUT", http.MethodPut, "/v1/chat/completions", chatBody, 404, false},
		{"other path", http.MethodPost, "/v1/models", chatBody, 404, false},
		{"longer path", http.MethodPost, "/v1/chat/completions/x", chatBody, 404, false},
		{"root", http.MethodPost, "/", chatBody, 404, false},
		{"body not JSON", http.MethodPost, "/v1/chat/completions", "{nope", 400, true},
		{"no messages", http.MethodPost, "/v1/chat/completions", `{"model":"m","messages":[]}`, 400, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hits := s.Hits()
			a := call(t, c, tt.method, base+tt.path, tt.body, 5*time.Second)
			if a.err != nil || a.status != tt.status {
				t.Fatalf("%s %s: status %d (err %v), want %d", tt.method, tt.path, a.status, a.err, tt.status)
			}
			if tt.status != 200 {
				var e apiError
				if err := json.Unmarshal(a.body, &e); err != nil || e.Error.Type != "invalid_request_error" {
					t.Errorf("body %q is not an OpenAI error", a.body)
				}
			}
			if got, want := s.Hits()-hits, map[bool]int64{true: 1, false: 0}[tt.counted]; got != want {
				t.Errorf("Hits() grew by %d, want %d", got, want)
			}
		})
	}
}

func TestHitsByMode(t *testing.T) {
	s := sim.New(sim.Config{})
	u := start(t, s)
	c := newClient(t)
	plan := []struct {
		mode sim.Mode
		n    int
	}{{sim.ModeOK, 3}, {sim.ModeError, 2}, {sim.ModeReject, 1}, {sim.ModeOK, 1}}
	for _, p := range plan {
		s.SetMode(p.mode)
		for range p.n {
			if a := call(t, c, http.MethodPost, u+"/v1/chat/completions", chatBody, 5*time.Second); a.err != nil {
				t.Fatal(a.err)
			}
		}
	}
	want := map[sim.Mode]int64{sim.ModeOK: 4, sim.ModeError: 2, sim.ModeReject: 1, sim.ModeHang: 0, sim.ModeGarbage: 0}
	for m, n := range want {
		if got := s.HitsIn(m); got != n {
			t.Errorf("HitsIn(%s) = %d, want %d", m, got, n)
		}
	}
	if s.Hits() != 7 {
		t.Errorf("Hits() = %d, want 7", s.Hits())
	}
}

// TestCloseReleasesWaitingRequests checks that Close answers requests that
// hang or sit in the latency, for a started server and for a server
// mounted by the caller.
func TestCloseReleasesWaitingRequests(t *testing.T) {
	tests := []struct {
		name    string
		cfg     sim.Config
		mode    sim.Mode
		mounted bool
	}{
		{name: "hang", mode: sim.ModeHang},
		{name: "latency", cfg: sim.Config{Latency: time.Hour}, mode: sim.ModeOK},
		{name: "hang mounted", mode: sim.ModeHang, mounted: true},
		{name: "latency mounted", cfg: sim.Config{Latency: time.Hour}, mode: sim.ModeOK, mounted: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim.New(tt.cfg)
			s.SetMode(tt.mode)
			var u string
			if tt.mounted {
				hs := httptest.NewServer(s)
				t.Cleanup(hs.Close)
				u = hs.URL + "/v1"
			} else {
				var err error
				if u, err = s.Start("127.0.0.1:0"); err != nil {
					t.Fatal(err)
				}
			}
			c := newClient(t)
			done := make(chan answer, 1)
			go func() { done <- do(c, http.MethodPost, u+"/chat/completions", chatBody, 30*time.Second) }()
			waitFor(t, "the request to arrive", func() bool { return s.Hits() == 1 })

			closed := make(chan error, 1)
			go func() { closed <- s.Close() }()
			select {
			case err := <-closed:
				if err != nil {
					t.Errorf("Close: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Close did not return")
			}
			select {
			case a := <-done:
				if a.err == nil && a.status == 200 && json.Valid(a.body) && bytes.Contains(a.body, []byte(`"choices"`)) {
					t.Errorf("a released request got a real answer: %q", a.body)
				}
				if errors.Is(a.err, context.DeadlineExceeded) {
					t.Errorf("the request was not released by Close: %v", a.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the waiting request was not released by Close")
			}
		})
	}
}

// TestCloseWithUnusedConnection checks that a client connection that never
// sent a request (a pooled, pre-dialed connection) does not make Close fail
// or wait for net/http's 5-second grace.
func TestCloseWithUnusedConnection(t *testing.T) {
	s := sim.New(sim.Config{})
	u, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", strings.TrimSuffix(strings.TrimPrefix(u, "http://"), "/v1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if a := call(t, newClient(t), http.MethodPost, u+"/chat/completions", chatBody, 5*time.Second); a.err != nil || a.status != 200 {
		t.Fatalf("request: %d %v", a.status, a.err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close with an unused client connection: %v", err)
	}
	// The server cut the connection.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Errorf("read on the unused connection after Close: %v, want EOF or reset", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestCloseTwiceAndUnstarted(t *testing.T) {
	s := sim.New(sim.Config{})
	if err := s.Close(); err != nil {
		t.Errorf("Close of a server never started: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close of a server never started: %v", err)
	}

	s2 := sim.New(sim.Config{})
	if _, err := s2.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := s2.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	_ = s2.Close() // must neither panic nor hang
}

func TestStartError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := sim.New(sim.Config{})
	if _, err := s.Start(ln.Addr().String()); err == nil {
		s.Close()
		t.Fatal("Start on a port in use succeeded")
	} else if !strings.Contains(err.Error(), "sim: listen") {
		t.Errorf("error %q does not say what failed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close after a failed Start: %v", err)
	}
}

func TestLatency(t *testing.T) {
	const latency = 150 * time.Millisecond
	s := sim.New(sim.Config{Latency: latency, Jitter: 10 * time.Millisecond})
	u := start(t, s)
	c := newClient(t)

	begin := time.Now()
	a := call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 10*time.Second)
	if a.err != nil || a.status != 200 {
		t.Fatalf("request: %d %v", a.status, a.err)
	}
	if el := time.Since(begin); el < latency {
		t.Errorf("answered after %s, before the %s latency", el, latency)
	}

	// A client that gives up first gets no answer, and the server lets go.
	a = call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 20*time.Millisecond)
	if !errors.Is(a.err, context.DeadlineExceeded) {
		t.Errorf("impatient client: %v, want its deadline", a.err)
	}

	s.SetLatency(0)
	if a := call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 10*time.Second); a.err != nil || a.status != 200 {
		t.Fatalf("request after SetLatency(0): %d %v", a.status, a.err)
	}
}

func TestModelConfigured(t *testing.T) {
	s := sim.New(sim.Config{Model: "llama-sim"})
	u := start(t, s)
	for _, m := range []sim.Mode{sim.ModeOK, sim.ModeEmpty} {
		s.SetMode(m)
		a := call(t, newClient(t), http.MethodPost, u+"/chat/completions", chatBody, 5*time.Second)
		var c completion
		if err := json.Unmarshal(a.body, &c); err != nil || c.Model != "llama-sim" {
			t.Errorf("%s: model %q (err %v), want llama-sim", m, c.Model, err)
		}
	}
}

// TestConcurrentUse switches modes while requests are served, for the race
// detector.
func TestConcurrentUse(t *testing.T) {
	s := sim.New(sim.Config{FailureRate: 0.2})
	u := start(t, s)
	c := newClient(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		modes := []sim.Mode{sim.ModeOK, sim.ModeError, sim.ModeRateLimit, sim.ModeEmpty}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.SetMode(modes[i%len(modes)])
			s.SetLatency(time.Duration(i%3) * time.Millisecond)
			_ = s.Mode()
			time.Sleep(time.Millisecond)
		}
	})
	var reqs sync.WaitGroup
	for range 8 {
		reqs.Go(func() {
			for range 10 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u+"/chat/completions", strings.NewReader(chatBody))
				resp, err := c.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				} else {
					t.Error(err)
				}
				cancel()
			}
		})
	}
	reqs.Wait()
	close(stop)
	wg.Wait()
	var sum int64
	for _, m := range []sim.Mode{sim.ModeOK, sim.ModeError, sim.ModeRateLimit, sim.ModeEmpty} {
		sum += s.HitsIn(m)
	}
	if s.Hits() != 80 || sum != 80 {
		t.Errorf("Hits() = %d, sum of HitsIn = %d; want 80", s.Hits(), sum)
	}
}

// TestRecord: the server keeps the last n bodies it received, decoded,
// only once asked to.
func TestRecord(t *testing.T) {
	s := sim.New(sim.Config{})
	u := start(t, s)
	c := newClient(t)
	body := func(i int) string {
		return fmt.Sprintf(`{"model":"m","max_tokens":%d,"messages":[{"role":"user","content":"n%d"}]}`, i, i)
	}
	call(t, c, http.MethodPost, u+"/chat/completions", body(0), 5*time.Second)
	if got := s.Received(); len(got) != 0 {
		t.Fatalf("Received() = %+v before Record, want none", got)
	}
	s.Record(2)
	for i := 1; i <= 3; i++ {
		call(t, c, http.MethodPost, u+"/chat/completions", body(i), 5*time.Second)
	}
	call(t, c, http.MethodPost, u+"/chat/completions", chatBody, 5*time.Second)
	got := s.Received()
	if len(got) != 2 {
		t.Fatalf("Received() = %+v, want the last 2", got)
	}
	if got[0].MaxTokens == nil || *got[0].MaxTokens != 3 || got[0].Temperature != nil || len(got[0].Messages) != 1 || got[0].Messages[0] != (sim.Message{Role: "user", Content: "n3"}) {
		t.Errorf("Received()[0] = %+v, want max_tokens 3, user n3, no temperature", got[0])
	}
	want := []sim.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "one two three"}}
	if got[1].Model != "m" || got[1].MaxTokens != nil || len(got[1].Messages) != 2 || got[1].Messages[0] != want[0] || got[1].Messages[1] != want[1] {
		t.Errorf("Received()[1] = %+v, want model m, %v", got[1], want)
	}
}
