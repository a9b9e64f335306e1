package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
)

// BenchmarkPipeline measures requests answered per second through the whole
// worker path (decode, claim, provider call over HTTP to a zero-latency sim,
// reply, claim finished, ack, events), against a raw JetStream baseline
// measured in the same run: publish and consume-with-ack of the same
// payloads on the same embedded server.
//
//	go test -run='^$' -bench=Pipeline -benchtime=5000x ./worker/
func BenchmarkPipeline(b *testing.B) {
	req, _ := json.Marshal(request("bench"))

	b.Run("jetstream-baseline", func(b *testing.B) {
		bk := newBenchBroker(b)
		js := bk.JetStream()
		cons, err := js.Consumer(context.Background(), subj.Stream(chat.KindRequests), chat.ConsumerWorkers)
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		publishAll(b, js, req, b.N)
		for got := 0; got < b.N; {
			batch, err := cons.Fetch(min(500, b.N-got), jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				b.Fatal(err)
			}
			for m := range batch.Messages() {
				_ = m.Ack()
				got++
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	})

	b.Run("understudy", func(b *testing.B) {
		bk := newBenchBroker(b)
		f := newFleet(b, "deepseek")
		s := defaultSetup()
		s.cfg.Concurrency = 64
		startPool(b, bk, f, s)
		b.ResetTimer()
		publishAll(b, bk.JetStream(), nil, b.N)
		poll.Until(b, 5*time.Minute, fmt.Sprintf("%d replies", b.N), func() bool {
			st, err := bk.JetStream().Stream(context.Background(), subj.Stream(chat.KindReplies))
			if err != nil {
				return false
			}
			info, err := st.Info(context.Background())
			return err == nil && info.State.Msgs >= uint64(b.N)
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	})
}

func newBenchBroker(b *testing.B) *broker.Broker {
	b.Helper()
	return newBroker(b, broker.Topology{})
}

// publishAll publishes n requests (distinct ids; payload when not nil).
func publishAll(b *testing.B, js jetstream.JetStream, payload []byte, n int) {
	b.Helper()
	for i := range n {
		data := payload
		if data == nil {
			data, _ = json.Marshal(request(fmt.Sprintf("b-%d", i)))
		}
		if _, err := js.PublishAsync(subj.Request(fmt.Sprintf("c-%d", i%64)), data); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishes not acknowledged within a minute")
	}
}
