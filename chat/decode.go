package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ErrInvalid marks a request that can never be served: retrying it is
// pointless, so it is answered with invalid_request and dead-lettered.
var ErrInvalid = errors.New("invalid request")

// DecodeLimits bounds what DecodeRequest accepts.
type DecodeLimits struct {
	// MaxBytes is the largest payload accepted; 0 means no limit.
	MaxBytes int
	// MaxMetadataBytes is the largest metadata accepted (it is echoed in
	// the reply, which must fit in one NATS message); 0 means no limit.
	MaxMetadataBytes int
}

// DecodeRequest parses and validates a request that arrived on a subject
// whose last token is subjectConv. It always returns the request as far as
// it could be read (so that a readable id can be echoed in the failed
// reply), and an error wrapping ErrInvalid when the request cannot be served.
// On success ConversationID is set to subjectConv.
func DecodeRequest(data []byte, subjectConv string, lim DecodeLimits) (Request, error) {
	var req Request
	if lim.MaxBytes > 0 && len(data) > lim.MaxBytes {
		// Still try to read the id so the failed reply can carry it.
		req.ID = RequestID(data)
		return req, fmt.Errorf("%w: payload of %d bytes is over the limit of %d (worker.max_request_bytes)", ErrInvalid, len(data), lim.MaxBytes)
	}
	if !utf8.Valid(data) {
		return req, fmt.Errorf("%w: payload is not valid UTF-8", ErrInvalid)
	}
	// The common case, one JSON value and nothing after it, decodes without
	// a json.Decoder's copy of the payload; anything else is decoded again
	// the slow way below, which explains what is wrong with it.
	trailing := false
	if err := json.Unmarshal(data, &req); err != nil {
		req = Request{}
		dec := json.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(&req); err != nil {
			req = Request{ID: RequestID(data)}
			return req, fmt.Errorf("%w: body is not a JSON request: %v", ErrInvalid, err)
		}
		trailing = len(bytes.TrimSpace(data[dec.InputOffset():])) > 0
	}
	// An unusable id is never echoed, whatever else is wrong.
	if err := checkID(req.ID); err != nil {
		req.ID = ""
		return req, err
	}
	if n := len(req.Metadata); lim.MaxMetadataBytes > 0 && n > lim.MaxMetadataBytes {
		req.Metadata = nil // never echoed
		return req, fmt.Errorf("%w: metadata of %d bytes is over the limit of %d (worker.max_metadata_bytes)", ErrInvalid, n, lim.MaxMetadataBytes)
	}
	if trailing {
		return req, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	if !ValidConversationID(subjectConv) {
		return req, fmt.Errorf("%w: subject token %s is not a conversation id (1-%d characters of [A-Za-z0-9_-])", ErrInvalid, quoteShort(subjectConv), MaxIDLen)
	}
	if req.ID == "" {
		return req, fmt.Errorf("%w: id is missing", ErrInvalid)
	}
	if req.ConversationID != "" && req.ConversationID != subjectConv {
		return req, fmt.Errorf("%w: conversation_id %s differs from the subject's %q", ErrInvalid, quoteShort(req.ConversationID), subjectConv)
	}
	req.ConversationID = subjectConv
	if len(req.Messages) == 0 {
		return req, fmt.Errorf("%w: messages is empty", ErrInvalid)
	}
	for i, m := range req.Messages {
		switch m.Role {
		case RoleSystem, RoleUser, RoleAssistant:
		default:
			return req, fmt.Errorf("%w: messages[%d].role %s is not system, user or assistant", ErrInvalid, i, quoteShort(m.Role))
		}
	}
	if req.MaxTokens < 0 {
		return req, fmt.Errorf("%w: max_tokens is negative", ErrInvalid)
	}
	if t := req.Temperature; t != nil && (*t < 0 || *t > 2) {
		return req, fmt.Errorf("%w: temperature %v is outside [0, 2]", ErrInvalid, *t)
	}
	return req, nil
}

// RequestID is the id DecodeRequest reads from a request, even one that is
// invalid for another reason: "" when the payload is not UTF-8 JSON with a
// usable id (a string of 1-128 characters that can travel as a header).
func RequestID(data []byte) string {
	if !utf8.Valid(data) {
		return ""
	}
	var probe struct {
		ID json.RawMessage `json:"id"`
	}
	// The first JSON value, as DecodeRequest reads it: what trails it
	// makes the request invalid, not its id unreadable.
	if json.NewDecoder(bytes.NewReader(data)).Decode(&probe) != nil {
		return ""
	}
	var id string
	if json.Unmarshal(probe.ID, &id) != nil || checkID(id) != nil {
		return ""
	}
	return id
}

// checkID refuses ids that may not be echoed: over MaxIDLen characters, or
// not safe as a header value. The id travels as the Nats-Msg-Id header, whose
// value NATS trims and whose line breaks it rewrites, so two different ids
// could otherwise share one reply. "" (missing) passes: it is reported later.
func checkID(id string) error {
	if n := utf8.RuneCountInString(id); n > MaxIDLen {
		return fmt.Errorf("%w: id is %d characters long, the limit is %d", ErrInvalid, n, MaxIDLen)
	}
	if strings.TrimSpace(id) != id {
		return fmt.Errorf("%w: id has leading or trailing white space", ErrInvalid)
	}
	for _, r := range id {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: id has control characters", ErrInvalid)
		}
	}
	return nil
}

// EffectiveDeadline is the request's deadline, or published+ttl when it
// has none.
func (r *Request) EffectiveDeadline(published time.Time, ttl time.Duration) time.Time {
	if !r.Deadline.IsZero() {
		return r.Deadline
	}
	return published.Add(ttl)
}

// maxQuoted bounds how much of a user-supplied value an error quotes: the
// error becomes a dead letter's header, which must stay small.
const maxQuoted = 64

// quoteShort quotes s, cut to maxQuoted characters.
func quoteShort(s string) string {
	if utf8.RuneCountInString(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	return strconv.Quote(string([]rune(s)[:maxQuoted])) + "..."
}
