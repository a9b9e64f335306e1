package replay_test

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/replay"
)

// publishAsync publishes n messages made by msg, in batches, and waits for
// every acknowledgement.
func publishAsync(t *testing.T, js jetstream.JetStream, n int, msg func(i int) *nats.Msg) {
	t.Helper()
	const batch = 2000
	futures := make([]jetstream.PubAckFuture, 0, batch)
	for i := 0; i < n; {
		futures = futures[:0]
		for ; i < n && len(futures) < batch; i++ {
			f, err := js.PublishMsgAsync(msg(i))
			if err != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
			futures = append(futures, f)
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			t.Fatalf("publish: no acknowledgement within 30s (%d pending)", js.PublishAsyncPending())
		}
		for _, f := range futures {
			select {
			case err := <-f.Err():
				t.Fatalf("publish: %v", err)
			default:
			}
		}
	}
}

// heapLive is the heap marked live by the last garbage collection.
func heapLive() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// heapPeak samples HeapInuse and the live heap until stop is called and
// returns their peaks.
func heapPeak() (stop func() (inuse, live uint64)) {
	var peak, peakLive atomic.Uint64
	quit, done := make(chan struct{}), make(chan struct{})
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > peak.Load() {
			peak.Store(ms.HeapInuse)
		}
		if l := heapLive(); l > peakLive.Load() {
			peakLive.Store(l)
		}
	}
	go func() {
		defer close(done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
				sample()
			}
		}
	}()
	return func() (uint64, uint64) {
		close(quit)
		<-done
		sample()
		return peak.Load(), peakLive.Load()
	}
}

func TestBuildBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 200 MB; skipped in -short mode")
	}
	if raceEnabled {
		t.Skip("publishes 200 MB; too slow under the race detector, run without -race")
	}
	const (
		n       = 100_000
		answer  = 9 // of every 10 requests
		maxHeap = 64 << 20
	)
	b, subjs := newBroker(t, "chat")
	subj := subjs[0]
	js := b.JetStream()

	filler := strings.Repeat("All the world's a stage, and all the men and women merely players. ", 30)[:2000]
	id := func(i int) string { return "req-" + strconv.Itoa(i) }
	conv := func(i int) string { return "conv-" + strconv.Itoa(i%500) }
	since := time.Now()
	start := time.Now()
	publishAsync(t, js, n, func(i int) *nats.Msg {
		data := fmt.Appendf(nil, `{"id":%q,"messages":[{"role":"user","content":%q}]}`, id(i), filler)
		m := nats.NewMsg(subj.Request(conv(i)))
		m.Data = data
		m.Header.Set(chat.HeaderMsgID, id(i))
		return m
	})
	published := time.Since(start)
	start = time.Now()
	publishAsync(t, js, n/10*answer, func(k int) *nats.Msg {
		i := k/answer*10 + k%answer
		provider := "deepseek"
		if i%3 == 0 {
			provider = "llama"
		}
		m := nats.NewMsg(subj.Reply(conv(i)))
		m.Data = fmt.Appendf(nil, `{"id":%q,"conversation_id":%q,"status":"ok","content":"fine","provider":%q,"degraded":%t,"attempts":[],"deliveries":1,"queued_ms":1,"latency_ms":5}`,
			id(i), conv(i), provider, provider == "llama")
		m.Header.Set(chat.HeaderMsgID, id(i))
		return m
	})
	repliesPublished := time.Since(start)

	// Collect often while measuring, so that heap in use follows what is
	// live rather than the collector's pacing (which lets garbage grow as
	// large as the live heap, mostly the embedded server's, before a cycle).
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, baseLive := ms.HeapInuse, heapLive()
	stop := heapPeak()
	start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := replay.Build(ctx, b, subj, replay.Options{Since: since})
	scanned := time.Since(start)
	peak, peakLive := stop()
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	growth := int64(peak) - int64(base)
	t.Logf("published %d requests (%d MiB of payload) in %s, %d replies in %s; Build read them in %s; heap in use %d MiB before, peak %d MiB (growth %d MiB); live heap %d MiB before, peak %d MiB",
		n, n*len(filler)>>20, published.Round(time.Millisecond), n/10*answer, repliesPublished.Round(time.Millisecond),
		scanned.Round(time.Millisecond), base>>20, peak>>20, growth>>20, baseLive>>20, peakLive>>20)
	if r.Requests != n || r.OK != n/10*answer || r.Unanswered != n/10*(10-answer) || r.ByProvider["llama"]+r.ByProvider["deepseek"] != r.OK {
		t.Errorf("report: requests %d ok %d unanswered %d by_provider %v", r.Requests, r.OK, r.Unanswered, r.ByProvider)
	}
	if growth > maxHeap {
		t.Errorf("heap in use grew by %d MiB while reading %d MiB of requests; want under %d MiB", growth>>20, n*len(filler)>>20, maxHeap>>20)
	}
	if liveGrowth := int64(peakLive) - int64(baseLive); liveGrowth > maxHeap {
		t.Errorf("live heap grew by %d MiB while reading %d MiB of requests; want under %d MiB", liveGrowth>>20, n*len(filler)>>20, maxHeap>>20)
	}
}
