package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// chainLink is one provider of a generated worker configuration.
type chainLink struct {
	name, url string
}

// workerConfig is the configuration file of the bench's worker processes.
type workerConfig struct {
	natsURL     string
	prefix      string
	concurrency int
	// failuresToOpen is breaker.consecutive_failures.
	failuresToOpen int
	metricsPort    int
	// ordering is worker.ordering; "conversation" also sets
	// worker.max_deliveries: 0, which it needs. Default "": none.
	ordering string
	chain    []chainLink
}

// yaml renders the configuration. The retry backoff between providers is
// 1 ms so that a fallback measures the pipeline, not a sleep; the breaker,
// once open, stays open for the run.
func (c workerConfig) yaml() string {
	var b strings.Builder
	fmt.Fprintf(&b, `nats: {url: %q}
subjects: {prefix: %q}
streams: {replicas: 1}
worker: {concurrency: %d, request_ttl: 10m, ack_wait: 30s, shutdown_grace: 10s%s}
retry: {min: 1ms, max: 1ms, factor: 2, jitter: false}
breaker: {consecutive_failures: %d, open_for: 1h}
metrics: {listen: "127.0.0.1:%d"}
log: {level: warn}
providers:
`, c.natsURL, c.prefix, c.concurrency, c.orderingYAML(), c.failuresToOpen, c.metricsPort)
	for _, l := range c.chain {
		fmt.Fprintf(&b, "  - {name: %s, kind: openai, base_url: %q, model: sim-1, timeout: 30s}\n", l.name, l.url)
	}
	return b.String()
}

func (c workerConfig) orderingYAML() string {
	if c.ordering == "" {
		return ""
	}
	return fmt.Sprintf(", max_deliveries: 0, ordering: %s", c.ordering)
}

// workerProc is one `understudy serve` process, or a floor's (the
// measured processes that stand for workers).
type workerProc struct {
	name    string
	cmd     *exec.Cmd
	port    int
	stderr  *tail
	done    chan struct{}
	profile string // CPU profile file ("" when not profiling)
}

// startWorker writes c to dir and runs `bin serve` on it. profile, when not
// empty, is where the process writes a CPU profile between two SIGUSR1.
func startWorker(bin, dir, name string, c workerConfig, profile string) (*workerProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c.metricsPort = port
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, []byte(c.yaml()), 0o600); err != nil {
		return nil, err
	}
	var env []string
	if profile != "" {
		env = append(env, EnvCPUProfile+"="+profile)
	}
	return startProc(name, port, profile, env, bin, "serve", "--config", path, "--name", name)
}

// startProc runs bin with args as one of the bench's measured processes,
// ready once http://127.0.0.1:port/readyz answers 200; env is added to the
// bench's own (without its configuration and role).
func startProc(name string, port int, profile string, env []string, bin string, args ...string) (*workerProc, error) {
	w := &workerProc{name: name, port: port, stderr: &tail{max: 16 << 10}, done: make(chan struct{}), profile: profile}
	w.cmd = exec.Command(bin, args...)
	w.cmd.Env = append(withoutConfigEnv(os.Environ()), env...)
	w.cmd.Stdout, w.cmd.Stderr = w.stderr, w.stderr
	dieWithParent(w.cmd)
	if err := w.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = w.cmd.Wait(); close(w.done) }()
	return w, nil
}

func withoutConfigEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "UNDERSTUDY_CONFIG=") && !strings.HasPrefix(kv, EnvRole+"=") {
			out = append(out, kv)
		}
	}
	return out
}

var readyClient = &http.Client{Timeout: time.Second}

// waitReady polls /readyz until it answers 200.
func (w *workerProc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-w.done:
			return fmt.Errorf("%s exited while starting: %s", w.name, w.stderr)
		default:
		}
		resp, err := readyClient.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", w.port))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s: %s", w.name, timeout, w.stderr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (w *workerProc) pid() int { return w.cmd.Process.Pid }

// toggleProfile sends SIGUSR1: the first starts the CPU profile, the second
// stops it. After the second it waits for the file to be written.
func (w *workerProc) toggleProfile(stop bool) error {
	if w.profile == "" {
		return nil
	}
	if err := w.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return err
	}
	if !stop {
		// Give the process a moment to start the profile before the load.
		time.Sleep(50 * time.Millisecond)
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(w.profile); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s wrote no CPU profile to %s within 10s", w.name, w.profile)
}

// gone says whether the process exited before the bench stopped it (a
// crash during the measurement), with its exit status and the end of its
// output; nil while it runs.
func (w *workerProc) gone() error {
	select {
	case <-w.done:
		return fmt.Errorf("%s exited during the measurement (%v): %s", w.name, w.cmd.ProcessState, w.stderr)
	default:
		return nil
	}
}

// stopAll stops ws, and fails when one of them had exited by itself.
func stopAll(ws []*workerProc) error {
	var errs []error
	for _, w := range ws {
		errs = append(errs, w.gone())
	}
	for _, w := range ws {
		w.stop()
	}
	return errors.Join(errs...)
}

// stop sends SIGTERM and waits for the drain; the process is killed after
// 30 s.
func (w *workerProc) stop() {
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.done
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// tail keeps the last max bytes written to it (a child's stderr, for error
// messages).
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.b))
	if s == "" {
		return "(no output)"
	}
	return s
}
