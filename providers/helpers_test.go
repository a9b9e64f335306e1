package providers_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
)

// returnBound is how long a Complete call may take after its context's
// deadline before the test calls it hung. It is a safety net, not a
// performance assertion.
const returnBound = 5 * time.Second

// countingServer is an httptest server that counts requests and releases
// handlers that wait on release when the test ends.
type countingServer struct {
	*httptest.Server
	hits    atomic.Int64
	release chan struct{}
}

// newServer starts an httptest server running h for every request. The
// server is closed when the test ends, after release is closed (so handlers
// that wait on it return first).
func newServer(t *testing.T, h func(cs *countingServer, w http.ResponseWriter, r *http.Request)) *countingServer {
	t.Helper()
	cs := &countingServer{release: make(chan struct{})}
	cs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cs.hits.Add(1)
		h(cs, w, r)
	}))
	t.Cleanup(cs.Close)
	t.Cleanup(func() { close(cs.release) })
	return cs
}

// buildOpenAI builds an openai provider pointed at baseURL and closes it
// when the test ends.
func buildOpenAI(t *testing.T, c providers.Config) *providers.Built {
	t.Helper()
	if c.Name == "" {
		c.Name = "test"
	}
	if c.Kind == "" {
		c.Kind = providers.KindOpenAI
	}
	if c.Model == "" && c.Kind == providers.KindOpenAI {
		c.Model = "test-model"
	}
	b, err := providers.Build(c, 4)
	if err != nil {
		t.Fatalf("Build(%+v): %v", c, err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Built.Close: %v", err)
		}
	})
	return b
}

func hello() *providers.Request {
	return &providers.Request{Messages: []chat.Message{{Role: chat.RoleUser, Content: "hello there"}}}
}

type result struct {
	resp    *providers.Response
	err     error
	elapsed time.Duration
}

// complete calls p.Complete under a context with the given timeout (0: no
// timeout) and fails the test if the call does not return within the
// timeout plus returnBound.
func complete(t *testing.T, p providers.Provider, timeout time.Duration, req *providers.Request) result {
	t.Helper()
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		resp, err := p.Complete(ctx, req)
		done <- result{resp: resp, err: err, elapsed: time.Since(start)}
	}()
	bound := time.NewTimer(timeout + returnBound)
	defer bound.Stop()
	select {
	case r := <-done:
		return r
	case <-bound.C:
		t.Fatalf("Complete did not return within %s of its %s timeout", returnBound, timeout)
		return result{}
	}
}

// asError asserts that err is a *providers.Error and returns it.
func asError(t *testing.T, err error) *providers.Error {
	t.Helper()
	if err == nil {
		t.Fatal("Complete: got no error, want a *providers.Error")
	}
	var pe *providers.Error
	if !errors.As(err, &pe) {
		t.Fatalf("Complete: error %v (%T) is not a *providers.Error", err, err)
	}
	return pe
}

// drain reads and discards the request body so the server notices when the
// client goes away.
func drain(r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }

const okBody = `{"id":"c-1","object":"chat.completion","created":1700000000,"model":"served-model",` +
	`"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi back"}}],` +
	`"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}`
