package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Environment of the bench's own child processes.
const (
	// EnvRole set to RoleNATS makes `understudy bench` serve a JetStream
	// server (ServeNATS) instead of benchmarking.
	EnvRole = "UNDERSTUDY_BENCH_ROLE"
	// RoleNATS is the role of the server child.
	RoleNATS = "nats-server"
	// RoleFloor makes `understudy bench` run a floor's loop (ServeFloor),
	// on the FloorSpec JSON in EnvFloor.
	RoleFloor = "floor"
	EnvFloor  = "UNDERSTUDY_BENCH_FLOOR"
	// EnvCPUProfile names the file a worker child writes its CPU profile
	// to: profiling starts at its first SIGUSR1 and stops at the second.
	EnvCPUProfile = "UNDERSTUDY_BENCH_CPUPROFILE"
)

// NATSVersion is the version of the nats-server library the bench embeds.
const NATSVersion = server.VERSION

// ServeNATS runs a JetStream server storing under a temporary directory on a
// free loopback port, prints its URL on stdout, and serves until ctx ends
// or stdin closes (the bench that started it went away).
func ServeNATS(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	dir, err := os.MkdirTemp("", "understudy-bench-nats-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: dir, Host: "127.0.0.1", Port: -1,
		NoLog: true, NoSigs: true})
	if err != nil {
		return err
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(20 * time.Second) {
		return fmt.Errorf("nats-server not ready within 20s")
	}
	fmt.Fprintln(stdout, ns.ClientURL())
	gone := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, stdin); close(gone) }()
	select {
	case <-ctx.Done():
	case <-gone:
	}
	return nil
}

// natsChild is the JetStream server the bench runs in a child process of
// its own (the default), so that the server's CPU is counted apart.
type natsChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	url   string
	done  chan struct{}
}

func startNATS(bin string) (*natsChild, error) {
	cmd := exec.Command(bin, "bench")
	cmd.Env = append(os.Environ(), EnvRole+"="+RoleNATS)
	cmd.Stderr = os.Stderr
	dieWithParent(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the nats-server child: %w", err)
	}
	c := &natsChild{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		if s.Scan() {
			line <- strings.TrimSpace(s.Text())
		}
		close(line)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case url, ok := <-line:
		if ok && strings.HasPrefix(url, "nats://") {
			c.url = url
			return c, nil
		}
	case <-time.After(30 * time.Second):
	}
	c.stop()
	return nil, fmt.Errorf("the nats-server child did not start")
}

func (c *natsChild) pid() int { return c.cmd.Process.Pid }

// stop closes the child's stdin (it shuts down) and kills it if it has not
// exited within 10 s.
func (c *natsChild) stop() {
	_ = c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}
