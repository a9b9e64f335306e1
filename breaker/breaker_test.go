package breaker

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitState polls until b is in want or the deadline passes.
func waitState(t *testing.T, b *Breaker, want State) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for b.State() != want {
		if time.Now().After(deadline) {
			t.Fatalf("breaker state %s, want %s", b.State(), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func call(t *testing.T, b *Breaker, v Verdict) {
	t.Helper()
	done, err := b.Allow()
	if err != nil {
		t.Fatalf("Allow: %v", err)
	}
	done(v)
}

func TestOpensAfterConsecutiveFailures(t *testing.T) {
	tests := []struct {
		name     string
		verdicts []Verdict
		want     State
	}{
		{"four failures stay closed", []Verdict{Failure, Failure, Failure, Failure}, Closed},
		{"five failures open", []Verdict{Failure, Failure, Failure, Failure, Failure}, Open},
		{"a success resets the count", []Verdict{Failure, Failure, Failure, Failure, Success, Failure, Failure, Failure, Failure}, Closed},
		{"ignored calls do not count", []Verdict{Failure, Failure, Ignore, Ignore, Failure, Failure, Ignore, Failure}, Open},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New("p", Config{ConsecutiveFailures: 5, OpenFor: time.Hour}, nil)
			for _, v := range tt.verdicts {
				call(t, b, v)
			}
			if got := b.State(); got != tt.want {
				t.Fatalf("state %s, want %s", got, tt.want)
			}
		})
	}
}

func TestOpenRejectsAndReportsUntil(t *testing.T) {
	b := New("p", Config{ConsecutiveFailures: 1, OpenFor: time.Hour}, nil)
	before := time.Now()
	call(t, b, Failure)
	if _, err := b.Allow(); !errors.Is(err, ErrOpen) {
		t.Fatalf("Allow on open breaker: %v, want ErrOpen", err)
	}
	until := b.OpenUntil()
	if until.Before(before.Add(time.Hour)) || until.After(time.Now().Add(time.Hour)) {
		t.Fatalf("OpenUntil %v not open_for after the trip", until)
	}
}

func TestHalfOpenLetsExactlyOneProbe(t *testing.T) {
	tests := []struct {
		name    string
		verdict Verdict
		want    State
	}{
		{"probe success closes", Success, Closed},
		{"probe failure reopens", Failure, Open},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var transitions []Transition
			var mu sync.Mutex
			b := New("p", Config{ConsecutiveFailures: 1, OpenFor: 30 * time.Millisecond}, func(tr Transition) {
				mu.Lock()
				transitions = append(transitions, tr)
				mu.Unlock()
			})
			call(t, b, Failure)
			waitState(t, b, HalfOpen)

			var admitted atomic.Int32
			var probeDone func(Verdict)
			var wg sync.WaitGroup
			var once sync.Mutex
			for range 30 {
				wg.Go(func() {
					done, err := b.Allow()
					if err != nil {
						if !errors.Is(err, ErrOpen) {
							t.Errorf("Allow: %v", err)
						}
						return
					}
					admitted.Add(1)
					once.Lock()
					probeDone = done
					once.Unlock()
				})
			}
			wg.Wait()
			if n := admitted.Load(); n != 1 {
				t.Fatalf("%d of 30 concurrent callers admitted in half-open, want 1", n)
			}
			probeDone(tt.verdict)
			if got := b.State(); got != tt.want {
				t.Fatalf("after probe: %s, want %s", got, tt.want)
			}
			mu.Lock()
			defer mu.Unlock()
			wantTo := []State{Open, HalfOpen, tt.want}
			if len(transitions) != len(wantTo) {
				t.Fatalf("transitions %+v, want to-states %v", transitions, wantTo)
			}
			for i, tr := range transitions {
				if tr.To != wantTo[i] || tr.Provider != "p" {
					t.Fatalf("transition %d: %+v, want to %s", i, tr, wantTo[i])
				}
			}
		})
	}
}

func TestIgnoredProbeHandsOverTheProbe(t *testing.T) {
	b := New("p", Config{ConsecutiveFailures: 1, OpenFor: 20 * time.Millisecond}, nil)
	call(t, b, Failure)
	waitState(t, b, HalfOpen)
	done, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Allow(); !errors.Is(err, ErrOpen) {
		t.Fatalf("second caller during probe: %v, want ErrOpen", err)
	}
	done(Ignore)
	if b.State() != HalfOpen {
		t.Fatalf("ignored probe changed state to %s", b.State())
	}
	call(t, b, Success)
	if b.State() != Closed {
		t.Fatalf("state %s after second probe succeeded, want closed", b.State())
	}
}

