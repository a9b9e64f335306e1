package replay

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// Report is an incident report over a window of requests. The JSON keys of
// SPEC §7 come first; the others are extras.
type Report struct {
	// Requests is the number of distinct requests (by id; by stream
	// sequence for those whose id cannot be read) stored in the window.
	Requests int `json:"requests"`
	// OK counts the requests of the window answered with an ok reply;
	// Failed those answered with a failed reply or, without a reply,
	// dead-lettered (a subject token that is not a conversation id gets a
	// dead letter and no reply). OK + Failed + Unanswered = Requests, in
	// total and in every minute of the timeline.
	OK     int `json:"ok"`
	Failed int `json:"failed"`
	// Unanswered counts the requests of the window with neither a reply nor
	// a dead letter (still queued, or lost).
	Unanswered int `json:"unanswered"`
	// DeadLetters counts the requests of the window that were dead-lettered.
	DeadLetters int `json:"dead_letters"`
	// Degraded counts the ok replies served by a provider other than the
	// first of the chain.
	Degraded int `json:"degraded"`
	// ByProvider is how many ok replies each provider served.
	ByProvider map[string]int `json:"by_provider"`
	// Attempts counts the provider attempts made for the window's requests,
	// by provider and outcome.
	Attempts map[string]map[chat.Outcome]int `json:"attempts"`
	// BreakerTransitions lists the changes of each provider's breaker in
	// the window, by time, once for the pool of replicas: the first replica
	// to record a state names the transition (who saw it first); the
	// replicas that followed it (by their own calls or by a peer's shared
	// verdict) are not listed again.
	BreakerTransitions []Transition `json:"breaker_transitions"`
	// LatencyMS is the end-to-end latency of the answered requests: reply
	// stored time minus request stored time.
	LatencyMS Latency `json:"latency_ms"`
	// Timeline has one entry per minute, from the first minute with a
	// request, a retry or a breaker transition to the last.
	Timeline []Minute `json:"timeline"`

	// Since and Until are the window; Since is omitted when it was open.
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until"`
	// Conversation is the conversation the report is restricted to, if any.
	Conversation string `json:"conversation,omitempty"`
	// Retries counts the queued retries (the whole chain failed, the
	// request went back to the queue) of the window's requests.
	Retries int `json:"retries"`
	// FailedByCode counts the failed requests by error code (the dead
	// letter's code for those without a reply); it sums to Failed.
	FailedByCode map[string]int `json:"failed_by_code"`
	// BreakerOpen lists the periods in which a provider's breaker was not
	// closed (open or half-open) for the pool, rebuilt from the pool's
	// transitions, overlapping the window. To is omitted when it was still
	// open at the end of the trail.
	BreakerOpen []OpenPeriod `json:"breaker_open"`
	// DuplicateRequests counts request messages of the window whose id was
	// already seen in it (the same request published twice).
	DuplicateRequests int `json:"duplicate_requests"`
	// DuplicateReplies counts replies beyond the first for one request id;
	// Understudy promises 0.
	DuplicateReplies int `json:"duplicate_replies"`
	// Cost is the tokens of the ok replies, as their serving provider
	// reported them, and their price.
	Cost Cost `json:"cost"`
	// Spared is, per provider, what its breaker spared: the calls skipped
	// while it was open.
	Spared map[string]Spared `json:"spared"`
	// Impact is what the users felt.
	Impact Impact `json:"impact"`
	// FirstChunkMS spreads the time to first chunk (the reply's
	// first_chunk_ms: pick-up to the first chunk published) of the streamed
	// replies, by the provider whose chunk came first. Replies that did not
	// stream, or streamed nothing, are not counted.
	FirstChunkMS map[string]Spread `json:"first_chunk_ms"`

	// outcomes is what happened to each request id, for Compare; nil in a
	// report read back from JSON. names resolves their reqState.what.
	outcomes map[string]reqState
	names    []string
}

// Transition is one change of a provider's breaker state for the pool.
type Transition struct {
	At       time.Time `json:"at"`
	Provider string    `json:"provider"`
	// From and To are "closed", "open" or "half-open".
	From string `json:"from"`
	To   string `json:"to"`
	// Worker is the worker process that recorded the new state first.
	Worker string `json:"worker,omitempty"`
	// Peer is true when that worker's breaker changed by a peer's shared
	// verdict, not by its own calls (the peer's own record was lost or
	// came later).
	Peer bool `json:"peer,omitempty"`
}

