package providers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

func TestOpenAIOK(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
			drain(r)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(okBody))
		})
		p := buildOpenAI(t, providers.Config{Client: client, Name: "deepseek", BaseURL: srv.URL + "/v1", Model: "asked-model"})
		if p.Name() != "deepseek" || p.Model() != "asked-model" {
			t.Errorf("Name, Model = %q, %q; want deepseek, asked-model", p.Name(), p.Model())
		}

		r := complete(t, p, 5*time.Second, hello())
		if r.err != nil {
			t.Fatalf("Complete: %v", r.err)
		}
		want := providers.Response{
			Content:    "hi back",
			Model:      "served-model",
			Usage:      chat.Usage{PromptTokens: 12, CompletionTokens: 3},
			StatusCode: http.StatusOK,
		}
		if *r.resp != want {
			t.Errorf("Response = %+v, want %+v", *r.resp, want)
		}
		if got := srv.hits.Load(); got != 1 {
			t.Errorf("server hits = %d, want 1", got)
		}
	})
}

func TestOpenAIModelFallsBackToConfigured(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
			drain(r)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"id":"x","object":"chat.completion","created":1,"choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}`))
		})
		p := buildOpenAI(t, providers.Config{Client: client, BaseURL: srv.URL + "/v1", Model: "configured"})
		r := complete(t, p, 5*time.Second, hello())
		if r.err != nil {
			t.Fatalf("Complete: %v", r.err)
		}
		if r.resp.Model != "configured" || r.resp.Content != "ok" || r.resp.Usage != (chat.Usage{}) {
			t.Errorf("Response = %+v, want model configured, content ok, zero usage", *r.resp)
		}
	})
}

