package service

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/config"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// natsServer runs a JetStream server the replicas connect to over TCP.
func natsServer(t *testing.T) *server.Server {
	t.Helper()
	srv, err := server.NewServer(&server.Options{JetStream: true, StoreDir: t.TempDir(), Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv
}

func simServer(t *testing.T) *sim.Server {
	t.Helper()
	s := sim.New(sim.Config{})
	if _, err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func replicaConfig(url string, sims ...*sim.Server) config.Config {
	cfg := config.Default()
	cfg.NATS.URL = url
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Worker.Concurrency = 32
	cfg.Worker.RequeueMin, cfg.Worker.RequeueMax = 100*time.Millisecond, 300*time.Millisecond
	cfg.Retry = config.Default().Retry
	cfg.Retry.Min, cfg.Retry.Max = 5*time.Millisecond, 20*time.Millisecond
	cfg.Breaker = breaker.Config{ConsecutiveFailures: 2, OpenFor: 800 * time.Millisecond}
	cfg.Providers = nil
	for i, s := range sims {
		cfg.Providers = append(cfg.Providers, providers.Config{Name: []string{"deepseek", "llama"}[i], Kind: providers.KindOpenAI,
			BaseURL: s.URL(), Model: "m", Timeout: 5 * time.Second})
	}
	return cfg
}

// replica starts a worker process in-process, running until the test ends.
func replica(t *testing.T, cfg config.Config, name string) *Service {
	t.Helper()
	svc, err := Start(context.Background(), cfg, name, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; svc.Close() })
	return svc
}

func publish(t *testing.T, js jetstream.JetStream, conv, id string) {
	t.Helper()
	data, _ := json.Marshal(chat.Request{ID: id, Messages: []chat.Message{{Role: chat.RoleUser, Content: "hi"}}})
	if _, err := js.Publish(context.Background(), "chat.requests."+conv, data, jetstream.WithMsgID(id)); err != nil {
		t.Fatal(err)
	}
}

func countReplies(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	st, err := js.Stream(context.Background(), chat.StreamReplies)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		var r chat.Reply
		_ = json.Unmarshal(m.Data, &r)
		got[r.Provider]++
	}
	return got
}

func TestReplicasShareBreakersAndOneProbe(t *testing.T) {
	srv := natsServer(t)
	primary, fallback := simServer(t), simServer(t)
	primary.SetMode(sim.ModeError)
	cfg := replicaConfig(srv.ClientURL(), primary, fallback)
	a, b := replica(t, cfg, "a"), replica(t, cfg, "b")
	ba, bb := a.Chain.Links()[0].Breaker, b.Chain.Links()[0].Breaker

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)

	// Failures trip one replica's breaker; the other follows without
	// having to fail on its own.
	for i := 0; ba.State() != breaker.Open && bb.State() != breaker.Open; i++ {
		if i > 50 {
			t.Fatal("no breaker opened after 50 failing requests")
		}
		publish(t, js, "c-1", fmt.Sprintf("trip-%d", i))
		time.Sleep(20 * time.Millisecond)
	}
	poll.Until(t, 5*time.Second, "both replicas' breakers open", func() bool {
		return ba.State() != breaker.Closed && bb.State() != breaker.Closed
	})
	if h := primary.Hits(); h > 2*int64(cfg.Breaker.ConsecutiveFailures) {
		t.Errorf("primary hit %d times before both breakers opened; at most %d expected", h, 2*cfg.Breaker.ConsecutiveFailures)
	}

	// The primary recovers, slowly. However many replicas half-open, the
	// pool sends it exactly one probe until the probe's verdict is in.
	primary.SetMode(sim.ModeOK)
	primary.SetLatency(3 * time.Second)
	poll.Until(t, 5*time.Second, "a replica half-open", func() bool {
		return ba.State() == breaker.HalfOpen || bb.State() == breaker.HalfOpen
	})
	poll.Until(t, 5*time.Second, "both replicas half-open", func() bool {
		return ba.State() != breaker.Open && bb.State() != breaker.Open
	})
	before := primary.Hits()
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() { publish(t, js, "c-2", fmt.Sprintf("probe-%02d", i)) })
	}
	wg.Wait()
	poll.Until(t, 10*time.Second, "both breakers closed by the probe", func() bool {
		return ba.State() == breaker.Closed && bb.State() == breaker.Closed
	})
	if n := primary.Hits() - before; n < 1 {
		t.Fatal("no probe reached the primary")
	}
	// Every request made while the probe was out went to the fallback.
	poll.Until(t, 10*time.Second, "30 probe-phase replies", func() bool {
		n := 0
		for _, c := range countReplies(t, js) {
			n += c
		}
		return n >= 30
	})
	if probes := primary.HitsIn(sim.ModeOK); probes != 1 {
		t.Errorf("recovering primary received %d calls while half-open across two replicas, want exactly 1", probes)
	}
}

func TestReadyAndHealthEndpoints(t *testing.T) {
	srv := natsServer(t)
	s := simServer(t)
	svc := replica(t, replicaConfig(srv.ClientURL(), s), "r")
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + svc.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", path, resp.Status)
		}
	}
}
