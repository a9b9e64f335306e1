package providers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/understudy-ai/understudy/chat"
)

// The lean client (Config.Client "lean", the default) makes a non-streaming
// call on net/http: the request is encoded from completeParams, the answer
// decoded from the body into completion, and nothing else is built. Its
// classification is openai-go's (TestOpenAIStatusClassification and the
// other tests of openai_test.go run against both); it is cheaper by what
// the SDK's generic request building and response type cost
// (BenchmarkComplete, docs/BENCHMARKS.md).

type completeParams struct {
	Model       string         `json:"model"`
	Messages    []chat.Message `json:"messages"`
	MaxTokens   int            `json:"max_tokens,omitempty"`
	Temperature *float64       `json:"temperature,omitempty"`
}

// completion is what is read of a chat completion.
type completion struct {
	Model   string `json:"model"`
	Choices []struct {
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int64 `json:"prompt_tokens"`
		CompletionTokens int64 `json:"completion_tokens"`
	} `json:"usage"`
}

// maxDrain bounds what is read after the answer's JSON so that the
// connection can be reused.
const maxDrain = 4 << 10

func (p *openAI) completeLean(ctx context.Context, req *Request) (*Response, error) {
	body, err := json.Marshal(completeParams{Model: p.model, Messages: req.Messages, MaxTokens: req.MaxTokens, Temperature: req.Temperature})
	if err != nil {
		return nil, &Error{Outcome: chat.OutcomeRejected, Err: err}
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, p.baseURL+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Outcome: chat.OutcomeError, Err: err}
	}
	hreq.Header["Content-Type"] = []string{"application/json"}
	hreq.Header["Accept"] = []string{"application/json"}
	if p.apiKey != "" {
		hreq.Header["Authorization"] = []string{"Bearer " + p.apiKey}
	}
	resp, err := p.client.Do(hreq)
	if err != nil {
		return nil, ClassifyTransport(ctx, withContext(ctx, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		if err != nil && ctx.Err() != nil {
			// The error's body hung past the attempt's deadline.
			return nil, ClassifyTransport(ctx, withContext(ctx, err))
		}
		return nil, ClassifyStatus(resp.StatusCode, resp.Header, time.Now(),
			fmt.Errorf("POST %s: %s: %s", hreq.URL.Path, resp.Status, bytes.TrimSpace(b)))
	}
	var out completion
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		var syntaxErr *json.SyntaxError
		var typeErr *json.UnmarshalTypeError
		if ctx.Err() == nil && (errors.As(err, &syntaxErr) || errors.As(err, &typeErr) || errors.Is(err, io.EOF)) {
			// A success status with a body that is not a JSON object.
			return nil, &Error{Outcome: chat.OutcomeError, StatusCode: resp.StatusCode, Err: fmt.Errorf("%w: %w", ErrMalformed, err)}
		}
		// The body broke off: a reset or the attempt's deadline.
		return nil, ClassifyTransport(ctx, withContext(ctx, err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	return p.answer(&out, resp.StatusCode)
}

// answer is the response a completion read with a success status says; a
// completion without a choice is malformed.
func (p *openAI) answer(c *completion, status int) (*Response, error) {
	if len(c.Choices) == 0 {
		return nil, &Error{Outcome: chat.OutcomeError, StatusCode: status, Err: fmt.Errorf("%w: no choices", ErrMalformed)}
	}
	model := c.Model
	if model == "" {
		model = p.model
	}
	return &Response{
		Content:    c.Choices[0].Message.Content,
		Model:      model,
		Usage:      chat.Usage{PromptTokens: c.Usage.PromptTokens, CompletionTokens: c.Usage.CompletionTokens},
		StatusCode: status,
	}, nil
}

// withContext makes err wrap ctx's error when ctx is done and err does
// not already say so, so that a call cut by its deadline wraps
// context.DeadlineExceeded.
func withContext(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}
