package broker_test

import (
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
	steps := []struct {
		name   string
		id     string
		seq    uint64
		worker string
		finish bool // call Finish instead of Claim
		want   broker.ClaimResult
	}{
		{name: "fresh id", id: "r1", seq: 10, worker: "w1", want: broker.ClaimWon},
		{name: "same id from another message while fresh", id: "r1", seq: 11, worker: "w2", want: broker.ClaimBusy},
		{name: "same id from the same message (a redelivery)", id: "r1", seq: 10, worker: "w2", want: broker.ClaimTakenOver},
		{name: "the original worker again, same message", id: "r1", seq: 10, worker: "w1", want: broker.ClaimTakenOver},
		{name: "other message still busy", id: "r1", seq: 11, worker: "w3", want: broker.ClaimBusy},
		{name: "another id is independent", id: "r2", seq: 11, worker: "w3", want: broker.ClaimWon},
		{name: "finish r1", id: "r1", seq: 10, worker: "w1", finish: true},
		{name: "done for the same message", id: "r1", seq: 10, worker: "w1", want: broker.ClaimDone},
		{name: "done for another message", id: "r1", seq: 11, worker: "w2", want: broker.ClaimDone},
		{name: "done for a later message", id: "r1", seq: 999, worker: "w4", want: broker.ClaimDone},
		{name: "r2 still busy for another message", id: "r2", seq: 12, worker: "w1", want: broker.ClaimBusy},
		{name: "finish without a claim", id: "r3", seq: 20, worker: "w1", finish: true},
		{name: "done after a bare finish", id: "r3", seq: 21, worker: "w2", want: broker.ClaimDone},
	}
	for _, s := range steps {
		if s.finish {
			if err := b.Finish(ctx, s.id, s.seq, s.worker); err != nil {
				t.Fatalf("%s: Finish: %v", s.name, err)
			}
			continue
		}
		got, err := b.Claim(ctx, s.id, s.seq, s.worker, hour)
		if err != nil {
			t.Fatalf("%s: Claim: %v", s.name, err)
		}
		if got != s.want {
			t.Errorf("%s: Claim(%q, seq %d) = %s, want %s", s.name, s.id, s.seq, claimName(got), claimName(s.want))
		}
	}
}

func TestClaimStaleIsTakenOver(t *testing.T) {
	t.Parallel()
	b := newBroker(t, broker.Topology{})
	ctx := testCtx(t)
	if got, err := b.Claim(ctx, "r1", 1, "dead-worker", time.Hour); err != nil || got != broker.ClaimWon {
		t.Fatalf("first Claim = %s, %v", claimName(got), err)
	}
	const stale = 100 * time.Millisecond
	var got broker.ClaimResult
	poll.Until(t, 5*time.Second, "the claim to become stale and be taken over", func() bool {
		var err error
		got, err = b.Claim(ctx, "r1", 2, "w2", stale)
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		if got != broker.ClaimBusy && got != broker.ClaimTakenOver {
			t.Fatalf("Claim of a live or stale claim = %s", claimName(got))
		}
		return got == broker.ClaimTakenOver
	})
	// The new holder's claim is fresh: the old message is now the busy one.
	if got, err := b.Claim(ctx, "r1", 1, "dead-worker", time.Hour); err != nil || got != broker.ClaimBusy {
		t.Errorf("old message after the takeover: Claim = %s, %v; want ClaimBusy", claimName(got), err)
	}
	// A stale claim that is done stays done.
	if err := b.Finish(ctx, "r1", 2, "w2"); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Claim(ctx, "r1", 3, "w3", 0); err != nil || got != broker.ClaimDone {
		t.Errorf("Claim after Finish with stale 0 = %s, %v; want ClaimDone", claimName(got), err)
	}
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
			got, err := b.Claim(ctx, c.id, seq, "w1", time.Hour)
			if err != nil {
				t.Fatalf("Claim(%q): %v", c.id, err)
			}
			if got != broker.ClaimWon {
				t.Fatalf("Claim(%q) on a fresh id = %s, want ClaimWon", c.id, claimName(got))
			}
			if got, err := b.Claim(ctx, c.id, seq+1000, "w2", time.Hour); err != nil || got != broker.ClaimBusy {
				t.Errorf("Claim(%q) from another message = %s, %v; want ClaimBusy", c.id, claimName(got), err)
			}
			if err := b.Finish(ctx, c.id, seq, "w1"); err != nil {
				t.Fatalf("Finish(%q): %v", c.id, err)
			}
			if got, err := b.Claim(ctx, c.id, seq+2000, "w3", time.Hour); err != nil || got != broker.ClaimDone {
				t.Errorf("Claim(%q) after Finish = %s, %v; want ClaimDone", c.id, claimName(got), err)
			}
		})
	}
}
