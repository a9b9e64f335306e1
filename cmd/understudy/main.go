// Command understudy keeps a chat product talking when its LLM provider
// falls over: workers pull chat requests from NATS JetStream, walk an
// ordered chain of providers under shared circuit breakers, and publish one
// reply per request. See README.md.
//
//	understudy serve  --config FILE        run the worker pool
//	understudy send   --conversation ID T  publish one request, print the reply
//	understudy replay --since 1h           incident report from the streams
//	understudy demo                        the whole thing on an embedded NATS
//	understudy sim    --listen :8080       a simulated OpenAI-compatible provider
//	understudy health --url URL            probe /readyz (images without a shell)
//	understudy bench                       measure the pipeline against raw JetStream
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // the command ran and the outcome is a failure
	exitNoReply = 2 // send: no reply in time
	exitUsage   = 64
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "run the worker pool", runServe},
		{"send", "publish one request and print its reply", runSend},
		{"replay", "incident report from the streams", runReplay},
		{"demo", "embedded NATS, three simulated providers, traffic and an outage", runDemo},
		{"sim", "serve a simulated OpenAI-compatible provider", runSim},
		{"health", "exit 0 when a health URL answers 200 (container probes)", runHealth},
		{"bench", "measure the pipeline against a raw JetStream loop", runBench},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "understudy: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: understudy COMMAND [--config FILE] [flags]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nThe configuration is read from --config FILE or $UNDERSTUDY_CONFIG; `understudy COMMAND -h` lists a command's flags.")
}
