package breaker

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	circuitbreaker "github.com/mercari/go-circuitbreaker"
)

// ErrOpen is returned by Allow when the breaker is open, or half-open with
// its probe already in flight.
var ErrOpen = errors.New("circuit breaker open")

// State is a breaker's state.
type State int

// Breaker states.
const (
	Closed State = iota
	Open
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Verdict is what a call admitted by Allow turned out to be.
type Verdict int

// Verdicts.
const (
	// Success resets the consecutive failure count; a probe's success closes
	// the breaker.
	Success Verdict = iota
	// Failure counts towards opening; a probe's failure reopens the breaker.
	Failure
	// Ignore records nothing: the call says nothing about the provider's
	// health (a rejected request, a rate limit, a cancelled caller).
	Ignore
)

// Config sets a breaker's thresholds.
type Config struct {
	// ConsecutiveFailures opens the breaker. Default 5.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// OpenFor is how long the breaker stays open before one probe is let
	// through. Default 5m.
	OpenFor time.Duration `yaml:"open_for"`
}

// SetDefaults fills the zero fields with their defaults.
func (c *Config) SetDefaults() {
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = 5
	}
	if c.OpenFor == 0 {
		c.OpenFor = 5 * time.Minute
	}
}

// Validate reports the first invalid field, named by its YAML key.
func (c Config) Validate() error {
	if c.ConsecutiveFailures < 1 {
		return fmt.Errorf("breaker.consecutive_failures: must be at least 1, got %d", c.ConsecutiveFailures)
	}
	if c.OpenFor <= 0 {
		return fmt.Errorf("breaker.open_for: must be positive, got %s", c.OpenFor)
	}
	return nil
}

// Transition is one change of a breaker's state.
type Transition struct {
	Provider string
	From, To State
	At       time.Time
	// Forced is true when the change was imposed from outside (ForceOpen,
	// ForceClosed: a peer replica's verdict), not reached by this breaker's
	// own calls.
	Forced bool
}

// ProbeGate decides, across processes, which one may send the half-open
// probe of a provider.
type ProbeGate interface {
	// TryProbe is called once this process has won its own probe. True:
	// this process probes. False: a peer holds the probe; the gate is asked
	// again after gateRetry, or as soon as a peer's verdict changes the
	// state. An error: the gate cannot be reached, and nobody probes from
	// here (fail closed); it is asked again after gateRecheck.
	TryProbe(provider string) (bool, error)
	// Done is called once per probe TryProbe granted, with its outcome: To
	// is Open (the probe failed), Closed (it succeeded) or HalfOpen (it said
	// nothing, or its verdict came after the breaker had moved on). Done
	// must not block. The gate shares a verdict with its peers before it
	// gives the probe back, and a TryProbe made meanwhile waits for that.
	Done(outcome Transition)
}

// Breaker guards one provider. It is safe for concurrent use; share one per
// provider among all the workers of a process.
type Breaker struct {
	name    string
	openFor time.Duration
	cb      *circuitbreaker.CircuitBreaker

	// snap packs the generation (bumped on every transition) and the state,
	// so Allow reads both in one load: gen<<2 | state.
	snap atomic.Uint64
	// probe holds the generation whose probe has been handed out.
	probe    atomic.Uint64
	openedAt atomic.Int64

	// mu serialises the verdicts of this process's own calls with forced
	// changes, so that forcing marks exactly the forced transitions.
	mu sync.Mutex
	// forcing marks transitions made by ForceOpen/ForceClosed.
	forcing atomic.Bool
	gate    ProbeGate
	// gateDenied (unix nanos): a peer holds the probe, or the gate could
	// not be reached; do not ask again before then.
	gateDenied atomic.Int64
	// changedAt (unix nanos) is the time of the last transition.
	changedAt atomic.Int64
}

// gateRetry is how long a process waits before asking the gate again after
// a peer was found holding the probe. The peer's verdict, when it comes,
// changes the state (and clears the wait) sooner.
// (A variable so tests can shorten it.)
var gateRetry = 5 * time.Second

