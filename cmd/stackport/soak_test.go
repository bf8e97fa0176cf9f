package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/storage"
)

// TestSoak takes 50 consecutive snapshots of a volume, Redis, PostgreSQL
// and MongoDB while a goroutine keeps writing to all four, prunes to the
// last 5 between runs, verifies every snapshot and restores its volume,
// and every 10th snapshot restores everything into targets and verifies
// them against the snapshot. The process's heap (after GC), open file
// descriptors and goroutines must not grow from run 10 to the last run
// beyond a small margin. It prints a summary table.
//
// It runs only with STACKPORT_SOAK=1 (make soak); STACKPORT_SOAK_RUNS
// changes the number of runs (at least 20).
func TestSoak(t *testing.T) {
	if os.Getenv("STACKPORT_SOAK") != "1" {
		t.Skip("the soak test takes minutes: run `make soak` (or STACKPORT_SOAK=1 go test -run TestSoak ./cmd/stackport/)")
	}
	runs := 50
	if s := os.Getenv("STACKPORT_SOAK_RUNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 20 {
			t.Fatalf("STACKPORT_SOAK_RUNS=%q: want a number of at least 20", s)
		}
		runs = n
	}
	const baseline = 10 // the run whose resources the last one is compared with
	const fullEvery = 10

	_, redisSrc := lab.Redis(t)
	_, redisDst := lab.Redis(t)
	_, pgSrc := lab.Postgres(t)
	_, pgDst := lab.Postgres(t)
	_, mongoSrc := lab.Mongo(t)
	_, mongoDst := lab.Mongo(t)
	seedRedisFaults(t, redisSrc)
	seedPostgresFaults(t, pgSrc)
	pgExec(t, pgSrc, `CREATE TABLE appsmith.live (id int PRIMARY KEY, v text NOT NULL)`)
	seedMongoFaults(t, mongoSrc)
	vol := bigTree(t, 8)
	if err := os.Mkdir(filepath.Join(vol, "live"), 0o755); err != nil {
		t.Fatal(err)
	}

	// The writer changes all four sources all the time, in fixed key
	// spaces so that their size stays about the same.
	ctx, stopWriter := context.WithCancel(context.Background())
	w := startSoakWriter(t, ctx, vol, redisSrc, pgSrc, mongoSrc)
	t.Cleanup(stopWriter)

	repoDir := t.TempDir()
	e := &testEnv{t: t, repo: "file://" + repoDir}
	m := newSoakMeter()
	snapOpts := snapshotOptions{Volume: vol, Redis: redisSrc, Postgres: pgSrc, Mongo: mongoSrc,
		Compression: "zstd", MongoParallel: 2, PostgresParallel: 2}
	type sample struct{ heap, fds, goroutines int64 }
	samples := map[int]sample{}

	for run := 1; run <= runs; run++ {
		// snapshot
		var res snapshotResult
		m.measure("snapshot", func() int64 {
			g := e.global()
			g.JSON = true
			if err := runSnapshot(context.Background(), g, snapOpts); err != nil {
				t.Fatalf("run %d: snapshot: %v\n%s", run, err, e.stderr.String())
			}
			if err := json.Unmarshal(e.stdout.Bytes(), &res); err != nil {
				t.Fatalf("run %d: snapshot --json: %v", run, err)
			}
			return res.RawBytes
		})
		id := res.ID
		if len(res.Components) != 4 {
			t.Fatalf("run %d: snapshot %s has %d components, want 4", run, id, len(res.Components))
		}
		// verify
		m.measure("verify", func() int64 {
			if err := e.verify(id); err != nil {
				t.Fatalf("run %d: verify %s: %v", run, id, err)
			}
			return res.RawBytes
		})
		// restore: the volume of every snapshot, everything every 10th
		if run%fullEvery != 0 {
			m.measure("restore (volume)", func() int64 {
				dst := filepath.Join(t.TempDir(), "vol")
				if err := e.restore(id, dst, restoreOptions{}); err != nil {
					t.Fatalf("run %d: restore %s: %v\n%s", run, id, err, e.stderr.String())
				}
				os.RemoveAll(dst)
				return componentRaw(res, "volume")
			})
		} else {
			dst := filepath.Join(t.TempDir(), "vol")
			m.measure("restore (all four)", func() int64 {
				opts := restoreOptions{VolumeTo: dst, RedisTo: redisDst, RedisFlush: true, Yes: true,
					MongoTo: mongoDst, Drop: true, MongoParallel: 2, PostgresTo: pgDst, PostgresClean: true}
				if err := runRestore(context.Background(), e.global(), opts, id); err != nil {
					t.Fatalf("run %d: restore %s into the targets: %v\n%s", run, id, err, e.stderr.String())
				}
				return res.RawBytes
			})
			m.measure("verify --against-*", func() int64 {
				opts := verifyOptions{AgainstRedis: redisDst, AgainstMongo: mongoDst, AgainstPostgres: pgDst}
				if err := runVerify(context.Background(), e.global(), opts, id); err != nil {
					t.Fatalf("run %d: verify %s against the targets: %v\n%s", run, id, err, e.stderr.String())
				}
				return res.RawBytes
			})
			os.RemoveAll(dst)
		}
		// prune
		m.measure("prune --keep-last 5", func() int64 {
			if err := runPrune(context.Background(), e.global(), pruneOptions{Policy: storage.Policy{Last: 5}, Grace: 24 * time.Hour}); err != nil {
				t.Fatalf("run %d: prune: %v", run, err)
			}
			return 0
		})
		if ids := e.ids(); len(ids) != min(run, 5) || ids[len(ids)-1] != id {
			t.Fatalf("run %d: after prune the repository lists %v", run, ids)
		}
		if err := w.err(); err != nil {
			t.Fatalf("run %d: the writer failed: %v", run, err)
		}

		// File descriptors before GC (finalizers would close leaked
		// files), heap after it.
		fds := openFDs(t)
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		samples[run] = sample{heap: int64(ms.HeapInuse), fds: fds, goroutines: int64(runtime.NumGoroutine())}
		if run%10 == 0 || run == 1 {
			t.Logf("run %d: heap in use %s, %d open fds, %d goroutines, writer %d rounds", run,
				snapshot.HumanBytes(int64(ms.HeapInuse)), fds, runtime.NumGoroutine(), w.rounds())
		}
	}
	stopWriter()
	w.wait()

	// Growth from the baseline run to the last one.
	b, l := samples[baseline], samples[runs]
	heapMargin := max(b.heap/4, 8<<20)
	var tbl strings.Builder
	tw := tabwriter.NewWriter(&tbl, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "operation\tdata size\truns\tmean time\tpeak heap\tmax fds\t")
	for _, op := range m.order {
		s := m.ops[op]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%s\t%d\t\n", op, snapshot.HumanBytes(s.bytes/int64(s.runs)), s.runs,
			(s.time / time.Duration(s.runs)).Round(time.Millisecond), snapshot.HumanBytes(s.peakHeap), s.maxFDs)
	}
	tw.Flush()
	fmt.Fprintf(&tbl, "after run %d / run %d: heap in use %s / %s (margin %s), open fds %d / %d, goroutines %d / %d; the writer made %d rounds of changes\n",
		baseline, runs, snapshot.HumanBytes(b.heap), snapshot.HumanBytes(l.heap), snapshot.HumanBytes(heapMargin), b.fds, l.fds, b.goroutines, l.goroutines, w.rounds())
	t.Logf("soak summary (%d runs, %s, %d CPUs):\n%s", runs, runtime.Version(), runtime.NumCPU(), tbl.String())
	// The rows of the table printed at the end (see TestMain); the peak
	// RSS is the test process's, which runs the commands in process.
	for _, op := range m.order {
		s := m.ops[op]
		data, rate := fmt.Sprintf("%d runs", s.runs), "—"
		if s.bytes > 0 {
			data = fmt.Sprintf("%s × %d runs", snapshot.HumanBytes(s.bytes/int64(s.runs)), s.runs)
			rate = mibPerSec(s.bytes, s.time)
		}
		addSummary(summaryRow{op: "soak: " + op, data: data, rate: rate, rss: s.peakRSS})
	}

	if l.heap > b.heap+heapMargin {
		t.Errorf("the heap grew from %s after run %d to %s after run %d", snapshot.HumanBytes(b.heap), baseline, snapshot.HumanBytes(l.heap), runs)
	}
	if l.fds > b.fds+4 {
		t.Errorf("open file descriptors grew from %d after run %d to %d after run %d", b.fds, baseline, l.fds, runs)
	}
	if l.goroutines > b.goroutines+10 {
		t.Errorf("goroutines grew from %d after run %d to %d after run %d", b.goroutines, baseline, l.goroutines, runs)
	}
}

