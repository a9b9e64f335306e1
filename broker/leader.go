package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reads that decide something go to the stream's leader.
//
// The streams and buckets allow direct gets ($JS.API.DIRECT.GET.<stream>),
// which any replica answers: a replica still catching up (a restarted node,
// one cut off from its peers) answers "not found" for a message the leader
// stored long ago. That is fine for a report, never for a decision such as
// "nobody replied, call the provider" or "nothing to dead-letter". The
// JetStream API's $JS.API.STREAM.MSG.GET.<stream> is answered by the stream's
// leader alone, so its "not found" is the truth; while the stream has no
// leader it answers with an error (or not at all), which is never taken for
// "not found".

// msgGetRequest is the JetStream API's message get request.
type msgGetRequest struct {
	Seq       uint64     `json:"seq,omitempty"`
	LastFor   string     `json:"last_by_subj,omitempty"`
	NextFor   string     `json:"next_by_subj,omitempty"`
	StartTime *time.Time `json:"start_time,omitempty"`
}

type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *struct {
		Subject  string    `json:"subject"`
		Sequence uint64    `json:"seq"`
		Header   []byte    `json:"hdrs,omitempty"`
		Data     []byte    `json:"data,omitempty"`
		Time     time.Time `json:"time"`
	} `json:"message,omitempty"`
}

// leaderGet reads the message with sequence seq from stream, as its leader
// has it. A true absence is jetstream.ErrMsgNotFound.
func (b *Broker) leaderGet(ctx context.Context, stream string, seq uint64) (*jetstream.RawStreamMsg, error) {
	return b.leaderRead(ctx, stream, msgGetRequest{Seq: seq})
}

// leaderLast reads the last message stored on subject in stream (a KV
// entry: stream KV_<bucket>, subject $KV.<bucket>.<key>), as its leader has
// it. A true absence is jetstream.ErrMsgNotFound.
func (b *Broker) leaderLast(ctx context.Context, stream, subject string) (*jetstream.RawStreamMsg, error) {
	return b.leaderRead(ctx, stream, msgGetRequest{LastFor: subject})
}

// leaderNext reads the first message on subject in stream with a sequence
// at or after seq, or, when since is not zero, stored at or after since.
// No such message is jetstream.ErrMsgNotFound.
func (b *Broker) leaderNext(ctx context.Context, stream, subject string, seq uint64, since time.Time) (*jetstream.RawStreamMsg, error) {
	req := msgGetRequest{Seq: seq, NextFor: subject}
	if !since.IsZero() {
		req.Seq, req.StartTime = 0, &since
	}
	return b.leaderRead(ctx, stream, req)
}

func (b *Broker) leaderRead(ctx context.Context, stream string, req msgGetRequest) (*jetstream.RawStreamMsg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.js.Options().DefaultTimeout)
		defer cancel()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	m, err := b.nc.RequestWithContext(ctx, jetstream.DefaultAPIPrefix+"STREAM.MSG.GET."+stream, body)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("read %s from its leader: JetStream is not available: %w", stream, err)
		}
		return nil, fmt.Errorf("read %s from its leader: %w", stream, err)
	}
	var resp msgGetResponse
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, fmt.Errorf("read %s from its leader: %w", stream, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, fmt.Errorf("read %s from its leader: %w", stream, resp.Error)
	}
	if resp.Message == nil {
		return nil, fmt.Errorf("read %s from its leader: %w", stream, jetstream.ErrInvalidJetStreamResponse)
	}
	var hdr nats.Header
	if len(resp.Message.Header) > 0 {
		if hdr, err = nats.DecodeHeadersMsg(resp.Message.Header); err != nil {
			return nil, fmt.Errorf("read %s from its leader: headers: %w", stream, err)
		}
	}
	return &jetstream.RawStreamMsg{
		Subject:  resp.Message.Subject,
		Sequence: resp.Message.Sequence,
		Header:   hdr,
		Data:     resp.Message.Data,
		Time:     resp.Message.Time,
	}, nil
}

// StreamLeader names the server leading stream right now ("" while it has
// none), as the JetStream API reports it.
func (b *Broker) StreamLeader(ctx context.Context, stream string) (string, error) {
	st, err := b.js.Stream(ctx, stream)
	if err != nil {
		return "", fmt.Errorf("stream %s: %w", stream, err)
	}
	info := st.CachedInfo()
	if info.Cluster == nil {
		return "", nil
	}
	return info.Cluster.Leader, nil
}
