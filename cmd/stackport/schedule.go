package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/robfig/cron/v3"
	"github.com/spf13/cobra"

	"github.com/stackport/stackport/snapshot"
)

type scheduleOptions struct {
	Cron         string
	Jitter       time.Duration
	Retries      int
	RetryBackoff time.Duration
	MetricsAddr  string
	HealthMaxAge time.Duration
	Snapshot     snapshotOptions
	Prune        pruneOptions
	// ready, when set, receives the metrics listener's address (tests).
	ready func(addr string)
}

func newScheduleCommand(g *globalOptions) *cobra.Command {
	var opts scheduleOptions
	cmd := &cobra.Command{
		Use:   `schedule --cron "0 3 * * *" [snapshot flags] [--keep-… flags]`,
		Short: "Take snapshots (and prune) on a schedule, in the foreground",
		Long: `Run in the foreground and, at every time the cron expression names, take a
snapshot with the snapshot flags, then prune with the --keep flags (if any;
--tag and --host both label the snapshots and limit pruning to them: a
scheduler prunes only the snapshots of its own host, --group-by as in prune).

Every flag is checked at start, before the first run: the cron expression
(one that never fires, such as "0 0 30 2 *", or an @every interval that is
not positive is refused), compression, tags, sources, encryption keys, the
retention flags (as prune checks them: -1 keeps all, other negative values
are refused) and that the repository can be reached.

Runs never overlap: a run that outlasts the interval delays the next one. A
failed snapshot is retried with exponential backoff (--retries). SIGTERM or
SIGINT stop it cleanly: an upload in flight is aborted and leaves no partial
snapshot.

--metrics-addr serves Prometheus metrics on /metrics and a health check on
/healthz, which fails (503) when the last success is older than
--healthz-max-age.

The cron expression has five fields (minute hour day month weekday), an
optional leading seconds field, or a descriptor such as @daily or @every 6h;
times are in the local time zone (TZ).`,
		Example: `  stackport schedule --cron "0 3 * * *" --jitter 10m --repo s3://backups?region=eu-west-1 \
    --volume /appsmith-stacks --exclude logs --passphrase-file /etc/stackport/pass \
    --keep-daily 7 --keep-weekly 4 --keep-monthly 6 --metrics-addr :9090
  stackport schedule --cron "@every 6h" --volume /appsmith-stacks --keep-last 8 --keep-daily -1`,
		Args: wrapArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSchedule(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Cron, "cron", "", "when to run (cron expression)")
	f.DurationVar(&opts.Jitter, "jitter", 0, "wait a random time up to this long before each run")
	f.IntVar(&opts.Retries, "retries", 3, "retries of a failed snapshot")
	f.DurationVar(&opts.RetryBackoff, "retry-backoff", time.Minute, "wait before the first retry; doubled for each next one")
	f.StringVar(&opts.MetricsAddr, "metrics-addr", "", "serve /metrics and /healthz on this address (e.g. :9090)")
	f.DurationVar(&opts.HealthMaxAge, "healthz-max-age", 26*time.Hour, "/healthz fails when the last success is older than this")
	opts.Snapshot.addFlags(f)
	opts.Prune.addFlags(f, false)
	return cmd
}

// scheduleMetrics are the Prometheus metrics of schedule.
type scheduleMetrics struct {
	reg         *prometheus.Registry
	lastSuccess prometheus.Gauge
	lastDur     prometheus.Gauge
	bytes       prometheus.Counter
	failures    *prometheus.CounterVec
	snapshots   prometheus.Gauge
	// lastOK is lastSuccess for /healthz, as Unix seconds (0: none yet).
	lastOK atomic.Int64
}

func newScheduleMetrics() *scheduleMetrics {
	m := &scheduleMetrics{
		reg: prometheus.NewRegistry(),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stackport_last_success_timestamp_seconds",
			Help: "Unix time of the last successful scheduled run."}),
		lastDur: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stackport_last_duration_seconds",
			Help: "Duration of the last scheduled run, successful or not."}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "stackport_written_bytes_total",
			Help: "Bytes stored by scheduled snapshots."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stackport_failures_total",
			Help: "Failed attempts, by component (volume, mongo, …; storage for the repository, prune)."}, []string{"component"}),
		snapshots: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stackport_snapshots",
			Help: "Complete snapshots in the repository after the last run."}),
	}
	m.reg.MustRegister(m.lastSuccess, m.lastDur, m.bytes, m.failures, m.snapshots)
	m.failures.WithLabelValues("storage")
	m.failures.WithLabelValues("prune")
	return m
}

