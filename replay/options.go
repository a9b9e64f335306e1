package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
)

// ErrInvalidOption is wrapped by every error about invalid Options or
// arguments.
var ErrInvalidOption = errors.New("replay: invalid option")

// ReplySlack is how long after the end of the window replies, events and
// dead letters are still read: a request stored just before Until is
// answered after it.
const ReplySlack = 10 * time.Minute

// Source reads a stream over a time window; *broker.Broker is one.
type Source interface {
	// Scan calls fn, in stream order, for every message of stream whose
	// subject matches filter and that was stored in [since, until) (zero
	// until: up to the end of the stream).
	Scan(ctx context.Context, stream, filter string, since, until time.Time, fn func(*broker.Stored) error) error
}

var _ Source = (*broker.Broker)(nil)

// Publisher stores a message and waits for the server's acknowledgement;
// *broker.Broker is one.
type Publisher interface {
	PublishRaw(ctx context.Context, subject string, data []byte, hdr nats.Header) error
}

var _ Publisher = (*broker.Broker)(nil)

// Options selects what a report or a redrive covers.
type Options struct {
	// Since is the start of the window (inclusive), compared with the time
	// each request was stored. Optional: zero means from the first message
	// still stored.
	Since time.Time
	// Until is the end of the window (exclusive). Optional: zero means now.
	Until time.Time
	// Conversation restricts the report to one conversation id. Optional:
	// empty means every conversation.
	Conversation string
	// Progress receives a progress line, rewritten in place with carriage
	// returns while the streams are read and ended with a newline.
	// Optional: nil prints nothing.
	Progress io.Writer
	// Providers is what the configuration says of each provider, by name,
	// for the cost report. Optional: a provider not in it counts tokens and
	// skipped calls, with no spend and no wait.
	Providers map[string]ProviderInfo
}

// ProviderInfo is what a report needs of a configured provider.
type ProviderInfo struct {
	// Price per million tokens. Optional: nil counts tokens and no spend.
	Price *providers.Price
	// Timeout bounds one attempt: the longest a call skipped while the
	// breaker was open would have waited. Optional: zero reports no wait.
	Timeout time.Duration
}

// normalize fills the defaults (Until = now) and validates the options.
func (o Options) normalize(now time.Time) (Options, error) {
	if o.Until.IsZero() {
		o.Until = now
	}
	if !o.Since.IsZero() && !o.Since.Before(o.Until) {
		return o, fmt.Errorf("%w: since (%s) must be before until (%s)", ErrInvalidOption,
			o.Since.Format(time.RFC3339), o.Until.Format(time.RFC3339))
	}
	if o.Conversation != "" && !chat.ValidConversationID(o.Conversation) {
		return o, fmt.Errorf("%w: conversation %q is not a conversation id (1-%d characters of [A-Za-z0-9_-])",
			ErrInvalidOption, o.Conversation, chat.MaxIDLen)
	}
	return o, nil
}

// Validate reports whether the options are usable, as Build and Redrive
// would at time now.
func (o Options) Validate(now time.Time) error {
	_, err := o.normalize(now)
	return err
}

func checkSubjects(name string, s chat.Subjects) error {
	if err := chat.ValidatePrefix(s.Prefix()); err != nil {
		return fmt.Errorf("%w: %s subjects: %v (build them with chat.NewSubjects)", ErrInvalidOption, name, err)
	}
	return nil
}

// ParseWhen reads a point in time given as an RFC 3339 time
// ("2026-01-20T12:00:00Z"), as a duration meaning that long before now
// ("15m", "2h30m", "7d", "1d12h"), or as "now".
func ParseWhen(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, fmt.Errorf("%w: empty time: give an RFC 3339 time (2026-01-20T12:00:00Z) or a duration ago (15m, 2h, 7d)", ErrInvalidOption)
	}
	if s == "now" {
		return now, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, ok := parseAgo(s); ok {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%w: %q is neither an RFC 3339 time (2026-01-20T12:00:00Z) nor a duration ago (15m, 2h, 7d)", ErrInvalidOption, s)
}

// parseAgo parses a non-negative Go duration with an optional leading
// number of days ("7d", "1d12h").
func parseAgo(s string) (time.Duration, bool) {
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseUint(s[:i], 10, 16)
		if err != nil {
			return 0, false
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, true
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, false
	}
	return days + d, true
}
