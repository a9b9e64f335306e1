package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
)

// The key-value bucket recording which request ids are being answered or
// have been answered is s.Stream(chat.KindClaims): CHAT_CLAIMS by default.

// Retention of the streams other than CHAT_REQUESTS (SPEC §2).
const (
	repliesMaxAge = 24 * time.Hour
	eventsMaxAge  = 7 * 24 * time.Hour
	deadMaxAge    = 30 * 24 * time.Hour
	dupWindow     = 2 * time.Minute
)

// Defaults of the retentions held in every server's memory (README, "Sizing
// the server"); StreamsConfig says what each protects.
const (
	DefaultRepliesDedupWindow = time.Hour
	DefaultClaimsTTL          = 24 * time.Hour
)

// Setup creates or updates the streams, the workers consumer and the claims
// bucket. It is idempotent: every replica calls it at start-up.
func (b *Broker) Setup(ctx context.Context, t Topology) error {
	if t.Replicas == 0 {
		t.Replicas = 1
	}
	if t.RequestsMaxAge == 0 {
		t.RequestsMaxAge = 7 * 24 * time.Hour
	}
	if t.RepliesDedupWindow == 0 {
		t.RepliesDedupWindow = DefaultRepliesDedupWindow
	}
	if t.ClaimsTTL == 0 {
		t.ClaimsTTL = DefaultClaimsTTL
	}
	if t.AckWait == 0 {
		t.AckWait = 30 * time.Second
	}
	s := t.Subjects
	streams := []jetstream.StreamConfig{
		{Name: s.Stream(chat.KindRequests), Subjects: []string{s.AllRequests()}, MaxAge: t.RequestsMaxAge, Duplicates: dupWindow,
			Description: "chat requests, kept after processing for replay"},
		// Replies dedupe on the request id over their whole life: a second
		// publish of the same id is dropped by the server.
		{Name: s.Stream(chat.KindReplies), Subjects: []string{s.AllReplies()}, MaxAge: repliesMaxAge, Duplicates: min(t.RepliesDedupWindow, repliesMaxAge),
			Description: "exactly one final reply per request id"},
		{Name: s.Stream(chat.KindEvents), Subjects: []string{s.AllEvents()}, MaxAge: eventsMaxAge, Duplicates: dupWindow,
			Description: "provider attempts, queued retries, breaker transitions, dead letters"},
		{Name: s.Stream(chat.KindDead), Subjects: []string{s.AllDead()}, MaxAge: deadMaxAge, Duplicates: dupWindow,
			Description: "requests given up on, with the reason"},
	}
	for _, sc := range streams {
		sc.Retention = jetstream.LimitsPolicy
		sc.Storage = jetstream.FileStorage
		sc.Replicas = t.Replicas
		sc.AllowDirect = true
		st, err := b.js.CreateOrUpdateStream(ctx, sc)
		if err != nil {
			return fmt.Errorf("create or update stream %s: %w", sc.Name, err)
		}
		if sc.Name == s.Stream(chat.KindRequests) {
			b.requests = st
		}
	}
	maxDeliver := -1
	if t.MaxDeliveries > 0 {
		// The worker gives up after MaxDeliveries failed ladders. Put-backs
		// that are not a failed ladder (a drain, a duplicate id in flight)
		// spend deliveries too, so the server's own bound leaves room for
		// them; it only ends requests whose workers keep dying before they
		// can answer (the MAX_DELIVERIES advisory reports those).
		maxDeliver = 2*t.MaxDeliveries + 2
	}
	cons, err := b.requests.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       chat.ConsumerWorkers,
		Description:   "every Understudy worker replica pulls from here",
		FilterSubject: s.AllRequests(),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       t.AckWait,
		MaxDeliver:    maxDeliver,
		// Requests put back with a delay while providers are down stay
		// pending; they must not stop new requests from being delivered.
		MaxAckPending: -1,
		Replicas:      t.Replicas,
	})
	if err != nil {
		return fmt.Errorf("create or update consumer %s: %w", chat.ConsumerWorkers, err)
	}
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      s.Stream(chat.KindClaims),
		Description: "request ids being answered or answered (exactly one reply per id)",
		TTL:         t.ClaimsTTL,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
	if err != nil {
		return fmt.Errorf("create or update key-value bucket %s: %w", s.Stream(chat.KindClaims), err)
	}
	if err := b.setupBreakers(ctx, t); err != nil {
		return err
	}
	if err := b.setupChunks(ctx, t); err != nil {
		return err
	}
	b.topo, b.claims, b.consumer = t, kv, cons
	return nil
}

// Subjects is the subject scheme Setup was given.
func (b *Broker) Subjects() chat.Subjects { return b.topo.Subjects }

// Backlog is the workers consumer's pending (not yet delivered) and
// ack-pending counts, for metrics.
func (b *Broker) Backlog(ctx context.Context) (pending uint64, ackPending int, err error) {
	st, err := b.Consumer(ctx)
	return st.Pending, st.AckPending, err
}
