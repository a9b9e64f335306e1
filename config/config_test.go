package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/understudy/breaker"
	"github.com/understudy-ai/understudy/broker"
	"github.com/understudy-ai/understudy/config"
	"github.com/understudy-ai/understudy/providers"
	"github.com/understudy-ai/understudy/worker"
)

// specYAML is the configuration of SPEC §6, verbatim.
const specYAML = `nats:
  url: ""                 # empty: start an embedded JetStream server, data under store_dir
  store_dir: ./data/nats
  creds: ""               # optional credentials file; user/password/token/TLS also accepted
subjects: {prefix: chat}
streams: {replicas: 1, requests_max_age: 168h}
worker: {concurrency: 64, request_ttl: 2m, ack_wait: 30s, max_deliveries: 0,   # 0: bounded by the deadline only
         requeue_min: 1s, requeue_max: 1m, max_request_bytes: 262144, shutdown_grace: 30s}
retry: {min: 250ms, max: 10s, factor: 2, jitter: true}
breaker: {consecutive_failures: 5, open_for: 5m}
metrics: {listen: "127.0.0.1:9090"}
log: {level: info}         # debug | info | warn | error; JSON on stderr
providers:
  - {name: deepseek, kind: openai, base_url: "https://api.deepseek.com/v1", model: deepseek-chat,
     api_key_env: DEEPSEEK_API_KEY, timeout: 30s}
  - {name: llama, kind: openai, base_url: "https://api.together.xyz/v1",
     model: meta-llama/Llama-3.3-70B-Instruct-Turbo, api_key_env: TOGETHER_API_KEY, timeout: 30s}
  - {name: qwen, kind: openai, base_url: "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
     model: qwen2.5-72b-instruct, api_key_env: DASHSCOPE_API_KEY, timeout: 30s}
`

var keyEnvs = []string{"DEEPSEEK_API_KEY", "TOGETHER_API_KEY", "DASHSCOPE_API_KEY"}

// setKeys sets the three API key variables of SPEC §6 for the test.
func setKeys(t *testing.T) {
	t.Helper()
	for _, k := range keyEnvs {
		t.Setenv(k, "test-key-"+k)
	}
}

