package bench

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/chat"
)

// testRunner is a runner on an embedded JetStream server of its own.
func testRunner(t *testing.T) *runner {
	t.Helper()
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: t.TempDir(), Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	o := Options{Requests: 400, Concurrency: 8, Payload: 32}
	o.setDefaults()
	r := &runner{o: o, url: ns.ClientURL(), runID: "t", prog: &progress{w: io.Discard}, zeroRate: map[int]float64{}}
	if r.nc, err = nats.Connect(r.url); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.nc.Close)
	if r.js, err = jetstream.New(r.nc); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestThroughputIsMeasuredWithThePipelineFull: the throughput phase must
// start while the warm-up's last requests are still in flight, as under a
// steady load, not on idle workers that the phase's first window reaches
// all at once (with a 1 s provider and 2,000 in flight that burst cost the
// slow scenario a tenth of its rate over 20,000 requests, and less over
// more). The loop here withholds the warm-up's last reply until it has
// seen a request of the throughput phase: a warm-up that must drain first
// never ends.
func TestThroughputIsMeasuredWithThePipelineFull(t *testing.T) {
	r := testRunner(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	prefix := "ubt-steady"
	b, err := r.connectBroker(ctx, "steady-test", prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tr := newSteadyTraffic(prefix, r.o.Payload, 2*r.o.Concurrency, r.o.Requests)
	lastWarm := tr.id(tr.bounds[phaseLoad] - 1)
	loadSeen := make(chan struct{})
	var once sync.Once
	js, subj := b.JetStream(), b.Subjects()
	stop, err := serveLoop(ctx, b, r.o.Concurrency, func(ctx context.Context, m jetstream.Msg) {
		id := m.Headers().Get(chat.HeaderMsgID)
		if n, ok := tr.index(id); ok && tr.phaseOf(n) >= phaseLoad {
			once.Do(func() { close(loadSeen) })
		}
		if id == lastWarm {
			select {
			case <-loadSeen:
			case <-ctx.Done():
				return
			}
		}
		rawAnswer(ctx, js, subj, m)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	sub, err := tr.listen(r.nc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	var res Result
	if err := r.measureLoop(ctx, &res, "test", prefix, tr, 0, nil); err != nil {
		t.Fatalf("measureLoop: %v (a warm-up that drains before the throughput phase waits forever here)", err)
	}
	n, _ := tr.index(lastWarm)
	if first := tr.sent[tr.bounds[phaseLoad]].Load(); tr.done[n].Load() <= first {
		t.Errorf("the warm-up's last reply came before the throughput phase's first publish")
	}
	if res.Answered != res.Sent || res.Sent != len(tr.sent) || res.Failed != 0 {
		t.Errorf("answered %d of %d sent (%d requests), %d failed", res.Answered, res.Sent, len(tr.sent), res.Failed)
	}
	// Counted over the phase's span: its own replies and the warm-up's and
	// cool-down's that came in it, never more than were sent by its end.
	if load := tr.size(phaseLoad); res.Measured < load || res.Measured > load+tr.size(phaseWarm)+tr.size(phaseCool) || res.RPS <= 0 {
		t.Errorf("measured %d replies at %v req/s, want at least the phase's %d", res.Measured, res.RPS, load)
	}
}

func TestServeFloorRefusesABadSpec(t *testing.T) {
	err := ServeFloor(t.Context(), "{")
	if err == nil || !strings.Contains(err.Error(), EnvFloor) {
		t.Errorf("ServeFloor({) = %v, want an error naming %s", err, EnvFloor)
	}
}

func TestTextFlagsAnUnsteadyThroughput(t *testing.T) {
	for _, tc := range []struct {
		name    string
		slowest float64
		flagged bool
	}{
		{"steady", 40, false},
		{"a request redelivered after the ack wait", 30200, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := Report{Baseline: Result{Scenario: "raw-jetstream", RPS: 634, SlowestMS: tc.slowest}}
			var b strings.Builder
			rep.Text(&b)
			if got := strings.Contains(b.String(), "raw-jetstream: a request of the throughput phase took"); got != tc.flagged {
				t.Errorf("flagged = %v, want %v:\n%s", got, tc.flagged, b.String())
			}
		})
	}
}
