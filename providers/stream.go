package providers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/understudy-ai/understudy/chat"
)

// Streamed calls read the server-sent events with a lean reader on
// net/http rather than openai-go's ssestream: the SDK's stream ends without
// an error when the body ends before "data: [DONE]" (a connection closed
// mid-answer reads as a complete, shorter answer), and it hands an
// "event: error" whose data has no "error" key on as a chunk. Failover
// needs both told apart, and a per-gap idle timer around each read.

// Errors of a streamed call, wrapped in an *Error.
var (
	// ErrStreamCut: the body ended (or the connection broke) before the
	// stream's end.
	ErrStreamCut = errors.New("stream cut before its end")
	// ErrStreamStalled: no chunk for the provider's stream idle timeout.
	ErrStreamStalled = errors.New("stream stalled")
	// ErrFirstChunkTimeout: no first chunk within the attempt's budget.
	ErrFirstChunkTimeout = errors.New("no first chunk within the attempt's timeout")
	// ErrStreamEvent: the provider sent an error event mid-stream.
	ErrStreamEvent = errors.New("error event in the stream")
)

type streamParams struct {
	Model         string         `json:"model"`
	Messages      []chat.Message `json:"messages"`
	MaxTokens     int            `json:"max_tokens,omitempty"`
	Temperature   *float64       `json:"temperature,omitempty"`
	Stream        bool           `json:"stream"`
	StreamOptions struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

type streamChunk struct {
	Model   string `json:"model"`
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int64 `json:"prompt_tokens"`
		CompletionTokens int64 `json:"completion_tokens"`
	} `json:"usage"`
	Error json.RawMessage `json:"error"`
}

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// drainWait bounds the wait for a stream's body to end after its last
// event: servers end it at once.
const drainWait = 100 * time.Millisecond

var errDrainWait = errors.New("stream body not ended after its last event")

func (p *openAI) Stream(ctx context.Context, req *Request, firstChunk time.Duration, onChunk func(string)) (*Response, error) {
	req = p.settings.Apply(req)
	idle := p.settings.StreamIdle
	if idle <= 0 {
		idle = DefaultStreamIdleTimeout
	}
	params := streamParams{Model: p.model, Messages: req.Messages, MaxTokens: req.MaxTokens, Temperature: req.Temperature, Stream: true}
	params.StreamOptions.IncludeUsage = true
	body, err := json.Marshal(params)
	if err != nil {
		return nil, &Error{Outcome: chat.OutcomeRejected, Err: err}
	}

	// One timer bounds the wait for the first chunk, then each gap; ctx
	// (the request's deadline) bounds the whole.
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(firstChunk, func() { cancel(ErrFirstChunkTimeout) })
	defer func() { timer.Stop() }()

	hreq, err := http.NewRequestWithContext(sctx, http.MethodPost, p.baseURL+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Outcome: chat.OutcomeError, Err: err}
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "text/event-stream")
	if p.apiKey != "" {
		hreq.Header.Set("Authorization", "Bearer "+p.apiKey)
	}
	resp, err := p.client.Do(hreq)
	if err != nil {
		return nil, streamTransport(ctx, sctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return nil, ClassifyStatus(resp.StatusCode, resp.Header, time.Now(), fmt.Errorf("%s", bytes.TrimSpace(b)))
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/json" {
		// A server that does not stream answers whole: one chunk.
		return p.whole(ctx, sctx, resp, onChunk)
	}

	out := &Response{Model: p.model, StatusCode: resp.StatusCode}
	var content bytes.Buffer
	chunks := 0
	finished := false
	fail := func(err error) (*Response, error) {
		if chunks == 0 && errors.Is(err, ErrMalformed) {
			return nil, &Error{Outcome: chat.OutcomeError, StatusCode: resp.StatusCode, Err: err}
		}
		if chunks == 0 {
			// Headers came, then nothing usable: an error like a reset
			// before the body (or our first-chunk timer: a timeout).
			return nil, streamTransport(ctx, sctx, err)
		}
		return nil, &Error{Outcome: chat.OutcomeCut, StatusCode: resp.StatusCode, Chunks: chunks, Err: streamCause(sctx, err)}
	}
	r := bufio.NewReaderSize(resp.Body, 4096)
	var event string
	var data []byte
	for {
		line, err := readLine(r)
		if err != nil {
			if errors.Is(err, io.EOF) && finished && sctx.Err() == nil {
				break // a server that sends no [DONE] after its last chunk
			}
			if errors.Is(err, io.EOF) {
				err = ErrStreamCut
			}
			return fail(err)
		}
		if len(line) > 0 {
			name, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(name) {
			case "event":
				event = string(value)
			case "data":
				if data != nil {
					data = append(data, '\n')
				}
				data = append(data, value...)
			}
			continue
		}
		if data == nil { // a blank line closing a comment or nothing
			event = ""
			continue
		}
		ev, d := event, data
		event, data = "", nil
		if bytes.Equal(d, []byte("[DONE]")) {
			break
		}
		var c streamChunk
		if err := json.Unmarshal(d, &c); err != nil && ev != "error" {
			return fail(fmt.Errorf("%w: chunk is not JSON: %w", ErrMalformed, err))
		}
		if ev == "error" || len(c.Error) > 0 {
			msg := c.Error
			if len(msg) == 0 {
				msg = d
			}
			e := &Error{Outcome: chat.OutcomeCut, StatusCode: eventStatus(c.Error), Chunks: chunks, Err: fmt.Errorf("%w: %s", ErrStreamEvent, msg)}
			if chunks == 0 {
				// Nothing streamed yet: an error like any before the answer.
				e.Outcome = chat.OutcomeError
				if e.StatusCode == http.StatusTooManyRequests {
					e.Outcome, e.RetryAfter = chat.OutcomeRateLimited, DefaultRetryAfter
				}
			}
			return nil, e
		}
		if c.Model != "" {
			out.Model = c.Model
		}
		if c.Usage != nil {
			out.Usage = chat.Usage{PromptTokens: c.Usage.PromptTokens, CompletionTokens: c.Usage.CompletionTokens}
		}
		for _, ch := range c.Choices {
			if ch.FinishReason != nil && *ch.FinishReason != "" {
				finished = true
			}
			if ch.Delta.Content == "" {
				continue
			}
			if chunks == 0 {
				timer.Stop()
			}
			chunks++
			content.WriteString(ch.Delta.Content)
			onChunk(ch.Delta.Content)
			// The next gap starts now; a timer that fired meanwhile has
			// already cancelled the call.
			timer.Stop()
			timer = time.AfterFunc(idle, func() { cancel(ErrStreamStalled) })
		}
	}
	if chunks == 0 && !finished {
		return nil, &Error{Outcome: chat.OutcomeError, StatusCode: resp.StatusCode, Err: fmt.Errorf("%w: a stream without a chunk or a finish reason", ErrMalformed)}
	}
	// The body's end (a chunked body's last chunk, right after [DONE]) is
	// read so that the connection serves the next call: a body closed
	// before its end drops the connection, and the next stream waits for a
	// dial. A server that holds the body open gets drainWait (then the
	// connection is dropped), and maxDrain bytes.
	timer.Stop()
	timer = time.AfterFunc(drainWait, func() { cancel(errDrainWait) })
	_, _ = io.CopyN(io.Discard, r, maxDrain)
	out.Content = content.String()
	return out, nil
}

