package main

// End-to-end regression tests for shutdown and delivery-budget bugs found
// by this suite (each was fixed in worker/ or broker/).

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// Requests put back by a SIGTERM whose grace ran out must be served by the
// next worker (SPEC §4.9), even with worker.max_deliveries: 1: the put-back
// (NakWithDelay) spends a delivery, and the consumer's own bound leaves room
// for such put-backs.
func TestRegressionSIGTERMPutBackSpendsMaxDeliveries(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	slow, slowURL := e2eSim(t, sim.Config{Model: "sim-slow", Latency: 5 * time.Second})
	_, fastURL := e2eSim(t, sim.Config{Model: "sim-fast"})
	cfg := e2eConfig{natsURL: ns.ClientURL(), grace: "300ms", maxDeliveries: 1, providers: []e2eProvider{{"primary", slowURL, "sim-slow"}}}
	w1 := e2eServe(t, "worker-1", cfg)
	_, js := e2eClient(t, ns.ClientURL())
	ids := e2ePublishN(t, js, "md", 1, 4)
	poll.Until(t, 20*time.Second, "4 requests in flight", func() bool { return slow.Hits() >= 4 })
	w1.terminate(15 * time.Second)
	cfg.providers = []e2eProvider{{"primary", fastURL, "sim-fast"}}
	e2eServe(t, "worker-2", cfg)
	for _, r := range e2eWaitReplies(t, js, ids, 30*time.Second) {
		if r.Status != chat.StatusOK {
			t.Errorf("reply %s: %s %+v, want ok from worker-2", r.ID, r.Status, r.Error)
		}
	}
	if n := e2eStreamMsgs(t, js, chat.StreamDead); n != 0 {
		t.Errorf("CHAT_DEAD holds %d requests put back by a graceful shutdown", n)
	}
}

// The shutdown grace runs from the SIGTERM, not from the end of the pull
// under way then (worker.fetchWait, 1s). The test sends SIGTERM just after a
// pull request reaches the server, seen by a plain subscriber to the
// consumer's next-message subject.
func TestRegressionGraceStartsAfterThePull(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	slow, slowURL := e2eSim(t, sim.Config{Model: "sim-slow", Latency: 10 * time.Second})
	cfg := e2eConfig{natsURL: ns.ClientURL(), concurrency: 16, grace: "300ms", providers: []e2eProvider{{"primary", slowURL, "sim-slow"}}}
	w1 := e2eServe(t, "worker-1", cfg)
	nc, js := e2eClient(t, ns.ClientURL())
	pulls := e2eWatchPulls(t, nc)
	e2ePublishN(t, js, "pull", 1, 2) // 14 slots stay free: the worker keeps pulling
	poll.Until(t, 20*time.Second, "2 requests in flight", func() bool { return slow.Hits() >= 2 })
	for len(pulls) > 0 {
		<-pulls
	}
	select {
	case <-pulls:
	case <-time.After(5 * time.Second):
		t.Fatal("no pull request seen in 5s")
	}
	// The grace starts at the signal; the pull open then may still take up
	// to its 1s expiry to end (requests it receives are put back).
	if took := w1.terminate(15 * time.Second); took > 2500*time.Millisecond {
		t.Errorf("SIGTERM to exit took %s with shutdown_grace 300ms and 10s calls", took)
	}
}

// Requests pulled while a SIGTERM drain waits for its pull to end are given
// back delayed past that pull's end; with NakWithDelay(0) they bounced back
// into the same pull until their deliveries ran out, and the next worker
// answered them providers_exhausted without calling any provider.
func TestRegressionDrainNakSpendsMaxDeliveries(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	provider, url := e2eSim(t, sim.Config{Model: "sim-1"})
	cfg := e2eConfig{natsURL: ns.ClientURL(), maxDeliveries: 1, providers: []e2eProvider{{"primary", url, "sim-1"}}}
	w1 := e2eServe(t, "worker-1", cfg)
	nc, js := e2eClient(t, ns.ClientURL())
	pulls := e2eWatchPulls(t, nc)
	for len(pulls) > 0 {
		<-pulls
	}
	select {
	case <-pulls:
	case <-time.After(5 * time.Second):
		t.Fatal("no pull request seen in 5s")
	}
	w1.signal(syscall.SIGTERM)
	time.Sleep(50 * time.Millisecond) // the drain has begun; the pull is still open
	ids := e2ePublishN(t, js, "late", 1, 3)
	if code := w1.waitExit(15 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	e2eServe(t, "worker-2", cfg)
	for _, r := range e2eWaitReplies(t, js, ids, 20*time.Second) {
		if r.Status != chat.StatusOK {
			t.Errorf("reply %s: %s %+v, want ok", r.ID, r.Status, r.Error)
		}
	}
	t.Logf("provider calls: %d", provider.Hits())
}

// A clean shutdown must not log "disconnected from NATS; reconnecting": the
// disconnect handler also fires when the connection is drained and closed.
func TestRegressionCleanShutdownLogsReconnecting(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	_, url := e2eSim(t, sim.Config{})
	w := e2eServe(t, "worker", e2eConfig{natsURL: ns.ClientURL(), providers: []e2eProvider{{"primary", url, "m"}}})
	w.terminate(15 * time.Second)
	if s := w.stderr.String(); strings.Contains(s, "reconnecting") {
		t.Errorf("a clean shutdown logged a reconnection:\n%s", e2eTail(s, 2000))
	}
}