func TestStaleVerdictIsDropped(t *testing.T) {
	b := New("p", Config{ConsecutiveFailures: 1, OpenFor: 20 * time.Millisecond}, nil)
	slow, err := b.Allow() // admitted while closed
	if err != nil {
		t.Fatal(err)
	}
	call(t, b, Failure)
	waitState(t, b, HalfOpen)
	slow(Success) // must not close the breaker: only the probe may
	if b.State() != HalfOpen {
		t.Fatalf("stale success moved the breaker to %s", b.State())
	}
	probe, err := b.Allow()
	if err != nil {
		t.Fatalf("probe refused after stale verdict: %v", err)
	}
	probe(Failure)
	if b.State() != Open {
		t.Fatalf("state %s after failed probe, want open", b.State())
	}
}

func TestDoneTwiceCountsOnce(t *testing.T) {
	b := New("p", Config{ConsecutiveFailures: 2, OpenFor: time.Hour}, nil)
	done, _ := b.Allow()
	done(Failure)
	done(Failure)
	if b.State() != Closed {
		t.Fatal("a doubled verdict was counted twice")
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Closed: "closed", Open: "open", HalfOpen: "half-open", State(7): "State(7)"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", int(s), s.String(), want)
		}
	}
}

func TestForcedTransitionsAreMarked(t *testing.T) {
	var mu sync.Mutex
	var got []Transition
	b := New("p", Config{ConsecutiveFailures: 5, OpenFor: time.Hour}, func(tr Transition) {
		mu.Lock()
		got = append(got, tr)
		mu.Unlock()
	})
	b.ForceOpen(time.Now().Add(-time.Second)) // already over: nothing
	b.ForceOpen(time.Now().Add(time.Hour))
	if _, err := b.Allow(); !errors.Is(err, ErrOpen) {
		t.Fatalf("Allow after ForceOpen: %v", err)
	}
	b.ForceOpen(time.Now().Add(time.Hour)) // already open: no transition
	b.ForceClosed()
	call(t, b, Success)
	b.ForceClosed() // already closed: no transition
	mu.Lock()
	forced := append([]Transition(nil), got...)
	mu.Unlock()
	if len(forced) != 2 || forced[0].To != Open || forced[1].To != Closed || !forced[0].Forced || !forced[1].Forced {
		t.Fatalf("transitions %+v, want forced open then forced closed", forced)
	}
	for range 5 {
		call(t, b, Failure)
	}
	if b.State() != Open {
		t.Fatal("own failures no longer open the breaker after forcing")
	}
}

// gate is a ProbeGate that a test controls.
type gate struct {
	mu          sync.Mutex
	allow       bool
	unreachable bool
	held        bool // granted and not yet done
	asked       int
	done        []Transition
}

func (g *gate) TryProbe(string) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.asked++
	if g.unreachable {
		return false, errors.New("gate unreachable")
	}
	if !g.allow || g.held {
		return false, nil
	}
	g.held = true
	return true, nil
}

func (g *gate) Done(t Transition) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = false
	g.done = append(g.done, t)
}

func (g *gate) outcomes() []Transition {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]Transition(nil), g.done...)
}

func TestProbeGateAcrossProcesses(t *testing.T) {
	defer func(d time.Duration) { gateRetry = d }(gateRetry)
	gateRetry = 300 * time.Millisecond
	g := &gate{}
	b := New("p", Config{ConsecutiveFailures: 1, OpenFor: 20 * time.Millisecond}, nil)
	b.SetProbeGate(g)
	call(t, b, Failure)
	waitState(t, b, HalfOpen)

	// A peer holds the probe: refused, and not asked again at once.
	for range 10 {
		if _, err := b.Allow(); !errors.Is(err, ErrOpen) {
			t.Fatalf("Allow while a peer probes: %v", err)
		}
	}
	g.mu.Lock()
	if g.asked != 1 {
		t.Errorf("gate asked %d times within gateRetry, want 1", g.asked)
	}
	g.allow = true
	g.mu.Unlock()

	deadline := time.Now().Add(5 * time.Second)
	var done func(Verdict)
	for done == nil {
		if time.Now().After(deadline) {
			t.Fatal("the probe was never handed out after the peer released it")
		}
		done, _ = b.Allow()
		time.Sleep(10 * time.Millisecond)
	}
	done(Success)
	if got := g.outcomes(); b.State() != Closed || len(got) != 1 || got[0].To != Closed || got[0].From != HalfOpen {
		t.Fatalf("state %s, gate told %+v; want closed, and the gate told once of half-open to closed", b.State(), got)
	}
}

