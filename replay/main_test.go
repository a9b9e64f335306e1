package replay_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Every test closes the brokers (and embedded servers) it starts, so no
// goroutine may outlive the tests; but a scan that stops in the middle of a
// batch leaves the batch's fetch goroutine of nats.go waiting for its expiry
// (broker.Scan's FetchMaxWait plus one second), so those are waited out
// first.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		waitFetchesExpired(5 * time.Second)
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func waitFetchesExpired(limit time.Duration) {
	deadline := time.Now().Add(limit)
	buf := make([]byte, 1<<20)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		if !strings.Contains(string(buf[:n]), "jetstream.(*pullConsumer).fetch.func1") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
