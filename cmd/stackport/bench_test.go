package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/snapshot"
)

// TestMain runs the package's tests and benchmarks, then prints the summary
// table of what the benchmarks and the soak test recorded (nothing when
// they did not run).
func TestMain(m *testing.M) {
	code := m.Run()
	printSummary(os.Stdout)
	os.Exit(code)
}

// summaryRow is one line of the table that `make bench` and `make soak`
// print at the end.
type summaryRow struct {
	op    string  // the stackport command, e.g. "snapshot --volume"
	data  string  // what it moved, e.g. "1024 MiB mixed tree"
	rate  string  // stackport's throughput, e.g. "85.1 MiB/s" or "117k keys/s"
	stock string  // the stock tool compared with, "" for none
	ratio float64 // stackport's throughput ÷ the stock tool's (its time ÷ ours); 0: none
	rss   int64   // stackport's peak RSS in bytes
}

var benchSummary struct {
	mu   sync.Mutex
	rows []summaryRow
}

// addSummary records a row for the summary table.
func addSummary(r summaryRow) {
	benchSummary.mu.Lock()
	benchSummary.rows = append(benchSummary.rows, r)
	benchSummary.mu.Unlock()
}

// printSummary writes the summary table, if any row was recorded.
func printSummary(w io.Writer) {
	benchSummary.mu.Lock()
	defer benchSummary.mu.Unlock()
	if len(benchSummary.rows) == 0 {
		return
	}
	host, _ := os.Hostname()
	fmt.Fprintf(w, "\nstackport summary: %s, %s, %s/%s, %d CPUs, %s; throughput ÷ stock > 1: stackport is faster\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "operation\tdata\tthroughput\tstock tool\tthroughput ÷ stock\tpeak RSS")
	for _, r := range benchSummary.rows {
		stock, ratio := "—", "—"
		if r.stock != "" {
			stock = r.stock
		}
		if r.ratio > 0 {
			ratio = fmt.Sprintf("%.2f", r.ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.op, r.data, r.rate, stock, ratio, snapshot.HumanBytes(r.rss))
	}
	tw.Flush()
}

// mibPerSec formats bytes moved in d as MiB/s.
func mibPerSec(bytes int64, d time.Duration) string {
	return fmt.Sprintf("%.1f MiB/s", float64(bytes)/(1<<20)/d.Seconds())
}

// perSec formats a count of things moved in d, e.g. "117k keys/s".
func perSec(n float64, what string, d time.Duration) string {
	r := n / d.Seconds()
	if r >= 10000 {
		return fmt.Sprintf("%.0fk %s/s", r/1000, what)
	}
	return fmt.Sprintf("%.0f %s/s", r, what)
}

// BenchmarkVolume compares stackport with the stock tools on the same
// generated tree, in the same run: snapshot against tar | zstd -3 -T0, restore
// against zstd -d | tar -x. It reports ratios (stackport ÷ stock), which
// survive a noisy shared machine, and stackport's peak RSS. Run it with
// `make bench`; BENCH_SIZE_MIB picks one size (default: 1024 and 4096).
func BenchmarkVolume(b *testing.B) {
	sizes := []int{1024, 4096}
	if s := os.Getenv("BENCH_SIZE_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		sizes = []int{n}
	}
	for _, tools := range []string{"tar", "zstd", "/usr/bin/time"} {
		if _, err := exec.LookPath(tools); err != nil {
			b.Fatalf("%s is needed for the comparison (make lab installs zstd and time)", tools)
		}
	}
	bin := buildBinary(b)
	for _, mib := range sizes {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			work := b.TempDir()
			tree := filepath.Join(work, "tree")
			genTree(b, tree, int64(mib)<<20)
			size := dirSize(b, tree) // the small files alone are ~34 MiB
			b.ResetTimer()
			for range b.N {
				benchOnce(b, bin, work, tree, size)
			}
		})
	}
}

