// Package faultproxy is a small fault-injecting TCP proxy for tests: it
// listens on a free 127.0.0.1 port, forwards every connection to one
// upstream address in both directions, and on request adds latency, limits
// bandwidth, resets connections (TCP RST) now, after a number of forwarded
// bytes, or per connection, refuses new connections, and stalls every
// connection (open, but no byte forwarded).
//
// It is imported only by _test.go files. A Proxy is closed by the
// t.Cleanup that New registers.
package faultproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bufSize is the largest chunk one read forwards.
const bufSize = 32 << 10

// queueLen bounds the chunks in flight per direction of a connection (they
// wait there for their latency to pass).
const queueLen = 64

// Proxy forwards connections from Addr() to an upstream address.
type Proxy struct {
	ln       net.Listener
	upstream string

	mu         sync.Mutex
	links      map[*link]struct{}
	latency    time.Duration
	limiter    [2]*limiter // per direction: 0 client→upstream, 1 upstream→client
	refuse     bool
	resetAfter int64 // bytes left before a one-shot ResetAll; 0: off
	connLimit  int64 // bytes after which each connection is reset; 0: off
	// unstall is closed when a stall ends; nil when not stalled.
	unstall chan struct{}
	closed  bool

	accepted  atomic.Int64
	refused   atomic.Int64
	forwarded atomic.Int64
	resets    atomic.Int64

	wg sync.WaitGroup
}

// Stats counts what the proxy did since New.
type Stats struct {
	Accepted  int64 // connections accepted and forwarded
	Refused   int64 // connections closed at once because of Refuse
	Active    int64 // connections open now
	Forwarded int64 // bytes written to either side
	Resets    int64 // connections reset by ResetAll, ResetAfter or ResetConnsAfter
}

// New starts a proxy to upstream (host:port) on a free 127.0.0.1 port. The
// proxy is closed, and its connections reset, when the test ends.
func New(t testing.TB, upstream string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faultproxy: listen: %v", err)
	}
	p := &Proxy{ln: ln, upstream: upstream, links: map[*link]struct{}{}}
	p.limiter[0], p.limiter[1] = &limiter{}, &limiter{}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port (127.0.0.1:PORT).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Upstream is the address the proxy forwards to.
func (p *Proxy) Upstream() string { return p.upstream }

// SetLatency delays every chunk of data by d in each direction, so a
// request and its reply gain 2d. It applies to data read from now on; 0
// removes it.
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = max(d, 0)
	p.mu.Unlock()
}

// SetBandwidth limits each direction to bytesPerSec, shared by all
// connections (as one link would be); 0 or less removes the limit.
func (p *Proxy) SetBandwidth(bytesPerSec int64) {
	for _, l := range p.limiter {
		l.set(bytesPerSec)
	}
}

// ResetAll resets every open connection at once: both of its sockets are
// closed with SO_LINGER 0, so the client and the server each get a TCP RST
// (ECONNRESET), as when a link or a middlebox drops the connection.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.reset()
	}
}

// ResetAfter arms a one-shot fault: once n more bytes have been forwarded
// (both directions, all connections, counted from this call), exactly n of
// them get through and every connection open at that moment is reset as by
// ResetAll; then the fault disarms and new connections work again. n <= 0
// disarms it.
func (p *Proxy) ResetAfter(n int64) {
	p.mu.Lock()
	p.resetAfter = max(n, 0)
	p.mu.Unlock()
}

// ResetConnsAfter makes the fault permanent and per connection: every
// connection (those open now, counted from their start, and new ones) is
// reset once it has forwarded n bytes in both directions together, so
// retries on new connections fail too if they need more. n <= 0 removes
// the limit.
func (p *Proxy) ResetConnsAfter(n int64) {
	p.mu.Lock()
	p.connLimit = max(n, 0)
	p.mu.Unlock()
}

// Refuse makes the proxy close every new connection at once with a reset
// (true) or forward them again (false). Open connections are not touched.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// Stall (true) stops forwarding data on every connection, the open ones
// and new ones (which are still accepted): the sockets stay open and no
// byte passes in either direction, as when a NAT, a firewall or a load
// balancer silently drops a flow. Data read meanwhile is held (a little
// per connection, after which the proxy stops reading) and forwarded, in
// order, once Stall(false) ends the stall.
func (p *Proxy) Stall(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case on && p.unstall == nil:
		p.unstall = make(chan struct{})
	case !on && p.unstall != nil:
		close(p.unstall)
		p.unstall = nil
	}
}

// Heal removes latency, the bandwidth limit, armed resets, refusal and a
// stall; open connections stay open.
func (p *Proxy) Heal() {
	p.Stall(false)
	p.SetLatency(0)
	p.SetBandwidth(0)
	p.ResetAfter(0)
	p.ResetConnsAfter(0)
	p.Refuse(false)
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	active := int64(len(p.links))
	p.mu.Unlock()
	return Stats{
		Accepted:  p.accepted.Load(),
		Refused:   p.refused.Load(),
		Active:    active,
		Forwarded: p.forwarded.Load(),
		Resets:    p.resets.Load(),
	}
}

// Close stops listening, resets every open connection and waits until the
// proxy's goroutines have ended.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.ResetAll()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary errors (EMFILE and the like): retry shortly.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.mu.Lock()
		refuse, closed := p.refuse, p.closed
		p.mu.Unlock()
		if refuse || closed {
			p.refused.Add(1)
			rst(c)
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve connects to the upstream and forwards c until both directions end
// or one fails.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	up, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		// The upstream is down: the client sees its connection reset,
		// much as it would see the refusal.
		rst(client)
		return
	}
	l := &link{p: p, client: client, up: up, dead: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		rst(client)
		rst(up)
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()
	p.accepted.Add(1)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.pipe(client, up, 0) }()
	go func() { defer wg.Done(); l.pipe(up, client, 1) }()
	wg.Wait()
	l.close()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// A link is one proxied connection.