// whole reads an answer a server sent whole instead of streaming it.
func (p *openAI) whole(ctx, sctx context.Context, resp *http.Response, onChunk func(string)) (*Response, error) {
	var c completion
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		if sctx.Err() != nil {
			return nil, streamTransport(ctx, sctx, err)
		}
		return nil, &Error{Outcome: chat.OutcomeError, StatusCode: resp.StatusCode, Err: fmt.Errorf("%w: %w", ErrMalformed, err)}
	}
	out, err := p.answer(&c, resp.StatusCode)
	if err == nil && out.Content != "" {
		onChunk(out.Content)
	}
	return out, err
}

// streamTransport classifies a failure before the first chunk: our first
// chunk timer is a timeout, like an attempt's; the request's deadline too.
func streamTransport(ctx, sctx context.Context, err error) *Error {
	cause := context.Cause(sctx)
	switch {
	case errors.Is(cause, ErrFirstChunkTimeout):
		return &Error{Outcome: chat.OutcomeTimeout, Err: fmt.Errorf("%w: %w", ErrFirstChunkTimeout, err)}
	case errors.Is(cause, ErrStreamStalled):
		return &Error{Outcome: chat.OutcomeTimeout, Err: fmt.Errorf("%w: %w", ErrStreamStalled, err)}
	}
	return ClassifyTransport(ctx, err)
}

// streamCause names why a stream that had chunks ended early.
func streamCause(sctx context.Context, err error) error {
	if cause := context.Cause(sctx); cause != nil && sctx.Err() != nil {
		if errors.Is(cause, ErrStreamStalled) {
			return fmt.Errorf("%w: %w", ErrStreamStalled, err)
		}
		return fmt.Errorf("%w: %w", cause, err)
	}
	if errors.Is(err, ErrStreamCut) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStreamCut, err)
}

// eventStatus reads an HTTP status from an error event's "code" (or
// "status") when it is one, 0 otherwise.
func eventStatus(raw json.RawMessage) int {
	var e struct {
		Code   json.Number `json:"code"`
		Status json.Number `json:"status"`
	}
	if json.Unmarshal(raw, &e) != nil {
		return 0
	}
	for _, n := range []json.Number{e.Code, e.Status} {
		if v, err := n.Int64(); err == nil && v >= 400 && v <= 599 {
			return int(v)
		}
	}
	return 0
}

// readLine reads one line without its end of line (\n, \r\n), whatever its
// length.
func readLine(r *bufio.Reader) ([]byte, error) {
	var long []byte
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, line...)
			continue
		}
		if err != nil {
			return nil, err
		}
		if long != nil {
			line = append(long, line...)
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		return bytes.TrimSuffix(line, []byte("\r")), nil
	}
}
