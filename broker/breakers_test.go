package broker_test

import (
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/internal/poll"
)

type verdict struct {
	provider string
	st       broker.BreakerState
}

type verdicts struct {
	mu  sync.Mutex
	got []verdict
}

func (v *verdicts) add(p string, st broker.BreakerState, _ time.Duration) {
	v.mu.Lock()
	v.got = append(v.got, verdict{p, st})
	v.mu.Unlock()
}

func (v *verdicts) snapshot() []verdict {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]verdict(nil), v.got...)
}

func sameVerdict(a, b verdict) bool {
	return a.provider == b.provider && a.st.State == b.st.State && a.st.Worker == b.st.Worker && a.st.At.Equal(b.st.At)
}

// stopWithin runs stop and fails when it does not return in time.
func stopWithin(t *testing.T, within time.Duration, stop func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatalf("stop did not return within %s", within)
	}
}

func TestShareAndWatchBreakers(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	at := time.Date(2026, 1, 20, 12, 0, 0, 123456789, time.UTC)
	initial := []verdict{
		{"deepseek", broker.BreakerState{State: "open", Worker: "w1", At: at}},
		{"qwen", broker.BreakerState{State: "closed", Worker: "w2", At: at.Add(time.Second)}},
	}
	for _, v := range initial {
		if err := b.ShareBreaker(ctx, v.provider, v.st); err != nil {
			t.Fatal(err)
		}
	}
	// Overwritten before watching: only the latest is delivered (history 1).
	initial[1].st.State = "open"
	if err := b.ShareBreaker(ctx, initial[1].provider, initial[1].st); err != nil {
		t.Fatal(err)
	}

	var got verdicts
	stop, err := b.WatchBreakers(ctx, got.add)
	if err != nil {
		t.Fatalf("WatchBreakers: %v", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	poll.Until(t, 5*time.Second, "the current verdicts", func() bool { return len(got.snapshot()) >= 2 })

	updates := []verdict{
		{"deepseek", broker.BreakerState{State: "closed", Worker: "w3", At: at.Add(2 * time.Second)}},
		{"llama", broker.BreakerState{State: "open", Worker: "w1", At: at.Add(3 * time.Second)}},
	}
	for _, v := range updates {
		if err := b.ShareBreaker(ctx, v.provider, v.st); err != nil {
			t.Fatal(err)
		}
	}
	want := append(append([]verdict(nil), initial...), updates...)
	poll.Until(t, 5*time.Second, "the updates", func() bool { return len(got.snapshot()) >= len(want) })
	// A probe claim in the same bucket is not a verdict.
	if ok, err := b.ClaimProbe(ctx, "deepseek", "w1", time.Minute); err != nil || !ok {
		t.Fatalf("ClaimProbe = %v, %v", ok, err)
	}
	if err := b.ReleaseProbe(ctx, "deepseek", "w1", 0); err != nil {
		t.Fatal(err)
	}
	// A round trip through the watch: one more verdict, then compare.
	marker := verdict{"marker", broker.BreakerState{State: "closed", Worker: "w9", At: at}}
	if err := b.ShareBreaker(ctx, marker.provider, marker.st); err != nil {
		t.Fatal(err)
	}
	want = append(want, marker)
	poll.Until(t, 5*time.Second, "the marker", func() bool {
		s := got.snapshot()
		return len(s) > 0 && s[len(s)-1].provider == "marker"
	})
	s := got.snapshot()
	if len(s) != len(want) {
		t.Fatalf("WatchBreakers delivered %d verdicts %+v, want %d %+v", len(s), s, len(want), want)
	}
	// The initial values may come in key order; the updates in order.
	for _, w := range initial {
		if !slicesContainsVerdict(s[:2], w) {
			t.Errorf("initial verdicts %+v lack %+v", s[:2], w)
		}
	}
	for i, w := range want[2:] {
		if !sameVerdict(s[2+i], w) {
			t.Errorf("update %d = %+v, want %+v", i, s[2+i], w)
		}
	}

	stopWithin(t, 5*time.Second, stop)
	stopped = true
	n := len(got.snapshot())
	if err := b.ShareBreaker(ctx, "deepseek", broker.BreakerState{State: "open", Worker: "w1", At: at}); err != nil {
		t.Fatal(err)
	}
	if err := b.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if m := len(got.snapshot()); m != n {
		t.Errorf("fn called %d times after stop returned", m-n)
	}
}

func slicesContainsVerdict(s []verdict, v verdict) bool {
	for _, x := range s {
		if sameVerdict(x, v) {
			return true
		}
	}
	return false
}

func TestWatchBreakersEmptyBucket(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	var got verdicts
	stop, err := b.WatchBreakers(ctx, got.add)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.ShareBreaker(ctx, "p", broker.BreakerState{State: "open", Worker: "w"}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "the first verdict on an empty bucket", func() bool { return len(got.snapshot()) == 1 })
	stopWithin(t, 5*time.Second, stop)
}

func TestClaimProbe(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	claim := func(provider, worker string, stale time.Duration) bool {
		t.Helper()
		ok, err := b.ClaimProbe(ctx, provider, worker, stale)
		if err != nil {
			t.Fatalf("ClaimProbe(%s, %s): %v", provider, worker, err)
		}
		return ok
	}
	if !claim("deepseek", "w1", time.Hour) {
		t.Fatal("first ClaimProbe lost")
	}
	if claim("deepseek", "w2", time.Hour) {
		t.Error("second ClaimProbe won while the first is fresh")
	}
	// The holder asks again only when it lost the answer to its claim (a
	// timeout): it takes its own claim back.
	if !claim("deepseek", "w1", time.Hour) {
		t.Error("ClaimProbe by the holder again lost its own claim")
	}
	if !claim("llama", "w2", time.Hour) {
		t.Error("another provider's probe is independent, but lost")
	}

	// Only the holder's release counts.
	if err := b.ReleaseProbe(ctx, "deepseek", "w2", 0); err != nil {
		t.Fatalf("ReleaseProbe: %v", err)
	}
	if claim("deepseek", "w2", time.Hour) {
		t.Error("a release by a worker that does not hold the probe freed it")
	}
	if err := b.ReleaseProbe(ctx, "deepseek", "w1", 0); err != nil {
		t.Fatalf("ReleaseProbe: %v", err)
	}
	if !claim("deepseek", "w2", time.Hour) {
		t.Error("ClaimProbe after ReleaseProbe lost")
	}
	if claim("deepseek", "w3", time.Hour) {
		t.Error("ClaimProbe won a probe held by w2")
	}

	// A claim older than stale is abandoned and taken over.
	poll.Until(t, 5*time.Second, "w2's claim to become stale", func() bool { return claim("deepseek", "w3", 100*time.Millisecond) })
	if claim("deepseek", "w2", time.Hour) {
		t.Error("the old holder won back a probe taken over")
	}

	// Releasing what is not held is not an error, twice over.
	for _, p := range []string{"never-claimed", "never-claimed", "deepseek", "deepseek"} {
		if err := b.ReleaseProbe(ctx, p, "w3", 0); err != nil {
			t.Errorf("ReleaseProbe(%s): %v", p, err)
		}
	}
	if !claim("deepseek", "w4", time.Hour) || !claim("never-claimed", "w4", time.Hour) {
		t.Error("ClaimProbe after releases lost")
	}

	// A failed probe's release holds the probe from everybody, its holder
	// included, for the hold by the server's clock; then it is free.
	if err := b.ReleaseProbe(ctx, "deepseek", "w4", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if claim("deepseek", "w5", time.Nanosecond) || claim("deepseek", "w4", time.Hour) {
		t.Error("ClaimProbe won a probe held after its failure")
	}
	if err := b.ReleaseProbe(ctx, "deepseek", "w4", 0); err != nil {
		t.Fatal(err)
	}
	if claim("deepseek", "w5", time.Hour) {
		t.Error("releasing a hold again cut it short")
	}
	poll.Until(t, 5*time.Second, "the hold to end", func() bool { return claim("deepseek", "w5", time.Hour) })
}

// skewedPair is two brokers on one server, as two replicas on two hosts:
// fast's clock runs a minute ahead, slow's a minute behind.
func skewedPair(t *testing.T) (fast, slow *broker.Broker) {
	t.Helper()
	fast, err := broker.Connect(testCtx(t), broker.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"}, "fast", zerolog.Nop())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(fast.Close)
	if err := fast.Setup(testCtx(t), broker.Topology{Subjects: subj}); err != nil {
		t.Fatal(err)
	}
	slow = connected(t, broker.Config{URL: fast.ClientURL()}, "slow")
	if err := slow.Setup(testCtx(t), broker.Topology{Subjects: subj}); err != nil {
		t.Fatal(err)
	}
	fast.SetClock(func() time.Time { return time.Now().Add(time.Minute) })
	slow.SetClock(func() time.Time { return time.Now().Add(-time.Minute) })
	return fast, slow
}

// A probe claim's age is read from the server's clock, not from the
// holder's stamp against the reader's clock: two minutes of skew between
// two replicas neither steal a live probe nor keep a dead one held.
func TestClaimProbeIgnoresSkewedClocks(t *testing.T) {
	t.Parallel()
	fast, slow := skewedPair(t)
	ctx := testCtx(t)
	const stale = 300 * time.Millisecond

	// The slow replica's fresh claim looks two minutes old to the fast one.
	if ok, err := slow.ClaimProbe(ctx, "deepseek", "slow", stale); err != nil || !ok {
		t.Fatalf("slow ClaimProbe = %v, %v", ok, err)
	}
	if ok, err := fast.ClaimProbe(ctx, "deepseek", "fast", stale); err != nil || ok {
		t.Fatalf("fast ClaimProbe of a fresh claim = %v, %v; want refused", ok, err)
	}

	// The fast replica's claim looks two minutes in the future to the slow
	// one; once its holder is gone (it never releases), the slow one takes
	// over after stale by the server's clock.
	if ok, err := fast.ClaimProbe(ctx, "llama", "fast", stale); err != nil || !ok {
		t.Fatalf("fast ClaimProbe = %v, %v", ok, err)
	}
	poll.Until(t, 5*time.Second, "the slow replica to take over the dead fast one's probe", func() bool {
		ok, err := slow.ClaimProbe(ctx, "llama", "slow", stale)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
	// And the other way round.
	poll.Until(t, 5*time.Second, "the fast replica to take over the dead slow one's probe", func() bool {
		ok, err := fast.ClaimProbe(ctx, "deepseek", "fast", stale)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
}
