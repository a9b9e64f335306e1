package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
)

// handle applies SPEC §4 to one delivery. ctx ends only when the shutdown
// grace is over.
func (p *Pool) handle(ctx context.Context, m *broker.Delivery) {
	d := p.pickUp(m)
	defer d.stopKeepAlive()
	defer d.leaveTurn()
	d.work(ctx)
}

// work takes the delivery from decoding to settlement.
func (d *delivery) work(ctx context.Context) {
	p := d.p
	if !d.takeTurn(ctx) {
		return // not its conversation's turn (worker.ordering: conversation)
	}
	req, err := chat.DecodeRequest(d.m.Data, d.token, p.decodeLimits())
	d.req = req
	if err != nil {
		d.reject(ctx, err)
		return
	}
	d.log.set(logFields{requestID: req.ID, conv: req.ConversationID, delivery: d.m.NumDelivered, seq: d.m.StreamSeq})
	if d.m.NumDelivered == 1 {
		p.m.queueWait.Observe(d.start.Sub(d.m.Published).Seconds())
	}
	d.deadline = req.EffectiveDeadline(d.m.Published, p.cfg.RequestTTL)

	claim, res, err := p.b.Claim(ctx, req.ID, d.m.StreamSeq, p.id, p.claimStale())
	switch {
	case err != nil:
		if d.expired() {
			d.giveUp(ctx, nil, chat.CodeDeadlineExceeded, deadlinePassed)
			return
		}
		d.log.Warn().Err(err).Msg("cannot claim the request id; putting it back")
		d.putBack(p.requeueDelay(d.m.NumDelivered))
		return
	case res == broker.ClaimDone:
		d.duplicate("request id already answered; acking without a provider call")
		return
	case res == broker.ClaimBusy:
		// Held by a live worker, or by one that answered it: an answer
		// lets its claim lapse rather than spend a write on it, so the
		// reply is what tells (read only here, off the happy path).
		found, err := p.b.FindReply(ctx, req.ConversationID, req.ID, time.Time{})
		if err == nil && found {
			d.duplicate("request id already answered; acking without a provider call")
			return
		}
		if err != nil {
			d.log.Warn().Err(err).Msg("cannot look for the reply of a request id held elsewhere")
		}
		p.m.requests.WithLabelValues(resultBusy).Inc()
		d.log.Info().Msg("request id held by a live worker; looking again later")
		d.putBack(p.requeueDelay(d.m.NumDelivered))
		return
	}
	d.claim.Store(claim)
	if res == broker.ClaimTakenOver {
		// An earlier holder was lost or let go after a write that may have
		// landed. (Of this message, or of another with the same id: so the
		// conversation's whole reply history is searched. Takeovers are
		// rare, and a conversation's replies are few.)
		found, err := p.b.FindReply(ctx, req.ConversationID, req.ID, time.Time{})
		if err != nil {
			d.log.Warn().Err(err).Msg("cannot look for an earlier reply; putting the request back")
			d.release(ctx)
			d.putBack(p.requeueDelay(d.m.NumDelivered))
			return
		}
		if found {
			d.finish(ctx)
			d.duplicate("reply found from an earlier delivery; acking without a provider call")
			return
		}
	}
	if d.expired() {
		d.giveUp(ctx, nil, chat.CodeDeadlineExceeded, deadlinePassed)
		return
	}

	// Typing indicator: somebody is on it.
	p.b.PublishStatus(req.ConversationID, status{ID: req.ID, State: "working", Deliveries: d.m.NumDelivered})
	callCtx, cancel := context.WithDeadline(ctx, d.deadline)
	stopWatch := context.AfterFunc(d.lostCtx, cancel) // a lost claim ends the ladder
	preq := &providers.Request{Messages: req.Messages, MaxTokens: req.MaxTokens, Temperature: req.Temperature}
	d.stream = d.newStreamer(ctx)
	ladder := p.chain.run(callCtx, preq, d.observe, d.stream)
	defer d.publishFolded()
	stopWatch()
	cancel()

	switch {
	case d.lostCtx.Err() != nil:
		// Presumed dead by the pool (a link slower than the claim's
		// staleness): the new holder answers; this delivery is theirs now.
		d.log.Warn().Msg("claim taken over by another delivery; leaving the request to it")
	case ladder.Response != nil:
		d.answer(ctx, &ladder)
	case ctx.Err() != nil:
		// Shutdown grace is over: let another worker have it now.
		d.log.Info().Msg("shutting down mid-request; putting it back")
		d.requeueClaim(ctx)
		d.putBack(0)
	case ladder.AllRejected():
		// Every provider refused it (400/404/422): waiting will not help.
		d.giveUp(ctx, ladder.Attempts, chat.CodeInvalidRequest, "every provider called rejected the request (400/404/422)")
	case ladder.Calls > 0 && p.cfg.MaxDeliveries > 0 && d.m.NumDelivered >= uint64(p.cfg.MaxDeliveries):
		// A ladder that only skipped providers (all open or cooling down)
		// does not end in providers_exhausted: it waits for one to return.
		d.giveUp(ctx, ladder.Attempts, chat.CodeProvidersExhausted,
			fmt.Sprintf("every provider failed, on delivery %d (worker.max_deliveries %d)", d.m.NumDelivered, p.cfg.MaxDeliveries))
	case d.expired():
		d.giveUp(ctx, ladder.Attempts, chat.CodeDeadlineExceeded, deadlinePassed)
	default:
		d.requeue(ctx)
	}
}

