package broker_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
)

// startServer runs an external JetStream server on a random port.
func startServer(t *testing.T, configure func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{JetStream: true, StoreDir: t.TempDir(), Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true}
	if configure != nil {
		configure(opts)
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	return srv
}

// roundTrip sets the topology up and passes one request through it.
func roundTrip(t *testing.T, b *broker.Broker) {
	t.Helper()
	if err := b.Setup(testCtx(t), broker.Topology{Subjects: subj, AckWait: 5 * time.Second}); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if !b.Ready() {
		t.Errorf("Ready() after Setup = false")
	}
	publish(t, b, subj.Request("c1"), []byte("hi"), nil)
	d := fetchOne(t, b, 2*time.Second)
	if string(d.Data) != "hi" {
		t.Errorf("delivered %q", d.Data)
	}
	_ = d.Ack()
}

// checkNoConnection asserts that cfg does not get a working connection:
// Connect fails, or WaitConnected gives up. Neither message may carry
// secret. It returns WaitConnected's error (nil when Connect failed).
func checkNoConnection(t *testing.T, cfg broker.Config, secret string) error {
	t.Helper()
	b, err := broker.Connect(testCtx(t), cfg, "test", zerolog.Nop())
	if err != nil {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("Connect error reveals the secret: %v", err)
		}
		return nil
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(testCtx(t), 500*time.Millisecond)
	defer cancel()
	err = b.WaitConnected(ctx)
	if err == nil {
		t.Fatalf("WaitConnected succeeded with bad credentials")
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("WaitConnected error reveals the secret: %v", err)
	}
	if b.Connected() || b.Ready() {
		t.Errorf("Connected() = %v, Ready() = %v without a connection", b.Connected(), b.Ready())
	}
	return err
}

func TestConnectExternalURL(t *testing.T) {
	t.Parallel()
	srv := startServer(t, nil)
	b := connected(t, broker.Config{URL: srv.ClientURL()}, "test")
	if !b.Connected() || b.Ready() {
		t.Errorf("before Setup: Connected() = %v, Ready() = %v; want true, false", b.Connected(), b.Ready())
	}
	if got := b.ClientURL(); got != srv.ClientURL() {
		t.Errorf("ClientURL() = %q, want %q", got, srv.ClientURL())
	}
	roundTrip(t, b)
	// The server holds the streams: another client sees them.
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Stream(testCtx(t), chat.StreamRequests); err != nil {
		t.Errorf("stream on the external server: %v", err)
	}
}

func TestConnectUserPassword(t *testing.T) {
	t.Parallel()
	srv := startServer(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "alice", Password: "s3cret-pw"}}
	})
	url := srv.ClientURL()
	t.Run("config", func(t *testing.T) {
		b := connected(t, broker.Config{URL: url, User: "alice", Password: "s3cret-pw"}, "test")
		roundTrip(t, b)
	})
	t.Run("in the URL", func(t *testing.T) {
		withCreds := strings.Replace(url, "nats://", "nats://alice:s3cret-pw@", 1)
		b := connected(t, broker.Config{URL: withCreds}, "test")
		if strings.Contains(b.ClientURL(), "s3cret-pw") {
			t.Errorf("ClientURL() reveals the password: %q", b.ClientURL())
		}
		roundTrip(t, b)
	})
	t.Run("wrong password", func(t *testing.T) {
		checkNoConnection(t, broker.Config{URL: url, User: "alice", Password: "wr0ng-pw"}, "wr0ng-pw")
	})
	t.Run("wrong password in the URL", func(t *testing.T) {
		checkNoConnection(t, broker.Config{URL: strings.Replace(url, "nats://", "nats://alice:wr0ng-pw@", 1)}, "wr0ng-pw")
	})
	t.Run("no credentials", func(t *testing.T) {
		checkNoConnection(t, broker.Config{URL: url}, "s3cret-pw")
	})
}

func TestConnectToken(t *testing.T) {
	t.Parallel()
	srv := startServer(t, func(o *server.Options) { o.Authorization = "t0ken-value" })
	url := srv.ClientURL()
	t.Run("right token", func(t *testing.T) {
		b := connected(t, broker.Config{URL: url, Token: "t0ken-value"}, "test")
		roundTrip(t, b)
	})
	t.Run("wrong token", func(t *testing.T) {
		checkNoConnection(t, broker.Config{URL: url, Token: "bad-t0ken"}, "bad-t0ken")
	})
}

