package worker

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/jpillora/backoff"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
)

// Link is one provider of the chain with its breaker.
type Link struct {
	Provider providers.Provider
	// Timeout bounds one attempt.
	Timeout time.Duration
	Breaker *breaker.Breaker
	// coolUntil (unix nanos) keeps a rate-limited provider out of the chain.
	coolUntil atomic.Int64
}

func (l *Link) cooling(now time.Time) bool { return l.coolUntil.Load() > now.UnixNano() }

// available reports whether a call to l could be made now.
func (l *Link) available(now time.Time) bool {
	return !l.cooling(now) && l.Breaker.Admitting()
}

// probeRecheck is how soon a provider whose half-open probe is out is
// looked at again: the probe's verdict comes at an unknown time.
const probeRecheck = 250 * time.Millisecond

// availableAt is when l can next be tried (now when it can be now).
func (l *Link) availableAt(now time.Time) time.Time {
	at := now
	if c := l.coolUntil.Load(); c > now.UnixNano() {
		at = time.Unix(0, c)
	}
	switch {
	case l.Breaker.State() == breaker.Open:
		if u := l.Breaker.OpenUntil(); u.After(at) {
			at = u
		}
	case !l.Breaker.Admitting():
		if r := now.Add(probeRecheck); r.After(at) {
			at = r
		}
	}
	return at
}

// AttemptObserver hears about every attempt as it ends; err is the
// provider's error (nil on success or when skipped).
type AttemptObserver func(a chat.Attempt, err error)

// Chain is the ordered list of providers a request walks down.
type Chain struct {
	links []*Link
	retry RetryConfig
}

// NewChain returns a chain over links, in order.
func NewChain(links []*Link, retry RetryConfig) *Chain {
	return &Chain{links: links, retry: retry}
}

// Links returns the chain's links in order.
func (c *Chain) Links() []*Link { return c.links }

// Result is what a walk down the chain produced.
type Result struct {
	// Response is nil when no provider answered.
	Response *providers.Response
	// Index of the provider that answered in the chain (0 is the primary).
	Index    int
	Provider string
	Attempts []chat.Attempt
	// Calls counts the attempts that reached a provider, Skipped those
	// that did not (breaker open, cooling down after a 429), Rejected the
	// calls the provider refused (400/404/422).
	Calls, Skipped, Rejected int
	// Chain is the number of providers in the chain.
	Chain int
}

// AllRejected reports whether every provider of the chain was asked and
// refused the request: a request no provider will take, not an outage to
// wait out.
func (r *Result) AllRejected() bool { return r.Chain > 0 && r.Rejected == r.Chain }

// Degraded reports whether a provider other than the primary answered.
func (r *Result) Degraded() bool { return r.Response != nil && r.Index > 0 }

// NextAvailable returns when the first provider of the chain can be tried
// again: now when one can be tried now.
func (c *Chain) NextAvailable(now time.Time) time.Time {
	var first time.Time
	for _, l := range c.links {
		at := l.availableAt(now)
		if !at.After(now) {
			return now
		}
		if first.IsZero() || at.Before(first) {
			first = at
		}
	}
	return first
}

// Run walks the chain once for req. ctx carries the request's deadline; an
// attempt gets the smaller of its provider's timeout and a fair share of the
// time left (the time left divided by the providers still available), so a
// hung provider never eats the time the next one needs.
func (c *Chain) Run(ctx context.Context, req *providers.Request, observe AttemptObserver) Result {
	return c.run(ctx, req, observe, nil)
}

// run is Run, streaming each answer to sink when it is not nil.
func (c *Chain) run(ctx context.Context, req *providers.Request, observe AttemptObserver, sink *streamer) Result {
	res := Result{Chain: len(c.links)}
	bo := &backoff.Backoff{Min: c.retry.Min, Max: c.retry.Max, Factor: c.retry.Factor, Jitter: c.retry.Jitter}
	tried := false
	for i, l := range c.links {
		if ctx.Err() != nil {
			break
		}
		name := l.Provider.Name()
		if l.cooling(time.Now()) {
			res.Skipped++
			c.record(&res, observe, chat.Attempt{Provider: name, Outcome: chat.OutcomeRateLimited}, nil)
			continue
		}
		// Look before the backoff, take the breaker's permission after it:
		// a half-open probe is not held through someone's sleep.
		if !l.Breaker.Admitting() {
			res.Skipped++
			c.record(&res, observe, chat.Attempt{Provider: name, Outcome: chat.OutcomeBreakerOpen}, nil)
			continue
		}
		if tried && !sleep(ctx, bo.Duration()) {
			break
		}
		done, err := l.Breaker.Allow()
		if err != nil {
			res.Skipped++
			c.record(&res, observe, chat.Attempt{Provider: name, Outcome: chat.OutcomeBreakerOpen}, nil)
			continue
		}
		tried = true
		a, resp, judged, err := c.attempt(ctx, l, i, req, sink)
		res.Calls++
		if a.Outcome == chat.OutcomeRejected {
			res.Rejected++
		}
		var perr *providers.Error
		if a.Outcome == chat.OutcomeRateLimited && errors.As(err, &perr) {
			l.coolUntil.Store(time.Now().Add(perr.RetryAfter).UnixNano())
		}
		done(verdict(a, err, judged, ctx.Err() != nil))
		c.record(&res, observe, a, err)
		if err == nil {
			res.Response, res.Index, res.Provider = resp, i, name
			return res
		}
	}
	return res
}

