package main

// End-to-end tests of the understudy binary (SPEC §4 items 7-9, §7): the
// crash and drain tests run the built binary as a subprocess and kill it for
// real.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// SPEC §4.8: a worker killed with SIGKILL loses nothing: its messages are
// redelivered to another worker, and each request still gets exactly one
// reply.
func TestServeSIGKILLMidFlightLosesNothing(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	provider, url := e2eSim(t, sim.Config{Model: "sim-crash", Latency: 1500 * time.Millisecond})
	cfg := e2eConfig{natsURL: ns.ClientURL(), concurrency: 8, providers: []e2eProvider{{"primary", url, "sim-crash"}}}
	w1 := e2eServe(t, "worker-1", cfg)
	_, js := e2eClient(t, ns.ClientURL())

	ids := e2ePublishN(t, js, "kill", 1, 20)
	// The first 8 are answered after 1.5s; kill while the next ones are
	// being answered.
	poll.Until(t, 20*time.Second, "the provider to receive 10 calls", func() bool { return provider.Hits() >= 10 })
	w1.signal(os.Kill)
	w1.waitExit(10 * time.Second)
	if !e2eExitedBy(w1, syscall.SIGKILL) {
		t.Fatalf("worker-1 was not killed by SIGKILL: %v", w1.cmd.ProcessState)
	}
	hitsAtKill := provider.Hits()
	answeredAtKill := e2eStreamMsgs(t, js, chat.StreamReplies)
	t.Logf("at the kill: %d provider calls, %d replies", hitsAtKill, answeredAtKill)
	if answeredAtKill >= uint64(hitsAtKill) {
		t.Fatalf("nothing was in flight at the kill (%d calls, %d replies): the test proves nothing", hitsAtKill, answeredAtKill)
	}

	e2eServe(t, "worker-2", cfg)
	replies := e2eWaitReplies(t, js, ids, 40*time.Second)
	redelivered := e2eOKRedelivered(t, replies)
	if redelivered == 0 {
		t.Errorf("no reply has deliveries >= 2: the requests in flight at the kill were not redelivered")
	}
	if n := e2eStreamMsgs(t, js, chat.StreamDead); n != 0 {
		t.Errorf("CHAT_DEAD holds %d messages, want 0", n)
	}
	t.Logf("%d replies, %d of them redelivered; %d provider calls in all", len(replies), redelivered, provider.Hits())
}

// SPEC §4.9: SIGTERM stops pulling, finishes the requests in flight, exits
// 0; what was never pulled is served by the next worker, each request once.
func TestServeSIGTERMDrainsInFlight(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	provider, url := e2eSim(t, sim.Config{Model: "sim-drain", Latency: time.Second})
	cfg := e2eConfig{natsURL: ns.ClientURL(), concurrency: 3, grace: "10s", providers: []e2eProvider{{"primary", url, "sim-drain"}}}
	w1 := e2eServe(t, "worker-1", cfg)
	nc, js := e2eClient(t, ns.ClientURL())
	core := e2eSubscribeReplies(t, nc)

	ids := e2ePublishN(t, js, "drain", 1, 10)
	poll.Until(t, 20*time.Second, "3 requests in flight", func() bool { return provider.Hits() >= 3 })
	if n := e2eStreamMsgs(t, js, chat.StreamReplies); n != 0 {
		t.Fatalf("%d replies before the SIGTERM; want the first requests still in flight", n)
	}
	took := w1.terminate(15 * time.Second)
	if took > 8*time.Second {
		t.Errorf("drain took %s; the requests in flight needed about 1s", took)
	}
	hitsAtExit := provider.Hits()
	counts, _ := e2eReplies(t, js)
	t.Logf("SIGTERM to exit: %s; %d provider calls, %d replies stored at exit", took, hitsAtExit, len(counts))
	// Every call made before the exit was answered before the exit: nothing
	// in flight was abandoned.
	if len(counts) != int(hitsAtExit) || hitsAtExit < 3 {
		t.Errorf("at exit: %d replies for %d provider calls (>= 3 were in flight at the SIGTERM); want one reply per call", len(counts), hitsAtExit)
	}
	if len(counts) >= len(ids) {
		t.Errorf("all %d requests answered by the draining worker: it kept pulling after SIGTERM", len(counts))
	}

	ids = append(ids, e2ePublishN(t, js, "drain", 11, 5)...)
	e2eServe(t, "worker-2", cfg)
	replies := e2eWaitReplies(t, js, ids, 40*time.Second)
	for _, r := range replies {
		if r.Status != chat.StatusOK || r.Model != "sim-drain" {
			t.Errorf("reply %s: status %s model %q, want ok from sim-drain", r.ID, r.Status, r.Model)
		}
	}
	// A drain neither calls a provider twice for one request nor publishes a
	// reply twice.
	if h := provider.Hits(); h != int64(len(ids)) {
		t.Errorf("provider called %d times for %d requests; want exactly one call each", h, len(ids))
	}
	core.exactlyOnce(t, ids)
	if n := e2eStreamMsgs(t, js, chat.StreamDead); n != 0 {
		t.Errorf("CHAT_DEAD holds %d messages, want 0", n)
	}
}

