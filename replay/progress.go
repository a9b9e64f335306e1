package replay

import (
	"fmt"
	"io"
	"time"
)

// Progress is redrawn every progressEvery messages or progressPeriod,
// whichever comes first.
const (
	progressEvery  = 5000
	progressPeriod = 250 * time.Millisecond
)

// progress draws "replay: reading CHAT_REPLIES  12000 messages (total 40000)"
// on one line, rewritten with carriage returns, and ends it with a newline.
type progress struct {
	w     io.Writer
	verb  string // while working: "reading"
	done  string // at the end: "read"
	stage string
	start time.Time
	last  time.Time
	n     int // messages of the current stage
	total int // messages of every stage
	width int // length of the last line drawn, to blank it out
}

func newProgress(w io.Writer, verb, done string) *progress {
	now := time.Now()
	return &progress{w: w, verb: verb, done: done, start: now, last: now}
}

// begin starts a stage (reading one stream).
func (p *progress) begin(stage string) {
	if p.w == nil {
		return
	}
	p.stage, p.n = stage, 0
	p.draw()
}

// tick counts one message.
func (p *progress) tick() {
	p.n++
	p.total++
	if p.w == nil {
		return
	}
	if p.n%progressEvery == 0 || (p.n%64 == 0 && time.Since(p.last) >= progressPeriod) {
		p.draw()
	}
}

func (p *progress) draw() {
	p.last = time.Now()
	line := fmt.Sprintf("replay: %s %s %8d messages (total %d)", p.verb, p.stage, p.n, p.total)
	pad := max(p.width-len(line), 0)
	p.width = len(line)
	fmt.Fprintf(p.w, "\r%s%*s", line, pad, "")
}

// end replaces the progress line by a summary and a newline.
func (p *progress) end(what string) {
	if p.w == nil {
		return
	}
	line := fmt.Sprintf("replay: %s %d messages in %s, %s", p.done, p.total, time.Since(p.start).Round(time.Millisecond), what)
	if p.width > len(line) {
		fmt.Fprintf(p.w, "\r%*s", p.width, "")
	}
	fmt.Fprintf(p.w, "\r%s\n", line)
}