type link struct {
	p          *Proxy
	client, up net.Conn
	counted    int64 // bytes allowed through this link, both directions (under Proxy.mu)
	once       sync.Once
	dead       chan struct{} // closed when the link is reset or closed
	isReset    atomic.Bool
	// doomed is set (under Proxy.mu) when a reset fault has fired for
	// this link: nothing more is written to it.
	doomed bool
}

// reset closes both sockets with a TCP RST.
func (l *link) reset() {
	l.once.Do(func() {
		close(l.dead)
		l.isReset.Store(true)
		l.p.resets.Add(1)
		rst(l.client)
		rst(l.up)
	})
}

// close closes both sockets normally (after both directions ended).
func (l *link) close() {
	l.once.Do(func() {
		close(l.dead)
		l.client.Close()
		l.up.Close()
	})
}

type chunk struct {
	data []byte
	due  time.Time
	err  error // set on the last chunk: the read error (io.EOF at the end)
}

// pipe forwards src to dst: a reader goroutine queues chunks stamped with
// their due time, this goroutine writes them when due, within the
// bandwidth limit, counting bytes for the reset faults.
func (l *link) pipe(src, dst net.Conn, dir int) {
	q := make(chan chunk, queueLen)
	go func() {
		for {
			buf := make([]byte, bufSize)
			n, err := src.Read(buf)
			l.p.mu.Lock()
			lat := l.p.latency
			l.p.mu.Unlock()
			if n > 0 {
				q <- chunk{data: buf[:n], due: time.Now().Add(lat)}
			}
			if err != nil {
				q <- chunk{err: err}
				close(q)
				return
			}
		}
	}()
	failed := false
	for c := range q {
		if failed {
			continue // drain, so the reader can end
		}
		if c.err != nil {
			if errors.Is(c.err, io.EOF) && !l.isReset.Load() && l.waitStall() {
				// Pass the half-close on; the other direction goes on.
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				continue
			}
			// A reset or error on one side ends both directions.
			l.abort()
			failed = true
			continue
		}
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if err := l.write(dst, c.data, dir); err != nil {
			l.abort()
			failed = true
		}
	}
}

// abort ends the link after an error on one side: a reset from one side
// is passed on as a reset to the other.
func (l *link) abort() {
	l.once.Do(func() {
		close(l.dead)
		rst(l.client)
		rst(l.up)
	})
}

// waitStall waits while the proxy is stalled; false when the link ended
// meanwhile.
func (l *link) waitStall() bool {
	for {
		l.p.mu.Lock()
		ch := l.p.unstall
		l.p.mu.Unlock()
		if ch == nil {
			return true
		}
		select {
		case <-ch:
		case <-l.dead:
			return false
		}
	}
}

// write writes data to dst in pieces the bandwidth limit allows, and
// applies the reset faults, letting through exactly the bytes they allow.
func (l *link) write(dst net.Conn, data []byte, dir int) error {
	for len(data) > 0 {
		if !l.waitStall() {
			return errors.New("faultproxy: connection ended during a stall")
		}
		n := l.p.limiter[dir].take(len(data))
		// How much may pass before a reset fault fires.
		l.p.mu.Lock()
		if l.doomed {
			l.p.mu.Unlock()
			return errors.New("faultproxy: connection being reset")
		}
		once, limit := l.p.resetAfter, l.p.connLimit
		allowed, fire := int64(n), 0
		if once > 0 && allowed >= once {
			allowed, fire = once, 1
		}
		if limit > 0 {
			if left := limit - l.counted; left <= allowed {
				allowed, fire = max(left, 0), 2
			}
		}
		switch {
		case fire == 1:
			l.p.resetAfter = 0
			for o := range l.p.links {
				o.doomed = true
			}
		case once > 0:
			l.p.resetAfter = once - allowed
		}
		if fire == 2 {
			l.doomed = true
		}
		l.counted += allowed
		l.p.mu.Unlock()

		if allowed > 0 {
			w, err := dst.Write(data[:allowed])
			l.p.forwarded.Add(int64(w))
			if err != nil {
				return err
			}
		}
		switch fire {
		case 1:
			l.p.ResetAll()
			return errors.New("faultproxy: reset after the armed byte count")
		case 2:
			l.reset()
			return errors.New("faultproxy: reset at the per-connection byte limit")
		}
		data = data[n:]
	}
	return nil
}

// rst closes c so that the peer gets a TCP RST.
func rst(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// A limiter is a token bucket of bytes per second; rate 0 is unlimited.
type limiter struct {
	mu   sync.Mutex
	rate int64
	next time.Time // when the bytes taken so far have been "sent"
}

func (l *limiter) set(rate int64) {
	l.mu.Lock()
	l.rate = max(rate, 0)
	l.next = time.Time{}
	l.mu.Unlock()
}

// take waits until n bytes (at most a 20th of a second's worth, at least
// 512) may be sent and returns how many it granted.
func (l *limiter) take(n int) int {
	l.mu.Lock()
	rate := l.rate
	if rate == 0 {
		l.mu.Unlock()
		return n
	}
	n = min(n, max(int(rate/20), 512))
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
	l.mu.Unlock()
	if d := time.Until(at); d > 0 {
		time.Sleep(d)
	}
	return n
}
