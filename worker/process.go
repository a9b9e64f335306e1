package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
)

// publishTimeout bounds each publish to JetStream on the way out.
const publishTimeout = 10 * time.Second

// handle applies SPEC §4 to one delivery. ctx ends only when the shutdown
// grace is over.
func (p *Pool) handle(ctx context.Context, d *broker.Delivery) {
	start := time.Now()
	token := p.subj.ConversationOf(d.Subject)
	req, err := chat.DecodeRequest(d.Data, token, chat.DecodeLimits{MaxBytes: p.cfg.MaxRequestBytes})
	if err != nil {
		p.reject(ctx, d, &req, token, err)
		return
	}
	log := p.log.With().Str("request_id", req.ID).Str("conversation_id", req.ConversationID).
		Uint64("delivery", d.NumDelivered).Uint64("stream_seq", d.StreamSeq).Logger()
	if d.NumDelivered == 1 {
		p.m.queueWait.Observe(start.Sub(d.Published).Seconds())
	}

	deadline := req.EffectiveDeadline(d.Published, p.cfg.RequestTTL)
	switch res, err := p.b.Claim(ctx, req.ID, d.StreamSeq, p.id, p.staleClaim()); {
	case err != nil:
		if !time.Now().Before(deadline) {
			p.expired(ctx, d, &req, token, nil, start, &log)
			return
		}
		log.Warn().Err(err).Msg("cannot claim the request id; putting it back")
		p.putBack(d, p.requeueDelay(d.NumDelivered), &log)
		return
	case res == broker.ClaimDone:
		p.duplicate(d, "request id already answered; acking without a provider call", &log)
		return
	case res == broker.ClaimBusy:
		p.m.requests.WithLabelValues(resultBusy).Inc()
		log.Info().Msg("same request id in flight elsewhere; looking again later")
		p.putBack(d, p.requeueDelay(d.NumDelivered), &log)
		return
	case res == broker.ClaimTakenOver:
		// An earlier delivery was lost; it may have replied before dying.
		// (Of this message, or of another with the same id published
		// earlier: so the conversation's whole reply history is searched.
		// Takeovers are rare, and a conversation's replies are few.)
		found, err := p.b.FindReply(ctx, req.ConversationID, req.ID, time.Time{})
		if err != nil {
			log.Warn().Err(err).Msg("cannot look for an earlier reply; putting the request back")
			p.putBack(d, p.requeueDelay(d.NumDelivered), &log)
			return
		}
		if found {
			p.finish(ctx, d.StreamSeq, req.ID, &log)
			p.duplicate(d, "reply found from an earlier delivery; acking without a provider call", &log)
			return
		}
	}

	if !time.Now().Before(deadline) {
		p.expired(ctx, d, &req, token, nil, start, &log)
		return
	}

	// Typing indicator: somebody is on it.
	p.b.PublishStatus(req.ConversationID, status{ID: req.ID, State: "working", Deliveries: d.NumDelivered})
	stop := p.keepAlive(d)
	callCtx, cancel := context.WithDeadline(ctx, deadline)
	preq := &providers.Request{Messages: req.Messages, MaxTokens: req.MaxTokens, Temperature: req.Temperature}
	res := p.chain.Run(callCtx, preq, p.observer(&req, d, &log))
	cancel()
	stop()

	switch {
	case res.Response != nil:
		p.answer(ctx, d, &req, &res, start, &log)
	case ctx.Err() != nil:
		// Shutdown grace is over: let another worker have it now.
		log.Info().Msg("shutting down mid-request; putting it back")
		p.putBack(d, 0, &log)
	case time.Until(deadline) < p.cfg.RequeueMin:
		// Passed, or too close to wait for another ladder.
		p.expired(ctx, d, &req, token, res.Attempts, start, &log)
	case res.AllRejected():
		// Every provider refused it (400/404/422): waiting will not help.
		p.giveUp(ctx, d, &req, token, res.Attempts, chat.CodeInvalidRequest, "every provider called rejected the request (400/404/422)", start, &log)
	case res.Calls > 0 && p.cfg.MaxDeliveries > 0 && d.NumDelivered >= uint64(p.cfg.MaxDeliveries):
		// A ladder that only skipped providers (all open or cooling down)
		// does not end in providers_exhausted: it waits for one to return.
		p.giveUp(ctx, d, &req, token, res.Attempts, chat.CodeProvidersExhausted,
			fmt.Sprintf("every provider failed, on delivery %d (worker.max_deliveries %d)", d.NumDelivered, p.cfg.MaxDeliveries), start, &log)
	default:
		p.requeue(ctx, d, &req, deadline, &log)
	}
}

