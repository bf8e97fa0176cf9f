package main

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stackport/stackport/snapshot"
)

// progress reports long work: a bar with bytes, rate and ETA on a terminal,
// a structured log line every logEvery otherwise.
type progress struct {
	label string
	total int64 // 0: unknown
	done  atomic.Int64
	start time.Time
	g     *globalOptions
	stop  chan struct{}
	wg    sync.WaitGroup
}

const (
	drawEvery = 250 * time.Millisecond
	logEvery  = 15 * time.Second
)

// startProgress starts reporting; call Add as work is done and Stop at the
// end.
func startProgress(g *globalOptions, label string, total int64) *progress {
	p := &progress{label: label, total: total, start: time.Now(), g: g, stop: make(chan struct{})}
	if g.Quiet {
		return p
	}
	every := logEvery
	if g.tty {
		every = drawEvery
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				if g.tty {
					fmt.Fprint(g.stderr, "\r\033[K")
				}
				return
			case <-t.C:
				p.report()
			}
		}
	}()
	return p
}

// Add records n more bytes of work. It is safe for concurrent use.
func (p *progress) Add(n int64) {
	done := p.done.Add(n)
	if p.g.onProgress != nil {
		p.g.onProgress(done)
	}
}

// Stop ends reporting and clears the bar.
func (p *progress) Stop() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}

func (p *progress) report() {
	done := p.done.Load()
	elapsed := time.Since(p.start)
	rate := float64(done) / elapsed.Seconds()
	var eta time.Duration
	if p.total > 0 && rate > 0 && done < p.total {
		eta = time.Duration(float64(p.total-done) / rate * float64(time.Second)).Round(time.Second)
	}
	if !p.g.tty {
		args := []any{"done", done, "rate_bytes_per_s", int64(rate), "elapsed", elapsed.Round(time.Second).String()}
		if p.total > 0 {
			args = append(args, "total", p.total, "eta", eta.String())
		}
		p.g.logger().Log(nil, slog.LevelInfo, p.label, args...)
		return
	}
	line := fmt.Sprintf("%s %s  %s/s", p.label, snapshot.HumanBytes(done), snapshot.HumanBytes(int64(rate)))
	if p.total > 0 {
		frac := min(float64(done)/float64(p.total), 1)
		const width = 24
		fill := int(frac * width)
		line = fmt.Sprintf("%s %3.0f%% [%s%s] %s / %s  %s/s  ETA %s", p.label, frac*100,
			strings.Repeat("=", fill), strings.Repeat(" ", width-fill),
			snapshot.HumanBytes(done), snapshot.HumanBytes(p.total), snapshot.HumanBytes(int64(rate)), eta)
	}
	fmt.Fprintf(p.g.stderr, "\r\033[K%s", line)
}