// cronParser reads --cron: five fields, an optional leading seconds field,
// or a descriptor (@daily, @every 6h).
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// parseCron parses a cron expression and refuses those that would make
// schedule run in a tight loop: one that never fires (robfig/cron's Next
// then returns the zero time, which is always due) and an @every interval
// that is not positive or shorter than a second (robfig/cron runs those
// every second).
func parseCron(expr string, now time.Time) (cron.Schedule, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, usageErrorf("schedule: give --cron EXPRESSION")
	}
	spec := strings.TrimSpace(expr)
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		zone, rest, ok := strings.Cut(spec, " ")
		if !ok || strings.TrimSpace(rest) == "" {
			return nil, usageErrorf("schedule: --cron %q: %s is a time zone without a schedule", expr, zone)
		}
		spec = strings.TrimSpace(rest)
	}
	if d, ok := strings.CutPrefix(spec, "@every "); ok {
		if iv, err := time.ParseDuration(strings.TrimSpace(d)); err == nil && iv < time.Second {
			return nil, usageErrorf("schedule: --cron %q: the interval must be at least one second (it would run in a tight loop)", expr)
		}
	}
	sched, err := cronParser.Parse(expr)
	if err != nil {
		return nil, usageErrorf("schedule: --cron %q: %v", expr, err)
	}
	if sched.Next(now).IsZero() {
		return nil, usageErrorf("schedule: --cron %q never fires (no such date in the next five years)", expr)
	}
	return sched, nil
}

// checkSnapshotFlags makes the checks of the snapshot flags that
// takeSnapshot makes before it writes anything, with the same functions:
// compression and level, tags, sources, encryption keys. schedule calls it at
// start, so a mistake is refused at once rather than at the first run,
// hours later.
func checkSnapshotFlags(opts snapshotOptions, log *slog.Logger) error {
	comp, err := snapshot.ParseCompression(opts.Compression)
	if err != nil {
		return usageError{fmt.Errorf("schedule: %w", err)}
	}
	if err := comp.CheckLevel(opts.Level); err != nil {
		return usageError{fmt.Errorf("schedule: %w", err)}
	}
	if _, err := parseTags(opts.Tags); err != nil {
		return err
	}
	if _, err := opts.dumpers(log); err != nil {
		return err
	}
	if _, err := opts.Crypto.recipients(); err != nil {
		return err
	}
	return nil
}

// check validates every flag of schedule before the first run: the cron
// expression and the run flags, the snapshot flags, the retention flags (as
// prune checks them; doPrune reports whether any is given), and, last, that
// the repository can be reached (opened as a snapshot opens it).
func (opts *scheduleOptions) check(ctx context.Context, g *globalOptions) (sched cron.Schedule, doPrune bool, err error) {
	log := g.logger()
	if sched, err = parseCron(opts.Cron, time.Now()); err != nil {
		return nil, false, err
	}
	switch {
	case opts.Jitter < 0:
		return nil, false, usageErrorf("schedule: --jitter %s: negative", opts.Jitter)
	case opts.Retries < 0:
		return nil, false, usageErrorf("schedule: --retries %d: negative", opts.Retries)
	case opts.RetryBackoff < 0:
		return nil, false, usageErrorf("schedule: --retry-backoff %s: negative", opts.RetryBackoff)
	case opts.MetricsAddr != "" && opts.HealthMaxAge <= 0:
		return nil, false, usageErrorf("schedule: --healthz-max-age %s: must be positive", opts.HealthMaxAge)
	}
	if err := checkSnapshotFlags(opts.Snapshot, log); err != nil {
		return nil, false, err
	}
	// The scheduler prunes what it takes: the snapshots of its host with
	// its tags.
	host := opts.Snapshot.Host
	if host == "" {
		host = localHost()
	}
	opts.Prune.Tags = opts.Snapshot.Tags
	opts.Prune.Hosts = []string{host}
	doPrune = opts.Prune.Within != "" || !opts.Prune.Policy.Empty()
	if doPrune {
		if _, err := opts.Prune.check("schedule"); err != nil {
			return nil, false, err
		}
	}
	repo, err := openRepo(ctx, g, true)
	if err != nil {
		return nil, false, fmt.Errorf("schedule: %w", err)
	}
	repo.Close()
	return sched, doPrune, nil
}

