package providers_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test closes the servers it starts; the providers' own transports
// are left with nothing but connections those servers close, so no
// goroutine may outlive the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