// OpenPeriod is a time in which a provider's breaker was open or half-open
// for the pool.
type OpenPeriod struct {
	Provider string    `json:"provider"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to,omitzero"`
}

// Impact is what the users of the window felt.
type Impact struct {
	// DegradedShare is the share of ok replies served by a provider other
	// than the first of the chain (0 to 1).
	DegradedShare float64 `json:"degraded_share"`
	// LatencyOpen and LatencyClosed split the end-to-end latency of the
	// answered requests by whether the request was stored while a
	// provider's breaker was not closed (an open period) or not.
	LatencyOpen   Spread `json:"latency_open_ms"`
	LatencyClosed Spread `json:"latency_closed_ms"`
	// Queued is the requests put back on the queue at least once (the
	// whole chain failed), and how long they were put back for in all.
	Queued Queued `json:"queued"`
	// FailedByCode counts the failed requests by error code (as the
	// report's failed_by_code).
	FailedByCode map[string]int `json:"failed_by_code"`
}

// Spread is the p50 and p99 (nearest rank) of some milliseconds and how many
// there were; all zero when none.
type Spread struct {
	N   int   `json:"n"`
	P50 int64 `json:"p50"`
	P99 int64 `json:"p99"`
}

// Queued counts requests that waited in the queue for a retry.
type Queued struct {
	Requests int `json:"requests"`
	// WaitMS spreads the total time each was put back for.
	WaitMS Spread `json:"wait_ms"`
	MaxMS  int64  `json:"max_ms"`
}

// Cost is what the window's ok replies cost.
type Cost struct {
	// Total is the spend of the providers with a price.
	Total      float64                 `json:"total"`
	ByProvider map[string]ProviderCost `json:"by_provider"`
}

// ProviderCost is one provider's tokens and, when it has a price, spend.
type ProviderCost struct {
	PromptTokens     int64    `json:"prompt_tokens"`
	CompletionTokens int64    `json:"completion_tokens"`
	Spend            *float64 `json:"spend,omitempty"`
}

// Spared is what a provider's open breaker spared: Calls skipped, and
// WaitMS, the time they would have waited at most (calls × the provider's
// timeout; 0 when the timeout is unknown).
type Spared struct {
	Calls  int   `json:"calls"`
	WaitMS int64 `json:"wait_ms"`
}

// Latency holds percentiles in milliseconds (nearest rank); all zero when
// nothing was answered.
type Latency struct {
	P50 int64 `json:"p50"`
	P90 int64 `json:"p90"`
	P99 int64 `json:"p99"`
	Max int64 `json:"max"`
}

// Minute is one minute of the timeline. The requests stored in the minute
// are split by what became of them: OK by provider, Failed (a failed reply
// or a dead letter), Unanswered.
type Minute struct {
	Start      time.Time      `json:"start"`
	Requests   int            `json:"requests"`
	OK         map[string]int `json:"ok"`
	Failed     int            `json:"failed"`
	Unanswered int            `json:"unanswered"`
	// Retries counts the queued retries that happened in the minute.
	Retries int `json:"retries"`
	// BreakerOpen lists the providers whose breaker was open or half-open
	// at some time in the minute.
	BreakerOpen []string `json:"breaker_open"`
	// LatencyMS spreads the end-to-end latency of the minute's answered
	// requests.
	LatencyMS Spread `json:"latency_ms"`
}

// Breaker states as events name them.
const (
	stateClosed   = "closed"
	stateOpen     = "open"
	stateHalfOpen = "half-open"
)

// Request outcomes kept per id.
const (
	statusNone uint8 = iota
	statusOK
	statusFailed
)

// reqState is everything kept about one request of the window: 32 bytes.
type reqState struct {
	at      int64  // request stored, Unix ns
	replyAt int64  // reply stored, Unix ns; 0 without reply
	seq     uint64 // stream sequence of the request
	// what is the serving provider of an ok reply, the error code of a
	// failed one or, without a reply, of the dead letter: an index in
	// builder.names.
	what     uint16
	status   uint8
	degraded bool
	dead     bool
	// okEvent is the delivery of an "ok" attempt event (0: none): an ok
	// reply's folded attempts (chat.Attempt.Folded) are counted from the
	// reply unless its delivery wrote them as events (earlier workers).
	okEvent uint32
}

