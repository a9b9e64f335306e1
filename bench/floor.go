package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers/sim"
)

// Floor scenarios: the I/O of zero, fallback and stream without
// Understudy's code.
const (
	floorZero     = "floor-zero"
	floorFallback = "floor-fallback"
	floorStream   = "floor-stream"
)

// floorOf names the floor measured beside scenario sc ("" when none is).
func floorOf(sc string) string {
	switch sc {
	case ScenarioZero:
		return floorZero
	case ScenarioFallback:
		return floorFallback
	case ScenarioStream:
		return floorStream
	}
	return ""
}

// floor measures the least a worker must do on the run's server to keep
// the README's guarantees, in a process of its own as a worker runs in
// (`understudy bench` re-run as RoleFloor, ServeFloor) but with no
// Understudy code around the I/O: pull a request (explicit acks), win its
// claim (the KV write a worker makes before any provider call), post the
// request as it came to the same simulated provider over HTTP (fallback:
// first to a primary answering 503, whose failed call is published as an
// attempt event without waiting, as a worker does), publish a reply with
// the request id as Nats-Msg-Id and wait for its PubAck, ack. Streamed (sc
// is stream), each event of the provider's answer is published on the
// conversation's stream subject as it is read, then a last chunk, and
// their PubAcks are awaited before the reply. No decoding, chain, breaker,
// metrics or logs: what the worker's scenario costs beyond its floor, in
// the same run and the same columns, is Understudy's own code. The
// latencies are measured at rate, the scenario's, so that the two compare.
func (r *runner) floor(ctx context.Context, sc string, rate float64) (Result, error) {
	o := r.o
	name := floorOf(sc)
	prefix := fmt.Sprintf("ub%s-%s", r.runID, name)
	defer r.deleteStreams(prefix)
	res := Result{Scenario: name}
	t := newSteadyTraffic(prefix, o.Payload, 2*o.Concurrency, o.Requests)
	cfg := sim.Config{}
	if sc == ScenarioStream {
		var unlisten func()
		var err error
		if res.Stream, cfg, unlisten, err = r.streamTraffic(t); err != nil {
			return res, err
		}
		defer unlisten()
	}
	prov, err := startProvider(t, cfg, sim.ModeOK)
	if err != nil {
		return res, err
	}
	defer prov.close()
	spec := FloorSpec{NATSURL: r.url, Prefix: prefix, Answer: prov.url + "/chat/completions", Concurrency: o.Concurrency}
	if sc == ScenarioFallback {
		p, err := startProvider(t, sim.Config{}, sim.ModeError)
		if err != nil {
			return res, err
		}
		defer p.close()
		spec.Primary = p.url + "/chat/completions"
	}
	if spec.Port, err = freePort(); err != nil {
		return res, err
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return res, err
	}
	child, err := startProc(name, spec.Port, "", []string{EnvRole + "=" + RoleFloor, EnvFloor + "=" + string(js)}, o.Binary, "bench")
	if err != nil {
		return res, err
	}
	defer child.stop()
	if err := child.waitReady(ctx, 30*time.Second); err != nil {
		return res, err
	}
	sub, err := t.listen(r.nc)
	if err != nil {
		return res, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	return res, r.measureLoop(ctx, &res, name, prefix, t, rate, []*workerProc{child})
}

// FloorSpec is what a floor's process is given (as JSON in EnvFloor).
type FloorSpec struct {
	NATSURL     string `json:"nats_url"`
	Prefix      string `json:"prefix"`
	Answer      string `json:"answer"`            // the answering provider's chat completions endpoint
	Primary     string `json:"primary,omitempty"` // a failing provider called first (fallback)
	Concurrency int    `json:"concurrency"`
	Port        int    `json:"port"` // /readyz answers 200 here once the loop runs
}

// ServeFloor runs a floor's loop (EnvRole RoleFloor): spec is EnvFloor's
// JSON. It serves until ctx ends.
func ServeFloor(ctx context.Context, spec string) error {
	var s FloorSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		return fmt.Errorf("%s: %w", EnvFloor, err)
	}
	b, err := broker.Connect(ctx, broker.Config{URL: s.NATSURL}, "understudy-bench-floor", zerolog.Nop())
	if err != nil {
		return err
	}
	defer b.Close()
	topo, err := topology(s.Prefix)
	if err != nil {
		return err
	}
	if err := b.Setup(ctx, topo); err != nil {
		return err
	}
	f := &floorLoop{b: b, js: b.JetStream(), subj: b.Subjects(), url: s.Answer, primary: s.Primary,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: s.Concurrency}}}
	defer f.client.CloseIdleConnections()
	stop, err := serveLoop(ctx, b, s.Concurrency, f.handle)
	if err != nil {
		return err
	}
	defer stop()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port))
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})}
	go func() { _ = srv.Serve(ln) }()
	<-ctx.Done()
	return srv.Close()
}

