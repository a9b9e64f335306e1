// Package service assembles a running Understudy worker process from a
// configuration: the NATS connection and topology, the providers with their
// shared breakers, the worker pool, and the HTTP endpoints for Prometheus
// metrics and health. `understudy serve`, `understudy demo` and the
// end-to-end tests all start workers through it, so they run the same code.
package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/config"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/worker"
)

// Service is one worker process.
type Service struct {
	cfg       config.Config
	log       zerolog.Logger
	Broker    *broker.Broker
	Pool      *worker.Pool
	Chain     *worker.Chain
	Providers []*providers.Built
	Registry  *prometheus.Registry

	httpSrv     *http.Server
	httpAddr    string
	transitions chan breaker.Transition
	stop        chan struct{}
	fwdDone     chan struct{}
	stopWatch   func()
	// ready is the broker once its topology is set up.
	ready atomic.Pointer[broker.Broker]
}

// Start connects, creates the topology and builds the pool; Run then
// processes requests. name identifies the process (connection name and
// worker id; empty: host-pid).
func Start(ctx context.Context, cfg config.Config, name string, log zerolog.Logger) (s *Service, err error) {
	s = &Service{cfg: cfg, log: log, transitions: make(chan breaker.Transition, 1024),
		stop: make(chan struct{}), fwdDone: make(chan struct{})}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	links := make([]*worker.Link, 0, len(cfg.Providers))
	for i, pc := range cfg.Providers {
		built, err := providers.Build(pc, cfg.Worker.Concurrency)
		if err != nil {
			return s, fmt.Errorf("providers[%d]: %w", i, err)
		}
		s.Providers = append(s.Providers, built)
		b := breaker.New(pc.Name, cfg.Breaker, func(t breaker.Transition) {
			select {
			case s.transitions <- t:
			default:
				log.Warn().Str("provider", t.Provider).Msg("breaker transition not recorded: queue full")
			}
		})
		links = append(links, &worker.Link{Provider: built, Timeout: built.Timeout, Breaker: b})
	}
	// Health and metrics answer from the start: a worker waiting for its
	// NATS cluster is alive, just not ready.
	s.Registry = prometheus.NewRegistry()
	s.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := worker.NewMetrics(s.Registry)
	for _, l := range links {
		metrics.SampleBreaker(l.Breaker) // before the transition forwarder starts
	}
	if cfg.Metrics.Listen != "" {
		if err := s.serveHTTP(cfg.Metrics.Listen); err != nil {
			return s, err
		}
	}
	connName := "understudy-worker"
	if name != "" {
		connName += "-" + name
	}
	s.Broker, err = broker.Connect(ctx, cfg.NATS, connName, log)
	if err != nil {
		return s, err
	}
	if err := s.setup(ctx); err != nil {
		return s, err
	}
	s.ready.Store(s.Broker)
	s.Chain = worker.NewChain(links, cfg.Retry)
	s.Pool = worker.New(worker.Options{Broker: s.Broker, Chain: s.Chain, Config: cfg.Worker,
		Metrics: metrics, Log: log, ID: name})
	shared := &sharedBreakers{b: s.Broker, worker: s.Pool.ID(), breakers: map[string]*breaker.Breaker{},
		openFor: cfg.Breaker.OpenFor, log: log}
	for _, l := range links {
		shared.breakers[l.Provider.Name()] = l.Breaker
		shared.stale = max(shared.stale, 2*l.Timeout)
		l.Breaker.SetProbeGate(shared)
	}
	go func() {
		defer close(s.fwdDone)
		for {
			select {
			case t := <-s.transitions:
				s.Pool.BreakerChanged(t)
				shared.transition(t)
			case <-s.stop:
				return
			}
		}
	}()
	if s.stopWatch, err = s.Broker.WatchBreakers(ctx, shared.apply); err != nil {
		return s, err
	}
	return s, nil
}

// setup creates the topology, retrying while NATS is unreachable (a worker
// may start before its NATS cluster) until ctx ends.
func (s *Service) setup(ctx context.Context) error {
	topo := broker.Topology{Subjects: s.cfg.SubjectScheme(), Replicas: s.cfg.Streams.Replicas,
		RequestsMaxAge: s.cfg.Streams.RequestsMaxAge, AckWait: s.cfg.Worker.AckWait, MaxDeliveries: s.cfg.Worker.MaxDeliveries,
		RepliesDedupWindow: s.cfg.Streams.RepliesDedupWindow, ClaimsTTL: s.cfg.Streams.ClaimsTTL,
		ChunksMaxAge: s.cfg.Streams.ChunksMaxAge, ChunksStorage: s.cfg.Streams.ChunksStorage}
	for {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := s.Broker.Setup(sctx, topo)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		}
		s.log.Warn().Err(err).Msg("cannot create streams yet; retrying")
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *Service) serveHTTP(addr string) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if b := s.ready.Load(); b == nil || !b.Ready() {
			http.Error(w, "not ready: NATS disconnected or streams not set up", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics.listen: %w", err)
	}
	s.httpAddr = ln.Addr().String()
	s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("metrics server stopped")
		}
	}()
	s.log.Info().Str("listen", s.httpAddr).Msg("serving /metrics, /healthz, /readyz")
	return nil
}

// HTTPAddr is the address the metrics server listens on ("" when none).
func (s *Service) HTTPAddr() string { return s.httpAddr }

// Run processes requests until ctx ends, then drains (see worker.Pool.Run).
func (s *Service) Run(ctx context.Context) error { return s.Pool.Run(ctx) }

// Close stops the HTTP server and the providers, flushes events and closes
// the NATS connection (and the embedded server).
func (s *Service) Close() {
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.httpSrv.Shutdown(ctx)
		cancel()
	}
	for _, p := range s.Providers {
		_ = p.Close()
	}
	if s.stopWatch != nil {
		s.stopWatch()
	}
	if s.Pool != nil {
		close(s.stop) // breaker timers may still fire: their hook never blocks
		<-s.fwdDone
	}
	if s.Broker != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.Broker.FlushEvents(ctx)
		cancel()
		s.Broker.Close()
	}
}