// maxNames bounds the distinct providers and error codes told apart; more
// are counted under otherName.
const (
	maxNames  = 1 << 16
	otherName = "(other)"
)

// replyInfo is the part of a reply a report reads.
type replyInfo struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Provider string `json:"provider"`
	Degraded bool   `json:"degraded"`
	Error    *struct {
		Code string `json:"code"`
	} `json:"error"`
	Usage *chat.Usage `json:"usage"`
	// Streaming: the time to first chunk, and the attempts to tell which
	// provider sent it.
	FirstChunkMS int64          `json:"first_chunk_ms"`
	Deliveries   uint64         `json:"deliveries"`
	Attempts     []chat.Attempt `json:"attempts"`
	stored       int64
}

// firstChunkProvider is the provider whose chunk came first in the
// reply's delivery, and whether the reply streamed at all: an attempt of
// that delivery published chunks, or first_chunk_ms is set (it is omitted
// when 0).
func (r *replyInfo) firstChunkProvider() (string, bool) {
	for _, a := range r.Attempts {
		if a.Chunks > 0 && (a.Delivery == 0 || r.Deliveries == 0 || a.Delivery == r.Deliveries) {
			return a.Provider, true
		}
	}
	return r.Provider, r.FirstChunkMS > 0
}

type breakerEvent struct {
	at       time.Time
	stored   time.Time
	provider string
	worker   string
	from, to string
	peer     bool
}

// builder accumulates a report while the streams are read.
type builder struct {
	subj chat.Subjects
	opt  Options

	reqs    map[string]reqState
	strings map[string]string // interned providers, codes, outcomes
	names   []string          // reqState.what → provider or code
	nameIdx map[string]uint16

	pendingReplies map[uint64]replyInfo // replies to invalid-<seq> not found by key
	pendingDead    map[uint64]string    // dead letters found by sequence only → code

	attempts     map[string]map[chat.Outcome]int
	tokens       map[string]*chat.Usage // serving provider → tokens of its ok replies
	queuedMS     map[string]int64       // request id → time put back for, of those put back
	firstChunk   map[string][]int64     // provider of the first chunk → first_chunk_ms of streamed replies
	retries      int
	retryMinutes map[int64]int // minute (Unix s) → retries
	dupRequests  int
	dupReplies   int

	breakers []breakerEvent // every replica's, from the start of the trail
}

// Build reads the window's requests, their replies, dead letters and events,
// and the breaker transitions, and summarises them. Requests are selected by
// the time they were stored, in [opt.Since, opt.Until); replies, events and
// dead letters are read up to ReplySlack after Until and matched to the
// requests by id. Memory grows with the number of requests in the window (a
// few words each), never with their size.
func Build(ctx context.Context, src Source, subj chat.Subjects, opt Options) (*Report, error) {
	if src == nil {
		return nil, fmt.Errorf("%w: nil Source", ErrInvalidOption)
	}
	if err := checkSubjects("source", subj); err != nil {
		return nil, err
	}
	opt, err := opt.normalize(time.Now())
	if err != nil {
		return nil, err
	}
	b := newBuilder(subj, opt)
	prog := newProgress(opt.Progress, "reading", "read")
	conv := opt.Conversation
	late := opt.Until.Add(ReplySlack)
	// Replies, dead letters and events are read for every conversation even
	// with one chosen: a request id may be answered through a message of
	// another conversation (the same id published there), and they are
	// matched by id.
	scans := []struct {
		kind, filter string
		since, until time.Time
		fn           func(*broker.Stored) error
		needRequests bool
	}{
		{chat.KindRequests, pick(conv == "", subj.AllRequests(), subj.Request(conv)), opt.Since, opt.Until, b.request, false},
		// Events before replies: an ok reply's attempts are counted from it
		// unless its delivery wrote them as events (earlier workers).
		{chat.KindEvents, subj.AllEvents(), opt.Since, late, b.event, true},
		{chat.KindReplies, subj.AllReplies(), opt.Since, late, b.reply, true},
		{chat.KindDead, subj.AllDead(), opt.Since, late, b.dead, true},
		// Breaker events from the start, to know each breaker's state at Since.
		{chat.KindEvents, subj.Event(chat.EventBreaker, "*"), time.Time{}, late, b.breaker, false},
	}
	for _, s := range scans {
		if s.needRequests && len(b.reqs) == 0 {
			continue
		}
		stream := subj.Stream(s.kind)
		prog.begin(stream)
		err := src.Scan(ctx, stream, s.filter, s.since, s.until, func(m *broker.Stored) error {
			prog.tick()
			return s.fn(m)
		})
		if err != nil {
			prog.end("interrupted")
			return nil, fmt.Errorf("replay: read %s: %w", stream, err)
		}
	}
	r := b.report()
	prog.end(fmt.Sprintf("%d requests in the window", r.Requests))
	return r, nil
}