// floorLoop is one floor's request handling, shared by its goroutines.
type floorLoop struct {
	b      *broker.Broker
	js     jetstream.JetStream
	subj   chat.Subjects
	client *http.Client
	url    string // the provider's chat completions endpoint
	// primary, when not "", is called first and fails (fallback).
	primary string
}

// floorStale is the floor's claim staleness: any value does, nothing
// takes a claim over in a bench.
const floorStale = time.Minute

// handle answers m; a request it cannot answer gets a reply with status
// "error" (counted as failed by the bench) rather than a redelivery.
func (f *floorLoop) handle(ctx context.Context, m jetstream.Msg) {
	id, conv := m.Headers().Get(chat.HeaderMsgID), conversationOf(m.Subject())
	status := "ok"
	if err := f.answer(ctx, m, id, conv); err != nil {
		status = "error"
	}
	reply := &nats.Msg{Subject: f.subj.Reply(conv), Header: nats.Header{}, Data: rawReply(id, conv, status, len(m.Data()))}
	reply.Header.Set(chat.HeaderMsgID, id)
	if _, err := f.js.PublishMsg(ctx, reply); err != nil {
		_ = m.Nak()
		return
	}
	_ = m.Ack()
}

// answer wins m's claim and has the provider answer it.
func (f *floorLoop) answer(ctx context.Context, m jetstream.Msg, id, conv string) error {
	md, err := m.Metadata()
	if err != nil {
		return err
	}
	if _, got, err := f.b.Claim(ctx, id, md.Sequence.Stream, "floor", floorStale); err != nil || got != broker.ClaimWon {
		return fmt.Errorf("claim: %d, %w", got, err)
	}
	if f.primary != "" {
		resp, err := f.post(ctx, f.primary, m.Data())
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return fmt.Errorf("the failing primary answered")
		}
		ev := `{"v":1,"type":"attempt","at":"` + time.Now().UTC().Format(time.RFC3339Nano) + `","request_id":"` + id +
			`","conversation_id":"` + conv + `","delivery":` + strconv.FormatUint(md.NumDelivered, 10) + `,"stream_seq":` +
			strconv.FormatUint(md.Sequence.Stream, 10) + `,"provider":"primary","outcome":"error","status_code":` +
			strconv.Itoa(resp.StatusCode) + `,"latency_ms":0}`
		if _, err := f.js.PublishAsync(f.subj.Event(chat.EventAttempt, conv), []byte(ev)); err != nil {
			return err
		}
	}
	resp, err := f.post(ctx, f.url, m.Data())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("provider: %s", resp.Status)
	}
	if resp.Header.Get("Content-Type") == "text/event-stream" {
		return f.relay(id, conv, resp.Body)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// post sends a request's body to a provider's endpoint.
func (f *floorLoop) post(ctx context.Context, url string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return f.client.Do(req)
}

// errCut: the provider's stream ended before [DONE].
var errCut = errors.New("stream cut before [DONE]")

// relay publishes each event of a streamed answer as a chunk as soon as it
// is read (its data, quoted, as the delta), then the last chunk, and waits
// until every one is stored.
func (f *floorLoop) relay(id, conv string, body io.Reader) error {
	rd := bufio.NewReader(body)
	var futures []jetstream.PubAckFuture
	seq := 0
	publish := func(data []byte) error {
		msg := &nats.Msg{Subject: f.subj.Chunk(conv), Header: nats.Header{}, Data: data}
		msg.Header.Set(chat.HeaderRequestID, id)
		fut, err := f.js.PublishMsgAsync(msg)
		if err == nil {
			futures = append(futures, fut)
		}
		return err
	}
	for {
		line, err := rd.ReadSlice('\n')
		if errors.Is(err, io.EOF) {
			return errCut
		}
		if err != nil {
			return fmt.Errorf("read the stream: %w", err)
		}
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok {
			continue
		}
		data = bytes.TrimSpace(data)
		seq++
		if string(data) == "[DONE]" {
			if err := publish([]byte(`{"id":"` + id + `","seq":` + strconv.Itoa(seq) + `,"done":true}`)); err != nil {
				return err
			}
			break
		}
		chunk := append([]byte(`{"id":"`+id+`","seq":`+strconv.Itoa(seq)+`,"delta":`), strconv.QuoteToASCII(string(data))...)
		if err := publish(append(chunk, `,"provider":"floor","attempt":1}`...)); err != nil {
			return err
		}
	}
	_, _ = io.Copy(io.Discard, rd)
	for _, fut := range futures {
		select {
		case <-fut.Ok():
		case err := <-fut.Err():
			return err
		}
	}
	return nil
}
