package replay

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/understudy-ai/understudy/chat"
)

// barWidth is the width of the longest bar of the text timeline.
const barWidth = 40

// barSymbols mark, in a text timeline bar, the requests served by each
// provider (in the order of Providers), then failed and unanswered ones.
var barSymbols = []byte("#=+*o%@")

const (
	barFailed     = 'x'
	barUnanswered = '.'
)

// outcomeOrder is the column order of attempt tables.
var outcomeOrder = []chat.Outcome{chat.OutcomeOK, chat.OutcomeError, chat.OutcomeTimeout,
	chat.OutcomeRateLimited, chat.OutcomeRejected, chat.OutcomeBreakerOpen}

// Providers lists every provider the report mentions: those that served
// replies, most first, then those only attempted or with breaker activity,
// by name.
func (r *Report) Providers() []string {
	var out []string
	for p := range r.ByProvider {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b string) int {
		if d := r.ByProvider[b] - r.ByProvider[a]; d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	var rest []string
	add := func(p string) {
		if p != "" && !slices.Contains(out, p) && !slices.Contains(rest, p) {
			rest = append(rest, p)
		}
	}
	for p := range r.Attempts {
		add(p)
	}
	for _, t := range r.BreakerTransitions {
		add(t.Provider)
	}
	for _, p := range r.BreakerOpen {
		add(p.Provider)
	}
	for p := range r.FirstChunkMS {
		add(p)
	}
	slices.Sort(rest)
	return append(out, rest...)
}

// Outcomes lists the attempt outcomes in column order: the six of SPEC §3,
// then any other the trail holds.
func (r *Report) Outcomes() []chat.Outcome {
	out := slices.Clone(outcomeOrder)
	var extra []chat.Outcome
	for _, byOutcome := range r.Attempts {
		for o := range byOutcome {
			if !slices.Contains(out, o) && !slices.Contains(extra, o) {
				extra = append(extra, o)
			}
		}
	}
	slices.Sort(extra)
	return append(out, extra...)
}

func pct(n, of int) string {
	if of == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(of))
}

func window(since, until time.Time, conv string) string {
	s := "start of the streams"
	if !since.IsZero() {
		s = since.UTC().Format(time.RFC3339)
	}
	s += " .. " + until.UTC().Format(time.RFC3339)
	if conv != "" {
		s += "  (conversation " + conv + ")"
	}
	return s
}

