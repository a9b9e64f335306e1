package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/natscluster"
	"github.com/understudy-ai/understudy/providers/sim"
	"github.com/understudy-ai/understudy/service"
)

// demoReplica is one worker replica of the cluster demo.
type demoReplica struct {
	name    string
	svc     *service.Service
	stop    context.CancelFunc
	done    chan struct{}
	crashed bool
}

// calls is how many provider calls the replica made (each replica runs
// its own simulated providers).
func (r *demoReplica) calls() int64 {
	var n int64
	for _, p := range r.svc.Providers {
		n += p.Sim.Hits()
	}
	return n
}

// crash drops the replica's NATS connection at once, without a drain, and
// stops it: what it held unacknowledged is redelivered to the others after
// ack_wait, as when a process dies.
func (r *demoReplica) crash() {
	r.crashed = true
	r.svc.Broker.Conn().Close()
	r.stop()
	<-r.done
	r.svc.Close()
}

// demoCluster is `understudy demo --cluster`: three clustered NATS nodes in
// this process, three worker replicas, the provider outage, the loss of the
// node leading CHAT_REQUESTS (shut down, then started again) and the crash
// of a replica, on a schedule; then the exactly-once verdict and the report.
func demoCluster(ctx context.Context, o demoOptions, stdout, stderr io.Writer) int {
	cluster, err := natscluster.Start(o.store, 3)
	if err != nil {
		fmt.Fprintf(stderr, "understudy demo: %v\n", err)
		return exitFailed
	}
	defer cluster.Shutdown()
	cfg := demoConfig(o)
	cfg.NATS = broker.Config{URL: cluster.URLs()}
	cfg.Streams.Replicas = 3
	cfg.Worker.AckWait = 2 * time.Second // a crashed replica's requests come back soon
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "understudy demo: %v\n", err)
		return exitFailed
	}
	log := newLogger(stderr, cfg.Log.Level)
	subj := cfg.SubjectScheme()
	requests := subj.Stream(chat.KindRequests)

	var replicas []*demoReplica
	defer func() {
		for _, r := range replicas {
			if !r.crashed {
				r.stop()
				<-r.done
				r.svc.Close()
			}
		}
	}()
	for i := range 3 {
		name := fmt.Sprintf("replica-%d", i+1)
		svc, err := service.Start(ctx, cfg, name, log)
		if err != nil {
			fmt.Fprintf(stderr, "understudy demo: %s: %v\n", name, err)
			return exitFailed
		}
		rctx, stop := context.WithCancel(ctx)
		r := &demoReplica{name: name, svc: svc, stop: stop, done: make(chan struct{})}
		go func() { defer close(r.done); _ = svc.Run(rctx) }()
		replicas = append(replicas, r)
	}

	// The demo's own connection: it sends, listens and reads the streams.
	b, err := broker.Connect(ctx, cfg.NATS, "demo", zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "understudy demo: %v\n", err)
		return exitFailed
	}
	defer b.Close()
	tally := newDemoTally()
	sub, err := tally.listen(b.Conn(), subj)
	if err != nil {
		fmt.Fprintf(stderr, "understudy demo: %v\n", err)
		return exitFailed
	}
	defer func() { _ = sub.Unsubscribe() }()

	leader := func() string {
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		l, err := b.StreamLeader(lctx, requests)
		if err != nil || l == "" {
			return "none"
		}
		return l
	}
	nodeDownAt, nodeUpAt, crashAt := o.duration/4, o.duration/2, 3*o.duration/4
	fmt.Fprintf(stdout, "understudy demo --cluster: nodes %s (streams R3), replicas replica-1..3; %d req/s for %s over %d conversations; chain deepseek → llama → qwen\n",
		strings.Join([]string{cluster.Name(0), cluster.Name(1), cluster.Name(2)}, ", "), o.rate, o.duration, o.conversations)
	fmt.Fprintf(stdout, "schedule: deepseek down %s-%s; the %s leader shut down at %s, started again at %s; replica-3 crashes at %s\n",
		o.outageAt, o.outageAt+o.outageFor, requests, nodeDownAt, nodeUpAt, crashAt)
	fmt.Fprintf(stdout, "[  0.0s] %s leader: %s\n", requests, leader())

	// The sender publishes at the rate, each request retried under its id
	// through leader elections, as a chat API should.
	start := time.Now()
	var sent atomic.Int64
	sendErr := make(chan error, 1)
	go func() {
		defer close(sendErr)
		tick := time.NewTicker(time.Second / time.Duration(o.rate))
		defer tick.Stop()
		for n := 1; ; n++ {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				if now.Sub(start) >= o.duration {
					return
				}
			}
			id := fmt.Sprintf("demo-%06d", n)
			stream := demoStreamed(n, o.streamShare)
			tally.sent(id, stream)
			if err := demoPublishRetrying(ctx, b, subj, n, o.conversations, stream); err != nil {
				sendErr <- err
				return
			}
			sent.Add(1)
		}
	}()

	status := time.NewTicker(time.Second)
	defer status.Stop()
	lead, outage, nodeDown, nodeUp, crashed := leader(), false, -1, false, false
	line := func() string {
		var b strings.Builder
		b.WriteString(tally.line(time.Since(start), replicas[0].svc, outage))
		fmt.Fprintf(&b, " | %s leader %s | calls:", requests, lead)
		for _, r := range replicas {
			fmt.Fprintf(&b, " %s %d", r.name, r.calls())
			if r.crashed {
				b.WriteString(" (crashed)")
			}
		}
		return b.String()
	}
	for sending := true; sending; {
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout, "interrupted")
			return exitFailed
		case err, open := <-sendErr:
			if err != nil {
				fmt.Fprintf(stderr, "understudy demo: publish: %v\n", err)
				return exitFailed
			}
			if !open {
				sending = false
			}
			sendErr = nil
		case <-status.C:
			el := time.Since(start)
			if down := el >= o.outageAt && el < o.outageAt+o.outageFor; down != outage {
				outage = down
				for _, r := range replicas {
					if down {
						r.svc.Providers[0].Sim.SetMode(demoOutageMode)
					} else {
						r.svc.Providers[0].Sim.SetMode(sim.ModeOK)
					}
				}
				if down {
					fmt.Fprintf(stdout, "[%5.1fs] >>> deepseek outage begins (503s; streamed answers break off after 2 chunks)\n", el.Seconds())
				} else {
					fmt.Fprintf(stdout, "[%5.1fs] <<< deepseek is back\n", el.Seconds())
				}
			}
			if el >= nodeDownAt && nodeDown < 0 {
				if nodeDown = cluster.Index(lead); nodeDown < 0 {
					nodeDown = 0 // no leader right now: any node will do
				}
				fmt.Fprintf(stdout, "[%5.1fs] >>> node %s (%s leader: %s) shuts down\n", el.Seconds(), cluster.Name(nodeDown), requests, lead)
				cluster.Stop(nodeDown)
			}
			if el >= nodeUpAt && nodeDown >= 0 && !nodeUp {
				nodeUp = true
				if err := cluster.Restart(nodeDown); err != nil {
					fmt.Fprintf(stderr, "understudy demo: %v\n", err)
					return exitFailed
				}
				fmt.Fprintf(stdout, "[%5.1fs] <<< node %s started again\n", time.Since(start).Seconds(), cluster.Name(nodeDown))
			}
			if el >= crashAt && !crashed {
				crashed = true
				fmt.Fprintf(stdout, "[%5.1fs] >>> replica-3 crashes (its connection dropped, nothing drained)\n", el.Seconds())
				replicas[2].crash()
			}
			if l := leader(); l != lead {
				fmt.Fprintf(stdout, "[%5.1fs] %s leader: %s\n", time.Since(start).Seconds(), requests, l)
				lead = l
			}
			fmt.Fprintln(stdout, line())
		}
	}
	// Wait for the stragglers (queued retries, the crashed replica's
	// requests once their ack_wait ran out).
	wait := time.NewTimer(45 * time.Second)
	defer wait.Stop()
	for waiting := tally.outstanding() > 0; waiting; waiting = tally.outstanding() > 0 {
		select {
		case <-ctx.Done():
			return exitFailed
		case <-wait.C:
			fmt.Fprintf(stdout, "gave up waiting: %d requests unanswered\n", tally.outstanding())
			waiting = false
		case <-status.C:
			lead = leader()
			fmt.Fprintln(stdout, line())
		}
	}
	fmt.Fprintln(stdout, line())
	for _, r := range replicas {
		if !r.crashed {
			r.stop()
			<-r.done
		}
	}
	c, err := demoCheck(ctx, b, subj, tally)
	if err != nil {
		fmt.Fprintf(stderr, "understudy demo: reading replies: %v\n", err)
		return exitFailed
	}
	var calls []string
	for _, r := range replicas {
		calls = append(calls, fmt.Sprintf("%s %d", r.name, r.calls()))
	}
	fmt.Fprintf(stdout, "\nsummary: sent %d, replies stored %d, unanswered %d, answered more than once %d; served by %s; failed %d; provider calls %s\n",
		c.sent, c.stored, c.missing, c.doubled, tally.byProviderString(), tally.failedCount(), strings.Join(calls, ", "))
	return demoVerdict(ctx, o, b, subj, c, stdout, stderr)
}

// demoPublishRetrying publishes request n, again under the same id while
// the stream cannot take it (a leader election), for up to 30 s.
func demoPublishRetrying(ctx context.Context, b *broker.Broker, subj chat.Subjects, n, convs int, stream bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		// A publish lost with a node (sent to a leader that died) is
		// given up on after 2s, not demoPublish's 5s: the sender waits.
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := demoPublish(actx, b, subj, n, convs, stream)
		cancel()
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
