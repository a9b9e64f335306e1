package providers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/understudy-ai/understudy/chat"
)

type openAI struct {
	name, model string
	settings    Settings
	// svc is the openai-go SDK's service when Config.Client is openai-go;
	// nil: the lean client (lean.go).
	svc       *openai.ChatCompletionService
	transport *http.Transport
	// baseURL, apiKey and client serve Stream, which reads the server-sent
	// events itself (stream.go says why).
	baseURL, apiKey string
	client          *http.Client
}

var (
	_ Provider = (*openAI)(nil)
	_ Streamer = (*openAI)(nil)
)

// newOpenAI builds a client for an OpenAI-compatible endpoint, with the
// given client (ClientLean or ClientOpenAIGo; "" is lean). The SDK's
// retries are switched off (Understudy owns retries) and the SDK's own
// OPENAI_* environment defaults are not read: the service is built directly,
// with only what the configuration says.
func newOpenAI(name, baseURL, model, apiKey, clientKind string, maxConns int, settings Settings) *openAI {
	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	client := &http.Client{Transport: transport}
	p := &openAI{name: name, model: model, settings: settings, transport: transport,
		baseURL: strings.TrimSuffix(baseURL, "/"), apiKey: apiKey, client: client}
	if clientKind != ClientOpenAIGo {
		return p
	}
	opts := []option.RequestOption{
		option.WithBaseURL(baseURL),
		option.WithMaxRetries(0),
		// The per-attempt timeout comes from the context the chain passes;
		// it covers dialing, waiting for headers and reading the body.
		option.WithHTTPClient(client),
	}
	if apiKey != "" {
		opts = append(opts, option.WithAPIKey(apiKey))
	}
	svc := openai.NewChatCompletionService(opts...)
	p.svc = &svc
	return p
}

// Close drops the idle connections of the provider's pool.
func (p *openAI) Close() error {
	p.transport.CloseIdleConnections()
	return nil
}

func (p *openAI) Name() string  { return p.name }
func (p *openAI) Model() string { return p.model }

func (p *openAI) Complete(ctx context.Context, req *Request) (*Response, error) {
	req = p.settings.Apply(req)
	if p.svc == nil {
		return p.completeLean(ctx, req)
	}
	params := openai.ChatCompletionNewParams{Model: p.model}
	for _, m := range req.Messages {
		switch m.Role {
		case chat.RoleSystem:
			params.Messages = append(params.Messages, openai.SystemMessage(m.Content))
		case chat.RoleAssistant:
			params.Messages = append(params.Messages, openai.AssistantMessage(m.Content))
		default:
			params.Messages = append(params.Messages, openai.UserMessage(m.Content))
		}
	}
	if req.MaxTokens > 0 {
		params.MaxTokens = openai.Int(int64(req.MaxTokens))
	}
	if req.Temperature != nil {
		params.Temperature = openai.Float(*req.Temperature)
	}
	var raw *http.Response
	out, err := p.svc.New(ctx, params, option.WithResponseInto(&raw))
	if err != nil {
		var apiErr *openai.Error
		if errors.As(err, &apiErr) {
			var h http.Header
			if apiErr.Response != nil {
				h = apiErr.Response.Header
			}
			return nil, ClassifyStatus(apiErr.StatusCode, h, time.Now(), err)
		}
		// An error status whose body the SDK cannot read as an OpenAI error
		// (some compatible servers send {"error":"text"}) is still
		// classified by its status: a 429 must not count as a failure.
		if raw != nil && raw.StatusCode >= 400 && ctx.Err() == nil {
			return nil, ClassifyStatus(raw.StatusCode, raw.Header, time.Now(), err)
		}
		// A success status with a body that is not JSON (or empty) is
		// malformed.
		var syntaxErr *json.SyntaxError
		var typeErr *json.UnmarshalTypeError
		if raw != nil && ctx.Err() == nil && (errors.As(err, &syntaxErr) || errors.As(err, &typeErr) || errors.Is(err, io.EOF)) {
			return nil, &Error{Outcome: chat.OutcomeError, StatusCode: raw.StatusCode, Err: fmt.Errorf("%w: %w", ErrMalformed, err)}
		}
		return nil, ClassifyTransport(ctx, err)
	}
	status := http.StatusOK
	if raw != nil {
		status = raw.StatusCode
	}
	if len(out.Choices) == 0 {
		return nil, &Error{Outcome: chat.OutcomeError, StatusCode: status, Err: fmt.Errorf("%w: no choices", ErrMalformed)}
	}
	model := out.Model
	if model == "" {
		model = p.model
	}
	return &Response{
		Content:    out.Choices[0].Message.Content,
		Model:      model,
		Usage:      chat.Usage{PromptTokens: out.Usage.PromptTokens, CompletionTokens: out.Usage.CompletionTokens},
		StatusCode: status,
	}, nil
}
