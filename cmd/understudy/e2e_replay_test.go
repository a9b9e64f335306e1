package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// The replay command end to end: a worker answers traffic through a fallback,
// then `replay` reports it as JSON and HTML, redrives it to a shadow prefix
// that a second worker pool serves, and compares the two runs.
func TestReplayCommand(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	primary, primaryURL := e2eSim(t, sim.Config{Model: "sim-primary"})
	_, fallbackURL := e2eSim(t, sim.Config{Model: "sim-fallback"})
	primary.SetMode(sim.ModeReject) // every request falls back, without tripping the breaker
	cfg := e2eConfig{natsURL: ns.ClientURL(), providers: []e2eProvider{{"primary", primaryURL, "sim-primary"}, {"fallback", fallbackURL, "sim-fallback"}}}
	e2eServe(t, "worker", cfg)
	_, js := e2eClient(t, ns.ClientURL())
	ids := e2ePublishN(t, js, "rp", 1, 6)
	e2eWaitReplies(t, js, ids, 30*time.Second)
	path := e2eWriteFile(t, "replay.yaml", cfg.yaml())

	out, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv(), "replay", "--config", path, "--since", "1h", "--format", "json")
	if code != 0 {
		t.Fatalf("replay --format json: exit %d; stderr %s", code, errOut)
	}
	var rep struct {
		Requests, OK, Failed, Unanswered, Degraded int
		ByProvider                                 map[string]int                  `json:"by_provider"`
		Attempts                                   map[string]map[chat.Outcome]int `json:"attempts"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("replay JSON: %v\n%s", err, out)
	}
	if rep.Requests != 6 || rep.OK != 6 || rep.Failed != 0 || rep.Unanswered != 0 || rep.Degraded != 6 ||
		rep.ByProvider["fallback"] != 6 || rep.Attempts["primary"][chat.OutcomeRejected] != 6 {
		t.Errorf("report %+v", rep)
	}

	html := filepath.Join(t.TempDir(), "incident.html")
	if _, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv(), "replay", "--config", path, "--format", "html", "--out", html); code != 0 {
		t.Fatalf("replay --format html: exit %d; stderr %s", code, errOut)
	}
	page, err := os.ReadFile(html)
	if err != nil || !strings.Contains(string(page), "<svg") {
		t.Fatalf("html report: %v, %d bytes, no chart", err, len(page))
	}

	// Redrive to a shadow prefix, served by a pool whose primary answers.
	if out, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv(), "replay", "--config", path, "--since", "1h", "--redrive", "--prefix", "shadow"); code != 0 || !strings.Contains(out, "republished 6 requests") {
		t.Fatalf("redrive: exit %d stdout %q stderr %s", code, out, errOut)
	}
	primary.SetMode(sim.ModeOK)
	shadow := e2eWriteFile(t, "shadow.yaml", strings.Replace(cfg.yaml(), "prefix: chat", "prefix: shadow", 1))
	p := e2eStart(t, "shadow-worker", e2eEnv(), "serve", "--config", shadow, "--name", "shadow")
	poll.Until(t, 30*time.Second, "6 shadow replies", func() bool { return e2eStreamMsgs(t, js, "SHADOW_REPLIES") == 6 })
	p.terminate(15 * time.Second)
	if n := e2eStreamMsgs(t, js, chat.StreamReplies); n != 6 {
		t.Errorf("CHAT_REPLIES holds %d replies after the redrive, want the original 6: shadow replies must not reach users", n)
	}

	out, errOut, code, _ = e2eRun(t, 30*time.Second, e2eEnv(), "replay", "--config", path, "--since", "1h", "--compare", "shadow", "--format", "json")
	if code != 0 {
		t.Fatalf("replay --compare: exit %d; stderr %s", code, errOut)
	}
	var cmp struct {
		Original, Shadow struct {
			Requests, OK int
			ByProvider   map[string]int `json:"by_provider"`
		}
	}
	if err := json.Unmarshal([]byte(out), &cmp); err != nil {
		t.Fatalf("compare JSON: %v\n%s", err, out)
	}
	if cmp.Original.OK != 6 || cmp.Shadow.OK != 6 || cmp.Original.ByProvider["fallback"] != 6 || cmp.Shadow.ByProvider["primary"] != 6 {
		t.Errorf("comparison %+v", cmp)
	}

	if _, errOut, code, _ := e2eRun(t, 10*time.Second, e2eEnv(), "replay", "--config", path, "--since", "yesterday"); code != exitUsage || !strings.Contains(errOut, "--since") {
		t.Errorf("replay --since yesterday: exit %d stderr %s; want a usage error naming --since", code, errOut)
	}
}
