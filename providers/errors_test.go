package providers_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 20, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		in   string
		want time.Duration
	}{
		{"empty", "", providers.DefaultRetryAfter},
		{"zero seconds", "0", 0},
		{"seconds", "7", 7 * time.Second},
		{"large seconds are capped", "3600", providers.MaxRetryAfter},
		{"a year is capped", "31536000", providers.MaxRetryAfter},
		{"overflowing seconds are capped", "1e300", providers.MaxRetryAfter},
		{"NaN", "NaN", providers.DefaultRetryAfter},
		{"far future date is capped", now.Add(48 * time.Hour).UTC().Format(http.TimeFormat), providers.MaxRetryAfter},
		{"fractional", "1.5", 1500 * time.Millisecond},
		{"leading zero fraction", "0.25", 250 * time.Millisecond},
		{"negative", "-3", providers.DefaultRetryAfter},
		{"negative fraction", "-0.5", providers.DefaultRetryAfter},
		{"http date future", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{"http date now", now.Format(http.TimeFormat), 0},
		{"http date past", now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"rfc850 date", now.Add(10 * time.Second).Format("Monday, 02-Jan-06 15:04:05 GMT"), 10 * time.Second},
		{"asctime date", now.Add(20 * time.Second).Format(time.ANSIC), 20 * time.Second},
		{"garbage", "soon", providers.DefaultRetryAfter},
		{"seconds with unit", "7s", providers.DefaultRetryAfter},
		{"rfc3339 is not an http date", now.Add(time.Minute).Format(time.RFC3339), providers.DefaultRetryAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := providers.ParseRetryAfter(tt.in, now); got != tt.want {
				t.Errorf("ParseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestClassifyStatus(t *testing.T) {
	now := time.Date(2026, 1, 20, 12, 0, 0, 0, time.UTC)
	cause := errors.New("cause")
	tests := []struct {
		code   int
		header http.Header
		want   chat.Outcome
		ra     time.Duration
		config bool
	}{
		{code: 500, want: chat.OutcomeError},
		{code: 502, want: chat.OutcomeError},
		{code: 503, want: chat.OutcomeError},
		{code: 529, want: chat.OutcomeError},
		{code: 408, want: chat.OutcomeTimeout},
		{code: 504, want: chat.OutcomeTimeout},
		{code: 401, want: chat.OutcomeError, config: true},
		{code: 403, want: chat.OutcomeError, config: true},
		{code: 400, want: chat.OutcomeRejected},
		{code: 404, want: chat.OutcomeRejected},
		{code: 422, want: chat.OutcomeRejected},
		{code: 409, want: chat.OutcomeError},
		{code: 413, want: chat.OutcomeError},
		{code: 429, header: http.Header{"Retry-After": {"12"}}, want: chat.OutcomeRateLimited, ra: 12 * time.Second},
		{code: 429, header: http.Header{"Retry-After": {now.Add(time.Minute).Format(http.TimeFormat)}}, want: chat.OutcomeRateLimited, ra: time.Minute},
		{code: 429, header: http.Header{}, want: chat.OutcomeRateLimited, ra: providers.DefaultRetryAfter},
		{code: 429, header: nil, want: chat.OutcomeRateLimited, ra: providers.DefaultRetryAfter},
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.code)+" "+tt.header.Get("Retry-After"), func(t *testing.T) {
			e := providers.ClassifyStatus(tt.code, tt.header, now, cause)
			if e.Outcome != tt.want || e.StatusCode != tt.code || e.RetryAfter != tt.ra || e.Config != tt.config {
				t.Errorf("ClassifyStatus(%d) = %+v, want outcome %q status %d retry-after %s config %v",
					tt.code, *e, tt.want, tt.code, tt.ra, tt.config)
			}
			if !errors.Is(e, cause) {
				t.Error("the *Error does not wrap its cause")
			}
		})
	}
}

func TestClassifyTransport(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	canceled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want chat.Outcome
	}{
		{"deadline error", context.Background(), context.DeadlineExceeded, chat.OutcomeTimeout},
		{"wrapped deadline error", context.Background(), errors.Join(errors.New("reading body"), context.DeadlineExceeded), chat.OutcomeTimeout},
		{"expired attempt context", expired, errors.New("read: connection reset"), chat.OutcomeTimeout},
		{"connection error", context.Background(), errors.New("dial tcp: connection refused"), chat.OutcomeError},
		{"unexpected EOF", context.Background(), io.ErrUnexpectedEOF, chat.OutcomeError},
		{"canceled context", canceled, context.Canceled, chat.OutcomeError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := providers.ClassifyTransport(tt.ctx, tt.err)
			if e.Outcome != tt.want || e.StatusCode != 0 || e.Config || e.RetryAfter != 0 {
				t.Errorf("ClassifyTransport = %+v, want outcome %q and nothing else", *e, tt.want)
			}
			if !errors.Is(e, tt.err) {
				t.Error("the *Error does not wrap its cause")
			}
		})
	}
}

func TestErrorText(t *testing.T) {
	cause := errors.New("boom")
	tests := []struct {
		name string
		err  *providers.Error
		want string
	}{
		{"with status", &providers.Error{Outcome: chat.OutcomeError, StatusCode: 503, Err: cause}, "error (HTTP 503): boom"},
		{"without status", &providers.Error{Outcome: chat.OutcomeTimeout, Err: cause}, "timeout: boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
			if errors.Unwrap(tt.err) != cause {
				t.Error("Unwrap does not return the cause")
			}
			var pe *providers.Error
			if !errors.As(error(tt.err), &pe) || pe != tt.err {
				t.Error("errors.As does not find the *Error")
			}
		})
	}
	if !strings.Contains(providers.ErrMalformed.Error(), "malformed") {
		t.Errorf("ErrMalformed = %q", providers.ErrMalformed)
	}
}

func TestCountsAsFailure(t *testing.T) {
	tests := []struct {
		o    chat.Outcome
		want bool
	}{
		{chat.OutcomeOK, false},
		{chat.OutcomeError, true},
		{chat.OutcomeTimeout, true},
		{chat.OutcomeRateLimited, false},
		{chat.OutcomeRejected, false},
		{chat.OutcomeBreakerOpen, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.o), func(t *testing.T) {
			if got := providers.CountsAsFailure(tt.o); got != tt.want {
				t.Errorf("CountsAsFailure(%q) = %v, want %v", tt.o, got, tt.want)
			}
		})
	}
}
