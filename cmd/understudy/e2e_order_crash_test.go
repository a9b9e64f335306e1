package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// Issue 11, with real processes: three `understudy serve` replicas keeping
// conversation order, bursts of five requests in each of 50 conversations,
// an outage of the only provider in the middle (requests queued) and one
// replica SIGKILLed mid-burst while it works on conversations' heads (its
// claims open, its calls at the provider): every request is answered
// exactly once, each conversation's replies are stored and heard in publish
// order, and its requests reach the provider in publish order.
func TestServeConversationOrderWorkerKilled(t *testing.T) {
	e2eNeedBinary(t)
	const convs, burst = 50, 5
	const latency, outageLatency = 20 * time.Millisecond, 2 * time.Second
	ns := e2eNATS(t, t.TempDir(), -1)
	provider, url := e2eSim(t, sim.Config{Model: "sim-order", Latency: latency})
	provider.Record(100000)
	// ack_wait 1s: a killed replica's claims are stale after 3s.
	cfg := e2eConfig{natsURL: ns.ClientURL(), ackWait: "1s", ordering: "conversation",
		providers: []e2eProvider{{"primary", url, "sim-order"}}}
	e2eServe(t, "replica-1", cfg)
	e2eServe(t, "replica-2", cfg)
	doomed := e2eServe(t, "replica-3", cfg)
	nc, js := e2eClient(t, ns.ClientURL())
	heard := e2eHearInOrder(t, nc)
	retries := e2eCountRetries(t, nc)
	claims := e2eWatchClaims(t, js)

	conv := func(c int) string { return fmt.Sprintf("c-%02d", c) }
	var ids []string
	publishBursts := func(from, to int) {
		for c := from; c < to; c++ {
			for k := range burst {
				id := e2eTurnID(conv(c), k)
				e2ePublishTurn(t, js, conv(c), id)
				ids = append(ids, id)
			}
		}
	}
	publishBursts(0, convs/2)
	poll.Until(t, 15*time.Second, "20 replies stored", func() bool { return e2eStreamMsgs(t, js, chat.StreamReplies) >= 20 })

	// Mid-burst: the provider goes down (a slow 503, so that the calls are
	// under way for a while), more bursts come in, and replica-3 dies while
	// it works on some conversations' heads.
	provider.SetLatency(outageLatency)
	provider.SetMode(sim.ModeError)
	publishBursts(convs/2, convs)
	poll.Until(t, 10*time.Second, "replica-3 working on a request", func() bool { return len(claims.working("replica-3", heard)) > 0 })
	doomed.signal(syscall.SIGKILL)
	doomed.waitExit(5 * time.Second)
	if !e2eExitedBy(doomed, syscall.SIGKILL) {
		t.Fatalf("replica-3 was not killed by SIGKILL: %v", doomed.cmd.ProcessState)
	}
	held := claims.working("replica-3", heard)
	storedAtKill := e2eStreamMsgs(t, js, chat.StreamReplies)
	t.Logf("at the kill: replica-3 worked on %v; %d replies stored", held, storedAtKill)
	if storedAtKill >= uint64(len(ids)) {
		t.Fatalf("every request was answered before the kill: the test proves nothing")
	}
	poll.Until(t, 15*time.Second, "requests queued during the outage", func() bool { return retries.n.Load() >= 10 })
	provider.SetMode(sim.ModeOK)
	provider.SetLatency(latency)

	replies := e2eWaitReplies(t, js, ids, 30*time.Second)
	redelivered := e2eOKRedelivered(t, replies)
	// Stored in publish order, per conversation (replies read in stream order).
	stored := map[string][]string{}
	for _, r := range replies {
		stored[r.ConversationID] = append(stored[r.ConversationID], r.ID)
	}
	// Sent to the provider in publish order: a request goes again only
	// while it is its conversation's head (a retry, or a takeover of the
	// killed replica's), never after a later one. The failed calls are in
	// the record too; the order holds for them as well.
	sent := map[string][]int{}
	for _, b := range provider.Received() {
		id := b.Messages[len(b.Messages)-1].Content
		c, k := e2eTurnOf(t, id)
		sent[c] = append(sent[c], k)
	}
	poll.Until(t, 5*time.Second, "every reply heard", func() bool { return heard.total() >= len(ids) })
	for c := range convs {
		want := make([]string, burst)
		for k := range burst {
			want[k] = e2eTurnID(conv(c), k)
		}
		if got := stored[conv(c)]; !slices.Equal(got, want) {
			t.Errorf("%s: replies stored in the order %v, want %v", conv(c), got, want)
		}
		if got := heard.ids(conv(c)); !slices.Equal(got, want) {
			t.Errorf("%s: replies heard in the order %v, want %v, each once", conv(c), got, want)
		}
		s := sent[conv(c)]
		if !slices.IsSorted(s) || len(slices.Compact(slices.Clone(s))) != burst {
			t.Errorf("%s: requests sent to the provider in the order %v, want every one, each after the ones before", conv(c), s)
		}
	}
	if n := heard.total(); n != len(ids) {
		t.Errorf("%d replies heard for %d requests, want one each", n, len(ids))
	}
	if n := e2eStreamMsgs(t, js, chat.StreamDead); n != 0 {
		t.Errorf("CHAT_DEAD holds %d messages, want 0", n)
	}
	t.Logf("%d replies, %d of them on a later delivery; %d retries queued; %d provider calls (%d failed)",
		len(replies), redelivered, retries.n.Load(), provider.Hits(), provider.HitsIn(sim.ModeError))
}