// TestOpenAIStatusClassification drives the openai provider against an
// httptest server answering each error status, and checks the
// classification and that the SDK made exactly one request (its retries
// are off, even for 5xx, 429 and x-should-retry: true).
func TestOpenAIStatusClassification(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		const openAIErr = `{"error":{"message":"nope","type":"server_error","param":null,"code":null}}`
		future := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
		past := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)

		tests := []struct {
			name        string
			status      int
			header      map[string]string
			body        string // default openAIErr
			contentType string // default application/json
			want        chat.Outcome
			// RetryAfter must be within [minRA, maxRA].
			minRA, maxRA time.Duration
			config       bool
		}{
			{name: "503", status: 503, want: chat.OutcomeError},
			{name: "503 asking for a retry", status: 503, header: map[string]string{"x-should-retry": "true", "Retry-After": "0"}, want: chat.OutcomeError},
			{name: "500", status: 500, want: chat.OutcomeError},
			{name: "502 html page", status: 502, body: "<html><body>502 Bad Gateway</body></html>", contentType: "text/html", want: chat.OutcomeError},
			{name: "500 empty body", status: 500, body: " ", contentType: "text/plain", want: chat.OutcomeError},
			{name: "401", status: 401, want: chat.OutcomeError, config: true},
			{name: "403", status: 403, want: chat.OutcomeError, config: true},
			{name: "401 plain text", status: 401, body: "Unauthorized", contentType: "text/plain", want: chat.OutcomeError, config: true},
			{name: "400", status: 400, want: chat.OutcomeRejected},
			{name: "404", status: 404, want: chat.OutcomeRejected},
			{name: "422", status: 422, want: chat.OutcomeRejected},
			{name: "404 error as a string", status: 404, body: `{"error":"model \"x\" not found"}`, want: chat.OutcomeRejected},
			{name: "408", status: 408, want: chat.OutcomeTimeout},
			{name: "504", status: 504, want: chat.OutcomeTimeout},
			{name: "429 Retry-After seconds", status: 429, header: map[string]string{"Retry-After": "7"}, want: chat.OutcomeRateLimited, minRA: 7 * time.Second, maxRA: 7 * time.Second},
			{name: "429 Retry-After fractional", status: 429, header: map[string]string{"Retry-After": "1.5"}, want: chat.OutcomeRateLimited, minRA: 1500 * time.Millisecond, maxRA: 1500 * time.Millisecond},
			{name: "429 Retry-After HTTP date", status: 429, header: map[string]string{"Retry-After": future}, want: chat.OutcomeRateLimited, minRA: 20 * time.Second, maxRA: 30 * time.Second},
			{name: "429 Retry-After HTTP date past", status: 429, header: map[string]string{"Retry-After": past}, want: chat.OutcomeRateLimited},
			{name: "429 without Retry-After", status: 429, want: chat.OutcomeRateLimited, minRA: providers.DefaultRetryAfter, maxRA: providers.DefaultRetryAfter},
			{name: "429 garbage Retry-After", status: 429, header: map[string]string{"Retry-After": "soon"}, want: chat.OutcomeRateLimited, minRA: providers.DefaultRetryAfter, maxRA: providers.DefaultRetryAfter},
			{name: "429 error as a string", status: 429, header: map[string]string{"Retry-After": "7"}, body: `{"error":"slow down"}`, want: chat.OutcomeRateLimited, minRA: 7 * time.Second, maxRA: 7 * time.Second},
			{name: "429 plain text", status: 429, header: map[string]string{"Retry-After": "2"}, body: "Too Many Requests", contentType: "text/plain", want: chat.OutcomeRateLimited, minRA: 2 * time.Second, maxRA: 2 * time.Second},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
					drain(r)
					ct, body := tt.contentType, tt.body
					if ct == "" {
						ct = "application/json"
					}
					if body == "" {
						body = openAIErr
					}
					w.Header().Set("Content-Type", ct)
					for k, v := range tt.header {
						w.Header().Set(k, v)
					}
					w.WriteHeader(tt.status)
					_, _ = w.Write([]byte(body))
				})
				p := buildOpenAI(t, providers.Config{Client: client, BaseURL: srv.URL + "/v1"})

				r := complete(t, p, 10*time.Second, hello())
				if r.resp != nil {
					t.Errorf("Complete returned a response %+v with its error", *r.resp)
				}
				pe := asError(t, r.err)
				if pe.Outcome != tt.want {
					t.Errorf("Outcome = %q, want %q (err %v)", pe.Outcome, tt.want, pe)
				}
				if pe.StatusCode != tt.status {
					t.Errorf("StatusCode = %d, want %d", pe.StatusCode, tt.status)
				}
				if pe.RetryAfter < tt.minRA || pe.RetryAfter > tt.maxRA {
					t.Errorf("RetryAfter = %s, want within [%s, %s]", pe.RetryAfter, tt.minRA, tt.maxRA)
				}
				if pe.Config != tt.config {
					t.Errorf("Config = %v, want %v", pe.Config, tt.config)
				}
				wantCounts := tt.want == chat.OutcomeError || tt.want == chat.OutcomeTimeout
				if got := providers.CountsAsFailure(pe.Outcome); got != wantCounts {
					t.Errorf("CountsAsFailure(%q) = %v, want %v", pe.Outcome, got, wantCounts)
				}
				if pe.Err == nil {
					t.Error("Error.Err is nil; want the underlying error")
				}
				if got := srv.hits.Load(); got != 1 {
					t.Errorf("server hits = %d, want exactly 1 (SDK retries must be off)", got)
				}
			})
		}
	})
}

