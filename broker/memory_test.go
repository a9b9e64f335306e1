package broker_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

var (
	memRequests = flag.Int("server-memory", 0, "TestServerMemoryPerMillion: requests to simulate (0 skips the test; 200000 is a good figure)")
	memSettle   = flag.Duration("server-memory-settle", 0, "TestServerMemoryPerMillion: wait this long after the writes (2m30s lets the server drop its per-block subject caches) and measure again")
)

// TestServerMemoryPerMillion measures what nats-server keeps in memory per
// answered request, for sizing (README, "Sizing the server"). It simulates
// the server-side writes of n answered requests against an embedded server
// with Understudy's topology: per request one request message (Nats-Msg-Id),
// one reply with Nats-Msg-Id, and the claim key written twice (claim, then
// done). Each kind of state is written in two halves and measured after
// each (heap in use after a GC); the slope between the two points, scaled to
// a million, is the figure: fixed costs (the last block's cache, the streams
// themselves) cancel out. The dedup map's share is the replies' slope minus
// that of the same replies published without Nats-Msg-Id. It asserts
// nothing; run it with
//
//	go test -count=1 -run TestServerMemoryPerMillion -v ./broker/ -args -server-memory=200000
func TestServerMemoryPerMillion(t *testing.T) {
	n := *memRequests
	if n <= 0 {
		t.Skip("a measurement: run with -args -server-memory=200000")
	}
	if testing.Short() {
		t.Skip("a measurement")
	}
	// The figures are the topology's defaults; the test sets them long
	// enough that nothing expires during the run.
	b := newBroker(t, broker.Topology{Subjects: subj, RepliesDedupWindow: 24 * time.Hour, ClaimsTTL: 7 * 24 * time.Hour})
	js := b.JetStream()
	ctx := context.Background()
	// The control: a stream like CHAT_REPLIES, written without message ids.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CONTROL_REPLIES", Subjects: []string{"control.replies.>"},
		MaxAge: 24 * time.Hour, Duplicates: 24 * time.Hour, Storage: jetstream.FileStorage, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	id := func(i int) string { return fmt.Sprintf("%08x-7c1e-4b2a-9f3d-%012x", i, i*7919) } // UUID-sized
	conv := func(i int) string { return "c-" + strconv.Itoa(i%(n/10+1)) }                   // ten requests a conversation
	request := []byte(`{"id":"00000000-7c1e-4b2a-9f3d-000000000000","messages":[{"role":"system","content":"You are Lucy."},{"role":"user","content":"hello, how are you today?"}],"max_tokens":512,"metadata":{"user":"u-7"}}`)
	reply := []byte(`{"id":"00000000-7c1e-4b2a-9f3d-000000000000","conversation_id":"c-42","status":"ok","content":"I am fine, thank you!","provider":"deepseek","model":"deepseek-chat","attempts":[{"provider":"deepseek","outcome":"ok","status_code":200,"latency_ms":812}],"usage":{"prompt_tokens":12,"completion_tokens":3},"deliveries":1,"queued_ms":3,"latency_ms":870}`)
	claim := []byte(`{"done":false,"seq":123456,"worker":"worker-7d9f8-1","at":"2026-01-20T12:00:00.123456789Z"}`)
	done := []byte(`{"done":true,"seq":123456,"worker":"worker-7d9f8-1","at":"2026-01-20T12:00:00.923456789Z"}`)
	claimsPrefix := "$KV." + subj.Stream(chat.KindClaims) + "."

	kinds := []struct {
		name  string
		write func(i int) []*nats.Msg
	}{
		{"requests (Nats-Msg-Id, 2m dedup)", func(i int) []*nats.Msg {
			return []*nats.Msg{withID(subj.Request(conv(i)), request, id(i))}
		}},
		{"replies without Nats-Msg-Id (control)", func(i int) []*nats.Msg {
			return []*nats.Msg{{Subject: "control.replies." + conv(i), Data: reply}}
		}},
		{"replies with Nats-Msg-Id", func(i int) []*nats.Msg {
			return []*nats.Msg{withID(subj.Reply(conv(i)), reply, id(i))}
		}},
		{"claims (claim, then done)", func(i int) []*nats.Msg {
			key := claimsPrefix + "id." + base64.RawURLEncoding.EncodeToString([]byte(id(i)))
			return []*nats.Msg{{Subject: key, Data: claim}, {Subject: key, Data: done}}
		}},
	}
	heap0, rss0 := memory(t)
	slopes, totals := map[string]float64{}, map[string]float64{}
	t.Logf("%-40s %28s %28s", "per million requests", "slope (second half)", "all (fixed costs included)")
	for _, k := range kinds {
		var points [3]uint64
		points[0], _ = memory(t)
		for half := range 2 {
			publishAll(t, js, half*n/2, (half+1)*n/2, k.write)
			points[half+1], _ = memory(t)
		}
		slopes[k.name] = float64(int64(points[2])-int64(points[1])) / float64(n-n/2) * 1e6
		totals[k.name] = float64(int64(points[2])-int64(points[0])) / float64(n) * 1e6
		logFigure(t, k.name, slopes[k.name], totals[k.name])
	}
	// Go maps grow by doubling, so the slope of the dedup map depends on
	// where n falls; the difference of the totals is the map at n entries.
	const with, without = "replies with Nats-Msg-Id", "replies without Nats-Msg-Id (control)"
	logFigure(t, "=> replies' dedup map", slopes[with]-slopes[without], totals[with]-totals[without])
	heap1, rss1 := memory(t)
	t.Logf("whole run: heap +%.1f MiB, RSS +%.1f MiB for %d requests (incl. the control stream)",
		float64(heap1-heap0)/(1<<20), float64(rss1-rss0)/(1<<20), n)
	for _, s := range []string{chat.StreamRequests, chat.StreamReplies, subj.Stream(chat.KindClaims), "CONTROL_REPLIES"} {
		if s == subj.Stream(chat.KindClaims) {
			s = "KV_" + s
		}
		info := streamInfo(t, b, s)
		t.Logf("%-18s msgs %8d  subjects %8d  deleted %8d  bytes %6.1f MiB", s, info.State.Msgs, info.State.NumSubjects,
			info.State.NumDeleted, float64(info.State.Bytes)/(1<<20))
	}
	if *memSettle > 0 {
		time.Sleep(*memSettle) // a measurement after the server's caches expire, not a wait for an event
		heap2, rss2 := memory(t)
		t.Logf("after %s: heap +%.1f MiB, RSS +%.1f MiB over the start (%.0f B a request in all)", *memSettle,
			float64(int64(heap2)-int64(heap0))/(1<<20), float64(int64(rss2)-int64(rss0))/(1<<20), float64(int64(heap2)-int64(heap0))/float64(n))
	}
}

