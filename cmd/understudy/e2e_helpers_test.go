package main

// Helpers of the end-to-end tests: they build the understudy binary once,
// run it as a real subprocess against a NATS JetStream server and simulated
// providers running in the test process, and read the outcome back from the
// streams with the real JetStream client.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// e2eBin is the understudy binary built by TestMain ("" under -short).
var e2eBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "understudy-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(1)
	}
	bin := filepath.Join(dir, "understudy")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build: %v\n", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	e2eBin = bin
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// e2eNeedBinary skips end-to-end tests under -short.
func e2eNeedBinary(t *testing.T) {
	t.Helper()
	if e2eBin == "" {
		t.Skip("end-to-end test: the binary is built only without -short")
	}
}

// e2eEnv is the environment of the subprocesses: ours, without a
// configuration named by the environment unless extra sets one.
func e2eEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "UNDERSTUDY_CONFIG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// e2eBuffer is a bytes.Buffer safe for the writer goroutine of os/exec and
// the test reading it at the same time.
type e2eBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *e2eBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *e2eBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// e2eTail is the end of s, for failure messages.
func e2eTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// e2eProc is one understudy subprocess.
type e2eProc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	stdout  *e2eBuffer
	stderr  *e2eBuffer
	done    chan struct{}
	waitErr error
	// port of /readyz for serve processes (0: none).
	port int
}

// e2eStart starts the binary with args. The process is killed at the end of
// the test if still running, and its output is logged when the test failed.
func e2eStart(t *testing.T, name string, env []string, args ...string) *e2eProc {
	t.Helper()
	p := &e2eProc{t: t, name: name, stdout: &e2eBuffer{}, stderr: &e2eBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(e2eBin, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s (%s) stdout:\n%s", p.name, strings.Join(args, " "), e2eTail(p.stdout.String(), 4000))
			t.Logf("%s stderr:\n%s", p.name, e2eTail(p.stderr.String(), 12000))
		}
	})
	return p
}

