package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

func TestPublishReply(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	reply := &chat.Reply{ID: "req-01", ConversationID: "c-42", Status: chat.StatusOK, Content: "hello!", Provider: "llama",
		Attempts: []chat.Attempt{}, Deliveries: 1, Metadata: json.RawMessage(`{"user":"u-7"}`)}

	dup, err := b.PublishReply(ctx, "c-42", "req-01", reply)
	if err != nil || dup {
		t.Fatalf("first PublishReply = %v, %v; want false, nil", dup, err)
	}
	other := *reply
	other.Content = "a second answer"
	dup, err = b.PublishReply(ctx, "c-42", "req-01", &other)
	if err != nil || !dup {
		t.Fatalf("second PublishReply with the same id = %v, %v; want true, nil", dup, err)
	}
	// The same id in another conversation is the same request id: dropped.
	if dup, err := b.PublishReply(ctx, "c-43", "req-01", &other); err != nil || !dup {
		t.Errorf("same msg id on another conversation = %v, %v; want duplicate", dup, err)
	}
	if dup, err := b.PublishReply(ctx, "c-44", "invalid-7", &chat.Reply{ID: ""}); err != nil || dup {
		t.Errorf("another msg id = %v, %v; want stored", dup, err)
	}

	info := streamInfo(t, b, chat.StreamReplies)
	if info.State.Msgs != 2 {
		t.Errorf("replies stored = %d, want 2", info.State.Msgs)
	}
	// Duplicates are dropped while a request can be in flight, not 2 minutes.
	if info.Config.Duplicates != broker.DefaultRepliesDedupWindow {
		t.Errorf("replies duplicate window = %s, want %s", info.Config.Duplicates, broker.DefaultRepliesDedupWindow)
	}
	m := lastMsg(t, b, chat.StreamReplies, "chat.replies.c-42")
	if m.Header.Get(chat.HeaderMsgID) != "req-01" {
		t.Errorf("Nats-Msg-Id = %q", m.Header.Get(chat.HeaderMsgID))
	}
	var got chat.Reply
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != "req-01" || got.Content != "hello!" || got.Status != "ok" || string(got.Metadata) != `{"user":"u-7"}` {
		t.Errorf("stored reply = %+v (the first one must be kept)", got)
	}
	if m.Sequence != 1 {
		t.Errorf("last reply on c-42 is seq %d, want 1", m.Sequence)
	}
	if m := lastMsg(t, b, chat.StreamReplies, "chat.replies.c-44"); m.Header.Get(chat.HeaderMsgID) != "invalid-7" {
		t.Errorf("Nats-Msg-Id on c-44 = %q", m.Header.Get(chat.HeaderMsgID))
	}
}

// Request ids are any 1-128 characters (SPEC §3); the reply of each must be
// stored once and found again under its own id.
func TestPublishReplyArbitraryIDs(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	ids := []string{
		"req 1", "a.b.c", "*", ">", "ünïcödé-日本語", strings.Repeat("x", 128), strings.Repeat("🙂", 128),
		"x", "a b",
		// Ids with surrounding white space or control characters would be
		// mangled in the Nats-Msg-Id header; chat.DecodeRequest refuses them.
	}
	for _, id := range ids {
		dup, err := b.PublishReply(ctx, "c1", id, &chat.Reply{ID: id, ConversationID: "c1", Status: chat.StatusOK})
		if err != nil {
			t.Fatalf("PublishReply(%q): %v", id, err)
		}
		if dup {
			t.Errorf("PublishReply(%q) = duplicate: the reply of a distinct request id was dropped by the server", id)
		}
	}
	for _, id := range ids {
		found, err := b.FindReply(ctx, "c1", id, time.Time{})
		if err != nil {
			t.Fatalf("FindReply(%q): %v", id, err)
		}
		if !found {
			t.Errorf("FindReply(%q) = false after its reply was published", id)
		}
	}
}

