package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
)

// Delivery is one delivery of a request from the workers consumer.
type Delivery struct {
	msg jetstream.Msg
	// Subject the request was published on.
	Subject string
	// Data is the request's raw bytes.
	Data []byte
	// Header is the request's headers (nil when none).
	Header nats.Header
	// StreamSeq is the request's sequence in CHAT_REQUESTS.
	StreamSeq uint64
	// NumDelivered is 1 on the first delivery.
	NumDelivered uint64
	// Published is when the request was stored.
	Published time.Time
}

// Ack acknowledges the request: it will not be delivered again.
func (d *Delivery) Ack() error { return d.msg.Ack() }

// NakWithDelay puts the request back, to be delivered again after delay.
func (d *Delivery) NakWithDelay(delay time.Duration) error { return d.msg.NakWithDelay(delay) }

// InProgress resets the ack timer while a long call is under way.
func (d *Delivery) InProgress() error { return d.msg.InProgress() }

// Term stops redelivery for good, with a reason the server records.
func (d *Delivery) Term(reason string) error { return d.msg.TermWithReason(reason) }

// ErrNotReady is returned by Fetch before Setup.
var ErrNotReady = errors.New("broker: Setup has not run")

// Fetch pulls up to max deliveries, waiting up to wait for the first ones.
// Deliveries are sent on the returned channel as they arrive; it is closed
// when the pull is over. Errors end the pull and are returned by the err
// function once the channel is closed.
func (b *Broker) Fetch(max int, wait time.Duration) (<-chan *Delivery, func() error, error) {
	if b.consumer == nil {
		return nil, nil, ErrNotReady
	}
	batch, err := b.consumer.Fetch(max, jetstream.FetchMaxWait(wait))
	if err != nil {
		return nil, nil, fmt.Errorf("fetch: %w", err)
	}
	out := make(chan *Delivery)
	go func() {
		defer close(out)
		for m := range batch.Messages() {
			d, err := newDelivery(m)
			if err != nil {
				b.log.Error().Err(err).Str("subject", m.Subject()).Msg("delivery without JetStream metadata; leaving it to redelivery")
				continue
			}
			out <- d
		}
	}()
	return out, batch.Error, nil
}

func newDelivery(m jetstream.Msg) (*Delivery, error) {
	md, err := m.Metadata()
	if err != nil {
		return nil, err
	}
	return &Delivery{
		msg:          m,
		Subject:      m.Subject(),
		Data:         m.Data(),
		Header:       m.Headers(),
		StreamSeq:    md.Sequence.Stream,
		NumDelivered: md.NumDelivered,
		Published:    md.Timestamp,
	}, nil
}

// Request reads a stored request by its sequence (for requests whose
// deliveries ran out, reported by the MAX_DELIVERIES advisory). Any replica
// may answer; a "not found" is confirmed with the stream's leader (a replica
// catching up lacks what the leader has), so jetstream.ErrMsgNotFound means
// the request is truly gone (expired or deleted).
func (b *Broker) Request(ctx context.Context, seq uint64) (*Stored, error) {
	m, err := b.requests.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		m, err = b.leaderGet(ctx, b.topo.Subjects.Stream(chat.KindRequests), seq)
	}
	if err != nil {
		return nil, fmt.Errorf("read request %d: %w", seq, err)
	}
	return &Stored{Subject: m.Subject, Data: m.Data, Header: m.Header, Seq: m.Sequence, Time: m.Time}, nil
}

// OnMaxDeliveries calls fn for each request of the workers consumer whose
// deliveries ran out (the server's MAX_DELIVERIES advisory). The
// subscription is a queue group, so one worker process of the pool hears each
// advisory. Advisories are not persisted: one sent while no worker is
// connected is lost, and the request then stays in CHAT_REQUESTS unanswered
// (replay reports it as such).
func (b *Broker) OnMaxDeliveries(fn func(streamSeq, deliveries uint64)) (stop func(), err error) {
	subj := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + b.topo.Subjects.Stream(chat.KindRequests) + "." + chat.ConsumerWorkers
	sub, err := b.nc.QueueSubscribe(subj, "understudy-advisories", func(m *nats.Msg) {
		var adv struct {
			StreamSeq  uint64 `json:"stream_seq"`
			Deliveries uint64 `json:"deliveries"`
		}
		if err := json.Unmarshal(m.Data, &adv); err != nil || adv.StreamSeq == 0 {
			b.log.Warn().Err(err).Str("subject", m.Subject).Msg("unreadable MAX_DELIVERIES advisory")
			return
		}
		fn(adv.StreamSeq, adv.Deliveries)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", subj, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}
