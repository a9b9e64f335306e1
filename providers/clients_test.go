package providers_test

import (
	"testing"

	"github.com/understudy-ai/understudy/providers"
)

// clients are the clients of kind openai; the tests of a call run against
// each (eachClient), BenchmarkComplete measures each.
var clients = []string{providers.ClientLean, providers.ClientOpenAIGo}

var benchClients = clients

// eachClient runs f once per client, as a subtest named after it.
func eachClient(t *testing.T, f func(t *testing.T, client string)) {
	t.Helper()
	for _, c := range clients {
		t.Run(c, func(t *testing.T) { f(t, c) })
	}
}
