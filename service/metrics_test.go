package service

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestBreakerStateSampledFromStart: an operator scraping a freshly started
// replica sees understudy_breaker_state 0 for every provider of the chain,
// not an absent series until a first transition.
func TestBreakerStateSampledFromStart(t *testing.T) {
	srv := natsServer(t)
	cfg := replicaConfig(srv.ClientURL(), simServer(t), simServer(t))
	svc := replica(t, cfg, "a")

	resp, err := http.Get("http://" + svc.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range cfg.Providers {
		want := `understudy_breaker_state{provider="` + p.Name + `"} 0`
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