func newBuilder(subj chat.Subjects, opt Options) *builder {
	return &builder{
		subj: subj, opt: opt,
		reqs:           make(map[string]reqState),
		strings:        make(map[string]string),
		nameIdx:        make(map[string]uint16),
		pendingReplies: make(map[uint64]replyInfo),
		pendingDead:    make(map[uint64]string),
		attempts:       make(map[string]map[chat.Outcome]int),
		tokens:         make(map[string]*chat.Usage),
		queuedMS:       make(map[string]int64),
		firstChunk:     make(map[string][]int64),
		retryMinutes:   make(map[int64]int),
	}
}

func pick(cond bool, a, b string) string {
	if cond {
		return a
	}
	return b
}

func (b *builder) intern(s string) string {
	if v, ok := b.strings[s]; ok {
		return v
	}
	s = strings.Clone(s)
	b.strings[s] = s
	return s
}

// name returns the index of a provider or error code in b.names.
func (b *builder) name(s string) uint16 {
	if i, ok := b.nameIdx[s]; ok {
		return i
	}
	if len(b.names) == maxNames-1 {
		s = otherName
		if i, ok := b.nameIdx[s]; ok {
			return i
		}
	}
	i := uint16(len(b.names))
	s = strings.Clone(s)
	b.names = append(b.names, s)
	b.nameIdx[s] = i
	return i
}

func invalidKey(seq uint64) string { return "invalid-" + strconv.FormatUint(seq, 10) }

// request records one request, keyed by its id as the worker reads it (the
// invalid-<seq> of its reply when the id cannot be read).
func (b *builder) request(m *broker.Stored) error {
	key := chat.RequestID(m.Data)
	if key == "" {
		key = invalidKey(m.Seq)
	}
	if _, dup := b.reqs[key]; dup {
		b.dupRequests++
		return nil
	}
	b.reqs[key] = reqState{at: m.Time.UnixNano(), seq: m.Seq}
	return nil
}

func (b *builder) reply(m *broker.Stored) error {
	var r replyInfo
	if json.Unmarshal(m.Data, &r) != nil {
		return nil // not a reply Understudy wrote: nothing to match it with
	}
	r.stored = m.Time.UnixNano()
	key := m.Header.Get(chat.HeaderMsgID)
	if key == "" {
		key = r.ID
	}
	if st, ok := b.reqs[key]; ok {
		b.applyReply(&st, r)
		b.reqs[key] = st
		return nil
	}
	// The worker could not read an id the report could, or the other way
	// round: match by the stream sequence once every reply is read.
	if s, ok := strings.CutPrefix(key, "invalid-"); ok {
		if seq, err := strconv.ParseUint(s, 10, 64); err == nil {
			if _, dup := b.pendingReplies[seq]; dup {
				b.dupReplies++
			} else {
				b.pendingReplies[seq] = r
			}
		}
	}
	return nil
}

func (b *builder) applyReply(st *reqState, r replyInfo) {
	if st.status != statusNone {
		b.dupReplies++
		return
	}
	st.replyAt = r.stored
	if p, ok := r.firstChunkProvider(); ok {
		p = b.intern(p)
		b.firstChunk[p] = append(b.firstChunk[p], max(r.FirstChunkMS, 0))
	}
	if r.Status == chat.StatusOK {
		st.status, st.what, st.degraded = statusOK, b.name(r.Provider), r.Degraded
		if uint64(st.okEvent) != r.Deliveries || r.Deliveries == 0 {
			b.foldedAttempts(&r)
		}
		if r.Usage != nil {
			p := b.intern(r.Provider)
			u := b.tokens[p]
			if u == nil {
				u = &chat.Usage{}
				b.tokens[p] = u
			}
			u.PromptTokens += r.Usage.PromptTokens
			u.CompletionTokens += r.Usage.CompletionTokens
		}
		return
	}
	st.status = statusFailed
	switch {
	case r.Error != nil && r.Error.Code != "":
		st.what = b.name(r.Error.Code)
	case r.Status != chat.StatusFailed:
		st.what = b.name("status " + r.Status)
	default:
		st.what = b.name("unknown")
	}
}

