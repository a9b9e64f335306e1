package service

import (
	"context"
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
//     whole pool sends ONE probe, not one per replica.
//
// When NATS cannot be reached, each process falls back to its own breakers.
type sharedBreakers struct {
	b        *broker.Broker
	worker   string
	breakers map[string]*breaker.Breaker
	openFor  time.Duration
	stale    time.Duration // a probe claim older than this is abandoned
	log      zerolog.Logger
}

var _ breaker.ProbeGate = (*sharedBreakers)(nil)

const sharedOpTimeout = 2 * time.Second

func (s *sharedBreakers) TryProbe(provider string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), sharedOpTimeout)
	defer cancel()
	ok, err := s.b.ClaimProbe(ctx, provider, s.worker, s.stale)
	if err != nil {
		s.log.Warn().Err(err).Str("provider", provider).Msg("cannot coordinate the half-open probe with other replicas; probing alone")
		return true
	}
	return ok
}

func (s *sharedBreakers) Done(provider string) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), sharedOpTimeout)
		defer cancel()
		if err := s.b.ReleaseProbe(ctx, provider, s.worker); err != nil {
			s.log.Warn().Err(err).Str("provider", provider).Msg("cannot release the half-open probe (it expires by itself)")
		}
	}()
}

// transition shares a verdict this process reached by itself.
func (s *sharedBreakers) transition(t breaker.Transition) {
	if t.Forced || t.To == breaker.HalfOpen {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedOpTimeout)
	defer cancel()
	if err := s.b.ShareBreaker(ctx, t.Provider, broker.BreakerState{State: t.To.String(), Worker: s.worker, At: t.At}); err != nil {
		s.log.Warn().Err(err).Str("provider", t.Provider).Msg("cannot share the breaker state with other replicas")
	}
}

// apply follows a verdict shared by another replica.
func (s *sharedBreakers) apply(provider string, st broker.BreakerState) {
	br, ok := s.breakers[provider]
	if !ok || st.Worker == s.worker {
		return
	}
	switch st.State {
	case breaker.Open.String():
		// Open until the peer's breaker half-opens, not open_for from now:
		// a replica that starts late must not sit out longer than the rest.
		br.ForceOpen(st.At.Add(s.openFor))
	case breaker.Closed.String():
		br.ForceClosed()
	}
}