// status is the live progress published on <prefix>.status.<conv> (not
// stored): "working" when a worker picks a request up, "queued" when it is
// put back to wait for a provider.
type status struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	RetryInMS  int64  `json:"retry_in_ms,omitempty"`
	Deliveries uint64 `json:"deliveries"`
}

// expired gives up on a request whose deadline has passed (or is too close
// for another ladder).
func (p *Pool) expired(ctx context.Context, d *broker.Delivery, req *chat.Request, token string, attempts []chat.Attempt, start time.Time, log *zerolog.Logger) {
	p.giveUp(ctx, d, req, token, attempts, chat.CodeDeadlineExceeded, "deadline passed before a provider answered", start, log)
}

// duplicate acks a delivery whose request id has already been answered.
func (p *Pool) duplicate(d *broker.Delivery, why string, log *zerolog.Logger) {
	p.m.requests.WithLabelValues(resultDuplicate).Inc()
	log.Info().Msg(why)
	_ = d.Ack()
}

// staleClaim is how old another message's claim on a request id must be
// before it is presumed abandoned.
func (p *Pool) staleClaim() time.Duration { return 10 * p.cfg.AckWait }

// observer records each attempt: metrics, event, log.
func (p *Pool) observer(req *chat.Request, d *broker.Delivery, log *zerolog.Logger) AttemptObserver {
	return func(a chat.Attempt, err error) {
		p.m.attempts.WithLabelValues(a.Provider, string(a.Outcome)).Inc()
		if called(a) {
			p.m.attemptSeconds.WithLabelValues(a.Provider).Observe(float64(a.LatencyMS) / 1000)
		}
		p.b.PublishEvent(&chat.Event{Type: chat.EventAttempt, At: time.Now(), Worker: p.id, RequestID: req.ID,
			ConversationID: req.ConversationID, Delivery: d.NumDelivered, StreamSeq: d.StreamSeq,
			Provider: a.Provider, Outcome: a.Outcome, StatusCode: a.StatusCode, LatencyMS: a.LatencyMS}, req.ConversationID)
		var perr *providers.Error
		switch {
		case errors.As(err, &perr) && perr.Config:
			log.Error().Str("provider", a.Provider).Int("status_code", a.StatusCode).
				Msg("provider refused our credentials: configuration error (check api_key_env)")
		case err != nil:
			log.Debug().Err(err).Str("provider", a.Provider).Str("outcome", string(a.Outcome)).Int64("latency_ms", a.LatencyMS).Msg("attempt failed")
		}
	}
}

// called reports whether an attempt reached its provider (skips carry no
// status code: breaker_open, or rate_limited while cooling down).
func called(a chat.Attempt) bool {
	return a.Outcome != chat.OutcomeBreakerOpen && (a.Outcome != chat.OutcomeRateLimited || a.StatusCode != 0)
}

// keepAlive tells JetStream the delivery is still being worked on, every
// third of AckWait, until the returned stop is called.
func (p *Pool) keepAlive(d *broker.Delivery) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(p.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = d.InProgress()
			}
		}
	}()
	return func() { close(done); <-finished }
}

// answer publishes the ok reply, records the id as answered and acks.
func (p *Pool) answer(ctx context.Context, d *broker.Delivery, req *chat.Request, res *Result, start time.Time, log *zerolog.Logger) {
	r := res.Response
	reply := &chat.Reply{
		ID: req.ID, ConversationID: req.ConversationID, Status: chat.StatusOK,
		Content: r.Content, Provider: res.Provider, Model: r.Model, Degraded: res.Degraded(),
		Attempts: res.Attempts, Usage: &chat.Usage{PromptTokens: r.Usage.PromptTokens, CompletionTokens: r.Usage.CompletionTokens},
		Deliveries: d.NumDelivered, QueuedMS: queuedMS(d.Published, start), LatencyMS: time.Since(start).Milliseconds(), Metadata: req.Metadata,
	}
	if !p.reply(ctx, d, req.ConversationID, req.ID, reply, log) {
		return
	}
	p.finish(ctx, d.StreamSeq, req.ID, log)
	_ = d.Ack()
	p.m.requests.WithLabelValues(resultOK).Inc()
	p.m.requestSeconds.Observe(time.Since(start).Seconds())
	if reply.Degraded {
		p.m.degraded.Inc()
	}
	log.Debug().Str("provider", res.Provider).Bool("degraded", reply.Degraded).Int64("latency_ms", reply.LatencyMS).Msg("replied")
}

