package broker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ClaimResult says what Claim found.
type ClaimResult int

const (
	// ClaimWon: the caller holds the request id and must answer it.
	ClaimWon ClaimResult = iota
	// ClaimTakenOver: the caller holds the id after an earlier holder was
	// lost (a crashed or partitioned worker) or let go after a write that
	// may have landed: the reply may already have been published, so look
	// before calling a provider.
	ClaimTakenOver
	// ClaimDone: the id has been answered; ack without calling anyone.
	ClaimDone
	// ClaimBusy: a live worker holds the id (for this message or another
	// with the same id); put this one back and look again later.
	ClaimBusy
)

// ErrClaimLost is returned by Claim.Refresh when another delivery took the
// claim over: this holder was presumed dead and must leave the request to
// the new one (no provider call, no reply, no ack).
var ErrClaimLost = errors.New("claim taken over by another delivery")

// claimValue is what the bucket holds for a request id.
type claimValue struct {
	Done bool `json:"done"`
	// Requeued: the holder put its message back after a failed ladder,
	// having published nothing; the next holder needs no look for a reply.
	Requeued bool `json:"requeued,omitempty"`
	// Released: the holder let go after a write that may have landed (a
	// reply whose acknowledgement never came); the next holder looks.
	Released bool   `json:"released,omitempty"`
	Seq      uint64 `json:"seq"`
	Worker   string `json:"worker"`
	// At is the writer's own clock, for people reading the bucket; it
	// decides nothing.
	At time.Time `json:"at"`
	// StaleMS is the holder's promise: it refreshes the claim more often
	// than this, by the server's clock; a claim not written for that long
	// is presumed abandoned.
	StaleMS int64 `json:"stale_ms,omitempty"`
}

// open reports whether the claim is neither answered nor let go: a live
// worker may hold it.
func (c claimValue) open() bool { return !c.Done && !c.Requeued && !c.Released }

// claimKey turns a request id (any characters) into a valid KV key.
func claimKey(id string) string {
	return "id." + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// Claim is one delivery's hold on a request id, from winning it to Finish,
// Requeue or Release. The holder keeps it alive with Refresh; a claim not
// refreshed for its staleness (by the server's clock) may be taken over.
type Claim struct {
	b      *Broker
	id     string
	seq    uint64
	worker string
	stale  time.Duration
	// fresh: the id had no claim at all (nobody worked on it before).
	fresh bool

	mu  sync.Mutex
	rev uint64
}

func (b *Broker) claimValue(v claimValue) []byte {
	v.At = b.now()
	if data, ok := v.appendJSON(make([]byte, 0, 128)); ok {
		return data
	}
	data, _ := json.Marshal(v)
	return data
}

// appendJSON appends v as json.Marshal writes it, without reflection (two
// claim writes a request): false when a value needs what only json.Marshal
// does (escaping the worker id, a year outside 0-9999), and the caller
// uses it instead.
func (v *claimValue) appendJSON(b []byte) ([]byte, bool) {
	if y := v.At.Year(); y < 0 || y > 9999 || !plainJSON(v.Worker) {
		return b, false
	}
	b = append(b, `{"done":`...)
	b = strconv.AppendBool(b, v.Done)
	if v.Requeued {
		b = append(b, `,"requeued":true`...)
	}
	if v.Released {
		b = append(b, `,"released":true`...)
	}
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, v.Seq, 10)
	b = append(b, `,"worker":"`...)
	b = append(b, v.Worker...)
	b = append(b, `","at":"`...)
	b = v.At.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if v.StaleMS != 0 {
		b = append(b, `,"stale_ms":`...)
		b = strconv.AppendInt(b, v.StaleMS, 10)
	}
	return append(b, '}'), true
}

// plainJSON reports whether json.Marshal writes s as it is, between quotes:
// printable ASCII, none of the characters it escapes.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// Claim records that worker is answering request id from the message with
// stream sequence seq, promising to refresh the claim more often than stale.
// Another delivery's claim is taken over when it was settled without an
// answer (requeued or released) or has not been refreshed for its own
// staleness, measured with the server's timestamps; otherwise the result is
// ClaimBusy. The *Claim is non-nil for ClaimWon and ClaimTakenOver.
func (b *Broker) Claim(ctx context.Context, id string, seq uint64, worker string, stale time.Duration) (*Claim, ClaimResult, error) {
	c := &Claim{b: b, id: id, seq: seq, worker: worker, stale: stale}
	key := claimKey(id)
	mine := b.claimValue(c.value())
	for range 3 {
		rev, err := b.claims.Create(ctx, key, mine)
		if err == nil {
			c.rev, c.fresh = rev, true
			return c, ClaimWon, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, 0, fmt.Errorf("claim %q: %w", id, err)
		}
		entry, held, err := b.readClaim(ctx, key, stale)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired or deleted between the two calls
		}
		if err != nil {
			return nil, 0, fmt.Errorf("claim %q: %w", id, err)
		}
		if held.Done {
			return nil, ClaimDone, nil
		}
		if held.open() && !held.stale {
			return nil, ClaimBusy, nil
		}
		rev, err = b.claims.Update(ctx, key, mine, entry.Revision())
		if err != nil {
			if isConflict(err) {
				continue // somebody else moved first; look again
			}
			return nil, 0, fmt.Errorf("take over claim %q: %w", id, err)
		}
		c.rev = rev
		if held.Requeued {
			return c, ClaimWon, nil // its holder published nothing
		}
		return c, ClaimTakenOver, nil
	}
	return nil, ClaimBusy, nil
}

// readClaim is a claim as read, judged stale or not.
type readClaim struct {
	claimValue
	stale bool
}