// gateRecheck is how long a process waits before asking the gate again
// after it could not be reached (a slow or leaderless bucket): meanwhile it
// does not probe, so the gate is looked at again soon.
// (A variable so tests can change it.)
var gateRecheck = 500 * time.Millisecond

// New returns a closed breaker for the provider called name. onChange, when
// not nil, is called on every transition; it runs under the library's lock,
// so it must be quick and must not call back into the Breaker.
func New(name string, cfg Config, onChange func(Transition)) *Breaker {
	cfg.SetDefaults()
	b := &Breaker{name: name, openFor: cfg.OpenFor}
	b.snap.Store(uint64(Closed))
	b.cb = circuitbreaker.New(
		circuitbreaker.WithTripFunc(circuitbreaker.NewTripFuncConsecutiveFailures(int64(cfg.ConsecutiveFailures))),
		circuitbreaker.WithOpenTimeout(cfg.OpenFor),
		// One successful probe closes the breaker.
		circuitbreaker.WithHalfOpenMaxSuccesses(1),
		// Never reset the counters on a timer: N consecutive failures must
		// open the breaker however slowly they arrive.
		circuitbreaker.WithCounterResetInterval(-1),
		// The library ignores failures whose context hit its deadline by
		// default; a timeout is a failure here. (Verdicts are given with
		// Success/Fail directly, but keep the library's own view consistent.)
		circuitbreaker.WithFailOnContextDeadline(true),
		circuitbreaker.WithOnStateChangeHookFn(func(from, to circuitbreaker.State) {
			next := fromLib(to)
			gen := b.snap.Load()>>2 + 1
			b.snap.Store(gen<<2 | uint64(next))
			b.gateDenied.Store(0)
			now := time.Now()
			b.changedAt.Store(now.UnixNano())
			if next == Open {
				b.openedAt.Store(now.UnixNano())
			}
			if onChange != nil {
				onChange(Transition{Provider: name, From: fromLib(from), To: next, At: now, Forced: b.forcing.Load()})
			}
		}),
	)
	return b
}

func fromLib(s circuitbreaker.State) State {
	switch s {
	case circuitbreaker.StateOpen:
		return Open
	case circuitbreaker.StateHalfOpen:
		return HalfOpen
	}
	return Closed
}

// Name is the provider the breaker guards.
func (b *Breaker) Name() string { return b.name }

// State is the breaker's current state.
func (b *Breaker) State() State { return State(b.snap.Load() & 3) }

// OpenUntil is when an open breaker will let its probe through; the zero
// time when it is not open.
func (b *Breaker) OpenUntil() time.Time {
	if b.State() != Open {
		return time.Time{}
	}
	return time.Unix(0, b.openedAt.Load()).Add(b.openFor)
}

// Allow asks to make one call. It returns ErrOpen when the breaker is open or
// its single half-open probe is already out; otherwise done must be called
// exactly once with the call's verdict.
func (b *Breaker) Allow() (done func(Verdict), err error) {
	snap := b.snap.Load()
	gen := snap >> 2
	switch State(snap & 3) {
	case Open:
		return nil, ErrOpen
	case HalfOpen:
		// Generations start at 1 for the first half-open state, so the
		// zero value of probe never matches one.
		for {
			p := b.probe.Load()
			if p == gen {
				return nil, ErrOpen
			}
			if b.probe.CompareAndSwap(p, gen) {
				break
			}
		}
		if b.gate != nil {
			if !b.askGate(gen) {
				b.probe.CompareAndSwap(gen, gen-1) // let a later caller ask again
				return nil, ErrOpen
			}
			var once atomic.Bool
			return func(v Verdict) {
				if once.CompareAndSwap(false, true) {
					b.settleProbe(gen, v)
				}
			}, nil
		}
	}
	var once atomic.Bool
	return func(v Verdict) {
		if once.CompareAndSwap(false, true) {
			b.record(gen, v)
			if v == Ignore {
				b.probe.CompareAndSwap(gen, gen-1) // hand the probe to the next caller
			}
		}
	}, nil
}

