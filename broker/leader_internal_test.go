package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/natscluster"
	"github.com/understudy-ai/understudy/internal/poll"
)

func internalCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func setUp(t *testing.T, cfg Config, replicas int) *Broker {
	t.Helper()
	subjects, err := chat.NewSubjects("chat")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Connect(internalCtx(t, 20*time.Second), cfg, "test", zerolog.Nop())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(b.Close)
	if err := b.Setup(internalCtx(t, 20*time.Second), Topology{Subjects: subjects, Replicas: replicas}); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return b
}

func store(t *testing.T, js jetstream.JetStream, subject, msgID, data string) uint64 {
	t.Helper()
	m := &nats.Msg{Subject: subject, Data: []byte(data), Header: nats.Header{}}
	if msgID != "" {
		m.Header.Set(chat.HeaderMsgID, msgID)
	}
	ack, err := js.PublishMsg(internalCtx(t, 10*time.Second), m)
	if err != nil {
		t.Fatalf("publish on %s: %v", subject, err)
	}
	return ack.Sequence
}

func TestLeaderReads(t *testing.T) {
	t.Parallel()
	b := setUp(t, Config{StoreDir: t.TempDir(), Listen: "-"}, 1)
	ctx := internalCtx(t, 20*time.Second)
	s := b.Subjects()
	replies := s.Stream(chat.KindReplies)
	r1 := store(t, b.js, s.Reply("c1"), "r1", "one")
	store(t, b.js, s.Reply("c2"), "r2", "two")
	r3 := store(t, b.js, s.Reply("c1"), "r3", "three")

	m, err := b.leaderGet(ctx, replies, r3)
	if err != nil || string(m.Data) != "three" || m.Subject != s.Reply("c1") || m.Header.Get(chat.HeaderMsgID) != "r3" || m.Sequence != r3 || m.Time.IsZero() {
		t.Fatalf("leaderGet(%d) = %+v, %v", r3, m, err)
	}
	if m, err := b.leaderGet(ctx, replies, 99); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("leaderGet(99) = %+v, %v; want ErrMsgNotFound", m, err)
	}
	if m, err := b.leaderLast(ctx, replies, s.Reply("c1")); err != nil || string(m.Data) != "three" {
		t.Errorf("leaderLast(c1) = %+v, %v", m, err)
	}
	if m, err := b.leaderLast(ctx, replies, s.Reply("nobody")); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("leaderLast(nobody) = %+v, %v; want ErrMsgNotFound", m, err)
	}
	if m, err := b.leaderNext(ctx, replies, s.Reply("c1"), r1+1, time.Time{}); err != nil || m.Sequence != r3 {
		t.Errorf("leaderNext(c1, %d) = %+v, %v; want seq %d", r1+1, m, err, r3)
	}
	if m, err := b.leaderNext(ctx, replies, s.Reply("c1"), r3+1, time.Time{}); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("leaderNext(c1, %d) = %+v, %v; want ErrMsgNotFound", r3+1, m, err)
	}
	if m, err := b.leaderNext(ctx, replies, s.Reply("c1"), 0, time.Now().Add(-time.Hour)); err != nil || m.Sequence != r1 {
		t.Errorf("leaderNext(c1, an hour ago) = %+v, %v; want seq %d", m, err, r1)
	}
	if m, err := b.leaderNext(ctx, replies, s.Reply("c1"), 0, time.Now().Add(time.Hour)); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("leaderNext(c1, in an hour) = %+v, %v; want ErrMsgNotFound", m, err)
	}
	if _, err := b.leaderGet(ctx, "NO_SUCH_STREAM", 1); err == nil || errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("leaderGet of a missing stream = %v; want an error other than ErrMsgNotFound", err)
	}
	// A KV entry is the last message on its key's subject.
	bucket := s.Stream(chat.KindClaims)
	if _, err := b.claims.Put(ctx, claimKey("q1"), []byte(`{"done":true}`)); err != nil {
		t.Fatal(err)
	}
	if m, err := b.leaderLast(ctx, "KV_"+bucket, "$KV."+bucket+"."+claimKey("q1")); err != nil || string(m.Data) != `{"done":true}` {
		t.Errorf("leaderLast of a claim = %+v, %v", m, err)
	}

	for _, c := range []struct {
		conv, id string
		since    time.Time
		want     bool
	}{
		{"c1", "r1", time.Time{}, true},
		{"c1", "r3", time.Time{}, true},
		{"c1", "r2", time.Time{}, false}, // on another conversation
		{"c2", "r2", time.Time{}, true},
		{"c1", "r9", time.Time{}, false},
		{"c1", "r3", time.Now().Add(-time.Hour), true},
		{"c1", "r1", time.Now().Add(time.Hour), false},
		{"nobody", "r1", time.Time{}, false},
	} {
		if got, err := b.FindReply(ctx, c.conv, c.id, c.since); err != nil || got != c.want {
			t.Errorf("FindReply(%s, %s, since %v) = %v, %v; want %v", c.conv, c.id, c.since, got, err, c.want)
		}
	}
}

