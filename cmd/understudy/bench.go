package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/understudy-ai/understudy/bench"
)

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if os.Getenv(bench.EnvRole) == bench.RoleNATS {
		// The bench's own JetStream server child (see bench.ServeNATS).
		if err := bench.ServeNATS(ctx, os.Stdin, stdout); err != nil {
			fmt.Fprintf(stderr, "understudy bench: nats-server: %v\n", err)
			return exitFailed
		}
		return exitOK
	}
	if os.Getenv(bench.EnvRole) == bench.RoleFloor {
		// A floor's loop, in a process of its own (see bench.ServeFloor).
		if err := bench.ServeFloor(ctx, os.Getenv(bench.EnvFloor)); err != nil {
			fmt.Fprintf(stderr, "understudy bench: floor: %v\n", err)
			return exitFailed
		}
		return exitOK
	}
	fs, _ := newFlags("bench", stderr)
	var o bench.Options
	fs.StringVar(&o.NATSURL, "nats", "", "NATS server URL (default: a JetStream server in a child process)")
	fs.IntVar(&o.NATSPID, "nats-pid", 0, "with --nats: the server's process id on this machine, to count its CPU and memory")
	fs.StringVar(&o.ProviderURL, "provider-url", "", "OpenAI-compatible base URL answering the requests (default: simulated providers in the bench process)")
	workers := fs.String("workers", "1", "worker processes: N, or A..B to measure each count from A to B")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "worker.concurrency (and the raw loop's responders)")
	fs.IntVar(&o.Requests, "requests", 10000, "requests measuring each scenario's throughput (half as many more measure latency); backlog: 100000 and ordered: 2000 a case unless given")
	fs.IntVar(&o.Payload, "payload", 256, "bytes of each request's user message")
	fs.Float64Var(&o.Rate, "rate", 0, "request rate (per second) of the latency phases (default: half each scenario's measured throughput)")
	scenarios := fs.String("scenario", "all", "all, or a comma-separated list of zero, fallback, open, slow, backlog, stream, ordered")
	fs.IntVar(&o.Inflight, "inflight", 2000, "slow: worker.concurrency (requests in flight in one process)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the zero scenario's worker process (throughput phase) to FILE")
	quiet := fs.Bool("quiet", false, "no progress on stderr (it is drawn only when stderr is a terminal anyway)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	var err error
	if o.Workers, err = bench.ParseWorkers(*workers); err != nil {
		fmt.Fprintf(stderr, "understudy bench: %v\n", err)
		return exitUsage
	}
	if o.Scenarios, err = bench.ParseScenarios(*scenarios); err != nil {
		fmt.Fprintf(stderr, "understudy bench: %v\n", err)
		return exitUsage
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "requests" {
			o.Backlog, o.Ordered = o.Requests, o.Requests
		}
	})
	if o.Binary, err = os.Executable(); err != nil {
		fmt.Fprintf(stderr, "understudy bench: cannot find the understudy binary to run workers: %v\n", err)
		return exitFailed
	}
	if !*quiet && isTerminal(stderr) {
		o.Progress = stderr
	}
	rep, err := bench.Run(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "understudy bench: %v\n", err)
		if errors.Is(err, bench.ErrInvalidOption) {
			return exitUsage
		}
		return exitFailed
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return exitFailed
		}
	} else {
		rep.Text(stdout)
	}
	for _, r := range append(append(rep.Results, rep.Floors...), rep.Baseline) {
		if r.Answered < r.Sent || r.Failed > 0 {
			fmt.Fprintf(stderr, "understudy bench: %s ×%d: %d of %d requests answered, %d failed\n", r.Scenario, r.Workers, r.Answered, r.Sent, r.Failed)
			return exitFailed
		}
	}
	return exitOK
}
