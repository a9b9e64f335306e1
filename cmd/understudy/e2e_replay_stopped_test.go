package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/providers/sim"
)

// `replay` works on a stopped embedded deployment: with an empty nats.url and
// nothing answering at nats.listen, it opens the store itself (a server of
// its own, not listening) and reports; it refuses a store another process
// holds, and says clearly when there is neither a server nor a store.
func TestReplayStoppedEmbedded(t *testing.T) {
	e2eNeedBinary(t)
	_, url := e2eSim(t, sim.Config{Model: "sim-stopped"})
	store := filepath.Join(t.TempDir(), "nats")
	natsPort := e2eFreePort(t)
	// embedded is the configuration of an embedded deployment on store,
	// listening on listen.
	embedded := func(name, store, listen string) (path string, metricsPort int) {
		metricsPort = e2eFreePort(t)
		c := e2eConfig{metricsPort: metricsPort, providers: []e2eProvider{{"primary", url, "sim-stopped"}}}
		y := strings.Replace(c.yaml(), "  url: \"\"\n", fmt.Sprintf("  url: \"\"\n  store_dir: %q\n  listen: %q\n", store, listen), 1)
		return e2eWriteFile(t, name+".yaml", y), metricsPort
	}
	path, port := embedded("serve", store, fmt.Sprintf("127.0.0.1:%d", natsPort))
	p := e2eStart(t, "serve", e2eEnv(), "serve", "--config", path, "--name", "serve")
	p.port = port
	p.waitReadyz(20*time.Second, http.StatusOK)
	_, js := e2eClient(t, fmt.Sprintf("nats://127.0.0.1:%d", natsPort))
	ids := e2ePublishN(t, js, "stopped", 1, 3)
	e2eWaitReplies(t, js, ids, 20*time.Second)
	p.terminate(15 * time.Second)

	out, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv(), "replay", "--config", path, "--format", "json")
	if code != 0 {
		t.Fatalf("replay of the stopped deployment: exit %d; stderr %s", code, errOut)
	}
	var rep struct{ Requests, OK int }
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("replay JSON: %v\n%s", err, out)
	}
	if rep.Requests != 3 || rep.OK != 3 {
		t.Errorf("report %+v, want 3 requests, 3 ok", rep)
	}
	if !strings.Contains(errOut, store) {
		t.Errorf("stderr %q does not say the store is read directly", errOut)
	}

	t.Run("store-in-use", func(t *testing.T) {
		// A serve that listens nowhere holds the store: replay must not open
		// it a second time.
		hidden, port := embedded("hidden", store, "-")
		p := e2eStart(t, "hidden", e2eEnv(), "serve", "--config", hidden, "--name", "hidden")
		p.port = port
		p.waitReadyz(20*time.Second, http.StatusOK)
		out, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv(), "replay", "--config", hidden)
		if code == 0 || !strings.Contains(errOut, "in use") {
			t.Errorf("replay of a store in use: exit %d stdout %q stderr %q; want a failure saying it is in use", code, out, errOut)
		}
		p.terminate(15 * time.Second)
	})
	t.Run("neither", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "no-such-store")
		none, _ := embedded("none", missing, fmt.Sprintf("127.0.0.1:%d", e2eFreePort(t)))
		out, errOut, code, _ := e2eRun(t, 30*time.Second, e2eEnv(), "replay", "--config", none)
		if code == 0 || !strings.Contains(errOut, "nats.listen") || !strings.Contains(errOut, missing) {
			t.Errorf("exit %d stdout %q stderr %q; want a failure naming nats.listen and the missing store", code, out, errOut)
		}
	})
}