// TestOpenAISimModes drives a provider of kind sim through every mode of
// the simulated server.
func TestOpenAISimModes(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		tests := []struct {
			name      string
			mode      sim.Mode
			sim       sim.Config
			timeout   time.Duration // attempt timeout; default 5s
			want      chat.Outcome  // "" for ok
			status    int
			ra        time.Duration
			config    bool
			malformed bool
		}{
			{name: "ok", mode: sim.ModeOK, status: 200},
			{name: "error", mode: sim.ModeError, want: chat.OutcomeError, status: 503},
			{name: "ratelimit default", mode: sim.ModeRateLimit, want: chat.OutcomeRateLimited, status: 429, ra: time.Second},
			{name: "ratelimit 3s", mode: sim.ModeRateLimit, sim: sim.Config{RetryAfter: 3 * time.Second}, want: chat.OutcomeRateLimited, status: 429, ra: 3 * time.Second},
			{name: "unauthorized", mode: sim.ModeUnauthorized, want: chat.OutcomeError, status: 401, config: true},
			{name: "reject", mode: sim.ModeReject, want: chat.OutcomeRejected, status: 400},
			{name: "garbage", mode: sim.ModeGarbage, want: chat.OutcomeError, status: 200, malformed: true},
			{name: "empty", mode: sim.ModeEmpty, want: chat.OutcomeError, status: 200, malformed: true},
			{name: "reset", mode: sim.ModeReset, want: chat.OutcomeError},
			{name: "hang", mode: sim.ModeHang, timeout: 200 * time.Millisecond, want: chat.OutcomeTimeout},
			{name: "latency beyond the timeout", mode: sim.ModeOK, sim: sim.Config{Latency: time.Minute}, timeout: 200 * time.Millisecond, want: chat.OutcomeTimeout},
			{name: "failure rate 1", mode: sim.ModeOK, sim: sim.Config{FailureRate: 1}, want: chat.OutcomeError, status: 503},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				b := buildOpenAI(t, providers.Config{Client: client, Name: "simmy", Kind: providers.KindSim, Sim: tt.sim})
				if b.Sim == nil {
					t.Fatal("Built.Sim is nil for kind sim")
				}
				b.Sim.SetMode(tt.mode)
				timeout := tt.timeout
				if timeout == 0 {
					timeout = 5 * time.Second
				}

				req := &providers.Request{Messages: []chat.Message{
					{Role: chat.RoleSystem, Content: "be brief"},
					{Role: chat.RoleUser, Content: "one two three"},
				}}
				r := complete(t, b, timeout, req)

				if got := b.Sim.Hits(); got != 1 {
					t.Errorf("sim hits = %d, want exactly 1", got)
				}
				wantMode := tt.mode
				if tt.sim.FailureRate == 1 {
					wantMode = sim.ModeError
				}
				if got := b.Sim.HitsIn(wantMode); got != 1 {
					t.Errorf("sim HitsIn(%s) = %d, want 1", wantMode, got)
				}

				if tt.want == "" {
					if r.err != nil {
						t.Fatalf("Complete: %v", r.err)
					}
					content := "[sim-simmy] you said 3 words"
					want := providers.Response{
						Content:    content,
						Model:      "sim-simmy",
						Usage:      chat.Usage{PromptTokens: 5, CompletionTokens: int64(len(strings.Fields(content)))},
						StatusCode: 200,
					}
					if *r.resp != want {
						t.Errorf("Response = %+v, want %+v", *r.resp, want)
					}
					return
				}
				pe := asError(t, r.err)
				if pe.Outcome != tt.want || pe.StatusCode != tt.status || pe.RetryAfter != tt.ra || pe.Config != tt.config {
					t.Errorf("Error = {Outcome:%q StatusCode:%d RetryAfter:%s Config:%v}, want {%q %d %s %v} (err %v)",
						pe.Outcome, pe.StatusCode, pe.RetryAfter, pe.Config, tt.want, tt.status, tt.ra, tt.config, pe)
				}
				if got := errors.Is(r.err, providers.ErrMalformed); got != tt.malformed {
					t.Errorf("errors.Is(err, ErrMalformed) = %v, want %v (err %v)", got, tt.malformed, r.err)
				}
			})
		}
	})
}

