package worker

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// AttemptDeliveries bounds a reply's attempts: those of the last
// AttemptDeliveries deliveries of the request, this one included.
const AttemptDeliveries = 5

// eventScanner reads stored events; *broker.Broker is one.
type eventScanner interface {
	Scan(ctx context.Context, stream, filter string, since, until time.Time, fn func(*broker.Stored) error) error
}

// attemptsSoFar returns the attempts of every delivery of the request (the
// last AttemptDeliveries), each with its delivery number: the earlier
// deliveries' from their attempt events, this one's from last. When the
// events cannot be read, this delivery's alone.
func (d *delivery) attemptsSoFar(ctx context.Context, last []chat.Attempt) []chat.Attempt {
	n := d.m.NumDelivered
	out := make([]chat.Attempt, 0, len(last))
	for _, a := range last {
		a.Delivery = n
		out = append(out, a)
	}
	s, ok := d.p.b.(eventScanner)
	if n <= 1 || !ok || d.req.ID == "" {
		return out
	}
	first := uint64(1)
	if n > AttemptDeliveries {
		first = n - AttemptDeliveries + 1
	}
	var earlier []chat.Attempt
	rctx, cancel := d.p.writeCtx(ctx)
	defer cancel()
	subj := d.p.subj
	err := s.Scan(rctx, subj.Stream(chat.KindEvents), subj.Event(chat.EventAttempt, d.req.ConversationID), d.m.Published, time.Time{},
		func(m *broker.Stored) error {
			var ev chat.Event
			if json.Unmarshal(m.Data, &ev) != nil || ev.RequestID != d.req.ID || ev.Delivery < first || ev.Delivery >= n {
				return nil
			}
			earlier = append(earlier, chat.Attempt{Provider: ev.Provider, Outcome: ev.Outcome, StatusCode: ev.StatusCode,
				LatencyMS: ev.LatencyMS, Delivery: ev.Delivery})
			return nil
		})
	if err != nil {
		d.log.Warn().Err(err).Msg("cannot read the earlier deliveries' attempts; the reply lists this delivery's")
		return out
	}
	slices.SortStableFunc(earlier, func(x, y chat.Attempt) int { return int(x.Delivery) - int(y.Delivery) })
	return append(earlier, out...)
}