// SPEC §4.9: when the grace is shorter than the calls in flight, the worker
// exits 0 at the end of the grace and puts those requests back; another
// worker answers each of them once.
func TestServeSIGTERMGraceOverPutsBack(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	slow, slowURL := e2eSim(t, sim.Config{Model: "sim-slow", Latency: 5 * time.Second})
	fast, fastURL := e2eSim(t, sim.Config{Model: "sim-fast"})
	cfg := e2eConfig{natsURL: ns.ClientURL(), concurrency: 16, grace: "300ms", providers: []e2eProvider{{"primary", slowURL, "sim-slow"}}}
	w1 := e2eServe(t, "worker-1", cfg)
	nc, js := e2eClient(t, ns.ClientURL())
	core := e2eSubscribeReplies(t, nc)

	ids := e2ePublishN(t, js, "grace", 1, 4)
	poll.Until(t, 20*time.Second, "4 requests in flight", func() bool { return slow.Hits() >= 4 })
	// The calls would take 5s; the grace is 300ms.
	took := w1.terminate(15 * time.Second)
	if took > 4*time.Second {
		t.Errorf("SIGTERM to exit took %s with shutdown_grace 300ms", took)
	}
	t.Logf("SIGTERM to exit: %s", took)
	if n := e2eStreamMsgs(t, js, chat.StreamReplies); n != 0 {
		t.Fatalf("%d replies stored by a worker whose grace ran out before any call ended", n)
	}

	cfg.providers = []e2eProvider{{"primary", fastURL, "sim-fast"}}
	e2eServe(t, "worker-2", cfg)
	// Put back with no delay: they must not wait for ack_wait (2s) either.
	replies := e2eWaitReplies(t, js, ids, 30*time.Second)
	for _, r := range replies {
		if r.Status != chat.StatusOK || r.Model != "sim-fast" {
			t.Errorf("reply %s: status %s model %q, want ok from sim-fast", r.ID, r.Status, r.Model)
		}
		if r.Deliveries < 2 {
			t.Errorf("reply %s: deliveries %d, want >= 2 (put back by worker-1)", r.ID, r.Deliveries)
		}
	}
	if h := slow.Hits(); h != 4 {
		t.Errorf("slow provider called %d times, want 4", h)
	}
	if h := fast.Hits(); h != 4 {
		t.Errorf("fast provider called %d times, want 4", h)
	}
	core.exactlyOnce(t, ids)
	if n := e2eStreamMsgs(t, js, chat.StreamDead); n != 0 {
		t.Errorf("CHAT_DEAD holds %d messages, want 0", n)
	}
}

