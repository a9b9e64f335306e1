package providers

import (
	"context"
	"time"

	"github.com/understudy-ai/understudy/chat"
)

// Provider makes chat completion calls to one configured model.
type Provider interface {
	// Name is the provider's name in the chain (deepseek, llama, ...).
	Name() string
	// Model is the model the provider is asked for.
	Model() string
	// Complete makes one call, bounded by ctx. A failure is an *Error.
	Complete(ctx context.Context, req *Request) (*Response, error)
}

// Streamer is a Provider that can stream its answer.
type Streamer interface {
	// Stream makes one streamed call: onChunk gets each piece of the answer
	// as it arrives, and the Response the whole of it. ctx bounds the whole
	// call (the request's deadline); firstChunk bounds the wait for the
	// first piece, and the provider's stream idle timeout every gap after
	// it. A failure is an *Error: after the first piece, outcome cut with
	// the number of pieces delivered.
	Stream(ctx context.Context, req *Request, firstChunk time.Duration, onChunk func(delta string)) (*Response, error)
}

// Request is what a provider is asked.
type Request struct {
	Messages []chat.Message
	// MaxTokens 0 leaves the provider's default.
	MaxTokens int
	// Temperature nil leaves the provider's default.
	Temperature *float64
}

// Response is a provider's answer.
type Response struct {
	Content string
	// Model is the model that answered, as the provider reports it.
	Model      string
	Usage      chat.Usage
	StatusCode int
}
