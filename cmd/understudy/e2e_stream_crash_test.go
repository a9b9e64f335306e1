package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// A worker SIGKILLed mid-stream loses nothing: once its claim is stale
// another worker answers again after a reset (reason redelivered), and a
// client reading CHAT_STREAM from the start sees the dead delivery's
// chunks, the reset, the new delivery's chunks only, and done, with seq
// 1, 2, 3, ... and no gap; one reply is stored, whole.
func TestStreamWorkerKilledMidStream(t *testing.T) {
	e2eNeedBinary(t)
	const words, conv, id = 30, "c-crash", "req-crash"
	ns := e2eNATS(t, t.TempDir(), -1)
	_, url := e2eSim(t, sim.Config{Model: "sim-one", Words: words, ChunkDelay: 100 * time.Millisecond})
	cfg := e2eConfig{natsURL: ns.ClientURL(), providers: []e2eProvider{{"one", url, "sim-one"}}}

	first := e2eServeStreamCrash(t, "worker-a", cfg)
	nc, js := e2eClient(t, ns.ClientURL())
	heard := e2eHearChunks(t, nc, conv)
	e2ePublishStream(t, js, conv, id)
	poll.Until(t, 10*time.Second, "3 chunks heard from worker-a", func() bool { return heard.deltas() >= 3 })
	first.signal(syscall.SIGKILL)
	first.waitExit(5 * time.Second)
	if !e2eExitedBy(first, syscall.SIGKILL) {
		t.Fatalf("worker-a did not die of SIGKILL")
	}
	if n := heard.deltas(); n >= words {
		t.Fatalf("worker-a streamed all %d chunks before it was killed: no crash mid-stream", n)
	}
	e2eServeStreamCrash(t, "worker-b", cfg)

	replies := e2eWaitReplies(t, js, []string{id}, 30*time.Second)
	reply := replies[0]
	if reply.Status != chat.StatusOK || reply.Provider != "one" {
		t.Fatalf("reply %s by %q, want ok by one", reply.Status, reply.Provider)
	}
	if got := len(strings.Fields(reply.Content)); got != words {
		t.Errorf("reply content has %d words, want %d: %q", got, words, reply.Content)
	}

	chunks := e2eReadChunks(t, js, conv, id)
	var (
		before, after strings.Builder
		reset         *chat.Chunk
		nBefore       int
	)
	for i := range chunks {
		c := &chunks[i]
		if c.Seq != uint64(i+1) {
			t.Fatalf("chunk %d has seq %d, want %d (seq must go 1, 2, 3, ... without a gap): %+v", i, c.Seq, i+1, chunks)
		}
		switch {
		case c.Reset:
			if reset != nil {
				t.Fatalf("a second reset at seq %d (first at %d)", c.Seq, reset.Seq)
			}
			reset = c
		case c.Done:
			if i != len(chunks)-1 {
				t.Fatalf("done at seq %d is not the last message (%d)", c.Seq, len(chunks))
			}
		case reset == nil:
			if c.Delivery != 1 || c.Attempt != 1 || c.Provider != "one" {
				t.Errorf("chunk seq %d before the reset: delivery %d attempt %d provider %q, want 1, 1, one", c.Seq, c.Delivery, c.Attempt, c.Provider)
			}
			nBefore++
			before.WriteString(c.Delta)
		default:
			if c.Delivery != reset.Delivery || c.Attempt != reset.Attempt || c.Provider != "one" {
				t.Errorf("chunk seq %d after the reset: delivery %d attempt %d provider %q, want those of the reset (%d, %d) and one",
					c.Seq, c.Delivery, c.Attempt, c.Provider, reset.Delivery, reset.Attempt)
			}
			after.WriteString(c.Delta)
		}
	}
	if reset == nil {
		t.Fatalf("no reset in the stream: %+v", chunks)
	}
	t.Logf("%d chunks of delivery 1, reset at seq %d (delivery %d), done at seq %d", nBefore, reset.Seq, reset.Delivery, len(chunks))
	if nBefore < 3 || nBefore >= words {
		t.Errorf("%d chunks of delivery 1 before the reset, want the 3 or more heard and fewer than %d", nBefore, words)
	}
	if reset.Reason != "redelivered" || reset.Failed != "" || reset.Delivery <= 1 || reset.Attempt != 2 {
		t.Errorf("reset %+v: want reason redelivered, no failed provider, a delivery after 1, attempt 2", *reset)
	}
	if last := chunks[len(chunks)-1]; !last.Done || last.Error != "" || last.Delivery != reset.Delivery {
		t.Errorf("last message %+v: want done, no error, delivery %d", last, reset.Delivery)
	}
	if after.String() != reply.Content {
		t.Errorf("text after the reset %q differs from the stored reply %q", after.String(), reply.Content)
	}
	if !strings.HasPrefix(reply.Content, before.String()) {
		t.Errorf("the dead delivery's text %q is not the start of the answer %q", before.String(), reply.Content)
	}
	if reply.Deliveries != reset.Delivery {
		t.Errorf("reply made on delivery %d, the stream after the reset on %d", reply.Deliveries, reset.Delivery)
	}
}

// e2eServeStreamCrash starts `understudy serve` on c with a 1s ack_wait,
// so that a dead worker's claim is stale after 3s.
func e2eServeStreamCrash(t *testing.T, name string, c e2eConfig) *e2eProc {
	t.Helper()
	c.ackWait = "1s"
	return e2eServe(t, name, c)
}

// e2ePublishStream publishes request id on conv asking for a streamed answer.
func e2ePublishStream(t *testing.T, js jetstream.JetStream, conv, id string) {
	t.Helper()
	data, err := json.Marshal(map[string]any{"id": id, "conversation_id": conv, "stream": true,
		"messages": []map[string]string{{"role": "user", "content": "tell me a long story"}}})
	if err != nil {
		t.Fatal(err)
	}
	e2ePublishData(t, js, conv, id, data)
}

// e2eChunksHeard counts the answer's pieces heard live on a conversation's
// stream subject.
type e2eChunksHeard struct {
	mu sync.Mutex
	n  int
}

func (h *e2eChunksHeard) deltas() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

func e2eHearChunks(t *testing.T, nc *nats.Conn, conv string) *e2eChunksHeard {
	t.Helper()
	h := &e2eChunksHeard{}
	e2eSubscribe(t, nc, "chat.stream."+conv, func(m *nats.Msg) {
		var c chat.Chunk
		if json.Unmarshal(m.Data, &c) == nil && c.Delta != "" {
			h.mu.Lock()
			h.n++
			h.mu.Unlock()
		}
	})
	return h
}

// e2eReadChunks reads request id's messages of conv from the start of
// CHAT_STREAM with an ordered consumer, as a client resuming from seq 0
// does, up to its done.
func e2eReadChunks(t *testing.T, js jetstream.JetStream, conv, id string) []chat.Chunk {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, chat.StreamChunks, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"chat.stream." + conv}})
	if err != nil {
		t.Fatalf("ordered consumer on %s: %v", chat.StreamChunks, err)
	}
	var chunks []chat.Chunk
	for ctx.Err() == nil {
		m, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			continue // nothing yet: done comes after the reply is stored
		}
		var c chat.Chunk
		if err := json.Unmarshal(m.Data(), &c); err != nil {
			t.Fatalf("chunk %q is not JSON: %v", m.Data(), err)
		}
		if c.ID != id {
			continue
		}
		chunks = append(chunks, c)
		if c.Done {
			return chunks
		}
	}
	t.Fatalf("no done in %s for %s within 20s; read %s", chat.StreamChunks, id, fmt.Sprint(chunks))
	return nil
}
