package broker_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
)

func TestFetchBeforeSetup(t *testing.T) {
	t.Parallel()
	b := connect(t)
	ch, errf, err := b.Fetch(1, time.Second)
	if !errors.Is(err, broker.ErrNotReady) {
		t.Fatalf("Fetch before Setup: err = %v, want ErrNotReady", err)
	}
	if ch != nil || errf != nil {
		t.Errorf("Fetch before Setup returned a channel or error func")
	}
	if b.Ready() {
		t.Errorf("Ready() before Setup = true")
	}
}

func TestFetchDelivery(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{AckWait: 10 * time.Second})
	ctx := testCtx(t)
	data := []byte(`{"id":"r1","messages":[{"role":"user","content":"hi"}]}`)
	hdr := nats.Header{}
	hdr.Set(chat.HeaderMsgID, "r1")
	hdr.Set("X-Trace", "abc")
	ack := publish(t, b, subj.Request("c-42"), data, hdr)
	stored, err := b.Request(ctx, ack.Sequence)
	if err != nil {
		t.Fatalf("Request(%d): %v", ack.Sequence, err)
	}

	d := fetchOne(t, b, 2*time.Second)
	if d.Subject != "chat.requests.c-42" {
		t.Errorf("Subject = %q", d.Subject)
	}
	if !bytes.Equal(d.Data, data) {
		t.Errorf("Data = %q, want %q", d.Data, data)
	}
	if d.Header.Get(chat.HeaderMsgID) != "r1" || d.Header.Get("X-Trace") != "abc" {
		t.Errorf("Header = %v", d.Header)
	}
	if d.StreamSeq != ack.Sequence {
		t.Errorf("StreamSeq = %d, want %d", d.StreamSeq, ack.Sequence)
	}
	if d.NumDelivered != 1 {
		t.Errorf("NumDelivered = %d, want 1", d.NumDelivered)
	}
	if !d.Published.Equal(stored.Time) {
		t.Errorf("Published = %v, want the stored time %v", d.Published, stored.Time)
	}
	pending, ackPending, err := b.Backlog(ctx)
	if err != nil || pending != 0 || ackPending != 1 {
		t.Errorf("Backlog while delivered = %d, %d, %v; want 0, 1, nil", pending, ackPending, err)
	}

	if err := d.NakWithDelay(0); err != nil {
		t.Fatal(err)
	}
	d2 := fetchOne(t, b, 2*time.Second)
	if d2.StreamSeq != d.StreamSeq || d2.NumDelivered != 2 {
		t.Errorf("after NakWithDelay(0): seq %d delivered %d times, want seq %d delivered 2 times", d2.StreamSeq, d2.NumDelivered, d.StreamSeq)
	}
	if !bytes.Equal(d2.Data, data) || !d2.Published.Equal(d.Published) {
		t.Errorf("redelivery differs: %q at %v", d2.Data, d2.Published)
	}
	if err := d2.Ack(); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "the ack to leave ack-pending", func() bool {
		p, a, err := b.Backlog(ctx)
		return err == nil && p == 0 && a == 0
	})
	if got := fetch(t, b, 1, 300*time.Millisecond); len(got) != 0 {
		t.Errorf("an acked request was delivered again: seq %d", got[0].StreamSeq)
	}
	// Acked requests stay in the stream for replay.
	if n := streamInfo(t, b, chat.StreamRequests).State.Msgs; n != 1 {
		t.Errorf("requests stored after the ack = %d, want 1", n)
	}
}

func TestFetchBatchInOrder(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{AckWait: 10 * time.Second})
	for _, c := range []string{"a", "b", "c", "d"} {
		publish(t, b, subj.Request(c), []byte(c), nil)
	}
	// The consumer's pending count follows the stream asynchronously.
	poll.Until(t, 5*time.Second, "a backlog of 4", func() bool {
		pending, _, err := b.Backlog(testCtx(t))
		return err == nil && pending == 4
	})
	got := fetch(t, b, 4, 2*time.Second)
	if len(got) != 4 {
		t.Fatalf("Fetch(4) returned %d", len(got))
	}
	for i, d := range got {
		if d.StreamSeq != uint64(i+1) || string(d.Data) != string(rune('a'+i)) {
			t.Errorf("delivery %d: seq %d data %q", i, d.StreamSeq, d.Data)
		}
		if len(d.Header) != 0 {
			t.Errorf("delivery %d: headers %v, want none", i, d.Header)
		}
		_ = d.Ack()
	}
}

func TestTermStopsRedelivery(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	ctx := testCtx(t)
	publish(t, b, subj.Request("c1"), []byte("bad"), nil)
	d := fetchOne(t, b, 2*time.Second)
	if err := d.Term("invalid_request: test"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "the terminated message to leave ack-pending", func() bool {
		p, a, err := b.Backlog(ctx)
		return err == nil && p == 0 && a == 0
	})
	// Longer than AckWait: a message merely left unacked would be back.
	if got := fetch(t, b, 1, 1500*time.Millisecond); len(got) != 0 {
		t.Fatalf("a terminated message was redelivered (seq %d, delivery %d)", got[0].StreamSeq, got[0].NumDelivered)
	}
}