// TestOpenAITimeouts checks that an attempt's context bounds the whole call:
// waiting for headers and reading the body.
func TestOpenAITimeouts(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		const attempt = 200 * time.Millisecond
		tests := []struct {
			name    string
			handler func(cs *countingServer, w http.ResponseWriter, r *http.Request)
		}{
			{name: "hang before headers", handler: func(cs *countingServer, w http.ResponseWriter, r *http.Request) {
				drain(r)
				select {
				case <-r.Context().Done():
				case <-cs.release:
				}
			}},
			{name: "hang mid-body", handler: func(cs *countingServer, w http.ResponseWriter, r *http.Request) {
				drain(r)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write([]byte(`{"id":"c-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assis`))
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-cs.release:
				}
			}},
			{name: "hang mid error body", handler: func(cs *countingServer, w http.ResponseWriter, r *http.Request) {
				drain(r)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte(`{"error":{"mess`))
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-cs.release:
				}
			}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				srv := newServer(t, tt.handler)
				p := buildOpenAI(t, providers.Config{Client: client, BaseURL: srv.URL + "/v1"})

				r := complete(t, p, attempt, hello()) // fails the test if it hangs
				pe := asError(t, r.err)
				if pe.Outcome != chat.OutcomeTimeout {
					t.Errorf("Outcome = %q, want timeout (err %v)", pe.Outcome, pe)
				}
				if !providers.CountsAsFailure(pe.Outcome) {
					t.Error("a timeout must count as a failure")
				}
				if !errors.Is(r.err, context.DeadlineExceeded) {
					t.Errorf("err %v does not wrap context.DeadlineExceeded", r.err)
				}
				if got := srv.hits.Load(); got != 1 {
					t.Errorf("server hits = %d, want 1", got)
				}
			})
		}
	})
}

// TestOpenAITimeoutFreesTheProvider checks that a hung call does not keep
// the provider from answering the next call.
func TestOpenAITimeoutFreesTheProvider(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		b := buildOpenAI(t, providers.Config{Client: client, Name: "s", Kind: providers.KindSim})
		b.Sim.SetMode(sim.ModeHang)
		for range 3 {
			if pe := asError(t, complete(t, b, 100*time.Millisecond, hello()).err); pe.Outcome != chat.OutcomeTimeout {
				t.Fatalf("Outcome = %q, want timeout", pe.Outcome)
			}
		}
		b.Sim.SetMode(sim.ModeOK)
		if r := complete(t, b, 5*time.Second, hello()); r.err != nil {
			t.Fatalf("Complete after timeouts: %v", r.err)
		}
	})
}

func TestOpenAIConnectionErrors(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		t.Run("refused", func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			if err := ln.Close(); err != nil {
				t.Fatal(err)
			}
			p := buildOpenAI(t, providers.Config{Client: client, BaseURL: "http://" + addr + "/v1"})
			pe := asError(t, complete(t, p, 5*time.Second, hello()).err)
			if pe.Outcome != chat.OutcomeError || pe.StatusCode != 0 || pe.Config || pe.RetryAfter != 0 {
				t.Errorf("Error = %+v, want outcome error without status", *pe)
			}
			if !providers.CountsAsFailure(pe.Outcome) {
				t.Error("a refused connection must count as a failure")
			}
			if errors.Is(pe, providers.ErrMalformed) {
				t.Error("a refused connection is not a malformed response")
			}
		})
		t.Run("closed before headers", func(t *testing.T) {
			srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
				drain(r)
				conn, _, err := w.(http.Hijacker).Hijack()
				if err != nil {
					return
				}
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
				_ = conn.Close()
			})
			p := buildOpenAI(t, providers.Config{Client: client, BaseURL: srv.URL + "/v1"})
			pe := asError(t, complete(t, p, 5*time.Second, hello()).err)
			if pe.Outcome != chat.OutcomeError || pe.StatusCode != 0 {
				t.Errorf("Error = %+v, want outcome error without status", *pe)
			}
			if got := srv.hits.Load(); got != 1 {
				t.Errorf("server hits = %d, want exactly 1 (no retry of connection errors)", got)
			}
		})
		t.Run("closed sim provider", func(t *testing.T) {
			b, err := providers.Build(providers.Config{Client: client, Name: "gone", Kind: providers.KindSim}, 2)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			pe := asError(t, complete(t, b, 5*time.Second, hello()).err)
			if pe.Outcome != chat.OutcomeError {
				t.Errorf("Outcome = %q, want error", pe.Outcome)
			}
		})
	})
}