func benchOnce(b *testing.B, bin, work, tree string, size int64) {
	repo := filepath.Join(work, "repo")
	archive := filepath.Join(work, "stock.tar.zst")
	clean := func(paths ...string) {
		for _, p := range paths {
			os.RemoveAll(p)
		}
	}
	defer clean(repo, archive)

	// Warm the page cache for both sides alike.
	run(b, "sh", "-c", "tar -cf - -C "+tree+" . > /dev/null")
	stockSnap, _ := run(b, "sh", "-c", "tar -cf - -C "+tree+" . | zstd -q -3 -T0 > "+archive)
	spSnap, snapRSS := run(b, bin, "snapshot", "-q", "--repo", "file://"+repo, "--volume", tree)

	stored := dirSize(b, filepath.Join(repo, "snapshots"))
	fi, err := os.Stat(archive)
	if err != nil {
		b.Fatal(err)
	}

	stockOut, spOut := filepath.Join(work, "stock-out"), filepath.Join(work, "sp-out")
	os.Mkdir(stockOut, 0o755)
	defer clean(stockOut, spOut)
	stockRestore, _ := run(b, "sh", "-c", "zstd -q -d < "+archive+" | tar -xf - -C "+stockOut)
	spRestore, restoreRSS := run(b, bin, "restore", "-q", "--repo", "file://"+repo, "--volume-to", spOut)

	b.ReportMetric(spSnap.Seconds()/stockSnap.Seconds(), "snapshot-time/stock")
	b.ReportMetric(float64(stored)/float64(fi.Size()), "stored-size/stock")
	b.ReportMetric(float64(snapRSS)/(1<<20), "snapshot-peak-RSS-MiB")
	b.ReportMetric(spRestore.Seconds()/stockRestore.Seconds(), "restore-time/stock")
	b.ReportMetric(float64(restoreRSS)/(1<<20), "restore-peak-RSS-MiB")
	data := snapshot.HumanBytes(size) + " mixed tree"
	addSummary(summaryRow{op: "snapshot --volume", data: data, rate: mibPerSec(size, spSnap),
		stock: "tar | zstd -3 -T0", ratio: stockSnap.Seconds() / spSnap.Seconds(), rss: snapRSS})
	addSummary(summaryRow{op: "restore --volume-to", data: data, rate: mibPerSec(size, spRestore),
		stock: "zstd -d | tar -x", ratio: stockRestore.Seconds() / spRestore.Seconds(), rss: restoreRSS})
}

// run times a command and returns its peak RSS in bytes.
func run(b *testing.B, name string, args ...string) (time.Duration, int64) {
	b.Helper()
	m := measure(b, name, args...)
	return m.wall, m.rss
}

// measurement is what measure reports of one command.
type measurement struct {
	wall time.Duration
	cpu  time.Duration // user + system time of the command itself
	rss  int64
}

