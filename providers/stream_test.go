package providers_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

type streamed struct {
	result
	chunks []string
}

// stream calls p.Stream under a context with the given timeout, collecting
// the chunks, and fails the test if the call does not return within the
// timeout plus returnBound.
func stream(t *testing.T, p providers.Provider, timeout, firstChunk time.Duration, req *providers.Request) streamed {
	t.Helper()
	s, ok := p.(providers.Streamer)
	if !ok {
		if b, isBuilt := p.(*providers.Built); isBuilt {
			s, ok = b.Provider.(providers.Streamer)
		}
	}
	if !ok {
		t.Fatalf("%T does not stream", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var mu sync.Mutex
	var chunks []string
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		resp, err := s.Stream(ctx, req, firstChunk, func(d string) {
			mu.Lock()
			chunks = append(chunks, d)
			mu.Unlock()
		})
		done <- result{resp: resp, err: err, elapsed: time.Since(start)}
	}()
	bound := time.NewTimer(timeout + returnBound)
	defer bound.Stop()
	select {
	case r := <-done:
		mu.Lock()
		defer mu.Unlock()
		return streamed{result: r, chunks: chunks}
	case <-bound.C:
		t.Fatalf("Stream did not return within %s of its %s timeout", returnBound, timeout)
		return streamed{}
	}
}

// A failure before the first chunk is classified as a call that does not
// stream: by its status.
func TestStreamStatusClassification(t *testing.T) {
	tests := []struct {
		status int
		header map[string]string
		want   chat.Outcome
		ra     time.Duration
		config bool
	}{
		{status: 503, want: chat.OutcomeError},
		{status: 500, want: chat.OutcomeError},
		{status: 401, want: chat.OutcomeError, config: true},
		{status: 400, want: chat.OutcomeRejected},
		{status: 404, want: chat.OutcomeRejected},
		{status: 408, want: chat.OutcomeTimeout},
		{status: 504, want: chat.OutcomeTimeout},
		{status: 429, header: map[string]string{"Retry-After": "7"}, want: chat.OutcomeRateLimited, ra: 7 * time.Second},
		{status: 429, want: chat.OutcomeRateLimited, ra: providers.DefaultRetryAfter},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status, tt.header), func(t *testing.T) {
			srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
				drain(r)
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(`{"error":{"message":"nope","type":"server_error"}}`))
			})
			p := buildOpenAI(t, providers.Config{BaseURL: srv.URL + "/v1"})
			r := stream(t, p, 10*time.Second, 5*time.Second, hello())
			pe := asError(t, r.err)
			if pe.Outcome != tt.want || pe.StatusCode != tt.status || pe.RetryAfter != tt.ra || pe.Config != tt.config || pe.Chunks != 0 {
				t.Errorf("Error = %+v, want outcome %q status %d retry after %s config %v", *pe, tt.want, tt.status, tt.ra, tt.config)
			}
			if len(r.chunks) != 0 {
				t.Errorf("chunks %q delivered with an error status", r.chunks)
			}
		})
	}
}