// TestOpenAIAuthAndEnvironment checks that the key comes from api_key_env
// only and the SDK's OPENAI_* environment defaults are ignored.
func TestOpenAIAuthAndEnvironment(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		decoy := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
			drain(r)
			http.Error(w, "decoy", http.StatusTeapot)
		})
		t.Setenv("OPENAI_BASE_URL", decoy.URL+"/v1")
		t.Setenv("OPENAI_API_KEY", "sk-from-openai-env")
		t.Setenv("OPENAI_ORG_ID", "org-from-env")
		t.Setenv("OPENAI_PROJECT_ID", "proj-from-env")
		t.Setenv("UNDERSTUDY_TEST_KEY", "sk-configured-123")

		tests := []struct {
			name      string
			keyEnv    string
			wantAuth  string
			forbidden []string // headers that must be absent
		}{
			{name: "api_key_env set", keyEnv: "UNDERSTUDY_TEST_KEY", wantAuth: "Bearer sk-configured-123"},
			{name: "no api_key_env", keyEnv: "", wantAuth: ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var mu sync.Mutex
				var got http.Header
				var path string
				srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
					drain(r)
					mu.Lock()
					got, path = r.Header.Clone(), r.URL.Path
					mu.Unlock()
					w.Header().Set("Content-Type", "application/json")
					_, _ = w.Write([]byte(okBody))
				})
				p := buildOpenAI(t, providers.Config{Client: client, BaseURL: srv.URL + "/v1", APIKeyEnv: tt.keyEnv})
				if r := complete(t, p, 5*time.Second, hello()); r.err != nil {
					t.Fatalf("Complete: %v", r.err)
				}
				mu.Lock()
				defer mu.Unlock()
				if srv.hits.Load() != 1 {
					t.Fatalf("configured server hits = %d, want 1", srv.hits.Load())
				}
				if a := got.Get("Authorization"); a != tt.wantAuth {
					t.Errorf("Authorization = %q, want %q", a, tt.wantAuth)
				}
				if path != "/v1/chat/completions" {
					t.Errorf("path = %q, want /v1/chat/completions", path)
				}
				for _, h := range []string{"OpenAI-Organization", "OpenAI-Project"} {
					if v := got.Get(h); v != "" {
						t.Errorf("header %s = %q, want none (taken from the environment)", h, v)
					}
				}
				if n := decoy.hits.Load(); n != 0 {
					t.Errorf("OPENAI_BASE_URL server got %d requests, want 0", n)
				}
			})
		}
	})
}

// TestOpenAIErrorHidesAPIKey checks that a failed call's message does not
// carry the key (errors end up in logs and events).
func TestOpenAIErrorHidesAPIKey(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		const key = "sk-very-secret-key-42"
		t.Setenv("UNDERSTUDY_SECRET_KEY", key)
		srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
			drain(r)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = fmt.Fprintf(w, `{"error":{"message":"bad key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`)
		})
		p := buildOpenAI(t, providers.Config{Client: client, BaseURL: srv.URL + "/v1", APIKeyEnv: "UNDERSTUDY_SECRET_KEY"})
		pe := asError(t, complete(t, p, 5*time.Second, hello()).err)
		if !pe.Config {
			t.Errorf("Config = false for a 401")
		}
		for _, s := range []string{pe.Error(), fmt.Sprintf("%v", pe), fmt.Sprintf("%+v", pe)} {
			if strings.Contains(s, key) {
				t.Errorf("error text %q contains the API key", s)
			}
		}
	})
}

