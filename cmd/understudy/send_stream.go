package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// followStream prints request id's streamed answer as it comes: deltas on
// stdout; on a reset a line on stderr naming the failed provider and the
// next, and the answer starts again on a new stdout line. It reads
// CHAT_STREAM with an ordered consumer from now on (start it before the
// request is published) and returns, closing done, at the stream's last
// message or when ctx ends. printed says whether any text was printed.
func followStream(ctx context.Context, b *broker.Broker, subj chat.Subjects, conv, id string, stdout, stderr io.Writer) (done <-chan bool, err error) {
	start := time.Now()
	cons, err := b.JetStream().OrderedConsumer(ctx, subj.Stream(chat.KindStream), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj.Chunk(conv)}, DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &start,
	})
	if err != nil {
		return nil, fmt.Errorf("follow %s: %w", subj.Stream(chat.KindStream), err)
	}
	out := make(chan bool, 1)
	go func() {
		printed := false
		defer func() { out <- printed }()
		for ctx.Err() == nil {
			m, err := cons.Next(jetstream.FetchMaxWait(time.Second))
			if err != nil {
				continue
			}
			var c chat.Chunk
			if json.Unmarshal(m.Data(), &c) != nil || c.ID != id {
				continue
			}
			switch {
			case c.Done:
				if printed {
					fmt.Fprintln(stdout)
				}
				return
			case c.Reset:
				failed := c.Failed
				if failed == "" {
					failed = "an earlier delivery"
				}
				fmt.Fprintf(stderr, "understudy send: %s failed mid-answer (%s); %s answers again\n", failed, c.Reason, c.Provider)
				if printed {
					fmt.Fprintln(stdout)
				}
			default:
				fmt.Fprint(stdout, c.Delta)
				printed = true
			}
		}
	}()
	return out, nil
}