func TestPublishDead(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	cases := []struct {
		name string
		data []byte
		dl   broker.DeadLetter
	}{
		{"with request id", []byte(`{"id":"req-01","messages":[]}`),
			broker.DeadLetter{Conv: "c-42", Code: chat.CodeProvidersExhausted, Reason: "deliveries ran out", RequestID: "req-01",
				Deliveries: 7, StreamSeq: 12, Subject: "chat.requests.c-42"}},
		{"without request id", []byte("not json \x00\xff\r\n\r\nNATS/1.0\r\n"),
			broker.DeadLetter{Conv: chat.InvalidToken, Code: chat.CodeInvalidRequest, Reason: "body is not a JSON request",
				Deliveries: 1, StreamSeq: 13, Subject: "chat.requests.bad token"}},
		{"empty body", []byte{},
			broker.DeadLetter{Conv: "c1", Code: chat.CodeDeadlineExceeded, Reason: "deadline passed", RequestID: "r 2",
				Deliveries: 3, StreamSeq: 14, Subject: "chat.requests.c1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := streamInfo(t, b, chat.StreamDead).State.Msgs
			for range 2 { // the second is a retried dead-lettering: deduplicated
				if err := b.PublishDead(ctx, c.data, c.dl); err != nil {
					t.Fatalf("PublishDead: %v", err)
				}
			}
			if n := streamInfo(t, b, chat.StreamDead).State.Msgs; n != before+1 {
				t.Errorf("dead letters stored for one stream seq published twice = %d, want 1", n-before)
			}
			m := lastMsg(t, b, chat.StreamDead, subj.Dead(c.dl.Conv))
			if !bytes.Equal(m.Data, c.data) {
				t.Errorf("dead letter body = %q, want the original %q", m.Data, c.data)
			}
			want := map[string]string{
				chat.HeaderCode:        c.dl.Code,
				chat.HeaderReason:      c.dl.Reason,
				chat.HeaderDeliveries:  strconv.FormatUint(c.dl.Deliveries, 10),
				chat.HeaderStreamSeq:   strconv.FormatUint(c.dl.StreamSeq, 10),
				chat.HeaderConvSubject: c.dl.Subject,
			}
			for k, v := range want {
				if got := m.Header.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if got, ok := m.Header[chat.HeaderRequestID]; c.dl.RequestID == "" && ok {
				t.Errorf("header %s = %q, want it omitted for an unreadable id", chat.HeaderRequestID, got)
			} else if c.dl.RequestID != "" && m.Header.Get(chat.HeaderRequestID) != c.dl.RequestID {
				t.Errorf("header %s = %q, want %q", chat.HeaderRequestID, m.Header.Get(chat.HeaderRequestID), c.dl.RequestID)
			}
		})
	}
	t.Run("another stream seq is another dead letter", func(t *testing.T) {
		dl := cases[0].dl
		dl.StreamSeq = 99
		before := streamInfo(t, b, chat.StreamDead).State.Msgs
		if err := b.PublishDead(ctx, cases[0].data, dl); err != nil {
			t.Fatal(err)
		}
		if n := streamInfo(t, b, chat.StreamDead).State.Msgs; n != before+1 {
			t.Errorf("stored %d, want 1", n-before)
		}
	})
	t.Run("reason with line breaks keeps the other headers", func(t *testing.T) {
		dl := broker.DeadLetter{Conv: "c9", Code: "x", Reason: "line1\r\nUnderstudy-Code: forged\nline3", RequestID: "r9",
			Deliveries: 2, StreamSeq: 200, Subject: "chat.requests.c9"}
		if err := b.PublishDead(ctx, []byte("b"), dl); err != nil {
			t.Fatal(err)
		}
		m := lastMsg(t, b, chat.StreamDead, "chat.dead.c9")
		if got := m.Header.Values(chat.HeaderCode); len(got) != 1 || got[0] != "x" {
			t.Errorf("Understudy-Code = %q: a reason's line break injected a header", got)
		}
		if r := m.Header.Get(chat.HeaderReason); !strings.Contains(r, "line1") || !strings.Contains(r, "line3") {
			t.Errorf("Understudy-Reason = %q", r)
		}
	})
}

func TestPublishEvent(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	at := time.Date(2026, 1, 20, 12, 0, 0, 0, time.UTC)
	evs := []struct {
		ev      chat.Event
		key     string
		subject string
	}{
		{chat.Event{Type: chat.EventAttempt, At: at, Worker: "w1", RequestID: "r1", ConversationID: "c1", Provider: "deepseek",
			Outcome: "error", StatusCode: 503, LatencyMS: 41}, "c1", "chat.events.attempt.c1"},
		{chat.Event{Type: chat.EventRetry, At: at, Worker: "w1", RequestID: "r1", DelayMS: 1000}, "c1", "chat.events.retry.c1"},
		{chat.Event{Type: chat.EventDead, At: at, Code: chat.CodeInvalidRequest}, chat.InvalidToken, "chat.events.dead._invalid"},
		{chat.Event{Type: chat.EventBreaker, At: at, Provider: "deepseek", From: "closed", To: "open"}, "deepseek", "chat.events.breaker.deepseek"},
	}
	for i := range evs {
		b.PublishEvent(&evs[i].ev, evs[i].key)
		if evs[i].ev.V != chat.EventVersion {
			t.Errorf("PublishEvent left V = %d on the event, want %d", evs[i].ev.V, chat.EventVersion)
		}
	}
	b.FlushEvents(ctx)
	if n := streamInfo(t, b, chat.StreamEvents).State.Msgs; n != uint64(len(evs)) {
		t.Fatalf("events stored after FlushEvents = %d, want %d", n, len(evs))
	}
	for _, e := range evs {
		m := lastMsg(t, b, chat.StreamEvents, e.subject)
		var raw map[string]any
		if err := json.Unmarshal(m.Data, &raw); err != nil {
			t.Fatalf("event on %s: %v", e.subject, err)
		}
		if raw["v"] != float64(1) {
			t.Errorf("event on %s: v = %v, want 1", e.subject, raw["v"])
		}
		var got chat.Event
		if err := json.Unmarshal(m.Data, &got); err != nil {
			t.Fatal(err)
		}
		want := e.ev
		if !got.At.Equal(want.At) {
			t.Errorf("event on %s: at = %v", e.subject, got.At)
		}
		got.At, want.At = time.Time{}, time.Time{}
		if got != want {
			t.Errorf("event on %s = %+v, want %+v", e.subject, got, want)
		}
	}
	// FlushEvents with nothing pending, or with a finished context, returns.
	b.FlushEvents(ctx)
	done, cancel := context.WithCancel(ctx)
	cancel()
	b.FlushEvents(done)
}

func TestPublishStatusIsNotStored(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	sub, err := b.Conn().SubscribeSync("chat.status.c-42")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	b.PublishStatus("c-42", map[string]any{"id": "r1", "state": "queued", "retry_in_ms": 1000})
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("status not received: %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal(m.Data, &got); err != nil || got["state"] != "queued" || got["id"] != "r1" {
		t.Errorf("status = %s (%v)", m.Data, err)
	}
	// Not persisted: no stream captures the status subject.
	if name, err := b.JetStream().StreamNameBySubject(ctx, "chat.status.c-42"); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("stream for chat.status.c-42 = %q, %v; want none", name, err)
	}
	for _, s := range []string{chat.StreamRequests, chat.StreamReplies, chat.StreamEvents, chat.StreamDead} {
		if n := streamInfo(t, b, s).State.Msgs; n != 0 {
			t.Errorf("%s holds %d messages after a status", s, n)
		}
	}
	// Unencodable values are dropped, not published and not a panic.
	b.PublishStatus("c-42", map[string]any{"bad": make(chan int)})
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(100 * time.Millisecond); err == nil {
		t.Errorf("an unencodable status was published: %q", m.Data)
	}
}

