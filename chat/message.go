package chat

import (
	"bytes"
	"encoding/json"
	"sync"
	"time"
)

// Roles a message may have.
const (
	RoleSystem    = "system"
	RoleUser      = "user"
	RoleAssistant = "assistant"
)

// Message is one turn of a conversation.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Request is what the chat API publishes on <prefix>.requests.<conv>.
type Request struct {
	// ID is required, 1–128 characters; one final reply is made per ID.
	ID string `json:"id"`
	// ConversationID is optional; when set it must equal the subject's token.
	ConversationID string `json:"conversation_id,omitempty"`
	// Messages is required and non-empty.
	Messages []Message `json:"messages"`
	// MaxTokens is optional; 0 leaves the provider's default.
	MaxTokens int `json:"max_tokens,omitempty"`
	// Temperature is optional; nil leaves the provider's default.
	Temperature *float64 `json:"temperature,omitempty"`
	// Deadline is optional; the zero value means publish time + worker.request_ttl.
	Deadline time.Time `json:"deadline,omitzero"`
	// Metadata is echoed back in the reply, untouched.
	Metadata json.RawMessage `json:"metadata,omitempty"`
	// Stream asks for the answer chunk by chunk on <prefix>.stream.<conv>
	// as well (nil: worker.stream_default).
	Stream *bool `json:"stream,omitempty"`
}

// Reply statuses.
const (
	StatusOK     = "ok"
	StatusFailed = "failed"
)

// Error codes of a failed reply.
const (
	CodeInvalidRequest     = "invalid_request"
	CodeDeadlineExceeded   = "deadline_exceeded"
	CodeProvidersExhausted = "providers_exhausted"
	// CodeReplyTooLarge: the answer (with what the reply echoes) cannot be
	// stored as one NATS message; the provider is not asked again.
	CodeReplyTooLarge = "reply_too_large"
)

// Outcome is how one provider attempt ended.
type Outcome string

// Attempt outcomes (SPEC §3).
const (
	OutcomeOK          Outcome = "ok"
	OutcomeError       Outcome = "error"
	OutcomeTimeout     Outcome = "timeout"
	OutcomeRateLimited Outcome = "rate_limited"
	OutcomeRejected    Outcome = "rejected"
	OutcomeBreakerOpen Outcome = "breaker_open"
	// OutcomeCut: a streamed answer failed after its first chunk (the
	// connection cut, an error event, a stall); Attempt.Chunks says how
	// many chunks had come.
	OutcomeCut Outcome = "cut"
)

// Attempt is one rung of the provider ladder as the reply reports it.
type Attempt struct {
	Provider   string  `json:"provider"`
	Outcome    Outcome `json:"outcome"`
	StatusCode int     `json:"status_code,omitempty"`
	LatencyMS  int64   `json:"latency_ms"`
	// Delivery is the delivery of the request the attempt was made on
	// (1 for the first).
	Delivery uint64 `json:"delivery,omitempty"`
	// Chunks is how many chunks a streamed attempt had published.
	Chunks int `json:"chunks,omitempty"`
	// FirstChunkMS is the time from a streamed call to its first chunk.
	FirstChunkMS int64 `json:"first_chunk_ms,omitempty"`
}

// Called reports whether the attempt reached its provider: a skip
// (breaker_open, or rate_limited while cooling down) carries no status code.
func (a Attempt) Called() bool {
	return a.Outcome != OutcomeBreakerOpen && (a.Outcome != OutcomeRateLimited || a.StatusCode != 0)
}

// Folded reports whether an ok reply carries the attempt in place of its
// attempt event: the answering attempt, and skips (no call, no cost).
// Attempts that called a provider and failed have their event written at
// once (a crash must not lose a call's record).
func (a Attempt) Folded() bool { return a.Outcome == OutcomeOK || !a.Called() }

// Usage is the token usage the serving provider reported.
type Usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

// ErrorBody explains a failed reply.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Reply is published once per request id on <prefix>.replies.<conv>.
type Reply struct {
	ID             string          `json:"id"`
	ConversationID string          `json:"conversation_id"`
	Status         string          `json:"status"`
	Content        string          `json:"content,omitempty"`
	Provider       string          `json:"provider,omitempty"`
	Model          string          `json:"model,omitempty"`
	Degraded       bool            `json:"degraded"`
	Attempts       []Attempt       `json:"attempts"`
	Usage          *Usage          `json:"usage,omitempty"`
	Error          *ErrorBody      `json:"error,omitempty"`
	Deliveries     uint64          `json:"deliveries"`
	QueuedMS       int64           `json:"queued_ms"`
	LatencyMS      int64           `json:"latency_ms"`
	Metadata       json.RawMessage `json:"metadata,omitempty"`

	// FirstChunkMS is, for a streamed answer, the time from pick-up to the
	// first chunk published (of any attempt).
	FirstChunkMS int64 `json:"first_chunk_ms,omitempty"`
}

// Header names Understudy sets on the messages it publishes.
const (
	HeaderMsgID       = "Nats-Msg-Id"
	HeaderCode        = "Understudy-Code"
	HeaderReason      = "Understudy-Reason"
	HeaderRequestID   = "Understudy-Request-Id"
	HeaderDeliveries  = "Understudy-Deliveries"
	HeaderStreamSeq   = "Understudy-Stream-Seq"
	HeaderConvSubject = "Understudy-Subject"
	// HeaderTruncated is set on a dead letter whose request was too large to
	// copy whole: its original size in bytes.
	HeaderTruncated = "Understudy-Truncated"
)

// Marshal encodes a reply, an event or a status as the contract writes
// them: JSON without HTML escaping, so an echoed '<' stays one byte and not
// six ("\u003c").
//
// The encoder and its buffer are reused (a worker encodes a reply, an event
// and a status per request); the result is a copy the caller owns.
func Marshal(v any) ([]byte, error) {
	e := encoders.Get().(*encoder)
	defer e.put()
	if err := e.enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.Clone(bytes.TrimSuffix(e.buf.Bytes(), []byte("\n"))), nil
}

// encoder is a reusable JSON encoder without HTML escaping.
type encoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

// maxPooledBuf: a buffer grown past this (a huge reply) is not kept.
const maxPooledBuf = 64 << 10

var encoders = sync.Pool{New: func() any {
	e := &encoder{}
	e.enc = json.NewEncoder(&e.buf)
	e.enc.SetEscapeHTML(false)
	return e
}}

func (e *encoder) put() {
	if e.buf.Cap() > maxPooledBuf {
		return
	}
	e.buf.Reset()
	encoders.Put(e)
}