// TestDecidingReadsAskTheLeader loses the replica a worker talks to: n3 is
// down while a request is stored on n1 and n2, then n1 and n2 go down and
// n3 comes back alone, without the request and without a leader. A direct
// get answers from n3's store ("not found"); a read that decides must not
// take that for the truth.
func TestDecidingReadsAskTheLeader(t *testing.T) {
	t.Parallel()
	c, err := natscluster.Start(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	b := setUp(t, Config{URL: c.URL(2)}, 3)
	s := b.Subjects()
	first := store(t, b.js, s.Request("c1"), "q1", `{"id":"q1"}`)
	poll.Until(t, 10*time.Second, "n3 to hold the first request", func() bool {
		_, err := b.requests.GetMsg(internalCtx(t, time.Second), first)
		return err == nil
	})

	c.Stop(2)
	nc, err := nats.Connect(c.URL(0))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	lost := store(t, js, s.Request("c1"), "q2", `{"id":"q2"}`)
	store(t, js, s.Reply("c1"), "q2", `{"id":"q2","status":"ok"}`)
	nc.Close()
	c.Stop(0)
	c.Stop(1)
	if err := c.Restart(2); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 15*time.Second, "the broker to reconnect to n3", b.Connected)

	if m, err := b.Request(internalCtx(t, time.Second), lost); errors.Is(err, jetstream.ErrMsgNotFound) || err == nil {
		t.Errorf("Request(%d) on a lone replica that lacks it = %+v, %v; want an error other than ErrMsgNotFound", lost, m, err)
	}
	if found, err := b.FindReply(internalCtx(t, time.Second), "c1", "q2", time.Time{}); err == nil {
		t.Errorf("FindReply on a lone replica that lacks the reply = %v, nil; want an error", found)
	}

	// With a leader again, both are read.
	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 15*time.Second, "the requests stream to have a leader", func() bool {
		l, err := b.StreamLeader(internalCtx(t, time.Second), s.Stream(chat.KindRequests))
		return err == nil && l != ""
	})
	ctx := internalCtx(t, 10*time.Second)
	if m, err := b.Request(ctx, lost); err != nil || string(m.Data) != `{"id":"q2"}` {
		t.Errorf("Request(%d) with a leader = %+v, %v", lost, m, err)
	}
	poll.Until(t, 15*time.Second, "the replies stream to have a leader", func() bool {
		l, err := b.StreamLeader(internalCtx(t, time.Second), s.Stream(chat.KindReplies))
		return err == nil && l != ""
	})
	if found, err := b.FindReply(ctx, "c1", "q2", time.Time{}); err != nil || !found {
		t.Errorf("FindReply with a leader = %v, %v; want true", found, err)
	}
}
