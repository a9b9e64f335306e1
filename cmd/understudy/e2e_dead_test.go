package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// A request given up on keeps its publisher's headers in its dead letter,
// prefixed, so that a redrive from CHAT_DEAD can republish exactly what was
// sent.
func TestDeadLetterKeepsPublisherHeaders(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	provider, url := e2eSim(t, sim.Config{Model: "sim-dead"})
	provider.SetMode(sim.ModeReject) // every provider rejects: invalid_request, dead-lettered at once
	cfg := e2eConfig{natsURL: ns.ClientURL(), maxDeliveries: 1, providers: []e2eProvider{{"primary", url, "sim-dead"}}}
	e2eServe(t, "worker", cfg)
	_, js := e2eClient(t, ns.ClientURL())

	data, err := json.Marshal(map[string]any{"id": "hdr-1", "conversation_id": "c-hdr",
		"messages": []map[string]string{{"role": "user", "content": "refuse me"}}})
	if err != nil {
		t.Fatal(err)
	}
	sent := nats.Header{chat.HeaderMsgID: {"hdr-1"}, "Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "X-Tenant": {"acme", "eu"}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: "chat.requests.c-hdr", Data: data, Header: sent}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "a dead letter", func() bool { return e2eStreamMsgs(t, js, chat.StreamDead) == 1 })
	st, err := js.Stream(ctx, chat.StreamDead)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, "chat.dead.c-hdr")
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(chat.HeaderCode) != chat.CodeInvalidRequest {
		t.Errorf("dead letter code %q, want %s", m.Header.Get(chat.HeaderCode), chat.CodeInvalidRequest)
	}
	got := broker.OriginalHeaders(m.Header)
	for k, v := range sent {
		if g := got.Values(k); len(g) != len(v) || (len(v) > 0 && g[0] != v[0]) || (len(v) > 1 && g[1] != v[1]) {
			t.Errorf("dead letter keeps %s as %q, want %q", broker.HeaderOrigPrefix+k, g, v)
		}
	}
	if string(m.Data) != string(data) {
		t.Errorf("dead letter body %q, want the request's bytes", m.Data)
	}
}
