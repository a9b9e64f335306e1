package providers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers/sim"
)

// Kinds of provider.
const (
	KindOpenAI = "openai"
	KindSim    = "sim"
)

// Clients of kind openai (and sim), for Config.Client.
const (
	// ClientLean is the project's own client on net/http: the request
	// encoded from a small struct, the answer decoded into a minimal one.
	ClientLean = "lean"
	// ClientOpenAIGo is the official openai-go SDK, its retries off.
	ClientOpenAIGo = "openai-go"
)

// Config is one entry of the configuration's providers list, in chain order.
type Config struct {
	// Name identifies the provider in replies, events, metrics and logs.
	// Required; 1-64 characters of [A-Za-z0-9_-], unique in the chain.
	Name string `yaml:"name"`
	// Kind is "openai" or "sim". Required.
	Kind string `yaml:"kind"`
	// BaseURL of the OpenAI-compatible API, up to /v1. Required for openai.
	BaseURL string `yaml:"base_url"`
	// Client makes the non-streaming calls: "lean" (ClientLean) or
	// "openai-go" (ClientOpenAIGo). Optional; default lean. Streamed calls
	// always use the lean reader (stream.go).
	Client string `yaml:"client"`
	// Model asked for. Required for openai; for sim default "sim-<name>".
	Model string `yaml:"model"`
	// APIKeyEnv names the environment variable holding the API key.
	// Optional (local vLLM or Ollama need none); when set, the variable must
	// be set and non-empty when the provider is built (serve, demo), not
	// when the file is merely read (send and replay need no keys).
	APIKeyEnv string `yaml:"api_key_env"`
	// Timeout bounds one attempt (connect, headers and body); a streamed
	// attempt's wait for its first chunk. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// StreamIdleTimeout bounds the gap between two chunks of a streamed
	// answer: a stall that long cuts the attempt. Default 10s (0 is the
	// default).
	StreamIdleTimeout time.Duration `yaml:"stream_idle_timeout"`
	// Sim shapes a provider of kind sim. Optional.
	Sim sim.Config `yaml:"sim"`
	// Price is what the provider charges, for replay's cost report.
	// Optional: without it tokens are counted and no spend.
	Price *Price `yaml:"price"`
	// MaxTokens replaces the request's max_tokens in this provider's calls.
	// Optional; 0, the default, sends the request's own.
	MaxTokens int `yaml:"max_tokens"`
	// Temperature replaces the request's temperature in this provider's
	// calls, 0 to 2. Optional; absent, the default, sends the request's own.
	Temperature *float64 `yaml:"temperature"`
	// SystemSuffix is an instruction for this provider only: appended to
	// the request's last system message after a blank line, or sent as a
	// first system message when the request has none. Optional.
	SystemSuffix string `yaml:"system_suffix"`
}

// Settings are a provider's own request settings, applied to every call
// it makes (Config.MaxTokens, Temperature and SystemSuffix).
type Settings struct {
	MaxTokens    int
	Temperature  *float64
	SystemSuffix string
	// StreamIdle bounds the gap between two chunks of a streamed answer
	// (0: DefaultStreamIdleTimeout).
	StreamIdle time.Duration
}

// Apply returns req as this provider sends it. req itself is left as it
// is: the chain's other providers get it unchanged.
func (s Settings) Apply(req *Request) *Request {
	if s.MaxTokens == 0 && s.Temperature == nil && s.SystemSuffix == "" { // StreamIdle is not in the request
		return req
	}
	out := *req
	if s.MaxTokens > 0 {
		out.MaxTokens = s.MaxTokens
	}
	if s.Temperature != nil {
		t := *s.Temperature
		out.Temperature = &t
	}
	if s.SystemSuffix != "" {
		last := -1
		for i, m := range req.Messages {
			if m.Role == chat.RoleSystem {
				last = i
			}
		}
		if last < 0 {
			out.Messages = append([]chat.Message{{Role: chat.RoleSystem, Content: s.SystemSuffix}}, req.Messages...)
		} else {
			out.Messages = append([]chat.Message(nil), req.Messages...)
			out.Messages[last].Content += "\n\n" + s.SystemSuffix
		}
	}
	return &out
}

func (c Config) settings() Settings {
	return Settings{MaxTokens: c.MaxTokens, Temperature: c.Temperature, SystemSuffix: c.SystemSuffix, StreamIdle: c.StreamIdleTimeout}
}

// DefaultStreamIdleTimeout is a provider's stream_idle_timeout when the
// configuration names none.
const DefaultStreamIdleTimeout = 10 * time.Second

// Price is a provider's price per million tokens, in any one currency
// (replay adds the spends of every provider up: use the same for all).
type Price struct {
	PromptPerMTok     float64 `yaml:"prompt_per_mtok" json:"prompt_per_mtok"`
	CompletionPerMTok float64 `yaml:"completion_per_mtok" json:"completion_per_mtok"`
}

// Spend is the price of the given tokens.
func (p Price) Spend(prompt, completion int64) float64 {
	return (float64(prompt)*p.PromptPerMTok + float64(completion)*p.CompletionPerMTok) / 1e6
}

