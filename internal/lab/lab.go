// Package lab starts real servers on loopback for tests: an S3 gateway
// (versitygw), a GCS emulator (fake-gcs-server), an Azure Blob emulator
// (Azurite), Redis, PostgreSQL and a MongoDB wire-protocol server (FerretDB).
//
// It is imported by _test.go files and by the demo (internal/demomigrate,
// through Standalone), never by stackport itself. The server binaries are built once
// by internal/lab/install.sh into Dir(); Redis and PostgreSQL 15 come from
// Debian packages.
//
// Every helper picks a free 127.0.0.1 port, keeps its data in a temporary
// directory, waits until the server answers, and registers a t.Cleanup that
// kills exactly the processes it started (its process group and the
// descendants that left the group). A server that cannot start
// fails the test (with the tail of the server's log); it never skips.
//
// The bucket helpers (S3, GCS, Azure) set process environment variables with
// t.Setenv, so tests that use them cannot call t.Parallel.
//
// A returned *Server can be killed (SIGKILL) and started again on the same
// port with the same data directory, to inject faults.
package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readyTimeout bounds how long a server may take to answer after it starts.
const readyTimeout = 30 * time.Second

// Dir returns the lab directory (env STACKPORT_LAB or
// ${XDG_CACHE_HOME:-$HOME/.cache}/stackport-lab), where install.sh puts the
// server binaries.
func Dir() string {
	if d := os.Getenv("STACKPORT_LAB"); d != "" {
		return d
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil || home == "" {
			home = "/root"
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "stackport-lab")
}

// Server is a started server process that tests can kill and start again
// (same port, same data) to inject faults.
type Server struct {
	// Addr is the server's host:port on 127.0.0.1.
	Addr string

	name    string
	logPath string
	newCmd  func() *exec.Cmd                // builds the (same) command for every start
	ready   func(ctx context.Context) error // one readiness attempt

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// newServer prepares a server on a fresh port and registers the cleanup
// that kills it. It does not start it.
func newServer(t testing.TB, name, logPath string, port int) *Server {
	t.Helper()
	s := &Server{
		Addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		name:    name,
		logPath: logPath,
	}
	t.Cleanup(s.Kill)
	return s
}

// Kill sends SIGKILL to the server's process group and to the server's
// descendants (PostgreSQL's backends leave the group) and waits until they
// have exited. It does nothing when the server is not running.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	pgid := s.cmd.Process.Pid
	// Some servers move their children into sessions of their own
	// (PostgreSQL's backends call setsid), so the process group alone is
	// not enough: freeze the group so it cannot fork, collect the leader's
	// descendants, then kill the group and every descendant.
	_ = syscall.Kill(-pgid, syscall.SIGSTOP)
	desc := descendants(pgid)
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	for _, pid := range desc {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	<-s.done
	// Wait briefly until every killed process is gone (they may still hold
	// the port or, for PostgreSQL, shared memory).
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		alive := false
		for _, pid := range desc {
			alive = alive || processAlive(pid)
		}
		if !alive {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd = nil
	s.done = nil
}

// descendants returns the PIDs of all descendants of pid, read from /proc
// (nil where /proc is unavailable).
func descendants(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := parentPID(p); ok {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// procStat returns the state and parent PID of a process from
// /proc/PID/stat.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ...; comm may contain spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return f[0][0], ppid, err == nil
}

func parentPID(pid int) (int, bool) {
	_, pp, ok := procStat(pid)
	return pp, ok
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return false
	}
	state, _, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

// Start starts the server again (same command, port and data directory) and
// waits until it is ready; it fails the test if the server does not answer
// within 30 s. Starting a running server fails the test.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		t.Fatalf("lab: %s on %s is already running", s.name, s.Addr)
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("lab: %s: open log: %v", s.name, err)
	}
	cmd := s.newCmd()
	cmd.Stdout = logf
	cmd.Stderr = logf
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	fmt.Fprintf(logf, "--- lab: %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	err = cmd.Start()
	logf.Close() // the child holds its own copy
	if err != nil {
		t.Fatalf("lab: %s: start %s: %v", s.name, cmd.Path, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	start := time.Now()
	if err := s.waitReady(done); err != nil {
		exited := false
		select {
		case <-done:
			exited = true
		default:
		}
		s.killLocked()
		state := ""
		if exited {
			state = fmt.Sprintf(" (process exited: %v)", cmd.ProcessState)
		}
		t.Fatalf("lab: %s on %s did not become ready after %v%s: %v\n--- log tail (%s):\n%s",
			s.name, s.Addr, time.Since(start).Round(time.Millisecond), state, err, s.logPath, logTail(s.logPath))
	}
	t.Logf("lab: %s ready on %s in %v", s.name, s.Addr, time.Since(start).Round(time.Millisecond))
}

// waitReady waits until the port accepts connections and then until a
// readiness attempt succeeds, or the process exits, or readyTimeout passes.
func (s *Server) waitReady(done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	for {
		select {
		case <-done:
			if last == nil {
				last = errors.New("process exited")
			}
			return last
		default:
		}
		last = s.tryReady(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("process exited; last error: %w", last)
		case <-ctx.Done():
			return fmt.Errorf("timeout; last error: %w", last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Server) tryReady(ctx context.Context) error {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return err
	}
	c.Close()
	if s.ready == nil {
		return nil
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return s.ready(actx)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("lab: free port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// labBin returns the path of a binary installed by install.sh, failing the
// test when it is missing.
func labBin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(Dir(), "bin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("lab: %s not installed (%v); run internal/lab/install.sh", name, err)
	}
	return p
}

// lookBin finds a binary in PATH or in the given directories.
func lookBin(t testing.TB, name string, dirs ...string) string {
	t.Helper()
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("lab: %s not found in %v or PATH; run internal/lab/install.sh", name, dirs)
	return ""
}

// logTail returns the last lines of a log file.
func logTail(path string) string {
	const max = 6 << 10
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	if len(b) > max {
		b = b[len(b)-max:]
		if i := strings.IndexByte(string(b), '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}