// TestOpenAIRequestOnTheWire decodes what the provider sends.
func TestOpenAIRequestOnTheWire(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		temp := func(f float64) *float64 { return &f }
		conversation := []chat.Message{
			{Role: chat.RoleSystem, Content: "You are Lucy."},
			{Role: chat.RoleUser, Content: "hi"},
			{Role: chat.RoleAssistant, Content: "hello!"},
			{Role: chat.RoleUser, Content: "how are you?"},
		}
		tests := []struct {
			name     string
			baseURL  string // suffix appended to the server URL
			req      providers.Request
			wantMax  any // nil: absent
			wantTemp any // nil: absent
		}{
			{name: "max_tokens and temperature", baseURL: "/v1", req: providers.Request{Messages: conversation, MaxTokens: 512, Temperature: temp(0.7)}, wantMax: 512.0, wantTemp: 0.7},
			{name: "defaults left to the provider", baseURL: "/v1", req: providers.Request{Messages: conversation}},
			{name: "temperature zero is sent", baseURL: "/v1", req: providers.Request{Messages: conversation, Temperature: temp(0)}, wantTemp: 0.0},
			{name: "base_url with trailing slash", baseURL: "/v1/", req: providers.Request{Messages: conversation, MaxTokens: 1}, wantMax: 1.0},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				type seen struct {
					method, path, query, contentType string
					body                             map[string]any
					err                              error
				}
				got := make(chan seen, 1)
				srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
					s := seen{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, contentType: r.Header.Get("Content-Type")}
					s.err = json.NewDecoder(r.Body).Decode(&s.body)
					select {
					case got <- s:
					default:
					}
					w.Header().Set("Content-Type", "application/json")
					_, _ = w.Write([]byte(okBody))
				})
				p := buildOpenAI(t, providers.Config{Client: client, BaseURL: srv.URL + tt.baseURL, Model: "wire-model"})
				if r := complete(t, p, 5*time.Second, &tt.req); r.err != nil {
					t.Fatalf("Complete: %v", r.err)
				}
				s := <-got
				if s.err != nil {
					t.Fatalf("request body is not JSON: %v", s.err)
				}
				if s.method != http.MethodPost || s.path != "/v1/chat/completions" || s.query != "" {
					t.Errorf("request = %s %s?%s, want POST /v1/chat/completions", s.method, s.path, s.query)
				}
				if !strings.HasPrefix(s.contentType, "application/json") {
					t.Errorf("Content-Type = %q, want application/json", s.contentType)
				}
				if s.body["model"] != "wire-model" {
					t.Errorf("model = %v, want wire-model", s.body["model"])
				}
				if st, ok := s.body["stream"]; ok && st != false {
					t.Errorf("stream = %v, want absent or false", st)
				}
				msgs, _ := s.body["messages"].([]any)
				if len(msgs) != len(tt.req.Messages) {
					t.Fatalf("messages = %v, want %d messages", s.body["messages"], len(tt.req.Messages))
				}
				for i, m := range msgs {
					mm, _ := m.(map[string]any)
					if mm["role"] != tt.req.Messages[i].Role || mm["content"] != tt.req.Messages[i].Content {
						t.Errorf("messages[%d] = %v, want role %q content %q", i, m, tt.req.Messages[i].Role, tt.req.Messages[i].Content)
					}
				}
				for _, f := range []struct {
					key  string
					want any
				}{{"max_tokens", tt.wantMax}, {"temperature", tt.wantTemp}} {
					v, ok := s.body[f.key]
					switch {
					case f.want == nil && ok:
						t.Errorf("%s = %v, want absent", f.key, v)
					case f.want != nil && (!ok || v != f.want):
						t.Errorf("%s = %v (present %v), want %v", f.key, v, ok, f.want)
					}
				}
			})
		}
	})
}

// TestOpenAIConcurrentCalls runs more calls at once than the connection
// pool holds, for the race detector.
func TestOpenAIConcurrentCalls(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		b := buildOpenAI(t, providers.Config{Client: client, Name: "busy", Kind: providers.KindSim, Sim: sim.Config{Latency: 5 * time.Millisecond}})
		const n = 32
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				req := &providers.Request{Messages: []chat.Message{{Role: chat.RoleUser, Content: strings.Repeat("w ", i+1)}}}
				resp, err := b.Complete(ctx, req)
				if err != nil {
					errs <- err
					return
				}
				if want := fmt.Sprintf("[sim-busy] you said %d words", i+1); resp.Content != want {
					errs <- fmt.Errorf("content %q, want %q", resp.Content, want)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if got := b.Sim.Hits(); got != n {
			t.Errorf("sim hits = %d, want %d", got, n)
		}
	})
}