// WriteText writes the report for a terminal: a summary, the providers'
// shares, the attempts by outcome, the breaker transitions, the latency
// percentiles and a per-minute timeline with bars.
func (r *Report) WriteText(w io.Writer) error {
	var buf bytes.Buffer
	providers := r.Providers()
	nameW := len("provider")
	for _, p := range providers {
		nameW = max(nameW, len(p))
	}

	fmt.Fprintf(&buf, "Understudy replay: %s\n\n", window(r.Since, r.Until, r.Conversation))
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "requests\t%8d\n", r.Requests)
	fmt.Fprintf(tw, "ok\t%8d\t%6s\n", r.OK, pct(r.OK, r.Requests))
	failed := fmt.Sprintf("%8d\t%6s", r.Failed, pct(r.Failed, r.Requests))
	if len(r.FailedByCode) > 0 {
		var codes []string
		for _, c := range sortedKeys(r.FailedByCode) {
			codes = append(codes, fmt.Sprintf("%s %d", c, r.FailedByCode[c]))
		}
		failed += "\t(" + strings.Join(codes, ", ") + ")"
	}
	fmt.Fprintf(tw, "failed\t%s\n", failed)
	fmt.Fprintf(tw, "unanswered\t%8d\t%6s\n", r.Unanswered, pct(r.Unanswered, r.Requests))
	fmt.Fprintf(tw, "dead letters\t%8d\n", r.DeadLetters)
	fmt.Fprintf(tw, "degraded\t%8d\t%6s\tof ok\n", r.Degraded, pct(r.Degraded, r.OK))
	fmt.Fprintf(tw, "queued retries\t%8d\n", r.Retries)
	fmt.Fprintf(tw, "duplicate replies\t%8d\n", r.DuplicateReplies)
	fmt.Fprintf(tw, "duplicate requests\t%8d\n", r.DuplicateRequests)
	tw.Flush()

	fmt.Fprintf(&buf, "\nServed by provider (share of ok replies)\n")
	if len(r.ByProvider) == 0 {
		fmt.Fprintf(&buf, "  none\n")
	} else {
		tw = tabwriter.NewWriter(&buf, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "  %-*s\tserved\tshare\t\n", nameW, "provider")
		for _, p := range providers {
			if n, ok := r.ByProvider[p]; ok {
				fmt.Fprintf(tw, "  %-*s\t%d\t%s\t\n", nameW, p, n, pct(n, r.OK))
			}
		}
		tw.Flush()
	}

	fmt.Fprintf(&buf, "\nAttempts by provider and outcome\n")
	if len(r.Attempts) == 0 {
		fmt.Fprintf(&buf, "  none\n")
	} else {
		outcomes := r.Outcomes()
		tw = tabwriter.NewWriter(&buf, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "  %-*s\t", nameW, "provider")
		for _, o := range outcomes {
			fmt.Fprintf(tw, "%s\t", o)
		}
		fmt.Fprintf(tw, "total\t\n")
		for _, p := range providers {
			byOutcome, ok := r.Attempts[p]
			if !ok {
				continue
			}
			fmt.Fprintf(tw, "  %-*s\t", nameW, p)
			total := 0
			for _, o := range outcomes {
				fmt.Fprintf(tw, "%d\t", byOutcome[o])
				total += byOutcome[o]
			}
			fmt.Fprintf(tw, "%d\t\n", total)
		}
		tw.Flush()
	}

	r.writeCost(&buf, providers, nameW)

	fmt.Fprintf(&buf, "\nBreaker transitions\n")
	if len(r.BreakerTransitions) == 0 {
		fmt.Fprintf(&buf, "  none\n")
	} else {
		tw = tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
		for _, t := range r.BreakerTransitions {
			worker := ""
			if t.Worker != "" {
				worker = "worker " + t.Worker
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s -> %s\t%s\n", t.At.UTC().Format("2006-01-02T15:04:05.000Z"), t.Provider, t.From, t.To, worker)
		}
		tw.Flush()
	}

	answered := r.OK + r.Failed
	fmt.Fprintf(&buf, "\nLatency, end to end (%d answered)\n", answered)
	if answered == 0 {
		fmt.Fprintf(&buf, "  none\n")
	} else {
		l := r.LatencyMS
		fmt.Fprintf(&buf, "  p50 %d ms   p90 %d ms   p99 %d ms   max %d ms\n", l.P50, l.P90, l.P99, l.Max)
	}

	r.writeImpact(&buf)
	r.writeFirstChunk(&buf, providers, nameW)
	r.writeTimeline(&buf, providers)
	_, err := io.WriteString(w, terminalSafe(buf.String()))
	return err
}

// terminalSafe replaces control characters other than newlines (an escape
// sequence in a provider or worker name, say) by '?'.
func terminalSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r != '\n' && unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

