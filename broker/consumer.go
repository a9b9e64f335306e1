package broker

import (
	"context"
	"fmt"
	"time"
)

// AckWait is the workers consumer's ack wait as the server has it now. It
// may differ from this process's configuration during a rolling change (the
// last replica to start sets it), so keep-alives follow this value.
func (b *Broker) AckWait(ctx context.Context) (time.Duration, error) {
	if b.consumer == nil {
		return 0, ErrNotReady
	}
	info, err := b.consumer.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read the workers consumer: %w", err)
	}
	return info.Config.AckWait, nil
}
