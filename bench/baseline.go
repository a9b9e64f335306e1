package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
)

// baseline measures the raw JetStream request→reply loop on the run's
// server, with the same streams (created by the same topology code), the
// same requests and the same phases as a scenario: Concurrency goroutines
// consume the requests with explicit acks, publish a reply with the
// request's id as Nats-Msg-Id and wait for its PubAck, then ack. No
// provider, no decoding, no claim.
func (r *runner) baseline(ctx context.Context) (Result, error) {
	o := r.o
	prefix := fmt.Sprintf("ub%s-raw", r.runID)
	defer r.deleteStreams(prefix)
	res := Result{Scenario: "raw-jetstream"}
	b, err := r.connectBroker(ctx, "understudy-bench-raw", prefix)
	if err != nil {
		return res, err
	}
	defer b.Close()
	subj := b.Subjects()
	cons, err := b.JetStream().Consumer(ctx, subj.Stream(chat.KindRequests), chat.ConsumerWorkers)
	if err != nil {
		return res, err
	}
	work := make(chan jetstream.Msg, o.Concurrency)
	cc, err := cons.Consume(func(m jetstream.Msg) { work <- m }, jetstream.PullMaxMessages(o.Concurrency))
	if err != nil {
		return res, err
	}
	var wg sync.WaitGroup
	rctx, stop := context.WithCancel(ctx)
	for range o.Concurrency {
		wg.Go(func() { rawResponder(rctx, b.JetStream(), subj, work) })
	}
	defer func() { cc.Stop(); stop(); wg.Wait() }()

	warm, load, paced := min(200, o.Requests/20), o.Requests, o.Requests/2
	t := newTraffic(prefix, prefix, o.Payload, 2*o.Concurrency, warm, load, paced)
	sub, err := t.listen(r.nc)
	if err != nil {
		return res, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	r.resetPeaks()
	label := "raw JetStream loop"
	r.prog.phase(label, "warming up")
	if _, err := t.closedLoop(ctx, r.js, phaseWarm, r.prog.watch); err != nil {
		return res, err
	}
	before, err := r.stored(ctx, prefix)
	if err != nil {
		return res, err
	}
	r.prog.phase(label, "throughput")
	start := r.usage(nil)
	took, err := t.closedLoop(ctx, r.js, phaseLoad, r.prog.watch)
	if err != nil {
		return res, err
	}
	end := r.usage(nil)
	res.Measured, res.Seconds = load, took.Seconds()
	res.RPS = float64(load) / res.Seconds
	res.CPU = cpuPer1k(start, end, load, false)
	res.PeakRSSMB = peaks(end, false)
	res.LatencyRate = res.RPS / 2
	r.prog.phase(label, fmt.Sprintf("latency at %.0f req/s", res.LatencyRate))
	if err := t.paced(ctx, r.js, phasePaced, res.LatencyRate, r.prog.watch); err != nil {
		return res, err
	}
	e2e, ovh := t.latencies(phasePaced)
	res.EndToEndMS, res.OverheadMS = quantiles(e2e), quantiles(ovh)
	after, err := r.stored(ctx, prefix)
	if err != nil {
		return res, err
	}
	res.StoredPerRequest, res.StoredByStream = storedPerRequest(before, after, load+paced)
	res.Answered, res.Sent = t.answeredAll()
	res.Failed = int(t.failed.Load())
	return res, nil
}

// rawResponder answers requests from work until ctx ends.
func rawResponder(ctx context.Context, js jetstream.JetStream, subj chat.Subjects, work <-chan jetstream.Msg) {
	for {
		var m jetstream.Msg
		select {
		case m = <-work:
		case <-ctx.Done():
			return
		}
		id := m.Headers().Get(chat.HeaderMsgID)
		conv := m.Subject()[strings.LastIndexByte(m.Subject(), '.')+1:]
		reply := &nats.Msg{Subject: subj.Reply(conv), Header: nats.Header{}, Data: rawReply(id, conv, len(m.Data()))}
		reply.Header.Set(chat.HeaderMsgID, id)
		if _, err := js.PublishMsg(ctx, reply); err != nil {
			_ = m.Nak()
			continue
		}
		_ = m.Ack()
	}
}

// rawReply is a reply of the size and shape a worker publishes, built
// without decoding the request.
func rawReply(id, conv string, size int) []byte {
	return []byte(`{"id":"` + id + `","conversation_id":"` + conv + `","status":"ok","content":"[sim-1] you said ` +
		strconv.Itoa(size/6) + ` words","provider":"raw","model":"sim-1","degraded":false,` +
		`"attempts":[{"provider":"raw","outcome":"ok","status_code":200,"latency_ms":0}],` +
		`"usage":{"prompt_tokens":` + strconv.Itoa(size/6) + `,"completion_tokens":4},"deliveries":1,"queued_ms":0,"latency_ms":0}`)
}