// componentRaw returns the raw bytes of one component of a snapshot.
func componentRaw(res snapshotResult, kind string) int64 {
	var n int64
	for _, c := range res.Components {
		if c.Kind == kind {
			for _, o := range c.Objects {
				n += o.RawSize
			}
		}
	}
	return n
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int64 {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count open files: %v", err)
	}
	return int64(len(ents))
}

// soakMeter records, per operation, runs, bytes, time, the peak heap in use
// (sampled every 20 ms while it runs) and the most open fds after it.
type soakMeter struct {
	order []string
	ops   map[string]*soakOp
}

type soakOp struct {
	runs     int
	bytes    int64
	time     time.Duration
	peakHeap int64
	peakRSS  int64 // of the process, sampled
	maxFDs   int64
}

func newSoakMeter() *soakMeter { return &soakMeter{ops: map[string]*soakOp{}} }

func (m *soakMeter) measure(op string, f func() (bytes int64)) {
	s := m.ops[op]
	if s == nil {
		s = &soakOp{}
		m.ops[op] = s
		m.order = append(m.order, op)
	}
	runtime.GC() // so that the peak is this operation's, not earlier garbage
	var peak, peakRSS int64
	sampleHeap := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peak = max(peak, int64(ms.HeapInuse))
		peakRSS = max(peakRSS, processRSS())
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				sampleHeap()
			}
		}
	}()
	start := time.Now()
	n := f()
	took := time.Since(start)
	close(stop)
	<-done
	sampleHeap()
	s.runs++
	s.bytes += n
	s.time += took
	s.peakHeap = max(s.peakHeap, peak)
	s.peakRSS = max(s.peakRSS, peakRSS)
	fds, _ := os.ReadDir("/proc/self/fd")
	s.maxFDs = max(s.maxFDs, int64(len(fds)))
}

