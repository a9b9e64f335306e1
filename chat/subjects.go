package chat

import (
	"fmt"
	"strings"
)

// Stream names under the default prefix "chat" (SPEC §2). Under another
// prefix the streams are named after it (prefix "shadow": SHADOW_REQUESTS
// ...), so that a second worker pool, for a redrive say, has streams of its
// own; Subjects.Stream gives the name for any prefix.
const (
	StreamRequests = "CHAT_REQUESTS"
	StreamReplies  = "CHAT_REPLIES"
	StreamEvents   = "CHAT_EVENTS"
	StreamDead     = "CHAT_DEAD"
	// ConsumerWorkers is the durable pull consumer every worker replica shares.
	ConsumerWorkers = "workers"
)

// Stream kinds, the suffix of a stream's name.
const (
	KindRequests = "REQUESTS"
	KindReplies  = "REPLIES"
	KindEvents   = "EVENTS"
	KindDead     = "DEAD"
	KindClaims   = "CLAIMS"
)

// InvalidToken is the conversation token used for dead letters whose
// subject token is not a valid conversation id.
const InvalidToken = "_invalid"

// MaxIDLen is the longest request or conversation id accepted.
const MaxIDLen = 128

// Subjects builds the subjects of one deployment from its prefix
// (default "chat"). The zero value is not usable; use NewSubjects.
type Subjects struct {
	prefix string
}

// NewSubjects returns the subjects under prefix. The prefix must be one or
// more NATS tokens without wildcards.
func NewSubjects(prefix string) (Subjects, error) {
	if err := ValidatePrefix(prefix); err != nil {
		return Subjects{}, err
	}
	return Subjects{prefix: prefix}, nil
}

// ValidatePrefix reports whether prefix can start every Understudy subject.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return fmt.Errorf("prefix is empty")
	}
	for tok := range strings.SplitSeq(prefix, ".") {
		if !ValidConversationID(tok) {
			return fmt.Errorf("prefix %q must be dot-separated tokens of [A-Za-z0-9_-]", prefix)
		}
	}
	return nil
}

// Stream is the name of the stream (or key-value bucket) of kind under this
// prefix: "chat" and KindRequests give CHAT_REQUESTS.
func (s Subjects) Stream(kind string) string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(s.prefix)) + "_" + kind
}

// Prefix returns the prefix these subjects are built on.
func (s Subjects) Prefix() string { return s.prefix }

// Request is the subject a chat API publishes a conversation's requests on.
func (s Subjects) Request(conv string) string { return s.prefix + ".requests." + conv }

// Reply is the subject a conversation's replies are published on.
func (s Subjects) Reply(conv string) string { return s.prefix + ".replies." + conv }

// Dead is the subject of a conversation's dead letters.
func (s Subjects) Dead(conv string) string { return s.prefix + ".dead." + conv }

// Status is the subject of live, non-persisted progress for a conversation.
func (s Subjects) Status(conv string) string { return s.prefix + ".status." + conv }

// Event is the subject of one event kind about key (a conversation id or a
// provider name).
func (s Subjects) Event(kind EventType, key string) string {
	return s.prefix + ".events." + string(kind) + "." + key
}

// AllRequests, AllReplies, AllEvents and AllDead are the streams' filters.
func (s Subjects) AllRequests() string { return s.prefix + ".requests.*" }

// AllReplies is the filter of every conversation's replies.
func (s Subjects) AllReplies() string { return s.prefix + ".replies.*" }

// AllEvents is the filter of every event.
func (s Subjects) AllEvents() string { return s.prefix + ".events.>" }

// AllDead is the filter of every dead letter.
func (s Subjects) AllDead() string { return s.prefix + ".dead.*" }

// ConversationOf returns the last token of a request subject: the
// conversation id the subject names, not yet validated.
func (s Subjects) ConversationOf(subject string) string {
	i := strings.LastIndexByte(subject, '.')
	return subject[i+1:]
}

// ValidConversationID reports whether id can be a conversation id:
// 1–128 characters of [A-Za-z0-9_-].
func ValidConversationID(id string) bool {
	if len(id) == 0 || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