func TestStreamSimModes(t *testing.T) {
	tests := []struct {
		name       string
		mode       sim.Mode
		sim        sim.Config
		idle       time.Duration
		firstChunk time.Duration // default 5s
		want       chat.Outcome  // "" for ok
		status     int
		chunks     int // delivered
		is         error
	}{
		{name: "ok", mode: sim.ModeOK, chunks: 5},
		{name: "cut", mode: sim.ModeCut, want: chat.OutcomeCut, status: 200, chunks: 2, is: providers.ErrStreamCut},
		{name: "cut after 4", mode: sim.ModeCut, sim: sim.Config{CutAfter: 4}, want: chat.OutcomeCut, status: 200, chunks: 4, is: providers.ErrStreamCut},
		{name: "error event", mode: sim.ModeErrorEvent, want: chat.OutcomeCut, status: 503, chunks: 2, is: providers.ErrStreamEvent},
		{name: "stall", mode: sim.ModeStall, idle: 150 * time.Millisecond, want: chat.OutcomeCut, status: 200, chunks: 2, is: providers.ErrStreamStalled},
		{name: "reset before a chunk", mode: sim.ModeReset, want: chat.OutcomeError},
		{name: "hang", mode: sim.ModeHang, firstChunk: 150 * time.Millisecond, want: chat.OutcomeTimeout, is: providers.ErrFirstChunkTimeout},
		{name: "latency beyond the first chunk timeout", mode: sim.ModeOK, sim: sim.Config{Latency: time.Minute}, firstChunk: 150 * time.Millisecond, want: chat.OutcomeTimeout, is: providers.ErrFirstChunkTimeout},
		{name: "garbage", mode: sim.ModeGarbage, want: chat.OutcomeError, status: 200, is: providers.ErrMalformed},
		{name: "empty", mode: sim.ModeEmpty, want: chat.OutcomeError, status: 200, is: providers.ErrMalformed},
		{name: "error", mode: sim.ModeError, want: chat.OutcomeError, status: 503},
		{name: "ratelimit", mode: sim.ModeRateLimit, want: chat.OutcomeRateLimited, status: 429},
		// Chunks that keep coming are not cut by the first chunk's timeout.
		{name: "flowing past the first chunk timeout", mode: sim.ModeOK, sim: sim.Config{ChunkDelay: 50 * time.Millisecond, Words: 8}, firstChunk: 100 * time.Millisecond, chunks: 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := buildOpenAI(t, providers.Config{Name: "simmy", Kind: providers.KindSim, Sim: tt.sim, StreamIdleTimeout: tt.idle})
			b.Sim.SetMode(tt.mode)
			b.Sim.Record(1)
			fc := tt.firstChunk
			if fc == 0 {
				fc = 5 * time.Second
			}
			req := &providers.Request{Messages: []chat.Message{{Role: chat.RoleSystem, Content: "be brief"}, {Role: chat.RoleUser, Content: "one two three"}}}
			r := stream(t, b, 10*time.Second, fc, req)
			if got := b.Sim.Received(); len(got) != 1 || !got[0].Stream {
				t.Errorf("sim received %+v, want one streamed request", got)
			}
			if len(r.chunks) != tt.chunks {
				t.Errorf("%d chunks delivered (%q), want %d", len(r.chunks), r.chunks, tt.chunks)
			}
			if tt.want == "" {
				if r.err != nil {
					t.Fatalf("Stream: %v", r.err)
				}
				if r.resp.Content != strings.Join(r.chunks, "") || r.resp.Model != "sim-simmy" || r.resp.StatusCode != 200 ||
					r.resp.Usage.PromptTokens != 5 || r.resp.Usage.CompletionTokens != int64(tt.chunks) {
					t.Errorf("Response = %+v, chunks %q", *r.resp, r.chunks)
				}
				return
			}
			pe := asError(t, r.err)
			if pe.Outcome != tt.want || pe.StatusCode != tt.status || pe.Chunks != tt.chunks {
				t.Errorf("Error = {Outcome:%q StatusCode:%d Chunks:%d}, want {%q %d %d} (err %v)", pe.Outcome, pe.StatusCode, pe.Chunks, tt.want, tt.status, tt.chunks, pe)
			}
			if tt.is != nil && !errors.Is(r.err, tt.is) {
				t.Errorf("err %v is not %v", r.err, tt.is)
			}
			if got := providers.CountsAsFailure(pe.Outcome); got != (tt.want != chat.OutcomeRateLimited) {
				t.Errorf("CountsAsFailure(%q) = %v", pe.Outcome, got)
			}
		})
	}
}

// The request's deadline is absolute: a stream still flowing is cut by it.
func TestStreamDeadline(t *testing.T) {
	b := buildOpenAI(t, providers.Config{Name: "slow", Kind: providers.KindSim, Sim: sim.Config{ChunkDelay: 50 * time.Millisecond, Words: 100}})
	r := stream(t, b, 300*time.Millisecond, 5*time.Second, hello())
	pe := asError(t, r.err)
	if pe.Outcome != chat.OutcomeCut || pe.Chunks == 0 || pe.Chunks != len(r.chunks) || !errors.Is(r.err, context.DeadlineExceeded) {
		t.Errorf("Error = %+v (%v) after %d chunks, want cut by the deadline", *pe, pe, len(r.chunks))
	}
}

