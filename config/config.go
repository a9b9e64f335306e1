// Package config reads and validates Understudy's YAML configuration
// (SPEC §6): defaults first, the file over them, unknown keys refused, and
// one clear message naming the first bad key.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/worker"
)

// EnvVar names the environment variable read when no --config is given.
const EnvVar = "UNDERSTUDY_CONFIG"

// Config is the whole configuration file.
type Config struct {
	NATS      broker.Config        `yaml:"nats"`
	Subjects  SubjectsConfig       `yaml:"subjects"`
	Streams   broker.StreamsConfig `yaml:"streams"`
	Worker    worker.Config        `yaml:"worker"`
	Retry     worker.RetryConfig   `yaml:"retry"`
	Breaker   breaker.Config       `yaml:"breaker"`
	Metrics   MetricsConfig        `yaml:"metrics"`
	Log       LogConfig            `yaml:"log"`
	Providers []providers.Config   `yaml:"providers"`
}

// SubjectsConfig is the "subjects" section.
type SubjectsConfig struct {
	// Prefix of every subject. Default "chat".
	Prefix string `yaml:"prefix"`
}

// MetricsConfig is the "metrics" section.
type MetricsConfig struct {
	// Listen is the address of /metrics, /healthz and /readyz. Default
	// 127.0.0.1:9090; empty serves nothing.
	Listen string `yaml:"listen"`
}

// LogConfig is the "log" section.
type LogConfig struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
}

// Default returns the configuration used when a file says nothing: an
// embedded NATS server and the three providers of SPEC §6.
func Default() Config {
	c := Config{
		Subjects: SubjectsConfig{Prefix: "chat"},
		Streams: broker.StreamsConfig{Replicas: 1, RequestsMaxAge: 7 * 24 * time.Hour,
			RepliesDedupWindow: broker.DefaultRepliesDedupWindow, ClaimsTTL: broker.DefaultClaimsTTL},
		Worker:  worker.DefaultConfig(),
		Retry:   worker.DefaultRetryConfig(),
		Breaker: breaker.Config{ConsecutiveFailures: 5, OpenFor: 5 * time.Minute},
		Metrics: MetricsConfig{Listen: "127.0.0.1:9090"},
		Log:     LogConfig{Level: "info"},
		Providers: []providers.Config{
			{Name: "deepseek", Kind: providers.KindOpenAI, BaseURL: "https://api.deepseek.com/v1", Model: "deepseek-chat",
				APIKeyEnv: "DEEPSEEK_API_KEY", Timeout: 30 * time.Second},
			{Name: "llama", Kind: providers.KindOpenAI, BaseURL: "https://api.together.xyz/v1",
				Model: "meta-llama/Llama-3.3-70B-Instruct-Turbo", APIKeyEnv: "TOGETHER_API_KEY", Timeout: 30 * time.Second},
			{Name: "qwen", Kind: providers.KindOpenAI, BaseURL: "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
				Model: "qwen2.5-72b-instruct", APIKeyEnv: "DASHSCOPE_API_KEY", Timeout: 30 * time.Second},
		},
	}
	c.NATS.SetDefaults()
	return c
}

// Load reads path (or, when path is empty, the file named by
// UNDERSTUDY_CONFIG; with neither, the defaults) and validates it.
func Load(path string) (Config, error) {
	if path == "" {
		path = os.Getenv(EnvVar)
	}
	if path == "" {
		c := Default()
		return c, c.Validate()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse reads a configuration document over the defaults and validates it.
func Parse(data []byte) (Config, error) {
	c := Default()
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, err
	}
	if err := decode(&doc, reflect.ValueOf(&c).Elem(), ""); err != nil {
		return Config{}, err
	}
	for i := range c.Providers {
		c.Providers[i].SetDefaults()
	}
	return c, c.Validate()
}

// Validate reports the first invalid key.
func (c Config) Validate() error {
	if c.NATS.URL == "" && c.NATS.StoreDir == "" {
		return errors.New("nats.store_dir: required when nats.url is empty (embedded server)")
	}
	if err := c.NATS.Validate(); err != nil {
		return err
	}
	if err := chat.ValidatePrefix(c.Subjects.Prefix); err != nil {
		return fmt.Errorf("subjects.prefix: %w", err)
	}
	if err := c.Streams.Validate(); err != nil {
		return err
	}
	if err := c.Worker.Validate(); err != nil {
		return err
	}
	if c.Worker.RequestTTL > c.Streams.RequestsMaxAge {
		return fmt.Errorf("worker.request_ttl: %s outlives streams.requests_max_age %s", c.Worker.RequestTTL, c.Streams.RequestsMaxAge)
	}
	// A request is in flight until its deadline: both retentions must
	// outlive the default one (README, "Sizing the server").
	if c.Streams.RepliesDedupWindow < c.Worker.RequestTTL {
		return fmt.Errorf("streams.replies_dedup_window: %s is shorter than worker.request_ttl %s: a reply published twice within a request's deadline could be stored twice",
			c.Streams.RepliesDedupWindow, c.Worker.RequestTTL)
	}
	if c.Streams.ClaimsTTL < c.Worker.RequestTTL {
		return fmt.Errorf("streams.claims_ttl: %s is shorter than worker.request_ttl %s: a resend before the deadline could be answered twice",
			c.Streams.ClaimsTTL, c.Worker.RequestTTL)
	}
	if err := c.Retry.Validate(); err != nil {
		return err
	}
	if err := c.Breaker.Validate(); err != nil {
		return err
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			return fmt.Errorf("metrics.listen: %q is not host:port (or \"\" to serve nothing): %w", c.Metrics.Listen, err)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level)
	}
	if len(c.Providers) == 0 {
		return errors.New("providers: at least one provider is required")
	}
	seen := map[string]bool{}
	for i, p := range c.Providers {
		key := fmt.Sprintf("providers[%d]", i)
		if err := p.Validate(key); err != nil {
			return err
		}
		if seen[p.Name] {
			return fmt.Errorf("%s.name: %q appears twice", key, p.Name)
		}
		seen[p.Name] = true
	}
	return nil
}

// SubjectScheme returns the subject scheme of the configured prefix.
func (c Config) SubjectScheme() chat.Subjects {
	s, _ := chat.NewSubjects(c.Subjects.Prefix) // validated
	return s
}
