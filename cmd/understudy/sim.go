package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/understudy-ai/understudy/providers/sim"
)

func runSim(ctx context.Context, args []string, _, stderr io.Writer) int {
	fs, _ := newFlags("sim", stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "address to serve on")
	model := fs.String("model", "sim-1", "model name reported in answers")
	latency := fs.Duration("latency", 0, "latency added to every answer")
	jitter := fs.Duration("jitter", 0, "random extra latency in [0, jitter)")
	failRate := fs.Float64("failure-rate", 0, "share of requests answered 503 (0..1)")
	retryAfter := fs.Duration("retry-after", time.Second, "Retry-After of 429 answers")
	mode := fs.String("mode", "ok", "ok|error|ratelimit|hang|garbage|empty|reset|unauthorized|reject")
	script := fs.String("script", "", "timed phases after:for:mode,... (e.g. 30s:20s:error,90s:10s:hang)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	m, err := sim.ParseMode(*mode)
	if err != nil {
		fmt.Fprintf(stderr, "understudy sim: --mode: %v\n", err)
		return exitUsage
	}
	cfg := sim.Config{Model: *model, Latency: *latency, Jitter: *jitter, FailureRate: *failRate, RetryAfter: *retryAfter}
	if cfg.Script, err = parseScript(*script); err != nil {
		fmt.Fprintf(stderr, "understudy sim: --script: %v\n", err)
		return exitUsage
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "understudy sim: %v\n", err)
		return exitUsage
	}
	srv := sim.New(cfg)
	srv.SetMode(m)
	url, err := srv.Start(*listen)
	if err != nil {
		fmt.Fprintf(stderr, "understudy sim: %v\n", err)
		return exitFailed
	}
	log := newLogger(stderr, "info")
	log.Info().Str("base_url", url).Str("model", *model).Str("mode", *mode).Msg("simulated provider serving")
	<-ctx.Done()
	_ = srv.Close()
	log.Info().Int64("requests", srv.Hits()).Msg("simulated provider stopped")
	return exitOK
}

// parseScript reads "after:for:mode,..." phases.
func parseScript(s string) ([]sim.Phase, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var phases []sim.Phase
	for part := range strings.SplitSeq(s, ",") {
		f := strings.Split(strings.TrimSpace(part), ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("phase %q is not after:for:mode", part)
		}
		after, err := time.ParseDuration(f[0])
		if err != nil {
			return nil, fmt.Errorf("phase %q: %w", part, err)
		}
		dur, err := time.ParseDuration(f[1])
		if err != nil {
			return nil, fmt.Errorf("phase %q: %w", part, err)
		}
		m, err := sim.ParseMode(f[2])
		if err != nil {
			return nil, err
		}
		phases = append(phases, sim.Phase{After: after, For: dur, Mode: m})
	}
	return phases, nil
}