// Servers differ in how a stream ends: without [DONE] after a finish
// reason is whole, a body closed before either is cut, an error event
// before any chunk is an error like a status, a server that does not stream
// answers in one chunk.
func TestStreamServerVariants(t *testing.T) {
	const c1 = `data: {"model":"m","choices":[{"delta":{"content":"hi "}}]}` + "\n\n"
	const c2 = `data: {"model":"m","choices":[{"delta":{"content":"there"},"finish_reason":"stop"}]}` + "\n\n"
	tests := []struct {
		name, ctype, body string
		want              chat.Outcome
		status, chunks    int
		content           string
	}{
		{name: "no DONE after finish", ctype: "text/event-stream", body: c1 + c2, chunks: 2, content: "hi there"},
		{name: "CRLF and comments", ctype: "text/event-stream", body: ": ping\r\n\r\n" + strings.ReplaceAll(c1+c2, "\n", "\r\n") + "data: [DONE]\r\n\r\n", chunks: 2, content: "hi there"},
		{name: "closed mid-answer", ctype: "text/event-stream", body: c1, want: chat.OutcomeCut, status: 200, chunks: 1},
		{name: "error data mid-answer", ctype: "text/event-stream", body: c1 + `data: {"error":{"message":"overloaded","code":502}}` + "\n\n", want: chat.OutcomeCut, status: 502, chunks: 1},
		{name: "429 event before a chunk", ctype: "text/event-stream", body: "event: error\ndata: {\"error\":{\"code\":429}}\n\n", want: chat.OutcomeRateLimited, status: 429},
		{name: "whole JSON answer", ctype: "application/json", body: okBody, chunks: 1, content: "hi back"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
				drain(r)
				w.Header().Set("Content-Type", tt.ctype)
				_, _ = w.Write([]byte(tt.body))
			})
			p := buildOpenAI(t, providers.Config{BaseURL: srv.URL + "/v1"})
			r := stream(t, p, 5*time.Second, 5*time.Second, hello())
			if len(r.chunks) != tt.chunks {
				t.Errorf("%d chunks (%q), want %d", len(r.chunks), r.chunks, tt.chunks)
			}
			if tt.want == "" {
				if r.err != nil || r.resp.Content != tt.content {
					t.Fatalf("Stream = %+v, %v; want content %q", r.resp, r.err, tt.content)
				}
				return
			}
			pe := asError(t, r.err)
			if pe.Outcome != tt.want || pe.StatusCode != tt.status || pe.Chunks != tt.chunks {
				t.Errorf("Error = %+v (%v), want outcome %q status %d chunks %d", *pe, pe, tt.want, tt.status, tt.chunks)
			}
		})
	}
}

func TestStreamRequestOnTheWire(t *testing.T) {
	got := make(chan *http.Request, 1)
	bodies := make(chan string, 1)
	srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
		var sb strings.Builder
		_, _ = fmt.Fprint(&sb, readAll(r))
		got <- r
		bodies <- sb.String()
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"))
	})
	t.Setenv("STREAM_TEST_KEY", "sk-test")
	p := buildOpenAI(t, providers.Config{BaseURL: srv.URL + "/v1/", APIKeyEnv: "STREAM_TEST_KEY", MaxTokens: 7})
	if r := stream(t, p, 5*time.Second, 5*time.Second, hello()); r.err != nil {
		t.Fatalf("Stream: %v", r.err)
	}
	r, body := <-got, <-bodies
	if r.URL.Path != "/v1/chat/completions" || r.Header.Get("Authorization") != "Bearer sk-test" || r.Header.Get("Accept") != "text/event-stream" {
		t.Errorf("request %s %v", r.URL.Path, r.Header)
	}
	for _, want := range []string{`"stream":true`, `"include_usage":true`, `"max_tokens":7`, `"model":"test-model"`, `"content":"hello there"`} {
		if !strings.Contains(body, want) {
			t.Errorf("body %s lacks %s", body, want)
		}
	}
}

func readAll(r *http.Request) string {
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := r.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String()
		}
	}
}

// A streamed call that ends with [DONE] leaves its connection to the next
// call: a new connection per stream costs a dial and a server goroutine
// before every first chunk (docs/BENCHMARKS.md, stream). Like the
// simulated provider, the server flushes [DONE] and ends the chunked body
// in a later write (here a little later, so that it is not read together).
func TestStreamReusesConnection(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		drain(r)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"))
		http.NewResponseController(w).Flush()
		_, _ = w.Write([]byte("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"))
		http.NewResponseController(w).Flush()
		time.Sleep(20 * time.Millisecond) // the body's end, in a packet of its own
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	p := buildOpenAI(t, providers.Config{BaseURL: srv.URL + "/v1"})
	for i := range 3 {
		if r := stream(t, p, 5*time.Second, 5*time.Second, hello()); r.err != nil || r.resp.Content != "x" {
			t.Fatalf("call %d: Stream = %+v, %v", i, r.resp, r.err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("3 streamed calls in a row opened %d connections, want 1", n)
	}
}

// A server that holds its body open after [DONE] does not hold the answer:
// the body's end is waited for only briefly (then the connection is
// dropped, as a body closed early is).
func TestStreamDoesNotWaitForABodyHeldOpenAfterDone(t *testing.T) {
	srv := newServer(t, func(cs *countingServer, w http.ResponseWriter, r *http.Request) {
		drain(r)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"))
		http.NewResponseController(w).Flush()
		select {
		case <-cs.release:
		case <-r.Context().Done():
		}
	})
	p := buildOpenAI(t, providers.Config{BaseURL: srv.URL + "/v1", StreamIdleTimeout: time.Minute})
	r := stream(t, p, 10*time.Second, 5*time.Second, hello())
	if r.err != nil || r.resp.Content != "x" {
		t.Fatalf("Stream = %+v, %v", r.resp, r.err)
	}
	if r.elapsed > 5*time.Second {
		t.Errorf("Stream returned %s after [DONE] was sent: it waited for the body's end", r.elapsed.Round(time.Millisecond))
	}
}