const deadlinePassed = "deadline passed before a provider answered"

// status is the live progress published on <prefix>.status.<conv> (not
// stored): "working" when a worker picks a request up, "queued" when it is
// put back to wait for a provider.
type status struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	RetryInMS  int64  `json:"retry_in_ms,omitempty"`
	Deliveries uint64 `json:"deliveries"`
}

func (p *Pool) decodeLimits() chat.DecodeLimits {
	return chat.DecodeLimits{MaxBytes: p.cfg.MaxRequestBytes, MaxMetadataBytes: p.cfg.MaxMetadataBytes}
}

// observe records each attempt as it ends: metrics, event, log. The
// events of the answering attempt and of skips (no call: breaker open,
// cooling down) wait: they are in the reply, and only published when no ok
// reply of this delivery is stored (publishFolded), so a request answered
// at once, or past an open breaker, costs the server no event. A call that
// failed is published at once: it may have cost, and a crash must not
// lose its record.
func (d *delivery) observe(a chat.Attempt, err error) {
	p := d.p
	p.m.attempts.WithLabelValues(a.Provider, string(a.Outcome)).Inc()
	if a.Called() {
		p.m.attemptSeconds.WithLabelValues(a.Provider).Observe(float64(a.LatencyMS) / 1000)
	}
	if a.Folded() {
		d.folded = append(d.folded, heldAttempt{a: a, at: time.Now()})
	} else {
		d.publishAttempt(a, time.Now())
	}
	var perr *providers.Error
	switch {
	case errors.As(err, &perr) && perr.Config:
		d.log.Error().Str("provider", a.Provider).Int("status_code", a.StatusCode).
			Msg("provider refused our credentials: configuration error (check api_key_env)")
	case err != nil:
		d.log.Debug().Err(err).Str("provider", a.Provider).Str("outcome", string(a.Outcome)).Int64("latency_ms", a.LatencyMS).Msg("attempt failed")
	}
}

// publishFolded publishes the events held for the reply (the answering
// attempt's, the skips') when this delivery stored no ok reply (none was
// storable, a write failed, the claim was lost, a reply was stored before
// by another delivery, or the ladder failed): every attempt is on record.
func (d *delivery) publishFolded() {
	for _, h := range d.folded {
		d.publishAttempt(h.a, h.at)
	}
	d.folded = nil
}

// heldAttempt is an attempt whose event waits for the reply, and when it
// ended.
type heldAttempt struct {
	a  chat.Attempt
	at time.Time
}

