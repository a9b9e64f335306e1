package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

func runSend(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("send", stderr)
	conv := fs.String("conversation", "", "conversation id (required): 1-128 characters of [A-Za-z0-9_-]")
	timeout := fs.Duration("timeout", 60*time.Second, "the whole wait; the request's deadline is a fifth earlier (at most 5s), for a deadline_exceeded answer to arrive")
	asJSON := fs.Bool("json", false, "print the whole reply as JSON instead of its content")
	id := fs.String("id", "", "request id (default: a random one)")
	system := fs.String("system", "", "optional system prompt")
	stream := fs.Bool("stream", false, "print the answer's tokens as they come (a reset is said on stderr)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	text := strings.Join(fs.Args(), " ")
	switch {
	case !chat.ValidConversationID(*conv):
		fmt.Fprintf(stderr, "understudy send: --conversation %q: must be 1-128 characters of [A-Za-z0-9_-]\n", *conv)
		return exitUsage
	case strings.TrimSpace(text) == "":
		fmt.Fprintln(stderr, "understudy send: no TEXT to send")
		return exitUsage
	case *timeout <= 0:
		fmt.Fprintln(stderr, "understudy send: --timeout must be positive")
		return exitUsage
	}
	if *id == "" {
		*id = "send-" + randomHex(8)
	}
	if len(*id) > chat.MaxIDLen {
		fmt.Fprintf(stderr, "understudy send: --id is longer than %d characters\n", chat.MaxIDLen)
		return exitUsage
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return exitUsage
	}
	subj := cfg.SubjectScheme()
	// --timeout is the whole wait, connecting included.
	start := time.Now()
	ctx, cancel := context.WithDeadline(ctx, start.Add(*timeout))
	defer cancel()
	b, code := dial(ctx, cfg.NATS, "understudy-send", min(*timeout, 5*time.Second), stderr)
	if b == nil {
		return code
	}
	defer b.Close()

	// The deadline is the worker's to enforce: it answers deadline_exceeded
	// just after it, so it falls a little before the end of the wait.
	req := chat.Request{ID: *id, ConversationID: *conv, Deadline: start.Add(*timeout - answerMargin(*timeout)).UTC()}
	if *system != "" {
		req.Messages = append(req.Messages, chat.Message{Role: chat.RoleSystem, Content: *system})
	}
	req.Messages = append(req.Messages, chat.Message{Role: chat.RoleUser, Content: text})
	var streamed <-chan bool
	if *stream && !*asJSON {
		req.Stream = stream
		var ferr error
		if streamed, ferr = followStream(ctx, b, subj, *conv, req.ID, stdout, stderr); ferr != nil {
			fmt.Fprintf(stderr, "understudy send: %v; the answer is printed whole\n", ferr)
		}
	}
	ans, err := roundTrip(ctx, b, subj, &req, stderr)
	if err != nil {
		if errors.Is(err, errNoReply) {
			err = fmt.Errorf("%w (%s)", err, *timeout)
		}
		fmt.Fprintf(stderr, "understudy send: %v\n", err)
		return exitNoReply
	}
	reply := ans.reply
	if ans.earlier {
		fmt.Fprintf(stderr, "understudy send: id %q was answered before (reply stored %s): this is that earlier answer\n",
			req.ID, ans.stored.UTC().Format(time.RFC3339))
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(reply)
	} else if reply.Status == chat.StatusOK && !printedStream(streamed) {
		fmt.Fprintln(stdout, reply.Content)
	}
	if reply.Status != chat.StatusOK {
		if reply.Error != nil {
			fmt.Fprintf(stderr, "understudy send: request failed: %s: %s\n", reply.Error.Code, reply.Error.Message)
		}
		return exitFailed
	}
	return exitOK
}

// printedStream waits a moment for a followed stream's end: true when the
// answer was printed as it streamed.
func printedStream(streamed <-chan bool) bool {
	if streamed == nil {
		return false
	}
	select {
	case printed := <-streamed:
		return printed
	case <-time.After(2 * time.Second):
		return false
	}
}

// answerMargin is how much earlier than the end of send's wait the
// request's deadline falls, for the worker's deadline_exceeded reply to
// arrive: a fifth of the wait, at most 5 s.
func answerMargin(wait time.Duration) time.Duration { return min(wait/5, 5*time.Second) }

// lastLookMargin is how much of the wait is kept for the last look in
// CHAT_REPLIES, for a reply that was stored but not heard live.
func lastLookMargin(wait time.Duration) time.Duration { return min(wait/10, time.Second) }

// errNoReply is returned when no reply came before the timeout.
var errNoReply = errors.New("no reply in time")

// answer is the reply send prints.
type answer struct {
	reply *chat.Reply
	// earlier: the reply was stored before this request was published (the
	// id had been answered); stored is when.
	earlier bool
	stored  time.Time
}

// roundTrip publishes req and waits for its reply until ctx ends: the
// smallest chat API. An id answered before is not answered again (the
// requests stream drops a repeated Nats-Msg-Id for 2 minutes; after that the
// worker acks a known id without a second reply), so the reply already
// stored in CHAT_REPLIES is the answer.
func roundTrip(ctx context.Context, b *broker.Broker, subj chat.Subjects, req *chat.Request, stderr io.Writer) (*answer, error) {
	// Subscribe, and make sure the server has the subscription, before
	// taking the mark: a reply stored after the mark is then heard live, and
	// one stored at or before it was there before this publish.
	sub, err := b.Conn().SubscribeSync(subj.Reply(req.ConversationID))
	if err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.Conn().FlushWithContext(ctx); err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	mark, err := b.ReplyMark(ctx, subj)
	if err != nil {
		return nil, fmt.Errorf("%w (is `understudy serve` running?)", err)
	}
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	msg := &nats.Msg{Subject: subj.Request(req.ConversationID), Data: data, Header: nats.Header{}}
	msg.Header.Set(chat.HeaderMsgID, req.ID)
	ack, err := b.JetStream().PublishMsg(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w (is NATS reachable and `understudy serve` running?)", msg.Subject, err)
	}
	// A failed look is not the end: the reply may still come live, and the
	// last look tries again.
	if a, _ := lookUp(ctx, b, subj, req, mark); a != nil {
		return a, nil
	}
	if ack.Duplicate {
		fmt.Fprintf(stderr, "understudy send: id %q was published less than 2 minutes ago and is not answered yet: waiting for that request's answer\n", req.ID)
	}
	end, _ := ctx.Deadline()
	live, cancel := context.WithDeadline(ctx, end.Add(-lastLookMargin(time.Until(end))))
	defer cancel()
	for {
		m, err := sub.NextMsgWithContext(live)
		if err != nil {
			if live.Err() == nil {
				return nil, err
			}
			break
		}
		var r chat.Reply
		if json.Unmarshal(m.Data, &r) == nil && r.ID == req.ID {
			return &answer{reply: &r}, nil
		}
	}
	// Nothing heard live: a reply missed during a reconnect is stored.
	a, err := lookUp(ctx, b, subj, req, mark)
	if a != nil || (err != nil && ctx.Err() == nil) {
		return a, err
	}
	return nil, errNoReply
}

// lookUp returns the reply to req stored in CHAT_REPLIES, nil when there is
// none; it is an earlier answer when stored at or before mark.
func lookUp(ctx context.Context, b *broker.Broker, subj chat.Subjects, req *chat.Request, mark uint64) (*answer, error) {
	m, err := b.StoredReply(ctx, subj, req.ConversationID, req.ID)
	if err != nil || m == nil {
		return nil, err
	}
	var r chat.Reply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return nil, fmt.Errorf("stored reply %d to %q: %w", m.Seq, req.ID, err)
	}
	return &answer{reply: &r, earlier: m.Seq <= mark, stored: m.Time}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
