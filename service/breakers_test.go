package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/understudy-ai/understudy/providers/sim"
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

// hitTimes records when the provider is called, sampling its counter.
func hitTimes(t *testing.T, provider *sim.Server) func() []time.Time {
	t.Helper()
	var mu sync.Mutex
	var at []time.Time
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		seen := provider.Hits()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				for n := provider.Hits(); seen < n; seen++ {
					mu.Lock()
					at = append(at, now)
					mu.Unlock()
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Time(nil), at...)
	}
}

// Three replicas, each with its own link to NATS, and one provider that is
// down. While the bucket is slow (a leader election: every round trip takes
// longer than the gate's budget), no replica probes; the whole pool sends
// one probe per open_for, not one per replica, before, during and after.
func TestReplicasProbeOncePerOpenForThroughASlowBucket(t *testing.T) {
	t.Cleanup(func(d time.Duration) func() { return func() { sharedOpTimeout = d } }(sharedOpTimeout))
	sharedOpTimeout = 200 * time.Millisecond // and the link slows to 150ms each way
	srv := natsServer(t)
	provider := simServer(t)
	provider.SetMode(sim.ModeError)
	const openFor = 2 * time.Second
	var links []*faultproxy.Proxy
	var breakers []*breaker.Breaker
	for _, name := range []string{"a", "b", "c"} {
		p, err := faultproxy.New(strings.TrimPrefix(srv.ClientURL(), "nats://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		cfg := replicaConfig(p.URL(), provider)
		cfg.Breaker = breaker.Config{ConsecutiveFailures: 2, OpenFor: openFor}
		cfg.Worker.ShutdownGrace = time.Second
		svc := replica(t, cfg, name)
		links = append(links, p)
		breakers = append(breakers, svc.Chain.Links()[0].Breaker)
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	for i := range 100 { // they keep coming back while the provider is down
		publish(t, js, fmt.Sprintf("c-%d", i), fmt.Sprintf("r-%d", i))
	}
	poll.Until(t, 10*time.Second, "every replica's breaker open", func() bool {
		for _, b := range breakers {
			if b.State() == breaker.Closed {
				return false
			}
		}
		return true
	})
	hits := hitTimes(t, provider)
	start := time.Now()

	// The bucket slows down for four windows (every replica half-opens and
	// asks the gate in each), then answers again.
	for _, p := range links {
		p.SetLatency(3 * sharedOpTimeout / 4)
	}
	slow := time.NewTimer(4 * openFor)
	<-slow.C
	back := len(hits())
	for _, p := range links {
		p.SetLatency(0)
	}
	if back > 0 {
		t.Errorf("%d probes while the gate could not be reached, want none", back)
	}
	poll.Until(t, 3*openFor, "a probe once the bucket answers", func() bool { return len(hits()) > back })
	more := time.NewTimer(2 * openFor)
	<-more.C

	got, elapsed := hits(), time.Since(start)
	var gaps []time.Duration
	for i := 1; i < len(got); i++ {
		gaps = append(gaps, got[i].Sub(got[i-1]).Round(time.Millisecond))
	}
	t.Logf("%d probes in %s, %s apart", len(got), elapsed.Round(time.Millisecond), gaps)
	for _, g := range gaps {
		if g < openFor/2 {
			t.Errorf("two probes %s apart; want one per open_for (%s) for the whole pool", g, openFor)
		}
	}
	if windows := int(elapsed/openFor) + 1; len(got) > windows {
		t.Errorf("%d probes in %s, want at most %d: one per open_for", len(got), elapsed.Round(time.Millisecond), windows)
	}
}

// A peer's "open" verdict is followed for open_for from when the server
// stored it, not from the peer's own clock: a peer a minute fast must not keep
// the pool away from a provider a minute longer.
func TestPeerVerdictFollowedByTheServersClock(t *testing.T) {
	b, _ := proxied(t, natsServer(t), "follower")
	cfg := breaker.Config{ConsecutiveFailures: 1, OpenFor: time.Second}
	br := gated(t, b, "follower", cfg)
	fast := time.Now().Add(time.Minute)
	if err := b.ShareBreaker(context.Background(), "p", broker.BreakerState{State: "open", Worker: "fast-peer", At: fast}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "the follower's breaker to open", func() bool { return br.State() != breaker.Closed })
	// What the pool waits for (it does not pull, and puts requests back,
	// until then): open_for from the verdict, not a minute more.
	if until := br.OpenUntil(); time.Until(until) > cfg.OpenFor {
		t.Errorf("open until %s from now, want at most open_for (%s)", time.Until(until).Round(time.Millisecond), cfg.OpenFor)
	}
	poll.Until(t, 5*time.Second, "the follower's breaker to half-open after open_for", func() bool { return br.State() == breaker.HalfOpen })
}
