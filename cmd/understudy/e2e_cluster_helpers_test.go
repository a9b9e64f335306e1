package main

// Helpers of the cluster end-to-end test: a JetStream cluster of real
// nats-server processes on loopback, built from the nats-server module of
// go.mod (offline, through the module cache).

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/understudy-ai/understudy/internal/poll"
)

// e2eNATSBinary builds nats-server into a directory of the test.
func e2eNATSBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nats-server")
	build := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build nats-server: %v\n%s", err, out)
	}
	return bin
}

// e2eNode is one nats-server process of a cluster; it keeps its ports and
// store across restarts.
type e2eNode struct {
	t      *testing.T
	bin    string
	name   string
	conf   string
	port   int
	cmd    *exec.Cmd
	done   chan struct{}
	output *e2eBuffer
}

// e2eCluster is a JetStream cluster of real nats-server processes.
type e2eCluster struct {
	t     *testing.T
	nodes []*e2eNode
}

// e2eStartCluster starts n nats-server processes (n1…nN) clustered on
// loopback, and waits until an R<n> stream can be placed on them.
func e2eStartCluster(t *testing.T, n int) *e2eCluster {
	t.Helper()
	bin := e2eNATSBinary(t)
	dir := t.TempDir()
	clusterPorts := make([]int, n)
	var routes []string
	for i := range n {
		clusterPorts[i] = e2eFreePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", clusterPorts[i]))
	}
	c := &e2eCluster{t: t}
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		node := &e2eNode{t: t, bin: bin, name: name, port: e2eFreePort(t), output: &e2eBuffer{}}
		node.conf = filepath.Join(dir, name+".conf")
		conf := fmt.Sprintf(`server_name: %s
listen: "127.0.0.1:%d"
jetstream { store_dir: %q }
cluster {
  name: understudy
  listen: "127.0.0.1:%d"
  routes: [%s]
}
`, name, node.port, filepath.Join(dir, name), clusterPorts[i], strings.Join(routes, ", "))
		if err := os.WriteFile(node.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, node)
		node.start()
	}
	for _, node := range c.nodes {
		node.waitListening()
	}
	t.Cleanup(func() {
		for _, node := range c.nodes {
			node.kill()
			if t.Failed() {
				t.Logf("%s output:\n%s", node.name, e2eTail(node.output.String(), 3000))
			}
		}
	})
	_, js := e2eClient(t, c.urls())
	poll.Until(t, 30*time.Second, "the cluster to place a stream on every node", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PLACEMENT_CHECK", Subjects: []string{"placement.check"}, Replicas: n})
		if err != nil {
			return false
		}
		_ = js.DeleteStream(ctx, "PLACEMENT_CHECK")
		return true
	})
	return c
}

func (n *e2eNode) start() {
	n.t.Helper()
	n.cmd = exec.Command(n.bin, "-c", n.conf)
	n.cmd.Stdout, n.cmd.Stderr = n.output, n.output
	if err := n.cmd.Start(); err != nil {
		n.t.Fatalf("start %s: %v", n.name, err)
	}
	done := make(chan struct{})
	cmd := n.cmd
	go func() { _ = cmd.Wait(); close(done) }()
	n.done = done
}

// waitListening waits until the node accepts client connections.
func (n *e2eNode) waitListening() {
	n.t.Helper()
	poll.Until(n.t, 10*time.Second, n.name+" to listen", func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", n.port), time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// kill ends the process with SIGKILL (if it runs) and waits for it.
func (n *e2eNode) kill() {
	if n.cmd == nil {
		return
	}
	select {
	case <-n.done:
	default:
		_ = n.cmd.Process.Signal(syscall.SIGKILL)
		<-n.done
	}
}

func (c *e2eCluster) urls() string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.port))
	}
	return strings.Join(urls, ",")
}

// node is the node named name.
func (c *e2eCluster) node(name string) *e2eNode {
	c.t.Helper()
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	c.t.Fatalf("no node named %q", name)
	return nil
}

// e2eStreamLeader names the server leading stream ("" while none does).
func e2eStreamLeader(js jetstream.JetStream, stream string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return ""
	}
	if info := st.CachedInfo(); info.Cluster != nil {
		return info.Cluster.Leader
	}
	return ""
}
