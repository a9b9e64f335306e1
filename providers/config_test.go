package providers_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

func TestConfigSetDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   providers.Config
		want providers.Config
	}{
		{"openai", providers.Config{Name: "a", Kind: "openai"}, providers.Config{Name: "a", Kind: "openai", Timeout: 30 * time.Second}},
		{"openai keeps values", providers.Config{Name: "a", Kind: "openai", Model: "m", Timeout: time.Second}, providers.Config{Name: "a", Kind: "openai", Model: "m", Timeout: time.Second}},
		{"sim model", providers.Config{Name: "b", Kind: "sim"}, providers.Config{Name: "b", Kind: "sim", Model: "sim-b", Timeout: 30 * time.Second}},
		{"sim keeps model", providers.Config{Name: "b", Kind: "sim", Model: "x"}, providers.Config{Name: "b", Kind: "sim", Model: "x", Timeout: 30 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.in
			c.SetDefaults()
			if c.Name != tt.want.Name || c.Kind != tt.want.Kind || c.Model != tt.want.Model || c.Timeout != tt.want.Timeout {
				t.Errorf("SetDefaults() = %+v, want %+v", c, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	t.Setenv("UNDERSTUDY_TEST_SET_KEY", "sk-1")
	valid := func() providers.Config {
		return providers.Config{Name: "deepseek", Kind: "openai", BaseURL: "https://api.deepseek.com/v1",
			Model: "deepseek-chat", APIKeyEnv: "UNDERSTUDY_TEST_SET_KEY", Timeout: 30 * time.Second}
	}
	validSim := func() providers.Config {
		return providers.Config{Name: "sim_1", Kind: "sim", Timeout: time.Second}
	}
	tests := []struct {
		name    string
		key     string
		c       providers.Config
		wantKey string // "": valid; else the error must start with it
	}{
		{name: "valid openai", c: valid()},
		{name: "valid openai without key", c: func() providers.Config { c := valid(); c.APIKeyEnv = ""; return c }()},
		{name: "valid http base_url", c: func() providers.Config { c := valid(); c.BaseURL = "http://localhost:11434/v1"; return c }()},
		{name: "valid sim", c: validSim()},
		{name: "valid sim with script", c: func() providers.Config {
			c := validSim()
			c.Sim = sim.Config{Latency: time.Millisecond, FailureRate: 0.5, RetryAfter: time.Second,
				Script: []sim.Phase{{After: 0, For: time.Second, Mode: sim.ModeError}}}
			return c
		}()},
		{name: "valid 64-char name", c: func() providers.Config { c := valid(); c.Name = strings.Repeat("n", 64); return c }()},

		{name: "empty name", c: func() providers.Config { c := valid(); c.Name = ""; return c }(), wantKey: "providers[0].name"},
		{name: "name too long", c: func() providers.Config { c := valid(); c.Name = strings.Repeat("n", 65); return c }(), wantKey: "providers[0].name"},
		{name: "name with dot", key: "providers[2]", c: func() providers.Config { c := valid(); c.Name = "deep.seek"; return c }(), wantKey: "providers[2].name"},
		{name: "name with space", c: func() providers.Config { c := valid(); c.Name = "deep seek"; return c }(), wantKey: "providers[0].name"},
		{name: "zero timeout", c: func() providers.Config { c := valid(); c.Timeout = 0; return c }(), wantKey: "providers[0].timeout"},
		{name: "negative timeout", c: func() providers.Config { c := valid(); c.Timeout = -time.Second; return c }(), wantKey: "providers[0].timeout"},
		{name: "empty kind", c: func() providers.Config { c := valid(); c.Kind = ""; return c }(), wantKey: "providers[0].kind"},
		{name: "unknown kind", c: func() providers.Config { c := valid(); c.Kind = "anthropic"; return c }(), wantKey: "providers[0].kind"},
		{name: "missing base_url", c: func() providers.Config { c := valid(); c.BaseURL = ""; return c }(), wantKey: "providers[0].base_url"},
		{name: "base_url without scheme", c: func() providers.Config { c := valid(); c.BaseURL = "api.deepseek.com/v1"; return c }(), wantKey: "providers[0].base_url"},
		{name: "base_url ftp", c: func() providers.Config { c := valid(); c.BaseURL = "ftp://api.deepseek.com/v1"; return c }(), wantKey: "providers[0].base_url"},
		{name: "base_url without host", c: func() providers.Config { c := valid(); c.BaseURL = "https:///v1"; return c }(), wantKey: "providers[0].base_url"},
		{name: "base_url unparsable", c: func() providers.Config { c := valid(); c.BaseURL = "http://[::1"; return c }(), wantKey: "providers[0].base_url"},
		{name: "missing model", c: func() providers.Config { c := valid(); c.Model = ""; return c }(), wantKey: "providers[0].model"},
		{name: "client lean", c: func() providers.Config { c := valid(); c.Client = providers.ClientLean; return c }()},
		{name: "client openai-go", c: func() providers.Config { c := valid(); c.Client = providers.ClientOpenAIGo; return c }()},
		{name: "sim with client openai-go", c: func() providers.Config { c := validSim(); c.Client = providers.ClientOpenAIGo; return c }()},
		{name: "unknown client", c: func() providers.Config { c := valid(); c.Client = "resty"; return c }(), wantKey: "providers[0].client"},
		// The key is checked when the provider is built, not when the file
		// is read (send and replay need no keys): see TestBuildMissingKey.
		{name: "api_key_env unset is checked by Build", c: func() providers.Config { c := valid(); c.APIKeyEnv = "UNDERSTUDY_TEST_NEVER_SET_42"; return c }()},
		{name: "sim latency", c: func() providers.Config { c := validSim(); c.Sim.Latency = -1; return c }(), wantKey: "providers[0].sim.latency"},
		{name: "sim jitter", c: func() providers.Config { c := validSim(); c.Sim.Jitter = -1; return c }(), wantKey: "providers[0].sim.jitter"},
		{name: "sim retry_after", c: func() providers.Config { c := validSim(); c.Sim.RetryAfter = -1; return c }(), wantKey: "providers[0].sim.retry_after"},
		{name: "sim failure_rate", key: "providers[1]", c: func() providers.Config { c := validSim(); c.Sim.FailureRate = 1.5; return c }(), wantKey: "providers[1].sim.failure_rate"},
		{name: "sim script mode", c: func() providers.Config {
			c := validSim()
			c.Sim.Script = []sim.Phase{{For: time.Second, Mode: sim.ModeOK}, {For: time.Second, Mode: "down"}}
			return c
		}(), wantKey: "providers[0].sim.script[1].mode"},
		{name: "sim script for", c: func() providers.Config {
			c := validSim()
			c.Sim.Script = []sim.Phase{{Mode: sim.ModeError}}
			return c
		}(), wantKey: "providers[0].sim.script[0].for"},
		{name: "sim script after", c: func() providers.Config {
			c := validSim()
			c.Sim.Script = []sim.Phase{{After: -time.Second, For: time.Second, Mode: sim.ModeError}}
			return c
		}(), wantKey: "providers[0].sim.script[0].after"},
		{name: "sim name", c: func() providers.Config { c := validSim(); c.Name = "a>b"; return c }(), wantKey: "providers[0].name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key
			if key == "" {
				key = "providers[0]"
			}
			err := tt.c.Validate(key)
			switch {
			case tt.wantKey == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.wantKey != "" && err == nil:
				t.Errorf("Validate accepted %+v, want an error naming %s", tt.c, tt.wantKey)
			case tt.wantKey != "" && !strings.HasPrefix(err.Error(), tt.wantKey+":"):
				t.Errorf("Validate: %q, want it to start with %q", err, tt.wantKey+":")
			}
		})
	}
}

// TestConfigValidateDoesNotLeakKey checks that a validation error names the
// variable, never its value.
func TestConfigValidateDoesNotLeakKey(t *testing.T) {
	t.Setenv("UNDERSTUDY_TEST_SECRET", "sk-secret-value")
	c := providers.Config{Name: "x", Kind: "openai", BaseURL: "not a url", Model: "m", APIKeyEnv: "UNDERSTUDY_TEST_SECRET", Timeout: time.Second}
	err := c.Validate("providers[0]")
	if err == nil {
		t.Fatal("Validate accepted a bad base_url")
	}
	if strings.Contains(err.Error(), "sk-secret-value") {
		t.Errorf("error %q contains the key", err)
	}
}

// TestBuildMissingKey checks that an openai provider whose api_key_env names
// an unset or empty variable is not built, with an error naming the
// variable and the provider but never a key.
func TestBuildMissingKey(t *testing.T) {
	t.Setenv("UNDERSTUDY_TEST_EMPTY_KEY", "")
	t.Setenv("UNDERSTUDY_TEST_GOOD_KEY", "sk-good")
	tests := []struct {
		name, env string
		wantErr   bool
	}{
		{"unset", "UNDERSTUDY_TEST_NEVER_SET_42", true},
		{"empty", "UNDERSTUDY_TEST_EMPTY_KEY", true},
		{"set", "UNDERSTUDY_TEST_GOOD_KEY", false},
		{"none needed", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := providers.Config{Name: "together", Kind: "openai", BaseURL: "http://127.0.0.1:1/v1", Model: "m", APIKeyEnv: tt.env}
			b, err := providers.Build(c, 2)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Build: %v", err)
				}
				if err := b.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
				return
			}
			if err == nil {
				b.Close()
				t.Fatalf("Build accepted api_key_env %s", tt.env)
			}
			if !errors.Is(err, providers.ErrMissingKey) {
				t.Errorf("Build: %v, want ErrMissingKey", err)
			}
			if !strings.Contains(err.Error(), tt.env) || !strings.Contains(err.Error(), "together") {
				t.Errorf("Build: %q, want it to name %s and the provider", err, tt.env)
			}
		})
	}
}