func TestPublishRaw(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	hdr := nats.Header{}
	hdr.Set(chat.HeaderMsgID, "redrive-1")
	hdr.Set("X-A", "b")
	for range 2 {
		if err := b.PublishRaw(ctx, subj.Request("c1"), []byte("raw"), hdr); err != nil {
			t.Fatal(err)
		}
	}
	if n := streamInfo(t, b, chat.StreamRequests).State.Msgs; n != 1 {
		t.Errorf("requests stored = %d, want 1 (same Nats-Msg-Id)", n)
	}
	m := lastMsg(t, b, chat.StreamRequests, "chat.requests.c1")
	if string(m.Data) != "raw" || m.Header.Get("X-A") != "b" {
		t.Errorf("stored = %q %v", m.Data, m.Header)
	}
	if err := b.PublishRaw(ctx, "nowhere.at.all", []byte("x"), nil); err == nil {
		t.Errorf("PublishRaw on a subject no stream captures: no error")
	}
}

func TestFindReply(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	// Enough other replies on the conversation that the one sought is
	// beyond the first batch of the scan.
	for i := range broker.ScanBatch + 100 {
		id := fmt.Sprintf("other-%d", i)
		if _, err := b.PublishReply(ctx, "c1", id, &chat.Reply{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.PublishReply(ctx, "c2", "r1-elsewhere", &chat.Reply{ID: "r1-elsewhere"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.PublishReply(ctx, "c1", "r1", &chat.Reply{ID: "r1"}); err != nil {
		t.Fatal(err)
	}
	at := lastMsg(t, b, chat.StreamReplies, "chat.replies.c1").Time
	if _, err := b.PublishReply(ctx, "c1", "after", &chat.Reply{ID: "after"}); err != nil {
		t.Fatal(err)
	}
	if later := lastMsg(t, b, chat.StreamReplies, "chat.replies.c1").Time; !later.After(at) {
		t.Fatalf("test setup: two replies stored at the same time %v", at)
	}
	cases := []struct {
		name  string
		conv  string
		id    string
		since time.Time
		want  bool
	}{
		{"since the beginning", "c1", "r1", time.Time{}, true},
		{"since exactly its time", "c1", "r1", at, true},
		{"since just before", "c1", "r1", at.Add(-time.Millisecond), true},
		{"since after it", "c1", "r1", at.Add(time.Nanosecond), false},
		{"another conversation", "c2", "r1", time.Time{}, false},
		{"a conversation with no replies", "c3", "r1", time.Time{}, false},
		{"an id never replied", "c1", "r2", time.Time{}, false},
		{"a prefix of an id", "c1", "other-1", time.Time{}, true},
		{"not a prefix match", "c1", "other", time.Time{}, false},
		{"the one in c2", "c2", "r1-elsewhere", time.Time{}, true},
		{"a later reply after since", "c1", "after", at.Add(time.Nanosecond), true},
		{"since in the future", "c1", "after", time.Now().Add(time.Hour), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := b.FindReply(ctx, c.conv, c.id, c.since)
			if err != nil {
				t.Fatalf("FindReply: %v", err)
			}
			if got != c.want {
				t.Errorf("FindReply(%q, %q, %v) = %v, want %v", c.conv, c.id, c.since, got, c.want)
			}
		})
	}
}

// A request at the size limit, from a subject with a long (invalid) token,
// must still fit in one dead letter: otherwise it would be put back forever.
func TestPublishDeadAlwaysFits(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	limit := int(b.Conn().MaxPayload())
	data := []byte(strings.Repeat("x", limit-100))
	subject := subj.Request(strings.Repeat("é", 2000)) // 4000 bytes of token
	reason := strings.Repeat("ü", 2000)
	err := b.PublishDead(ctx, data, broker.DeadLetter{Conv: chat.InvalidToken, Code: chat.CodeInvalidRequest,
		Reason: reason, RequestID: strings.Repeat("🙂", 128), Deliveries: 1, StreamSeq: 9, Subject: subject})
	if err != nil {
		t.Fatalf("PublishDead: %v", err)
	}
	m := lastMsg(t, b, chat.StreamDead, subj.Dead(chat.InvalidToken))
	if got := m.Header.Get(chat.HeaderTruncated); got != strconv.Itoa(len(data)) {
		t.Errorf("Understudy-Truncated %q, want %d", got, len(data))
	}
	for _, h := range []string{chat.HeaderReason, chat.HeaderConvSubject} {
		if v := m.Header.Get(h); !utf8.ValidString(v) || len(v) > 1100 {
			t.Errorf("%s: %d bytes, valid UTF-8 %v", h, len(v), utf8.ValidString(v))
		}
	}
}