// askGate asks the ProbeGate for the probe of generation gen, unless a
// recent answer said not to ask yet.
func (b *Breaker) askGate(gen uint64) bool {
	if time.Now().UnixNano() < b.gateDenied.Load() {
		return false
	}
	ok, err := b.gate.TryProbe(b.name)
	if ok && err == nil {
		return true
	}
	wait := gateRetry
	if err != nil {
		wait = gateRecheck
	}
	if b.snap.Load()>>2 == gen { // a transition meanwhile starts afresh
		b.gateDenied.Store(time.Now().Add(wait).UnixNano())
	}
	return false
}

// settleProbe records the verdict of the probe of generation gen that the
// gate granted, and tells the gate the outcome before the probe is handed
// to the next caller here, so that the gate is given back (or its release
// under way) by the time that caller asks for it.
func (b *Breaker) settleProbe(gen uint64, v Verdict) {
	outcome := Transition{Provider: b.name, From: HalfOpen, To: HalfOpen, At: time.Now()}
	if to, at, moved := b.record(gen, v); moved {
		outcome.To, outcome.At = to, at
	}
	b.gate.Done(outcome)
	if v == Ignore {
		b.probe.CompareAndSwap(gen, gen-1)
	}
}

// SetProbeGate makes the half-open probe exclusive across processes too.
// Call it before the breaker is used.
func (b *Breaker) SetProbeGate(g ProbeGate) { b.gate = g }

// Admitting reports whether a call could be let through now: the breaker
// is closed, or half-open with its probe not yet handed out here and not
// known to be held by a peer.
func (b *Breaker) Admitting() bool {
	snap := b.snap.Load()
	switch State(snap & 3) {
	case Closed:
		return true
	case Open:
		return false
	}
	return b.probe.Load() != snap>>2 && time.Now().UnixNano() >= b.gateDenied.Load()
}

// ForceOpen opens the breaker until the given time because a peer found the
// provider failing (the transition is reported with Forced set). A breaker
// open until then or later, or a time already past, is left alone; one open
// until an earlier time is reopened until the later one.
func (b *Breaker) ForceOpen(until time.Time) {
	left := time.Until(until)
	if left <= 0 || (b.State() == Open && until.Sub(b.OpenUntil()) <= min(b.openFor/10, time.Second)) {
		return // over, or already open about that long
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.force(circuitbreaker.StateOpen)
	b.openedAt.Store(until.Add(-b.openFor).UnixNano())
	if left >= b.openFor {
		return // the library's own timer half-opens it
	}
	gen := b.snap.Load() >> 2
	time.AfterFunc(left, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.snap.Load()>>2 == gen { // still the open state forced here
			b.force(circuitbreaker.StateHalfOpen)
		}
	})
}

// ForceClosed closes the breaker because a peer's probe found the provider
// healthy. A breaker already closed is left alone.
func (b *Breaker) ForceClosed() {
	if b.State() == Closed {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.force(circuitbreaker.StateClosed)
}

// force sets the library's state; b.mu must be held.
func (b *Breaker) force(s circuitbreaker.State) {
	b.forcing.Store(true)
	defer b.forcing.Store(false)
	b.cb.SetState(s)
}

// record gives the library the verdict of a call admitted in generation
// gen; moved reports whether it changed the state, to what and when.
func (b *Breaker) record(gen uint64, v Verdict) (to State, at time.Time, moved bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.snap.Load()>>2 != gen {
		return 0, time.Time{}, false // the breaker moved on (or was forced on) while the call was out
	}
	switch v {
	case Success:
		b.cb.Success()
	case Failure:
		b.cb.Fail()
	}
	snap := b.snap.Load()
	if snap>>2 == gen {
		return 0, time.Time{}, false
	}
	return State(snap & 3), time.Unix(0, b.changedAt.Load()), true
}