// reply publishes a reply; false (and the request put back) when it could
// not be stored.
func (p *Pool) reply(ctx context.Context, d *broker.Delivery, conv, msgID string, reply *chat.Reply, log *zerolog.Logger) bool {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	dup, err := p.b.PublishReply(pctx, conv, msgID, reply)
	if err != nil {
		log.Warn().Err(err).Msg("cannot store the reply; putting the request back")
		p.putBack(d, p.cfg.RequeueMin, log)
		return false
	}
	if dup {
		log.Info().Msg("a reply with this id was already stored; the server dropped this one")
	}
	return true
}

func (p *Pool) finish(ctx context.Context, seq uint64, id string, log *zerolog.Logger) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	if err := p.b.Finish(fctx, id, seq, p.id); err != nil {
		// The reply is stored; a redelivery finds it with FindReply.
		log.Warn().Err(err).Msg("cannot record the request as answered")
	}
}

// requeue puts a request whose whole chain failed back on the queue, with a
// delay growing with its deliveries, no shorter than the time until a
// provider is available again, and no longer than its deadline.
func (p *Pool) requeue(ctx context.Context, d *broker.Delivery, req *chat.Request, deadline time.Time, log *zerolog.Logger) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	err := p.b.Requeue(rctx, req.ID, d.StreamSeq, p.id)
	cancel()
	if err != nil {
		// The next delivery then looks for a reply first; nothing is lost.
		log.Warn().Err(err).Msg("cannot record the request as requeued")
	}
	now := time.Now()
	delay := p.requeueDelay(d.NumDelivered)
	if at := p.chain.NextAvailable(now); at.Sub(now) > delay {
		delay = at.Sub(now)
	}
	if left := deadline.Sub(now); delay > left {
		delay = left // come back when the deadline passes, to answer it
	}
	p.putBack(d, delay, log)
	p.m.requests.WithLabelValues(resultRequeued).Inc()
	p.b.PublishEvent(&chat.Event{Type: chat.EventRetry, At: now, Worker: p.id, RequestID: req.ID, ConversationID: req.ConversationID,
		Delivery: d.NumDelivered, StreamSeq: d.StreamSeq, DelayMS: delay.Milliseconds()}, req.ConversationID)
	p.b.PublishStatus(req.ConversationID, status{ID: req.ID, State: "queued", RetryInMS: delay.Milliseconds(), Deliveries: d.NumDelivered})
	log.Info().Dur("delay", delay).Msg("every provider failed; request queued for a retry")
}

func (p *Pool) putBack(d *broker.Delivery, delay time.Duration, log *zerolog.Logger) {
	if err := d.NakWithDelay(delay); err != nil {
		log.Warn().Err(err).Msg("cannot put the request back; it returns after ack_wait")
	}
}

// giveUp answers failed, dead-letters the request and stops its redelivery.
func (p *Pool) giveUp(ctx context.Context, d *broker.Delivery, req *chat.Request, token string, attempts []chat.Attempt,
	code, reason string, start time.Time, log *zerolog.Logger) {
	p.deadLetter(ctx, fromDelivery(d), req, token, failure{code: code, reason: reason, attempts: attempts, start: start, markAnswered: true}, log)
}

// message is a request being given up on: a delivery, or a stored request
// whose deliveries ran out (d nil: nothing to terminate).
type message struct {
	d               *broker.Delivery
	data            []byte
	subject         string
	seq, deliveries uint64
	published       time.Time
}

func fromDelivery(d *broker.Delivery) message {
	return message{d: d, data: d.Data, subject: d.Subject, seq: d.StreamSeq, deliveries: d.NumDelivered, published: d.Published}
}

// failure is why a request is given up on.
type failure struct {
	code, reason string
	attempts     []chat.Attempt
	start        time.Time // when this delivery's processing began
	// markAnswered records the id as answered, so that later messages with
	// it are acked at once. Not for bad input: an unreadable request must
	// not block a valid one that reuses its id.
	markAnswered bool
}

