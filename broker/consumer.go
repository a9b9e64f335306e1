package broker

import (
	"context"
	"fmt"
	"time"
)

// ConsumerState is what the server says of the workers consumer, in one
// read: its backlog, and its ack wait as the server has it now (which may
// differ from this process's configuration during a rolling change: the last
// replica to start sets it, so keep-alives follow this value).
type ConsumerState struct {
	// Pending are the requests not yet delivered (num_pending).
	Pending uint64
	// AckPending are the requests delivered and not yet acked, queued
	// retries included (num_ack_pending).
	AckPending int
	AckWait    time.Duration
}

// Consumer reads the workers consumer's state.
func (b *Broker) Consumer(ctx context.Context) (ConsumerState, error) {
	if b.consumer == nil {
		return ConsumerState{}, ErrNotReady
	}
	info, err := b.consumer.Info(ctx)
	if err != nil {
		return ConsumerState{}, fmt.Errorf("read the workers consumer: %w", err)
	}
	return ConsumerState{Pending: info.NumPending, AckPending: info.NumAckPending, AckWait: info.Config.AckWait}, nil
}
