package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
)

// Streamed answers: every chunk a worker streams is kept a short while in
// s.Stream(chat.KindStream) (CHAT_STREAM by default), on <prefix>.stream.<conv>,
// so that a client that reconnects reads from the last seq it saw, and one
// that comes late still reads the answer chunk by chunk.

// Defaults of the chunks' stream.
const (
	DefaultChunksMaxAge = 10 * time.Minute
	StorageMemory       = "memory"
	StorageFile         = "file"
)

func (b *Broker) setupChunks(ctx context.Context, t Topology) error {
	maxAge := t.ChunksMaxAge
	if maxAge == 0 {
		maxAge = DefaultChunksMaxAge
	}
	storage := jetstream.MemoryStorage
	if t.ChunksStorage == StorageFile {
		storage = jetstream.FileStorage
	}
	s := t.Subjects
	_, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: s.Stream(chat.KindStream), Subjects: []string{s.AllChunks()}, Description: "streamed answers, chunk by chunk, kept a short while for clients that resume",
		Retention: jetstream.LimitsPolicy, Storage: storage, MaxAge: maxAge, Replicas: t.Replicas, AllowDirect: true,
		Duplicates: min(maxAge, dupWindow),
	})
	if err != nil {
		return fmt.Errorf("create or update stream %s: %w", s.Stream(chat.KindStream), err)
	}
	return nil
}

// PublishChunk publishes one chunk of conv's stream without waiting for
// its acknowledgement: the future says whether it was stored.
func (b *Broker) PublishChunk(conv string, c *chat.Chunk) (jetstream.PubAckFuture, error) {
	data, err := chat.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode chunk: %w", err)
	}
	msg := &nats.Msg{Subject: b.topo.Subjects.Chunk(conv), Data: data, Header: nats.Header{}}
	msg.Header.Set(chat.HeaderRequestID, c.ID)
	f, err := b.js.PublishMsgAsync(msg)
	if err != nil {
		return nil, publishError("publish chunk", err)
	}
	return f, nil
}

// LastChunk returns the last chunk stored for request id on conv's stream
// (Seq 0 when there is none). The conversation's last chunk is
// read first (usually the request's own); otherwise the conversation's
// chunks are scanned (they live minutes).
func (b *Broker) LastChunk(ctx context.Context, conv, id string) (chat.Chunk, error) {
	var last chat.Chunk
	s := b.topo.Subjects
	st, err := b.js.Stream(ctx, s.Stream(chat.KindStream))
	if err != nil {
		return last, fmt.Errorf("stream %s: %w", s.Stream(chat.KindStream), err)
	}
	raw, err := st.GetLastMsgForSubject(ctx, s.Chunk(conv))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return last, nil
	case err != nil:
		return last, fmt.Errorf("last chunk of %s: %w", conv, err)
	}
	if raw.Header.Get(chat.HeaderRequestID) == id {
		if err := json.Unmarshal(raw.Data, &last); err != nil {
			return chat.Chunk{}, fmt.Errorf("last chunk of %s: %w", conv, err)
		}
		return last, nil
	}
	err = b.Scan(ctx, s.Stream(chat.KindStream), s.Chunk(conv), time.Time{}, time.Time{}, func(m *Stored) error {
		if m.Header.Get(chat.HeaderRequestID) != id {
			return nil
		}
		var c chat.Chunk
		if json.Unmarshal(m.Data, &c) == nil && c.Seq > last.Seq {
			last = c
		}
		return nil
	})
	if err != nil {
		return chat.Chunk{}, fmt.Errorf("chunks of %s: %w", conv, err)
	}
	return last, nil
}