// deadLetter is the one way a request is given up on: dead letter first (so
// it is never lost), then the failed reply when the conversation is valid,
// then the id recorded as answered, then the event; a delivery is
// terminated. When a publish fails the delivery is put back instead.
func (p *Pool) deadLetter(ctx context.Context, m message, req *chat.Request, token string, f failure, log *zerolog.Logger) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	putBack := func(what string, err error) {
		log.Warn().Err(err).Msg("cannot store the " + what + "; putting the request back")
		if m.d != nil {
			p.putBack(m.d, p.cfg.RequeueMin, log)
		}
	}
	validConv := chat.ValidConversationID(token)
	deadConv := token
	if !validConv {
		deadConv = chat.InvalidToken
	}
	if err := p.b.PublishDead(pctx, m.data, broker.DeadLetter{Conv: deadConv, Code: f.code, Reason: f.reason, RequestID: req.ID,
		Deliveries: m.deliveries, StreamSeq: m.seq, Subject: m.subject}); err != nil {
		putBack("dead letter", err)
		return
	}
	if validConv {
		msgID := req.ID
		if msgID == "" {
			msgID = fmt.Sprintf("invalid-%d", m.seq)
		}
		reply := &chat.Reply{ID: req.ID, ConversationID: token, Status: chat.StatusFailed, Attempts: f.attempts,
			Error: &chat.ErrorBody{Code: f.code, Message: f.reason}, Deliveries: m.deliveries,
			QueuedMS: queuedMS(m.published, f.start), LatencyMS: time.Since(f.start).Milliseconds(), Metadata: req.Metadata}
		if reply.Attempts == nil {
			reply.Attempts = []chat.Attempt{}
		}
		if _, err := p.b.PublishReply(pctx, token, msgID, reply); err != nil {
			putBack("failed reply", err)
			return
		}
	}
	if f.markAnswered && req.ID != "" {
		p.finish(ctx, m.seq, req.ID, log)
	}
	if m.d != nil {
		_ = m.d.Term(f.code + ": " + f.reason)
	}
	result := resultFailed
	if f.code == chat.CodeInvalidRequest {
		result = resultInvalid
	}
	p.m.requests.WithLabelValues(result).Inc()
	p.m.deadLetters.WithLabelValues(f.code).Inc()
	p.b.PublishEvent(&chat.Event{Type: chat.EventDead, At: time.Now(), Worker: p.id, RequestID: req.ID, ConversationID: token,
		Delivery: m.deliveries, StreamSeq: m.seq, Code: f.code, Reason: f.reason}, deadConv)
	log.Warn().Str("code", f.code).Str("reason", f.reason).Msg("request given up on: failed reply and dead letter")
}

// reject gives up on a request that can never be served.
func (p *Pool) reject(ctx context.Context, d *broker.Delivery, req *chat.Request, token string, cause error) {
	log := p.log.With().Str("request_id", req.ID).Uint64("stream_seq", d.StreamSeq).Logger()
	if chat.ValidConversationID(token) {
		log = log.With().Str("conversation_id", token).Logger()
	}
	p.deadLetter(ctx, fromDelivery(d), req, token, failure{code: chat.CodeInvalidRequest, reason: cause.Error(), start: time.Now()}, &log)
}

// maxDeliveries gives up on a request whose deliveries ran out without a
// worker getting to answer it (each delivery's worker died or stalled).
func (p *Pool) maxDeliveries(ctx context.Context, seq, deliveries uint64) {
	log := p.log.With().Uint64("stream_seq", seq).Logger()
	rctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	m, err := p.b.Request(rctx, seq)
	if err != nil {
		log.Warn().Err(err).Msg("request whose deliveries ran out cannot be read")
		return
	}
	token := p.subj.ConversationOf(m.Subject)
	req, err := chat.DecodeRequest(m.Data, token, chat.DecodeLimits{MaxBytes: p.cfg.MaxRequestBytes})
	if err != nil {
		return // invalid requests are terminated on their first delivery
	}
	log = log.With().Str("request_id", req.ID).Str("conversation_id", token).Logger()
	answered, held, err := p.b.Answered(rctx, req.ID, seq, p.staleClaim())
	if err != nil {
		log.Warn().Err(err).Msg("cannot read the claim of a request whose deliveries ran out")
		return
	}
	if answered || held {
		return // answered, or another message with this id is being answered
	}
	if found, err := p.b.FindReply(rctx, token, req.ID, m.Time); err == nil && found {
		p.finish(ctx, seq, req.ID, &log)
		return
	}
	p.deadLetter(ctx, message{data: m.Data, subject: m.Subject, seq: seq, deliveries: deliveries, published: m.Time}, &req, token,
		failure{code: chat.CodeProvidersExhausted, reason: fmt.Sprintf("deliveries ran out (%d) without an answer", deliveries), start: time.Now(), markAnswered: true}, &log)
}

func queuedMS(published, start time.Time) int64 {
	if published.IsZero() {
		return 0
	}
	return max(start.Sub(published).Milliseconds(), 0)
}
