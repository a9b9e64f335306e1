package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// stream answers a request with "stream": true the way OpenAI-compatible
// servers do: server-sent events, one chat.completion.chunk per word of the
// answer, a last chunk with the finish reason and the usage, then
// "data: [DONE]". The failures before the first chunk are those of the
// non-streaming answer; the stream modes fail after Config.CutAfter chunks.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, req completionRequest, mode Mode) {
	ctx := r.Context()
	if mode == ModeHang {
		select {
		case <-ctx.Done():
		case <-s.closing:
		}
		return
	}
	if !s.wait(ctx) {
		return
	}
	switch mode {
	case ModeError:
		writeError(w, http.StatusServiceUnavailable, "server_error", "simulated outage")
		return
	case ModeRateLimit:
		w.Header().Set("Retry-After", strconv.Itoa(int((s.cfg.RetryAfter+time.Second-1)/time.Second)))
		writeError(w, http.StatusTooManyRequests, "rate_limit_error", "simulated rate limit")
		return
	case ModeUnauthorized:
		writeError(w, http.StatusUnauthorized, "authentication_error", "simulated bad API key")
		return
	case ModeReject:
		writeError(w, http.StatusBadRequest, "invalid_request_error", "simulated rejection")
		return
	}
	content, prompt := s.content(req)
	words := splitWords(content)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	if mode == ModeReset {
		s.cut(w) // headers, no chunk
		return
	}
	switch mode {
	case ModeGarbage:
		_, _ = w.Write([]byte("data: <html>502 Bad Gateway</html>\n\n"))
		return
	case ModeEmpty: // no chunk, no finish reason
		_, _ = w.Write([]byte("data: [DONE]\n\n"))
		return
	}
	id := fmt.Sprintf("sim-%d", s.hits.Load())
	created := time.Now().Unix()
	failing := mode == ModeCut || mode == ModeErrorEvent || mode == ModeStall
	for i := 0; ; i++ {
		if failing && i == s.cfg.CutAfter {
			s.fail(w, rc, ctx, mode)
			return
		}
		if i == len(words) {
			break
		}
		if i > 0 && !s.pause(ctx, s.cfg.ChunkDelay) {
			return
		}
		if !writeEvent(w, rc, chunk(id, created, s.cfg.Model, map[string]any{"content": words[i]}, nil, nil)) {
			return
		}
	}
	if failing { // fewer words than CutAfter: fail before the end
		s.fail(w, rc, ctx, mode)
		return
	}
	usage := map[string]any{"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}
	stop := "stop"
	writeEvent(w, rc, chunk(id, created, s.cfg.Model, map[string]any{}, &stop, usage))
	_, _ = w.Write([]byte("data: [DONE]\n\n"))
	_ = rc.Flush()
}

// fail ends a stream the way mode says.
func (s *Server) fail(w http.ResponseWriter, rc *http.ResponseController, ctx context.Context, mode Mode) {
	switch mode {
	case ModeCut:
		s.cut(w)
	case ModeErrorEvent:
		_, _ = w.Write([]byte(`event: error` + "\n" + `data: {"error":{"message":"simulated failure mid-stream","type":"server_error","code":503}}` + "\n\n"))
		_ = rc.Flush()
	case ModeStall:
		select {
		case <-ctx.Done():
		case <-s.closing:
		}
	}
}

// cut ends the connection with a reset, after the headers (and whatever
// chunks were written) but before the stream's end.
func (s *Server) cut(w http.ResponseWriter) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = buf.Flush()
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // RST, not FIN
	}
	_ = conn.Close()
}

// pause waits d; false when the client went away or the server closes.
func (s *Server) pause(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.closing:
		return false
	}
}

func chunk(id string, created int64, model string, delta map[string]any, finish *string, usage map[string]any) map[string]any {
	c := map[string]any{
		"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
		"choices": []map[string]any{{"index": 0, "delta": delta, "finish_reason": finish}},
	}
	if usage != nil {
		c["usage"] = usage
	}
	return c
}

// writeEvent writes one data event and flushes it; false when the client
// is gone.
func writeEvent(w http.ResponseWriter, rc *http.ResponseController, v any) bool {
	b, err := json.Marshal(v)
	if err != nil {
		return false
	}
	if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
		return false
	}
	return rc.Flush() == nil
}

// splitWords cuts s into words, each but the last keeping the space after
// it, so that the pieces put together are s.
func splitWords(s string) []string {
	var out []string
	for s != "" {
		i := strings.IndexByte(s, ' ')
		if i < 0 {
			out = append(out, s)
			break
		}
		out = append(out, s[:i+1])
		s = s[i+1:]
	}
	return out
}