// SPEC §4.9: a NATS outage is not a reason to exit: the worker reports
// not-ready, reconnects by itself and answers everything once.
func TestServeSurvivesNATSRestart(t *testing.T) {
	e2eNeedBinary(t)
	store := t.TempDir()
	ns := e2eNATS(t, store, -1)
	natsPort := e2eNATSPort(t, ns.ClientURL())
	provider, url := e2eSim(t, sim.Config{Model: "sim-restart", Latency: 500 * time.Millisecond})
	cfg := e2eConfig{natsURL: ns.ClientURL(), concurrency: 4, providers: []e2eProvider{{"primary", url, "sim-restart"}}}
	w := e2eServe(t, "worker", cfg)
	nc, js := e2eClient(t, ns.ClientURL())
	core := e2eSubscribeReplies(t, nc)

	ids := e2ePublishN(t, js, "before", 1, 12)
	poll.Until(t, 20*time.Second, "some replies and more calls in flight", func() bool {
		return e2eStreamMsgs(t, js, chat.StreamReplies) >= 4 && provider.Hits() >= 5
	})
	ns.Shutdown()
	ns.WaitForShutdown()
	w.waitReadyz(10*time.Second, http.StatusServiceUnavailable)
	time.Sleep(time.Second) // the outage lasts: the worker must wait it out, not exit
	if w.exited() {
		t.Fatalf("worker exited (code %d) during the NATS outage", w.cmd.ProcessState.ExitCode())
	}
	if code := w.readyz(); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz answered %d during the outage, want 503", code)
	}

	e2eNATS(t, store, natsPort)
	w.waitReadyz(20*time.Second, http.StatusOK)
	ids = append(ids, e2ePublishN(t, js, "after", 13, 10)...)
	replies := e2eWaitReplies(t, js, ids, 45*time.Second)
	for _, r := range replies {
		if r.Status != chat.StatusOK {
			t.Errorf("reply %s: status %s (%+v), want ok", r.ID, r.Status, r.Error)
		}
	}
	if w.exited() {
		t.Fatalf("worker exited (code %d)", w.cmd.ProcessState.ExitCode())
	}
	if n := e2eStreamMsgs(t, js, chat.StreamDead); n != 0 {
		t.Errorf("CHAT_DEAD holds %d messages, want 0", n)
	}
	w.terminate(15 * time.Second)
	// A reply published during the outage may be published again after it
	// (the stream keeps one); core subscribers may then see it twice.
	twice := 0
	for _, n := range core.snapshot() {
		if n > 1 {
			twice++
		}
	}
	t.Logf("%d requests answered once; %d provider calls; %d replies seen more than once on the core subject", len(ids), provider.Hits(), twice)
}

// e2eNATSPort is the port of a nats://host:port URL.
func e2eNATSPort(t *testing.T, url string) int {
	t.Helper()
	var port int
	i := strings.LastIndexByte(url, ':')
	if _, err := fmt.Sscanf(url[i+1:], "%d", &port); err != nil || port == 0 {
		t.Fatalf("no port in %q", url)
	}
	return port
}

