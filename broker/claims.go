package broker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ClaimResult says what Claim found.
type ClaimResult int

const (
	// ClaimWon: the caller holds the request id and must answer it.
	ClaimWon ClaimResult = iota
	// ClaimTakenOver: the caller holds the id after an earlier delivery of
	// the same message was lost (a crashed or stalled worker): the reply may
	// already have been published, so look before calling a provider.
	ClaimTakenOver
	// ClaimDone: the id has been answered; ack without calling anyone.
	ClaimDone
	// ClaimBusy: another message with the same id is being answered by a
	// live worker; put this one back and look again later.
	ClaimBusy
)

type claim struct {
	Done bool `json:"done"`
	// Requeued: the holder put its message back after a failed ladder,
	// having published nothing; its next delivery needs no look for a reply.
	Requeued bool      `json:"requeued,omitempty"`
	Seq      uint64    `json:"seq"`
	Worker   string    `json:"worker"`
	At       time.Time `json:"at"`
}

// claimKey turns a request id (any characters) into a valid KV key.
func claimKey(id string) string {
	return "id." + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// Claim records that worker is answering request id from the message with
// stream sequence seq. A claim older than stale held by another message is
// taken over (its worker is presumed dead).
func (b *Broker) Claim(ctx context.Context, id string, seq uint64, worker string, stale time.Duration) (ClaimResult, error) {
	key := claimKey(id)
	mine, _ := json.Marshal(claim{Seq: seq, Worker: worker, At: b.now()})
	for range 3 {
		_, err := b.claims.Create(ctx, key, mine)
		if err == nil {
			return ClaimWon, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("claim %q: %w", id, err)
		}
		entry, err := b.claims.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired or deleted between the two calls
		}
		if err != nil {
			return 0, fmt.Errorf("read claim %q: %w", id, err)
		}
		var c claim
		if err := json.Unmarshal(entry.Value(), &c); err != nil {
			return 0, fmt.Errorf("claim %q holds %q: %w", id, entry.Value(), err)
		}
		if c.Done {
			return ClaimDone, nil
		}
		// The same message again: either its holder put it back (Requeued)
		// or the delivery was lost (ack wait ran out: the worker died or
		// stalled); then its worker no longer holds it.
		if c.Seq != seq && b.now().Sub(c.At) < stale {
			return ClaimBusy, nil
		}
		if _, err := b.claims.Update(ctx, key, mine, entry.Revision()); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // somebody else moved first; look again
			}
			return 0, fmt.Errorf("take over claim %q: %w", id, err)
		}
		if c.Seq == seq && c.Requeued {
			return ClaimWon, nil
		}
		return ClaimTakenOver, nil
	}
	return ClaimBusy, nil
}

// Requeue records that the message with stream sequence seq is being put
// back after a failed ladder with nothing published, so its next delivery
// can skip the look for an earlier reply. It changes the claim only while
// worker still holds it for that message: a claim finished, or taken over
// by another delivery meanwhile, is left as it is.
func (b *Broker) Requeue(ctx context.Context, id string, seq uint64, worker string) error {
	key := claimKey(id)
	entry, err := b.claims.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("record %q as requeued: %w", id, err)
	}
	var c claim
	if json.Unmarshal(entry.Value(), &c) != nil || c.Done || c.Seq != seq || c.Worker != worker {
		return nil
	}
	v, _ := json.Marshal(claim{Requeued: true, Seq: seq, Worker: worker, At: b.now()})
	if _, err := b.claims.Update(ctx, key, v, entry.Revision()); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("record %q as requeued: %w", id, err)
	}
	return nil
}

// Answered reports whether request id has been answered, without touching
// its claim; held is true when another message's fresh claim (younger than
// stale) holds it.
func (b *Broker) Answered(ctx context.Context, id string, seq uint64, stale time.Duration) (answered, held bool, err error) {
	entry, err := b.claims.Get(ctx, claimKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("read claim %q: %w", id, err)
	}
	var c claim
	if err := json.Unmarshal(entry.Value(), &c); err != nil {
		return false, false, fmt.Errorf("claim %q holds %q: %w", id, entry.Value(), err)
	}
	return c.Done, !c.Done && c.Seq != seq && b.now().Sub(c.At) < stale, nil
}

// Finish marks request id answered: any later message with this id is acked
// without calling a provider.
func (b *Broker) Finish(ctx context.Context, id string, seq uint64, worker string) error {
	v, _ := json.Marshal(claim{Done: true, Seq: seq, Worker: worker, At: b.now()})
	if _, err := b.claims.Put(ctx, claimKey(id), v); err != nil {
		return fmt.Errorf("mark %q answered: %w", id, err)
	}
	return nil
}
