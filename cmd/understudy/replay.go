package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/replay"
)

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, cfgPath := newFlags("replay", stderr)
	since := fs.String("since", "", "start of the window: RFC 3339 time or a duration ago (1h, 30m, 7d); default: everything stored")
	until := fs.String("until", "", "end of the window: RFC 3339 time or a duration ago (default: now)")
	conv := fs.String("conversation", "", "only this conversation")
	format := fs.String("format", "text", "text, json or html")
	out := fs.String("out", "", "write the report to FILE instead of stdout")
	quiet := fs.Bool("quiet", false, "no progress on stderr (it is drawn only when stderr is a terminal anyway)")
	redrive := fs.Bool("redrive", false, "republish the window's requests under --prefix instead of reporting")
	prefix := fs.String("prefix", "", "with --redrive: the subject prefix to republish to (e.g. shadow)")
	compare := fs.String("compare", "", "compare the window with the same window under another prefix (a redrive's shadow run)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	now := time.Now()
	var opt replay.Options
	var err error
	if *since != "" {
		if opt.Since, err = replay.ParseWhen(*since, now); err != nil {
			fmt.Fprintf(stderr, "understudy replay: --since: %v\n", err)
			return exitUsage
		}
	}
	if *until != "" {
		if opt.Until, err = replay.ParseWhen(*until, now); err != nil {
			fmt.Fprintf(stderr, "understudy replay: --until: %v\n", err)
			return exitUsage
		}
	}
	opt.Conversation = *conv
	if !*quiet && isTerminal(stderr) {
		opt.Progress = stderr
	}
	if err := opt.Validate(now); err != nil {
		fmt.Fprintf(stderr, "understudy replay: %v\n", err)
		return exitUsage
	}
	switch *format {
	case "text", "json", "html":
	default:
		fmt.Fprintf(stderr, "understudy replay: --format %q: want text, json or html\n", *format)
		return exitUsage
	}
	if *redrive && *prefix == "" {
		fmt.Fprintln(stderr, "understudy replay: --redrive needs --prefix")
		return exitUsage
	}
	other := *prefix
	if *compare != "" {
		other = *compare
	}
	var to chat.Subjects
	if other != "" {
		if to, err = chat.NewSubjects(other); err != nil {
			fmt.Fprintf(stderr, "understudy replay: --prefix: %v\n", err)
			return exitUsage
		}
	}
	cfg, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return exitUsage
	}
	opt.Providers = providerInfo(cfg.Providers)
	b, code := dialReplay(ctx, cfg.NATS, stderr)
	if b == nil {
		return code
	}
	defer b.Close()
	subj := cfg.SubjectScheme()

	if *redrive {
		// The target's streams must exist before anything is published there.
		if err := b.Setup(ctx, broker.Topology{Subjects: to, Replicas: cfg.Streams.Replicas, RequestsMaxAge: cfg.Streams.RequestsMaxAge,
			AckWait: cfg.Worker.AckWait, MaxDeliveries: cfg.Worker.MaxDeliveries}); err != nil {
			fmt.Fprintf(stderr, "understudy replay: %v\n", err)
			return exitFailed
		}
		n, err := replay.Redrive(ctx, b, b, subj, to, opt)
		if err != nil {
			fmt.Fprintf(stderr, "understudy replay: redrive: %v\n", err)
			return exitFailed
		}
		fmt.Fprintf(stdout, "republished %d requests to %s; run a worker pool with subjects.prefix: %s, then: understudy replay --compare %s\n",
			n, to.AllRequests(), to.Prefix(), to.Prefix())
		return exitOK
	}

	w := stdout
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			fmt.Fprintf(stderr, "understudy replay: %v\n", err)
			return exitFailed
		}
		defer f.Close()
		w = f
	}
	rep, err := replay.Build(ctx, b, subj, opt)
	if err != nil {
		fmt.Fprintf(stderr, "understudy replay: %v\n", err)
		return exitFailed
	}
	if *compare != "" {
		shadow, err := replay.Build(ctx, b, to, opt)
		if err != nil {
			fmt.Fprintf(stderr, "understudy replay: %s: %v\n", to.Prefix(), err)
			return exitFailed
		}
		c := replay.Compare(rep, shadow)
		if *format == "json" {
			err = c.WriteJSON(w)
		} else {
			err = c.WriteText(w)
		}
		return reportWritten(err, *out, stdout, stderr)
	}
	return reportWritten(writeReport(rep, *format, w), *out, stdout, stderr)
}

// dialReplay connects replay like send, except that a stopped embedded
// deployment — an empty nats.url, nothing answering at nats.listen, and a
// store directory — is read by opening its store: a server of replay's own,
// not listening on the network. A store held by a running server (one with
// nats.listen "-") is refused, never opened twice.
func dialReplay(ctx context.Context, c broker.Config, stderr io.Writer) (*broker.Broker, int) {
	c.SetDefaults()
	if c.URL != "" || (c.Listen != "-" && listening(c.Listen)) {
		return dial(ctx, c, "understudy-replay", 5*time.Second, stderr)
	}
	if st, err := os.Stat(c.StoreDir); err != nil || !st.IsDir() {
		fmt.Fprintf(stderr, "understudy replay: nothing answers at nats.listen %s and there is no store at nats.store_dir %s (is `understudy serve` running, or nats.url set?)\n",
			c.Listen, c.StoreDir)
		return nil, exitNoReply
	}
	b, err := broker.OpenStore(ctx, c, "understudy-replay", zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "understudy replay: nothing answers at nats.listen %s, and reading the store directly failed: %v\n", c.Listen, err)
		return nil, exitNoReply
	}
	fmt.Fprintf(stderr, "understudy replay: nothing answers at nats.listen %s: reading the store %s directly\n", c.Listen, c.StoreDir)
	return b, exitOK
}

// listening reports whether something accepts connections at addr.
func listening(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

func writeReport(rep *replay.Report, format string, w io.Writer) error {
	switch format {
	case "json":
		return rep.WriteJSON(w)
	case "html":
		return rep.WriteHTML(w)
	}
	return rep.WriteText(w)
}

func reportWritten(err error, out string, stdout, stderr io.Writer) int {
	if err != nil {
		fmt.Fprintf(stderr, "understudy replay: writing the report: %v\n", err)
		return exitFailed
	}
	if out != "" {
		fmt.Fprintf(stdout, "report written to %s\n", out)
	}
	return exitOK
}

// providerInfo is what a report needs of the configured providers: prices
// and timeouts.
func providerInfo(list []providers.Config) map[string]replay.ProviderInfo {
	out := make(map[string]replay.ProviderInfo, len(list))
	for _, p := range list {
		out[p.Name] = replay.ProviderInfo{Price: p.Price, Timeout: p.Timeout}
	}
	return out
}

// demoReport prints the replay report of the demo's own run.
func demoReport(ctx context.Context, b *broker.Broker, subj chat.Subjects, list []providers.Config, format string, w io.Writer) error {
	rep, err := replay.Build(ctx, b, subj, replay.Options{Providers: providerInfo(list)})
	if err != nil {
		return err
	}
	fmt.Fprintln(w)
	return writeReport(rep, format, w)
}

// isTerminal reports whether w is a character device (a terminal), where a
// progress line rewritten in place makes sense.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
