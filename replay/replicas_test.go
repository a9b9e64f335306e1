package replay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/config"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
	"github.com/understudy-ai/understudy/replay"
	"github.com/understudy-ai/understudy/service"
)

// replicaSet runs worker replicas in-process against one NATS server.
type replicaSet struct {
	t   *testing.T
	cfg config.Config
}

// start runs a replica named name; stop ends it (and is also run at the
// end of the test).
func (rs replicaSet) start(name string) (svc *service.Service, stop func()) {
	rs.t.Helper()
	svc, err := service.Start(context.Background(), rs.cfg, name, zerolog.Nop())
	if err != nil {
		rs.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			svc.Close()
		}
	}
	rs.t.Cleanup(stop)
	return svc, stop
}

func simProvider(t *testing.T) *sim.Server {
	t.Helper()
	s := sim.New(sim.Config{})
	if _, err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Three replicas share deepseek's breaker. a opens it by its own calls; b
// and c start while it is open and follow the shared verdict (forced open,
// then half-open by their own timer of the remaining time, neither recorded
// by a); a stops; b or c sends the probe that closes it. The report shows
// one period with an end and a chain of pool transitions closed → open →
// half-open → closed, each once.
func TestBreakerPeriodsWithThreeReplicas(t *testing.T) {
	srv, err := server.NewServer(&server.Options{JetStream: true, StoreDir: t.TempDir(), Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	primary, fallback := simProvider(t), simProvider(t)
	primary.SetMode(sim.ModeError)
	cfg := config.Default()
	cfg.NATS.URL = srv.ClientURL()
	cfg.Metrics.Listen = ""
	cfg.Worker.RequeueMin, cfg.Worker.RequeueMax = 100*time.Millisecond, 300*time.Millisecond
	cfg.Retry.Min, cfg.Retry.Max = 5*time.Millisecond, 20*time.Millisecond
	cfg.Breaker = breaker.Config{ConsecutiveFailures: 2, OpenFor: 1500 * time.Millisecond}
	cfg.Providers = nil
	for i, s := range []*sim.Server{primary, fallback} {
		cfg.Providers = append(cfg.Providers, providers.Config{Name: []string{"deepseek", "llama"}[i], Kind: providers.KindOpenAI,
			BaseURL: s.URL(), Model: "m", Timeout: 5 * time.Second})
	}
	rs := replicaSet{t: t, cfg: cfg}
	since := time.Now().Add(-time.Second)

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	n := 0
	publish := func() {
		n++
		id := fmt.Sprintf("r-%03d", n)
		data, _ := json.Marshal(chat.Request{ID: id, Messages: []chat.Message{{Role: chat.RoleUser, Content: "hi"}}})
		if _, err := js.Publish(context.Background(), "chat.requests.c-1", data, jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}

	a, stopA := rs.start("a")
	state := func(s *service.Service) breaker.State { return s.Chain.Links()[0].Breaker.State() }
	poll.Until(t, 10*time.Second, "a's breaker open by its own calls", func() bool {
		if state(a) != breaker.Open {
			publish()
		}
		return state(a) == breaker.Open
	})
	b, _ := rs.start("b")
	c, _ := rs.start("c")
	poll.Until(t, 5*time.Second, "b and c following a's verdict", func() bool {
		return state(b) != breaker.Closed && state(c) != breaker.Closed
	})
	stopA()
	primary.SetMode(sim.ModeOK)
	poll.Until(t, 10*time.Second, "b and c closed by one probe", func() bool {
		if state(b) != breaker.Closed || state(c) != breaker.Closed {
			publish()
		}
		return state(b) == breaker.Closed && state(c) == breaker.Closed
	})

	bk, err := broker.Connect(testCtx(t, 10*time.Second), broker.Config{URL: srv.ClientURL()}, "replay", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer bk.Close()
	subj, _ := chat.NewSubjects("chat")
	var r *replay.Report
	// The replicas record events without waiting; the report settles once
	// the last replica's close is stored.
	poll.Until(t, 5*time.Second, "deepseek's period closed in the report", func() bool {
		r, err = replay.Build(testCtx(t, 10*time.Second), bk, subj, replay.Options{Since: since})
		if err != nil {
			t.Fatal(err)
		}
		return len(r.BreakerOpen) > 0 && !r.BreakerOpen[len(r.BreakerOpen)-1].To.IsZero()
	})
	for _, p := range r.BreakerOpen {
		if p.Provider == "deepseek" && p.To.IsZero() {
			t.Errorf("deepseek open from %s with no end: %+v", p.From, r.BreakerOpen)
		}
	}
	state2 := map[string]string{}
	var tos []string
	for _, tr := range r.BreakerTransitions {
		if prev := cmpOr(state2[tr.Provider], "closed"); tr.From != prev || tr.To == prev {
			t.Errorf("transition %s %s -> %s (worker %s) after %s", tr.Provider, tr.From, tr.To, tr.Worker, prev)
		}
		state2[tr.Provider] = tr.To
		if tr.Provider == "deepseek" {
			tos = append(tos, tr.To)
		}
	}
	if len(tos) < 3 || tos[0] != "open" || tos[len(tos)-1] != "closed" {
		t.Errorf("deepseek's pool transitions go to %v, want open, half-open, ..., closed", tos)
	}
	if t.Failed() {
		for _, tr := range r.BreakerTransitions {
			t.Logf("%s %s %s -> %s %s peer=%v", tr.At.Format("15:04:05.000"), tr.Provider, tr.From, tr.To, tr.Worker, tr.Peer)
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