// publishAttempt publishes the event of attempt a, ended at at.
func (d *delivery) publishAttempt(a chat.Attempt, at time.Time) {
	d.p.b.PublishEvent(&chat.Event{Type: chat.EventAttempt, At: at, Worker: d.p.id, RequestID: d.req.ID,
		ConversationID: d.req.ConversationID, Delivery: d.m.NumDelivered, StreamSeq: d.m.StreamSeq,
		Provider: a.Provider, Outcome: a.Outcome, StatusCode: a.StatusCode, LatencyMS: a.LatencyMS}, d.req.ConversationID)
}

// answer publishes the ok reply, records the id as answered and acks. An
// answer that cannot be stored ends the request (reply_too_large): asking
// the provider again would only pay for the same answer again.
func (d *delivery) answer(ctx context.Context, res *Result) {
	p, r := d.p, res.Response
	reply := &chat.Reply{
		ID: d.req.ID, ConversationID: d.req.ConversationID, Status: chat.StatusOK,
		Content: r.Content, Provider: res.Provider, Model: r.Model, Degraded: res.Degraded(),
		Attempts: d.attemptsSoFar(ctx, res.Attempts), Usage: &chat.Usage{PromptTokens: r.Usage.PromptTokens, CompletionTokens: r.Usage.CompletionTokens},
		Deliveries: d.m.NumDelivered, QueuedMS: queuedMS(d.m.Published, d.start), LatencyMS: time.Since(d.start).Milliseconds(), Metadata: d.req.Metadata,
		FirstChunkMS: d.stream.firstChunkMS(),
	}
	if d.stream != nil {
		if err := d.stream.flush(ctx); err != nil {
			d.log.Warn().Err(err).Msg("streamed chunks may be missing; the reply is whole")
		}
	}
	var dup bool
	err := p.write(ctx, func(ctx context.Context) (err error) {
		dup, err = p.b.PublishReply(ctx, d.req.ConversationID, d.req.ID, reply)
		return err
	})
	switch {
	case errors.Is(err, broker.ErrUnstorable):
		d.giveUp(ctx, res.Attempts, chat.CodeReplyTooLarge, fmt.Sprintf("the answer of %s cannot be stored: %v", res.Provider, err))
		return
	case err != nil:
		// It may have landed: the next holder looks before calling anyone.
		d.log.Warn().Err(err).Msg("cannot store the reply; putting the request back")
		d.release(ctx)
		d.putBack(p.cfg.RequeueMin)
		return
	case dup:
		d.log.Info().Msg("a reply with this id was already stored; the server dropped this one")
	default:
		d.folded = nil // in the reply
	}
	d.stream.end(ctx, "")
	d.lapse()
	d.ack()
	p.m.requests.WithLabelValues(resultOK).Inc()
	p.m.requestSeconds.Observe(time.Since(d.start).Seconds())
	if reply.Degraded {
		p.m.degraded.Inc()
	}
	d.log.Debug().Str("provider", res.Provider).Bool("degraded", reply.Degraded).Int64("latency_ms", reply.LatencyMS).Msg("replied")
}

// lastTryMin: a request whose deadline is nearer than a put-back's delay
// comes back half-way to it for one more ladder, while at least this much
// time is left; then at the deadline, to be answered deadline_exceeded.
const lastTryMin = 100 * time.Millisecond

// requeue puts a request whose whole chain failed back on the queue, with a
// delay growing with its deliveries, no shorter than the time until a
// provider is available again, and never past its deadline.
func (d *delivery) requeue(ctx context.Context) {
	p := d.p
	now := time.Now()
	delay := p.requeueDelay(d.m.NumDelivered)
	next := p.chain.NextAvailable(now)
	delay = max(delay, next.Sub(now))
	if left := d.deadline.Sub(now); delay >= left {
		if half := left / 2; half >= lastTryMin && !next.After(now.Add(half)) {
			delay = half // one more ladder before the deadline
		} else {
			delay = left // come back when the deadline passes, to answer it
		}
	}
	d.requeueClaim(ctx)
	d.putBack(delay)
	p.m.requests.WithLabelValues(resultRequeued).Inc()
	p.b.PublishEvent(&chat.Event{Type: chat.EventRetry, At: now, Worker: p.id, RequestID: d.req.ID, ConversationID: d.req.ConversationID,
		Delivery: d.m.NumDelivered, StreamSeq: d.m.StreamSeq, DelayMS: delay.Milliseconds()}, d.req.ConversationID)
	p.b.PublishStatus(d.req.ConversationID, status{ID: d.req.ID, State: "queued", RetryInMS: delay.Milliseconds(), Deliveries: d.m.NumDelivered})
	d.log.Info().Dur("delay", delay).Msg("every provider failed; request queued for a retry")
}

