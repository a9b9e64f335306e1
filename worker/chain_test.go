package worker

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
)

// fake is a provider whose answer a test decides; it records each call's
// budget (the time left before its context's deadline).
type fake struct {
	name   string
	answer func(ctx context.Context) (*providers.Response, error)
	calls  atomic.Int32
	budget atomic.Int64
}

var _ providers.Provider = (*fake)(nil)

func (f *fake) Name() string  { return f.name }
func (f *fake) Model() string { return "model-" + f.name }
func (f *fake) Complete(ctx context.Context, _ *providers.Request) (*providers.Response, error) {
	f.calls.Add(1)
	if dl, ok := ctx.Deadline(); ok {
		f.budget.Store(int64(time.Until(dl)))
	}
	return f.answer(ctx)
}

func answers(ctx context.Context) (*providers.Response, error) {
	return &providers.Response{Content: "hi", StatusCode: 200}, nil
}

func failsWith(code int) func(context.Context) (*providers.Response, error) {
	return func(context.Context) (*providers.Response, error) {
		return nil, providers.ClassifyStatus(code, http.Header{"Retry-After": []string{"60"}}, time.Now(), errors.New(http.StatusText(code)))
	}
}

func hangs(ctx context.Context) (*providers.Response, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// testChain builds a chain of fakes, each with a breaker that opens on its
// first failure, and the given timeout.
func testChain(timeout time.Duration, fakes ...*fake) *Chain {
	var links []*Link
	for _, f := range fakes {
		links = append(links, &Link{Provider: f, Timeout: timeout,
			Breaker: breaker.New(f.name, breaker.Config{ConsecutiveFailures: 1, OpenFor: time.Hour}, nil)})
	}
	return NewChain(links, RetryConfig{Min: time.Millisecond, Max: 2 * time.Millisecond, Factor: 2})
}

func outcomes(r Result) []chat.Outcome {
	var out []chat.Outcome
	for _, a := range r.Attempts {
		out = append(out, a.Outcome)
	}
	return out
}

func TestChainRun(t *testing.T) {
	tests := []struct {
		name    string
		fakes   []*fake
		timeout time.Duration
		// within is the request's time left (0: no deadline).
		within time.Duration
		// before runs on the chain first (open a breaker, say).
		before       func(c *Chain)
		wantProvider string
		wantOutcomes []chat.Outcome
		wantCalls    []int32
		// wantStates are the breakers' states after the walk.
		wantStates []breaker.State
		check      func(t *testing.T, c *Chain, r Result, fakes []*fake)
	}{
		{
			name:         "the primary answers",
			fakes:        []*fake{{name: "a", answer: answers}, {name: "b", answer: answers}},
			wantProvider: "a", wantOutcomes: []chat.Outcome{chat.OutcomeOK}, wantCalls: []int32{1, 0},
			wantStates: []breaker.State{breaker.Closed, breaker.Closed},
		},
		{
			name:         "a 503 counts and falls back",
			fakes:        []*fake{{name: "a", answer: failsWith(503)}, {name: "b", answer: answers}},
			wantProvider: "b", wantOutcomes: []chat.Outcome{chat.OutcomeError, chat.OutcomeOK}, wantCalls: []int32{1, 1},
			wantStates: []breaker.State{breaker.Open, breaker.Closed},
		},
		{
			name:         "a 429 is not held against the provider, which cools down",
			fakes:        []*fake{{name: "a", answer: failsWith(429)}, {name: "b", answer: answers}},
			wantProvider: "b", wantOutcomes: []chat.Outcome{chat.OutcomeRateLimited, chat.OutcomeOK}, wantCalls: []int32{1, 1},
			wantStates: []breaker.State{breaker.Closed, breaker.Closed},
			check: func(t *testing.T, c *Chain, _ Result, fakes []*fake) {
				r := c.Run(context.Background(), &providers.Request{}, nil)
				if got := outcomes(r); len(got) != 2 || got[0] != chat.OutcomeRateLimited || fakes[0].calls.Load() != 1 {
					t.Errorf("next walk %v with %d calls to a cooling provider, want it skipped", got, fakes[0].calls.Load())
				}
			},
		},
		{
			name:         "rejections are not held; all rejected is reported",
			fakes:        []*fake{{name: "a", answer: failsWith(400)}, {name: "b", answer: failsWith(422)}},
			wantOutcomes: []chat.Outcome{chat.OutcomeRejected, chat.OutcomeRejected}, wantCalls: []int32{1, 1},
			wantStates: []breaker.State{breaker.Closed, breaker.Closed},
			check: func(t *testing.T, _ *Chain, r Result, _ []*fake) {
				if !r.AllRejected() {
					t.Error("AllRejected false")
				}
			},
		},
		{
			name:         "a hang within the provider's own timeout counts",
			fakes:        []*fake{{name: "a", answer: hangs}, {name: "b", answer: answers}},
			timeout:      150 * time.Millisecond,
			wantProvider: "b", wantOutcomes: []chat.Outcome{chat.OutcomeTimeout, chat.OutcomeOK}, wantCalls: []int32{1, 1},
			wantStates: []breaker.State{breaker.Open, breaker.Closed},
		},
		{
			name:         "a hang cut by a budget too small to judge is not held",
			fakes:        []*fake{{name: "a", answer: hangs}, {name: "b", answer: hangs}},
			timeout:      10 * time.Second,
			within:       600 * time.Millisecond,
			wantOutcomes: []chat.Outcome{chat.OutcomeTimeout, chat.OutcomeTimeout}, wantCalls: []int32{1, 1},
			wantStates: []breaker.State{breaker.Closed, breaker.Closed},
		},
		{
			name:         "the time left is shared by the providers still available",
			fakes:        []*fake{{name: "a", answer: failsWith(503)}, {name: "b", answer: failsWith(503)}, {name: "c", answer: answers}},
			within:       3 * time.Second,
			wantProvider: "c", wantOutcomes: []chat.Outcome{chat.OutcomeError, chat.OutcomeError, chat.OutcomeOK}, wantCalls: []int32{1, 1, 1},
			check: func(t *testing.T, _ *Chain, _ Result, fakes []*fake) {
				// 3s less the margin, shared by three; the last gets the rest.
				if b := time.Duration(fakes[0].budget.Load()); b > 1010*time.Millisecond || b < 700*time.Millisecond {
					t.Errorf("first budget %s, want about a third of the time left", b)
				}
				if b := time.Duration(fakes[2].budget.Load()); b < 2*time.Second {
					t.Errorf("last budget %s, want the rest of the time left", b)
				}
			},
		},
		{
			name:         "an open breaker is skipped without a call or a wait",
			fakes:        []*fake{{name: "a", answer: answers}, {name: "b", answer: answers}},
			before:       func(c *Chain) { c.Links()[0].Breaker.ForceOpen(time.Now().Add(time.Hour)) },
			wantProvider: "b", wantOutcomes: []chat.Outcome{chat.OutcomeBreakerOpen, chat.OutcomeOK}, wantCalls: []int32{0, 1},
			wantStates: []breaker.State{breaker.Open, breaker.Closed},
			check: func(t *testing.T, _ *Chain, r Result, _ []*fake) {
				if r.Skipped != 1 || r.Calls != 1 || !r.Degraded() {
					t.Errorf("skipped %d calls %d degraded %v", r.Skipped, r.Calls, r.Degraded())
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			c := testChain(timeout, tt.fakes...)
			if tt.before != nil {
				tt.before(c)
			}
			ctx := context.Background()
			if tt.within > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.within)
				defer cancel()
			}
			var observed int
			r := c.Run(ctx, &providers.Request{}, func(chat.Attempt, error) { observed++ })
			if r.Provider != tt.wantProvider || (r.Response != nil) != (tt.wantProvider != "") {
				t.Errorf("answered by %q (%v), want %q", r.Provider, r.Response != nil, tt.wantProvider)
			}
			if got := outcomes(r); len(got) != len(tt.wantOutcomes) || observed != len(got) {
				t.Fatalf("outcomes %v (observed %d), want %v", got, observed, tt.wantOutcomes)
			}
			for i, o := range outcomes(r) {
				if o != tt.wantOutcomes[i] {
					t.Errorf("attempt %d: %s, want %s", i, o, tt.wantOutcomes[i])
				}
			}
			for i, want := range tt.wantCalls {
				if got := tt.fakes[i].calls.Load(); got != want {
					t.Errorf("%s called %d times, want %d", tt.fakes[i].name, got, want)
				}
			}
			for i, want := range tt.wantStates {
				if got := c.Links()[i].Breaker.State(); got != want {
					t.Errorf("%s breaker %s, want %s", tt.fakes[i].name, got, want)
				}
			}
			if tt.check != nil {
				tt.check(t, c, r, tt.fakes)
			}
		})
	}
}

