package chat

import "time"

// EventVersion is the schema version of Event; it changes only when a field
// changes meaning or disappears (new fields may be added without a bump).
const EventVersion = 1

// EventType names what an event records; it is also the token after
// "<prefix>.events." in the event's subject.
type EventType string

// Event types on the CHAT_EVENTS stream.
const (
	// EventAttempt: one provider attempt (subject key: the conversation).
	EventAttempt EventType = "attempt"
	// EventRetry: the whole chain failed and the request was put back on
	// the queue with a delay (subject key: the conversation).
	EventRetry EventType = "retry"
	// EventDead: a request was given up on and dead-lettered (subject key:
	// the conversation, or _invalid).
	EventDead EventType = "dead"
	// EventBreaker: a provider's breaker changed state (subject key: the
	// provider).
	EventBreaker EventType = "breaker"
)

// Event is one line of the incident trail on CHAT_EVENTS. Fields that do not
// apply to a type are omitted.
type Event struct {
	V    int       `json:"v"`
	Type EventType `json:"type"`
	At   time.Time `json:"at"`
	// Worker is the id of the worker process that recorded the event.
	Worker string `json:"worker"`

	RequestID      string `json:"request_id,omitempty"`
	ConversationID string `json:"conversation_id,omitempty"`
	// Delivery is the request's delivery count when the event happened.
	Delivery uint64 `json:"delivery,omitempty"`
	// StreamSeq is the request's sequence in CHAT_REQUESTS.
	StreamSeq uint64 `json:"stream_seq,omitempty"`

	// Attempt events.
	Provider   string  `json:"provider,omitempty"`
	Outcome    Outcome `json:"outcome,omitempty"`
	StatusCode int     `json:"status_code,omitempty"`
	LatencyMS  int64   `json:"latency_ms,omitempty"`

	// Retry events: how long the request was put back for.
	DelayMS int64 `json:"delay_ms,omitempty"`

	// Dead events: the error code and reason.
	Code   string `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`

	// Breaker events. Peer is true when the change was imposed by a peer
	// replica's shared verdict rather than reached by this worker's own
	// calls.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	Peer bool   `json:"peer,omitempty"`
}
