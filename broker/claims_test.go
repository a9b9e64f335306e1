package broker_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/internal/poll"
)

func claimName(r broker.ClaimResult) string {
	switch r {
	case broker.ClaimWon:
		return "ClaimWon"
	case broker.ClaimTakenOver:
		return "ClaimTakenOver"
	case broker.ClaimDone:
		return "ClaimDone"
	case broker.ClaimBusy:
		return "ClaimBusy"
	}
	return "ClaimResult(?)"
}

func TestClaimLifecycle(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	const hour = time.Hour
	held := map[string]*broker.Claim{}
	steps := []struct {
		name   string
		id     string
		seq    uint64
		worker string
		// do, instead of a Claim: "finish", "requeue" or "release" the
		// claim held by worker
		do   string
		want broker.ClaimResult
	}{
		{name: "fresh id", id: "r1", seq: 10, worker: "w1", want: broker.ClaimWon},
		{name: "same id from another message while held", id: "r1", seq: 11, worker: "w2", want: broker.ClaimBusy},
		{name: "same message redelivered while its holder lives", id: "r1", seq: 10, worker: "w2", want: broker.ClaimBusy},
		{name: "the holder puts it back, publishing nothing", id: "r1", worker: "w1", do: "requeue"},
		{name: "the redelivery takes it at once, no look needed", id: "r1", seq: 10, worker: "w2", want: broker.ClaimWon},
		{name: "other message busy again", id: "r1", seq: 11, worker: "w3", want: broker.ClaimBusy},
		{name: "the holder lets go after a write that may have landed", id: "r1", worker: "w2", do: "release"},
		{name: "the next one takes it over and must look", id: "r1", seq: 11, worker: "w3", want: broker.ClaimTakenOver},
		{name: "another id is independent", id: "r2", seq: 12, worker: "w3", want: broker.ClaimWon},
		{name: "finish r1", id: "r1", worker: "w3", do: "finish"},
		{name: "done for the same message", id: "r1", seq: 11, worker: "w1", want: broker.ClaimDone},
		{name: "done for another message", id: "r1", seq: 10, worker: "w2", want: broker.ClaimDone},
		{name: "done for a later message", id: "r1", seq: 999, worker: "w4", want: broker.ClaimDone},
		{name: "r2 still busy for another message", id: "r2", seq: 13, worker: "w1", want: broker.ClaimBusy},
	}
	for _, s := range steps {
		if s.do != "" {
			c := held[s.id+"/"+s.worker]
			if c == nil {
				t.Fatalf("%s: %s holds no claim on %s", s.name, s.worker, s.id)
			}
			var err error
			switch s.do {
			case "finish":
				err = c.Finish(ctx)
			case "requeue":
				err = c.Requeue(ctx)
			case "release":
				err = c.Release(ctx)
			}
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			continue
		}
		c, got, err := b.Claim(ctx, s.id, s.seq, s.worker, hour)
		if err != nil {
			t.Fatalf("%s: Claim: %v", s.name, err)
		}
		if got != s.want {
			t.Errorf("%s: Claim(%q, seq %d) = %s, want %s", s.name, s.id, s.seq, claimName(got), claimName(s.want))
		}
		if (c != nil) != (got == broker.ClaimWon || got == broker.ClaimTakenOver) {
			t.Errorf("%s: claim handle %v with %s", s.name, c, claimName(got))
		}
		if c != nil {
			held[s.id+"/"+s.worker] = c
		}
	}
	// A bare Finish (the advisory path holds no claim) marks the id too.
	if err := b.Finish(ctx, "r3", 20, "w1"); err != nil {
		t.Fatal(err)
	}
	if _, got, err := b.Claim(ctx, "r3", 21, "w2", hour); err != nil || got != broker.ClaimDone {
		t.Errorf("Claim after a bare Finish = %s, %v; want ClaimDone", claimName(got), err)
	}
}

