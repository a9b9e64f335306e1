package broker_test

import (
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
)

const (
	day  = 24 * time.Hour
	week = 7 * day
)

type wantStream struct {
	name     string
	subjects []string
	maxAge   time.Duration
	dup      time.Duration // 0: not asserted
}

func wantStreams(prefix string, requestsMaxAge time.Duration) []wantStream {
	up := map[string]string{"chat": "CHAT", "shadow": "SHADOW"}[prefix]
	return []wantStream{
		{up + "_REQUESTS", []string{prefix + ".requests.*"}, requestsMaxAge, 2 * time.Minute},
		{up + "_REPLIES", []string{prefix + ".replies.*"}, 24 * time.Hour, broker.DefaultRepliesDedupWindow},
		{up + "_EVENTS", []string{prefix + ".events.>"}, week, 0},
		{up + "_DEAD", []string{prefix + ".dead.*"}, 30 * day, 0},
	}
}

func checkStreams(t *testing.T, b *broker.Broker, want []wantStream) {
	t.Helper()
	for _, w := range want {
		t.Run(w.name, func(t *testing.T) {
			cfg := streamInfo(t, b, w.name).Config
			if cfg.Retention != jetstream.LimitsPolicy {
				t.Errorf("retention = %v, want limits", cfg.Retention)
			}
			if cfg.Storage != jetstream.FileStorage {
				t.Errorf("storage = %v, want file", cfg.Storage)
			}
			if cfg.Replicas != 1 {
				t.Errorf("replicas = %d, want 1", cfg.Replicas)
			}
			if cfg.MaxAge != w.maxAge {
				t.Errorf("max age = %s, want %s", cfg.MaxAge, w.maxAge)
			}
			if w.dup != 0 && cfg.Duplicates != w.dup {
				t.Errorf("duplicate window = %s, want %s", cfg.Duplicates, w.dup)
			}
			if !slices.Equal(cfg.Subjects, w.subjects) {
				t.Errorf("subjects = %v, want %v", cfg.Subjects, w.subjects)
			}
		})
	}
}

func checkConsumer(t *testing.T, b *broker.Broker, stream, filter string, ackWait time.Duration, maxDeliver int) {
	t.Helper()
	cfg := consumerInfo(t, b, stream).Config
	if cfg.Durable != chat.ConsumerWorkers {
		t.Errorf("durable = %q, want %q", cfg.Durable, chat.ConsumerWorkers)
	}
	if cfg.DeliverSubject != "" {
		t.Errorf("deliver subject = %q: want a pull consumer", cfg.DeliverSubject)
	}
	if cfg.AckPolicy != jetstream.AckExplicitPolicy {
		t.Errorf("ack policy = %v, want explicit", cfg.AckPolicy)
	}
	if cfg.DeliverPolicy != jetstream.DeliverAllPolicy {
		t.Errorf("deliver policy = %v, want all", cfg.DeliverPolicy)
	}
	if cfg.AckWait != ackWait {
		t.Errorf("ack wait = %s, want %s", cfg.AckWait, ackWait)
	}
	if cfg.MaxDeliver != maxDeliver {
		t.Errorf("max deliver = %d, want %d", cfg.MaxDeliver, maxDeliver)
	}
	if cfg.MaxAckPending != -1 {
		t.Errorf("max ack pending = %d, want -1 (unlimited)", cfg.MaxAckPending)
	}
	if cfg.FilterSubject != filter && !slices.Equal(cfg.FilterSubjects, []string{filter}) {
		t.Errorf("filter = %q %v, want %q", cfg.FilterSubject, cfg.FilterSubjects, filter)
	}
}

