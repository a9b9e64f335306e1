package chat

// KindStream is the suffix of the stream keeping streamed chunks:
// CHAT_STREAM under the default prefix.
const KindStream = "STREAM"

// StreamChunks is the name of the chunks' stream under the default prefix.
const StreamChunks = "CHAT_STREAM"

// Chunk is one message of a request's stream on <prefix>.stream.<conv>:
// a piece of the answer (Delta), a reset (the text so far is void: another
// provider, or another delivery, answers anew) or the end (Done). Seq counts
// a request's messages from 1 across resets and redeliveries: a client
// resumes after the last Seq it saw.
type Chunk struct {
	ID  string `json:"id"`
	Seq uint64 `json:"seq"`
	// Delta is the next piece of the answer.
	Delta string `json:"delta,omitempty"`
	// Provider streaming this chunk; on a reset, the provider that answers
	// next (on a redelivery too: the new attempt has begun when it is sent).
	Provider string `json:"provider,omitempty"`
	// Attempt is the attempt's number within the request (from 1, across
	// deliveries); Delivery the request's delivery it was made on.
	Attempt  int    `json:"attempt,omitempty"`
	Delivery uint64 `json:"delivery,omitempty"`
	// Reset voids the text of every earlier chunk of the request; Reason
	// says why (a provider's outcome, or "redelivered").
	Reset  bool   `json:"reset,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Failed names, on a reset, the provider whose answer is void (empty
	// on a redelivery).
	Failed string `json:"failed,omitempty"`
	// Done marks the last message of the request's stream: the answer is
	// whole (and stored in the replies).
	Done bool `json:"done,omitempty"`
	// Error is, on a last message, the code of a request given up on (its
	// failed reply is stored); empty when the answer is whole.
	Error string `json:"error,omitempty"`
}

// Chunk is the subject a conversation's streamed chunks are published on.
func (s Subjects) Chunk(conv string) string { return s.prefix + ".stream." + conv }

// AllChunks is the filter of every conversation's streamed chunks.
func (s Subjects) AllChunks() string { return s.prefix + ".stream.*" }
