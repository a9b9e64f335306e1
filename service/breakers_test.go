package service

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/faultproxy"
	"github.com/understudy-ai/understudy/internal/poll"
)

// proxied connects a broker to srv through a fault-injecting proxy and
// sets up the topology.
func proxied(t *testing.T, srv *server.Server, name string) (*broker.Broker, *faultproxy.Proxy) {
	t.Helper()
	p, err := faultproxy.New(strings.TrimPrefix(srv.ClientURL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := broker.Connect(ctx, broker.Config{URL: p.URL()}, name, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := b.Setup(ctx, broker.Topology{Subjects: subjects(t)}); err != nil {
		t.Fatal(err)
	}
	return b, p
}

func subjects(t *testing.T) chat.Subjects {
	t.Helper()
	s, err := chat.NewSubjects("chat")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// gated is one replica's breaker for provider "p", wired to its peers
// through b the way Start wires a process's breakers.
func gated(t *testing.T, b *broker.Broker, worker string, cfg breaker.Config) *breaker.Breaker {
	t.Helper()
	s := &sharedBreakers{b: b, worker: worker, breakers: map[string]*breaker.Breaker{},
		openFor: cfg.OpenFor, stale: time.Minute, log: zerolog.Nop()}
	transitions := make(chan breaker.Transition, 64)
	br := breaker.New("p", cfg, func(t breaker.Transition) { transitions <- t })
	s.breakers["p"] = br
	br.SetProbeGate(s)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case tr := <-transitions:
				s.transition(tr)
			case <-stop:
				return
			}
		}
	}()
	stopWatch, err := b.WatchBreakers(context.Background(), s.apply)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopWatch(); close(stop); <-done })
	return br
}

// trip opens br with its own failures, then waits until it half-opens.
func trip(t *testing.T, br *breaker.Breaker) {
	t.Helper()
	done, err := br.Allow()
	if err != nil {
		t.Fatal(err)
	}
	done(breaker.Failure)
	poll.Until(t, 5*time.Second, "the breaker to half-open", func() bool { return br.State() == breaker.HalfOpen })
}

// When the gate cannot be reached (a slow bucket: a leader election), the
// replica does not probe alone: the provider stays unavailable until the
// gate answers again, and then it is probed.
func TestProbeGateFailsClosed(t *testing.T) {
	srv := natsServer(t)
	b, p := proxied(t, srv, "a")
	br := gated(t, b, "a", breaker.Config{ConsecutiveFailures: 1, OpenFor: 200 * time.Millisecond})
	trip(t, br)

	p.SetLatency(sharedOpTimeout) // a round trip takes twice the gate's budget
	if done, err := br.Allow(); err == nil {
		done(breaker.Ignore)
		t.Fatal("a replica that cannot reach the probe gate probed alone")
	} else if !errors.Is(err, breaker.ErrOpen) {
		t.Fatal(err)
	}
	p.SetLatency(0)
	var probe func(breaker.Verdict)
	poll.Until(t, 10*time.Second, "the probe once the gate answers again", func() bool {
		probe, _ = br.Allow()
		return probe != nil
	})
	probe(breaker.Success)
	if br.State() != breaker.Closed {
		t.Fatalf("state %s after the probe's success", br.State())
	}
}

// A probe that says nothing about health (a 429, a 400) gives the gate back
// at once: the very next request probes, from this process too.
func TestIgnoredProbeReleasesTheGateAtOnce(t *testing.T) {
	srv := natsServer(t)
	b, _ := proxied(t, srv, "a")
	br := gated(t, b, "a", breaker.Config{ConsecutiveFailures: 1, OpenFor: 200 * time.Millisecond})
	trip(t, br)
	// Many times over: the release and the next claim race on the wire.
	for i := range 200 {
		done, err := br.Allow()
		if err != nil {
			t.Fatalf("probe %d: %v", i, err)
		}
		done(breaker.Ignore)
	}
	done, err := br.Allow()
	if err != nil {
		t.Fatalf("the request after ignored probes: %v", err)
	}
	done(breaker.Success)
}

// bucketOp is one write seen in the breakers bucket.
type bucketOp struct {
	key   string
	op    jetstream.KeyValueOp
	value string
}

// watchBucket records every write to the breakers bucket, in order.
func watchBucket(t *testing.T, srv *server.Server) func() []bucketOp {
	t.Helper()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(context.Background(), subjects(t).Stream(broker.KindBreakers))
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.WatchAll(context.Background(), jetstream.IncludeHistory())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var ops []bucketOp
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range w.Updates() {
			if e != nil {
				mu.Lock()
				ops = append(ops, bucketOp{e.Key(), e.Operation(), string(e.Value())})
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { _ = w.Stop(); <-done })
	return func() []bucketOp {
		mu.Lock()
		defer mu.Unlock()
		return append([]bucketOp(nil), ops...)
	}
}

// A failed probe's verdict is in the bucket before its key is given back,
// and the key is not free to a peer that has not heard the verdict yet: a
// peer on a slow link, asking just after the probe failed, does not probe
// the provider that just failed.
func TestFailedProbeVerdictBeforeRelease(t *testing.T) {
	srv := natsServer(t)
	cfg := breaker.Config{ConsecutiveFailures: 1, OpenFor: 2 * time.Second}
	ba, _ := proxied(t, srv, "a")
	ops := watchBucket(t, srv)
	bb, pb := proxied(t, srv, "b")
	a, b := gated(t, ba, "a", cfg), gated(t, bb, "b", cfg)
	trip(t, a)
	poll.Until(t, 5*time.Second, "the peer to half-open too", func() bool { return b.State() == breaker.HalfOpen })

	probe, err := a.Allow()
	if err != nil {
		t.Fatalf("a's probe: %v", err)
	}
	pb.SetLatency(100 * time.Millisecond) // b hears of the verdict late
	probe(breaker.Failure)
	if done, err := b.Allow(); err == nil {
		done(breaker.Ignore)
		t.Fatal("a peer probed the provider whose probe had just failed")
	}
	pb.SetLatency(0)

	// In the bucket: the verdict, then the key given back; each verdict
	// written once.
	var opens, verdictAt, releaseAt int
	poll.Until(t, 5*time.Second, "a's probe key given back", func() bool {
		opens, verdictAt, releaseAt = 0, -1, -1
		for i, op := range ops() {
			switch {
			case op.key == "state.p" && strings.Contains(op.value, `"open"`):
				opens++
				if opens == 2 {
					verdictAt = i
				}
			case op.key == "probe.p" && releaseAt < 0 && (op.op != jetstream.KeyValuePut || isHold(op.value)):
				releaseAt = i
			}
		}
		return releaseAt >= 0
	})
	if verdictAt < 0 || verdictAt > releaseAt {
		t.Errorf("bucket writes %+v: the failed probe's verdict (at %d) is not before the key's release (at %d)", ops(), verdictAt, releaseAt)
	}
	if opens != 2 {
		t.Errorf("%d open verdicts written, want 2 (the trip and the failed probe, once each): %+v", opens, ops())
	}
}

// isHold reports whether a probe key's value is a failed probe's hold
// rather than a live claim.
func isHold(v string) bool {
	var c struct {
		Hold time.Duration `json:"hold"`
	}
	return json.Unmarshal([]byte(v), &c) == nil && c.Hold > 0
}