func TestUnackedIsRedeliveredAfterAckWait(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	publish(t, b, subj.Request("c1"), []byte("x"), nil)
	d := fetchOne(t, b, 2*time.Second)
	// Neither acked nor kept in progress: back after AckWait (1 s).
	d2 := fetchOne(t, b, 5*time.Second)
	if d2.StreamSeq != d.StreamSeq || d2.NumDelivered != 2 {
		t.Fatalf("redelivery: seq %d delivery %d, want seq %d delivery 2", d2.StreamSeq, d2.NumDelivered, d.StreamSeq)
	}
	_ = d2.Ack()
}

func TestInProgressKeepsTheMessage(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{AckWait: time.Second})
	publish(t, b, subj.Request("c1"), []byte("long call"), nil)
	d := fetchOne(t, b, 2*time.Second)

	// 2.5 s, more than twice AckWait, with InProgress every ~300 ms; the
	// waiting is a competing Fetch that must come back empty.
	start := time.Now()
	for time.Since(start) < 2500*time.Millisecond {
		if err := d.InProgress(); err != nil {
			t.Fatalf("InProgress: %v", err)
		}
		if got := fetch(t, b, 1, 300*time.Millisecond); len(got) != 0 {
			t.Fatalf("a message kept InProgress was redelivered after %s (delivery %d)", time.Since(start).Round(time.Millisecond), got[0].NumDelivered)
		}
	}
	if err := d.NakWithDelay(0); err != nil {
		t.Fatal(err)
	}
	d2 := fetchOne(t, b, 2*time.Second)
	if d2.NumDelivered != 2 {
		t.Fatalf("after 2.5 s InProgress and a nak: delivery %d, want 2 (it was redelivered meanwhile)", d2.NumDelivered)
	}
	_ = d2.Ack()
}

func TestRequestReadsStoredRequest(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	hdr := nats.Header{}
	hdr.Set(chat.HeaderMsgID, "r2")
	publish(t, b, subj.Request("c1"), []byte("one"), nil)
	ack := publish(t, b, subj.Request("c2"), []byte("two"), hdr)
	m, err := b.Request(ctx, ack.Sequence)
	if err != nil {
		t.Fatalf("Request(%d): %v", ack.Sequence, err)
	}
	if m.Seq != 2 || m.Subject != "chat.requests.c2" || string(m.Data) != "two" || m.Header.Get(chat.HeaderMsgID) != "r2" || m.Time.IsZero() {
		t.Errorf("Request(2) = %+v", m)
	}
	if _, err := b.Request(ctx, 99); err == nil {
		t.Errorf("Request(99) of a missing sequence: no error")
	}
}

func TestOnMaxDeliveries(t *testing.T) {
	t.Parallel()
	// MaxDeliveries 1 gives the consumer MaxDeliver 4.
	b := newBroker(t, broker.Topology{MaxDeliveries: 1, AckWait: 10 * time.Second})
	type adv struct{ seq, deliveries uint64 }
	var (
		mu   sync.Mutex
		advs []adv
	)
	stop, err := b.OnMaxDeliveries(func(seq, deliveries uint64) {
		mu.Lock()
		advs = append(advs, adv{seq, deliveries})
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	publish(t, b, subj.Request("c1"), []byte("keep"), nil) // seq 1, acked normally
	ack := publish(t, b, subj.Request("c1"), []byte("doomed"), nil)
	if d := fetchOne(t, b, 2*time.Second); d.StreamSeq != 1 {
		t.Fatalf("first delivery is seq %d", d.StreamSeq)
	} else {
		_ = d.Ack()
	}
	for i := uint64(1); i <= 4; i++ {
		d := fetchOne(t, b, 2*time.Second)
		if d.StreamSeq != ack.Sequence || d.NumDelivered != i {
			t.Fatalf("delivery: seq %d #%d, want seq %d #%d", d.StreamSeq, d.NumDelivered, ack.Sequence, i)
		}
		if err := d.NakWithDelay(0); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 10*time.Second, "the MAX_DELIVERIES advisory", func() bool {
		// A pull gives the server a reason to look at the redelivery; the
		// message must not come a fifth time.
		if got := fetch(t, b, 1, 200*time.Millisecond); len(got) != 0 {
			t.Fatalf("delivered a fifth time (#%d) with MaxDeliver 4", got[0].NumDelivered)
		}
		mu.Lock()
		defer mu.Unlock()
		return len(advs) > 0
	})
	mu.Lock()
	got := append([]adv(nil), advs...)
	mu.Unlock()
	if len(got) != 1 || got[0].seq != ack.Sequence || got[0].deliveries != 4 {
		t.Errorf("advisories = %+v, want one for seq %d after 4 deliveries", got, ack.Sequence)
	}
	// The request is still there to be read and dead-lettered.
	m, err := b.Request(testCtx(t), got[0].seq)
	if err != nil || string(m.Data) != "doomed" {
		t.Errorf("Request(%d) = %+v, %v", got[0].seq, m, err)
	}
}
