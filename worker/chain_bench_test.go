package worker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

// BenchmarkChainWalk is one walk of the chain against simulated providers
// answering at once over real HTTP on loopback (the sim's own work and the
// HTTP round trip included): the provider call's share of a request.
//
//	go test -run='^$' -bench=ChainWalk -benchmem ./worker/
func BenchmarkChainWalk(b *testing.B) {
	req := &providers.Request{Messages: []chat.Message{{Role: chat.RoleSystem, Content: "You are Lucy."},
		{Role: chat.RoleUser, Content: strings.Repeat("where is my order? ", 14)}}}
	for _, tc := range []struct {
		name string
		// primary: the first provider's mode ("" for a chain of one).
		primary sim.Mode
		// open: the primary's breaker is open (skipped without a call).
		open bool
		want int // index of the provider that answers
	}{
		{name: "answer", want: 0},
		{name: "fallback", primary: sim.ModeError, want: 1},
		{name: "skip-open", primary: sim.ModeError, open: true, want: 1},
	} {
		b.Run(tc.name, func(b *testing.B) {
			names := []string{"answer"}
			if tc.primary != "" {
				names = []string{"primary", "answer"}
			}
			f := newFleet(b, names...)
			if tc.primary != "" {
				f.sim("primary").SetMode(tc.primary)
			}
			var links []*Link
			for _, bt := range f.built {
				// A breaker that never opens by itself: fallback walks to the
				// second provider every time.
				br := breaker.New(bt.Name(), breaker.Config{ConsecutiveFailures: 1 << 30, OpenFor: time.Hour}, nil)
				links = append(links, &Link{Provider: bt, Timeout: 2 * time.Second, Breaker: br})
			}
			if tc.open {
				links[0].Breaker.ForceOpen(time.Now().Add(time.Hour))
			}
			c := NewChain(links, RetryConfig{Min: time.Nanosecond, Max: time.Nanosecond, Factor: 2})
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				res := c.Run(ctx, req, nil)
				if res.Response == nil || res.Index != tc.want {
					b.Fatalf("answered by %d (%+v), want %d", res.Index, res.Attempts, tc.want)
				}
			}
		})
	}
}