// unsetKeys makes sure the three API key variables are unset for the test
// (t.Setenv restores them afterwards).
func unsetKeys(t *testing.T) {
	t.Helper()
	for _, k := range keyEnvs {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// specProviders is the providers list of SPEC §6.
func specProviders() []providers.Config {
	return []providers.Config{
		{Name: "deepseek", Kind: "openai", BaseURL: "https://api.deepseek.com/v1", Model: "deepseek-chat",
			APIKeyEnv: "DEEPSEEK_API_KEY", Timeout: 30 * time.Second},
		{Name: "llama", Kind: "openai", BaseURL: "https://api.together.xyz/v1",
			Model: "meta-llama/Llama-3.3-70B-Instruct-Turbo", APIKeyEnv: "TOGETHER_API_KEY", Timeout: 30 * time.Second},
		{Name: "qwen", Kind: "openai", BaseURL: "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
			Model: "qwen2.5-72b-instruct", APIKeyEnv: "DASHSCOPE_API_KEY", Timeout: 30 * time.Second},
	}
}

// checkSpecDefaults checks every value SPEC §6 gives.
func checkSpecDefaults(t *testing.T, c config.Config) {
	t.Helper()
	checks := []struct {
		key       string
		got, want any
	}{
		{"nats.url", c.NATS.URL, ""},
		{"nats.store_dir", c.NATS.StoreDir, "./data/nats"},
		{"nats.creds", c.NATS.Creds, ""},
		{"subjects.prefix", c.Subjects.Prefix, "chat"},
		{"streams.replicas", c.Streams.Replicas, 1},
		{"streams.requests_max_age", c.Streams.RequestsMaxAge, 168 * time.Hour},
		{"streams.replies_dedup_window", c.Streams.RepliesDedupWindow, time.Hour},
		{"streams.claims_ttl", c.Streams.ClaimsTTL, 24 * time.Hour},
		{"worker.concurrency", c.Worker.Concurrency, 64},
		{"worker.request_ttl", c.Worker.RequestTTL, 2 * time.Minute},
		{"worker.ack_wait", c.Worker.AckWait, 30 * time.Second},
		{"worker.max_deliveries", c.Worker.MaxDeliveries, 0},
		{"worker.requeue_min", c.Worker.RequeueMin, time.Second},
		{"worker.requeue_max", c.Worker.RequeueMax, time.Minute},
		{"worker.max_request_bytes", c.Worker.MaxRequestBytes, 262144},
		{"worker.max_metadata_bytes", c.Worker.MaxMetadataBytes, 16384},
		{"worker.shutdown_grace", c.Worker.ShutdownGrace, 30 * time.Second},
		{"retry.min", c.Retry.Min, 250 * time.Millisecond},
		{"retry.max", c.Retry.Max, 10 * time.Second},
		{"retry.factor", c.Retry.Factor, 2.0},
		{"retry.jitter", c.Retry.Jitter, true},
		{"breaker.consecutive_failures", c.Breaker.ConsecutiveFailures, 5},
		{"breaker.open_for", c.Breaker.OpenFor, 5 * time.Minute},
		{"metrics.listen", c.Metrics.Listen, "127.0.0.1:9090"},
		{"log.level", c.Log.Level, "info"},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %#v, want %#v", ch.key, ch.got, ch.want)
		}
	}
	if !reflect.DeepEqual(c.Providers, specProviders()) {
		t.Errorf("providers = %+v\nwant %+v", c.Providers, specProviders())
	}
}

func TestParseSpecExample(t *testing.T) {
	setKeys(t)
	c, err := config.Parse([]byte(specYAML))
	if err != nil {
		t.Fatalf("Parse(SPEC §6): %v", err)
	}
	checkSpecDefaults(t, c)
	if got := c.SubjectScheme().Request("c-42"); got != "chat.requests.c-42" {
		t.Errorf("SubjectScheme().Request = %q", got)
	}
	// The keys are only needed to build the providers.
	for i, pc := range c.Providers {
		b, err := providers.Build(pc, 1)
		if err != nil {
			t.Errorf("providers[%d]: Build: %v", i, err)
			continue
		}
		if b.Timeout != 30*time.Second {
			t.Errorf("providers[%d]: built timeout %s", i, b.Timeout)
		}
		_ = b.Close()
	}
}

func TestParseEmptyIsDefaults(t *testing.T) {
	unsetKeys(t)
	for name, doc := range map[string]string{
		"empty":         "",
		"whitespace":    "\n  \n",
		"comments only": "# nothing here\n# at all\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, err := config.Parse([]byte(doc))
			if err != nil {
				t.Fatalf("Parse(%q): %v", doc, err)
			}
			checkSpecDefaults(t, c)
			if !reflect.DeepEqual(c, config.Default()) {
				t.Errorf("Parse(%q) = %+v, want Default() %+v", doc, c, config.Default())
			}
		})
	}
}

