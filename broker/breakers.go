package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// KindBreakers names the key-value bucket through which worker replicas
// share their breakers' verdicts: <PREFIX>_BREAKERS.
const KindBreakers = "BREAKERS"

// BreakerState is one replica's verdict on a provider, shared with the
// others.
type BreakerState struct {
	// State is "open" or "closed".
	State  string    `json:"state"`
	Worker string    `json:"worker"`
	At     time.Time `json:"at"`
}

// probeClaim is the value of a provider's probe key: who probes it, or,
// with Hold, whose probe just failed.
type probeClaim struct {
	Worker string    `json:"worker"`
	At     time.Time `json:"at"`
	// Hold: the probe failed, and nobody may probe again until the entry
	// is Hold old by the server's clock (see ReleaseProbe).
	Hold time.Duration `json:"hold,omitempty"`
}

func (b *Broker) setupBreakers(ctx context.Context, t Topology) error {
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      t.Subjects.Stream(KindBreakers),
		Description: "breaker verdicts shared by worker replicas, and who holds each half-open probe",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	})
	if err != nil {
		return fmt.Errorf("create or update key-value bucket %s: %w", t.Subjects.Stream(KindBreakers), err)
	}
	b.breakers = kv
	return nil
}

func stateKey(provider string) string { return "state." + provider }
func probeKey(provider string) string { return "probe." + provider }

// ShareBreaker tells the other replicas that provider's breaker opened or
// closed here.
func (b *Broker) ShareBreaker(ctx context.Context, provider string, st BreakerState) error {
	v, _ := json.Marshal(st)
	if _, err := b.breakers.Put(ctx, stateKey(provider), v); err != nil {
		return fmt.Errorf("share breaker %s: %w", provider, err)
	}
	return nil
}

// WatchBreakers calls fn for every verdict shared by any replica (this one
// included; compare Worker), starting with the current ones, until stop.
//
// age is how long ago the verdict was written, by the server's clock (zero
// when the server's time cannot be read), so a replica whose clock is off
// follows a peer's verdict for as long as the peer meant, not longer.
func (b *Broker) WatchBreakers(ctx context.Context, fn func(provider string, st BreakerState, age time.Duration)) (stop func(), err error) {
	w, err := b.breakers.Watch(ctx, "state.*")
	if err != nil {
		return nil, fmt.Errorf("watch breakers: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue // nil: end of the initial values
			}
			var st BreakerState
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				b.log.Warn().Err(err).Str("key", e.Key()).Msg("unreadable shared breaker state")
				continue
			}
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			age, err := serverAge(actx, b.breakers, e)
			cancel()
			if err != nil {
				age = 0
			}
			fn(e.Key()[len("state."):], st, max(age, 0))
		}
	}()
	return func() { _ = w.Stop(); <-done }, nil
}

// ClaimProbe tries to become the one replica that sends provider's
// half-open probe. A claim older than stale is presumed abandoned (its
// worker died mid-probe) and taken over; a failed probe's hold is taken
// once it is over. Ages are measured with the server's timestamps, so a
// replica whose clock is off neither takes a live probe nor waits on a dead
// one. A live claim of worker's own is taken back at once: it is an earlier
// attempt whose answer was lost (a timeout on a slow link), as a worker asks
// for a probe only when it holds none.
func (b *Broker) ClaimProbe(ctx context.Context, provider, worker string, stale time.Duration) (bool, error) {
	v, _ := json.Marshal(probeClaim{Worker: worker, At: b.now()})
	for range 3 {
		_, err := b.breakers.Create(ctx, probeKey(provider), v)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return false, fmt.Errorf("claim probe of %s: %w", provider, err)
		}
		e, err := b.breakers.Get(ctx, probeKey(provider))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // released between the two calls
		}
		if err != nil {
			return false, fmt.Errorf("claim probe of %s: %w", provider, err)
		}
		var c probeClaim
		_ = json.Unmarshal(e.Value(), &c) // unreadable: abandoned after stale
		limit := stale
		switch {
		case c.Hold > 0:
			limit = c.Hold
		case c.Worker == worker:
			limit = 0
		}
		if limit > 0 {
			age, err := serverAge(ctx, b.breakers, e)
			if err != nil {
				return false, fmt.Errorf("claim probe of %s: %w", provider, err)
			}
			if age < limit {
				return false, nil
			}
		}
		if _, err := b.breakers.Update(ctx, probeKey(provider), v, e.Revision()); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				return false, nil // a peer took it over first
			}
			return false, fmt.Errorf("take over probe of %s: %w", provider, err)
		}
		return true, nil
	}
	return false, nil
}

// ReleaseProbe gives provider's probe back once its verdict is known, if
// worker still holds it (a peer may have taken over a claim it thought
// abandoned; that claim is not this worker's to delete). Share the verdict
// first. hold > 0 (the probe failed) keeps the probe from every replica for
// hold more by the server's clock, so that a peer that has not yet heard
// the verdict does not probe the provider that just failed; 0 frees it.
func (b *Broker) ReleaseProbe(ctx context.Context, provider, worker string, hold time.Duration) error {
	e, err := b.breakers.Get(ctx, probeKey(provider))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release probe of %s: %w", provider, err)
	}
	var c probeClaim
	if json.Unmarshal(e.Value(), &c) != nil || c.Worker != worker {
		return nil
	}
	if c.Hold > 0 {
		return nil // released already
	}
	if hold > 0 {
		v, _ := json.Marshal(probeClaim{Worker: worker, At: b.now(), Hold: hold})
		_, err = b.breakers.Update(ctx, probeKey(provider), v, e.Revision())
	} else {
		err = b.breakers.Delete(ctx, probeKey(provider), jetstream.LastRevision(e.Revision()))
	}
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("release probe of %s: %w", provider, err)
	}
	return nil
}
