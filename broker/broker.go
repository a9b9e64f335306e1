package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Broker is a connection to NATS JetStream with Understudy's topology.
type Broker struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	srv  *server.Server // embedded server, nil when connected to a URL
	log  zerolog.Logger
	topo Topology

	requests jetstream.Stream
	consumer jetstream.Consumer
	claims   jetstream.KeyValue
	breakers jetstream.KeyValue
	order    atomic.Pointer[orderState] // set by SetupOrder

	connected atomic.Bool
	connErr   atomic.Pointer[string] // why the last connection attempt failed
	closing   atomic.Bool
	clock     Clock // nil: time.Now

	// unlockStore releases the embedded server's store (nil: none).
	unlockStore func()
}

// Connect connects to cfg.URL, or starts an embedded JetStream server when
// it is empty. name identifies the connection in the server's monitoring.
// The connection reconnects forever: a NATS outage is waited out, not fatal.
func Connect(ctx context.Context, cfg Config, name string, log zerolog.Logger) (*Broker, error) {
	cfg.SetDefaults()
	b := &Broker{log: log}
	url := cfg.URL
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			b.connected.Store(false)
			if !b.closing.Load() {
				log.Warn().Err(err).Msg("disconnected from NATS; reconnecting")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.connected.Store(true)
			b.connErr.Store(nil)
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("reconnected to NATS")
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			b.connected.Store(true)
			b.connErr.Store(nil)
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("connected to NATS")
		}),
		// Every failed attempt, the first connection's included: a refusal
		// (TLS, authorization) is retried forever like an outage, so say
		// why, once per reason, and let WaitConnected say it too.
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			reason := err.Error()
			if prev := b.connErr.Swap(&reason); (prev == nil || *prev != reason) && !b.closing.Load() {
				log.Warn().Err(err).Msg("cannot connect to NATS; retrying")
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("NATS async error")
		}),
	}
	if cfg.URL == "" {
		unlock, err := lockStore(cfg.StoreDir)
		if err != nil {
			return nil, err
		}
		srv, err := startEmbedded(cfg)
		if err != nil {
			unlock()
			return nil, err
		}
		b.srv, b.unlockStore = srv, unlock
		if cfg.Listen == "-" {
			opts = append(opts, nats.InProcessServer(srv))
		}
		url = srv.ClientURL()
		log.Info().Str("store_dir", cfg.StoreDir).Str("url", url).Msg("started embedded NATS JetStream server")
	} else {
		if err := checkFiles(cfg); err != nil {
			return nil, err
		}
		if cfg.Creds != "" {
			opts = append(opts, nats.UserCredentials(cfg.Creds))
		}
		if cfg.User != "" {
			opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
		}
		if cfg.Token != "" {
			opts = append(opts, nats.Token(cfg.Token))
		}
		if cfg.TLS.CA != "" {
			opts = append(opts, nats.RootCAs(cfg.TLS.CA))
		}
		if cfg.TLS.Cert != "" {
			opts = append(opts, nats.ClientCert(cfg.TLS.Cert, cfg.TLS.Key))
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.shutdownServer()
		return nil, fmt.Errorf("connect to NATS at %s: %w", redact(url), err)
	}
	if nc.IsConnected() {
		b.connected.Store(true)
	}
	b.nc = nc
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
		log.Warn().Err(err).Str("subject", m.Subject).Msg("event not stored")
	}))
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	b.js = js
	return b, nil
}

func startEmbedded(cfg Config) (*server.Server, error) {
	opts := &server.Options{
		JetStream: true,
		StoreDir:  cfg.StoreDir,
		NoLog:     true,
		NoSigs:    true,
		// No bound on payloads beyond the NATS default (1 MiB).
	}
	if cfg.Listen == "-" {
		opts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("nats.listen: %q is not host:port: %w", cfg.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("nats.listen: port %q: %w", port, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("embedded NATS server: not ready for connections within 10s")
	}
	return srv, nil
}

// redact hides the credentials of every URL in a comma-separated list,
// with or without a scheme (the NATS client accepts "user:pw@host:4222").
func redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		at := strings.LastIndexByte(u, '@')
		if at < 0 {
			continue
		}
		start := 0
		if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
			start = scheme + 3
		}
		parts[i] = u[:start] + "***" + u[at:]
	}
	return strings.Join(parts, ",")
}

// Conn is the underlying NATS connection (for core subscriptions).
func (b *Broker) Conn() *nats.Conn { return b.nc }

// JetStream is the JetStream context.
func (b *Broker) JetStream() jetstream.JetStream { return b.js }

// ClientURL is the URL other processes reach the server on; for an
// embedded server that serves only this process, "".
func (b *Broker) ClientURL() string {
	if b.srv != nil {
		if b.srv.Addr() == nil {
			return ""
		}
		return b.srv.ClientURL()
	}
	return b.nc.ConnectedUrlRedacted()
}

// Connected reports whether the connection is up right now.
func (b *Broker) Connected() bool { return b.connected.Load() && b.nc.IsConnected() }

// Ready reports whether the broker is connected and Setup has completed.
func (b *Broker) Ready() bool { return b.Connected() && b.consumer != nil }

// Close drains the connection and stops an embedded server.
func (b *Broker) Close() {
	b.closing.Store(true)
	if b.nc != nil {
		done := make(chan struct{})
		b.nc.SetClosedHandler(func(*nats.Conn) { close(done) })
		if err := b.nc.Drain(); err != nil {
			b.nc.Close()
		} else {
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				b.nc.Close()
			}
		}
	}
	b.shutdownServer()
}

func (b *Broker) shutdownServer() {
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
	if b.unlockStore != nil {
		b.unlockStore()
		b.unlockStore = nil
	}
}

// WaitConnected waits until the connection is up, or ctx ends.
func (b *Broker) WaitConnected(ctx context.Context) error {
	for !b.nc.IsConnected() {
		select {
		case <-ctx.Done():
			if reason := b.connErr.Load(); reason != nil {
				return fmt.Errorf("cannot reach NATS at %s: %w (last attempt: %s)", redact(b.nc.Opts.Servers[0]), ctx.Err(), *reason)
			}
			return fmt.Errorf("cannot reach NATS at %s: %w", redact(b.nc.Opts.Servers[0]), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