// measure runs a command under GNU time: the rusage of a child started
// directly from this process would include this process's own memory, which
// the child shares until exec.
func measure(b *testing.B, name string, args ...string) measurement {
	b.Helper()
	out := filepath.Join(b.TempDir(), "rusage")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M %U %S", "-o", out, name}, args...)...)
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	m := measurement{wall: time.Since(start)}
	data, err := os.ReadFile(out)
	if err != nil {
		b.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	var kib int64
	var user, sys float64
	if _, err := fmt.Sscanf(lines[len(lines)-1], "%d %f %f", &kib, &user, &sys); err != nil {
		b.Fatalf("GNU time output %q: %v", data, err)
	}
	m.rss = kib << 10
	m.cpu = time.Duration((user + sys) * float64(time.Second))
	return m
}

// buildBinary builds stackport for a benchmark.
func buildBinary(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "stackport")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func dirSize(b *testing.B, dir string) (n int64) {
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// genTree writes about size bytes: 20,000 small text files, then large files
// alternating compressible text and incompressible random data.
func genTree(b *testing.B, dir string, size int64) {
	rng := rand.New(rand.NewPCG(7, 11))
	words := strings.Fields("appsmith widget query datasource page action mongo redis postgres git commit layout button table chart form modal user workspace")
	text := func(n int) []byte {
		var sb strings.Builder
		for sb.Len() < n {
			sb.WriteString(words[rng.IntN(len(words))])
			if rng.IntN(12) == 0 {
				sb.WriteString(fmt.Sprintf(" %d\n", rng.IntN(100000)))
			} else {
				sb.WriteByte(' ')
			}
		}
		return []byte(sb.String()[:n])
	}
	write := func(path string, data []byte) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	var written int64
	for i := range 20000 {
		data := text(512 + rng.IntN(3000))
		write(filepath.Join(dir, "small", strconv.Itoa(i%100), fmt.Sprintf("f%05d.json", i)), data)
		written += int64(len(data))
	}
	chunk := make([]byte, 64<<20)
	for i := 0; written < size; i++ {
		n := min(int64(len(chunk)), size-written)
		var data []byte
		if i%2 == 0 {
			data = text(int(n))
		} else {
			for j := range chunk[:n] {
				chunk[j] = byte(rng.Uint32())
			}
			data = chunk[:n]
		}
		write(filepath.Join(dir, "large", fmt.Sprintf("blob%03d.bin", i)), data)
		written += n
	}
}

// BenchmarkRedis dumps and restores BENCH_REDIS_KEYS small keys (default
// 1,000,000) plus a 100 MB string and a 1,000,000-field hash, side by side with
// redis-cli --rdb on the same server, and reports keys per second, the ratio
// to redis-cli and stackport's peak RSS.
func BenchmarkRedis(b *testing.B) {
	keys := 1_000_000
	if s := os.Getenv("BENCH_REDIS_KEYS"); s != "" {
		var err error
		if keys, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	bin := buildBinary(b)
	_, src := lab.Redis(b)
	ctx := context.Background()
	opt, _ := goredis.ParseURL(src)
	c := goredis.NewClient(opt)
	defer c.Close()
	for i := 0; i < keys; i += 10000 {
		p := c.Pipeline()
		for j := i; j < min(i+10000, keys); j++ {
			p.Set(ctx, "session:"+strconv.Itoa(j), "v"+strconv.Itoa(j*7919), 0)
		}
		if _, err := p.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	c.Set(ctx, "big:string", strings.Repeat("appsmith", 12_500_000), 0)
	for i := 0; i < 1_000_000; i += 10000 {
		fields := make([]any, 0, 20000)
		for j := i; j < i+10000; j++ {
			fields = append(fields, "f"+strconv.Itoa(j), strconv.Itoa(j))
		}
		c.HSet(ctx, "big:hash", fields...)
	}
	b.ResetTimer()
	for range b.N {
		work := b.TempDir()
		stock, _ := run(b, "redis-cli", "-u", src, "--rdb", filepath.Join(work, "dump.rdb"))
		dump, dumpRSS := run(b, bin, "snapshot", "-q", "--repo", "file://"+work+"/repo", "--redis", src)
		_, dst := lab.Redis(b)
		restore, restoreRSS := run(b, bin, "restore", "-q", "--repo", "file://"+work+"/repo", "--redis-to", dst)
		n := float64(keys + 2)
		b.ReportMetric(n/dump.Seconds(), "dump-keys/s")
		b.ReportMetric(dump.Seconds()/stock.Seconds(), "dump-time/redis-cli-rdb")
		b.ReportMetric(n/restore.Seconds(), "restore-keys/s")
		b.ReportMetric(float64(dumpRSS)/(1<<20), "dump-peak-RSS-MiB")
		b.ReportMetric(float64(restoreRSS)/(1<<20), "restore-peak-RSS-MiB")
		data := fmt.Sprintf("%d small keys + a 100 MB string + a 1M-field hash", keys)
		addSummary(summaryRow{op: "snapshot --redis", data: data, rate: perSec(n, "keys", dump),
			stock: "redis-cli --rdb", ratio: stock.Seconds() / dump.Seconds(), rss: dumpRSS})
		addSummary(summaryRow{op: "restore --redis-to", data: data, rate: perSec(n, "keys", restore), rss: restoreRSS})
	}
}

// BenchmarkMongo dumps and restores BENCH_MONGO_DOCS Appsmith-like
// documents of about 1 KB (default 1,000,000) and reports documents and MB
// per second, peak RSS, and how much of the wall time stackport itself spent
// on a CPU (the rest is the server and the network).
func BenchmarkMongo(b *testing.B) {
	docs := 1_000_000
	if s := os.Getenv("BENCH_MONGO_DOCS"); s != "" {
		var err error
		if docs, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	bin := buildBinary(b)
	_, src := lab.Mongo(b)
	ctx := context.Background()
	client := lab.MongoClient(b, src)
	coll := client.Database("appsmith").Collection("newAction")
	body := strings.Repeat("{{ Query1.data }} ", 40)
	for i := 0; i < docs; i += 5000 {
		batch := make([]any, 0, 5000)
		for j := i; j < min(i+5000, docs); j++ {
			batch = append(batch, bson.D{{Key: "_id", Value: bson.NewObjectID()}, {Key: "name", Value: "Action" + strconv.Itoa(j)},
				{Key: "pageId", Value: strconv.Itoa(j % 500)}, {Key: "body", Value: body},
				{Key: "settings", Value: bson.D{{Key: "timeout", Value: int32(10000)}, {Key: "confirm", Value: false}}},
				{Key: "policies", Value: bson.A{"read:actions", "execute:actions", "manage:actions"}}})
		}
		if _, err := coll.InsertMany(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		work := b.TempDir()
		dump := measure(b, bin, "snapshot", "-q", "--repo", "file://"+work+"/repo", "--mongo", src)
		_, dst := lab.Mongo(b)
		restore := measure(b, bin, "restore", "-q", "--repo", "file://"+work+"/repo", "--mongo-to", dst)
		mb := float64(dirSize(b, work+"/repo")) / (1 << 20) // stored (compressed) MB
		for name, m := range map[string]measurement{"dump": dump, "restore": restore} {
			b.ReportMetric(float64(docs)/m.wall.Seconds(), name+"-docs/s")
			b.ReportMetric(mb/m.wall.Seconds(), name+"-stored-MB/s")
			b.ReportMetric(float64(m.rss)/(1<<20), name+"-peak-RSS-MiB")
			b.ReportMetric(m.cpu.Seconds()/m.wall.Seconds(), name+"-stackport-cpu/wall")
		}
		data := fmt.Sprintf("%d documents of ~1 KB", docs)
		addSummary(summaryRow{op: "snapshot --mongo", data: data, rate: perSec(float64(docs), "docs", dump.wall), rss: dump.rss})
		addSummary(summaryRow{op: "restore --mongo-to", data: data, rate: perSec(float64(docs), "docs", restore.wall), rss: restore.rss})
	}
}

// BenchmarkPostgres takes and restores `pgbench -i -s BENCH_PG_SCALE`
// (default 10: 1,000,000 accounts) with stackport and, in the same run, with
// pg_dump -Fd -j 2 and pg_restore -j 2, and reports the wall-time ratio and
// stackport's peak RSS.
func BenchmarkPostgres(b *testing.B) {
	scale := cmp.Or(os.Getenv("BENCH_PG_SCALE"), "10")
	bin := buildBinary(b)
	pgbin := "/usr/lib/postgresql/15/bin/"
	_, src := lab.Postgres(b)
	if out, err := exec.Command(pgbin+"pgbench", "-i", "-q", "-s", scale, src).CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	b.ResetTimer()
	for range b.N {
		work := b.TempDir()
		_, dst := lab.Postgres(b)
		for _, db := range []string{"stock", "sp", "mig", "pgcopydb"} {
			if out, err := exec.Command(pgbin+"psql", dst, "-c", "CREATE DATABASE "+db).CombinedOutput(); err != nil {
				b.Fatalf("create database: %v\n%s", err, out)
			}
		}
		into := func(db string) string { return strings.Replace(dst, "/postgres?", "/"+db+"?", 1) }
		dump := measure(b, pgbin+"pg_dump", "-Fd", "-j", "2", "-f", filepath.Join(work, "stock"), src)
		restore := measure(b, pgbin+"pg_restore", "-j", "2", "-d", into("stock"), filepath.Join(work, "stock"))
		snap := measure(b, bin, "snapshot", "-q", "--repo", "file://"+work+"/repo", "--postgres", src, "--postgres-parallel", "2")
		rest := measure(b, bin, "restore", "-q", "--repo", "file://"+work+"/repo", "--postgres-to", into("sp"), "--postgres-parallel", "2")
		b.ReportMetric(snap.wall.Seconds()/dump.wall.Seconds(), "snapshot-time/pg_dump")
		b.ReportMetric(rest.wall.Seconds()/restore.wall.Seconds(), "restore-time/pg_restore")
		b.ReportMetric((snap.wall+rest.wall).Seconds()/(dump.wall+restore.wall).Seconds(), "total-time/stock")
		b.ReportMetric(float64(max(snap.rss, rest.rss))/(1<<20), "peak-RSS-MiB")
		data := "pgbench -i -s " + scale
		stored := dirSize(b, filepath.Join(work, "repo"))
		addSummary(summaryRow{op: "snapshot --postgres", data: data, rate: mibPerSec(stored, snap.wall) + " stored",
			stock: "pg_dump -Fd -j 2", ratio: dump.wall.Seconds() / snap.wall.Seconds(), rss: snap.rss})
		addSummary(summaryRow{op: "restore --postgres-to", data: data, rate: mibPerSec(stored, rest.wall) + " stored",
			stock: "pg_restore -j 2", ratio: restore.wall.Seconds() / rest.wall.Seconds(), rss: rest.rss})

		// The direct copy, without an archive: migrate against pgcopydb
		// clone (Debian's pgcopydb; `make bench` installs it when it can).
		pgcopydb, err := exec.LookPath("pgcopydb")
		if err != nil {
			b.Logf("pgcopydb not installed: migrate is not compared with pgcopydb clone")
			continue
		}
		clone := measure(b, pgcopydb, "clone", "--source", src, "--target", into("pgcopydb"),
			"--table-jobs", "2", "--index-jobs", "2", "--no-owner", "--no-acl", "--dir", filepath.Join(work, "pgcopydb"))
		mig := measure(b, bin, "migrate", "-q", "--postgres", src, "--postgres-to", into("mig"), "--postgres-parallel", "2",
			"--state", filepath.Join(work, "migrate.state"))
		b.ReportMetric(mig.wall.Seconds()/clone.wall.Seconds(), "migrate-time/pgcopydb")
		addSummary(summaryRow{op: "migrate --postgres", data: data, rate: "—",
			stock: "pgcopydb clone (2 jobs)", ratio: clone.wall.Seconds() / mig.wall.Seconds(), rss: mig.rss})
	}
}
