package service

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
)

// sharedBreakers makes the breakers of one process part of a breaker shared
// by every replica, through a key-value bucket:
//   - a replica whose breaker opens or closes by its own calls says so, and
//     the others follow (ForceOpen/ForceClosed), so one replica's discovery
//     of an outage spares the provider the others' calls;
//   - in half-open, a replica must also win the bucket's probe key, so the
//     whole pool sends ONE probe, not one per replica. When the bucket
//     cannot be reached, nobody probes from here (fail closed): the
//     provider stays unavailable until the bucket answers. The probe's
//     verdict is shared before its key is given back, and a failed probe's
//     key stays held for half of open_for, so that no peer that has not
//     heard the verdict yet probes the provider that just failed.
type sharedBreakers struct {
	b        *broker.Broker
	worker   string
	breakers map[string]*breaker.Breaker
	openFor  time.Duration
	stale    time.Duration // a probe claim older than this is abandoned
	log      zerolog.Logger

	mu sync.Mutex
	// releasing holds, per provider, a channel closed once this process's
	// last probe has been settled with the bucket (verdict shared, key
	// given back).
	releasing map[string]chan struct{}
}

var _ breaker.ProbeGate = (*sharedBreakers)(nil)

// sharedOpTimeout bounds each call to the bucket. (A variable so tests can
// shorten it.)
var sharedOpTimeout = 2 * time.Second

// TryProbe claims provider's probe key. This process's previous probe is
// settled first, so that its own claim is not taken for a peer's.
func (s *sharedBreakers) TryProbe(provider string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), sharedOpTimeout)
	defer cancel()
	s.mu.Lock()
	settled := s.releasing[provider]
	s.mu.Unlock()
	if settled != nil {
		select {
		case <-settled:
		case <-ctx.Done():
			err := fmt.Errorf("the previous probe of %s is still being given back", provider)
			s.log.Warn().Err(err).Str("provider", provider).Msg("cannot reach the half-open probe gate; not probing until it answers")
			return false, err
		}
	}
	ok, err := s.b.ClaimProbe(ctx, provider, s.worker, s.stale)
	if err != nil {
		s.log.Warn().Err(err).Str("provider", provider).Msg("cannot reach the half-open probe gate; not probing until it answers")
		return false, err
	}
	return ok, nil
}

// Done shares the probe's verdict, then gives its key back; a failed probe's
// key is held for half of open_for. When the verdict cannot be shared, the
// key is left as it is (peers take it over once stale).
func (s *sharedBreakers) Done(outcome breaker.Transition) {
	settled := make(chan struct{})
	s.mu.Lock()
	if s.releasing == nil {
		s.releasing = map[string]chan struct{}{}
	}
	s.releasing[outcome.Provider] = settled
	s.mu.Unlock()
	go func() {
		defer close(settled)
		var hold time.Duration
		switch outcome.To {
		case breaker.Open:
			hold = s.openFor / 2
			fallthrough
		case breaker.Closed:
			if !s.share(outcome) {
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), sharedOpTimeout)
		defer cancel()
		if err := s.b.ReleaseProbe(ctx, outcome.Provider, s.worker, hold); err != nil {
			s.log.Warn().Err(err).Str("provider", outcome.Provider).Msg("cannot release the half-open probe (it expires by itself)")
		}
	}()
}

// transition shares a verdict this process reached by itself. A probe's
// verdict (a change from half-open not forced by a peer) is shared by Done,
// before the probe is given back.
func (s *sharedBreakers) transition(t breaker.Transition) {
	if t.Forced || t.To == breaker.HalfOpen || t.From == breaker.HalfOpen {
		return
	}
	s.share(t)
}

func (s *sharedBreakers) share(t breaker.Transition) bool {
	ctx, cancel := context.WithTimeout(context.Background(), sharedOpTimeout)
	defer cancel()
	if err := s.b.ShareBreaker(ctx, t.Provider, broker.BreakerState{State: t.To.String(), Worker: s.worker, At: t.At}); err != nil {
		s.log.Warn().Err(err).Str("provider", t.Provider).Msg("cannot share the breaker state with other replicas")
		return false
	}
	return true
}

// apply follows a verdict shared by another replica.
func (s *sharedBreakers) apply(provider string, st broker.BreakerState, age time.Duration) {
	br, ok := s.breakers[provider]
	if !ok || st.Worker == s.worker {
		return
	}
	switch st.State {
	case breaker.Open.String():
		// Open until the peer's breaker half-opens, not open_for from now:
		// a replica that starts late must not sit out longer than the rest.
		// The verdict's age is the server's, not the writer's clock.
		br.ForceOpen(time.Now().Add(s.openFor - age))
	case breaker.Closed.String():
		br.ForceClosed()
	}
}
