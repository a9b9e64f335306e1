package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
)

// PublishReply stores reply on its conversation's reply subject, deduplicated
// by msgID (the request id, or invalid-<seq>). It reports whether the server
// already had a reply with that id.
func (b *Broker) PublishReply(ctx context.Context, conv, msgID string, reply *chat.Reply) (duplicate bool, err error) {
	data, err := chat.Marshal(reply)
	if err != nil {
		return false, fmt.Errorf("encode reply: %w", err)
	}
	msg := &nats.Msg{Subject: b.topo.Subjects.Reply(conv), Data: data, Header: nats.Header{}}
	msg.Header.Set(chat.HeaderMsgID, msgID)
	ack, err := b.js.PublishMsg(ctx, msg)
	if err != nil {
		return false, publishError("publish reply", err)
	}
	return ack.Duplicate, nil
}

// ErrUnstorable marks a publish error that no retry can fix: the message is
// over the server's max_payload, or the stream refuses its size or shape.
// The caller must give up on what it was storing, not put it back.
var ErrUnstorable = errors.New("message cannot be stored")

// publishError wraps a publish error, marking the permanent ones with
// ErrUnstorable.
func publishError(what string, err error) error {
	if permanent(err) {
		return fmt.Errorf("%s: %w: %w", what, ErrUnstorable, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func permanent(err error) bool {
	for _, p := range []error{nats.ErrMaxPayload, nats.ErrBadSubject, nats.ErrInvalidMsg, nats.ErrHeadersNotSupported} {
		if errors.Is(err, p) {
			return true
		}
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}

// DeadLetter describes why a request was given up on.
type DeadLetter struct {
	// Conv is the subject token: a valid conversation id or chat.InvalidToken.
	Conv       string
	Code       string
	Reason     string
	RequestID  string
	Deliveries uint64
	StreamSeq  uint64
	// Subject the request was published on.
	Subject string
	// Header is the request's own headers (nil: none): kept on the dead
	// letter under HeaderOrigPrefix, bounded by maxOrigHeaders.
	Header nats.Header
}

// PublishDead copies the original request bytes to the dead-letter stream
// with the reason in headers. It is deduplicated by the request's stream
// sequence, so a retried dead-lettering stores one copy.
//
// The copy is the original bytes unchanged, except for a request so large
// that bytes and headers would not fit in one NATS message: it is cut to fit
// and the header Understudy-Truncated gives its original size. The
// publisher's headers are kept, prefixed (see keepOrigHeaders).
func (b *Broker) PublishDead(ctx context.Context, data []byte, d DeadLetter) error {
	msg := &nats.Msg{Subject: b.topo.Subjects.Dead(d.Conv), Data: data, Header: nats.Header{}}
	keepOrigHeaders(msg.Header, d.Header)
	if room := int(b.nc.MaxPayload()) - deadHeaderRoom; len(data) > room {
		msg.Data = data[:max(room, 0)]
		msg.Header.Set(chat.HeaderTruncated, strconv.Itoa(len(data)))
	}
	d.Reason = cut(d.Reason, maxReason)
	d.Subject = cut(d.Subject, maxSubject)
	msg.Header.Set(chat.HeaderMsgID, "dead-"+strconv.FormatUint(d.StreamSeq, 10))
	msg.Header.Set(chat.HeaderCode, d.Code)
	msg.Header.Set(chat.HeaderReason, d.Reason)
	if d.RequestID != "" {
		msg.Header.Set(chat.HeaderRequestID, d.RequestID)
	}
	msg.Header.Set(chat.HeaderDeliveries, strconv.FormatUint(d.Deliveries, 10))
	msg.Header.Set(chat.HeaderStreamSeq, strconv.FormatUint(d.StreamSeq, 10))
	msg.Header.Set(chat.HeaderConvSubject, d.Subject)
	if _, err := b.js.PublishMsg(ctx, msg); err != nil {
		return publishError("publish dead letter", err)
	}
	return nil
}

// deadHeaderRoom is what a dead letter's headers may take: Understudy's own
// and the publisher's; maxReason bounds the reason header.
const (
	deadHeaderRoom = 4096 + maxOrigHeaders + maxDropped
	maxReason      = 1024
	maxSubject     = 512
)

// cut shortens s to at most n bytes without splitting a character.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}

// PublishEvent records ev on CHAT_EVENTS without waiting for the server's
// acknowledgement (events must never slow a request down); a failure is
// logged. key is the conversation or provider the subject names.
func (b *Broker) PublishEvent(ev *chat.Event, key string) {
	ev.V = chat.EventVersion
	data, err := chat.Marshal(ev)
	if err != nil {
		b.log.Error().Err(err).Msg("encode event")
		return
	}
	// Failures after the publish are logged by the handler set in Connect.
	if _, err := b.js.PublishAsync(b.topo.Subjects.Event(ev.Type, key), data); err != nil {
		b.log.Warn().Err(err).Str("event", string(ev.Type)).Msg("publish event")
	}
}

// FlushEvents waits until every event published so far is acknowledged.
func (b *Broker) FlushEvents(ctx context.Context) {
	select {
	case <-b.js.PublishAsyncComplete():
	case <-ctx.Done():
	}
}

// PublishStatus sends live, non-persisted progress on the conversation's
// status subject (for typing indicators). Best effort.
func (b *Broker) PublishStatus(conv string, v any) {
	data, err := chat.Marshal(v)
	if err != nil {
		return
	}
	_ = b.nc.Publish(b.topo.Subjects.Status(conv), data)
}

// PublishRaw stores data with its headers on subject and waits for the
// server's acknowledgement (used by redrive).
func (b *Broker) PublishRaw(ctx context.Context, subject string, data []byte, hdr nats.Header) error {
	if _, err := b.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: hdr}); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}
