package providers_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/providers"
)

func TestConfigPrice(t *testing.T) {
	c := providers.Config{Name: "a", Kind: "sim", Timeout: time.Second}
	for _, tt := range []struct {
		name  string
		price *providers.Price
		ok    bool
	}{
		{"none", nil, true},
		{"free", &providers.Price{}, true},
		{"priced", &providers.Price{PromptPerMTok: 0.27, CompletionPerMTok: 1.1}, true},
		{"negative prompt", &providers.Price{PromptPerMTok: -1}, false},
		{"negative completion", &providers.Price{CompletionPerMTok: -0.5}, false},
		{"NaN", &providers.Price{PromptPerMTok: math.NaN()}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c.Price = tt.price
			err := c.Validate("providers[0]")
			if (err == nil) != tt.ok || (err != nil && !strings.HasPrefix(err.Error(), "providers[0].price:")) {
				t.Errorf("Validate: %v, want ok=%v", err, tt.ok)
			}
		})
	}
	p := providers.Price{PromptPerMTok: 0.5, CompletionPerMTok: 2}
	if got := p.Spend(2_000_000, 500_000); got != 2 {
		t.Errorf("Spend = %v, want 2", got)
	}
}
