package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
)

// Stored is one message read back from a stream.
type Stored struct {
	Subject string
	Data    []byte
	Header  nats.Header
	Seq     uint64
	Time    time.Time
}

// ScanBatch is how many messages one pull of a scan asks for.
const ScanBatch = 512

// scanInactive is how long a scan's ordered consumer outlives its last pull.
const scanInactive = 5 * time.Second

// Scan calls fn, in stream order, for every message of stream whose subject
// matches filter and that was stored at or after since and before until (the
// zero until: up to the end of the stream when the scan started). It reads
// through an ordered consumer, holding one batch at a time, so a stream of any
// size is read in bounded memory. fn returning an error stops the scan.
func (b *Broker) Scan(ctx context.Context, stream, filter string, since, until time.Time, fn func(*Stored) error) error {
	st, err := b.js.Stream(ctx, stream) // fetches the stream's info
	if err != nil {
		return fmt.Errorf("scan %s: %w", stream, err)
	}
	info := st.CachedInfo()
	last := info.State.LastSeq
	if info.State.Msgs == 0 || (!info.State.LastTime.IsZero() && info.State.LastTime.Before(since)) {
		return nil
	}
	// The server removes the scan's consumer soon after the scan ends.
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, InactiveThreshold: scanInactive}
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	if !since.IsZero() {
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		t := since
		cfg.OptStartTime = &t
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("scan %s: %w", stream, err)
	}
	ci := cons.CachedInfo()
	if ci != nil && ci.NumPending == 0 {
		return nil
	}
	for {
		// NoWait: the batch ends as soon as what is stored has been sent,
		// so returning early never leaves a pull waiting on the server.
		batch, err := cons.FetchNoWait(ScanBatch)
		if err != nil {
			return fmt.Errorf("scan %s: %w", stream, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("scan %s: %w", stream, err)
			}
			if md.Sequence.Stream > last || (!until.IsZero() && !md.Timestamp.Before(until)) {
				return nil
			}
			if err := fn(&Stored{Subject: m.Subject(), Data: m.Data(), Header: m.Headers(), Seq: md.Sequence.Stream, Time: md.Timestamp}); err != nil {
				return err
			}
			if md.NumPending == 0 || md.Sequence.Stream == last {
				return nil
			}
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("scan %s: %w", stream, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if n == 0 {
			return nil // nothing more stored under the filter
		}
	}
}

// FindReply reports whether a reply to request id is stored on the
// conversation's reply subject since the given time. It is used only after
// a lost delivery, to close the gap between publishing a reply and
// recording it in the claims bucket, and its "no" sends the request to a
// provider again: so it reads from the replies stream's leader, message by
// message along the conversation's subject (a conversation's replies are
// few), never from a replica that may be catching up. While the stream has
// no leader it returns an error, never "no".
func (b *Broker) FindReply(ctx context.Context, conv, id string, since time.Time) (bool, error) {
	stream, subject := b.topo.Subjects.Stream(chat.KindReplies), b.topo.Subjects.Reply(conv)
	var seq uint64
	for {
		m, err := b.leaderNext(ctx, stream, subject, seq, since)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("look for the reply to %q: %w", id, err)
		}
		if m.Header.Get(chat.HeaderMsgID) == id {
			return true, nil
		}
		seq, since = m.Sequence+1, time.Time{}
	}
}
