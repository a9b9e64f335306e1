// Package natscluster runs a JetStream cluster of embedded nats-servers on
// loopback, each node storing under its own directory, and lets a caller
// stop a node and start it again with its store: the cluster of
// `understudy demo --cluster` and of the tests that lose a node.
package natscluster

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// readyWithin bounds how long a node may take to accept connections.
const readyWithin = 10 * time.Second

// Cluster is a running cluster of embedded nats-servers.
type Cluster struct {
	mu    sync.Mutex
	nodes []*node
}

type node struct {
	opts *server.Options
	srv  *server.Server // nil while stopped
}

// Start starts n nodes named n1…nN clustered on loopback, node i storing
// under dir/ni, and waits until they have elected a JetStream meta leader.
func Start(dir string, n int) (*Cluster, error) {
	if n < 1 {
		return nil, errors.New("natscluster: no nodes")
	}
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	routes := make([]string, n)
	for i := range n {
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i])
	}
	c := &Cluster{}
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		c.nodes = append(c.nodes, &node{opts: &server.Options{
			ServerName: name,
			Host:       "127.0.0.1",
			Port:       ports[i],
			JetStream:  true,
			StoreDir:   filepath.Join(dir, name),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "understudy", Host: "127.0.0.1", Port: ports[n+i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}})
	}
	for i := range c.nodes {
		if err := c.Restart(i); err != nil {
			c.Shutdown()
			return nil, err
		}
	}
	if err := c.WaitReady(readyWithin); err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

// freePorts finds n free loopback ports. A node keeps its ports across a
// restart, so that its peers' routes find it again.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("natscluster: free port: %w", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Len is the number of nodes.
func (c *Cluster) Len() int { return len(c.nodes) }

// Name is node i's server name (n1…nN), as stream infos report leaders.
func (c *Cluster) Name(i int) string { return c.nodes[i].opts.ServerName }

// Index is the index of the node named name, or -1.
func (c *Cluster) Index(name string) int {
	for i, n := range c.nodes {
		if n.opts.ServerName == name {
			return i
		}
	}
	return -1
}

// URL is node i's client URL.
func (c *Cluster) URL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].opts.Port)
}

// URLs lists every node's client URL, comma separated (a nats.url).
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// Running reports whether node i is up.
func (c *Cluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].srv != nil
}

// Stop shuts node i down; its store stays for Restart.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	srv := c.nodes[i].srv
	c.nodes[i].srv = nil
	c.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart starts node i (again) on its ports and store; a running node is
// left as it is.
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.srv != nil {
		return nil
	}
	opts := *n.opts // the server keeps and changes its options
	srv, err := server.NewServer(&opts)
	if err != nil {
		return fmt.Errorf("natscluster: node %s: %w", n.opts.ServerName, err)
	}
	srv.Start()
	if !srv.ReadyForConnections(readyWithin) {
		srv.Shutdown()
		return fmt.Errorf("natscluster: node %s not ready for connections within %s", n.opts.ServerName, readyWithin)
	}
	n.srv = srv
	return nil
}

// WaitReady waits until the running nodes have a JetStream meta leader
// that counts every one of them as an online peer (so that streams can be
// placed on them all) and every one is current with it.
func (c *Cluster) WaitReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	for !c.ready() {
		if time.Now().After(deadline) {
			return fmt.Errorf("natscluster: the running nodes did not form a JetStream cluster within %s", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (c *Cluster) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	running, peers := 0, 0
	for _, n := range c.nodes {
		if n.srv == nil {
			continue
		}
		running++
		if !n.srv.JetStreamIsCurrent() {
			return false
		}
		if n.srv.JetStreamIsLeader() {
			peers = len(n.srv.JetStreamClusterPeers())
		}
	}
	return running > 0 && peers == running
}

// Shutdown stops every node.
func (c *Cluster) Shutdown() {
	for i := range c.nodes {
		c.Stop(i)
	}
}