func (b *builder) dead(m *broker.Stored) error {
	code := m.Header.Get(chat.HeaderCode)
	if code == "" {
		code = "unknown"
	}
	if id := m.Header.Get(chat.HeaderRequestID); id != "" {
		if st, ok := b.reqs[id]; ok {
			b.reqs[id] = b.applyDead(st, code)
			return nil
		}
	}
	seq, err := strconv.ParseUint(m.Header.Get(chat.HeaderStreamSeq), 10, 64)
	if err != nil {
		return nil // not a dead letter Understudy wrote
	}
	if st, ok := b.reqs[invalidKey(seq)]; ok {
		b.reqs[invalidKey(seq)] = b.applyDead(st, code)
		return nil
	}
	b.pendingDead[seq] = code
	return nil
}

// applyDead marks a request dead-lettered; without a reply, it is failed
// with the dead letter's code.
func (b *builder) applyDead(st reqState, code string) reqState {
	if !st.dead && st.status == statusNone {
		st.what = b.name(code)
	}
	st.dead = true
	return st
}

func (b *builder) event(m *broker.Stored) error {
	var ev chat.Event
	if json.Unmarshal(m.Data, &ev) != nil {
		return nil
	}
	if ev.Type != chat.EventAttempt && ev.Type != chat.EventRetry {
		return nil
	}
	st, ok := b.reqs[ev.RequestID]
	if !ok {
		return nil // an event of a request outside the window
	}
	switch ev.Type {
	case chat.EventAttempt:
		b.countAttempt(ev.Provider, ev.Outcome)
		if ev.Outcome == chat.OutcomeOK {
			st.okEvent = uint32(min(max(ev.Delivery, 1), math.MaxUint32))
			b.reqs[ev.RequestID] = st
		}
	case chat.EventRetry:
		b.queuedMS[ev.RequestID] += max(ev.DelayMS, 0)
		b.retries++
		b.retryMinutes[m.Time.Truncate(time.Minute).Unix()]++
	}
	return nil
}

// foldedAttempts counts the attempts an ok reply carries in place of their
// events: its delivery's answer and skips. A reply that lists no answering
// attempt counts one for its provider.
func (b *builder) foldedAttempts(r *replyInfo) {
	answered := false
	for _, a := range r.Attempts {
		if a.Delivery != 0 && r.Deliveries != 0 && a.Delivery != r.Deliveries || !a.Folded() {
			continue
		}
		answered = answered || a.Outcome == chat.OutcomeOK
		b.countAttempt(a.Provider, a.Outcome)
	}
	if !answered {
		b.countAttempt(r.Provider, chat.OutcomeOK)
	}
}

func (b *builder) countAttempt(provider string, o chat.Outcome) {
	p := b.intern(provider)
	byOutcome := b.attempts[p]
	if byOutcome == nil {
		byOutcome = make(map[chat.Outcome]int)
		b.attempts[p] = byOutcome
	}
	byOutcome[chat.Outcome(b.intern(string(o)))]++
}

func (b *builder) breaker(m *broker.Stored) error {
	var ev chat.Event
	if json.Unmarshal(m.Data, &ev) != nil || ev.Type != chat.EventBreaker {
		return nil
	}
	provider := ev.Provider
	if provider == "" {
		provider = b.subj.ConversationOf(m.Subject)
	}
	be := breakerEvent{at: ev.At, stored: m.Time, provider: b.intern(provider), worker: b.intern(ev.Worker),
		from: b.intern(ev.From), to: b.intern(ev.To), peer: ev.Peer}
	if be.at.IsZero() {
		be.at = m.Time
	}
	b.breakers = append(b.breakers, be)
	return nil
}

