package replay

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// Redrive republishes every request stored under subj in the window (and
// conversation) of opt, in stream order, on to's request subject of the same
// conversation token: the original bytes and headers, with Nats-Msg-Id set
// to the request id (or seq-<stream sequence>) when the original had none.
// Headers that would make the publish conditional (Nats-Expected-*,
// Nats-Rollup, Nats-TTL) are dropped. The streams of to must exist
// (broker.Setup with to); to must differ from subj, or the live workers
// would be handed their own requests again. It returns how many requests
// were published; the shadow stream's duplicate window drops a second copy
// of an id published within two minutes.
//
// The requests keep their original deadline: one that names an explicit
// deadline already past is answered deadline_exceeded by the shadow run.
func Redrive(ctx context.Context, src Source, pub Publisher, subj chat.Subjects, to chat.Subjects, opt Options) (int, error) {
	if src == nil || pub == nil {
		return 0, fmt.Errorf("%w: nil Source or Publisher", ErrInvalidOption)
	}
	if err := checkSubjects("source", subj); err != nil {
		return 0, err
	}
	if err := checkSubjects("target", to); err != nil {
		return 0, err
	}
	if subj.Stream(chat.KindRequests) == to.Stream(chat.KindRequests) {
		return 0, fmt.Errorf("%w: redrive target prefix %q names the same streams as the source %q; use another prefix (shadow, say)",
			ErrInvalidOption, to.Prefix(), subj.Prefix())
	}
	opt, err := opt.normalize(time.Now())
	if err != nil {
		return 0, err
	}
	filter := subj.AllRequests()
	if opt.Conversation != "" {
		filter = subj.Request(opt.Conversation)
	}
	stream := subj.Stream(chat.KindRequests)
	prog := newProgress(opt.Progress, "redriving", "redrove")
	prog.begin(stream + " -> " + to.Stream(chat.KindRequests))
	n := 0
	err = src.Scan(ctx, stream, filter, opt.Since, opt.Until, func(m *broker.Stored) error {
		conv := subj.ConversationOf(m.Subject)
		hdr := make(nats.Header, len(m.Header)+1)
		for k, v := range m.Header {
			if droppedHeader(k) {
				continue
			}
			hdr[k] = slices.Clone(v)
		}
		if hdr.Get(chat.HeaderMsgID) == "" {
			id := chat.RequestID(m.Data)
			if id == "" {
				id = "seq-" + strconv.FormatUint(m.Seq, 10)
			}
			hdr.Set(chat.HeaderMsgID, id)
		}
		target := to.Request(conv)
		if err := pub.PublishRaw(ctx, target, m.Data, hdr); err != nil {
			return fmt.Errorf("republish request %d on %s (do the %s streams exist?): %w", m.Seq, target, to.Prefix(), err)
		}
		n++
		prog.tick()
		return nil
	})
	if err != nil {
		prog.end("interrupted")
		return n, fmt.Errorf("replay: redrive from %s: %w", stream, err)
	}
	prog.end(fmt.Sprintf("%d requests republished under %s", n, to.Prefix()))
	return n, nil
}

func droppedHeader(k string) bool {
	k = strings.ToLower(k)
	return strings.HasPrefix(k, "nats-expected-") || k == "nats-rollup" || k == "nats-ttl"
}
