package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
)

// ChunkBroker is what streaming needs of JetStream; *broker.Broker
// provides it. A pool whose Broker does not answers every request whole.
type ChunkBroker interface {
	PublishChunk(conv string, c *chat.Chunk) (jetstream.PubAckFuture, error)
	LastChunk(ctx context.Context, conv, id string) (chat.Chunk, error)
}

// streamer publishes one delivery's streamed answer on
// <prefix>.stream.<conv>: the chunks of each attempt, a reset before an
// attempt that follows chunks of a failed one (or of an earlier delivery),
// and a last message. Every message's seq follows the last one stored for
// the request, across attempts and deliveries. It is used from the
// delivery's goroutine only.
type streamer struct {
	d *delivery
	b ChunkBroker

	seq      uint64
	attemptN int // the last attempt's number within the request
	// sinceReset counts the chunks published since the last reset: a
	// failed attempt with some leaves a reset pending.
	sinceReset     int
	pendingReason  string
	pendingFailed  string
	firstChunk     time.Time // first chunk of this delivery
	futures        []jetstream.PubAckFuture
	publishErrors  int
	provider       string
	attemptStarted time.Time
	attemptChunks  int
	firstOfAttempt time.Time
}

// streaming reports whether req's answer is streamed.
func (p *Pool) streaming(req *chat.Request) bool {
	if req.Stream != nil {
		return *req.Stream
	}
	return p.cfg.StreamDefault
}

// newStreamer starts the delivery's stream after what CHAT_STREAM already
// holds for the request: on a redelivery (or a resend of the id) the text
// published so far is void, so a reset is pending. nil when the pool
// cannot stream, and when the earlier chunks cannot be read: the seq must
// never go back, so that delivery answers whole (its reply is stored as
// ever).
func (d *delivery) newStreamer(ctx context.Context) *streamer {
	cb, ok := d.p.b.(ChunkBroker)
	if !ok || !d.p.streaming(&d.req) {
		return nil
	}
	s := &streamer{d: d, b: cb}
	if c := d.claim.Load(); c != nil && c.Fresh() {
		// Nobody worked on the id before: nothing streamed for it yet, so
		// no read (which scans the conversation's recent chunks).
		return s
	}
	wctx, cancel := d.p.writeCtx(ctx)
	last, err := cb.LastChunk(wctx, d.req.ConversationID, d.req.ID)
	cancel()
	switch {
	case err != nil:
		d.log.Warn().Err(err).Msg("cannot read the request's earlier chunks; answering without streaming")
		return nil
	case last.Seq > 0:
		s.seq, s.attemptN = last.Seq, last.Attempt
		if !last.Reset {
			s.pendingReason = "redelivered"
		}
	}
	return s
}

// call makes one streamed call to l: the budget bounds the wait for the
// first chunk, the provider's idle timeout each gap, ctx (the request's
// deadline) the whole.
func (s *streamer) call(ctx context.Context, l *Link, budget time.Duration, judged bool, req *providers.Request) (a chat.Attempt, resp *providers.Response, _ bool, err error) {
	name := l.Provider.Name()
	s.begin(name)
	start := s.attemptStarted
	if st, ok := l.Provider.(providers.Streamer); ok {
		resp, err = st.Stream(ctx, req, budget, s.chunk)
	} else {
		// A provider that cannot stream answers whole: one chunk.
		actx, cancel := context.WithTimeout(ctx, budget)
		resp, err = l.Provider.Complete(actx, req)
		cancel()
		if err == nil && resp.Content != "" {
			s.chunk(resp.Content)
		}
	}
	a = chat.Attempt{Provider: name, LatencyMS: time.Since(start).Milliseconds(), Chunks: s.attemptChunks}
	if s.attemptChunks > 0 {
		a.FirstChunkMS = s.firstOfAttempt.Sub(start).Milliseconds()
	}
	if resp, err = judge(ctx, &a, resp, err); err == nil {
		return a, resp, judged, nil
	}
	if s.sinceReset > 0 {
		s.pendingReason, s.pendingFailed = string(a.Outcome), name
	}
	return a, nil, judged, err
}

// begin starts an attempt of provider: a pending reset is published first,
// naming it.
func (s *streamer) begin(provider string) {
	s.attemptN++
	s.provider, s.attemptStarted, s.attemptChunks = provider, time.Now(), 0
	if s.pendingReason != "" {
		s.publish(&chat.Chunk{Reset: true, Reason: s.pendingReason, Failed: s.pendingFailed, Provider: provider, Attempt: s.attemptN})
		s.pendingReason, s.pendingFailed, s.sinceReset = "", "", 0
	}
}

// chunk publishes one piece of the current attempt's answer.
func (s *streamer) chunk(delta string) {
	now := time.Now()
	if s.attemptChunks == 0 {
		s.firstOfAttempt = now
		s.d.p.m.firstChunk.WithLabelValues(s.provider).Observe(now.Sub(s.attemptStarted).Seconds())
		if s.firstChunk.IsZero() {
			s.firstChunk = now
		}
	}
	s.attemptChunks++
	s.sinceReset++
	s.publish(&chat.Chunk{Delta: delta, Provider: s.provider, Attempt: s.attemptN})
}

func (s *streamer) publish(c *chat.Chunk) {
	s.seq++
	c.ID, c.Seq, c.Delivery = s.d.req.ID, s.seq, s.d.m.NumDelivered
	f, err := s.b.PublishChunk(s.d.req.ConversationID, c)
	if err != nil {
		s.publishErrors++
		s.d.log.Debug().Err(err).Uint64("seq", c.Seq).Msg("cannot publish a chunk")
		return
	}
	s.futures = append(s.futures, f)
}

// flush waits for the acknowledgement of every chunk published so far; an
// error says how many were not stored.
func (s *streamer) flush(ctx context.Context) error {
	wctx, cancel := s.d.p.writeCtx(ctx)
	defer cancel()
	failed := s.publishErrors
	for _, f := range s.futures {
		select {
		case <-f.Ok():
		case <-f.Err():
			failed++
		case <-wctx.Done():
			failed++
		}
	}
	s.futures, s.publishErrors = s.futures[:0], 0
	if failed > 0 {
		return fmt.Errorf("%d chunks of the stream were not stored", failed)
	}
	return nil
}

// firstChunkMS is the time from pick-up to the delivery's first chunk
// (0: none).
func (s *streamer) firstChunkMS() int64 {
	if s == nil || s.firstChunk.IsZero() {
		return 0
	}
	return max(s.firstChunk.Sub(s.d.start).Milliseconds(), 0)
}

// end publishes the stream's last message: done, with the code of a
// request given up on ("" when answered), and waits for it to be stored.
func (s *streamer) end(ctx context.Context, code string) {
	if s == nil {
		return
	}
	s.publish(&chat.Chunk{Done: true, Error: code})
	if err := s.flush(ctx); err != nil {
		s.d.log.Warn().Err(err).Msg("the end of the stream may not be stored")
	}
}
