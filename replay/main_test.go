package replay_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test closes the brokers (and embedded servers) it starts, and
// broker.Scan never leaves a pull behind, so no goroutine may outlive the
// tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
