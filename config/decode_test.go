package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/understudy-ai/understudy/config"
)

// TestParseValueOfWrongTypeNamesKey: a value the YAML decoder cannot read
// into its field is reported under its key path (and with the value), like
// every value Validate refuses, not as a bare "line N: cannot unmarshal".
func TestParseValueOfWrongTypeNamesKey(t *testing.T) {
	unsetKeys(t)
	const sim = "providers:\n  - {name: a, kind: openai, base_url: \"https://x/v1\", model: m}\n  - name: s\n    kind: sim\n"
	cases := []struct {
		name string
		doc  string
		want []string // the first is "key: value" as the message must start
	}{
		{"duration", "breaker: {consecutive_failures: 5, open_for: banana}", []string{`breaker.open_for: "banana"`, "duration"}},
		{"duration, block style", "log: {level: info}\nbreaker:\n  open_for: banana\n", []string{`breaker.open_for: "banana"`, "line 3"}},
		{"duration as a bare number", "worker: {ack_wait: 30}", []string{`worker.ack_wait: "30"`, "duration"}},
		{"int", "worker: {concurrency: many}", []string{`worker.concurrency: "many"`, "integer"}},
		{"int of a float", "breaker: {consecutive_failures: 2.5}", []string{`breaker.consecutive_failures: "2.5"`, "integer"}},
		{"int out of range", "worker: {max_request_bytes: 99999999999999999999999}", []string{`worker.max_request_bytes: "99999999999999999999999"`}},
		{"bool", "retry: {jitter: sometimes}", []string{`retry.jitter: "sometimes"`, "true or false"}},
		{"float", "retry: {factor: double}", []string{`retry.factor: "double"`, "number"}},
		{"list for an int", "streams: {replicas: [1, 2]}", []string{"streams.replicas:"}},
		{"scalar for a section", "breaker: 5m", []string{"breaker:"}},
		{"scalar for the providers list", "providers: deepseek", []string{"providers:"}},
		{"provider duration", "providers:\n  - {name: a, kind: sim, timeout: forever}", []string{`providers[0].timeout: "forever"`}},
		{"sim duration", sim + "    sim: {latency: slow}\n", []string{`providers[1].sim.latency: "slow"`}},
		{"sim float", sim + "    sim: {failure_rate: often}\n", []string{`providers[1].sim.failure_rate: "often"`}},
		{"sim script duration", sim + "    sim: {script: [{after: 1s, for: 2s}, {after: later}]}\n", []string{`providers[1].sim.script[1].after: "later"`}},
		{"sim script not a list", sim + "    sim: {script: {after: 1s}}\n", []string{"providers[1].sim.script:"}},
		{"unknown nested key", "worker: {concurency: 4}", []string{"worker.concurency:", "unknown"}},
		{"unknown sim key", sim + "    sim: {failure: 1}\n", []string{"providers[1].sim.failure:", "unknown"}},
		{"key given twice", "worker:\n  concurrency: 4\n  concurrency: 5\n", []string{"worker.concurrency:", "twice"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse(%q) = nil error", tc.doc)
			}
			t.Log(err)
			if !strings.HasPrefix(err.Error(), tc.want[0]) {
				t.Errorf("error %q does not start with %q", err, tc.want[0])
			}
			for _, w := range tc.want[1:] {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestLoadValueOfWrongTypeNamesFileAndKey keeps the message shape of every
// other invalid value: "config FILE: key: ...".
func TestLoadValueOfWrongTypeNamesFileAndKey(t *testing.T) {
	t.Setenv(config.EnvVar, "")
	p := filepath.Join(t.TempDir(), "prod.yaml")
	if err := os.WriteFile(p, []byte("breaker:\n  open_for: banana\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := config.Load(p)
	if want := "config " + p + `: breaker.open_for: "banana"`; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Load = %v, want an error starting %q", err, want)
	}
}

// TestParseKeepsYAMLSemantics: walking the document key by key decodes what
// the YAML decoder did: sections merge over the defaults, lists replace them,
// anchors and merge keys work.
func TestParseKeepsYAMLSemantics(t *testing.T) {
	unsetKeys(t)
	doc := `
worker: {concurrency: 3}
retry: &r {min: 1ms, max: 2ms}
providers:
  - &p {name: a, kind: sim, timeout: 3s, sim: {latency: 1ms, script: [{after: 1s, for: 2s, mode: error}]}}
  - <<: *p
    name: b
    sim: {jitter: 2ms}
`
	c, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	d := config.Default()
	if c.Worker.Concurrency != 3 || c.Worker.AckWait != d.Worker.AckWait {
		t.Errorf("worker = %+v", c.Worker)
	}
	if c.Retry.Min != 1e6 || c.Retry.Max != 2e6 || c.Retry.Factor != d.Retry.Factor {
		t.Errorf("retry = %+v", c.Retry)
	}
	if len(c.Providers) != 2 {
		t.Fatalf("providers = %+v", c.Providers)
	}
	a, b := c.Providers[0], c.Providers[1]
	if a.Name != "a" || a.Timeout != 3e9 || a.Sim.Latency != 1e6 || len(a.Sim.Script) != 1 || a.Sim.Script[0].Mode != "error" {
		t.Errorf("providers[0] = %+v", a)
	}
	if b.Name != "b" || b.Kind != "sim" || b.Timeout != 3e9 || b.Sim.Jitter != 2e6 || b.Sim.Latency != 0 {
		t.Errorf("providers[1] = %+v (merged from providers[0], its own sim replacing the merged one)", b)
	}
}