// poolTransitions folds every replica's breaker events, in time order, into
// the transitions of the pool's breaker of each provider (initially closed).
// An event is a pool transition when it leaves the pool's state: a replica
// moving to the state the pool is already in followed it, and a replica
// pushed by a peer's verdict from a state the pool had left (one that was
// behind, or started late) follows too. stored holds each transition's
// stored time, which decides whether it is in the window.
func (b *builder) poolTransitions() (ts []Transition, stored []time.Time) {
	slices.SortStableFunc(b.breakers, func(x, y breakerEvent) int { return x.at.Compare(y.at) })
	state := map[string]string{}
	for _, e := range b.breakers {
		cur := cmp.Or(state[e.provider], stateClosed)
		if e.to == cur || (e.peer && e.from != cur) {
			continue
		}
		state[e.provider] = e.to
		ts = append(ts, Transition{At: e.at.UTC(), Provider: e.provider, From: cur, To: e.to, Worker: e.worker, Peer: e.peer})
		stored = append(stored, e.stored)
	}
	return ts, stored
}

// report aggregates what was read.
func (b *builder) report() *Report {
	// Requests matched by sequence only.
	if len(b.pendingReplies) > 0 || len(b.pendingDead) > 0 {
		for k, st := range b.reqs {
			r, okR := b.pendingReplies[st.seq]
			code, okD := b.pendingDead[st.seq]
			if !okR && !okD {
				continue
			}
			if okR {
				b.applyReply(&st, r)
			}
			if okD {
				st = b.applyDead(st, code)
			}
			b.reqs[k] = st
		}
	}
	opt := b.opt
	r := &Report{
		Since: opt.Since.UTC(), Until: opt.Until.UTC(), Conversation: opt.Conversation,
		Requests:           len(b.reqs),
		ByProvider:         map[string]int{},
		Attempts:           b.attempts,
		BreakerTransitions: []Transition{},
		Timeline:           []Minute{},
		Retries:            b.retries,
		FailedByCode:       map[string]int{},
		BreakerOpen:        []OpenPeriod{},
		DuplicateRequests:  b.dupRequests,
		DuplicateReplies:   b.dupReplies,
		Cost:               Cost{ByProvider: map[string]ProviderCost{}},
		Spared:             map[string]Spared{},
		FirstChunkMS:       make(map[string]Spread, len(b.firstChunk)),
		outcomes:           b.reqs,
		names:              b.names,
	}

	for p, u := range b.tokens {
		c := ProviderCost{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens}
		if price := opt.Providers[p].Price; price != nil {
			spend := price.Spend(u.PromptTokens, u.CompletionTokens)
			c.Spend = &spend
			r.Cost.Total += spend
		}
		r.Cost.ByProvider[p] = c
	}
	for p, ms := range b.firstChunk {
		r.FirstChunkMS[p] = spread(ms)
	}
	for p, byOutcome := range b.attempts {
		if n := byOutcome[chat.OutcomeBreakerOpen]; n > 0 {
			r.Spared[p] = Spared{Calls: n, WaitMS: int64(n) * opt.Providers[p].Timeout.Milliseconds()}
		}
	}

	// The pool's breaker transitions of the window, and the periods not
	// closed.
	pool, stored := b.poolTransitions()
	for i, t := range pool {
		if !stored[i].Before(opt.Since) && stored[i].Before(opt.Until) {
			r.BreakerTransitions = append(r.BreakerTransitions, t)
		}
	}

	// The timeline's span: every minute with a request, a retry or a
	// transition of the window.
	first, last := int64(math.MaxInt64), int64(math.MinInt64)
	span := func(unixSec int64) { first, last = min(first, unixSec), max(last, unixSec) }
	minuteOf := func(ns int64) int64 { return time.Unix(0, ns).Truncate(time.Minute).Unix() }
	for _, st := range b.reqs {
		span(minuteOf(st.at))
	}
	for m := range b.retryMinutes {
		span(m)
	}
	for _, t := range r.BreakerTransitions {
		span(t.At.Truncate(time.Minute).Unix())
	}
	end := opt.Until
	if first <= last {
		end = later(end, time.Unix(last+60, 0))
		n := int((last-first)/60) + 1
		r.Timeline = make([]Minute, n)
		for i := range r.Timeline {
			r.Timeline[i] = Minute{Start: time.Unix(first+int64(i)*60, 0).UTC(), OK: map[string]int{}, BreakerOpen: []string{}}
		}
		for m, n := range b.retryMinutes {
			r.Timeline[(m-first)/60].Retries += n
		}
	}
	r.BreakerOpen = openPeriods(pool, opt.Since, end)
	for i := range r.Timeline {
		m := &r.Timeline[i]
		from, to := m.Start, m.Start.Add(time.Minute)
		for _, p := range r.BreakerOpen {
			if p.From.Before(to) && (p.To.IsZero() || p.To.After(from)) && !slices.Contains(m.BreakerOpen, p.Provider) {
				m.BreakerOpen = append(m.BreakerOpen, p.Provider)
			}
		}
		slices.Sort(m.BreakerOpen)
	}

	// Per-request outcomes.
	lat := make([]int64, 0, len(b.reqs))
	var latOpen, latClosed []int64
	minuteLat := make([][]int64, len(r.Timeline))
	for _, st := range b.reqs {
		var m *Minute
		if len(r.Timeline) > 0 {
			m = &r.Timeline[(minuteOf(st.at)-first)/60]
			m.Requests++
		}
		switch st.status {
		case statusOK:
			r.OK++
			r.ByProvider[b.names[st.what]]++
			if st.degraded {
				r.Degraded++
			}
			m.OK[b.names[st.what]]++
		case statusFailed:
			r.Failed++
			r.FailedByCode[b.names[st.what]]++
			m.Failed++
		case statusNone:
			if st.dead {
				r.Failed++
				r.FailedByCode[b.names[st.what]]++
				m.Failed++
			} else {
				r.Unanswered++
				m.Unanswered++
			}
		}
		if st.dead {
			r.DeadLetters++
		}
		if st.status != statusNone {
			ms := max(st.replyAt-st.at, 0) / int64(time.Millisecond)
			lat = append(lat, ms)
			if inPeriod(r.BreakerOpen, time.Unix(0, st.at)) {
				latOpen = append(latOpen, ms)
			} else {
				latClosed = append(latClosed, ms)
			}
			if m != nil {
				i := (minuteOf(st.at) - first) / 60
				minuteLat[i] = append(minuteLat[i], ms)
			}
		}
	}
	for i, ms := range minuteLat {
		r.Timeline[i].LatencyMS = spread(ms)
	}
	r.LatencyMS = percentiles(lat)
	r.Impact = Impact{LatencyOpen: spread(latOpen), LatencyClosed: spread(latClosed), FailedByCode: r.FailedByCode}
	if r.OK > 0 {
		r.Impact.DegradedShare = float64(r.Degraded) / float64(r.OK)
	}
	var waits []int64
	for _, ms := range b.queuedMS {
		waits = append(waits, ms)
	}
	r.Impact.Queued = Queued{Requests: len(waits), WaitMS: spread(waits)}
	if len(waits) > 0 {
		r.Impact.Queued.MaxMS = slices.Max(waits)
	}
	return r
}

