package main

// The cluster case end to end (issue 7, item 8): three nats-server
// processes, two understudy workers, steady load, the requests stream's
// leader killed with SIGKILL and restarted, a worker killed with SIGKILL.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// clusterE2EEnv names the variable that turns the cluster test on: it runs
// real processes for about half a minute, so the README's test command
// leaves it to its own CI step (.ci/run).
const clusterE2EEnv = "UNDERSTUDY_E2E_CLUSTER"

func TestClusterLosesANodeAndAWorkerLosesNothing(t *testing.T) {
	e2eNeedBinary(t)
	if os.Getenv(clusterE2EEnv) == "" {
		t.Skipf("cluster end-to-end test: set %s=1 to run it", clusterE2EEnv)
	}
	const (
		requests    = 300
		every       = 50 * time.Millisecond // 300 requests over 15s
		concurrency = 8
	)
	cluster := e2eStartCluster(t, 3)
	provider, url := e2eSim(t, sim.Config{Model: "sim-cluster", Latency: 100 * time.Millisecond, Jitter: 100 * time.Millisecond})
	cfg := e2eConfig{natsURL: cluster.urls(), concurrency: concurrency, maxDeliveries: 5, providers: []e2eProvider{{"primary", url, "sim-cluster"}}}
	w1 := e2eServeReplicas(t, "worker-1", cfg, 3)
	e2eServeReplicas(t, "worker-2", cfg, 3)
	_, js := e2eClient(t, cluster.urls())

	var published atomic.Int64
	ids := make([]string, requests)
	failed := make(chan error, 1)
	go func() {
		defer close(failed)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := range requests {
			<-tick.C
			ids[i] = fmt.Sprintf("cl-%03d", i)
			if err := e2ePublishRetrying(js, fmt.Sprintf("conv-%d", i%7), ids[i], 20*time.Second); err != nil {
				failed <- err
				return
			}
			published.Add(1)
		}
	}()
	waitPublished := func(n int64) {
		t.Helper()
		poll.Until(t, 30*time.Second, fmt.Sprintf("%d requests published", n), func() bool { return published.Load() >= n })
	}

	waitPublished(requests / 4)
	leader := e2eStreamLeader(js, chat.StreamRequests)
	if leader == "" {
		t.Fatalf("%s has no leader", chat.StreamRequests)
	}
	lost := cluster.node(leader)
	lost.kill()
	t.Logf("killed %s, the %s leader, with SIGKILL after %d requests", leader, chat.StreamRequests, published.Load())
	poll.Until(t, 20*time.Second, "a new leader of "+chat.StreamRequests, func() bool {
		l := e2eStreamLeader(js, chat.StreamRequests)
		return l != "" && l != leader
	})
	t.Logf("%s now leads %s", e2eStreamLeader(js, chat.StreamRequests), chat.StreamRequests)

	waitPublished(requests / 2)
	lost.start()
	t.Logf("restarted %s after %d requests", leader, published.Load())

	waitPublished(3 * requests / 4)
	hitsAtKill, repliesAtKill := provider.Hits(), e2eStreamMsgs(t, js, chat.StreamReplies)
	w1.signal(os.Kill)
	w1.waitExit(10 * time.Second)
	if !e2eExitedBy(w1, syscall.SIGKILL) {
		t.Fatalf("worker-1 was not killed by SIGKILL: %v", w1.cmd.ProcessState)
	}
	t.Logf("killed worker-1 with SIGKILL after %d requests (%d provider calls, %d replies)", published.Load(), hitsAtKill, repliesAtKill)

	if err := <-failed; err != nil {
		t.Fatal(err)
	}
	e2eWaitReplies(t, js, ids, 40*time.Second)
	if n := e2eStreamMsgs(t, js, chat.StreamDead); n != 0 {
		t.Errorf("%s holds %d dead letters, want 0", chat.StreamDead, n)
	}
	// A request whose call was in flight in the killed worker is called
	// again by the survivor: at most one per slot of the killed worker.
	if hits := provider.Hits(); hits > requests+concurrency {
		t.Errorf("provider called %d times for %d requests, want at most %d (+%d for the killed worker's calls in flight)", hits, requests, requests+concurrency, concurrency)
	}
	t.Logf("%d requests, %d provider calls, every request answered once; %s leads %s", requests, provider.Hits(),
		e2eStreamLeader(js, chat.StreamRequests), chat.StreamRequests)
}

// e2eServeReplicas starts `understudy serve` like e2eServe, with streams of
// the given number of replicas.
func e2eServeReplicas(t *testing.T, name string, c e2eConfig, replicas int) *e2eProc {
	t.Helper()
	c.metricsPort = e2eFreePort(t)
	yaml := strings.Replace(c.yaml(), "streams: {replicas: 1}", fmt.Sprintf("streams: {replicas: %d}", replicas), 1)
	path := e2eWriteFile(t, name+".yaml", yaml)
	p := e2eStart(t, name, e2eEnv(), "serve", "--config", path, "--name", name)
	p.port = c.metricsPort
	p.waitReadyz(30*time.Second, 200)
	return p
}

// e2ePublishRetrying publishes request id on conv, as a chat API should
// through a leader election: again with the same message id until the
// stream acknowledges it (the id makes a retry of a stored request a no-op).
func e2ePublishRetrying(js jetstream.JetStream, conv, id string, within time.Duration) error {
	data, err := json.Marshal(map[string]any{"id": id, "conversation_id": conv,
		"messages": []map[string]string{{"role": "user", "content": "hello there general kenobi"}}})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		msg := &nats.Msg{Subject: "chat.requests." + conv, Data: data, Header: nats.Header{}}
		msg.Header.Set("Nats-Msg-Id", id)
		_, err := js.PublishMsg(ctx, msg)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("publish %s: %w", id, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// `understudy demo --cluster` loses a node and a replica on its schedule and
// still ends with the exactly-once verdict and the replay report, exit 0.
func TestDemoCluster(t *testing.T) {
	e2eNeedBinary(t)
	if os.Getenv(clusterE2EEnv) == "" {
		t.Skipf("cluster end-to-end test: set %s=1 to run it", clusterE2EEnv)
	}
	out, errOut, code, took := e2eRun(t, 120*time.Second, e2eEnv(), "demo", "--cluster", "--duration", "15s", "--report", "text")
	if code != 0 {
		t.Fatalf("demo --cluster exited %d; stdout:\n%s\nstderr:\n%s", code, e2eTail(out, 6000), e2eTail(errOut, 4000))
	}
	for _, want := range []string{
		"CHAT_REQUESTS leader: n",
		"deepseek outage begins", "deepseek is back",
		"shuts down", "started again",
		"replica-3 crashes", "(crashed)",
		"unanswered 0, answered more than once 0",
		"Understudy replay:", // the report
		"OK: every request was answered exactly once",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "summary:") > strings.LastIndex(out, "OK: every request") {
		t.Errorf("the verdict does not come last:\n%s", out)
	}
	t.Logf("demo --cluster took %s", took)
}
