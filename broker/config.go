package broker

import (
	"fmt"
	"os"
	"time"

	"github.com/understudy-ai/understudy/chat"
)

// Config says how to reach NATS.
type Config struct {
	// URL of the NATS server(s), comma separated. Empty (the default): start
	// an embedded JetStream server storing under StoreDir and listening on
	// Listen.
	URL string `yaml:"url"`
	// StoreDir is the embedded server's JetStream store. Default ./data/nats.
	StoreDir string `yaml:"store_dir"`
	// Listen is the embedded server's client address, so that `understudy
	// send` and chat APIs on this host can reach it. Default 127.0.0.1:4222;
	// "-" serves this process only (no port).
	Listen string `yaml:"listen"`
	// Creds is a credentials file (JWT + nkey). Optional.
	Creds string `yaml:"creds"`
	// User and Password authenticate with user/password. Optional.
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	// Token authenticates with a token. Optional.
	Token string `yaml:"token"`
	// TLS files. Optional; CA alone verifies the server, Cert+Key present a
	// client certificate.
	TLS TLSConfig `yaml:"tls"`
}

// TLSConfig names PEM files.
type TLSConfig struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// SetDefaults fills the zero fields with their defaults.
func (c *Config) SetDefaults() {
	if c.StoreDir == "" {
		c.StoreDir = "./data/nats"
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:4222"
	}
}

// Validate reports the first invalid field by its YAML key.
func (c Config) Validate() error {
	for key, path := range map[string]string{"nats.creds": c.Creds, "nats.tls.ca": c.TLS.CA, "nats.tls.cert": c.TLS.Cert, "nats.tls.key": c.TLS.Key} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		return fmt.Errorf("nats.tls.cert and nats.tls.key: give both or neither")
	}
	if c.Password != "" && c.User == "" {
		return fmt.Errorf("nats.user: required with nats.password")
	}
	return nil
}

// Topology is what Setup creates.
type Topology struct {
	// Subjects carries the subject prefix.
	Subjects chat.Subjects
	// Replicas of every stream: 1 on one server, 3 on a cluster. Default 1.
	Replicas int `yaml:"replicas"`
	// RequestsMaxAge is how long requests are kept for replay. Default 168h.
	RequestsMaxAge time.Duration `yaml:"requests_max_age"`
	// RepliesDedupWindow is how long CHAT_REPLIES remembers a reply's id to
	// drop a second publish of it. Default 1h.
	RepliesDedupWindow time.Duration
	// ClaimsTTL is how long a request id's claim is kept after its last
	// write. Default 24h.
	ClaimsTTL time.Duration
	// AckWait of the workers consumer. Default 30s.
	AckWait time.Duration
	// MaxDeliveries of the workers consumer; 0 means unlimited.
	MaxDeliveries int
	// ChunksMaxAge is how long streamed chunks are kept. Default 10m.
	ChunksMaxAge time.Duration
	// ChunksStorage of the chunks' stream: "memory" (the default) or "file".
	ChunksStorage string
}

// StreamsConfig is the "streams" section of the configuration file.
type StreamsConfig struct {
	// Replicas of every stream. Default 1.
	Replicas int `yaml:"replicas"`
	// RequestsMaxAge bounds how long requests are kept. Default 168h.
	RequestsMaxAge time.Duration `yaml:"requests_max_age"`
	// RepliesDedupWindow is how long CHAT_REPLIES remembers each reply's id
	// (in memory, on every replica) to drop a second publish of it: the
	// races the claims cannot settle, a publish retried after a lost ack and
	// a stalled holder publishing after a takeover, all end with the
	// request's deadline. Beyond it the claims hold exactly-once: an
	// answered id's claim says "done". At least worker.request_ttl, at most
	// 24h (the replies' life). Default 1h.
	RepliesDedupWindow time.Duration `yaml:"replies_dedup_window"`
	// ClaimsTTL is how long a request id's claim lives after its last write
	// (one subject per id, in memory, on every replica). A delivery of a
	// message carrying an answered id finds "done" and is acked without a
	// provider call or a reply as long as the claim lives. At least
	// worker.request_ttl (a resend before the deadline never calls a
	// provider twice); longer covers resends delivered late (a backlog, a
	// pool down). Past requests_max_age plus the longest deadline it
	// protects nothing: every message that can carry the id is gone.
	// Default 24h.
	ClaimsTTL time.Duration `yaml:"claims_ttl"`
	// ChunksMaxAge is how long CHAT_STREAM keeps a streamed answer's
	// chunks for clients that resume or come late. Default 10m.
	ChunksMaxAge time.Duration `yaml:"stream_max_age"`
	// ChunksStorage of CHAT_STREAM: "memory" (the default) or "file".
	ChunksStorage string `yaml:"stream_storage"`
}

// SetDefaults fills the zero fields with their defaults.
func (c *StreamsConfig) SetDefaults() {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.RequestsMaxAge == 0 {
		c.RequestsMaxAge = 7 * 24 * time.Hour
	}
	if c.RepliesDedupWindow == 0 {
		c.RepliesDedupWindow = DefaultRepliesDedupWindow
	}
	if c.ClaimsTTL == 0 {
		c.ClaimsTTL = DefaultClaimsTTL
	}
	if c.ChunksMaxAge == 0 {
		c.ChunksMaxAge = DefaultChunksMaxAge
	}
	if c.ChunksStorage == "" {
		c.ChunksStorage = StorageMemory
	}
}

// Validate reports the first invalid field by its YAML key.
func (c StreamsConfig) Validate() error {
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("streams.replicas: must be 1 to 5, got %d", c.Replicas)
	}
	if c.RequestsMaxAge < 2*time.Minute {
		return fmt.Errorf("streams.requests_max_age: must be at least 2m (the duplicate window), got %s", c.RequestsMaxAge)
	}
	if c.RepliesDedupWindow < time.Minute || c.RepliesDedupWindow > repliesMaxAge {
		return fmt.Errorf("streams.replies_dedup_window: must be 1m to %s (the replies' life), got %s", repliesMaxAge, c.RepliesDedupWindow)
	}
	if c.ClaimsTTL < time.Minute {
		return fmt.Errorf("streams.claims_ttl: must be at least 1m, got %s", c.ClaimsTTL)
	}
	if c.ChunksMaxAge < time.Second && c.ChunksMaxAge != 0 {
		return fmt.Errorf("streams.stream_max_age: must be at least 1s, got %s", c.ChunksMaxAge)
	}
	if c.ChunksStorage != "" && c.ChunksStorage != StorageMemory && c.ChunksStorage != StorageFile {
		return fmt.Errorf("streams.stream_storage: %q is not memory or file", c.ChunksStorage)
	}
	return nil
}
