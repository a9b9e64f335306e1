package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
)

// BenchmarkOrdering measures requests answered per second with
// worker.ordering conversation against none, across 1,000 conversations and
// across 10, in one run on the same machine: one replica of concurrency 64,
// requests published conversation after conversation (each conversation's
// requests in a row, the worst case for order), a simulated provider
// answering after latency.
//
//	go test -run='^$' -bench=Ordering -benchtime=2000x ./worker/
func BenchmarkOrdering(b *testing.B) {
	for _, latency := range []time.Duration{0, 50 * time.Millisecond} {
		for _, convs := range []int{1000, 10} {
			for _, ordering := range []string{OrderingNone, OrderingConversation} {
				b.Run(fmt.Sprintf("latency=%s/conversations=%d/ordering=%s", latency, convs, ordering), func(b *testing.B) {
					benchOrdering(b, latency, convs, ordering)
				})
			}
		}
	}
}

func benchOrdering(b *testing.B, latency time.Duration, convs int, ordering string) {
	bk := newBenchBroker(b)
	f := newFleet(b, "deepseek")
	f.sim("deepseek").SetLatency(latency)
	s := defaultSetup()
	s.cfg.Concurrency = 64
	s.cfg.Ordering = ordering
	startPool(b, bk, f, s)
	if ordering == OrderingConversation {
		poll.Until(b, 10*time.Second, "the order bucket", func() bool { _, err := bk.Settled(context.Background(), "c-0"); return err == nil })
	}
	js := bk.JetStream()
	b.ResetTimer()
	publishInRows(b, js, convs, func(conv string) string { return subj.Request(conv) })
	waitStored(b, js, subj.Stream(chat.KindReplies))
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// publishInRows publishes b.N requests to convs conversations, conversation
// after conversation (each one's requests in a row: the hard case for
// order), on the subjects requestSubject names.
func publishInRows(b *testing.B, js jetstream.JetStream, convs int, requestSubject func(conv string) string) {
	b.Helper()
	per := (b.N + convs - 1) / convs
	for i := range b.N {
		c, k := i/per, i%per
		data, _ := json.Marshal(request(fmt.Sprintf("b-%d-%d", c, k)))
		if _, err := js.PublishAsync(requestSubject(fmt.Sprintf("c-%d", c)), data); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishes not acknowledged within a minute")
	}
}

// waitStored waits until the stream holds b.N messages.
func waitStored(b *testing.B, js jetstream.JetStream, stream string) {
	b.Helper()
	poll.Until(b, 5*time.Minute, fmt.Sprintf("%d messages in %s", b.N, stream), func() bool {
		st, err := js.Stream(context.Background(), stream)
		if err != nil {
			return false
		}
		info, err := st.Info(context.Background())
		return err == nil && info.State.Msgs >= uint64(b.N)
	})
}
