package main

import (
	"context"
	"fmt"
	"io"

	"github.com/understudy-ai/understudy/service"
)

func runServe(ctx context.Context, args []string, _, stderr io.Writer) int {
	fs, cfgPath := newFlags("serve", stderr)
	name := fs.String("name", "", "worker id in events and the NATS connection name (default host-pid)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return exitUsage
	}
	log := newLogger(stderr, cfg.Log.Level)
	svc, err := service.Start(ctx, cfg, *name, log)
	if err != nil {
		if ctx.Err() != nil {
			return exitOK // stopped while waiting for NATS
		}
		fmt.Fprintf(stderr, "understudy serve: %v\n", err)
		return exitFailed
	}
	defer svc.Close()
	log.Info().Str("worker", svc.Pool.ID()).Int("providers", len(svc.Providers)).Int("concurrency", cfg.Worker.Concurrency).Msg("serving")
	if err := svc.Run(ctx); err != nil {
		log.Error().Err(err).Msg("worker pool stopped")
		return exitFailed
	}
	log.Info().Msg("stopped")
	return exitOK
}