// openPeriods lists, per provider, the times the pool's breaker was not
// closed, keeping those that overlap [since, end).
func openPeriods(pool []Transition, since, end time.Time) []OpenPeriod {
	out := []OpenPeriod{}
	open := map[string]int{} // provider → index in out of its open period
	for _, t := range pool {
		i, isOpen := open[t.Provider]
		switch {
		case !isOpen && t.To != stateClosed:
			open[t.Provider] = len(out)
			out = append(out, OpenPeriod{Provider: t.Provider, From: t.At})
		case isOpen && t.To == stateClosed:
			out[i].To = t.At
			delete(open, t.Provider)
		}
	}
	out = slices.DeleteFunc(out, func(p OpenPeriod) bool {
		return (!p.To.IsZero() && !p.To.After(since)) || !p.From.Before(end)
	})
	slices.SortStableFunc(out, func(x, y OpenPeriod) int {
		return cmp.Or(x.From.Compare(y.From), strings.Compare(x.Provider, y.Provider))
	})
	return out
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// inPeriod reports whether t falls in one of the periods.
func inPeriod(periods []OpenPeriod, t time.Time) bool {
	for _, p := range periods {
		if !t.Before(p.From) && (p.To.IsZero() || t.Before(p.To)) {
			return true
		}
	}
	return false
}

// spread returns the count, p50 and p99 of ms (which it sorts).
func spread(ms []int64) Spread {
	l := percentiles(ms)
	return Spread{N: len(ms), P50: l.P50, P99: l.P99}
}

// percentiles returns nearest-rank percentiles of ms (which it sorts).
func percentiles(ms []int64) Latency {
	if len(ms) == 0 {
		return Latency{}
	}
	slices.Sort(ms)
	rank := func(q float64) int64 {
		i := int(math.Ceil(q*float64(len(ms)))) - 1
		return ms[min(max(i, 0), len(ms)-1)]
	}
	return Latency{P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: ms[len(ms)-1]}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
