package worker

import (
	"fmt"
	"time"
)

// Config is the "worker" section of the configuration.
type Config struct {
	// Concurrency is how many requests one process works on at once.
	// Default 64.
	Concurrency int `yaml:"concurrency"`
	// RequestTTL is the deadline of a request that names none, counted from
	// its publication. Default 2m.
	RequestTTL time.Duration `yaml:"request_ttl"`
	// AckWait is how long a delivery may go without an ack or an
	// InProgress before JetStream redelivers it. Default 30s.
	AckWait time.Duration `yaml:"ack_wait"`
	// MaxDeliveries gives up on a request after that many deliveries
	// (providers_exhausted); 0, the default, bounds it by its deadline only.
	MaxDeliveries int `yaml:"max_deliveries"`
	// RequeueMin is the delay before a request whose whole chain failed is
	// delivered again; it doubles with each delivery up to RequeueMax.
	// Defaults 1s and 1m.
	RequeueMin time.Duration `yaml:"requeue_min"`
	RequeueMax time.Duration `yaml:"requeue_max"`
	// MaxRequestBytes rejects larger requests as invalid. Default 262144.
	MaxRequestBytes int `yaml:"max_request_bytes"`
	// MaxMetadataBytes rejects requests whose metadata (echoed in the
	// reply) is larger, as invalid. Default 16384.
	MaxMetadataBytes int `yaml:"max_metadata_bytes"`
	// ShutdownGrace bounds how long SIGTERM waits for in-flight requests
	// before putting them back. Default 30s.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	// Ordering "conversation" works on the requests of each conversation
	// one at a time, in the order they were stored, across every replica;
	// "none" or "", the default, on every request as it comes. Conversation
	// order needs MaxDeliveries 0: a request waiting for its turn is put
	// back, and those deliveries must not run out.
	Ordering string `yaml:"ordering"`
	// OrderWaiting is how many deliveries, with ordering conversation,
	// may wait for their conversation's turn in this process without a
	// work slot, on top of Concurrency; 0, the default, is
	// max(Concurrency, 1024). Ignored without ordering.
	OrderWaiting int `yaml:"order_waiting"`
	// StreamDefault streams the answer of a request that does not say
	// ("stream" absent) on <prefix>.stream.<conv>. Default false.
	StreamDefault bool `yaml:"stream_default"`
}

// Orderings.
const (
	OrderingNone         = "none"
	OrderingConversation = "conversation"
)

// DefaultConfig returns the defaults of every field.
func DefaultConfig() Config {
	return Config{
		Concurrency:      64,
		RequestTTL:       2 * time.Minute,
		AckWait:          30 * time.Second,
		RequeueMin:       time.Second,
		RequeueMax:       time.Minute,
		MaxRequestBytes:  262144,
		MaxMetadataBytes: 16384,
		ShutdownGrace:    30 * time.Second,
	}
}

// Validate reports the first invalid field by its YAML key.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1 || c.Concurrency > 10000:
		return fmt.Errorf("worker.concurrency: must be 1 to 10000, got %d", c.Concurrency)
	case c.RequestTTL <= 0:
		return fmt.Errorf("worker.request_ttl: must be positive, got %s", c.RequestTTL)
	case c.AckWait < time.Second:
		return fmt.Errorf("worker.ack_wait: must be at least 1s, got %s", c.AckWait)
	case c.MaxDeliveries < 0:
		return fmt.Errorf("worker.max_deliveries: must be 0 (unlimited) or more, got %d", c.MaxDeliveries)
	case c.RequeueMin <= 0:
		return fmt.Errorf("worker.requeue_min: must be positive, got %s", c.RequeueMin)
	case c.RequeueMax < c.RequeueMin:
		return fmt.Errorf("worker.requeue_max: must be at least requeue_min (%s), got %s", c.RequeueMin, c.RequeueMax)
	case c.MaxRequestBytes < 256:
		return fmt.Errorf("worker.max_request_bytes: must be at least 256, got %d", c.MaxRequestBytes)
	case c.MaxMetadataBytes < 2 || c.MaxMetadataBytes > 262144:
		return fmt.Errorf("worker.max_metadata_bytes: must be 2 to 262144, got %d", c.MaxMetadataBytes)
	case c.ShutdownGrace < 0:
		return fmt.Errorf("worker.shutdown_grace: must not be negative, got %s", c.ShutdownGrace)
	case c.Ordering != "" && c.Ordering != OrderingNone && c.Ordering != OrderingConversation:
		return fmt.Errorf("worker.ordering: %q is not none or conversation", c.Ordering)
	case c.OrderWaiting < 0 || c.OrderWaiting > 100000:
		return fmt.Errorf("worker.order_waiting: must be 0 (the default) to 100000, got %d", c.OrderWaiting)
	case c.Ordering == OrderingConversation && c.MaxDeliveries != 0:
		return fmt.Errorf("worker.max_deliveries: must be 0 with ordering conversation (a request waiting for its turn is put back, and its deliveries must not run out), got %d", c.MaxDeliveries)
	}
	return nil
}

// RetryConfig is the "retry" section: the backoff between the attempts of
// one ladder.
type RetryConfig struct {
	// Min is the first wait. Default 250ms.
	Min time.Duration `yaml:"min"`
	// Max caps the wait. Default 10s.
	Max time.Duration `yaml:"max"`
	// Factor multiplies the wait after each attempt. Default 2.
	Factor float64 `yaml:"factor"`
	// Jitter randomises each wait. Default true.
	Jitter bool `yaml:"jitter"`
}

// DefaultRetryConfig returns the defaults of every field.
func DefaultRetryConfig() RetryConfig {
	return RetryConfig{Min: 250 * time.Millisecond, Max: 10 * time.Second, Factor: 2, Jitter: true}
}

// Validate reports the first invalid field by its YAML key.
func (c RetryConfig) Validate() error {
	switch {
	case c.Min < 0:
		return fmt.Errorf("retry.min: must not be negative, got %s", c.Min)
	case c.Max < c.Min:
		return fmt.Errorf("retry.max: must be at least retry.min (%s), got %s", c.Min, c.Max)
	case c.Factor < 1:
		return fmt.Errorf("retry.factor: must be at least 1, got %v", c.Factor)
	}
	return nil
}
