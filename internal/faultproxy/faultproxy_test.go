package faultproxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoServer echoes every connection until the client half-closes, then
// closes it. Errors seen by its connections are sent on errs.
func echoServer(t *testing.T) (addr string, errs <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 100)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, err := io.Copy(c, c)
				if err != nil {
					ch <- err
				}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

// sourceServer writes size random bytes to every connection, then closes
// it. It returns the bytes.
func sourceServer(t *testing.T, size int) (addr string, data []byte) {
	t.Helper()
	data = make([]byte, size)
	rand.Read(data)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.Write(data)
			}()
		}
	}()
	return ln.Addr().String(), data
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := tryDial(t, p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tryDial connects to the proxy. The connection can fail already here when
// the proxy resets it before the dialer has looked (Refuse, a dead upstream,
// a fault that fires at once).
func tryDial(t *testing.T, p *Proxy) (net.Conn, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, nil
}

// readAll dials the proxy and reads until the end or an error.
func readAll(t *testing.T, p *Proxy) ([]byte, error) {
	t.Helper()
	c, err := tryDial(t, p)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(c)
}

// refused reports whether a connection to the proxy fails at once.
func refused(t *testing.T, p *Proxy) bool {
	t.Helper()
	c, err := tryDial(t, p)
	if err != nil {
		return true
	}
	_, err = roundTrip(c, []byte("x"))
	return err != nil
}

// roundTrip writes msg and reads back as many bytes.
func roundTrip(c net.Conn, msg []byte) ([]byte, error) {
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	return got, err
}

func TestFaultProxyForwardsBothWaysWithHalfClose(t *testing.T) {
	addr, _ := echoServer(t)
	p := New(t, addr)
	c := dial(t, p)
	msg := make([]byte, 1<<20)
	rand.Read(msg)
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo through the proxy: %d bytes, want the %d sent", len(got), len(msg))
	}
	waitFor(t, func() bool { return p.Stats().Active == 0 }, "the connection to end")
	if s := p.Stats(); s.Accepted != 1 || s.Forwarded != 2<<20 || s.Resets != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFaultProxyLatency(t *testing.T) {
	addr, _ := echoServer(t)
	p := New(t, addr)
	c := dial(t, p)
	start := time.Now()
	if _, err := roundTrip(c, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	fast := time.Since(start)

	p.SetLatency(300 * time.Millisecond)
	start = time.Now()
	if _, err := roundTrip(c, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 600*time.Millisecond || rtt > 3*time.Second {
		t.Fatalf("round trip with 300ms latency each way took %v (without: %v)", rtt, fast)
	}
	p.SetLatency(0)
	start = time.Now()
	if _, err := roundTrip(c, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt > 300*time.Millisecond {
		t.Fatalf("latency removed, round trip still took %v", rtt)
	}
}

func TestFaultProxyBandwidth(t *testing.T) {
	const size = 512 << 10
	addr, data := sourceServer(t, size)
	p := New(t, addr)
	p.SetBandwidth(512 << 10) // 512 KiB/s: about a second
	c := dial(t, p)
	start := time.Now()
	got, err := io.ReadAll(c)
	elapsed := time.Since(start)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if elapsed < 900*time.Millisecond || elapsed > 4*time.Second {
		t.Fatalf("512 KiB at 512 KiB/s took %v", elapsed)
	}

	p.SetBandwidth(0)
	c = dial(t, p)
	start = time.Now()
	if got, err := io.ReadAll(c); err != nil || len(got) != size {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if elapsed := time.Since(start); elapsed > 500*time.Millisecond {
		t.Fatalf("without limit 512 KiB took %v", elapsed)
	}
}

func TestFaultProxyResetAll(t *testing.T) {
	addr, serverErrs := echoServer(t)
	p := New(t, addr)
	c1, c2 := dial(t, p), dial(t, p)
	for _, c := range []net.Conn{c1, c2} {
		if _, err := roundTrip(c, []byte("hello")); err != nil {
			t.Fatal(err)
		}
	}
	p.ResetAll()
	for _, c := range []net.Conn{c1, c2} {
		_, err := c.Read(make([]byte, 10))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read after ResetAll: %v, want ECONNRESET", err)
		}
	}
	// The server's side is reset too.
	for range 2 {
		select {
		case err := <-serverErrs:
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("server saw %v, want ECONNRESET", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the server's connection was not reset")
		}
	}
	waitFor(t, func() bool { return p.Stats().Active == 0 }, "the connections to end")
	if s := p.Stats(); s.Resets != 2 {
		t.Fatalf("stats %+v", s)
	}
	// New connections work.
	if _, err := roundTrip(dial(t, p), []byte("again")); err != nil {
		t.Fatal(err)
	}
}

func TestFaultProxyResetAfter(t *testing.T) {
	addr, data := sourceServer(t, 4<<20)
	p := New(t, addr)
	const n = 100_000
	p.ResetAfter(n)
	got, err := readAll(t, p)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: %v after %d bytes, want ECONNRESET", err, len(got))
	}
	if len(got) > n || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("received %d bytes before the reset, want at most the %d allowed, in order", len(got), n)
	}
	if s := p.Stats(); s.Forwarded != n || s.Resets != 1 {
		t.Fatalf("stats %+v, want exactly %d bytes forwarded and 1 reset", s, n)
	}
	// One shot: the next connection gets everything.
	got, err = readAll(t, p)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after the fault fired: %d bytes, %v", len(got), err)
	}
	// Disarmed before it fires: nothing happens.
	p.ResetAfter(1000)
	p.ResetAfter(0)
	if got, err := readAll(t, p); err != nil || len(got) != len(data) {
		t.Fatalf("disarmed: %d bytes, %v", len(got), err)
	}
}

func TestFaultProxyResetAfterCountsAllConnections(t *testing.T) {
	addr, _ := echoServer(t)
	p := New(t, addr)
	c1, c2 := dial(t, p), dial(t, p)
	p.ResetAfter(30) // each round trip forwards 2×10 bytes
	if _, err := roundTrip(c1, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	_, err := roundTrip(c2, make([]byte, 10))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("second connection: %v, want ECONNRESET", err)
	}
	if _, err := c1.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("first connection: %v, want ECONNRESET", err)
	}
}

func TestFaultProxyResetConnsAfter(t *testing.T) {
	addr, data := sourceServer(t, 1<<20)
	p := New(t, addr)
	p.ResetConnsAfter(50_000)
	for i := range 3 {
		got, err := readAll(t, p)
		if !errors.Is(err, syscall.ECONNRESET) || len(got) > 50_000 || !bytes.Equal(got, data[:len(got)]) {
			t.Fatalf("connection %d: %d bytes, %v; want at most 50000 then ECONNRESET", i, len(got), err)
		}
	}
	if s := p.Stats(); s.Resets != 3 || s.Forwarded != 150_000 {
		t.Fatalf("stats %+v", s)
	}
	p.ResetConnsAfter(0)
	if got, err := readAll(t, p); err != nil || len(got) != len(data) {
		t.Fatalf("limit removed: %d bytes, %v", len(got), err)
	}
}

func TestFaultProxyRefuse(t *testing.T) {
	addr, _ := echoServer(t)
	p := New(t, addr)
	open := dial(t, p)
	if _, err := roundTrip(open, []byte("before")); err != nil {
		t.Fatal(err)
	}
	p.Refuse(true)
	if !refused(t, p) {
		t.Fatal("a refused connection answered")
	}
	// Connections open before stay open.
	if _, err := roundTrip(open, []byte("still")); err != nil {
		t.Fatalf("open connection after Refuse: %v", err)
	}
	p.Refuse(false)
	if _, err := roundTrip(dial(t, p), []byte("after")); err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.Refused != 1 || s.Accepted != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestFaultProxyUpstreamDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	p := New(t, addr)
	if !refused(t, p) {
		t.Fatal("a connection to a dead upstream answered")
	}
}

func TestFaultProxyHealAndClose(t *testing.T) {
	addr, _ := echoServer(t)
	p := New(t, addr)
	p.SetLatency(time.Second)
	p.SetBandwidth(10)
	p.Refuse(true)
	p.ResetConnsAfter(1)
	p.Heal()
	c := dial(t, p)
	start := time.Now()
	if _, err := roundTrip(c, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("healed proxy took %v", d)
	}
	p.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection open after Close")
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("proxy still listening after Close")
	}
	p.Close() // idempotent
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFaultProxyStall(t *testing.T) {
	addr, _ := echoServer(t)
	p := New(t, addr)
	c := dial(t, p)
	if got, err := roundTrip(c, []byte("before")); err != nil || string(got) != "before" {
		t.Fatalf("before the stall: %q, %v", got, err)
	}
	p.Stall(true)
	// An open connection and a new one: open, but nothing comes back.
	c2 := dial(t, p)
	for i, conn := range []net.Conn{c, c2} {
		if _, err := conn.Write([]byte("during")); err != nil {
			t.Fatalf("conn %d: write during the stall: %v", i, err)
		}
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 16)
		n, err := conn.Read(buf)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("conn %d: read during the stall: %q, %v; want a timeout", i, buf[:n], err)
		}
	}
	if s := p.Stats(); s.Active != 2 || s.Resets != 0 {
		t.Fatalf("stats during the stall: %+v", s)
	}
	// Heal ends the stall: what was held arrives, in order.
	p.Heal()
	for i, conn := range []net.Conn{c, c2} {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len("during"))
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != "during" {
			t.Fatalf("conn %d: after the stall: %q, %v", i, got, err)
		}
	}
	// Close during a stall does not hang.
	p.Stall(true)
	c.Write([]byte("x"))
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs during a stall")
	}
}