// A claim is judged stale by the server's clock: not refreshed for its
// holder's staleness. Refreshing keeps it; the holder whose claim was taken
// over learns it on its next refresh.
func TestClaimStaleIsTakenOver(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	const stale = 300 * time.Millisecond
	old, got, err := b.Claim(ctx, "r1", 1, "dead-worker", stale)
	if err != nil || got != broker.ClaimWon {
		t.Fatalf("first Claim = %s, %v", claimName(got), err)
	}
	// Refreshed, it stays held past its staleness.
	for range 4 {
		time.Sleep(stale / 3)
		if err := old.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, got, err := b.Claim(ctx, "r1", 2, "w2", stale); err != nil || got != broker.ClaimBusy {
		t.Fatalf("Claim of a refreshed claim = %s, %v; want ClaimBusy", claimName(got), err)
	}
	var c *broker.Claim
	poll.Until(t, 5*time.Second, "the claim to become stale and be taken over", func() bool {
		c, got, err = b.Claim(ctx, "r1", 2, "w2", time.Hour) // the holder's promise decides
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		if got != broker.ClaimBusy && got != broker.ClaimTakenOver {
			t.Fatalf("Claim of a live or stale claim = %s", claimName(got))
		}
		return got == broker.ClaimTakenOver
	})
	if !old.Fresh() || c.Fresh() {
		t.Errorf("Fresh: first claim %v, takeover %v; want true, false", old.Fresh(), c.Fresh())
	}
	if err := old.Refresh(ctx); !errors.Is(err, broker.ErrClaimLost) {
		t.Errorf("the old holder's Refresh = %v, want ErrClaimLost", err)
	}
	if _, got, err := b.Claim(ctx, "r1", 1, "dead-worker", stale); err != nil || got != broker.ClaimBusy {
		t.Errorf("old message after the takeover: Claim = %s, %v; want ClaimBusy", claimName(got), err)
	}
	if err := c.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	if _, got, err := b.Claim(ctx, "r1", 3, "w3", 0); err != nil || got != broker.ClaimDone {
		t.Errorf("Claim after Finish with stale 0 = %s, %v; want ClaimDone", claimName(got), err)
	}
}

// Clocks a minute apart neither steal a live claim nor keep a dead one.
func TestClaimStalenessIgnoresClocks(t *testing.T) {
	t.Parallel()
	ahead := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	ahead.SetClock(func() time.Time { return time.Now().Add(time.Minute) })
	if _, got, err := ahead.Claim(ctx, "skew", 1, "ahead", time.Second); err != nil || got != broker.ClaimWon {
		t.Fatalf("Claim = %s, %v", claimName(got), err)
	}
	ahead.SetClock(func() time.Time { return time.Now().Add(-time.Minute) })
	if _, got, err := ahead.Claim(ctx, "skew", 2, "behind", time.Second); err != nil || got != broker.ClaimBusy {
		t.Fatalf("a fresh claim stamped a minute ahead, read a minute behind: %s, %v; want ClaimBusy", claimName(got), err)
	}
	poll.Until(t, 5*time.Second, "the dead holder's claim taken over", func() bool {
		_, got, err := ahead.Claim(ctx, "skew", 2, "behind", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return got == broker.ClaimTakenOver
	})
}

func TestClaimArbitraryIDs(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	ids := []struct{ name, id string }{
		{"plain", "req-01"},
		{"space", "hello world"},
		{"dots", "a.b.c"},
		{"dot only", "."},
		{"underscore like dots", "a_b_c"},
		{"slash", "a/b"},
		{"unicode", "ünïcödé-日本語-🙂"},
		{"star", "*"},
		{"gt", ">"},
		{"wildcards mixed", "a.*.>"},
		{"trailing dot", "abc."},
		{"spaces around", " x "},
		{"x", "x"},
		{"newline", "a\nb"},
		{"128 ascii", strings.Repeat("x", 128)},
		{"128 four-byte runes", strings.Repeat("🙂", 128)},
		{"128 mixed", strings.Repeat("é.*> ", 25) + "abc"},
		{"base64 lookalike", "aWQ"},
		{"key prefix lookalike", "id.aWQ"},
	}
	// Every id is its own key: none collides with another.
	for i, c := range ids {
		t.Run(c.name, func(t *testing.T) {
			seq := uint64(100 + i)
			claim, got, err := b.Claim(ctx, c.id, seq, "w1", time.Hour)
			if err != nil {
				t.Fatalf("Claim(%q): %v", c.id, err)
			}
			if got != broker.ClaimWon {
				t.Fatalf("Claim(%q) on a fresh id = %s, want ClaimWon", c.id, claimName(got))
			}
			if _, got, err := b.Claim(ctx, c.id, seq+1000, "w2", time.Hour); err != nil || got != broker.ClaimBusy {
				t.Errorf("Claim(%q) from another message = %s, %v; want ClaimBusy", c.id, claimName(got), err)
			}
			if err := claim.Finish(ctx); err != nil {
				t.Fatalf("Finish(%q): %v", c.id, err)
			}
			if _, got, err := b.Claim(ctx, c.id, seq+2000, "w3", time.Hour); err != nil || got != broker.ClaimDone {
				t.Errorf("Claim(%q) after Finish = %s, %v; want ClaimDone", c.id, claimName(got), err)
			}
		})
	}
}

// A claim the bucket has deleted reads as absent through the leader's
// confirmation of a direct get's "not found".
func TestAnsweredConfirmsAbsenceWithTheLeader(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	if answered, held, err := b.Answered(ctx, "never", time.Hour); err != nil || answered || held {
		t.Fatalf("Answered of an id never claimed = %v, %v, %v", answered, held, err)
	}
	c, _, err := b.Claim(ctx, "gone", 1, "w1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if answered, held, err := b.Answered(ctx, "gone", time.Hour); err != nil || answered || !held {
		t.Fatalf("Answered of a live claim = %v, %v, %v; want held", answered, held, err)
	}
	kv, err := b.JetStream().KeyValue(ctx, "CHAT_CLAIMS")
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "id.Z29uZQ"); err != nil { // base64url("gone")
		t.Fatal(err)
	}
	if answered, held, err := b.Answered(ctx, "gone", time.Hour); err != nil || answered || held {
		t.Fatalf("Answered of a deleted claim = %v, %v, %v; want neither", answered, held, err)
	}
	if err := c.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	if answered, _, err := b.Answered(ctx, "gone", time.Hour); err != nil || !answered {
		t.Fatalf("Answered after Finish = %v, %v", answered, err)
	}
}
