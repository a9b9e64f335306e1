package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/understudy-ai/understudy/chat"
)

// Look-ups for clients (send) that hold no topology of their own: they name
// the subject scheme, as the configuration gives it.

// ReplyMark is the last sequence of subj's replies stream right now (0 when
// it is empty): a reply stored at or before it was stored before the mark
// was taken.
func (b *Broker) ReplyMark(ctx context.Context, subj chat.Subjects) (uint64, error) {
	st, err := b.js.Stream(ctx, subj.Stream(chat.KindReplies))
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", subj.Stream(chat.KindReplies), err)
	}
	return st.CachedInfo().State.LastSeq, nil
}

// StoredReply returns the last reply stored for request id (its
// Nats-Msg-Id) on conversation conv's reply subject, or nil when there is
// none. It reads the conversation's replies in batches (a conversation's
// replies are few: they live 24 h).
func (b *Broker) StoredReply(ctx context.Context, subj chat.Subjects, conv, id string) (*Stored, error) {
	var found *Stored
	err := b.Scan(ctx, subj.Stream(chat.KindReplies), subj.Reply(conv), time.Time{}, time.Time{}, func(m *Stored) error {
		if m.Header.Get(chat.HeaderMsgID) == id {
			found = m
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look for the reply to %q: %w", id, err)
	}
	return found, nil
}
