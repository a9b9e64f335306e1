package chat_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/understudy-ai/understudy/chat"
)

// benchRequest is a typical request: a system prompt, a few turns, a
// deadline and metadata (about 1 KiB).
var benchRequest = []byte(`{"id":"4f9a1c2e-7b3d-4e8a-9c1f-2d6b8e0a5f37","conversation_id":"c-42",` +
	`"messages":[{"role":"system","content":"You are Lucy, a helpful assistant for an online shop. Answer briefly."},` +
	`{"role":"user","content":"` + strings.Repeat("where is my order? ", 12) + `"},` +
	`{"role":"assistant","content":"` + strings.Repeat("it left the warehouse yesterday. ", 8) + `"},` +
	`{"role":"user","content":"thanks, and when will it arrive?"}],` +
	`"max_tokens":512,"temperature":0.7,"deadline":"2026-01-20T12:00:30Z","metadata":{"user":"u-7","session":"s-19"}}`)

// BenchmarkDecodeRequest decodes and validates one request, as a worker
// does for every delivery.
//
//	go test -run='^$' -bench=DecodeRequest -benchmem ./chat/
func BenchmarkDecodeRequest(b *testing.B) {
	lim := chat.DecodeLimits{MaxBytes: 256 << 10, MaxMetadataBytes: 16 << 10}
	b.SetBytes(int64(len(benchRequest)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := chat.DecodeRequest(benchRequest, "c-42", lim); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMarshalReply encodes one ok reply of a request that fell back
// once, as a worker does before publishing it.
//
//	go test -run='^$' -bench=MarshalReply -benchmem ./chat/
func BenchmarkMarshalReply(b *testing.B) {
	reply := &chat.Reply{ID: "4f9a1c2e-7b3d-4e8a-9c1f-2d6b8e0a5f37", ConversationID: "c-42", Status: chat.StatusOK,
		Content: strings.Repeat("Your parcel should arrive tomorrow before noon. ", 6), Provider: "llama", Model: "llama-3.3-70b",
		Degraded: true, Attempts: []chat.Attempt{
			{Provider: "deepseek", Outcome: chat.OutcomeError, StatusCode: 503, LatencyMS: 41, Delivery: 1},
			{Provider: "llama", Outcome: chat.OutcomeOK, StatusCode: 200, LatencyMS: 812, Delivery: 1}},
		Usage: &chat.Usage{PromptTokens: 212, CompletionTokens: 48}, Deliveries: 1, QueuedMS: 3, LatencyMS: 870,
		Metadata: json.RawMessage(`{"user":"u-7","session":"s-19"}`)}
	data, err := chat.Marshal(reply)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := chat.Marshal(reply); err != nil {
			b.Fatal(err)
		}
	}
}
