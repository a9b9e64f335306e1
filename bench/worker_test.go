package bench

import (
	"strings"
	"testing"
	"time"
)

func TestStopAllFailsWhenAProcessExitedByItself(t *testing.T) {
	crashed, err := startProc("crashed", 0, "", nil, "sh", "-c", "echo boom >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	running, err := startProc("running", 0, "", nil, "sleep", "30")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-crashed.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the crashing process did not exit")
	}
	if err := running.gone(); err != nil {
		t.Errorf("a running process is gone: %v", err)
	}
	err = stopAll([]*workerProc{crashed, running})
	if err == nil || !strings.Contains(err.Error(), "crashed exited during the measurement (exit status 3): boom") {
		t.Errorf("stopAll = %v, want the crashed process named with its status and output", err)
	}
	if strings.Contains(err.Error(), "running") {
		t.Errorf("stopAll blames the process it stopped itself: %v", err)
	}
	select {
	case <-running.done:
	default:
		t.Errorf("stopAll left a process running")
	}
}
