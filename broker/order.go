package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
)

// Per-conversation order (worker.ordering: conversation).
//
// The requests of a conversation are worked on one at a time, in the order
// CHAT_REQUESTS stored them. Nothing but the stream and one key-value entry
// per conversation says whose turn it is:
//
//   - <PREFIX>_ORDER holds, under the conversation id, the stream sequence
//     of the conversation's last settled request (answered or given up on),
//     raised by compare-and-set as each one settles, before it is acked.
//   - The conversation's head is the first request stored on its subject
//     after that sequence (a direct get by subject), or after the workers
//     consumer's ack floor when that is further on: everything at or below
//     the floor was acked, so requests stored before ordering was switched
//     on do not hold anyone up.
//
// A replica answering a direct get may lag; it only ever knows less, so a
// stale read makes a delivery wait, never jump its turn. Where "not found"
// decides (this delivery is the head, as nothing comes before it) the
// stream's leader confirms it.

// KindOrder names the key-value bucket of the conversations' last settled
// sequences: <PREFIX>_ORDER.
const KindOrder = "ORDER"

// ackFloorFresh is how long a read of the workers consumer's ack floor is
// reused. The floor only rises, so an older one only makes a delivery wait.
const ackFloorFresh = time.Second

type orderState struct {
	kv jetstream.KeyValue

	mu      sync.Mutex
	floor   uint64
	floorAt time.Time
}

// SetupOrder creates or updates the <PREFIX>_ORDER bucket; call it after
// Setup, before Turn or Settle. Its entries live as long as the requests:
// once a conversation's entry expires, every request it counted is gone
// from CHAT_REQUESTS too.
func (b *Broker) SetupOrder(ctx context.Context) error {
	t := b.topo
	name := t.Subjects.Stream(KindOrder)
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "per conversation, the stream sequence of its last settled request (worker.ordering: conversation)",
		TTL:         t.RequestsMaxAge,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
	if err != nil {
		return fmt.Errorf("create or update key-value bucket %s: %w", name, err)
	}
	b.order.Store(&orderState{kv: kv})
	return nil
}

// ErrNoOrder is returned before SetupOrder.
var ErrNoOrder = errors.New("broker: SetupOrder has not run")

func (b *Broker) orderState() (*orderState, error) {
	o := b.order.Load()
	if o == nil {
		return nil, ErrNoOrder
	}
	return o, nil
}

// Settled is the stream sequence of conv's last settled request (0: none
// yet), as any replica has it: possibly behind, never ahead.
func (b *Broker) Settled(ctx context.Context, conv string) (uint64, error) {
	o, err := b.orderState()
	if err != nil {
		return 0, err
	}
	e, err := o.kv.Get(ctx, conv)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the order of %s: %w", conv, err)
	}
	return parseSeq(e.Value())
}

func parseSeq(v []byte) (uint64, error) {
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("order entry holds %q: %w", v, err)
	}
	return n, nil
}

// Settle records the request with stream sequence seq as conv's last
// settled one, unless a later one is recorded already.
func (b *Broker) Settle(ctx context.Context, conv string, seq uint64) error {
	o, err := b.orderState()
	if err != nil {
		return err
	}
	val := []byte(strconv.FormatUint(seq, 10))
	var e jetstream.KeyValueEntry
	e, err = o.kv.Get(ctx, conv)
	for range 5 {
		var cur, rev uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return fmt.Errorf("settle %d of %s: %w", seq, conv, err)
		default:
			if cur, err = parseSeq(e.Value()); err != nil {
				return err
			}
			rev = e.Revision()
		}
		if cur >= seq {
			return nil
		}
		if rev == 0 {
			_, err = o.kv.Create(ctx, conv, val)
		} else {
			_, err = o.kv.Update(ctx, conv, val, rev)
		}
		if err == nil {
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("settle %d of %s: %w", seq, conv, err)
		}
		// Somebody else moved first, or the replica read was behind: ask
		// the leader.
		e, err = b.orderFromLeader(ctx, conv)
	}
	return fmt.Errorf("settle %d of %s: the entry keeps changing", seq, conv)
}

func (b *Broker) orderFromLeader(ctx context.Context, conv string) (jetstream.KeyValueEntry, error) {
	bucket := b.topo.Subjects.Stream(KindOrder)
	m, err := b.leaderLast(ctx, "KV_"+bucket, "$KV."+bucket+"."+conv)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, jetstream.ErrKeyNotFound
	}
	if err != nil {
		return nil, err
	}
	e := leaderEntry{bucket: bucket, key: conv, m: m}
	if e.Operation() != jetstream.KeyValuePut {
		return nil, jetstream.ErrKeyNotFound
	}
	return e, nil
}

// NextRequest is the first request stored on conv's subject with a
// sequence at or after seq. jetstream.ErrMsgNotFound, confirmed with the
// stream's leader, means there is none.
func (b *Broker) NextRequest(ctx context.Context, conv string, seq uint64) (*Stored, error) {
	subject := b.topo.Subjects.Request(conv)
	m, err := b.requests.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		m, err = b.leaderNext(ctx, b.topo.Subjects.Stream(chat.KindRequests), subject, seq, time.Time{})
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("read the next request of %s: %w", conv, err)
	}
	return &Stored{Subject: m.Subject, Data: m.Data, Header: m.Header, Seq: m.Sequence, Time: m.Time}, nil
}

// AckFloor is the workers consumer's ack floor: every request at or below
// this stream sequence has been acked or terminated. A read up to a second
// old may be given.
func (b *Broker) AckFloor(ctx context.Context) (uint64, error) {
	o, err := b.orderState()
	if err != nil {
		return 0, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if time.Since(o.floorAt) < ackFloorFresh {
		return o.floor, nil
	}
	info, err := b.consumer.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read the workers consumer: %w", err)
	}
	o.floor, o.floorAt = max(o.floor, info.AckFloor.Stream), time.Now()
	return o.floor, nil
}

// OnSettled calls fn with the conversation whenever a request of one may
// have settled (any write to the order bucket, heard live, failed
// compare-and-sets included: a wake-up, not a verdict). fn must not block.
func (b *Broker) OnSettled(fn func(conv string)) (stop func(), err error) {
	o, err := b.orderState()
	if err != nil {
		return nil, err
	}
	prefix := "$KV." + o.kv.Bucket() + "."
	sub, err := b.nc.Subscribe(prefix+">", func(m *nats.Msg) {
		fn(m.Subject[len(prefix):])
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s>: %w", prefix, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}