// SPEC §7: `understudy send` prints the content (or the reply with --json)
// and exits 0 on ok, 1 on failed, 2 when no reply came in time.
func TestSend(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	provider, url := e2eSim(t, sim.Config{Model: "sim-send"})
	cfg := e2eConfig{natsURL: ns.ClientURL(), maxDeliveries: 1, providers: []e2eProvider{{"primary", url, "sim-send"}}}
	w := e2eServe(t, "worker", cfg)
	_, js := e2eClient(t, ns.ClientURL())
	path := e2eWriteFile(t, "send.yaml", cfg.yaml()) // metrics port irrelevant to send

	t.Run("ok", func(t *testing.T) {
		out, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv(), "send", "--config", path, "--conversation", "c-send", "--timeout", "20s", "hello", "there")
		if code != 0 {
			t.Fatalf("exit %d, want 0; stderr: %s", code, errOut)
		}
		if want := "[sim-send] you said 2 words\n"; out != want {
			t.Errorf("stdout %q, want %q", out, want)
		}
	})
	t.Run("json", func(t *testing.T) {
		out, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv(), "send", "--config", path, "--conversation", "c-send", "--timeout", "20s",
			"--json", "--id", "send-json-1", "--system", "You are Lucy.", "one", "two", "three")
		if code != 0 {
			t.Fatalf("exit %d, want 0; stderr: %s", code, errOut)
		}
		var r chat.Reply
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("stdout is not a reply: %v\n%s", err, out)
		}
		if r.ID != "send-json-1" || r.ConversationID != "c-send" || r.Status != chat.StatusOK || r.Provider != "primary" ||
			r.Model != "sim-send" || r.Content != "[sim-send] you said 3 words" || r.Degraded || r.Deliveries != 1 || len(r.Attempts) != 1 {
			t.Errorf("reply %+v", r)
		}
	})
	t.Run("env-config", func(t *testing.T) {
		out, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv("UNDERSTUDY_CONFIG="+path), "send", "--conversation", "c-env", "--timeout", "20s", "from", "the", "env")
		if code != 0 || out != "[sim-send] you said 3 words\n" {
			t.Fatalf("exit %d stdout %q, want 0 and the content; stderr: %s", code, out, errOut)
		}
	})
	t.Run("failed", func(t *testing.T) {
		provider.SetMode(sim.ModeReject)
		defer provider.SetMode(sim.ModeOK)
		out, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv(), "send", "--config", path, "--conversation", "c-fail", "--timeout", "20s",
			"--json", "--id", "send-fail-1", "refuse", "me")
		if code != 1 {
			t.Fatalf("exit %d, want 1; stdout %s stderr %s", code, out, errOut)
		}
		var r chat.Reply
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("stdout is not a reply: %v\n%s", err, out)
		}
		if r.Status != chat.StatusFailed || r.Error == nil || r.Error.Code != chat.CodeInvalidRequest {
			t.Errorf("reply %+v, want failed with invalid_request (every provider rejected it)", r)
		}
		if len(r.Attempts) != 1 || r.Attempts[0].Outcome != chat.OutcomeRejected || r.Attempts[0].StatusCode != 400 {
			t.Errorf("attempts %+v, want one rejected with 400", r.Attempts)
		}
		if !strings.Contains(errOut, "invalid_request") {
			t.Errorf("stderr does not say why: %s", errOut)
		}
		if n := e2eStreamMsgs(t, js, chat.StreamDead); n != 1 {
			t.Errorf("CHAT_DEAD holds %d messages, want 1", n)
		}
	})
	t.Run("no-worker", func(t *testing.T) {
		w.terminate(15 * time.Second)
		out, errOut, code, took := e2eRun(t, 20*time.Second, e2eEnv(), "send", "--config", path, "--conversation", "c-none", "--timeout", "1s", "anyone")
		if code != 2 {
			t.Fatalf("exit %d, want 2; stdout %q stderr %s", code, out, errOut)
		}
		// The deadline (1s) plus the grace for a deadline_exceeded answer (5s).
		if took > 12*time.Second {
			t.Errorf("send --timeout 1s took %s", took)
		}
		if out != "" || !strings.Contains(errOut, "no reply") {
			t.Errorf("stdout %q stderr %q, want nothing and \"no reply\"", out, errOut)
		}
	})
}