// TestParseValues checks that non-default values land in the struct and that
// a partial section keeps the defaults of the keys it does not name.
func TestParseValues(t *testing.T) {
	unsetKeys(t)
	doc := `
nats:
  url: "nats://a:4222,nats://b:4222"
  user: u
  password: p
  token: tok
subjects: {prefix: shadow.v2}
streams: {replicas: 3, requests_max_age: 24h, replies_dedup_window: 30m, claims_ttl: 36h}
worker: {concurrency: 8, request_ttl: 90s, ack_wait: 1s, max_deliveries: 5,
         requeue_min: 500ms, requeue_max: 500ms, max_request_bytes: 256, max_metadata_bytes: 2048, shutdown_grace: 0s}
retry: {min: 0s, max: 1s, factor: 1.5, jitter: false}
breaker: {consecutive_failures: 1, open_for: 1ms}
metrics: {listen: ""}
log: {level: debug}
providers:
  - {name: local, kind: openai, base_url: "http://127.0.0.1:8000/v1", model: m}
  - name: sim-1
    kind: sim
    sim: {latency: 10ms, jitter: 5ms, failure_rate: 0.25, retry_after: 2s,
          script: [{after: 1s, for: 2s, mode: error}]}
`
	c, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	wantNATS := broker.Config{URL: "nats://a:4222,nats://b:4222", StoreDir: "./data/nats", Listen: "127.0.0.1:4222",
		User: "u", Password: "p", Token: "tok"}
	if !reflect.DeepEqual(c.NATS, wantNATS) {
		t.Errorf("nats = %+v, want %+v", c.NATS, wantNATS)
	}
	if c.Subjects.Prefix != "shadow.v2" || c.SubjectScheme().Stream("REQUESTS") != "SHADOW_V2_REQUESTS" {
		t.Errorf("subjects.prefix = %q", c.Subjects.Prefix)
	}
	if want := (broker.StreamsConfig{Replicas: 3, RequestsMaxAge: 24 * time.Hour, RepliesDedupWindow: 30 * time.Minute,
		ClaimsTTL: 36 * time.Hour}); c.Streams != want {
		t.Errorf("streams = %+v, want %+v", c.Streams, want)
	}
	wantWorker := worker.Config{Concurrency: 8, RequestTTL: 90 * time.Second, AckWait: time.Second, MaxDeliveries: 5,
		RequeueMin: 500 * time.Millisecond, RequeueMax: 500 * time.Millisecond, MaxRequestBytes: 256, MaxMetadataBytes: 2048}
	if c.Worker != wantWorker {
		t.Errorf("worker = %+v, want %+v", c.Worker, wantWorker)
	}
	if want := (worker.RetryConfig{Min: 0, Max: time.Second, Factor: 1.5}); c.Retry != want {
		t.Errorf("retry = %+v, want %+v", c.Retry, want)
	}
	if want := (breaker.Config{ConsecutiveFailures: 1, OpenFor: time.Millisecond}); c.Breaker != want {
		t.Errorf("breaker = %+v, want %+v", c.Breaker, want)
	}
	if c.Metrics.Listen != "" || c.Log.Level != "debug" {
		t.Errorf("metrics/log = %+v %+v", c.Metrics, c.Log)
	}
	if len(c.Providers) != 2 {
		t.Fatalf("providers: %d entries, want 2 (the file's list replaces the default one)", len(c.Providers))
	}
	p0, p1 := c.Providers[0], c.Providers[1]
	if p0.Name != "local" || p0.APIKeyEnv != "" || p0.Timeout != 30*time.Second {
		t.Errorf("providers[0] = %+v (timeout must default to 30s)", p0)
	}
	if p1.Kind != "sim" || p1.Model != "sim-sim-1" || p1.Timeout != 30*time.Second ||
		p1.Sim.Latency != 10*time.Millisecond || p1.Sim.Jitter != 5*time.Millisecond || p1.Sim.FailureRate != 0.25 ||
		p1.Sim.RetryAfter != 2*time.Second || len(p1.Sim.Script) != 1 || p1.Sim.Script[0].For != 2*time.Second {
		t.Errorf("providers[1] = %+v", p1)
	}

	// A section naming one key keeps the others' defaults.
	c, err = config.Parse([]byte("worker: {concurrency: 3}\nretry: {jitter: false}\n"))
	if err != nil {
		t.Fatal(err)
	}
	wantWorker = worker.DefaultConfig()
	wantWorker.Concurrency = 3
	if c.Worker != wantWorker {
		t.Errorf("worker = %+v, want defaults but concurrency 3: %+v", c.Worker, wantWorker)
	}
	if want := (worker.RetryConfig{Min: 250 * time.Millisecond, Max: 10 * time.Second, Factor: 2}); c.Retry != want {
		t.Errorf("retry = %+v, want %+v", c.Retry, want)
	}
}

