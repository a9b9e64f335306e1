package replay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
)

// Comparison sets an original run beside a shadow run of the same requests
// (a redrive).
type Comparison struct {
	Original Summary `json:"original"`
	Shadow   Summary `json:"shadow"`
	// Agreement compares the runs request by request; nil when either report
	// was not made by Build in this process (read back from JSON, say).
	Agreement *Agreement `json:"agreement,omitempty"`
}

// Summary is the part of a report two runs are compared on.
type Summary struct {
	Requests    int            `json:"requests"`
	OK          int            `json:"ok"`
	Failed      int            `json:"failed"`
	Unanswered  int            `json:"unanswered"`
	DeadLetters int            `json:"dead_letters"`
	Degraded    int            `json:"degraded"`
	ByProvider  map[string]int `json:"by_provider"`
	LatencyMS   Latency        `json:"latency_ms"`
}

// Agreement counts the request ids by what each run made of them. Requests
// whose id cannot be read are known by their stream sequence, which differs
// between the runs: they count as only in one run.
type Agreement struct {
	// BothOK: answered ok by both runs; SameProvider of those by the same
	// provider.
	BothOK       int `json:"both_ok"`
	SameProvider int `json:"same_provider"`
	// OnlyOriginalOK and OnlyShadowOK: ok in one run, not in the other.
	OnlyOriginalOK int `json:"only_original_ok"`
	OnlyShadowOK   int `json:"only_shadow_ok"`
	// NeitherOK: in both runs, ok in neither.
	NeitherOK int `json:"neither_ok"`
	// OnlyInOriginal and OnlyInShadow: ids the other run has not seen.
	OnlyInOriginal int `json:"only_in_original"`
	OnlyInShadow   int `json:"only_in_shadow"`
}

func summarize(r *Report) Summary {
	if r == nil {
		return Summary{ByProvider: map[string]int{}}
	}
	s := Summary{Requests: r.Requests, OK: r.OK, Failed: r.Failed, Unanswered: r.Unanswered, DeadLetters: r.DeadLetters,
		Degraded: r.Degraded, ByProvider: r.ByProvider, LatencyMS: r.LatencyMS}
	if s.ByProvider == nil {
		s.ByProvider = map[string]int{}
	}
	return s
}

// Compare sets a (the original run) beside b (the shadow run). Either may be
// nil, standing for an empty run.
func Compare(a, b *Report) *Comparison {
	c := &Comparison{Original: summarize(a), Shadow: summarize(b)}
	if a == nil || b == nil || a.outcomes == nil || b.outcomes == nil {
		return c
	}
	ag := &Agreement{}
	for id, x := range a.outcomes {
		y, ok := b.outcomes[id]
		switch xo, yo := x.status == statusOK, y.status == statusOK; {
		case !ok:
			ag.OnlyInOriginal++
		case xo && yo:
			ag.BothOK++
			if a.names[x.what] == b.names[y.what] {
				ag.SameProvider++
			}
		case xo:
			ag.OnlyOriginalOK++
		case yo:
			ag.OnlyShadowOK++
		default:
			ag.NeitherOK++
		}
	}
	for id := range b.outcomes {
		if _, ok := a.outcomes[id]; !ok {
			ag.OnlyInShadow++
		}
	}
	c.Agreement = ag
	return c
}

// WriteJSON writes the comparison as indented JSON.
func (c *Comparison) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(c)
}

// WriteText writes the comparison as a table: one row per measure, the
// original, the shadow and the change.
func (c *Comparison) WriteText(w io.Writer) error {
	var buf bytes.Buffer
	o, s := c.Original, c.Shadow
	var providers []string
	for _, m := range []map[string]int{o.ByProvider, s.ByProvider} {
		for p := range m {
			if !slices.Contains(providers, p) {
				providers = append(providers, p)
			}
		}
	}
	slices.Sort(providers)
	nameW := len("dead letters")
	for _, p := range providers {
		nameW = max(nameW, len("served by ")+len(p))
	}
	// Right-aligned numbers; the names are padded to look left-aligned.
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%-*s\toriginal\tshadow\tchange\t\n", nameW, "")
	row := func(name string, a, b int64, unit string) {
		fmt.Fprintf(tw, "%-*s\t%d%s\t%d%s\t%+d%s\t\n", nameW, name, a, unit, b, unit, b-a, unit)
	}
	row("requests", int64(o.Requests), int64(s.Requests), "")
	row("ok", int64(o.OK), int64(s.OK), "")
	row("failed", int64(o.Failed), int64(s.Failed), "")
	row("unanswered", int64(o.Unanswered), int64(s.Unanswered), "")
	row("dead letters", int64(o.DeadLetters), int64(s.DeadLetters), "")
	row("degraded", int64(o.Degraded), int64(s.Degraded), "")
	for _, p := range providers {
		row("served by "+p, int64(o.ByProvider[p]), int64(s.ByProvider[p]), "")
	}
	row("latency p50", o.LatencyMS.P50, s.LatencyMS.P50, " ms")
	row("latency p90", o.LatencyMS.P90, s.LatencyMS.P90, " ms")
	row("latency p99", o.LatencyMS.P99, s.LatencyMS.P99, " ms")
	row("latency max", o.LatencyMS.Max, s.LatencyMS.Max, " ms")
	tw.Flush()
	if a := c.Agreement; a != nil {
		fmt.Fprintf(&buf, "\nRequest by request\n")
		tw = tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  ok in both\t%d\t(%d by the same provider)\n", a.BothOK, a.SameProvider)
		fmt.Fprintf(tw, "  ok in the original only\t%d\n", a.OnlyOriginalOK)
		fmt.Fprintf(tw, "  ok in the shadow only\t%d\n", a.OnlyShadowOK)
		fmt.Fprintf(tw, "  ok in neither\t%d\n", a.NeitherOK)
		fmt.Fprintf(tw, "  missing from the shadow\t%d\n", a.OnlyInOriginal)
		fmt.Fprintf(tw, "  only in the shadow\t%d\n", a.OnlyInShadow)
		tw.Flush()
	}
	_, err := io.WriteString(w, terminalSafe(buf.String()))
	return err
}