// SPEC §6: an invalid configuration stops start-up with one clear message
// naming the key; UNDERSTUDY_CONFIG is read when --config is not given.
func TestServeInvalidConfig(t *testing.T) {
	e2eNeedBinary(t)
	good := e2eConfig{natsURL: "nats://127.0.0.1:1", providers: []e2eProvider{{"primary", "http://127.0.0.1:1/v1", "m"}}}.yaml()
	cases := []struct {
		name, yaml, key string
	}{
		{"concurrency", strings.Replace(good, "concurrency: 16", "concurrency: 0", 1), "worker.concurrency"},
		{"kind", strings.Replace(good, "kind: openai", "kind: foo", 1), "providers[0].kind"},
		{"unknown-key", good + "bogus_key: 1\n", "bogus_key"},
		{"ack-wait", strings.Replace(good, "ack_wait: 2s", "ack_wait: 100ms", 1), "worker.ack_wait"},
		{"log-level", strings.Replace(good, "level: debug", "level: loud", 1), "log.level"},
		{"base-url", strings.Replace(good, "http://127.0.0.1:1/v1", "ftp://x", 1), "providers[0].base_url"},
		{"not-yaml", "worker: [\n", "yaml"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := e2eWriteFile(t, "bad.yaml", c.yaml)
			out, errOut, code, took := e2eRun(t, 10*time.Second, e2eEnv(), "serve", "--config", path)
			if code == 0 {
				t.Fatalf("serve exited 0 on a bad configuration")
			}
			if !strings.Contains(errOut, c.key) || !strings.Contains(errOut, "invalid configuration") {
				t.Errorf("stderr does not name %s: %s", c.key, errOut)
			}
			if n := strings.Count(strings.TrimSpace(errOut), "\n"); n > 2 {
				t.Errorf("stderr has %d lines, want one clear message:\n%s", n+1, errOut)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			if took > 5*time.Second {
				t.Errorf("took %s to refuse the configuration", took)
			}
			t.Logf("exit %d: %s", code, strings.TrimSpace(errOut))
		})
	}
	t.Run("env", func(t *testing.T) {
		path := e2eWriteFile(t, "env-bad.yaml", strings.Replace(good, "kind: openai", "kind: foo", 1))
		_, errOut, code, _ := e2eRun(t, 10*time.Second, e2eEnv("UNDERSTUDY_CONFIG="+path), "serve")
		if code == 0 || !strings.Contains(errOut, "providers[0].kind") || !strings.Contains(errOut, path) {
			t.Errorf("exit %d stderr %q: want non-zero, naming %s and the key", code, errOut, path)
		}
	})
	t.Run("flag-over-env", func(t *testing.T) {
		bad := e2eWriteFile(t, "bad.yaml", strings.Replace(good, "kind: openai", "kind: foo", 1))
		worse := e2eWriteFile(t, "worse.yaml", strings.Replace(good, "level: debug", "level: loud", 1))
		_, errOut, code, _ := e2eRun(t, 10*time.Second, e2eEnv("UNDERSTUDY_CONFIG="+bad), "serve", "--config", worse)
		if code == 0 || !strings.Contains(errOut, "log.level") {
			t.Errorf("exit %d stderr %q: --config must win over UNDERSTUDY_CONFIG", code, errOut)
		}
	})
	t.Run("missing-file", func(t *testing.T) {
		_, errOut, code, _ := e2eRun(t, 10*time.Second, e2eEnv(), "serve", "--config", "/nonexistent/understudy.yaml")
		if code == 0 || !strings.Contains(errOut, "/nonexistent/understudy.yaml") {
			t.Errorf("exit %d stderr %q", code, errOut)
		}
	})
	t.Run("missing-api-key", func(t *testing.T) {
		doc := strings.Replace(good, "timeout: 10s}", "timeout: 10s, api_key_env: UNDERSTUDY_E2E_UNSET_KEY}", 1)
		path := e2eWriteFile(t, "key.yaml", doc)
		_, errOut, code, took := e2eRun(t, 15*time.Second, e2eEnv(), "serve", "--config", path)
		if code == 0 || !strings.Contains(errOut, "UNDERSTUDY_E2E_UNSET_KEY") {
			t.Errorf("exit %d stderr %q: want non-zero naming the unset variable", code, errOut)
		}
		if took > 5*time.Second {
			t.Errorf("took %s to refuse a missing key", took)
		}
	})
}