// readClaim reads the claim under key and judges an open one stale when
// the server has not seen it written for its staleness.
func (b *Broker) readClaim(ctx context.Context, key string, defaultStale time.Duration) (jetstream.KeyValueEntry, readClaim, error) {
	entry, err := b.claims.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		// A direct get may be answered by a replica still catching up:
		// "not found" decides (a dead letter, a claim won), so the bucket's
		// leader confirms it.
		entry, err = b.claimFromLeader(ctx, key)
	}
	if err != nil {
		return nil, readClaim{}, err
	}
	var c readClaim
	if err := json.Unmarshal(entry.Value(), &c.claimValue); err != nil {
		return nil, readClaim{}, fmt.Errorf("claim holds %q: %w", entry.Value(), err)
	}
	if !c.open() {
		return entry, c, nil
	}
	stale := defaultStale
	if c.StaleMS > 0 {
		stale = time.Duration(c.StaleMS) * time.Millisecond
	}
	age, err := serverAge(ctx, b.claims, entry)
	if err != nil {
		return nil, readClaim{}, err
	}
	c.stale = age >= stale
	return entry, c, nil
}

// claimFromLeader reads the claim under key as the bucket's leader has it;
// jetstream.ErrKeyNotFound when it has none (or a deletion marker).
func (b *Broker) claimFromLeader(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	bucket := b.claims.Bucket()
	m, err := b.leaderLast(ctx, "KV_"+bucket, "$KV."+bucket+"."+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, jetstream.ErrKeyNotFound
	}
	if err != nil {
		return nil, err
	}
	e := leaderEntry{bucket: bucket, key: key, m: m}
	if e.Operation() != jetstream.KeyValuePut {
		return nil, jetstream.ErrKeyNotFound
	}
	return e, nil
}

// leaderEntry is a key-value entry read from the bucket's leader.
type leaderEntry struct {
	bucket, key string
	m           *jetstream.RawStreamMsg
}

var _ jetstream.KeyValueEntry = leaderEntry{}

func (e leaderEntry) Bucket() string     { return e.bucket }
func (e leaderEntry) Key() string        { return e.key }
func (e leaderEntry) Value() []byte      { return e.m.Data }
func (e leaderEntry) Revision() uint64   { return e.m.Sequence }
func (e leaderEntry) Created() time.Time { return e.m.Time }
func (e leaderEntry) Delta() uint64      { return 0 }
func (e leaderEntry) Operation() jetstream.KeyValueOp {
	switch e.m.Header.Get("KV-Operation") {
	case "DEL":
		return jetstream.KeyValueDelete
	case "PURGE":
		return jetstream.KeyValuePurge
	}
	return jetstream.KeyValuePut
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || (errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant))
}

// Fresh reports whether the id had no claim when this one was won: no
// earlier delivery (of this message or another with the id) worked on it,
// within the bucket's TTL.
func (c *Claim) Fresh() bool { return c.fresh }

func (c *Claim) value() claimValue {
	return claimValue{Seq: c.seq, Worker: c.worker, StaleMS: c.stale.Milliseconds()}
}

// update writes v over the claim if this holder still has it.
func (c *Claim) update(ctx context.Context, v claimValue) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	rev, err := c.b.claims.Update(ctx, claimKey(c.id), c.b.claimValue(v), c.rev)
	if err != nil {
		if isConflict(err) {
			return ErrClaimLost
		}
		return fmt.Errorf("claim %q: %w", c.id, err)
	}
	c.rev = rev
	return nil
}

// Refresh tells the other workers the holder is alive. ErrClaimLost means
// another delivery took the claim over.
func (c *Claim) Refresh(ctx context.Context) error { return c.update(ctx, c.value()) }

// Requeue records that the holder put its message back with nothing
// published, so the next delivery takes the claim at once and needs no look
// for an earlier reply. A claim lost meanwhile is left as it is.
func (c *Claim) Requeue(ctx context.Context) error { return c.letGo(ctx, claimValue{Requeued: true}) }

// Release records that the holder let go after a write that may have
// landed: the next delivery takes the claim at once and looks for a reply.
func (c *Claim) Release(ctx context.Context) error { return c.letGo(ctx, claimValue{Released: true}) }

// letGo writes how the holder let go (the Requeued or Released of v).
func (c *Claim) letGo(ctx context.Context, how claimValue) error {
	v := c.value()
	v.Requeued, v.Released = how.Requeued, how.Released
	if err := c.update(ctx, v); err != nil && !errors.Is(err, ErrClaimLost) {
		return err
	}
	return nil
}

// Finish marks the request id answered (whoever holds the claim now: the
// reply is stored).
func (c *Claim) Finish(ctx context.Context) error { return c.b.Finish(ctx, c.id, c.seq, c.worker) }

// Answered reports whether request id has been answered, without touching
// its claim; held is true when a live worker (by the claim's staleness on
// the server's clock) holds it for any message.
func (b *Broker) Answered(ctx context.Context, id string, stale time.Duration) (answered, held bool, err error) {
	_, c, err := b.readClaim(ctx, claimKey(id), stale)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("read claim %q: %w", id, err)
	}
	return c.Done, c.open() && !c.stale, nil
}

// Finish marks request id answered: any later message with this id is acked
// without calling a provider.
func (b *Broker) Finish(ctx context.Context, id string, seq uint64, worker string) error {
	if _, err := b.claims.Put(ctx, claimKey(id), b.claimValue(claimValue{Done: true, Seq: seq, Worker: worker})); err != nil {
		return fmt.Errorf("mark %q answered: %w", id, err)
	}
	return nil
}