func TestBuild(t *testing.T) {
	t.Run("openai", func(t *testing.T) {
		b, err := providers.Build(providers.Config{Name: "ds", Kind: providers.KindOpenAI, BaseURL: "http://127.0.0.1:1/v1", Model: "m"}, 4)
		if err != nil {
			t.Fatal(err)
		}
		if b.Name() != "ds" || b.Model() != "m" || b.Timeout != 30*time.Second || b.Sim != nil {
			t.Errorf("Built = {name %q model %q timeout %s sim %v}, want {ds m 30s nil}", b.Name(), b.Model(), b.Timeout, b.Sim)
		}
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	t.Run("openai timeout kept", func(t *testing.T) {
		b, err := providers.Build(providers.Config{Name: "ds", Kind: providers.KindOpenAI, BaseURL: "http://127.0.0.1:1/v1", Model: "m", Timeout: 3 * time.Second}, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if b.Timeout != 3*time.Second {
			t.Errorf("Timeout = %s, want 3s", b.Timeout)
		}
	})
	t.Run("sim defaults", func(t *testing.T) {
		b := buildOpenAI(t, providers.Config{Name: "qwen", Kind: providers.KindSim})
		if b.Model() != "sim-qwen" || b.Timeout != 30*time.Second {
			t.Errorf("model %q timeout %s, want sim-qwen 30s", b.Model(), b.Timeout)
		}
		if b.Sim == nil || !strings.HasPrefix(b.Sim.URL(), "http://127.0.0.1:") || !strings.HasSuffix(b.Sim.URL(), "/v1") {
			t.Fatalf("sim URL = %q, want http://127.0.0.1:<port>/v1", b.Sim.URL())
		}
		r := complete(t, b, 5*time.Second, hello())
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.resp.Model != "sim-qwen" {
			t.Errorf("answer model = %q, want sim-qwen", r.resp.Model)
		}
	})
	t.Run("sim with model", func(t *testing.T) {
		b := buildOpenAI(t, providers.Config{Name: "qwen", Kind: providers.KindSim, Model: "qwen-72b"})
		r := complete(t, b, 5*time.Second, hello())
		if r.err != nil {
			t.Fatal(r.err)
		}
		if b.Model() != "qwen-72b" || r.resp.Model != "qwen-72b" {
			t.Errorf("model %q, answer model %q; want qwen-72b", b.Model(), r.resp.Model)
		}
	})
	t.Run("unknown kind", func(t *testing.T) {
		b, err := providers.Build(providers.Config{Name: "x", Kind: "anthropic"}, 4)
		if err == nil {
			b.Close()
			t.Fatal("Build accepted kind anthropic")
		}
		if !strings.Contains(err.Error(), "x") || !strings.Contains(err.Error(), "anthropic") {
			t.Errorf("error %q does not name the provider and kind", err)
		}
	})
}

// TestOpenAIMalformedAnswers checks that a 200 whose body is not a usable
// chat completion is an error of status 200 wrapping ErrMalformed, for both
// clients alike.
func TestOpenAIMalformedAnswers(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		for _, tt := range []struct{ name, body string }{
			{"empty body", ""},
			{"not JSON", "<html>502 Bad Gateway</html>"},
			{"choices of the wrong type", `{"id":"x","object":"chat.completion","choices":"none"}`},
			{"no choices", `{"id":"x","object":"chat.completion","choices":[]}`},
		} {
			t.Run(tt.name, func(t *testing.T) {
				srv := newServer(t, func(_ *countingServer, w http.ResponseWriter, r *http.Request) {
					drain(r)
					w.Header().Set("Content-Type", "application/json")
					_, _ = w.Write([]byte(tt.body))
				})
				p := buildOpenAI(t, providers.Config{Client: client, BaseURL: srv.URL + "/v1"})
				r := complete(t, p, 5*time.Second, hello())
				pe := asError(t, r.err)
				if pe.Outcome != chat.OutcomeError || pe.StatusCode != http.StatusOK || !errors.Is(pe, providers.ErrMalformed) {
					t.Errorf("Error = {Outcome:%q StatusCode:%d} (err %v), want error, 200, ErrMalformed", pe.Outcome, pe.StatusCode, pe)
				}
			})
		}
	})
}
