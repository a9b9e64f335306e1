package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// ErrInvalid marks a request that can never be served: retrying it is
// pointless, so it is answered with invalid_request and dead-lettered.
var ErrInvalid = errors.New("invalid request")

// DecodeLimits bounds what DecodeRequest accepts.
type DecodeLimits struct {
	// MaxBytes is the largest payload accepted; 0 means no limit.
	MaxBytes int
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
		req.ID = peekID(data)
		return req, fmt.Errorf("%w: payload of %d bytes is over the limit of %d (worker.max_request_bytes)", ErrInvalid, len(data), lim.MaxBytes)
	}
	if !utf8.Valid(data) {
		return req, fmt.Errorf("%w: payload is not valid UTF-8", ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&req); err != nil {
		req = Request{ID: peekID(data)}
		return req, fmt.Errorf("%w: body is not a JSON request: %v", ErrInvalid, err)
	}
	// An id that is too long is never echoed, whatever else is wrong.
	if n := utf8.RuneCountInString(req.ID); n > MaxIDLen {
		req.ID = ""
		return req, fmt.Errorf("%w: id is %d characters long, the limit is %d", ErrInvalid, n, MaxIDLen)
	}
	if len(bytes.TrimSpace(data[dec.InputOffset():])) > 0 {
		return req, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	if !ValidConversationID(subjectConv) {
		return req, fmt.Errorf("%w: subject token %q is not a conversation id (1-%d characters of [A-Za-z0-9_-])", ErrInvalid, subjectConv, MaxIDLen)
	}
	if req.ID == "" {
		return req, fmt.Errorf("%w: id is missing", ErrInvalid)
	}
	if req.ConversationID != "" && req.ConversationID != subjectConv {
		return req, fmt.Errorf("%w: conversation_id %q differs from the subject's %q", ErrInvalid, req.ConversationID, subjectConv)
	}
	req.ConversationID = subjectConv
	if len(req.Messages) == 0 {
		return req, fmt.Errorf("%w: messages is empty", ErrInvalid)
	}
	for i, m := range req.Messages {
		switch m.Role {
		case RoleSystem, RoleUser, RoleAssistant:
		default:
			return req, fmt.Errorf("%w: messages[%d].role %q is not system, user or assistant", ErrInvalid, i, m.Role)
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

// peekID reads just the id of a payload that failed to decode as a whole,
// returning "" when even that is not possible or the id is not acceptable.
func peekID(data []byte) string {
	var probe struct {
		ID json.RawMessage `json:"id"`
	}
	if json.Unmarshal(data, &probe) != nil {
		return ""
	}
	var id string
	if json.Unmarshal(probe.ID, &id) != nil || utf8.RuneCountInString(id) > MaxIDLen {
		return ""
	}
	return id
}

// EffectiveDeadline is the request's deadline, or published+ttl when it
// has none.
func (r *Request) EffectiveDeadline(published time.Time, ttl time.Duration) time.Time {
	if !r.Deadline.IsZero() {
		return r.Deadline
	}
	return published.Add(ttl)
}