func checkBuckets(t *testing.T, b *broker.Broker, prefix string, claimsTTL time.Duration) {
	t.Helper()
	ctx := testCtx(t)
	for _, c := range []struct {
		bucket string
		ttl    time.Duration
	}{
		{prefix + "_CLAIMS", claimsTTL},
		{prefix + "_BREAKERS", 0},
	} {
		kv, err := b.JetStream().KeyValue(ctx, c.bucket)
		if err != nil {
			t.Errorf("key-value bucket %s: %v", c.bucket, err)
			continue
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatalf("bucket %s status: %v", c.bucket, err)
		}
		if st.History() != 1 {
			t.Errorf("bucket %s history = %d, want 1", c.bucket, st.History())
		}
		if st.TTL() != c.ttl {
			t.Errorf("bucket %s TTL = %s, want %s", c.bucket, st.TTL(), c.ttl)
		}
		if cfg := streamInfo(t, b, "KV_"+c.bucket).Config; cfg.Storage != jetstream.FileStorage {
			t.Errorf("bucket %s storage = %v, want file", c.bucket, cfg.Storage)
		}
	}
}

func TestSetupCreatesTopology(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	t.Run("streams", func(t *testing.T) { checkStreams(t, b, wantStreams("chat", week)) })
	t.Run("consumer", func(t *testing.T) {
		checkConsumer(t, b, chat.StreamRequests, "chat.requests.*", 30*time.Second, -1)
	})
	t.Run("buckets", func(t *testing.T) { checkBuckets(t, b, "CHAT", broker.DefaultClaimsTTL) })
	t.Run("subjects", func(t *testing.T) {
		if got := b.Subjects().Prefix(); got != "chat" {
			t.Errorf("Subjects().Prefix() = %q, want chat", got)
		}
	})
}

func TestSetupMaxDeliver(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		maxDeliveries int
		want          int
	}{
		{0, -1},
		{1, 4},
		{3, 8},
	} {
		t.Run(fmt.Sprintf("max_deliveries=%d", c.maxDeliveries), func(t *testing.T) {
			t.Parallel()
			b := newBroker(t, broker.Topology{MaxDeliveries: c.maxDeliveries, AckWait: 3 * time.Second, RequestsMaxAge: time.Hour})
			checkConsumer(t, b, chat.StreamRequests, "chat.requests.*", 3*time.Second, c.want)
			if got := streamInfo(t, b, chat.StreamRequests).Config.MaxAge; got != time.Hour {
				t.Errorf("requests max age = %s, want 1h", got)
			}
		})
	}
}

// snapshot is what a second Setup must leave alone.
type snapshot struct {
	streams   map[string]jetstream.StreamConfig
	msgs      map[string]uint64
	consumer  jetstream.ConsumerConfig
	pending   uint64
	ackFloor  uint64
	delivered uint64
}

func takeSnapshot(t *testing.T, b *broker.Broker) snapshot {
	t.Helper()
	s := snapshot{streams: map[string]jetstream.StreamConfig{}, msgs: map[string]uint64{}}
	for _, name := range []string{chat.StreamRequests, chat.StreamReplies, chat.StreamEvents, chat.StreamDead, "KV_CHAT_CLAIMS", "KV_CHAT_BREAKERS"} {
		info := streamInfo(t, b, name)
		s.streams[name] = info.Config
		s.msgs[name] = info.State.Msgs
	}
	ci := consumerInfo(t, b, chat.StreamRequests)
	s.consumer, s.pending, s.ackFloor, s.delivered = ci.Config, ci.NumPending, ci.AckFloor.Stream, ci.Delivered.Stream
	return s
}

func TestSetupIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	topo := broker.Topology{Subjects: subj, AckWait: 5 * time.Second, MaxDeliveries: 2}
	b := newBroker(t, topo)

	for i := range 3 {
		publish(t, b, subj.Request("c1"), fmt.Appendf(nil, `{"id":"r%d"}`, i), nil)
	}
	d := fetchOne(t, b, 2*time.Second)
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "the ack to be recorded", func() bool {
		return consumerInfo(t, b, chat.StreamRequests).AckFloor.Stream == d.StreamSeq
	})
	if _, err := b.PublishReply(ctx, "c1", "r0", &chat.Reply{ID: "r0", Status: chat.StatusOK}); err != nil {
		t.Fatal(err)
	}
	if err := b.PublishDead(ctx, []byte("x"), broker.DeadLetter{Conv: "c1", Code: "c", Reason: "r", StreamSeq: 9, Subject: subj.Request("c1")}); err != nil {
		t.Fatal(err)
	}
	b.PublishEvent(&chat.Event{Type: chat.EventAttempt, At: time.Now()}, "c1")
	b.FlushEvents(ctx)
	if _, res, err := b.Claim(ctx, "r1", 2, "w1", time.Hour); err != nil || res != broker.ClaimWon {
		t.Fatalf("Claim = %v, %v; want ClaimWon", res, err)
	}
	if err := b.ShareBreaker(ctx, "p1", broker.BreakerState{State: "open", Worker: "w1", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	before := takeSnapshot(t, b)

	for i := range 2 {
		if err := b.Setup(ctx, topo); err != nil {
			t.Fatalf("Setup #%d again: %v", i+2, err)
		}
	}
	after := takeSnapshot(t, b)
	if !reflect.DeepEqual(before, after) {
		t.Errorf("a second Setup changed the topology or lost data:\nbefore %+v\nafter  %+v", before, after)
	}
	if before.msgs[chat.StreamRequests] != 3 || before.pending != 2 {
		t.Errorf("setup of the test: requests %d (want 3), consumer pending %d (want 2)", before.msgs[chat.StreamRequests], before.pending)
	}
	// The claim survived: another message with the same id is still busy.
	if _, res, err := b.Claim(ctx, "r1", 3, "w2", time.Hour); err != nil || res != broker.ClaimBusy {
		t.Errorf("Claim after a second Setup = %v, %v; want ClaimBusy", res, err)
	}
	// The consumer kept its position: the next deliveries are the two unacked.
	got := fetch(t, b, 2, 2*time.Second)
	if len(got) != 2 || got[0].StreamSeq != 2 || got[1].StreamSeq != 3 {
		t.Fatalf("after a second Setup the consumer delivered %d messages %v, want seqs 2 and 3", len(got), seqsOf(got))
	}
	for _, d := range got {
		if d.NumDelivered != 1 {
			t.Errorf("seq %d delivered %d times, want 1", d.StreamSeq, d.NumDelivered)
		}
		_ = d.Ack()
	}
}

func seqsOf(ds []*broker.Delivery) []uint64 {
	var out []uint64
	for _, d := range ds {
		out = append(out, d.StreamSeq)
	}
	return out
}

func TestSetupUpdatesChangedTopology(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b := newBroker(t, broker.Topology{AckWait: 5 * time.Second})
	publish(t, b, subj.Request("c1"), []byte(`{"id":"a"}`), nil)
	publish(t, b, subj.Request("c2"), []byte(`{"id":"b"}`), nil)

	if err := b.Setup(ctx, broker.Topology{Subjects: subj, RequestsMaxAge: 48 * time.Hour, AckWait: 7 * time.Second, MaxDeliveries: 2,
		RepliesDedupWindow: 10 * time.Minute, ClaimsTTL: 48 * time.Hour}); err != nil {
		t.Fatalf("Setup with a changed topology: %v", err)
	}
	if got := streamInfo(t, b, chat.StreamRequests).Config.MaxAge; got != 48*time.Hour {
		t.Errorf("requests max age after update = %s, want 48h", got)
	}
	checkConsumer(t, b, chat.StreamRequests, "chat.requests.*", 7*time.Second, 6)
	checkBuckets(t, b, "CHAT", 48*time.Hour)
	if got := streamInfo(t, b, chat.StreamReplies).Config.Duplicates; got != 10*time.Minute {
		t.Errorf("replies duplicate window after update = %s, want 10m", got)
	}
	if n := streamInfo(t, b, chat.StreamRequests).State.Msgs; n != 2 {
		t.Errorf("requests after the update = %d, want 2", n)
	}
	if p := consumerInfo(t, b, chat.StreamRequests).NumPending; p != 2 {
		t.Errorf("consumer pending after the update = %d, want 2", p)
	}

	// And back again.
	if err := b.Setup(ctx, broker.Topology{Subjects: subj, AckWait: 2 * time.Second}); err != nil {
		t.Fatalf("Setup back to defaults: %v", err)
	}
	if got := streamInfo(t, b, chat.StreamRequests).Config.MaxAge; got != week {
		t.Errorf("requests max age after the second update = %s, want 168h", got)
	}
	checkConsumer(t, b, chat.StreamRequests, "chat.requests.*", 2*time.Second, -1)
}

func TestSetupOtherPrefix(t *testing.T) {
	t.Parallel()
	shadow := mustSubjects("shadow")

	t.Run("alone", func(t *testing.T) {
		t.Parallel()
		b := newBroker(t, broker.Topology{Subjects: shadow})
		checkStreams(t, b, wantStreams("shadow", week))
		checkConsumer(t, b, "SHADOW_REQUESTS", "shadow.requests.*", 30*time.Second, -1)
		checkBuckets(t, b, "SHADOW", broker.DefaultClaimsTTL)
		ctx := testCtx(t)
		for _, name := range []string{chat.StreamRequests, chat.StreamReplies, chat.StreamEvents, chat.StreamDead, "KV_CHAT_CLAIMS", "KV_CHAT_BREAKERS"} {
			if _, err := b.JetStream().Stream(ctx, name); !isNotFound(err) {
				t.Errorf("stream %s under prefix shadow: err = %v, want not found", name, err)
			}
		}
		// Its operations use the shadow subjects.
		if _, err := b.PublishReply(ctx, "c1", "r1", &chat.Reply{ID: "r1"}); err != nil {
			t.Fatal(err)
		}
		if m := lastMsg(t, b, "SHADOW_REPLIES", "shadow.replies.c1"); m.Header.Get(chat.HeaderMsgID) != "r1" {
			t.Errorf("reply header = %v", m.Header)
		}
		publish(t, b, shadow.Request("c1"), []byte("x"), nil)
		if d := fetchOne(t, b, 2*time.Second); d.Subject != "shadow.requests.c1" {
			t.Errorf("delivery subject = %q", d.Subject)
		}
	})

	t.Run("beside chat", func(t *testing.T) {
		t.Parallel()
		b := newBroker(t, broker.Topology{AckWait: 4 * time.Second})
		publish(t, b, subj.Request("c1"), []byte("x"), nil)
		before := takeSnapshot(t, b)
		if err := b.Setup(testCtx(t), broker.Topology{Subjects: shadow, RequestsMaxAge: time.Hour}); err != nil {
			t.Fatalf("Setup(shadow) beside chat: %v", err)
		}
		checkStreams(t, b, wantStreams("shadow", time.Hour))
		checkConsumer(t, b, "SHADOW_REQUESTS", "shadow.requests.*", 30*time.Second, -1)
		checkBuckets(t, b, "SHADOW", broker.DefaultClaimsTTL)
		if after := takeSnapshot(t, b); !reflect.DeepEqual(before, after) {
			t.Errorf("Setup(shadow) touched CHAT_*:\nbefore %+v\nafter  %+v", before, after)
		}
	})
}

// Every replica calls Setup at start-up, possibly at the same moment.
func TestSetupConcurrentReplicas(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	srv, err := broker.Connect(ctx, broker.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"}, "server", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	url := srv.ClientURL()
	var replicas []*broker.Broker
	for i := range 4 {
		r, err := broker.Connect(ctx, broker.Config{URL: url}, fmt.Sprintf("replica-%d", i), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Close)
		replicas = append(replicas, r)
	}
	topo := broker.Topology{Subjects: subj, AckWait: 5 * time.Second, MaxDeliveries: 1}
	var wg sync.WaitGroup
	errs := make([]error, len(replicas))
	for i, r := range replicas {
		wg.Go(func() { errs[i] = r.Setup(ctx, topo) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: Setup: %v", i, err)
		}
	}
	checkStreams(t, srv, wantStreams("chat", week))
	checkConsumer(t, srv, chat.StreamRequests, "chat.requests.*", 5*time.Second, 4)
	// They share one consumer: one request reaches exactly one replica.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish(subj.Request("c1"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	var total int
	var mu sync.Mutex
	for _, r := range replicas {
		wg.Go(func() {
			ch, errf, err := r.Fetch(1, time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			for d := range ch {
				mu.Lock()
				total++
				mu.Unlock()
				_ = d.Ack()
			}
			_ = errf()
		})
	}
	wg.Wait()
	if total != 1 {
		t.Errorf("one request was delivered %d times across the replicas, want 1", total)
	}
}
