package replay_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test closes the brokers (and embedded servers) it starts, and
// broker.Scan never leaves a pull behind, so no goroutine may outlive the
// tests — but for a worker pool's last pull, which nats.go ends by itself
// up to a second after its MaxWait even when the connection has closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*pullConsumer).fetch.func1"))
}