// processRSS returns the process's resident set size in bytes (VmRSS), or
// 0 where /proc does not tell.
func processRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kib << 10
		}
	}
	return 0
}

// soakWriter changes a volume, Redis, PostgreSQL and MongoDB in a loop.
type soakWriter struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	first  error
	nRound int64
}

func (w *soakWriter) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.first
}

func (w *soakWriter) rounds() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.nRound
}

func (w *soakWriter) wait() { w.wg.Wait() }

func startSoakWriter(t *testing.T, ctx context.Context, vol, redisURL, pgURL, mongoURL string) *soakWriter {
	t.Helper()
	opt, err := goredis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rc := goredis.NewClient(opt)
	pc, err := pgx.Connect(context.Background(), pgURL)
	if err != nil {
		t.Fatal(err)
	}
	live := lab.MongoClient(t, mongoURL).Database("appsmith").Collection("live")
	w := &soakWriter{}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer rc.Close()
		defer pc.Close(context.Background())
		rng := rand.New(rand.NewPCG(7, 8))
		buf := make([]byte, 4096)
		fail := func(err error) {
			w.mu.Lock()
			if w.first == nil && ctx.Err() == nil {
				w.first = err
			}
			w.mu.Unlock()
		}
		for i := 0; ctx.Err() == nil; i++ {
			for j := range buf {
				buf[j] = 'a' + byte(rng.IntN(26))
			}
			k := i % 500
			if err := os.WriteFile(filepath.Join(vol, "live", fmt.Sprintf("f%03d", k%200)), buf, 0o644); err != nil {
				fail(err)
			}
			if err := rc.Set(ctx, fmt.Sprintf("live:%d", k), buf[:512], 0).Err(); err != nil {
				fail(fmt.Errorf("redis: %w", err))
			}
			if _, err := pc.Exec(ctx, `INSERT INTO appsmith.live (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v`, k, string(buf[:256])); err != nil {
				fail(fmt.Errorf("postgres: %w", err))
			}
			if _, err := pc.Exec(ctx, `UPDATE appsmith.app SET name = md5(random()::text) WHERE id = $1`, 1+i%30000); err != nil {
				fail(fmt.Errorf("postgres: %w", err))
			}
			if _, err := live.ReplaceOne(ctx, bson.D{{Key: "_id", Value: int32(k)}},
				bson.D{{Key: "_id", Value: int32(k)}, {Key: "v", Value: string(buf[:256])}, {Key: "round", Value: int64(i)}},
				options.Replace().SetUpsert(true)); err != nil {
				fail(fmt.Errorf("mongo: %w", err))
			}
			w.mu.Lock()
			w.nRound++
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return w
}