// e2eTurnID is the id of request k of conversation conv: "conv#k".
func e2eTurnID(conv string, k int) string { return fmt.Sprintf("%s#%d", conv, k) }

// e2eTurnOf splits an id made by e2eTurnID.
func e2eTurnOf(t *testing.T, id string) (conv string, k int) {
	t.Helper()
	i := strings.LastIndexByte(id, '#')
	k, err := strconv.Atoi(id[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("id %q is not conv#k", id)
	}
	return id[:i], k
}

// e2ePublishTurn publishes request id on conv; its only message is its
// id, so the provider's recorded bodies say which request was sent.
func e2ePublishTurn(t *testing.T, js jetstream.JetStream, conv, id string) {
	t.Helper()
	data, err := json.Marshal(map[string]any{"id": id, "conversation_id": conv,
		"messages": []map[string]string{{"role": "user", "content": id}}})
	if err != nil {
		t.Fatal(err)
	}
	e2ePublishData(t, js, conv, id, data)
}

// e2eHeard records, per conversation, the ids of the replies heard live
// on chat.replies.> (a core subscription: before the stream's
// deduplication), in the order heard.
type e2eHeard struct {
	mu     sync.Mutex
	byConv map[string][]string
	all    map[string]bool
	n      int
}

func e2eHearInOrder(t *testing.T, nc *nats.Conn) *e2eHeard {
	t.Helper()
	h := &e2eHeard{byConv: map[string][]string{}, all: map[string]bool{}}
	e2eSubscribe(t, nc, "chat.replies.>", func(m *nats.Msg) {
		var r chat.Reply
		_ = json.Unmarshal(m.Data, &r)
		h.mu.Lock()
		h.byConv[r.ConversationID] = append(h.byConv[r.ConversationID], r.ID)
		h.all[r.ID] = true
		h.n++
		h.mu.Unlock()
	})
	return h
}

func (h *e2eHeard) ids(conv string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.byConv[conv])
}

func (h *e2eHeard) has(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.all[id]
}

func (h *e2eHeard) total() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// e2eRetries counts the retry events (a request put back after its whole
// chain failed), heard live.
type e2eRetries struct{ n atomic.Int64 }

func e2eCountRetries(t *testing.T, nc *nats.Conn) *e2eRetries {
	t.Helper()
	r := &e2eRetries{}
	e2eSubscribe(t, nc, "chat.events."+string(chat.EventRetry)+".>", func(*nats.Msg) { r.n.Add(1) })
	return r
}

// e2eClaims follows the claims bucket (CHAT_CLAIMS): for each request id,
// the worker holding its claim while it is open (neither marked answered,
// put back nor let go; an answer stored lets its claim lapse open).
type e2eClaims struct {
	mu     sync.Mutex
	holder map[string]string // request id → worker, open claims only
}

func e2eWatchClaims(t *testing.T, js jetstream.JetStream) *e2eClaims {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kv, err := js.KeyValue(ctx, "CHAT_CLAIMS")
	if err != nil {
		t.Fatalf("claims bucket: %v", err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &e2eClaims{holder: map[string]string{}}
	go func() {
		for e := range w.Updates() {
			if e == nil {
				continue // the initial values are in
			}
			var v struct {
				Done     bool   `json:"done"`
				Requeued bool   `json:"requeued"`
				Released bool   `json:"released"`
				Worker   string `json:"worker"`
			}
			id, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(e.Key(), "id."))
			if err != nil {
				continue
			}
			open := e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &v) == nil &&
				!v.Done && !v.Requeued && !v.Released
			c.mu.Lock()
			if open {
				c.holder[string(id)] = v.Worker
			} else {
				delete(c.holder, string(id))
			}
			c.mu.Unlock()
		}
	}()
	return c
}

// working is the ids worker holds open claims on that h has heard no reply
// to: the requests it works on now.
func (c *e2eClaims) working(worker string, h *e2eHeard) []string {
	c.mu.Lock()
	var ids []string
	for id, w := range c.holder {
		if w == worker {
			ids = append(ids, id)
		}
	}
	c.mu.Unlock()
	ids = slices.DeleteFunc(ids, h.has)
	slices.Sort(ids)
	return ids
}
