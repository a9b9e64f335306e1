package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// subj is the default subject scheme, prefix "chat".
var subj = mustSubjects("chat")

func mustSubjects(prefix string) chat.Subjects {
	s, err := chat.NewSubjects(prefix)
	if err != nil {
		panic(err)
	}
	return s
}

// testCtx is a context bounded well inside the package's time budget and
// cancelled when the test ends.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect starts an embedded JetStream server serving this process only,
// without running Setup.
func connect(t *testing.T) *broker.Broker {
	t.Helper()
	b, err := broker.Connect(testCtx(t), broker.Config{StoreDir: t.TempDir(), Listen: "-"}, "test", zerolog.Nop())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// newBroker connects to a fresh embedded server and runs Setup with topo
// (prefix "chat" unless topo names another).
func newBroker(t *testing.T, topo broker.Topology) *broker.Broker {
	t.Helper()
	b := connect(t)
	if topo.Subjects == (chat.Subjects{}) {
		topo.Subjects = subj
	}
	if err := b.Setup(testCtx(t), topo); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return b
}

// publish stores data on subject through JetStream and returns its ack.
func publish(t *testing.T, b *broker.Broker, subject string, data []byte, hdr nats.Header) *jetstream.PubAck {
	t.Helper()
	ack, err := b.JetStream().PublishMsg(testCtx(t), &nats.Msg{Subject: subject, Data: data, Header: hdr})
	if err != nil {
		t.Fatalf("publish on %s: %v", subject, err)
	}
	return ack
}

// fetch pulls up to max deliveries waiting up to wait, drains the channel
// (so Fetch's goroutine ends) and checks the pull's error.
func fetch(t *testing.T, b *broker.Broker, max int, wait time.Duration) []*broker.Delivery {
	t.Helper()
	ch, errf, err := b.Fetch(max, wait)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	var out []*broker.Delivery
	for d := range ch {
		out = append(out, d)
	}
	if err := errf(); err != nil {
		t.Fatalf("Fetch ended with %v", err)
	}
	return out
}

// fetchOne pulls exactly one delivery.
func fetchOne(t *testing.T, b *broker.Broker, wait time.Duration) *broker.Delivery {
	t.Helper()
	got := fetch(t, b, 1, wait)
	if len(got) != 1 {
		t.Fatalf("Fetch(1, %s) returned %d deliveries, want 1", wait, len(got))
	}
	return got[0]
}

// streamInfo reads a stream's info.
func streamInfo(t *testing.T, b *broker.Broker, name string) *jetstream.StreamInfo {
	t.Helper()
	ctx := testCtx(t)
	st, err := b.JetStream().Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", name, err)
	}
	return info
}

// consumerInfo reads the workers consumer's info on stream.
func consumerInfo(t *testing.T, b *broker.Broker, stream string) *jetstream.ConsumerInfo {
	t.Helper()
	ctx := testCtx(t)
	c, err := b.JetStream().Consumer(ctx, stream, chat.ConsumerWorkers)
	if err != nil {
		t.Fatalf("consumer %s/%s: %v", stream, chat.ConsumerWorkers, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	return info
}

// lastMsg reads the last message stored on subject in stream.
func lastMsg(t *testing.T, b *broker.Broker, stream, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	ctx := testCtx(t)
	st, err := b.JetStream().Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatalf("last message on %s in %s: %v", subject, stream, err)
	}
	return m
}

// scanAll collects what Scan passes to fn.
func scanAll(t *testing.T, b *broker.Broker, stream, filter string, since, until time.Time) []*broker.Stored {
	t.Helper()
	var out []*broker.Stored
	if err := b.Scan(testCtx(t), stream, filter, since, until, func(s *broker.Stored) error {
		out = append(out, s)
		return nil
	}); err != nil {
		t.Fatalf("Scan(%s, %q): %v", stream, filter, err)
	}
	return out
}

func isNotFound(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) ||
		errors.Is(err, jetstream.ErrConsumerNotFound)
}