func TestParseInvalid(t *testing.T) {
	unsetKeys(t)
	dir := t.TempDir()
	certFile := filepath.Join(dir, "client.pem")
	if err := os.WriteFile(certFile, []byte("not really a cert"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.creds")
	const p0 = "providers:\n  - {name: a, kind: openai, base_url: \"https://x/v1\", model: m}\n"

	cases := []struct {
		name string
		doc  string
		// want are pieces of the error text; the first is the key it names.
		want []string
	}{
		{"worker.concurrency 0", "worker: {concurrency: 0}", []string{"worker.concurrency"}},
		{"worker.concurrency negative", "worker: {concurrency: -1}", []string{"worker.concurrency"}},
		{"worker.concurrency too large", "worker: {concurrency: 10001}", []string{"worker.concurrency"}},
		{"worker.ack_wait 500ms", "worker: {ack_wait: 500ms}", []string{"worker.ack_wait", "500ms"}},
		{"worker.requeue_max below requeue_min", "worker: {requeue_min: 10s, requeue_max: 5s}", []string{"worker.requeue_max"}},
		{"worker.requeue_min 0", "worker: {requeue_min: 0s}", []string{"worker.requeue_min"}},
		{"worker.request_ttl 0", "worker: {request_ttl: 0s}", []string{"worker.request_ttl"}},
		{"worker.request_ttl beyond streams.requests_max_age", "worker: {request_ttl: 200h}", []string{"worker.request_ttl", "streams.requests_max_age"}},
		{"worker.max_deliveries negative", "worker: {max_deliveries: -1}", []string{"worker.max_deliveries"}},
		{"worker.max_request_bytes too small", "worker: {max_request_bytes: 100}", []string{"worker.max_request_bytes"}},
		{"worker.max_metadata_bytes too large", "worker: {max_metadata_bytes: 1000000}", []string{"worker.max_metadata_bytes"}},
		{"worker.shutdown_grace negative", "worker: {shutdown_grace: -1s}", []string{"worker.shutdown_grace"}},
		{"worker.ack_wait not a duration", "worker: {ack_wait: soon}", []string{"soon"}},
		{"worker.ack_wait a bare number", "worker: {ack_wait: 30}", []string{"30"}},
		{"retry.factor 0.5", "retry: {factor: 0.5}", []string{"retry.factor", "0.5"}},
		{"retry.max below retry.min", "retry: {min: 2s, max: 1s}", []string{"retry.max"}},
		{"retry.min negative", "retry: {min: -1s}", []string{"retry.min"}},
		{"breaker.consecutive_failures 0", "breaker: {consecutive_failures: 0}", []string{"breaker.consecutive_failures"}},
		{"breaker.open_for -1s", "breaker: {open_for: -1s}", []string{"breaker.open_for", "-1s"}},
		{"breaker.open_for 0", "breaker: {open_for: 0s}", []string{"breaker.open_for"}},
		{"log.level verbose", "log: {level: verbose}", []string{"log.level", "verbose"}},
		{"metrics.listen without a port", "metrics: {listen: localhost}", []string{"metrics.listen", "localhost"}},
		{"log.level in capitals", "log: {level: INFO}", []string{"log.level"}},
		{"subjects.prefix a.*", `subjects: {prefix: "a.*"}`, []string{"subjects.prefix", "a.*"}},
		{"subjects.prefix empty", `subjects: {prefix: ""}`, []string{"subjects.prefix"}},
		{"subjects.prefix with >", `subjects: {prefix: "chat.>"}`, []string{"subjects.prefix"}},
		{"streams.replicas 7", "streams: {replicas: 7}", []string{"streams.replicas", "7"}},
		{"streams.replicas 0", "streams: {replicas: 0}", []string{"streams.replicas"}},
		{"streams.requests_max_age 1m", "streams: {requests_max_age: 1m}", []string{"streams.requests_max_age"}},
		{"streams.replies_dedup_window 30s", "streams: {replies_dedup_window: 30s}", []string{"streams.replies_dedup_window", "30s"}},
		{"streams.replies_dedup_window beyond the replies' life", "streams: {replies_dedup_window: 25h}", []string{"streams.replies_dedup_window", "25h"}},
		{"streams.replies_dedup_window below worker.request_ttl", "worker: {request_ttl: 10m}\nstreams: {replies_dedup_window: 5m}", []string{"streams.replies_dedup_window", "worker.request_ttl"}},
		{"streams.replies_dedup_window not a duration", "streams: {replies_dedup_window: forever}", []string{"streams.replies_dedup_window", "forever"}},
		{"streams.claims_ttl 0", "streams: {claims_ttl: 0s}", []string{"streams.claims_ttl"}},
		{"streams.claims_ttl below worker.request_ttl", "worker: {request_ttl: 2h}\nstreams: {replies_dedup_window: 3h, claims_ttl: 1h}", []string{"streams.claims_ttl", "worker.request_ttl"}},
		{"streams.claims_ttl not a duration", "streams: {claims_ttl: 7}", []string{"streams.claims_ttl", "7"}},
		{"providers empty list", "providers: []", []string{"providers"}},
		{"providers null", "providers:", []string{"providers"}},
		{"providers[1].kind foo", p0 + "  - {name: b, kind: foo}", []string{"providers[1].kind", "foo"}},
		{"providers[0].kind missing", "providers:\n  - {name: a}", []string{"providers[0].kind"}},
		{"providers[0].base_url ftp://x", "providers:\n  - {name: a, kind: openai, base_url: \"ftp://x\", model: m}", []string{"providers[0].base_url", "ftp://x"}},
		{"providers[0].base_url missing", "providers:\n  - {name: a, kind: openai, model: m}", []string{"providers[0].base_url"}},
		{"providers[0].base_url without host", "providers:\n  - {name: a, kind: openai, base_url: \"https:///v1\", model: m}", []string{"providers[0].base_url"}},
		{"providers[0].model missing", "providers:\n  - {name: a, kind: openai, base_url: \"https://x/v1\"}", []string{"providers[0].model"}},
		{"providers[0].name missing", "providers:\n  - {kind: sim}", []string{"providers[0].name"}},
		{"providers[0].name with a dot", "providers:\n  - {name: a.b, kind: sim}", []string{"providers[0].name"}},
		{"providers[0].name of 65 characters", "providers:\n  - {name: " + strings.Repeat("n", 65) + ", kind: sim}", []string{"providers[0].name"}},
		{"providers[0].timeout negative", "providers:\n  - {name: a, kind: sim, timeout: -1s}", []string{"providers[0].timeout"}},
		{"duplicate provider names", p0 + "  - {name: a, kind: sim}", []string{"providers[1].name", `"a"`, "twice"}},
		{"sim provider with sim.failure_rate 2", "providers:\n  - {name: s, kind: sim, sim: {failure_rate: 2}}", []string{"providers[0].sim.failure_rate"}},
		{"sim provider with negative latency", "providers:\n  - {name: s, kind: sim, sim: {latency: -1s}}", []string{"providers[0].sim.latency"}},
		{"unknown top-level key workers", "workers: {concurrency: 4}", []string{"workers"}},
		{"unknown nested key", "worker: {concurency: 4}", []string{"concurency"}},
		{"unknown provider key", "providers:\n  - {name: s, kind: sim, api_key: secret}", []string{"api_key"}},
		{"unknown sim key", "providers:\n  - {name: s, kind: sim, sim: {failure: 1}}", []string{"failure"}},
		{"wrong type", "worker: {concurrency: many}", []string{"many"}},
		{"not a mapping", "- a\n- b\n", []string{"expected a mapping", "list"}},
		{"nats.creds pointing at a missing file", "nats: {creds: " + missing + "}", []string{"nats.creds", "missing.creds"}},
		{"nats.tls.ca missing file", "nats: {tls: {ca: " + missing + "}}", []string{"nats.tls.ca"}},
		{"nats.tls.cert without key", "nats: {tls: {cert: " + certFile + "}}", []string{"nats.tls.cert", "nats.tls.key"}},
		{"nats.tls.key without cert", "nats: {tls: {key: " + certFile + "}}", []string{"nats.tls.key"}},
		{"nats.password without user", "nats: {password: p}", []string{"nats.user"}},
		{"nats.store_dir empty with the embedded server", `nats: {store_dir: ""}`, []string{"nats.store_dir"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse(%q) = nil error", tc.doc)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestParseBadSimMode: a bad sim script mode is refused, and the message
// should name its key like every other invalid value.
func TestParseBadSimMode(t *testing.T) {
	_, err := config.Parse([]byte("providers:\n  - {name: s, kind: sim, sim: {script: [{for: 1s, mode: exploding}]}}"))
	if err == nil || !strings.Contains(err.Error(), "exploding") {
		t.Fatalf("Parse with sim.script[0].mode exploding: %v, want an error naming the value", err)
	}
	if !strings.Contains(err.Error(), "script[0].mode") && !strings.Contains(err.Error(), "line ") {
		t.Fatalf("error %q names neither the key nor a line: sim.Mode.UnmarshalText (providers/sim/server.go:44) fails inside the YAML decoder, so the key-naming check of sim.Config.Validate (server.go:92) is never reached", err)
	}
}

// TestParseAPIKeyEnvUnset pins where a missing API key is caught: not when
// the file is read (send and replay need no key, providers/config.go), but
// when the provider is built for serve and demo, with a message naming the
// variable and the provider.
func TestParseAPIKeyEnvUnset(t *testing.T) {
	unsetKeys(t)
	t.Setenv("UNDERSTUDY_TEST_UNSET_KEY", "")
	os.Unsetenv("UNDERSTUDY_TEST_UNSET_KEY")
	doc := "providers:\n  - {name: a, kind: openai, base_url: \"https://x/v1\", model: m, api_key_env: UNDERSTUDY_TEST_UNSET_KEY}\n"
	c, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v (an unset api_key_env variable is only an error when the provider is built)", err)
	}
	_, err = providers.Build(c.Providers[0], 1)
	if !errors.Is(err, providers.ErrMissingKey) {
		t.Fatalf("Build with providers[0].api_key_env unset: err = %v, want ErrMissingKey", err)
	}
	for _, w := range []string{"UNDERSTUDY_TEST_UNSET_KEY", "api_key_env", "a"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
	// Set but empty is unset too.
	t.Setenv("UNDERSTUDY_TEST_UNSET_KEY", "")
	if _, err := providers.Build(c.Providers[0], 1); !errors.Is(err, providers.ErrMissingKey) {
		t.Errorf("Build with the variable set to \"\": err = %v, want ErrMissingKey", err)
	}
	// A provider without api_key_env (a local vLLM, say) needs no key.
	doc = "providers:\n  - {name: a, kind: openai, base_url: \"http://127.0.0.1:8000/v1\", model: m}\n"
	if c, err = config.Parse([]byte(doc)); err != nil {
		t.Fatal(err)
	}
	b, err := providers.Build(c.Providers[0], 1)
	if err != nil {
		t.Fatalf("Build without api_key_env: %v", err)
	}
	_ = b.Close()
}

// TestParseValidatesCredsFiles checks that existing files are accepted.
func TestParseValidatesCredsFiles(t *testing.T) {
	unsetKeys(t)
	dir := t.TempDir()
	var paths []string
	for _, n := range []string{"user.creds", "ca.pem", "cert.pem", "key.pem"} {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	doc := "nats: {url: \"nats://x:4222\", creds: " + paths[0] + ", tls: {ca: " + paths[1] + ", cert: " + paths[2] + ", key: " + paths[3] + "}}\n"
	c, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if c.NATS.Creds != paths[0] || c.NATS.TLS.CA != paths[1] || c.NATS.TLS.Cert != paths[2] || c.NATS.TLS.Key != paths[3] {
		t.Errorf("nats = %+v", c.NATS)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, doc string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	explicit := write("explicit.yaml", "log: {level: debug}\n")
	fromEnv := write("env.yaml", "log: {level: warn}\n")
	bad := write("bad.yaml", "log: {level: verbose}\n")

	t.Run("explicit path", func(t *testing.T) {
		t.Setenv(config.EnvVar, "")
		c, err := config.Load(explicit)
		if err != nil {
			t.Fatal(err)
		}
		if c.Log.Level != "debug" {
			t.Errorf("log.level = %q, want debug", c.Log.Level)
		}
	})
	t.Run("explicit path wins over UNDERSTUDY_CONFIG", func(t *testing.T) {
		t.Setenv(config.EnvVar, fromEnv)
		c, err := config.Load(explicit)
		if err != nil {
			t.Fatal(err)
		}
		if c.Log.Level != "debug" {
			t.Errorf("log.level = %q, want debug (from the explicit path)", c.Log.Level)
		}
	})
	t.Run("UNDERSTUDY_CONFIG fallback", func(t *testing.T) {
		t.Setenv(config.EnvVar, fromEnv)
		c, err := config.Load("")
		if err != nil {
			t.Fatal(err)
		}
		if c.Log.Level != "warn" {
			t.Errorf("log.level = %q, want warn (from %s)", c.Log.Level, config.EnvVar)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		t.Setenv(config.EnvVar, "")
		p := filepath.Join(dir, "nope.yaml")
		_, err := config.Load(p)
		if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), p) {
			t.Errorf("Load(missing) = %v, want a not-exist error naming %s", err, p)
		}
	})
	t.Run("missing file named by UNDERSTUDY_CONFIG", func(t *testing.T) {
		p := filepath.Join(dir, "nope-env.yaml")
		t.Setenv(config.EnvVar, p)
		_, err := config.Load("")
		if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), p) {
			t.Errorf("Load(\"\") with %s=%s: %v, want a not-exist error naming the file", config.EnvVar, p, err)
		}
	})
	t.Run("invalid file names the file and the key", func(t *testing.T) {
		t.Setenv(config.EnvVar, "")
		_, err := config.Load(bad)
		if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "log.level") {
			t.Errorf("Load(bad) = %v, want an error naming %s and log.level", err, bad)
		}
	})
	t.Run("a directory is not a file", func(t *testing.T) {
		t.Setenv(config.EnvVar, "")
		if _, err := config.Load(dir); err == nil {
			t.Errorf("Load(directory) = nil error")
		}
	})
	t.Run("no path and no env: defaults", func(t *testing.T) {
		t.Setenv(config.EnvVar, "")
		os.Unsetenv(config.EnvVar)
		unsetKeys(t)
		c, err := config.Load("")
		// Load validates the defaults, and Validate does not look at the
		// API key variables: the default configuration loads without keys.
		if err != nil {
			t.Fatalf("Load(\"\") with no file and no keys: %v", err)
		}
		checkSpecDefaults(t, c)
		// It is not servable as it is, though: the first provider cannot
		// be built without DEEPSEEK_API_KEY (service.Start fails with
		// "providers[0]: missing API key ...").
		_, err = providers.Build(c.Providers[0], c.Worker.Concurrency)
		if !errors.Is(err, providers.ErrMissingKey) || !strings.Contains(err.Error(), "DEEPSEEK_API_KEY") {
			t.Errorf("Build(default providers[0]) without keys: %v, want ErrMissingKey naming DEEPSEEK_API_KEY", err)
		}
	})
	t.Run("no path and no env, keys set: defaults build", func(t *testing.T) {
		t.Setenv(config.EnvVar, "")
		setKeys(t)
		c, err := config.Load("")
		if err != nil {
			t.Fatal(err)
		}
		for i, pc := range c.Providers {
			b, err := providers.Build(pc, 1)
			if err != nil {
				t.Errorf("providers[%d]: %v", i, err)
				continue
			}
			_ = b.Close()
		}
	})
}

// TestDefaultValidates checks Default() on its own.
func TestDefaultValidates(t *testing.T) {
	c := config.Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	checkSpecDefaults(t, c)
	// Default returns a fresh value every time: changing one must not
	// change the next.
	c.Providers[0].Name = "changed"
	if config.Default().Providers[0].Name != "deepseek" {
		t.Errorf("Default() shares its providers slice between calls")
	}
}
