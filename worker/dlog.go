package worker

import (
	"sync/atomic"

	"github.com/rs/zerolog"
)

// deliveryLog is a delivery's logger: the pool's, with the request's
// fields once they are known. The fields are added on the first line
// logged, not at pick-up: most deliveries log nothing at the level set,
// and a zerolog.Logger's With copies and encodes its fields every time.
// It is safe for the keep-alive's goroutine and the delivery's to share.
type deliveryLog struct {
	base zerolog.Logger
	f    logFields
	// ready points at f once set has filled it in.
	ready atomic.Pointer[logFields]
	built atomic.Pointer[zerolog.Logger]
}

// logFields are the request's fields on a delivery's log lines.
type logFields struct {
	requestID, conv string
	delivery, seq   uint64
	// rejected: a request that could not be read: request_id, stream_seq
	// and conversation_id (when the subject's token is one), in that order.
	rejected bool
}

// set gives the log lines from now on the request's fields. Call it once,
// from the delivery's own goroutine.
func (l *deliveryLog) set(f logFields) {
	l.f = f
	l.ready.Store(&l.f)
	l.built.Store(nil)
}

// Logger is the logger with the request's fields (the pool's until set).
func (l *deliveryLog) Logger() *zerolog.Logger {
	if b := l.built.Load(); b != nil {
		return b
	}
	f := l.ready.Load()
	if f == nil {
		return &l.base
	}
	c := l.base.With().Str("request_id", f.requestID)
	switch {
	case f.rejected:
		c = c.Uint64("stream_seq", f.seq)
		if f.conv != "" {
			c = c.Str("conversation_id", f.conv)
		}
	default:
		c = c.Str("conversation_id", f.conv).Uint64("delivery", f.delivery).Uint64("stream_seq", f.seq)
	}
	lg := c.Logger()
	l.built.CompareAndSwap(nil, &lg)
	return l.built.Load()
}

func (l *deliveryLog) at(level zerolog.Level) *zerolog.Event {
	if level < l.base.GetLevel() || level < zerolog.GlobalLevel() {
		return nil // a nil event logs nothing, as zerolog's own do
	}
	return l.Logger().WithLevel(level)
}

func (l *deliveryLog) Debug() *zerolog.Event { return l.at(zerolog.DebugLevel) }
func (l *deliveryLog) Info() *zerolog.Event  { return l.at(zerolog.InfoLevel) }
func (l *deliveryLog) Warn() *zerolog.Event  { return l.at(zerolog.WarnLevel) }
func (l *deliveryLog) Error() *zerolog.Event { return l.at(zerolog.ErrorLevel) }