// SetDefaults fills the zero fields with their defaults.
func (c *Config) SetDefaults() {
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.Kind == KindSim && c.Model == "" {
		c.Model = "sim-" + c.Name
	}
}

// Validate checks one entry; key is its YAML path (providers[1]) for messages.
func (c Config) Validate(key string) error {
	if c.Name == "" || len(c.Name) > 64 || !chat.ValidConversationID(c.Name) {
		return fmt.Errorf("%s.name: %q must be 1-64 characters of [A-Za-z0-9_-]", key, c.Name)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("%s.timeout: must be positive, got %s", key, c.Timeout)
	}
	if c.StreamIdleTimeout < 0 {
		return fmt.Errorf("%s.stream_idle_timeout: must be positive, got %s", key, c.StreamIdleTimeout)
	}
	if p := c.Price; p != nil && (p.PromptPerMTok < 0 || p.CompletionPerMTok < 0 || p.PromptPerMTok != p.PromptPerMTok || p.CompletionPerMTok != p.CompletionPerMTok) {
		return fmt.Errorf("%s.price: prompt_per_mtok and completion_per_mtok must be non-negative numbers", key)
	}
	if c.MaxTokens < 0 {
		return fmt.Errorf("%s.max_tokens: must be positive (or 0: the request's own), got %d", key, c.MaxTokens)
	}
	if t := c.Temperature; t != nil && !(*t >= 0 && *t <= 2) {
		return fmt.Errorf("%s.temperature: must be 0 to 2, got %v", key, *t)
	}
	if c.Client != "" && c.Client != ClientLean && c.Client != ClientOpenAIGo {
		return fmt.Errorf("%s.client: %q is not lean or openai-go", key, c.Client)
	}
	switch c.Kind {
	case KindOpenAI:
		u, err := url.Parse(c.BaseURL)
		if c.BaseURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s.base_url: %q is not an http(s) URL", key, c.BaseURL)
		}
		if c.Model == "" {
			return fmt.Errorf("%s.model: required for kind openai", key)
		}
	case KindSim:
		if err := c.Sim.Validate(); err != nil {
			return fmt.Errorf("%s.%w", key, err)
		}
	default:
		return fmt.Errorf("%s.kind: %q is not openai or sim", key, c.Kind)
	}
	return nil
}

// ErrMissingKey is returned by Build when a provider's api_key_env names an
// unset variable.
var ErrMissingKey = errors.New("missing API key")

// Built is a provider ready for the chain, with its per-attempt timeout and
// whatever must be closed when the process stops.
type Built struct {
	Provider
	Timeout time.Duration
	// Sim is the in-process server behind a sim provider; nil otherwise.
	Sim *sim.Server
}

// Stream streams the answer when the provider can (see Streamer);
// otherwise it answers whole, in one chunk, its first chunk bounded like
// a call.
func (b *Built) Stream(ctx context.Context, req *Request, firstChunk time.Duration, onChunk func(string)) (*Response, error) {
	if s, ok := b.Provider.(Streamer); ok {
		return s.Stream(ctx, req, firstChunk, onChunk)
	}
	actx, cancel := context.WithTimeout(ctx, firstChunk)
	defer cancel()
	resp, err := b.Complete(actx, req)
	if err == nil && resp.Content != "" {
		onChunk(resp.Content)
	}
	return resp, err
}

var _ Streamer = (*Built)(nil)

// Close drops the provider's idle connections and stops what it started (a
// sim server).
func (b *Built) Close() error {
	var errs []error
	if c, ok := b.Provider.(io.Closer); ok {
		errs = append(errs, c.Close())
	}
	if b.Sim != nil {
		errs = append(errs, b.Sim.Close())
	}
	return errors.Join(errs...)
}

// Build creates the provider c describes. maxConns sizes its HTTP
// connection pool (the worker's concurrency). A sim provider starts its
// simulated server on a free loopback port.
func Build(c Config, maxConns int) (*Built, error) {
	c.SetDefaults()
	switch c.Kind {
	case KindOpenAI:
		key := ""
		if c.APIKeyEnv != "" {
			if key = os.Getenv(c.APIKeyEnv); key == "" {
				return nil, fmt.Errorf("%w: environment variable %s (api_key_env of provider %s) is not set", ErrMissingKey, c.APIKeyEnv, c.Name)
			}
		}
		return &Built{Provider: newOpenAI(c.Name, c.BaseURL, c.Model, key, c.Client, maxConns, c.settings()), Timeout: c.Timeout}, nil
	case KindSim:
		cfg := c.Sim
		if cfg.Model == "" {
			cfg.Model = c.Model
		}
		srv := sim.New(cfg)
		u, err := srv.Start("127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("provider %s: %w", c.Name, err)
		}
		return &Built{Provider: newOpenAI(c.Name, u, c.Model, "", c.Client, maxConns, c.settings()), Timeout: c.Timeout, Sim: srv}, nil
	}
	return nil, errors.New("provider " + c.Name + ": unknown kind " + c.Kind)
}
