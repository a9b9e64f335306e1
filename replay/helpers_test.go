package replay_test

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// testCtx is a context bounded by the test's deadline (or a minute).
func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newBroker starts an embedded server with the streams of every prefix.
func newBroker(t *testing.T, prefixes ...string) (*broker.Broker, []chat.Subjects) {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	b, err := broker.Connect(ctx, broker.Config{StoreDir: t.TempDir(), Listen: "-"}, "test", zerolog.Nop())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(b.Close)
	var subjs []chat.Subjects
	for _, p := range prefixes {
		s, err := chat.NewSubjects(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Setup(ctx, broker.Topology{Subjects: s}); err != nil {
			t.Fatalf("Setup %s: %v", p, err)
		}
		subjs = append(subjs, s)
	}
	return b, subjs
}

// jsPublisher is a replay.Publisher over the real JetStream.
type jsPublisher struct{ js jetstream.JetStream }

func (p jsPublisher) PublishRaw(ctx context.Context, subject string, data []byte, hdr nats.Header) error {
	_, err := p.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: hdr})
	return err
}

// trail publishes synthetic traffic the way the chat API and the workers do.
type trail struct {
	t    *testing.T
	js   jetstream.JetStream
	subj chat.Subjects
}

func (tr trail) publish(subject string, data []byte, hdr nats.Header) *jetstream.PubAck {
	tr.t.Helper()
	ctx := testCtx(tr.t, 10*time.Second)
	ack, err := tr.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: hdr})
	if err != nil {
		tr.t.Fatalf("publish %s: %v", subject, err)
	}
	return ack
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func msgID(id string) nats.Header {
	h := nats.Header{}
	if id != "" {
		h.Set(chat.HeaderMsgID, id)
	}
	return h
}

// request publishes a valid request and returns its stream sequence.
func (tr trail) request(conv, id string) uint64 {
	tr.t.Helper()
	req := chat.Request{ID: id, Messages: []chat.Message{{Role: chat.RoleUser, Content: "hello " + id}}}
	return tr.publish(tr.subj.Request(conv), mustJSON(tr.t, req), msgID(id)).Sequence
}

// raw publishes request bytes as they are.
func (tr trail) raw(conv string, data []byte, hdr nats.Header) uint64 {
	tr.t.Helper()
	return tr.publish(tr.subj.Request(conv), data, hdr).Sequence
}

// reply stores r on its conversation's reply subject as a worker does, with
// Nats-Msg-Id msgid.
func (tr trail) reply(r chat.Reply, msgid string) {
	tr.t.Helper()
	tr.publish(tr.subj.Reply(r.ConversationID), mustJSON(tr.t, r), msgID(msgid))
}

func (tr trail) ok(conv, id, provider string, degraded bool) {
	tr.t.Helper()
	tr.reply(chat.Reply{ID: id, ConversationID: conv, Status: chat.StatusOK, Content: "hi", Provider: provider, Degraded: degraded, Deliveries: 1}, id)
}

func (tr trail) failed(conv, id, msgid, code string) {
	tr.t.Helper()
	tr.reply(chat.Reply{ID: id, ConversationID: conv, Status: chat.StatusFailed, Error: &chat.ErrorBody{Code: code, Message: code}}, msgid)
}

func (tr trail) dead(conv string, data []byte, id, code string, seq uint64) {
	tr.t.Helper()
	h := nats.Header{}
	h.Set(chat.HeaderMsgID, "dead-"+strconv.FormatUint(seq, 10))
	h.Set(chat.HeaderCode, code)
	h.Set(chat.HeaderReason, "given up: "+code)
	if id != "" {
		h.Set(chat.HeaderRequestID, id)
	}
	h.Set(chat.HeaderDeliveries, "3")
	h.Set(chat.HeaderStreamSeq, strconv.FormatUint(seq, 10))
	tr.publish(tr.subj.Dead(conv), data, h)
}

func (tr trail) event(ev chat.Event, key string) {
	tr.t.Helper()
	ev.V = chat.EventVersion
	if ev.At.IsZero() {
		ev.At = time.Now()
	}
	tr.publish(tr.subj.Event(ev.Type, key), mustJSON(tr.t, ev), nil)
}

func (tr trail) attempt(conv, id, provider string, o chat.Outcome) {
	tr.t.Helper()
	code := map[chat.Outcome]int{chat.OutcomeOK: 200, chat.OutcomeError: 503}[o]
	tr.event(chat.Event{Type: chat.EventAttempt, Worker: "w-1", RequestID: id, ConversationID: conv, Delivery: 1,
		Provider: provider, Outcome: o, StatusCode: code, LatencyMS: 40}, conv)
}

func (tr trail) retry(conv, id string) {
	tr.t.Helper()
	tr.event(chat.Event{Type: chat.EventRetry, Worker: "w-1", RequestID: id, ConversationID: conv, DelayMS: 1000}, conv)
}

// breaker publishes a transition and returns its time.
func (tr trail) breaker(worker, provider, from, to string) time.Time {
	tr.t.Helper()
	at := time.Now().UTC()
	tr.event(chat.Event{Type: chat.EventBreaker, At: at, Worker: worker, Provider: provider, From: from, To: to}, provider)
	return at
}
