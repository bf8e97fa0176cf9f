package storage

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// Idle timeout. A connection to a storage service that stays open without
// moving a byte (a NAT or firewall that dropped its state, a stalled load
// balancer) would block a read or a write for as long as TCP keeps trying,
// which for a pending read is for ever. So every connection the S3, GCS
// and Azure clients open is wrapped in an idleConn: each Read and Write
// gets a deadline idleTimeout ahead, pushed forward whenever bytes move in
// either direction (a long upload keeps the pending response read alive),
// and a connection that moves nothing for idleTimeout fails with a
// *StalledError.
//
// idleTimeout is a variable so that tests can shorten it.
var idleTimeout = 60 * time.Second

// StalledError is the error of a read or write on a storage connection
// that moved no data for Idle.
type StalledError struct {
	Idle time.Duration
	Op   string // read or write
}

func (e *StalledError) Error() string {
	return fmt.Sprintf("no data for %v: the connection stalled", e.Idle)
}

// Timeout and Temporary make the SDKs treat a stall like other network
// timeouts: the request may be retried on a new connection.
func (e *StalledError) Timeout() bool   { return true }
func (e *StalledError) Temporary() bool { return true }

// Unwrap lets errors.Is(err, os.ErrDeadlineExceeded) hold.
func (e *StalledError) Unwrap() error { return os.ErrDeadlineExceeded }

// idleConn is a net.Conn whose deadlines follow its progress.
type idleConn struct {
	net.Conn
	idle time.Duration
	// last is when the deadline was last pushed forward (UnixNano).
	last atomic.Int64
}

// extend pushes the deadline of both directions to now+idle. To keep the
// cost down it does so at most every idle/32, so a connection fails after
// between 31/32 and all of idle without progress.
func (c *idleConn) extend() {
	now := time.Now()
	if last := c.last.Load(); last != 0 && now.Sub(time.Unix(0, last)) < c.idle/32 {
		return
	}
	c.last.Store(now.UnixNano())
	_ = c.Conn.SetDeadline(now.Add(c.idle))
}

func (c *idleConn) Read(p []byte) (int, error) {
	c.extend()
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.extend()
	}
	return n, c.stalled("read", err)
}

func (c *idleConn) Write(p []byte) (int, error) {
	c.extend()
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.extend()
	}
	return n, c.stalled("write", err)
}

// stalled turns the error of a deadline that passed into a *StalledError.
func (c *idleConn) stalled(op string, err error) error {
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return &StalledError{Idle: c.idle, Op: op}
	}
	return err
}

// The HTTP client sets no deadlines of its own on a connection (it cancels
// a request by closing it); these keep the idle deadline in charge.
func (c *idleConn) SetDeadline(time.Time) error      { return nil }
func (c *idleConn) SetReadDeadline(time.Time) error  { return nil }
func (c *idleConn) SetWriteDeadline(time.Time) error { return nil }

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// idleDial wraps dial so that every connection it makes is an idleConn.
func idleDial(dial dialFunc) dialFunc {
	if dial == nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	idle := idleTimeout
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &idleConn{Conn: c, idle: idle}, nil
	}
}

// withIdleTimeout makes tr's connections idleConns. TLS runs over them
// (DialTLSContext is not set by the clients stackport uses).
func withIdleTimeout(tr *http.Transport) *http.Transport {
	tr.DialContext = idleDial(tr.DialContext)
	return tr
}

// SetIdleTimeout sets the idle timeout of the connections of repositories
// opened from now on and returns a function that restores the previous
// one. For tests: the default of 60 s is what production uses.
func SetIdleTimeout(d time.Duration) (restore func()) {
	old := idleTimeout
	idleTimeout = d
	return func() { idleTimeout = old }
}