// giveUp answers failed, dead-letters the request and stops its
// redelivery; when a write fails it puts the request back instead.
func (d *delivery) giveUp(ctx context.Context, attempts []chat.Attempt, code, reason string) {
	// A refused request (invalid input, or every provider rejected it) is
	// not recorded as answered: a corrected resend with its id is served.
	refused := code == chat.CodeInvalidRequest
	f := failure{code: code, reason: reason, attempts: d.attemptsSoFar(ctx, attempts), start: d.start, markAnswered: !refused}
	if err := d.p.deadLetter(ctx, fromDelivery(d.m), &d.req, d.token, f, d.log.Logger()); err != nil {
		d.log.Warn().Err(err).Msg("cannot give up on the request yet; putting it back")
		d.release(ctx)
		d.putBack(d.p.cfg.RequeueMin)
		return
	}
	if refused {
		d.requeueClaim(ctx) // nothing stored under the id: free it
	} else {
		d.claim.Store(nil) // recorded as answered
	}
	d.stream.end(ctx, code)
	d.term(code + ": " + reason)
}

// reject gives up on a request that can never be served.
func (d *delivery) reject(ctx context.Context, cause error) {
	f := logFields{requestID: d.req.ID, seq: d.m.StreamSeq, rejected: true}
	if chat.ValidConversationID(d.token) {
		f.conv = d.token
	}
	d.log.set(f)
	d.giveUp(ctx, nil, chat.CodeInvalidRequest, cause.Error())
}

// message is a request being given up on: a delivery, or a stored request
// whose deliveries ran out.
type message struct {
	data            []byte
	subject         string
	seq, deliveries uint64
	published       time.Time
	header          nats.Header // the publisher's, kept on the dead letter
}

func fromDelivery(d *broker.Delivery) message {
	return message{data: d.Data, subject: d.Subject, seq: d.StreamSeq, deliveries: d.NumDelivered, published: d.Published, header: d.Header}
}

// failure is why a request is given up on.
type failure struct {
	code, reason string
	attempts     []chat.Attempt
	start        time.Time // when this delivery's processing began
	// markAnswered records the id as answered, so that later messages with
	// it are acked at once. Not for bad input: a refused request must not
	// keep a corrected one with the same id from being answered.
	markAnswered bool
}

