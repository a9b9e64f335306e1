package providers

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/understudy-ai/understudy/chat"
)

// ErrMalformed is wrapped by errors about answers that are not a usable chat
// completion (not JSON, no choices).
var ErrMalformed = errors.New("malformed provider response")

// DefaultRetryAfter is how long a provider stays out of the chain after a
// 429 that names no Retry-After.
const DefaultRetryAfter = time.Second

// Error is a failed provider call, classified.
type Error struct {
	Outcome    chat.Outcome
	StatusCode int
	// RetryAfter is set for rate_limited outcomes.
	RetryAfter time.Duration
	// Config is true when the failure points at our configuration
	// (401/403: a missing or wrong API key).
	Config bool
	// Chunks is how many chunks a streamed call delivered before it
	// failed (outcome cut).
	Chunks int
	Err    error
}

func (e *Error) Error() string {
	if e.StatusCode != 0 {
		return fmt.Sprintf("%s (HTTP %d): %v", e.Outcome, e.StatusCode, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Outcome, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// CountsAsFailure reports whether the breaker should count the outcome:
// errors, timeouts and streams cut mid-answer do; rate limits and
// rejections do not (SPEC §4.4).
func CountsAsFailure(o chat.Outcome) bool {
	return o == chat.OutcomeError || o == chat.OutcomeTimeout || o == chat.OutcomeCut
}

// ClassifyStatus turns an HTTP error status into an Error.
func ClassifyStatus(code int, header http.Header, now time.Time, err error) *Error {
	e := &Error{StatusCode: code, Err: err}
	switch {
	case code == http.StatusTooManyRequests:
		e.Outcome = chat.OutcomeRateLimited
		e.RetryAfter = ParseRetryAfter(header.Get("Retry-After"), now)
	case code == http.StatusBadRequest, code == http.StatusNotFound, code == http.StatusUnprocessableEntity:
		e.Outcome = chat.OutcomeRejected
	case code == http.StatusRequestTimeout, code == http.StatusGatewayTimeout:
		e.Outcome = chat.OutcomeTimeout
	case code == http.StatusUnauthorized, code == http.StatusForbidden:
		e.Outcome = chat.OutcomeError
		e.Config = true
	default:
		e.Outcome = chat.OutcomeError
	}
	return e
}

// ClassifyTransport turns an error that came without an HTTP status (a
// timeout, a refused or reset connection, an undecodable body) into an Error.
// attemptCtx is the context the call ran under.
func ClassifyTransport(attemptCtx context.Context, err error) *Error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(attemptCtx.Err(), context.DeadlineExceeded) {
		return &Error{Outcome: chat.OutcomeTimeout, Err: err}
	}
	return &Error{Outcome: chat.OutcomeError, Err: err}
}

// ParseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
// It returns DefaultRetryAfter when the header is missing or unreadable.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return DefaultRetryAfter
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs < 0 || math.IsNaN(secs) {
			return DefaultRetryAfter
		}
		if secs > MaxRetryAfter.Seconds() {
			return MaxRetryAfter
		}
		return time.Duration(secs * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), MaxRetryAfter)
	}
	return DefaultRetryAfter
}

// MaxRetryAfter caps how long a 429 keeps a provider out of the chain,
// whatever its Retry-After says.
const MaxRetryAfter = 5 * time.Minute
