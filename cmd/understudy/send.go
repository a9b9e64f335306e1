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
	timeout := fs.Duration("timeout", 60*time.Second, "request deadline (the reply is awaited 5s longer, for a deadline_exceeded answer)")
	asJSON := fs.Bool("json", false, "print the whole reply as JSON instead of its content")
	id := fs.String("id", "", "request id (default: a random one)")
	system := fs.String("system", "", "optional system prompt")
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
	b, code := dial(ctx, cfg.NATS, "understudy-send", min(*timeout, 5*time.Second), stderr)
	if b == nil {
		return code
	}
	defer b.Close()

	req := chat.Request{ID: *id, ConversationID: *conv, Deadline: time.Now().Add(*timeout).UTC()}
	if *system != "" {
		req.Messages = append(req.Messages, chat.Message{Role: chat.RoleSystem, Content: *system})
	}
	req.Messages = append(req.Messages, chat.Message{Role: chat.RoleUser, Content: text})
	// The deadline is the worker's to enforce: it answers deadline_exceeded
	// just after it, so wait a little longer than the deadline.
	reply, err := roundTrip(ctx, b, subj, &req, *timeout+replyGrace)
	if err != nil {
		fmt.Fprintf(stderr, "understudy send: %v\n", err)
		return exitNoReply
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(reply)
	} else if reply.Status == chat.StatusOK {
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

// replyGrace is how long send waits past the request's deadline for the
// worker's failed reply.
const replyGrace = 5 * time.Second

// errNoReply is returned when no reply came before the timeout.
var errNoReply = errors.New("no reply in time")

// roundTrip publishes req and waits for its reply: the smallest chat API.
func roundTrip(ctx context.Context, b *broker.Broker, subj chat.Subjects, req *chat.Request, timeout time.Duration) (*chat.Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Subscribe before publishing, so the reply cannot be missed.
	sub, err := b.Conn().SubscribeSync(subj.Reply(req.ConversationID))
	if err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hdr := nats.Header{}
	hdr.Set(chat.HeaderMsgID, req.ID)
	if err := b.PublishRaw(ctx, subj.Request(req.ConversationID), data, hdr); err != nil {
		return nil, fmt.Errorf("%w (is NATS reachable and `understudy serve` running?)", err)
	}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w (%s)", errNoReply, timeout)
			}
			return nil, err
		}
		var r chat.Reply
		if json.Unmarshal(m.Data, &r) == nil && r.ID == req.ID {
			return &r, nil
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