// closedPort is a local address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// A server that is down is waited for; WaitConnected's message names it
// without its credentials, whichever form the URL takes (nats.go accepts
// URLs without a scheme).
func TestWaitConnectedUnreachableHidesCredentials(t *testing.T) {
	t.Parallel()
	addr := closedPort(t)
	for _, c := range []struct{ name, url, secret string }{
		{"user and password", "nats://alice:pw-in-url-1@" + addr, "pw-in-url-1"},
		{"token", "nats://tok-in-url-2@" + addr, "tok-in-url-2"},
		{"user and password without scheme", "alice:pw-in-url-3@" + addr, "pw-in-url-3"},
		{"second of two servers", "nats://" + addr + ",nats://bob:pw-in-url-4@" + addr, "pw-in-url-4"},
	} {
		url, secret := c.url, c.secret
		t.Run(c.name, func(t *testing.T) {
			err := checkNoConnection(t, broker.Config{URL: url}, secret)
			if err == nil {
				return // Connect itself refused, without the secret
			}
			if !strings.Contains(err.Error(), addr) {
				t.Errorf("WaitConnected error does not name the server %s: %v", addr, err)
			}
		})
	}
}

func TestConnectEmbeddedListening(t *testing.T) {
	t.Parallel()
	b, err := broker.Connect(testCtx(t), broker.Config{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"}, "test", zerolog.Nop())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(b.Close)
	url := b.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") || strings.HasSuffix(url, ":0") {
		t.Fatalf("ClientURL() = %q, want nats://127.0.0.1:<port>", url)
	}
	if b.Ready() {
		t.Errorf("Ready() before Setup = true")
	}
	if err := b.Setup(testCtx(t), broker.Topology{Subjects: subj, AckWait: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if !b.Ready() {
		t.Errorf("Ready() after Setup = false")
	}
	// Another process's client (a chat API) publishes a request.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(testCtx(t), subj.Request("c1"), []byte("from outside")); err != nil {
		t.Fatalf("publish from another client: %v", err)
	}
	if d := fetchOne(t, b, 2*time.Second); string(d.Data) != "from outside" {
		t.Errorf("delivered %q", d.Data)
	} else {
		_ = d.Ack()
	}
	// And a second broker connects by that URL.
	b2 := connected(t, broker.Config{URL: url}, "second")
	if err := b2.Setup(testCtx(t), broker.Topology{Subjects: subj, AckWait: 5 * time.Second}); err != nil {
		t.Fatalf("Setup from a second broker: %v", err)
	}
}

func TestConnectEmbeddedInProcess(t *testing.T) {
	t.Parallel()
	b, err := broker.Connect(testCtx(t), broker.Config{StoreDir: t.TempDir(), Listen: "-"}, "test", zerolog.Nop())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	if got := b.ClientURL(); got != "" {
		t.Errorf("ClientURL() of an in-process server = %q, want \"\"", got)
	}
	if !b.Connected() {
		t.Errorf("Connected() = false")
	}
	if b.Ready() {
		t.Errorf("Ready() before Setup = true")
	}
	if err := b.Setup(testCtx(t), broker.Topology{Subjects: subj}); err != nil {
		t.Fatal(err)
	}
	if !b.Ready() {
		t.Errorf("Ready() after Setup = false")
	}
	b.Close()
	if b.Ready() || b.Connected() {
		t.Errorf("after Close: Connected() = %v, Ready() = %v", b.Connected(), b.Ready())
	}
}

func TestConnectEmbeddedBadListen(t *testing.T) {
	t.Parallel()
	for _, listen := range []string{"nonsense", "127.0.0.1:http-ish"} {
		t.Run(listen, func(t *testing.T) {
			b, err := broker.Connect(testCtx(t), broker.Config{StoreDir: t.TempDir(), Listen: listen}, "test", zerolog.Nop())
			if err == nil {
				b.Close()
				t.Fatalf("Connect with listen %q: no error", listen)
			}
			if !strings.Contains(err.Error(), "nats.listen") {
				t.Errorf("error does not name nats.listen: %v", err)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	creds, ca, cert, key := file("user.creds"), file("ca.pem"), file("cert.pem"), file("key.pem")
	missing := filepath.Join(dir, "missing.pem")
	cases := []struct {
		name    string
		cfg     broker.Config
		wantKey string // "" when valid
	}{
		{"empty", broker.Config{}, ""},
		{"url only", broker.Config{URL: "nats://127.0.0.1:4222"}, ""},
		{"all files present", broker.Config{Creds: creds, TLS: broker.TLSConfig{CA: ca, Cert: cert, Key: key}}, ""},
		{"user and password", broker.Config{User: "u", Password: "p"}, ""},
		{"user alone", broker.Config{User: "u"}, ""},
		{"token", broker.Config{Token: "t"}, ""},
		{"ca alone", broker.Config{TLS: broker.TLSConfig{CA: ca}}, ""},
		{"missing creds file", broker.Config{Creds: missing}, "nats.creds"},
		{"missing ca file", broker.Config{TLS: broker.TLSConfig{CA: missing}}, "nats.tls.ca"},
		{"missing cert file", broker.Config{TLS: broker.TLSConfig{Cert: missing, Key: key}}, "nats.tls.cert"},
		{"missing key file", broker.Config{TLS: broker.TLSConfig{Cert: cert, Key: missing}}, "nats.tls.key"},
		{"cert without key", broker.Config{TLS: broker.TLSConfig{Cert: cert}}, "nats.tls.key"},
		{"key without cert", broker.Config{TLS: broker.TLSConfig{Key: key}}, "nats.tls.cert"},
		{"password without user", broker.Config{Password: "p"}, "nats.user"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.cfg.Validate()
			switch {
			case c.wantKey == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case c.wantKey != "" && err == nil:
				t.Errorf("Validate() = nil, want an error naming %s", c.wantKey)
			case c.wantKey != "" && !strings.Contains(err.Error(), c.wantKey):
				t.Errorf("Validate() = %v, want it to name %s", err, c.wantKey)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	var c broker.Config
	c.SetDefaults()
	if c.StoreDir != "./data/nats" || c.Listen != "127.0.0.1:4222" {
		t.Errorf("defaults = %+v", c)
	}
	c = broker.Config{StoreDir: "/x", Listen: "-"}
	c.SetDefaults()
	if c.StoreDir != "/x" || c.Listen != "-" {
		t.Errorf("SetDefaults overwrote set fields: %+v", c)
	}

	var s broker.StreamsConfig
	s.SetDefaults()
	if s.Replicas != 1 || s.RequestsMaxAge != 168*time.Hour || s.RepliesDedupWindow != time.Hour || s.ClaimsTTL != 24*time.Hour {
		t.Errorf("streams defaults = %+v", s)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
	for _, c := range []struct {
		cfg broker.StreamsConfig
		key string
	}{
		{broker.StreamsConfig{Replicas: 0, RequestsMaxAge: time.Hour}, "streams.replicas"},
		{broker.StreamsConfig{Replicas: 6, RequestsMaxAge: time.Hour}, "streams.replicas"},
		{broker.StreamsConfig{Replicas: 3, RequestsMaxAge: time.Minute}, "streams.requests_max_age"},
		{broker.StreamsConfig{Replicas: 3, RequestsMaxAge: 2 * time.Minute}, ""},
		{broker.StreamsConfig{Replicas: 1, RequestsMaxAge: time.Hour, RepliesDedupWindow: 59 * time.Second}, "streams.replies_dedup_window"},
		{broker.StreamsConfig{Replicas: 1, RequestsMaxAge: time.Hour, RepliesDedupWindow: 25 * time.Hour}, "streams.replies_dedup_window"},
		{broker.StreamsConfig{Replicas: 1, RequestsMaxAge: time.Hour, ClaimsTTL: 59 * time.Second}, "streams.claims_ttl"},
		{broker.StreamsConfig{Replicas: 1, RequestsMaxAge: time.Hour, RepliesDedupWindow: time.Minute, ClaimsTTL: time.Minute}, ""},
	} {
		if c.cfg.RepliesDedupWindow == 0 && c.key != "streams.replies_dedup_window" {
			c.cfg.RepliesDedupWindow = time.Hour
		}
		if c.cfg.ClaimsTTL == 0 && c.key != "streams.claims_ttl" {
			c.cfg.ClaimsTTL = time.Hour
		}
		err := c.cfg.Validate()
		if (c.key == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.key)) {
			t.Errorf("Validate(%+v) = %v, want %q", c.cfg, err, c.key)
		}
	}
}

// connected connects with cfg and waits for the connection; the broker is
// closed when the test ends.
func connected(t *testing.T, cfg broker.Config, name string) *broker.Broker {
	t.Helper()
	b, err := broker.Connect(testCtx(t), cfg, name, zerolog.Nop())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(b.Close)
	if err := b.WaitConnected(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	return b
}
