package broker_test

import (
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// A dead letter keeps the publisher's own headers, prefixed, so a redrive
// from CHAT_DEAD republishes exactly what was sent; Nats-Msg-Id is prefixed
// too (it must not dedupe the dead letter), and headers beyond the bound are
// dropped whole and named, so the dead letter still fits in max_payload.
func TestPublishDeadKeepsPublisherHeaders(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	orig := nats.Header{
		chat.HeaderMsgID: {"req-7"},
		"X-Trace":        {"abc"},
		"X-Multi":        {"a", "b"},
		"x-lower-case":   {"kept as written"},
		"X-Big":          {strings.Repeat("z", 5000)},
	}
	dl := broker.DeadLetter{Conv: "c-7", Code: chat.CodeProvidersExhausted, Reason: "r", RequestID: "req-7",
		Deliveries: 3, StreamSeq: 7, Subject: "chat.requests.c-7", Header: orig}
	if err := b.PublishDead(ctx, []byte(`{"id":"req-7"}`), dl); err != nil {
		t.Fatalf("PublishDead: %v", err)
	}
	m := lastMsg(t, b, chat.StreamDead, subj.Dead("c-7"))
	if got := m.Header.Get(broker.HeaderOrigPrefix + chat.HeaderMsgID); got != "req-7" {
		t.Errorf("%s%s = %q, want the publisher's req-7", broker.HeaderOrigPrefix, chat.HeaderMsgID, got)
	}
	if got := m.Header.Get(chat.HeaderMsgID); got != "dead-7" {
		t.Errorf("the dead letter's own Nats-Msg-Id = %q, want dead-7", got)
	}
	want := nats.Header{}
	for k, v := range orig {
		if k != "X-Big" {
			want[k] = v
		}
	}
	if got := broker.OriginalHeaders(m.Header); !reflect.DeepEqual(got, want) {
		t.Errorf("OriginalHeaders = %v, want %v", got, want)
	}
	if got := m.Header.Get(broker.HeaderDroppedHeaders); got != "X-Big" {
		t.Errorf("%s = %q, want X-Big", broker.HeaderDroppedHeaders, got)
	}

	t.Run("the publisher's Nats-Msg-Id does not dedupe dead letters", func(t *testing.T) {
		before := streamInfo(t, b, chat.StreamDead).State.Msgs
		dl := dl
		dl.StreamSeq = 8
		if err := b.PublishDead(ctx, []byte(`{"id":"req-7"}`), dl); err != nil {
			t.Fatal(err)
		}
		if n := streamInfo(t, b, chat.StreamDead).State.Msgs; n != before+1 {
			t.Errorf("stored %d, want 1", n-before)
		}
	})
	t.Run("a request at the size limit with many headers still fits", func(t *testing.T) {
		limit := int(b.Conn().MaxPayload())
		hdr := nats.Header{}
		for i := range 200 {
			hdr.Set("X-H-"+strconv.Itoa(i), strings.Repeat("v", 900))
		}
		data := []byte(strings.Repeat("x", limit-100))
		err := b.PublishDead(ctx, data, broker.DeadLetter{Conv: "c-8", Code: chat.CodeProvidersExhausted, Reason: strings.Repeat("ü", 2000),
			RequestID: "r", Deliveries: 1, StreamSeq: 9, Subject: "chat.requests.c-8", Header: hdr})
		if err != nil {
			t.Fatalf("PublishDead: %v", err)
		}
		m := lastMsg(t, b, chat.StreamDead, subj.Dead("c-8"))
		kept := broker.OriginalHeaders(m.Header)
		if len(kept) == 0 || len(kept) == len(hdr) {
			t.Errorf("kept %d of %d headers, want some, not all", len(kept), len(hdr))
		}
		for k, v := range kept {
			if !reflect.DeepEqual(v, hdr[k]) {
				t.Errorf("header %s kept as %q, want it whole", k, v)
			}
		}
		if d := m.Header.Get(broker.HeaderDroppedHeaders); d == "" || len(d) > 600 {
			t.Errorf("%s: %d bytes, want the dropped names, bounded", broker.HeaderDroppedHeaders, len(d))
		}
	})
}
