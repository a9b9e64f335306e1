package replay

import (
	"fmt"
	"html/template"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/understudy-ai/understudy/chat"
)

// Chart geometry, in SVG user units.
const (
	chartWidth  = 960
	chartLeft   = 48 // at least; wider for long provider names in the lanes
	chartRight  = 48 // room for the latency axis
	chartTop    = 16
	chartPlot   = 260 // height of the bars' area
	chartLane   = 16  // height of one provider's breaker lane
	chartBottom = 28  // room for the time axis labels
)

// palette colours the providers in the order of Report.Providers.
var palette = []string{"#4e79a7", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#86bcb6"}

const (
	colorFailed     = "#e15759"
	colorUnanswered = "#bab0ac"
)

type svgRect struct {
	X, Y, W, H string
	Fill       string
}

type svgMinute struct {
	Title string
	Rects []svgRect
}

type svgText struct {
	X, Y, Text, Anchor string
}

type svgLine struct{ X1, Y1, X2, Y2 string }

type svgShade struct {
	Provider string
	Title    string
	Fill     string
	// Plot is the shading over the bars, Lane the bar in the provider's lane.
	Plot, Lane svgRect
}

type legendItem struct{ Name, Color string }

type chart struct {
	W, H     int
	Minutes  []svgMinute
	Shades   []svgShade
	Lanes    []svgText
	Labels   []svgText
	Grid     []svgLine
	Axis     svgLine
	LaneLine []svgLine
	Legend   []legendItem
	// P50 and P99 are the latency lines (polyline points), LatLabels the
	// right-hand axis in milliseconds.
	P50, P99  string
	LatLabels []svgText
}

type htmlRow struct {
	Name  string
	Cells []string
}

type htmlPage struct {
	Title       string
	Window      string
	Stats       []htmlRow
	Chart       *chart
	Providers   []htmlRow
	Outcomes    []chat.Outcome
	Attempts    []htmlRow
	Impact      []htmlRow
	Cost        []htmlRow
	CostTotal   string
	Spared      []htmlRow
	FirstChunk  []htmlRow
	Transitions []Transition
	Open        []OpenPeriod
	Latency     Latency
	Answered    int
	Timeline    []htmlRow
}

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "still open"
		}
		return t.UTC().Format("2006-01-02 15:04:05.000Z")
	},
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>{{.Title}}</title>
<style>
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1000px; color: #222; padding: 0 12px; }
h1 { font-size: 22px; margin-bottom: 0; }
h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.window { color: #666; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #eee; font-variant-numeric: tabular-nums; }
th:first-child, td:first-child { text-align: left; }
th { font-weight: 600; background: #f6f6f6; }
svg text { font: 11px system-ui, sans-serif; fill: #555; }
svg .grid { stroke: #e5e5e5; stroke-width: 1; }
svg .axis { stroke: #999; stroke-width: 1; }
.legend span { display: inline-block; margin-right: 16px; }
.swatch { vertical-align: middle; margin-right: 4px; }
.none { color: #888; }
</style>
</head>
<body>
<h1>Understudy replay</h1>
<p class="window">{{.Window}}</p>

<h2>Summary</h2>
<table class="summary">
{{range .Stats}}<tr><td>{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>

<h2>Requests per minute</h2>
{{with .Chart}}<p class="legend">{{range .Legend}}<span><svg class="swatch" width="12" height="12"><rect width="12" height="12" fill="{{.Color}}"/></svg>{{.Name}}</span>{{end}}<span>shaded: breaker open or half-open</span><span>lines: latency p50 (solid), p99 (dashed), ms on the right</span></p>
<svg id="timeline" viewBox="0 0 {{.W}} {{.H}}" width="100%" role="img" aria-label="requests per minute by provider, failures and breaker-open periods">
<g class="grid-lines">{{range .Grid}}<line class="grid" x1="{{.X1}}" y1="{{.Y1}}" x2="{{.X2}}" y2="{{.Y2}}"/>{{end}}</g>
<g class="bars">{{range .Minutes}}<g class="minute"><title>{{.Title}}</title>{{range .Rects}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="{{.Fill}}"/>{{end}}</g>
{{end}}</g>
<g class="breaker-shading">{{range .Shades}}<rect class="breaker-open" x="{{.Plot.X}}" y="{{.Plot.Y}}" width="{{.Plot.W}}" height="{{.Plot.H}}" fill="{{.Fill}}" fill-opacity="0.22"><title>{{.Title}}</title></rect>{{end}}</g>
<line class="axis" x1="{{.Axis.X1}}" y1="{{.Axis.Y1}}" x2="{{.Axis.X2}}" y2="{{.Axis.Y2}}"/>
<g class="breaker-lanes">{{range .LaneLine}}<line class="grid" x1="{{.X1}}" y1="{{.Y1}}" x2="{{.X2}}" y2="{{.Y2}}"/>{{end}}{{range .Lanes}}<text x="{{.X}}" y="{{.Y}}" text-anchor="{{.Anchor}}">{{.Text}}</text>{{end}}{{range .Shades}}<rect class="breaker-lane" x="{{.Lane.X}}" y="{{.Lane.Y}}" width="{{.Lane.W}}" height="{{.Lane.H}}" fill="{{.Fill}}" fill-opacity="0.7"><title>{{.Title}}</title></rect>{{end}}</g>
{{if .P99}}<g class="latency"><polyline class="latency-p99" points="{{.P99}}" fill="none" stroke="#333" stroke-width="1.5" stroke-dasharray="4 3"><title>latency p99 per minute</title></polyline><polyline class="latency-p50" points="{{.P50}}" fill="none" stroke="#333" stroke-width="1.5"><title>latency p50 per minute</title></polyline>{{range .LatLabels}}<text x="{{.X}}" y="{{.Y}}" text-anchor="{{.Anchor}}">{{.Text}}</text>{{end}}</g>
{{end}}<g class="labels">{{range .Labels}}<text x="{{.X}}" y="{{.Y}}" text-anchor="{{.Anchor}}">{{.Text}}</text>{{end}}</g>
</svg>
{{else}}<p class="none">No requests in the window.</p>
{{end}}
<h2>Served by provider</h2>
{{if .Providers}}<table>
<tr><th>provider</th><th>served</th><th>share of ok</th></tr>
{{range .Providers}}<tr><td>{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{else}}<p class="none">None.</p>
{{end}}
<h2>Attempts by provider and outcome</h2>
{{if .Attempts}}<table>
<tr><th>provider</th>{{range .Outcomes}}<th>{{.}}</th>{{end}}<th>total</th></tr>
{{range .Attempts}}<tr><td>{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{else}}<p class="none">None.</p>
{{end}}
<h2>Impact on users</h2>
<table class="impact">
{{range .Impact}}<tr><td>{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>

<h2>Time to first chunk</h2>
{{if .FirstChunk}}<table>
<tr><th>provider of the first chunk</th><th>streamed replies</th><th>p50</th><th>p99</th></tr>
{{range .FirstChunk}}<tr><td>{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{else}}<p class="none">No streamed replies.</p>
{{end}}
<h2>Cost</h2>
{{if .Cost}}<table>
<tr><th>provider</th><th>prompt tokens</th><th>completion tokens</th><th>spend</th></tr>
{{range .Cost}}<tr><td>{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}<tr><td>total</td><td></td><td></td><td>{{.CostTotal}}</td></tr>
</table>
{{else}}<p class="none">No tokens reported.</p>
{{end}}
<h2>Spared by the breakers</h2>
{{if .Spared}}<table>
<tr><th>provider</th><th>calls skipped while open</th><th>wait up to</th></tr>
{{range .Spared}}<tr><td>{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{else}}<p class="none">None.</p>
{{end}}
<h2>Breaker transitions</h2>
{{if .Transitions}}<table>
<tr><th>at (UTC)</th><th>provider</th><th>from</th><th>to</th><th>worker</th></tr>
{{range .Transitions}}<tr><td>{{ts .At}}</td><td>{{.Provider}}</td><td>{{.From}}</td><td>{{.To}}</td><td>{{.Worker}}</td></tr>
{{end}}</table>
{{else}}<p class="none">None.</p>
{{end}}{{if .Open}}<table>
<tr><th>provider</th><th>not closed from (UTC)</th><th>to</th></tr>
{{range .Open}}<tr><td>{{.Provider}}</td><td>{{ts .From}}</td><td>{{ts .To}}</td></tr>
{{end}}</table>
{{end}}
<h2>Latency, end to end</h2>
{{if .Answered}}<table>
<tr><th>answered</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>
<tr><td>{{.Answered}}</td><td>{{.Latency.P50}} ms</td><td>{{.Latency.P90}} ms</td><td>{{.Latency.P99}} ms</td><td>{{.Latency.Max}} ms</td></tr>
</table>
{{else}}<p class="none">Nothing answered.</p>
{{end}}
<h2>Timeline</h2>
{{if .Timeline}}<table>
<tr><th>minute (UTC)</th><th>requests</th><th>ok by provider</th><th>failed</th><th>unanswered</th><th>retries</th><th>breakers open</th></tr>
{{range .Timeline}}<tr><td>{{.Name}}</td>{{range .Cells}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{else}}<p class="none">Empty.</p>
{{end}}
</body>
</html>
`))

// WriteHTML writes the report as one self-contained HTML page (no script,
// no external resource): the summary, an SVG chart of the timeline (requests
// per minute stacked by provider, failures and unanswered on top, breaker
// open periods shaded per provider) and the tables.
func (r *Report) WriteHTML(w io.Writer) error {
	providers := r.Providers()
	color := make(map[string]string, len(providers))
	for i, p := range providers {
		color[p] = palette[i%len(palette)]
	}
	page := htmlPage{
		Title:       "Understudy replay " + window(r.Since, r.Until, r.Conversation),
		Window:      window(r.Since, r.Until, r.Conversation),
		Outcomes:    r.Outcomes(),
		Transitions: r.BreakerTransitions,
		Open:        r.BreakerOpen,
		Latency:     r.LatencyMS,
		Answered:    r.OK + r.Failed,
	}
	stat := func(name string, n int, share string) {
		page.Stats = append(page.Stats, htmlRow{name, []string{fmt.Sprint(n), share}})
	}
	stat("requests", r.Requests, "")
	stat("ok", r.OK, pct(r.OK, r.Requests))
	stat("failed", r.Failed, pct(r.Failed, r.Requests))
	stat("unanswered", r.Unanswered, pct(r.Unanswered, r.Requests))
	stat("dead letters", r.DeadLetters, "")
	stat("degraded", r.Degraded, pct(r.Degraded, r.OK)+" of ok")
	stat("queued retries", r.Retries, "")
	stat("duplicate replies", r.DuplicateReplies, "")
	for _, c := range sortedKeys(r.FailedByCode) {
		stat("failed: "+c, r.FailedByCode[c], "")
	}
	for _, p := range providers {
		if n, ok := r.ByProvider[p]; ok {
			page.Providers = append(page.Providers, htmlRow{p, []string{fmt.Sprint(n), pct(n, r.OK)}})
		}
	}
	for _, p := range providers {
		byOutcome, ok := r.Attempts[p]
		if !ok {
			continue
		}
		row := htmlRow{Name: p}
		total := 0
		for _, o := range page.Outcomes {
			row.Cells = append(row.Cells, fmt.Sprint(byOutcome[o]))
			total += byOutcome[o]
		}
		row.Cells = append(row.Cells, fmt.Sprint(total))
		page.Attempts = append(page.Attempts, row)
	}
	for _, row := range r.impactRows() {
		page.Impact = append(page.Impact, htmlRow{row[0], []string{row[1]}})
	}
	page.CostTotal = money(r.Cost.Total)
	for _, p := range providers {
		if c, ok := r.Cost.ByProvider[p]; ok {
			page.Cost = append(page.Cost, htmlRow{p, []string{fmt.Sprint(c.PromptTokens), fmt.Sprint(c.CompletionTokens), spendOf(c)}})
		}
		if sp, ok := r.Spared[p]; ok {
			page.Spared = append(page.Spared, htmlRow{p, []string{fmt.Sprint(sp.Calls), (time.Duration(sp.WaitMS) * time.Millisecond).String()}})
		}
		if s, ok := r.FirstChunkMS[p]; ok {
			page.FirstChunk = append(page.FirstChunk, htmlRow{p, []string{fmt.Sprint(s.N), fmt.Sprintf("%d ms", s.P50), fmt.Sprintf("%d ms", s.P99)}})
		}
	}
	for _, m := range r.Timeline {
		var ok []string
		for _, p := range providers {
			if n := m.OK[p]; n > 0 {
				ok = append(ok, fmt.Sprintf("%s %d", p, n))
			}
		}
		page.Timeline = append(page.Timeline, htmlRow{m.Start.UTC().Format("2006-01-02 15:04"), []string{
			fmt.Sprint(m.Requests), strings.Join(ok, ", "), fmt.Sprint(m.Failed), fmt.Sprint(m.Unanswered),
			fmt.Sprint(m.Retries), strings.Join(m.BreakerOpen, ", "),
		}})
	}
	if len(r.Timeline) > 0 {
		page.Chart = r.chart(providers, color)
	}
	return pageTemplate.Execute(w, page)
}

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

// chart lays out the timeline's SVG.
func (r *Report) chart(providers []string, color map[string]string) *chart {
	var lanes []string // providers with breaker activity
	for _, p := range providers {
		for _, o := range r.BreakerOpen {
			if o.Provider == p {
				lanes = append(lanes, p)
				break
			}
		}
	}
	left := float64(chartLeft)
	for _, p := range lanes {
		// About 6.5 units per character of the 11-unit font.
		left = max(left, min(6.5*float64(utf8.RuneCountInString(p))+14, 240))
	}
	plotW := chartWidth - left - chartRight
	axisY := float64(chartTop + chartPlot)
	laneTop := axisY + 8
	c := &chart{W: chartWidth, H: int(laneTop) + len(lanes)*chartLane + chartBottom}
	n := len(r.Timeline)
	start := r.Timeline[0].Start
	end := r.Timeline[n-1].Start.Add(time.Minute)
	xOf := func(t time.Time) float64 {
		if t.Before(start) {
			t = start
		}
		if t.After(end) || t.IsZero() {
			t = end
		}
		return left + plotW*float64(t.Sub(start))/float64(end.Sub(start))
	}
	peak := 1
	for _, m := range r.Timeline {
		peak = max(peak, m.Requests)
	}
	yScale := float64(chartPlot) / float64(peak)
	for _, v := range []int{0, (peak + 1) / 2, peak} {
		y := axisY - float64(v)*yScale
		c.Grid = append(c.Grid, svgLine{f1(left), f1(y), f1(left + plotW), f1(y)})
		c.Labels = append(c.Labels, svgText{f1(left - 6), f1(y + 4), fmt.Sprint(v), "end"})
	}
	c.Axis = svgLine{f1(left), f1(axisY), f1(left + plotW), f1(axisY)}

	slot := plotW / float64(n)
	barW := max(slot*0.8, 0.5)
	for i, m := range r.Timeline {
		x := left + slot*float64(i) + (slot-barW)/2
		y := axisY
		sm := svgMinute{}
		var parts []string
		stack := func(count int, fill, name string) {
			if count == 0 {
				return
			}
			h := float64(count) * yScale
			y -= h
			sm.Rects = append(sm.Rects, svgRect{f1(x), f1(y), f1(barW), f1(h), fill})
			parts = append(parts, fmt.Sprintf("%s %d", name, count))
		}
		for _, p := range providers {
			stack(m.OK[p], color[p], p)
		}
		for _, p := range sortedKeys(m.OK) {
			if _, known := color[p]; !known {
				stack(m.OK[p], palette[len(palette)-1], p)
			}
		}
		stack(m.Failed, colorFailed, "failed")
		stack(m.Unanswered, colorUnanswered, "unanswered")
		title := fmt.Sprintf("%s UTC: %d requests", m.Start.UTC().Format("15:04"), m.Requests)
		if len(parts) > 0 {
			title += " (" + strings.Join(parts, ", ") + ")"
		}
		if m.Retries > 0 {
			title += fmt.Sprintf("; %d queued retries", m.Retries)
		}
		if len(m.BreakerOpen) > 0 {
			title += "; breaker open: " + strings.Join(m.BreakerOpen, ", ")
		}
		sm.Title = title
		c.Minutes = append(c.Minutes, sm)
	}

	// Time labels: about eight along the axis, on whole minutes.
	step := max(1, (n+7)/8)
	for i := 0; i < n; i += step {
		c.Labels = append(c.Labels, svgText{f1(left + slot*(float64(i)+0.5)), f1(float64(c.H) - 8),
			r.Timeline[i].Start.UTC().Format("15:04"), "middle"})
	}

	for k, p := range lanes {
		y := laneTop + float64(k*chartLane)
		c.Lanes = append(c.Lanes, svgText{f1(left - 6), f1(y + chartLane - 5), p, "end"})
		c.LaneLine = append(c.LaneLine, svgLine{f1(left), f1(y + chartLane - 1), f1(left + plotW), f1(y + chartLane - 1)})
		for _, o := range r.BreakerOpen {
			if o.Provider != p {
				continue
			}
			x0, x1 := xOf(o.From), xOf(o.To)
			if x1-x0 < 1 {
				x1 = x0 + 1
			}
			to := "still open"
			if !o.To.IsZero() {
				to = o.To.UTC().Format("15:04:05")
			}
			c.Shades = append(c.Shades, svgShade{
				Provider: p, Fill: color[p],
				Title: fmt.Sprintf("%s breaker not closed %s – %s UTC", p, o.From.UTC().Format("15:04:05"), to),
				Plot:  svgRect{f1(x0), f1(chartTop), f1(x1 - x0), f1(chartPlot), color[p]},
				Lane:  svgRect{f1(x0), f1(y + 2), f1(x1 - x0), f1(chartLane - 5), color[p]},
			})
		}
	}
	for _, p := range providers {
		if r.ByProvider[p] > 0 || slices.Contains(lanes, p) {
			c.Legend = append(c.Legend, legendItem{p, color[p]})
		}
	}
	c.Legend = append(c.Legend, legendItem{"failed", colorFailed}, legendItem{"unanswered", colorUnanswered})

	// Latency lines over the bars, on their own scale (right axis).
	latPeak, answered := int64(0), false
	for _, m := range r.Timeline {
		latPeak = max(latPeak, m.LatencyMS.P99)
		answered = answered || m.LatencyMS.N > 0
	}
	if answered {
		latPeak = max(latPeak, 1) // answers all under a millisecond still draw a line
		var p50, p99 []string
		for i, m := range r.Timeline {
			if m.LatencyMS.N == 0 {
				continue
			}
			x := f1(left + slot*(float64(i)+0.5))
			p50 = append(p50, x+","+f1(axisY-float64(m.LatencyMS.P50)*chartPlot/float64(latPeak)))
			p99 = append(p99, x+","+f1(axisY-float64(m.LatencyMS.P99)*chartPlot/float64(latPeak)))
		}
		c.P50, c.P99 = strings.Join(p50, " "), strings.Join(p99, " ")
		for _, v := range []int64{0, latPeak / 2, latPeak} {
			c.LatLabels = append(c.LatLabels, svgText{f1(left + plotW + 2), f1(axisY - float64(v)*chartPlot/float64(latPeak) + 4), fmt.Sprint(v), "start"})
		}
	}
	return c
}