// SPEC §7: the demo answers every request exactly once and exits 0.
func TestDemo(t *testing.T) {
	e2eNeedBinary(t)
	out, errOut, code, took := e2eRun(t, 90*time.Second, e2eEnv(), "demo", "--duration", "6s", "--rate", "10", "--open-for", "1s", "--report", "none")
	if code != 0 {
		t.Fatalf("demo exited %d; stdout:\n%s\nstderr:\n%s", code, e2eTail(out, 4000), e2eTail(errOut, 4000))
	}
	if !strings.Contains(out, "OK: every request was answered exactly once") {
		t.Errorf("stdout lacks the OK line:\n%s", out)
	}
	if !strings.Contains(out, "deepseek outage begins") || !strings.Contains(out, "deepseek is back") {
		t.Errorf("stdout does not show the outage:\n%s", out)
	}
	// The live line counts the streamed requests (a quarter, by default)
	// and the resets heard on the stream subjects; whether deepseek is
	// called for a streamed request during the outage is up to timing.
	lines := regexp.MustCompile(`(?m)^\[.*\| streamed (\d+)  resets (\d+) \| served:`).FindAllStringSubmatch(out, -1)
	if len(lines) == 0 {
		t.Fatalf("no live line with the streamed requests and resets:\n%s", out)
	}
	last := lines[len(lines)-1]
	if streamed, _ := strconv.Atoi(last[1]); streamed == 0 {
		t.Errorf("no request streamed: %s", last[0])
	}
	t.Logf("demo took %s; last line: %s", took, last[0])
}

// SPEC §5, §7: `understudy sim` serves a simulated provider until SIGTERM.
func TestSimCommand(t *testing.T) {
	e2eNeedBinary(t)
	port := e2eFreePort(t)
	p := e2eStart(t, "sim", e2eEnv(), "sim", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--mode", "error")
	url := fmt.Sprintf("http://127.0.0.1:%d/v1/chat/completions", port)
	body := `{"model":"sim-1","messages":[{"role":"user","content":"hi"}]}`
	status := 0
	poll.Until(t, 10*time.Second, "the sim to answer", func() bool {
		if p.exited() {
			t.Fatalf("sim exited %d: %s", p.cmd.ProcessState.ExitCode(), p.stderr.String())
		}
		resp, err := e2eHTTP.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			return false
		}
		resp.Body.Close()
		status = resp.StatusCode
		return true
	})
	if status != http.StatusServiceUnavailable {
		t.Errorf("POST /v1/chat/completions answered %d in mode error, want 503", status)
	}
	p.terminate(10 * time.Second)
	if !strings.Contains(p.stderr.String(), "simulated provider stopped") {
		t.Errorf("stderr: %s", p.stderr.String())
	}
}

// SPEC §4.7: the same request published twice (a chat API retrying with a
// new message id, beyond the duplicate window's help) gets exactly one
// reply and one provider call, even with two worker processes racing.
func TestServeDuplicateRequestsAcrossWorkers(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	provider, url := e2eSim(t, sim.Config{Model: "sim-dup", Latency: 300 * time.Millisecond})
	cfg := e2eConfig{natsURL: ns.ClientURL(), concurrency: 8, providers: []e2eProvider{{"primary", url, "sim-dup"}}}
	e2eServe(t, "worker-1", cfg)
	e2eServe(t, "worker-2", cfg)
	nc, js := e2eClient(t, ns.ClientURL())
	core := e2eSubscribeReplies(t, nc)

	var ids []string
	for i := 1; i <= 10; i++ {
		id := fmt.Sprintf("dup-%02d", i)
		conv := fmt.Sprintf("conv-%d", i%3)
		e2ePublish(t, js, conv, id)
		e2ePublishAs(t, js, conv, id, id+"-again") // stored: another message id
		ids = append(ids, id)
	}
	if n := e2eStreamMsgs(t, js, chat.StreamRequests); n != 20 {
		t.Fatalf("CHAT_REQUESTS holds %d messages, want 20", n)
	}
	e2eWaitReplies(t, js, ids, 30*time.Second)
	poll.Until(t, 30*time.Second, "every copy to be acked", func() bool { return e2eConsumerIdle(t, js) })
	counts, _ := e2eReplies(t, js)
	e2eExactlyOnce(t, ids, counts)
	core.exactlyOnce(t, ids)
	if h := provider.Hits(); h != int64(len(ids)) {
		t.Errorf("provider called %d times for %d distinct ids; want one call per id", h, len(ids))
	}
	if n := e2eStreamMsgs(t, js, chat.StreamDead); n != 0 {
		t.Errorf("CHAT_DEAD holds %d messages, want 0", n)
	}
}