func (p *e2eProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to timeout for the process to end and returns its exit
// code (-1 when killed by a signal); the test fails when it does not end.
func (p *e2eProc) waitExit(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %s", p.name, timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

// terminate sends SIGTERM and requires exit code 0 within limit; it
// returns how long the process took to exit.
func (p *e2eProc) terminate(limit time.Duration) time.Duration {
	p.t.Helper()
	start := time.Now()
	p.signal(syscall.SIGTERM)
	if code := p.waitExit(limit); code != 0 {
		p.t.Fatalf("%s exited %d after SIGTERM, want 0", p.name, code)
	}
	return time.Since(start)
}

func (p *e2eProc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %s to %s: %v", sig, p.name, err)
	}
}

// e2eRun runs the binary to completion (killing it after timeout) and
// returns stdout, stderr, the exit code and how long it ran.
func e2eRun(t *testing.T, timeout time.Duration, env []string, args ...string) (stdout, stderr string, code int, took time.Duration) {
	t.Helper()
	start := time.Now()
	p := e2eStart(t, args[0], env, args...)
	code = p.waitExit(timeout)
	return p.stdout.String(), p.stderr.String(), code, time.Since(start)
}

// e2eFreePort returns a loopback port nobody listens on right now.
func e2eFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// e2eNATS starts a JetStream server in the test process storing under dir,
// on port (-1: any free port). It is shut down at the end of the test.
func e2eNATS(t *testing.T, dir string, port int) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: dir, Port: port, Host: "127.0.0.1", NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		t.Fatal("nats server not ready within 10s")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// e2eSim starts a simulated provider in the test process; it returns the
// server and its base URL.
func e2eSim(t *testing.T, cfg sim.Config) (*sim.Server, string) {
	t.Helper()
	s := sim.New(cfg)
	url, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, url
}

// e2eClient connects the test's own JetStream client (reconnecting forever).
func e2eClient(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.Name("e2e-test"))
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// e2eProvider is one openai-kind provider of a test configuration.
type e2eProvider struct {
	name, url, model string
}

// e2eConfig is what varies between the test configurations.
type e2eConfig struct {
	natsURL       string
	metricsPort   int // 0: metrics.listen ""
	concurrency   int
	grace         string
	maxDeliveries int
	ackWait       string // "": 2s
	ordering      string // "": worker.ordering unset
	providers     []e2eProvider
}

func (c e2eConfig) yaml() string {
	var b strings.Builder
	listen := ""
	if c.metricsPort != 0 {
		listen = fmt.Sprintf("127.0.0.1:%d", c.metricsPort)
	}
	if c.concurrency == 0 {
		c.concurrency = 16
	}
	if c.grace == "" {
		c.grace = "10s"
	}
	if c.ackWait == "" {
		c.ackWait = "2s"
	}
	ordering := ""
	if c.ordering != "" {
		ordering = fmt.Sprintf("  ordering: %s\n", c.ordering)
	}
	fmt.Fprintf(&b, `nats:
  url: %q
subjects: {prefix: chat}
streams: {replicas: 1}
worker:
  concurrency: %d
  request_ttl: 1m
  ack_wait: %s
  max_deliveries: %d
%s  requeue_min: 200ms
  requeue_max: 1s
  shutdown_grace: %s
retry: {min: 10ms, max: 100ms, factor: 2, jitter: true}
breaker: {consecutive_failures: 5, open_for: 2s}
metrics:
  listen: %q
log: {level: debug}
providers:
`, c.natsURL, c.concurrency, c.ackWait, c.maxDeliveries, ordering, c.grace, listen)
	for _, p := range c.providers {
		fmt.Fprintf(&b, "  - {name: %s, kind: openai, base_url: %q, model: %s, timeout: 10s}\n", p.name, p.url, p.model)
	}
	return b.String()
}

// e2eWriteFile writes content to a new file of the test's temporary
// directory and returns its path.
func e2eWriteFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// e2eServe writes c (with a fresh metrics port) and starts `understudy serve`
// on it, waiting until /readyz answers 200.
func e2eServe(t *testing.T, name string, c e2eConfig) *e2eProc {
	t.Helper()
	c.metricsPort = e2eFreePort(t)
	path := e2eWriteFile(t, name+".yaml", c.yaml())
	p := e2eStart(t, name, e2eEnv(), "serve", "--config", path, "--name", name)
	p.port = c.metricsPort
	p.waitReadyz(20*time.Second, http.StatusOK)
	return p
}

var e2eHTTP = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// readyz is the status code of /readyz (0 when it cannot be reached).
func (p *e2eProc) readyz() int {
	resp, err := e2eHTTP.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", p.port))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitReadyz polls /readyz until it answers want; the process must stay up.
func (p *e2eProc) waitReadyz(timeout time.Duration, want int) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	last := 0
	for {
		if p.exited() {
			p.t.Fatalf("%s exited (code %d) while waiting for /readyz %d", p.name, p.cmd.ProcessState.ExitCode(), want)
		}
		if last = p.readyz(); last == want {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: /readyz answered %d, not %d, for %s", p.name, last, want, timeout)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// e2ePublish publishes request id on conversation conv, as a chat API does.
func e2ePublish(t *testing.T, js jetstream.JetStream, conv, id string) {
	t.Helper()
	data, err := json.Marshal(map[string]any{
		"id": id, "conversation_id": conv,
		"messages": []map[string]string{{"role": "system", "content": "You are Lucy."}, {"role": "user", "content": "hello there general kenobi"}},
		"metadata": map[string]string{"test": id},
	})
	if err != nil {
		t.Fatal(err)
	}
	e2ePublishData(t, js, conv, id, data)
}

// e2ePublishN publishes n requests named prefix-NN over three conversations
// and returns their ids.
func e2ePublishN(t *testing.T, js jetstream.JetStream, prefix string, from, n int) []string {
	t.Helper()
	ids := make([]string, 0, n)
	for i := from; i < from+n; i++ {
		id := fmt.Sprintf("%s-%02d", prefix, i)
		e2ePublish(t, js, fmt.Sprintf("conv-%d", i%3), id)
		ids = append(ids, id)
	}
	return ids
}

// e2eStreamMsgs is how many messages stream holds (0 when it does not exist).
func e2eStreamMsgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0
	}
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", stream, err)
	}
	return info.State.Msgs
}

// e2eReplies reads every reply of CHAT_REPLIES through an ordered consumer
// and returns how many replies each request id has, and the replies.
func e2eReplies(t *testing.T, js jetstream.JetStream) (map[string]int, []chat.Reply) {
	t.Helper()
	counts := map[string]int{}
	var replies []chat.Reply
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, chat.StreamReplies)
	if err != nil {
		t.Fatalf("stream %s: %v", chat.StreamReplies, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := int(info.State.Msgs)
	if n == 0 {
		return counts, nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"chat.replies.>"}})
	if err != nil {
		t.Fatalf("ordered consumer on %s: %v", chat.StreamReplies, err)
	}
	for len(replies) < n {
		if ctx.Err() != nil {
			t.Fatalf("read %d of the %d replies of %s in 20s", len(replies), n, chat.StreamReplies)
		}
		batch, err := cons.Fetch(n-len(replies), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatalf("fetch replies: %v", err)
		}
		for m := range batch.Messages() {
			var r chat.Reply
			if err := json.Unmarshal(m.Data(), &r); err != nil {
				t.Fatalf("reply %q is not JSON: %v", m.Data(), err)
			}
			if h := m.Headers().Get("Nats-Msg-Id"); h != r.ID {
				t.Errorf("reply on %s: Nats-Msg-Id %q differs from its id %q", m.Subject(), h, r.ID)
			}
			if want := "chat.replies." + r.ConversationID; m.Subject() != want {
				t.Errorf("reply %s stored on %s, want %s", r.ID, m.Subject(), want)
			}
			counts[r.ID]++
			replies = append(replies, r)
		}
	}
	return counts, replies
}