// verdict is the one place where an attempt's meaning for its provider's
// breaker is decided:
//   - an answer is a success;
//   - a call ended by a shutdown or the request's own deadline (cancelled)
//     says nothing about the provider;
//   - a timeout of our own timer within a budget too small to judge by
//     (!judged: a request near its deadline) says too little; a 408 or 504
//     the provider sent counts;
//   - errors and timeouts are failures (providers.CountsAsFailure);
//   - rate limits and rejections say nothing about health.
func verdict(a chat.Attempt, err error, judged, cancelled bool) breaker.Verdict {
	switch {
	case err == nil:
		return breaker.Success
	case cancelled:
		return breaker.Ignore
	case a.Outcome == chat.OutcomeTimeout && a.StatusCode == 0 && !judged:
		return breaker.Ignore
	case providers.CountsAsFailure(a.Outcome):
		return breaker.Failure
	}
	return breaker.Ignore
}

func (c *Chain) record(res *Result, observe AttemptObserver, a chat.Attempt, err error) {
	res.Attempts = append(res.Attempts, a)
	if observe != nil {
		observe(a, err)
	}
}

// minJudgedBudget: a timeout within a budget at least this long (or the
// provider's whole timeout, if shorter) counts against the provider's
// breaker; within a shorter budget it says too little.
const minJudgedBudget = time.Second

// attempt makes one call to l, bounded by its budget: the provider's timeout,
// or less when the request's deadline is near: the time left shared by the
// providers still available, and a little short of the deadline itself, so
// that the attempt's own timer fires first and a hung provider is seen as
// timing out (which counts), not as the request giving up (which does not).
// judged says whether a timeout within this budget may be held against the
// provider.
func (c *Chain) attempt(ctx context.Context, l *Link, idx int, req *providers.Request, sink *streamer) (a chat.Attempt, resp *providers.Response, judged bool, err error) {
	budget := l.Timeout
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		left -= min(left/20, 100*time.Millisecond)
		budget = min(budget, left/time.Duration(c.availableFrom(idx)))
	}
	judged = budget >= min(l.Timeout, minJudgedBudget)
	if sink != nil {
		return sink.call(ctx, l, budget, judged, req)
	}
	actx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	start := time.Now()
	resp, err = l.Provider.Complete(actx, req)
	a = chat.Attempt{Provider: l.Provider.Name(), LatencyMS: time.Since(start).Milliseconds()}
	resp, err = judge(actx, &a, resp, err)
	return a, resp, judged, err
}

// judge sets a's outcome and status code from a call's result. A failure
// comes back as a *providers.Error (a transport error classified, with ctx
// telling a deadline from a cut), and without a response.
func judge(ctx context.Context, a *chat.Attempt, resp *providers.Response, err error) (*providers.Response, error) {
	if err == nil {
		a.Outcome, a.StatusCode = chat.OutcomeOK, resp.StatusCode
		return resp, nil
	}
	var perr *providers.Error
	if !errors.As(err, &perr) {
		perr = providers.ClassifyTransport(ctx, err)
		err = perr
	}
	a.Outcome, a.StatusCode = perr.Outcome, perr.StatusCode
	return nil, err
}

// availableFrom counts the providers from idx on that could be tried now
// (at least 1: the one about to be called).
func (c *Chain) availableFrom(idx int) int {
	n := 1
	now := time.Now()
	for _, l := range c.links[idx+1:] {
		if l.available(now) {
			n++
		}
	}
	return n
}

// sleep waits d or until ctx ends; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
