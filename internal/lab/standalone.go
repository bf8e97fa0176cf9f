package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
)

// Standalone is a testing.TB for a program that is not a test (the demo in
// internal/demomigrate), so that it can start the lab's servers with the
// same helpers as the tests. Create it with NewStandalone, call the lab
// helpers inside Run, and call Close at the end, also on failure: Close runs
// what the helpers registered with Cleanup (it kills the servers and removes
// their directories), newest first.
//
// Fatal, Fatalf, FailNow and the Skip methods end the function given to Run
// (they panic, and Run recovers), so they must be called from Run's
// goroutine. Error and Errorf mark the run failed; Run then returns their
// messages. Log and Logf write to the Output writer.
type Standalone struct {
	testing.TB // nil: every method of testing.TB is defined below

	name string
	out  io.Writer

	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	cleanups []func()
	errs     []string
	failed   bool
	skipped  bool
	closed   bool
	artifact string
}

var _ testing.TB = (*Standalone)(nil)

// NewStandalone returns a Standalone named name (used in temporary
// directory names) that logs to out (os.Stderr when nil).
func NewStandalone(name string, out io.Writer) *Standalone {
	if out == nil {
		out = os.Stderr
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Standalone{name: name, out: out, ctx: ctx, cancel: cancel}
}

// standaloneStop is what a Standalone panics with to end Run's function.
type standaloneStop struct {
	msg  string
	skip bool
}

// Run calls f. A Fatal, Fatalf, FailNow or Skip called during f ends it
// and is returned as an error; when Error or Errorf were called, their
// messages are returned. Other panics are passed on.
func (s *Standalone) Run(f func()) (err error) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		stop, ok := r.(standaloneStop)
		if !ok {
			panic(r)
		}
		if stop.skip {
			err = fmt.Errorf("%s: skipped: %s", s.name, stop.msg)
			return
		}
		err = s.err()
	}()
	f()
	return s.err()
}

// err returns the messages of the failures so far, or nil.
func (s *Standalone) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.failed {
		return nil
	}
	if len(s.errs) == 0 {
		return fmt.Errorf("%s failed", s.name)
	}
	return errors.New(strings.Join(s.errs, "\n"))
}

// Close cancels Context and runs the registered cleanups, newest first
// (also those that cleanups register). A cleanup that calls Fatal does not
// stop the others. Call it after Run has returned, not concurrently with
// it; it may be called more than once.
func (s *Standalone) Close() {
	s.cancel()
	for {
		s.mu.Lock()
		n := len(s.cleanups)
		if n == 0 {
			s.closed = true
			s.mu.Unlock()
			return
		}
		f := s.cleanups[n-1]
		s.cleanups = s.cleanups[:n-1]
		s.mu.Unlock()
		func() {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(standaloneStop); !ok {
						panic(r)
					}
				}
			}()
			f()
		}()
	}
}

// Cleanup registers f to be run by Close. After Close it runs f at once.
func (s *Standalone) Cleanup(f func()) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		f()
		return
	}
	s.cleanups = append(s.cleanups, f)
	s.mu.Unlock()
}

// Helper does nothing.
func (s *Standalone) Helper() {}

// Name returns the name given to NewStandalone.
func (s *Standalone) Name() string { return s.name }

// Output returns the writer Log and Logf write to.
func (s *Standalone) Output() io.Writer { return s.out }

// Log writes its arguments, as fmt.Sprintln, to Output.
func (s *Standalone) Log(args ...any) { s.logLine(fmt.Sprintln(args...)) }

// Logf writes a formatted line to Output.
func (s *Standalone) Logf(format string, args ...any) { s.logLine(fmt.Sprintf(format, args...)) }

func (s *Standalone) logLine(msg string) {
	if !strings.HasSuffix(msg, "\n") {
		msg += "\n"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = io.WriteString(s.out, msg)
}

// Attr logs the attribute.
func (s *Standalone) Attr(key, value string) { s.Logf("%s: %s", key, value) }

// Fail marks the run failed.
func (s *Standalone) Fail() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed = true
}

// Failed reports whether the run has failed.
func (s *Standalone) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// FailNow marks the run failed and ends Run's function.
func (s *Standalone) FailNow() {
	s.Fail()
	panic(standaloneStop{})
}

// Error records the failure (as fmt.Sprintln) and goes on.
func (s *Standalone) Error(args ...any) { s.record(strings.TrimSuffix(fmt.Sprintln(args...), "\n")) }

// Errorf records the failure and goes on.
func (s *Standalone) Errorf(format string, args ...any) { s.record(fmt.Sprintf(format, args...)) }

func (s *Standalone) record(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed = true
	s.errs = append(s.errs, msg)
}

// Fatal records the failure and ends Run's function.
func (s *Standalone) Fatal(args ...any) {
	s.Error(args...)
	panic(standaloneStop{})
}

// Fatalf records the failure and ends Run's function.
func (s *Standalone) Fatalf(format string, args ...any) {
	s.Errorf(format, args...)
	panic(standaloneStop{})
}

// Skip logs its arguments and ends Run's function, which returns an error.
func (s *Standalone) Skip(args ...any) {
	s.skipNow(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
}

// Skipf logs and ends Run's function, which returns an error.
func (s *Standalone) Skipf(format string, args ...any) { s.skipNow(fmt.Sprintf(format, args...)) }

// SkipNow ends Run's function, which returns an error.
func (s *Standalone) SkipNow() { s.skipNow("") }

func (s *Standalone) skipNow(msg string) {
	s.mu.Lock()
	s.skipped = true
	s.mu.Unlock()
	panic(standaloneStop{msg: msg, skip: true})
}

// Skipped reports whether a Skip method was called.
func (s *Standalone) Skipped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.skipped
}

// TempDir creates a new directory under $TMPDIR, removed by Close.
func (s *Standalone) TempDir() string {
	dir, err := os.MkdirTemp("", "stackport-"+s.safeName()+"-")
	if err != nil {
		s.Fatalf("lab: TempDir: %v", err)
	}
	s.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// ArtifactDir returns a directory for output files, removed by Close.
func (s *Standalone) ArtifactDir() string {
	s.mu.Lock()
	dir := s.artifact
	s.mu.Unlock()
	if dir == "" {
		dir = s.TempDir()
		s.mu.Lock()
		s.artifact = dir
		s.mu.Unlock()
	}
	return dir
}

// safeName is the name with the characters a file name should not hold
// replaced.
func (s *Standalone) safeName() string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == ' ' || r == 0 {
			return '_'
		}
		return r
	}, s.name)
}

// Setenv sets an environment variable of the process; Close restores it.
func (s *Standalone) Setenv(key, value string) {
	prev, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		s.Fatalf("lab: Setenv %s: %v", key, err)
	}
	s.Cleanup(func() {
		if had {
			os.Setenv(key, prev)
		} else {
			os.Unsetenv(key)
		}
	})
}

// Chdir changes the working directory of the process; Close changes it
// back.
func (s *Standalone) Chdir(dir string) {
	prev, err := os.Getwd()
	if err != nil {
		s.Fatalf("lab: Chdir: %v", err)
	}
	if err := os.Chdir(dir); err != nil {
		s.Fatalf("lab: Chdir: %v", err)
	}
	s.Cleanup(func() { os.Chdir(prev) })
}

// Context returns a context cancelled when Close begins.
func (s *Standalone) Context() context.Context { return s.ctx }
