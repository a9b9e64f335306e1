package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/rs/zerolog"

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