// e2eWaitReplies waits until CHAT_REPLIES holds at least len(ids) replies,
// then reads them and checks that every id has exactly one, and that there is
// e2eOKRedelivered fails the test for each reply that is not ok and counts
// the replies of requests delivered more than once.
func e2eOKRedelivered(t *testing.T, replies []chat.Reply) int {
	t.Helper()
	redelivered := 0
	for _, r := range replies {
		if r.Status != chat.StatusOK {
			t.Errorf("reply %s: status %s (%+v), want ok", r.ID, r.Status, r.Error)
		}
		if r.Deliveries >= 2 {
			redelivered++
		}
	}
	return redelivered
}

// no reply to anything else.
func e2eWaitReplies(t *testing.T, js jetstream.JetStream, ids []string, timeout time.Duration) []chat.Reply {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for e2eStreamMsgs(t, js, chat.StreamReplies) < uint64(len(ids)) {
		if time.Now().After(deadline) {
			counts, _ := e2eReplies(t, js)
			var missing []string
			for _, id := range ids {
				if counts[id] == 0 {
					missing = append(missing, id)
				}
			}
			t.Fatalf("after %s: %d of %d requests answered; unanswered: %v", timeout, len(counts), len(ids), missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
	counts, replies := e2eReplies(t, js)
	e2eExactlyOnce(t, ids, counts)
	return replies
}

// e2eExactlyOnce checks that counts holds exactly one reply per id of ids
// and nothing else.
func e2eExactlyOnce(t *testing.T, ids []string, counts map[string]int) {
	t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
		if counts[id] != 1 {
			t.Errorf("request %s: %d replies, want exactly 1", id, counts[id])
		}
	}
	for id, n := range counts {
		if !want[id] {
			t.Errorf("reply to unknown request id %q (%d times)", id, n)
		}
	}
}

// e2eCoreReplies counts every reply published on chat.replies.> as seen by
// a plain NATS subscriber, before the stream's deduplication: a worker
// publishing the same reply twice shows here even though the stream keeps
// one.
type e2eCoreReplies struct {
	mu     sync.Mutex
	counts map[string]int
}

func e2eSubscribeReplies(t *testing.T, nc *nats.Conn) *e2eCoreReplies {
	t.Helper()
	c := &e2eCoreReplies{counts: map[string]int{}}
	e2eSubscribe(t, nc, "chat.replies.>", func(m *nats.Msg) {
		c.mu.Lock()
		c.counts[m.Header.Get("Nats-Msg-Id")]++
		c.mu.Unlock()
	})
	return c
}

func (c *e2eCoreReplies) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.counts))
	for k, v := range c.counts {
		out[k] = v
	}
	return out
}

// e2eExitedBy reports whether the process was ended by sig.
func e2eExitedBy(p *e2eProc, sig syscall.Signal) bool {
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// e2ePublishAs publishes request id on conv under the message id msgID.
func e2ePublishAs(t *testing.T, js jetstream.JetStream, conv, id, msgID string) {
	t.Helper()
	data, err := json.Marshal(map[string]any{"id": id, "conversation_id": conv,
		"messages": []map[string]string{{"role": "user", "content": "hello there general kenobi"}}})
	if err != nil {
		t.Fatal(err)
	}
	e2ePublishData(t, js, conv, msgID, data)
}

// e2eConsumerIdle reports whether the workers consumer has nothing left to
// deliver and nothing waiting for an ack.
func e2eConsumerIdle(t *testing.T, js jetstream.JetStream) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, chat.StreamRequests, chat.ConsumerWorkers)
	if err != nil {
		t.Fatalf("consumer %s: %v", chat.ConsumerWorkers, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending == 0 && info.NumAckPending == 0
}

// exactlyOnce waits until every id of ids was seen on the core subject and
// checks that each was published exactly once, and nothing else.
func (c *e2eCoreReplies) exactlyOnce(t *testing.T, ids []string) {
	t.Helper()
	poll.Until(t, 5*time.Second, "every reply on the core subject", func() bool { return len(c.snapshot()) >= len(ids) })
	e2eExactlyOnce(t, ids, c.snapshot())
}

// e2eWatchPulls signals each pull request a worker sends to the workers
// consumer, seen by a plain subscriber to the consumer's next-message
// subject.
func e2eWatchPulls(t *testing.T, nc *nats.Conn) <-chan struct{} {
	t.Helper()
	pulls := make(chan struct{}, 64)
	sub, err := nc.Subscribe("$JS.API.CONSUMER.MSG.NEXT."+chat.StreamRequests+"."+chat.ConsumerWorkers, func(*nats.Msg) {
		select {
		case pulls <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return pulls
}

// e2eSubscribe subscribes fn to subject until the test ends; the server has
// the interest when it returns.
func e2eSubscribe(t *testing.T, nc *nats.Conn, subject string, fn nats.MsgHandler) {
	t.Helper()
	sub, err := nc.Subscribe(subject, fn)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

// e2ePublishData stores request data on conv with Nats-Msg-Id msgID.
func e2ePublishData(t *testing.T, js jetstream.JetStream, conv, msgID string, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg := &nats.Msg{Subject: "chat.requests." + conv, Data: data, Header: nats.Header{}}
	msg.Header.Set("Nats-Msg-Id", msgID)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatalf("publish %s: %v", msgID, err)
	}
}
