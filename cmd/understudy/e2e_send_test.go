package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/chat"
	"github.com/understudy-ai/understudy/internal/poll"
	"github.com/understudy-ai/understudy/providers/sim"
)

// `send` never leaves a user guessing: an id answered before prints that
// answer at once (saying so on stderr), whether the requests stream still
// remembers the id (the publish is a duplicate) or not (the worker acks the
// known id without a second reply); and --timeout is the whole wait.
func TestSendAnsweredID(t *testing.T) {
	e2eNeedBinary(t)
	ns := e2eNATS(t, t.TempDir(), -1)
	_, url := e2eSim(t, sim.Config{Model: "sim-send"})
	cfg := e2eConfig{natsURL: ns.ClientURL(), providers: []e2eProvider{{"primary", url, "sim-send"}}}
	w := e2eServe(t, "worker", cfg)
	_, js := e2eClient(t, ns.ClientURL())
	path := e2eWriteFile(t, "send.yaml", cfg.yaml())

	// earlier runs send for an id answered before and checks that the answer
	// is printed, labelled as an earlier one.
	earlier := func(t *testing.T, conv, id, want string) {
		t.Helper()
		out, errOut, code, _ := e2eRun(t, 40*time.Second, e2eEnv(), "send", "--config", path, "--conversation", conv, "--timeout", "20s",
			"--json", "--id", id, "again")
		if code != 0 {
			t.Fatalf("exit %d, want 0 (the earlier answer was ok); stdout %q stderr %s", code, out, errOut)
		}
		var r chat.Reply
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("stdout is not a reply: %v\n%s", err, out)
		}
		if r.ID != id || r.Status != chat.StatusOK || r.Content != want {
			t.Errorf("reply %+v, want the earlier answer %q", r, want)
		}
		if !strings.Contains(errOut, "earlier answer") {
			t.Errorf("stderr %q does not say the answer is an earlier one", errOut)
		}
	}

	t.Run("duplicate-publish", func(t *testing.T) {
		out, errOut, code, _ := e2eRun(t, 40*time.Second, e2eEnv(), "send", "--config", path, "--conversation", "c-dup", "--timeout", "20s",
			"--id", "dup-1", "first", "time")
		if code != 0 || out != "[sim-send] you said 2 words\n" {
			t.Fatalf("first send: exit %d stdout %q stderr %s", code, out, errOut)
		}
		if strings.Contains(errOut, "earlier answer") {
			t.Errorf("a fresh answer called an earlier one: %s", errOut)
		}
		earlier(t, "c-dup", "dup-1", "[sim-send] you said 2 words")
	})
	t.Run("beyond-dedup-window", func(t *testing.T) {
		// Answered once under another Nats-Msg-Id: the requests stream does
		// not know the id, as after its 2-minute window.
		before := e2eStreamMsgs(t, js, chat.StreamReplies)
		e2ePublishAs(t, js, "c-old", "old-1", "some-other-msg-id")
		poll.Until(t, 20*time.Second, "the reply to old-1", func() bool { return e2eStreamMsgs(t, js, chat.StreamReplies) > before })
		earlier(t, "c-old", "old-1", "[sim-send] you said 4 words")
	})
	t.Run("timeout-is-the-whole-wait", func(t *testing.T) {
		w.terminate(15 * time.Second)
		const timeout = 3 * time.Second
		out, errOut, code, took := e2eRun(t, 30*time.Second, e2eEnv(), "send", "--config", path, "--conversation", "c-none", "--timeout", timeout.String(), "anyone")
		if code != 2 || out != "" || !strings.Contains(errOut, "no reply") {
			t.Fatalf("exit %d stdout %q stderr %q; want 2, nothing and \"no reply\"", code, out, errOut)
		}
		// An upper bound with generous slack (process start, a loaded
		// machine): the old wait was the timeout plus 5 s.
		if took > timeout+2500*time.Millisecond {
			t.Errorf("send --timeout %s took %s: the timeout is the whole wait", timeout, took)
		}
		t.Logf("send --timeout %s with nobody answering: %s", timeout, took)
	})
}