func logFigure(t *testing.T, name string, slope, total float64) {
	t.Helper()
	t.Logf("%-40s %8.1f MiB (%4.0f B a request) %8.1f MiB (%4.0f B a request)", name, slope/(1<<20), slope/1e6, total/(1<<20), total/1e6)
}

func withID(subject string, data []byte, id string) *nats.Msg {
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(chat.HeaderMsgID, id)
	return m
}

// publishAll stores the messages of requests [from, to) and waits for
// every ack.
func publishAll(t *testing.T, js jetstream.JetStream, from, to int, write func(int) []*nats.Msg) {
	t.Helper()
	for i := from; i < to; i++ {
		for _, m := range write(i) {
			_, err := js.PublishMsgAsync(m)
			for errors.Is(err, jetstream.ErrTooManyStalledMsgs) { // a slow server: let it catch up
				<-js.PublishAsyncComplete()
				_, err = js.PublishMsgAsync(m)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		t.Fatal("acks not received within 5 minutes")
	}
}

// memory is the heap in use after a GC and the process's resident set.
func memory(t *testing.T) (heap, rss uint64) {
	t.Helper()
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return ms.HeapInuse, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			rss = kb << 10
		}
	}
	return ms.HeapInuse, rss
}

// TestSetupBoundsServerState: what every server keeps in memory per request
// id is bounded by what it protects (README, "Sizing the server"), not by
// the requests' replay life: the replies' dedup map by a request's time in
// flight (1h, not the replies' 24h life), the claims by 24h, not 7 days.
func TestSetupBoundsServerState(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{Subjects: subj})
	if got := streamInfo(t, b, chat.StreamReplies).Config.Duplicates; got != time.Hour {
		t.Errorf("CHAT_REPLIES duplicate window = %s, want 1h", got)
	}
	if got := streamInfo(t, b, "KV_"+subj.Stream(chat.KindClaims)).Config.MaxAge; got != 24*time.Hour {
		t.Errorf("CHAT_CLAIMS TTL = %s, want 24h", got)
	}
	if got := streamInfo(t, b, chat.StreamRequests).Config.MaxAge; got != 7*24*time.Hour {
		t.Errorf("CHAT_REQUESTS max age = %s, want 168h (kept for replay, on disk)", got)
	}
}
