package main

import (
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/providers/sim"
)

// send --stream prints the tokens as they come; a provider cut mid-answer
// is said on stderr, and stdout restarts the answer on a new line.
func TestSendStreamThroughACut(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	primary, u1 := e2eSim(t, sim.Config{Model: "sim-one"})
	_, u2 := e2eSim(t, sim.Config{Model: "sim-two"})
	primary.SetMode(sim.ModeCut)
	cfg := e2eConfig{natsURL: ns.ClientURL(), providers: []e2eProvider{{"one", u1, "sim-one"}, {"two", u2, "sim-two"}}}
	e2eServe(t, "worker", cfg)
	path := e2eWriteFile(t, "send.yaml", cfg.yaml())
	out, errOut, code, _ := e2eRun(t, 40*time.Second, e2eEnv(), "send", "--config", path, "--conversation", "c-stream", "--timeout", "20s",
		"--stream", "three words here")
	if code != 0 {
		t.Fatalf("exit %d; stdout %q stderr %s", code, out, errOut)
	}
	if want := "[sim-one] you \n[sim-two] you said 3 words\n"; out != want {
		t.Errorf("stdout %q, want %q", out, want)
	}
	if !strings.Contains(errOut, "one failed mid-answer (cut); two answers again") {
		t.Errorf("stderr %q does not name the failed provider and the next", errOut)
	}
}