// The gate hears each probe's outcome (the verdict it shares with its
// peers) before the probe is handed to the next caller; a probe that said
// nothing hands it on at once, through the gate.
func TestProbeGateHearsTheOutcome(t *testing.T) {
	defer func(d time.Duration) { gateRetry = d }(gateRetry)
	gateRetry = time.Hour // a refusal would stall the test
	g := &gate{allow: true}
	b := New("p", Config{ConsecutiveFailures: 1, OpenFor: 20 * time.Millisecond}, nil)
	b.SetProbeGate(g)
	call(t, b, Failure)
	waitState(t, b, HalfOpen)

	call(t, b, Ignore) // granted and given back
	done, err := b.Allow()
	if err != nil {
		t.Fatalf("the caller after an ignored probe: %v", err)
	}
	done(Failure)
	if got := g.outcomes(); len(got) != 2 || got[0].To != HalfOpen || got[1].To != Open ||
		!got[1].At.Equal(b.OpenUntil().Add(-20*time.Millisecond)) {
		t.Fatalf("gate told %+v; want half-open (ignored), then open at the reopening time", got)
	}
}

// A gate that cannot be reached grants nothing (no process probes alone),
// and is asked again soon, not after gateRetry.
func TestProbeGateUnreachableFailsClosed(t *testing.T) {
	defer func(r, c time.Duration) { gateRetry, gateRecheck = r, c }(gateRetry, gateRecheck)
	gateRetry, gateRecheck = time.Hour, 300*time.Millisecond // long enough to look in between, on a loaded machine
	g := &gate{allow: true, unreachable: true}
	b := New("p", Config{ConsecutiveFailures: 1, OpenFor: 20 * time.Millisecond}, nil)
	b.SetProbeGate(g)
	call(t, b, Failure)
	waitState(t, b, HalfOpen)
	if _, err := b.Allow(); !errors.Is(err, ErrOpen) {
		t.Fatalf("Allow with the gate unreachable: %v, want ErrOpen", err)
	}
	if b.Admitting() {
		t.Error("admitting while the gate cannot be reached")
	}
	g.mu.Lock()
	g.unreachable = false
	g.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	var done func(Verdict)
	for done == nil {
		if time.Now().After(deadline) {
			t.Fatal("the gate was not asked again once reachable")
		}
		done, _ = b.Allow()
		time.Sleep(5 * time.Millisecond)
	}
	done(Success)
}

func TestForceOpenLastsUntilThePeersTime(t *testing.T) {
	b := New("p", Config{ConsecutiveFailures: 5, OpenFor: time.Hour}, nil)
	until := time.Now().Add(50 * time.Millisecond)
	b.ForceOpen(until)
	if got := b.OpenUntil(); !got.Equal(until.Truncate(0)) && got.Sub(until).Abs() > time.Millisecond {
		t.Errorf("OpenUntil %v, want the peer's %v", got, until)
	}
	if b.Admitting() {
		t.Error("an open breaker admits calls")
	}
	// Half-open at the peer's time, not open_for (an hour) from now.
	waitState(t, b, HalfOpen)
	if !b.Admitting() {
		t.Error("half-open with no probe out does not admit")
	}
	done, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	if b.Admitting() {
		t.Error("half-open with its probe out still admits")
	}
	done(Success)
	if b.State() != Closed {
		t.Errorf("state %s after the probe's success", b.State())
	}
}

func TestForceOpenExtendsToALaterPeerVerdict(t *testing.T) {
	b := New("p", Config{ConsecutiveFailures: 5, OpenFor: time.Hour}, nil)
	first := time.Now().Add(100 * time.Millisecond)
	b.ForceOpen(first)
	later := time.Now().Add(time.Hour)
	b.ForceOpen(later) // a peer's probe failed: open for its full open_for
	if got := b.OpenUntil(); got.Sub(later).Abs() > time.Millisecond {
		t.Fatalf("OpenUntil %v, want the later %v", got, later)
	}
	// Watch the state until well past the first, earlier time.
	for time.Now().Before(first.Add(200 * time.Millisecond)) {
		if b.State() != Open {
			t.Fatalf("state %s: the earlier timer half-opened a breaker reopened by a peer", b.State())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
