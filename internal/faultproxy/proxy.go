// Package faultproxy is a TCP proxy for tests that stands between a client
// (a worker's NATS connection) and a server (nats-server) and injects the
// faults of a production network: latency added to every byte in each
// direction, cut connections, and refused new ones.
//
// Latency is pipelined like a real slow link: each chunk read is forwarded
// once it is Latency old, so a steady stream keeps its throughput and only
// arrives later. The latency in force when a chunk is forwarded applies.
package faultproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards connections accepted on a loopback port to a target.
type Proxy struct {
	ln      net.Listener
	target  string
	latency atomic.Int64 // nanoseconds, each direction
	refuse  atomic.Bool

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// New listens on a random loopback port and forwards to target (host:port).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the proxy's address as a NATS URL.
func (p *Proxy) URL() string { return "nats://" + p.Addr() }

// SetLatency delays every chunk by d in each direction (a round trip then
// takes 2d more). Zero removes the delay.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// Refuse makes the proxy close new connections at once (true) or forward
// them again (false): the server looks down to clients that reconnect.
func (p *Proxy) Refuse(on bool) { p.refuse.Store(on) }

// Cut closes every connection open now; clients see a broken link.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

// Close stops accepting, cuts every connection and waits for the proxy's
// goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_ = p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.refuse.Load() {
			_ = c.Close()
			continue
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.track(c, s) {
			return
		}
		p.wg.Add(2)
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

// track registers both ends of a link; false once the proxy is closed.
func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) forget(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

type chunk struct {
	data []byte
	at   time.Time
}

// pipe copies from src to dst, each chunk held until it is latency old.
// When either side fails, both are closed.
func (p *Proxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	queue := make(chan chunk, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range queue {
			if wait := time.Until(c.at.Add(time.Duration(p.latency.Load()))); wait > 0 {
				time.Sleep(wait)
			}
			if _, err := dst.Write(c.data); err != nil {
				_ = src.Close() // stop the reader too
				break
			}
		}
		// Drain so the reader never blocks on a dead writer.
		for range queue {
		}
	}()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			queue <- chunk{data: append([]byte(nil), buf[:n]...), at: time.Now()}
		}
		if err != nil { // EOF, a reset or a Cut: the link is over either way
			break
		}
	}
	close(queue)
	<-done
	p.forget(src)
	p.forget(dst)
}