func TestVerdict(t *testing.T) {
	errCall := errors.New("failed")
	tests := []struct {
		name              string
		a                 chat.Attempt
		err               error
		judged, cancelled bool
		want              breaker.Verdict
	}{
		{"answer", chat.Attempt{Outcome: chat.OutcomeOK, StatusCode: 200}, nil, true, false, breaker.Success},
		{"5xx", chat.Attempt{Outcome: chat.OutcomeError, StatusCode: 503}, errCall, true, false, breaker.Failure},
		{"5xx cut by a shutdown", chat.Attempt{Outcome: chat.OutcomeError}, errCall, true, true, breaker.Ignore},
		{"own timeout, judged", chat.Attempt{Outcome: chat.OutcomeTimeout}, errCall, true, false, breaker.Failure},
		{"own timeout, budget too small", chat.Attempt{Outcome: chat.OutcomeTimeout}, errCall, false, false, breaker.Ignore},
		{"504 from the provider, small budget", chat.Attempt{Outcome: chat.OutcomeTimeout, StatusCode: 504}, errCall, false, false, breaker.Failure},
		{"429", chat.Attempt{Outcome: chat.OutcomeRateLimited, StatusCode: 429}, errCall, true, false, breaker.Ignore},
		{"400", chat.Attempt{Outcome: chat.OutcomeRejected, StatusCode: 400}, errCall, true, false, breaker.Ignore},
		{"401", chat.Attempt{Outcome: chat.OutcomeError, StatusCode: 401}, errCall, true, false, breaker.Failure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := verdict(tt.a, tt.err, tt.judged, tt.cancelled); got != tt.want {
				t.Errorf("verdict = %v, want %v", got, tt.want)
			}
		})
	}
}