// SPEC §4.9, §8: a worker may start before NATS (not ready, not exiting),
// and SIGTERM during a NATS outage still exits 0.
func TestServeWithoutNATS(t *testing.T) {
	e2eNeedBinary(t)
	natsPort := e2eFreePort(t)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	_, url := e2eSim(t, sim.Config{Model: "sim-late"})
	cfg := e2eConfig{natsURL: natsURL, metricsPort: e2eFreePort(t), providers: []e2eProvider{{"primary", url, "sim-late"}}}
	path := e2eWriteFile(t, "late.yaml", cfg.yaml())

	t.Run("sigterm-while-waiting", func(t *testing.T) {
		p := e2eStart(t, "early", e2eEnv(), "serve", "--config", path)
		p.port = cfg.metricsPort
		p.waitReadyz(10*time.Second, http.StatusServiceUnavailable)
		if took := p.terminate(15 * time.Second); took > 5*time.Second {
			t.Errorf("SIGTERM to exit took %s", took)
		}
	})

	t.Run("nats-comes-late-then-goes", func(t *testing.T) {
		p := e2eStart(t, "worker", e2eEnv(), "serve", "--config", path)
		p.port = cfg.metricsPort
		p.waitReadyz(10*time.Second, http.StatusServiceUnavailable)
		time.Sleep(1500 * time.Millisecond) // retrying, not giving up
		if p.exited() {
			t.Fatalf("serve exited %d while NATS was not there yet", p.cmd.ProcessState.ExitCode())
		}
		store := t.TempDir()
		ns := e2eNATS(t, store, natsPort)
		p.waitReadyz(20*time.Second, http.StatusOK)
		_, js := e2eClient(t, natsURL)
		ids := e2ePublishN(t, js, "late", 1, 3)
		e2eWaitReplies(t, js, ids, 20*time.Second)

		ns.Shutdown()
		ns.WaitForShutdown()
		p.waitReadyz(10*time.Second, http.StatusServiceUnavailable)
		took := p.terminate(30 * time.Second)
		if took > 12*time.Second {
			t.Errorf("SIGTERM to exit took %s during a NATS outage", took)
		}
		t.Logf("SIGTERM to exit during the outage: %s", took)
	})

	t.Run("send-nats-down", func(t *testing.T) {
		out, errOut, code, took := e2eRun(t, 20*time.Second, e2eEnv(), "send", "--config", path, "--conversation", "c-1", "--timeout", "1s", "anyone")
		if code != 2 {
			t.Errorf("exit %d, want 2; stdout %q stderr %s", code, out, errOut)
		}
		if took > 6*time.Second {
			t.Errorf("send --timeout 1s took %s with NATS down", took)
		}
		t.Logf("send with NATS down: exit %d after %s: %s", code, took, strings.TrimSpace(errOut))
	})
}

// SPEC §4.8: a provider call longer than ack_wait keeps its message
// (InProgress): it is not redelivered to another live worker, so each
// request is called once and answered on its first delivery.
func TestServeLongCallsKeepTheirMessage(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	provider, url := e2eSim(t, sim.Config{Model: "sim-long", Latency: 4500 * time.Millisecond}) // ack_wait is 2s
	cfg := e2eConfig{natsURL: ns.ClientURL(), concurrency: 8, providers: []e2eProvider{{"primary", url, "sim-long"}}}
	e2eServe(t, "worker-1", cfg)
	e2eServe(t, "worker-2", cfg)
	nc, js := e2eClient(t, ns.ClientURL())
	core := e2eSubscribeReplies(t, nc)

	ids := e2ePublishN(t, js, "long", 1, 6)
	replies := e2eWaitReplies(t, js, ids, 30*time.Second)
	for _, r := range replies {
		if r.Status != chat.StatusOK || r.Deliveries != 1 {
			t.Errorf("reply %s: status %s deliveries %d, want ok on the first delivery", r.ID, r.Status, r.Deliveries)
		}
	}
	if h := provider.Hits(); h != int64(len(ids)) {
		t.Errorf("provider called %d times for %d requests: a long call was redelivered under a live worker", h, len(ids))
	}
	core.exactlyOnce(t, ids)
}
