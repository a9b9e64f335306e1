package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/broker"
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
	js := b.JetStream()
	stop, err := serveLoop(ctx, b, o.Concurrency, func(ctx context.Context, m jetstream.Msg) {
		rawAnswer(ctx, js, subj, m)
	})
	if err != nil {
		return res, err
	}
	defer stop()

	t := newSteadyTraffic(prefix, o.Payload, 2*o.Concurrency, o.Requests)
	sub, err := t.listen(r.nc)
	if err != nil {
		return res, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	return res, r.measureLoop(ctx, &res, "raw JetStream loop", prefix, t, 0, nil)
}

// measureLoop measures a request→reply loop that is not a worker pool (the
// raw baseline in the bench process, a floor in procs) on prefix's
// streams, with t's phases: the throughput of a steady closed loop, then
// the latencies at rate (0: half that throughput). CPU and memory are the
// bench's, the server's and procs' (as the workers' figures).
func (r *runner) measureLoop(ctx context.Context, res *Result, label, prefix string, t *traffic, rate float64, procs []*workerProc) error {
	r.resetPeaks()
	before, err := r.stored(ctx, prefix)
	if err != nil {
		return err
	}
	r.prog.phase(label, "throughput")
	var start, end usage
	st, err := t.steadyLoop(ctx, r.js, r.prog.watch, func() { start = r.usage(procs) }, func() { end = r.usage(procs) })
	if err != nil {
		return err
	}
	res.Measured, res.Seconds, res.SlowestMS = st.completed, st.took.Seconds(), ms(st.slowest)
	res.RPS = float64(st.completed) / res.Seconds
	res.CPU = cpuPer1k(start, end, st.measured, len(procs) > 0)
	res.PeakRSSMB = peaks(end, len(procs) > 0)
	res.LatencyRate = res.RPS / 2
	if rate > 0 {
		res.LatencyRate = rate
	}
	r.prog.phase(label, fmt.Sprintf("latency at %.0f req/s", res.LatencyRate))
	if err := t.paced(ctx, r.js, phasePaced, res.LatencyRate, r.prog.watch); err != nil {
		return err
	}
	e2e, ovh := t.latencies(phasePaced)
	res.EndToEndMS, res.OverheadMS = quantiles(e2e), quantiles(ovh)
	t.streamFigures(res)
	return r.settle(ctx, res, t, procs, prefix, before, len(t.sent))
}

// serveLoop has concurrency goroutines of the bench process handle the
// requests of b's workers consumer until stop is called.
func serveLoop(ctx context.Context, b *broker.Broker, concurrency int, handle func(context.Context, jetstream.Msg)) (stop func(), err error) {
	cons, err := b.JetStream().Consumer(ctx, b.Subjects().Stream(chat.KindRequests), chat.ConsumerWorkers)
	if err != nil {
		return nil, err
	}
	work := make(chan jetstream.Msg, concurrency)
	cc, err := cons.Consume(func(m jetstream.Msg) { work <- m }, jetstream.PullMaxMessages(concurrency))
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	lctx, cancel := context.WithCancel(ctx)
	for range concurrency {
		wg.Go(func() {
			for {
				select {
				case m := <-work:
					handle(lctx, m)
				case <-lctx.Done():
					return
				}
			}
		})
	}
	return func() { cc.Stop(); cancel(); wg.Wait() }, nil
}

// rawAnswer publishes m's reply, waits for its PubAck, then acks m.
func rawAnswer(ctx context.Context, js jetstream.JetStream, subj chat.Subjects, m jetstream.Msg) {
	id := m.Headers().Get(chat.HeaderMsgID)
	conv := conversationOf(m.Subject())
	reply := &nats.Msg{Subject: subj.Reply(conv), Header: nats.Header{}, Data: rawReply(id, conv, "ok", len(m.Data()))}
	reply.Header.Set(chat.HeaderMsgID, id)
	if _, err := js.PublishMsg(ctx, reply); err != nil {
		_ = m.Nak()
		return
	}
	_ = m.Ack()
}

// conversationOf is the last token of a request's subject.
func conversationOf(subject string) string { return subject[strings.LastIndexByte(subject, '.')+1:] }

// rawReply is a reply of the size and shape a worker publishes, built
// without decoding the request.
func rawReply(id, conv, status string, size int) []byte {
	return []byte(`{"id":"` + id + `","conversation_id":"` + conv + `","status":"` + status + `","content":"[sim-1] you said ` +
		strconv.Itoa(size/6) + ` words","provider":"raw","model":"sim-1","degraded":false,` +
		`"attempts":[{"provider":"raw","outcome":"ok","status_code":200,"latency_ms":0}],` +
		`"usage":{"prompt_tokens":` + strconv.Itoa(size/6) + `,"completion_tokens":4},"deliveries":1,"queued_ms":0,"latency_ms":0}`)
}
