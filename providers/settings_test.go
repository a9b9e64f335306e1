package providers_test

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/providers/sim"
)

// TestProviderSettings sends one request through a chain's two providers,
// the fallback with settings of its own, and reads what each simulated
// provider received: the primary gets the request as it is, the fallback
// its own max_tokens, temperature and instruction.
func TestProviderSettings(t *testing.T) {
	eachClient(t, func(t *testing.T, client string) {
		f := func(v float64) *float64 { return &v }
		n := func(v int) *int { return &v }
		sys := func(c string) sim.Message { return sim.Message{Role: chat.RoleSystem, Content: c} }
		usr := func(c string) sim.Message { return sim.Message{Role: chat.RoleUser, Content: c} }
		const suffix = "Answer in one short paragraph."
		tests := []struct {
			name     string
			settings providers.Config // MaxTokens, Temperature, SystemSuffix
			req      providers.Request
			want     sim.Received // Model left out
		}{
			{
				name: "none: the request as it is",
				req:  providers.Request{Messages: []chat.Message{{Role: chat.RoleUser, Content: "hi"}}, MaxTokens: 512, Temperature: f(0.7)},
				want: sim.Received{Messages: []sim.Message{usr("hi")}, MaxTokens: n(512), Temperature: f(0.7)},
			},
			{
				name:     "suffix appended to the last system message after a blank line",
				settings: providers.Config{Client: client, SystemSuffix: suffix},
				req: providers.Request{Messages: []chat.Message{{Role: chat.RoleSystem, Content: "You are Lucy."},
					{Role: chat.RoleUser, Content: "hi"}, {Role: chat.RoleSystem, Content: "Be kind."}, {Role: chat.RoleUser, Content: "so?"}}},
				want: sim.Received{Messages: []sim.Message{sys("You are Lucy."), usr("hi"), sys("Be kind.\n\n" + suffix), usr("so?")}},
			},
			{
				name:     "suffix as a first system message when there is none",
				settings: providers.Config{Client: client, SystemSuffix: suffix},
				req:      providers.Request{Messages: []chat.Message{{Role: chat.RoleUser, Content: "hi"}}},
				want:     sim.Received{Messages: []sim.Message{sys(suffix), usr("hi")}},
			},
			{
				name:     "max_tokens and temperature replace the request's",
				settings: providers.Config{Client: client, MaxTokens: 64, Temperature: f(0)},
				req:      providers.Request{Messages: []chat.Message{{Role: chat.RoleUser, Content: "hi"}}, MaxTokens: 512, Temperature: f(0.7)},
				want:     sim.Received{Messages: []sim.Message{usr("hi")}, MaxTokens: n(64), Temperature: f(0)},
			},
			{
				name:     "max_tokens and temperature where the request has none",
				settings: providers.Config{Client: client, MaxTokens: 64, Temperature: f(1.2)},
				req:      providers.Request{Messages: []chat.Message{{Role: chat.RoleUser, Content: "hi"}}},
				want:     sim.Received{Messages: []sim.Message{usr("hi")}, MaxTokens: n(64), Temperature: f(1.2)},
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				primary := buildOpenAI(t, providers.Config{Client: client, Name: "deepseek", Kind: providers.KindSim})
				fallback := tt.settings
				fallback.Name, fallback.Kind = "llama", providers.KindSim
				second := buildOpenAI(t, fallback)
				primary.Sim.Record(4)
				second.Sim.Record(4)

				before := tt.req
				before.Messages = append([]chat.Message(nil), tt.req.Messages...)
				for _, p := range []*providers.Built{primary, second} {
					if r := complete(t, p, 5*time.Second, &tt.req); r.err != nil {
						t.Fatalf("%s: Complete: %v", p.Name(), r.err)
					}
				}
				if !reflect.DeepEqual(tt.req, before) {
					t.Errorf("the request was changed by a provider: %+v, was %+v", tt.req, before)
				}
				asIs := sim.Received{Model: "sim-deepseek", MaxTokens: nonZero(tt.req.MaxTokens), Temperature: tt.req.Temperature}
				for _, m := range tt.req.Messages {
					asIs.Messages = append(asIs.Messages, sim.Message{Role: m.Role, Content: m.Content})
				}
				tt.want.Model = "sim-llama"
				for _, c := range []struct {
					p    *providers.Built
					want sim.Received
				}{{primary, asIs}, {second, tt.want}} {
					got := c.p.Sim.Received()
					if len(got) != 1 || !reflect.DeepEqual(got[0], c.want) {
						t.Errorf("%s received %s, want [%s]", c.p.Name(), show(got...), show(c.want))
					}
				}
			})
		}
	})
}

func nonZero(v int) *int {
	if v == 0 {
		return nil
	}
	return &v
}

func show(rs ...sim.Received) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "{model %s", r.Model)
		if r.MaxTokens != nil {
			fmt.Fprintf(&b, " max_tokens %d", *r.MaxTokens)
		}
		if r.Temperature != nil {
			fmt.Fprintf(&b, " temperature %v", *r.Temperature)
		}
		for _, m := range r.Messages {
			fmt.Fprintf(&b, " %s:%q", m.Role, m.Content)
		}
		b.WriteString("}")
	}
	return b.String()
}

func TestConfigSettings(t *testing.T) {
	var c providers.Config
	doc := "{name: llama, kind: sim, max_tokens: 256, temperature: 0, system_suffix: \"Be brief.\"}"
	if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
		t.Fatal(err)
	}
	if c.MaxTokens != 256 || c.Temperature == nil || *c.Temperature != 0 || c.SystemSuffix != "Be brief." {
		t.Errorf("%s decoded as max_tokens %d temperature %v system_suffix %q", doc, c.MaxTokens, c.Temperature, c.SystemSuffix)
	}
	c.Timeout = time.Second
	f := func(v float64) *float64 { return &v }
	for _, tt := range []struct {
		name        string
		maxTokens   int
		temperature *float64
		wantKey     string // "": valid
	}{
		{name: "none"},
		{name: "both", maxTokens: 1, temperature: f(2)},
		{name: "negative max_tokens", maxTokens: -1, wantKey: "providers[1].max_tokens"},
		{name: "temperature over 2", temperature: f(2.5), wantKey: "providers[1].temperature"},
		{name: "negative temperature", temperature: f(-0.1), wantKey: "providers[1].temperature"},
		{name: "NaN temperature", temperature: f(math.NaN()), wantKey: "providers[1].temperature"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c.MaxTokens, c.Temperature = tt.maxTokens, tt.temperature
			err := c.Validate("providers[1]")
			switch {
			case tt.wantKey == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tt.wantKey != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.wantKey+":")):
				t.Errorf("Validate: %v, want an error starting %s:", err, tt.wantKey)
			}
		})
	}
}