// deadLetter is the one way a request is given up on: dead letter first (so
// it is never lost), then the failed reply when the conversation is valid,
// then the id recorded as answered, then the event. An error means a write
// did not land; the caller keeps the request.
func (p *Pool) deadLetter(ctx context.Context, m message, req *chat.Request, token string, f failure, log *zerolog.Logger) error {
	validConv := chat.ValidConversationID(token)
	deadConv := token
	if !validConv {
		deadConv = chat.InvalidToken
	}
	dl := broker.DeadLetter{Conv: deadConv, Code: f.code, Reason: f.reason, RequestID: req.ID,
		Deliveries: m.deliveries, StreamSeq: m.seq, Subject: m.subject, Header: m.header}
	if err := p.write(ctx, func(ctx context.Context) error { return p.b.PublishDead(ctx, m.data, dl) }); err != nil {
		return fmt.Errorf("store the dead letter: %w", err)
	}
	if validConv {
		// A refused request's reply is stored under an id of its own, so
		// that it does not take the request id's place in the replies
		// stream's duplicate window: a corrected resend is answered.
		msgID := req.ID
		if msgID == "" || !f.markAnswered {
			msgID = fmt.Sprintf("invalid-%d", m.seq)
		}
		reply := &chat.Reply{ID: req.ID, ConversationID: token, Status: chat.StatusFailed, Attempts: f.attempts,
			Error: &chat.ErrorBody{Code: f.code, Message: f.reason}, Deliveries: m.deliveries,
			QueuedMS: queuedMS(m.published, f.start), LatencyMS: time.Since(f.start).Milliseconds(), Metadata: req.Metadata}
		if reply.Attempts == nil {
			reply.Attempts = []chat.Attempt{}
		}
		publish := func(ctx context.Context) error {
			_, err := p.b.PublishReply(ctx, token, msgID, reply)
			return err
		}
		err := p.write(ctx, publish)
		if errors.Is(err, broker.ErrUnstorable) {
			// Even failed, it echoes too much: a bare reply; the dead
			// letter keeps the whole request.
			reply.Metadata, reply.Attempts = nil, []chat.Attempt{}
			err = p.write(ctx, publish)
		}
		if err != nil && !errors.Is(err, broker.ErrUnstorable) {
			return fmt.Errorf("store the failed reply: %w", err)
		} else if err != nil {
			log.Error().Err(err).Msg("no failed reply can be stored; the dead letter holds the request")
		}
	}
	if f.markAnswered && req.ID != "" {
		p.finish(ctx, m.seq, req.ID, log)
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
	return nil
}

// finish records request id as answered, for a message whose claim this
// process does not hold (the claim's own Finish does the same).
func (p *Pool) finish(ctx context.Context, seq uint64, id string, log *zerolog.Logger) {
	if err := p.write(ctx, func(ctx context.Context) error { return p.b.Finish(ctx, id, seq, p.id) }); err != nil {
		// The reply is stored; a redelivery finds it with FindReply.
		log.Warn().Err(err).Msg("cannot record the request as answered")
	}
}

// maxDeliveries gives up on a request whose deliveries ran out without a
// worker getting to answer it (each delivery's worker died or stalled). Any
// error while deciding leaves the request as it is: logged, and decided by
// the next advisory or left to replay; never a failed reply for a request
// that may have been answered.
func (p *Pool) maxDeliveries(ctx context.Context, seq, deliveries uint64) {
	log := p.log.With().Uint64("stream_seq", seq).Logger()
	rctx, cancel := p.writeCtx(ctx)
	defer cancel()
	m, err := p.b.Request(rctx, seq)
	if err != nil {
		log.Warn().Err(err).Msg("request whose deliveries ran out cannot be read; leaving it as it is")
		return
	}
	token := p.subj.ConversationOf(m.Subject)
	req, err := chat.DecodeRequest(m.Data, token, p.decodeLimits())
	if err != nil {
		return // invalid requests are terminated on their first delivery
	}
	log = log.With().Str("request_id", req.ID).Str("conversation_id", token).Logger()
	answered, held, err := p.b.Answered(rctx, req.ID, p.claimStale())
	if err != nil {
		log.Warn().Err(err).Msg("cannot read the claim of a request whose deliveries ran out; leaving it as it is")
		return
	}
	if answered || held {
		return // answered, or a live worker is answering it
	}
	found, err := p.b.FindReply(rctx, token, req.ID, m.Time)
	if err != nil {
		log.Warn().Err(err).Msg("cannot look for the reply of a request whose deliveries ran out; leaving it as it is")
		return
	}
	if found {
		p.finish(ctx, seq, req.ID, &log)
		return
	}
	err = p.deadLetter(ctx, message{data: m.Data, subject: m.Subject, seq: seq, deliveries: deliveries, published: m.Time, header: m.Header}, &req, token,
		failure{code: chat.CodeProvidersExhausted, reason: fmt.Sprintf("deliveries ran out (%d) without an answer", deliveries), start: time.Now(), markAnswered: true}, &log)
	if err != nil {
		log.Warn().Err(err).Msg("cannot give up on a request whose deliveries ran out; leaving it as it is")
	}
}

func queuedMS(published, start time.Time) int64 {
	if published.IsZero() {
		return 0
	}
	return max(start.Sub(published).Milliseconds(), 0)
}