// writeTimeline draws one line per minute; runs of three or more quiet
// minutes (no request, no retry, the same breakers open) are folded.
func (r *Report) writeTimeline(buf *bytes.Buffer, providers []string) {
	fmt.Fprintf(buf, "\nTimeline (UTC, per minute, requests by what became of them)\n")
	if len(r.Timeline) == 0 {
		fmt.Fprintf(buf, "  none\n")
		return
	}
	var served []string // providers with a symbol, in legend order
	for _, p := range providers {
		if r.ByProvider[p] > 0 {
			served = append(served, p)
		}
	}
	symbol := func(i int) byte { return barSymbols[min(i, len(barSymbols)-1)] }
	legend := []string{}
	for i, p := range served {
		legend = append(legend, fmt.Sprintf("%c %s", symbol(i), p))
	}
	legend = append(legend, fmt.Sprintf("%c failed", barFailed), fmt.Sprintf("%c unanswered", barUnanswered))
	fmt.Fprintf(buf, "  %s\n", strings.Join(legend, "   "))

	peak := 0
	for _, m := range r.Timeline {
		peak = max(peak, m.Requests)
	}
	scale := func(n int) int {
		if n == 0 || peak == 0 {
			return 0
		}
		return max(1, (n*barWidth+peak/2)/peak)
	}
	quiet := func(i int) bool {
		m := r.Timeline[i]
		return m.Requests == 0 && m.Retries == 0
	}
	tw := tabwriter.NewWriter(buf, 0, 0, 2, ' ', 0)
	lastDay := ""
	for i := 0; i < len(r.Timeline); i++ {
		m := r.Timeline[i]
		if quiet(i) {
			j := i
			for j+1 < len(r.Timeline) && quiet(j+1) && slices.Equal(r.Timeline[j+1].BreakerOpen, m.BreakerOpen) {
				j++
			}
			if j-i >= 2 {
				open := ""
				if len(m.BreakerOpen) > 0 {
					open = "open: " + strings.Join(m.BreakerOpen, ",")
				}
				fmt.Fprintf(tw, "  %s\t\t(%d quiet minutes, to %s)\t%s\n", r.minuteLabel(m.Start, &lastDay), j-i+1,
					r.Timeline[j].Start.Format("15:04"), open)
				i = j
				continue
			}
		}
		var bar strings.Builder
		var detail []string
		for k, p := range served {
			if n := m.OK[p]; n > 0 {
				bar.WriteString(strings.Repeat(string(symbol(k)), scale(n)))
				detail = append(detail, fmt.Sprintf("%s %d", p, n))
			}
		}
		for _, p := range sortedKeys(m.OK) {
			if !slices.Contains(served, p) && m.OK[p] > 0 {
				detail = append(detail, fmt.Sprintf("%s %d", p, m.OK[p]))
			}
		}
		bar.WriteString(strings.Repeat(string(rune(barFailed)), scale(m.Failed)))
		bar.WriteString(strings.Repeat(string(rune(barUnanswered)), scale(m.Unanswered)))
		if m.Failed > 0 {
			detail = append(detail, fmt.Sprintf("failed %d", m.Failed))
		}
		if m.Unanswered > 0 {
			detail = append(detail, fmt.Sprintf("unanswered %d", m.Unanswered))
		}
		if m.Retries > 0 {
			detail = append(detail, fmt.Sprintf("retries %d", m.Retries))
		}
		if len(m.BreakerOpen) > 0 {
			detail = append(detail, "open: "+strings.Join(m.BreakerOpen, ","))
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\n", r.minuteLabel(m.Start, &lastDay), m.Requests, bar.String(), strings.Join(detail, "  "))
	}
	tw.Flush()
}

// minuteLabel is "15:04", with the date when the day changes.
func (r *Report) minuteLabel(t time.Time, lastDay *string) string {
	t = t.UTC()
	day := t.Format("2006-01-02")
	if day != *lastDay {
		*lastDay = day
		return t.Format("2006-01-02 15:04")
	}
	return t.Format("15:04")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// money formats a spend.
func money(v float64) string { return fmt.Sprintf("%.4f", v) }

// spendOf is a provider's spend, or "-" without a price.
func spendOf(c ProviderCost) string {
	if c.Spend == nil {
		return "-"
	}
	return money(*c.Spend)
}

// writeCost draws the tokens and spend per provider and what the breakers
// spared.
func (r *Report) writeCost(buf *bytes.Buffer, providers []string, nameW int) {
	fmt.Fprintf(buf, "\nCost (tokens of the ok replies; spend at the configured prices)\n")
	if len(r.Cost.ByProvider) == 0 {
		fmt.Fprintf(buf, "  none\n")
	} else {
		tw := tabwriter.NewWriter(buf, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "  %-*s\tprompt tokens\tcompletion tokens\tspend\t\n", nameW, "provider")
		for _, p := range providers {
			if c, ok := r.Cost.ByProvider[p]; ok {
				fmt.Fprintf(tw, "  %-*s\t%d\t%d\t%s\t\n", nameW, p, c.PromptTokens, c.CompletionTokens, spendOf(c))
			}
		}
		fmt.Fprintf(tw, "  %-*s\t\t\t%s\t\n", nameW, "total", money(r.Cost.Total))
		tw.Flush()
	}
	fmt.Fprintf(buf, "\nSpared by the breakers (calls skipped while open)\n")
	if len(r.Spared) == 0 {
		fmt.Fprintf(buf, "  none\n")
		return
	}
	tw := tabwriter.NewWriter(buf, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  %-*s\tcalls\twait up to\t\n", nameW, "provider")
	for _, p := range providers {
		if sp, ok := r.Spared[p]; ok {
			fmt.Fprintf(tw, "  %-*s\t%d\t%s\t\n", nameW, p, sp.Calls, time.Duration(sp.WaitMS)*time.Millisecond)
		}
	}
	tw.Flush()
}

// impactRows are the lines of the impact on users, shared by text and HTML.
func (r *Report) impactRows() [][2]string {
	im := r.Impact
	sp := func(s Spread) string {
		if s.N == 0 {
			return "none"
		}
		return fmt.Sprintf("p50 %d ms   p99 %d ms   (%d answered)", s.P50, s.P99, s.N)
	}
	queued := "none"
	if q := im.Queued; q.Requests > 0 {
		queued = fmt.Sprintf("%d requests, put back for p50 %s   p99 %s   max %s", q.Requests,
			time.Duration(q.WaitMS.P50)*time.Millisecond, time.Duration(q.WaitMS.P99)*time.Millisecond, time.Duration(q.MaxMS)*time.Millisecond)
	}
	failed := "none"
	if len(im.FailedByCode) > 0 {
		var codes []string
		for _, c := range sortedKeys(im.FailedByCode) {
			codes = append(codes, fmt.Sprintf("%s %d", c, im.FailedByCode[c]))
		}
		failed = strings.Join(codes, ", ")
	}
	return [][2]string{
		{"degraded replies", fmt.Sprintf("%.1f%% of ok", 100*im.DegradedShare)},
		{"latency, breaker open", sp(im.LatencyOpen)},
		{"latency, breakers closed", sp(im.LatencyClosed)},
		{"waited in the queue", queued},
		{"failed, by code", failed},
	}
}

// writeFirstChunk draws the time to first chunk of the streamed replies per
// provider.
func (r *Report) writeFirstChunk(buf *bytes.Buffer, providers []string, nameW int) {
	fmt.Fprintf(buf, "\nTime to first chunk (streamed replies, by the provider of the first chunk)\n")
	if len(r.FirstChunkMS) == 0 {
		fmt.Fprintf(buf, "  none\n")
		return
	}
	tw := tabwriter.NewWriter(buf, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  %-*s\treplies\tp50\tp99\t\n", nameW, "provider")
	for _, p := range providers {
		if s, ok := r.FirstChunkMS[p]; ok {
			fmt.Fprintf(tw, "  %-*s\t%d\t%d ms\t%d ms\t\n", nameW, p, s.N, s.P50, s.P99)
		}
	}
	tw.Flush()
}

func (r *Report) writeImpact(buf *bytes.Buffer) {
	fmt.Fprintf(buf, "\nImpact on users\n")
	tw := tabwriter.NewWriter(buf, 0, 0, 2, ' ', 0)
	for _, row := range r.impactRows() {
		fmt.Fprintf(tw, "  %s\t%s\n", row[0], row[1])
	}
	tw.Flush()
}