func runSchedule(ctx context.Context, g *globalOptions, opts scheduleOptions) error {
	log := g.logger()
	// Check every flag once, before waiting for the first run.
	sched, doPrune, err := opts.check(ctx, g)
	if err != nil {
		return err
	}
	log.Info("schedule checked", "cron", opts.Cron, "prune", doPrune, "host", hostLabel(opts.Prune.Hosts[0]))

	metrics := newScheduleMetrics()
	started := time.Now()
	if opts.MetricsAddr != "" {
		ln, err := net.Listen("tcp", opts.MetricsAddr)
		if err != nil {
			return fmt.Errorf("schedule: metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(metrics.reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			last := time.Unix(metrics.lastOK.Load(), 0)
			if metrics.lastOK.Load() == 0 {
				last = started // not due yet: healthy until max age after start
			}
			if age := time.Since(last); age > opts.HealthMaxAge {
				http.Error(w, fmt.Sprintf("last success %s ago (max %s)\n", age.Round(time.Second), opts.HealthMaxAge), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving metrics", "addr", ln.Addr().String())
		if opts.ready != nil {
			opts.ready(ln.Addr().String())
		}
	}

	for {
		next := sched.Next(time.Now())
		if next.IsZero() { // checked at start; never due at once
			return fmt.Errorf("schedule: --cron %q fires no more", opts.Cron)
		}
		if opts.Jitter > 0 {
			next = next.Add(rand.N(opts.Jitter))
		}
		log.Info("next run", "at", next.Format(time.RFC3339))
		select {
		case <-ctx.Done():
			log.Info("schedule stopped")
			return nil
		case <-time.After(time.Until(next)):
		}
		start := time.Now()
		err := scheduledRun(ctx, g, opts, doPrune, metrics)
		metrics.lastDur.Set(time.Since(start).Seconds())
		if ctx.Err() != nil {
			log.Info("schedule stopped during a run; nothing partial was committed")
			return nil
		}
		if err != nil {
			log.Error("scheduled run failed", "err", err)
			continue
		}
		now := time.Now().Unix()
		metrics.lastOK.Store(now)
		metrics.lastSuccess.Set(float64(now))
	}
}

// scheduledRun takes one snapshot (with retries) and prunes.
func scheduledRun(ctx context.Context, g *globalOptions, opts scheduleOptions, doPrune bool, metrics *scheduleMetrics) error {
	log := g.logger()
	backoff := opts.RetryBackoff
	var err error
	for attempt := 0; ; attempt++ {
		m, serr := takeSnapshot(ctx, g, opts.Snapshot)
		if serr == nil {
			metrics.bytes.Add(float64(m.StoredSize()))
			log.Info("scheduled snapshot committed", "id", m.ID)
			break
		}
		component := "storage"
		if ce := (componentError{}); errors.As(serr, &ce) {
			component = ce.kind
		}
		metrics.failures.WithLabelValues(component).Inc()
		err = serr
		if attempt >= opts.Retries || ctx.Err() != nil {
			return err
		}
		log.Warn("snapshot failed; retrying", "attempt", attempt+1, "in", backoff.String(), "err", serr)
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(backoff):
		}
		backoff *= 2
	}
	if doPrune {
		if _, err := prune(ctx, g, opts.Prune); err != nil {
			metrics.failures.WithLabelValues("prune").Inc()
			return err
		}
	}
	repo, err := openRepo(ctx, g, false)
	if err == nil {
		ids, lerr := repo.List(ctx)
		if lerr == nil {
			metrics.snapshots.Set(float64(len(ids)))
		}
		repo.Close()
	}
	return nil
}
