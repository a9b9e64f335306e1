package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Clock is this process's wall clock. It only stamps what is written (the
// At of claims and verdicts, for people reading them); who holds a claim or
// a probe is never decided by it, but by the server's own timestamps (see
// serverAge), so that a replica whose clock is off neither steals a live
// claim nor blocks others after it dies. Tests give a broker a skewed one.
type Clock func() time.Time

// SetClock replaces the broker's clock (time.Now). Call it before use.
func (b *Broker) SetClock(c Clock) { b.clock = c }

func (b *Broker) now() time.Time {
	if b.clock == nil {
		return time.Now()
	}
	return b.clock()
}

// errNoServerTime is returned when the server does not stamp its answers.
var errNoServerTime = errors.New("the server gave no timestamp")

// serverAge is how long ago, by the server's clock, entry was written: the
// entry's own server timestamp against the server's time now (read from
// the bucket's stream info), so neither this process's clock nor the
// writer's takes part.
func serverAge(ctx context.Context, kv jetstream.KeyValue, entry jetstream.KeyValueEntry) (time.Duration, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("read the server's time: %w", err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil || bs.StreamInfo().TimeStamp.IsZero() {
		return 0, errNoServerTime
	}
	return bs.StreamInfo().TimeStamp.Sub(entry.Created()), nil
}
