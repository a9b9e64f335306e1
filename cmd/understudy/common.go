package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/config"
)

// newFlags returns a flag set for a command, with --config.
func newFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("understudy "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (default $"+config.EnvVar+", else built-in defaults)")
	return fs, cfgPath
}

// loadConfig reads the configuration, printing the one clear message on
// failure.
func loadConfig(path string, stderr io.Writer) (config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "understudy: invalid configuration: %v\n", err)
		return cfg, false
	}
	return cfg, true
}

// newLogger writes zerolog JSON at level to w.
func newLogger(w io.Writer, level string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

// dial connects a client command (send, replay) to NATS: nats.url, or the
// embedded server of a local `understudy serve` on nats.listen. It waits up
// to wait for the connection; on failure it prints why and returns the
// exit code.
func dial(ctx context.Context, c broker.Config, name string, wait time.Duration, stderr io.Writer) (*broker.Broker, int) {
	if c.URL == "" {
		c.URL = "nats://" + c.Listen
	}
	cmd := "understudy " + name[len("understudy-"):]
	b, err := broker.Connect(ctx, c, name, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return nil, exitNoReply
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := b.WaitConnected(wctx); err != nil {
		b.Close()
		fmt.Fprintf(stderr, "%s: %v (is `understudy serve` running, or nats.url set?)\n", cmd, err)
		return nil, exitNoReply
	}
	return b, exitOK
}
