package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"golang.org/x/sync/errgroup"

	"github.com/stackport/stackport/internal/lab"
	"github.com/stackport/stackport/snapshot"
	spmongo "github.com/stackport/stackport/snapshot/mongo"
	"github.com/stackport/stackport/storage"
)

// TestMain runs the package's tests and benchmarks, then prints the summary
// table of what the benchmarks and the soak test recorded (nothing when
// they did not run). With restoreModelEnv set it runs restoreModel
// instead (a child process of BenchmarkMongo*).
func TestMain(m *testing.M) {
	if spec := os.Getenv(restoreModelEnv); spec != "" {
		if err := restoreModel(spec); err != nil {
			fmt.Fprintln(os.Stderr, "mongorestore model:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
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
	return measureTo(b, nil, os.Stderr, name, args...)
}

// measureTo is measure with the command's stdout and stderr sent to the
// writers given.
func measureTo(b *testing.B, stdout, stderr io.Writer, name string, args ...string) measurement {
	b.Helper()
	out := filepath.Join(b.TempDir(), "rusage")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M %U %S", "-o", out, name}, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
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
// documents of about 1 KB (default 1,000,000) in one collection and reports
// documents and MB per second, peak RSS, how much of the wall time
// stackport itself spent on a CPU (the rest is the server and the network),
// and the restore's wall time against mongorestore's (see mongoStock) on
// the same data and the same target server.
func BenchmarkMongo(b *testing.B) {
	docs := envInt(b, "BENCH_MONGO_DOCS", 1_000_000)
	bin := buildBinary(b)
	stock := findMongorestore(b)
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
		repo := "file://" + work + "/repo"
		dump := measure(b, bin, "snapshot", "-q", "--repo", repo, "--mongo", src)
		mb := float64(dirSize(b, work+"/repo")) / (1 << 20) // stored (compressed) MB
		dir := exportMongo(b, bin, repo, work)
		_, dst := lab.Mongo(b)
		restore, st := compareRestore(b, bin, stock, repo, dir, dst, 1)
		for name, m := range map[string]measurement{"dump": dump, "restore": restore} {
			b.ReportMetric(float64(docs)/m.wall.Seconds(), name+"-docs/s")
			b.ReportMetric(mb/m.wall.Seconds(), name+"-stored-MB/s")
			b.ReportMetric(float64(m.rss)/(1<<20), name+"-peak-RSS-MiB")
			b.ReportMetric(m.cpu.Seconds()/m.wall.Seconds(), name+"-stackport-cpu/wall")
		}
		b.ReportMetric(restore.wall.Seconds()/st.wall.Seconds(), "restore-time/"+stock.metric())
		data := fmt.Sprintf("%d documents of ~1 KB", docs)
		addSummary(summaryRow{op: "snapshot --mongo", data: data, rate: perSec(float64(docs), "docs", dump.wall), rss: dump.rss})
		addSummary(summaryRow{op: "restore --mongo-to", data: data, rate: perSec(float64(docs), "docs", restore.wall),
			stock: stock.name, ratio: st.wall.Seconds() / restore.wall.Seconds(), rss: restore.rss})
	}
}

// BenchmarkMongoAppsmith restores six Appsmith-like collections (user,
// permissionGroup, application, newPage, newAction, actionCollection, with
// their indexes) of BENCH_MONGO_COLL_DOCS documents each (default 5,000)
// with stackport and with mongorestore (see mongoStock) into the same
// target server, BENCH_MONGO_ROUNDS times (default 3) in alternating
// order, and reports the ratio of the summed wall times.
func BenchmarkMongoAppsmith(b *testing.B) {
	n := envInt(b, "BENCH_MONGO_COLL_DOCS", 5000)
	rounds := envInt(b, "BENCH_MONGO_ROUNDS", 3)
	bin := buildBinary(b)
	stock := findMongorestore(b)
	_, src := lab.Mongo(b)
	seedAppsmithBench(b, lab.MongoClient(b, src).Database("appsmith"), n)
	b.ResetTimer()
	for range b.N {
		work := b.TempDir()
		repo := "file://" + work + "/repo"
		run(b, bin, "snapshot", "-q", "--repo", repo, "--mongo", src)
		dir := exportMongo(b, bin, repo, work)
		_, dst := lab.Mongo(b)
		sp, st := compareRestore(b, bin, stock, repo, dir, dst, rounds)
		docs := float64(6 * n * rounds)
		b.ReportMetric(sp.wall.Seconds()/st.wall.Seconds(), "restore-time/"+stock.metric())
		b.ReportMetric(docs/sp.wall.Seconds(), "restore-docs/s")
		b.ReportMetric(float64(sp.rss)/(1<<20), "restore-peak-RSS-MiB")
		addSummary(summaryRow{op: "restore --mongo-to", data: fmt.Sprintf("6 Appsmith collections × %d documents", n),
			rate: perSec(docs, "docs", sp.wall), stock: stock.name, ratio: st.wall.Seconds() / sp.wall.Seconds(), rss: sp.rss})
	}
}

// envInt returns the integer in the environment variable name, or def.
func envInt(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	return n
}

// seedAppsmithBench writes n documents into each of six collections shaped
// like Appsmith's (as snapshot/mongo's seedAppsmith, without its 15 MiB
// document), with Appsmith's kinds of indexes.
func seedAppsmithBench(b *testing.B, db *mongo.Database, n int) {
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(1, 2))
	oid := func(kind, i int) bson.ObjectID {
		var id bson.ObjectID
		copy(id[:], fmt.Sprintf("%02d%010d", kind, i))
		return id
	}
	date := func() bson.DateTime { return bson.DateTime(rnd.Int64N(4e12) - 1e12) }
	policies := bson.A{
		bson.D{{Key: "permission", Value: "read:applications"}, {Key: "users", Value: bson.A{}}, {Key: "permissionGroups", Value: bson.A{"pg1", "pg2"}}},
		bson.D{{Key: "permission", Value: "manage:applications"}, {Key: "users", Value: bson.A{}}, {Key: "permissionGroups", Value: bson.A{}}},
	}
	ws := func(i int) string { return oid(1, i%5).Hex() }
	app := func(i int) string { return oid(2, i%20).Hex() }
	page := func(i int) string { return oid(3, i%200).Hex() }
	gen := map[string]func(i int) bson.D{
		"user": func(i int) bson.D {
			d := bson.D{{Key: "_id", Value: oid(10, i)}, {Key: "email", Value: fmt.Sprintf("user%d@example.com", i)},
				{Key: "name", Value: fmt.Sprintf("Ünïcode Üser %d ☃", i)}, {Key: "source", Value: "FORM"}, {Key: "isEnabled", Value: i%7 != 0},
				{Key: "password", Value: bson.Binary{Data: []byte(fmt.Sprintf("$2a$10$%053d", i))}},
				{Key: "uuid", Value: bson.Binary{Subtype: 4, Data: bytes.Repeat([]byte{byte(i)}, 16)}},
				{Key: "workspaceIds", Value: bson.A{ws(i)}}, {Key: "createdAt", Value: date()},
				{Key: "loginCount", Value: int32(i)}, {Key: "lastActive", Value: int64(i) << 33}, {Key: "score", Value: float64(i) / 3},
				{Key: "policies", Value: policies}, {Key: "_class", Value: "com.appsmith.server.domains.User"}}
			if i%3 == 0 {
				d = append(d, bson.E{Key: "phone", Value: fmt.Sprintf("+1555%07d", i)})
			}
			return d
		},
		"permissionGroup": func(i int) bson.D {
			return bson.D{{Key: "_id", Value: oid(11, i)}, {Key: "name", Value: fmt.Sprintf("Administrator - %d", i)},
				{Key: "defaultDomainId", Value: ws(i)}, {Key: "defaultDomainType", Value: "Workspace"},
				{Key: "assignedToUserIds", Value: bson.A{oid(10, i).Hex()}}, {Key: "assignedToGroupIds", Value: bson.A{}},
				{Key: "permissions", Value: bson.A{"read:workspaces", "manage:workspaces", "create:applications"}},
				{Key: "policies", Value: policies}, {Key: "deleted", Value: false}}
		},
		"application": func(i int) bson.D {
			return bson.D{{Key: "_id", Value: oid(12, i)}, {Key: "name", Value: fmt.Sprintf("App %d", i)},
				{Key: "workspaceId", Value: ws(i)}, {Key: "isPublic", Value: false},
				{Key: "pages", Value: bson.A{bson.D{{Key: "id", Value: page(i)}, {Key: "isDefault", Value: true}}}},
				{Key: "appPositioning", Value: bson.D{{Key: "type", Value: "FIXED"}}}, {Key: "unpublishedApplicationDetail", Value: bson.D{}},
				{Key: "evaluationVersion", Value: int32(2)}, {Key: "lastDeployedAt", Value: date()}, {Key: "clonedFromApplicationId", Value: nil},
				{Key: "gitApplicationMetadata", Value: bson.D{{Key: "branchName", Value: "main"}, {Key: "remoteUrl", Value: "git@example.com:a/b.git"}}},
				{Key: "policies", Value: policies}}
		},
		"newPage": func(i int) bson.D {
			layout := bson.D{{Key: "dsl", Value: bson.D{{Key: "widgetName", Value: "MainContainer"}, {Key: "version", Value: int32(89)},
				{Key: "children", Value: bson.A{bson.D{{Key: "widgetName", Value: "Text1"}, {Key: "text", Value: strings.Repeat("Hello ", i%40)}}}}}},
				{Key: "layoutOnLoadActions", Value: bson.A{}}}
			return bson.D{{Key: "_id", Value: oid(13, i)}, {Key: "applicationId", Value: app(i)},
				{Key: "unpublishedPage", Value: bson.D{{Key: "name", Value: fmt.Sprintf("Page%d", i)}, {Key: "layouts", Value: bson.A{layout}}}},
				{Key: "publishedPage", Value: bson.D{}}, {Key: "deleted", Value: false}, {Key: "deletedAt", Value: nil}, {Key: "policies", Value: policies}}
		},
		"newAction": func(i int) bson.D {
			return bson.D{{Key: "_id", Value: oid(14, i)}, {Key: "applicationId", Value: app(i)},
				{Key: "pageId", Value: page(i)}, {Key: "pluginType", Value: "API"}, {Key: "workspaceId", Value: ws(i)},
				{Key: "unpublishedAction", Value: bson.D{{Key: "name", Value: fmt.Sprintf("Api%d", i)},
					{Key: "actionConfiguration", Value: bson.D{{Key: "httpMethod", Value: "GET"}, {Key: "path", Value: "/v1/items"},
						{Key: "timeoutInMillisecond", Value: int32(10000)}, {Key: "headers", Value: bson.A{bson.D{{Key: "key", Value: "Accept"}, {Key: "value", Value: "application/json"}}}},
						{Key: "body", Value: strings.Repeat("x", rnd.IntN(600))}}},
					{Key: "executeOnLoad", Value: i%2 == 0}, {Key: "dynamicBindingPathList", Value: bson.A{}}}},
				{Key: "version", Value: int64(i)}, {Key: "updatedAt", Value: date()}, {Key: "deleted", Value: false}, {Key: "policies", Value: policies}}
		},
		"actionCollection": func(i int) bson.D {
			return bson.D{{Key: "_id", Value: oid(15, i)}, {Key: "applicationId", Value: app(i)}, {Key: "pageId", Value: page(i)},
				{Key: "unpublishedCollection", Value: bson.D{{Key: "name", Value: fmt.Sprintf("JSObject%d", i)},
					{Key: "body", Value: "export default {\n\tmyVar1: [],\n\tmyFun1 () {\n\t\treturn Query1.data.map(r => r.id);\n\t}\n}"},
					{Key: "variables", Value: bson.A{bson.D{{Key: "name", Value: "myVar1"}, {Key: "value", Value: "[]"}}}}}},
				{Key: "deleted", Value: false}, {Key: "policies", Value: policies}}
		},
	}
	for _, name := range slices.Sorted(maps.Keys(gen)) {
		for i := 0; i < n; i += 1000 {
			docs := make([]any, 0, 1000)
			for j := i; j < min(i+1000, n); j++ {
				docs = append(docs, gen[name](j))
			}
			if _, err := db.Collection(name).InsertMany(ctx, docs); err != nil {
				b.Fatalf("seed %s: %v", name, err)
			}
		}
	}
	indexes := map[string][]mongo.IndexModel{
		"user": {
			{Keys: bson.D{{Key: "email", Value: 1}}, Options: options.Index().SetUnique(true).SetName("email_unique")},
			{Keys: bson.D{{Key: "phone", Value: 1}}, Options: options.Index().SetSparse(true)},
		},
		"newAction":        {{Keys: bson.D{{Key: "applicationId", Value: 1}, {Key: "pageId", Value: -1}}}},
		"newPage":          {{Keys: bson.D{{Key: "applicationId", Value: 1}, {Key: "deleted", Value: 1}}}},
		"actionCollection": {{Keys: bson.D{{Key: "pageId", Value: 1}}}},
		"permissionGroup": {
			{Keys: bson.D{{Key: "assignedToUserIds", Value: 1}}},
			{Keys: bson.D{{Key: "defaultDomainId", Value: 1}, {Key: "defaultDomainType", Value: 1}}},
		},
	}
	for coll, models := range indexes {
		if _, err := db.Collection(coll).Indexes().CreateMany(ctx, models); err != nil {
			b.Fatalf("indexes of %s: %v", coll, err)
		}
	}
}

// exportMongo writes the mongo component of the latest snapshot of repo in
// mongodump's layout under work and returns the directory, without
// oplog.bson: a source at rest, for mongorestore without --oplogReplay
// (FerretDB has no applyOps).
func exportMongo(b *testing.B, bin, repo, work string) string {
	dir := filepath.Join(work, "dump")
	run(b, bin, "export", "-q", "--repo", repo, "latest", "--component", "mongo", "--out", dir)
	if err := os.Remove(filepath.Join(dir, "oplog.bson")); err != nil && !os.IsNotExist(err) {
		b.Fatal(err)
	}
	return dir
}

// compareRestore restores the database appsmith of the latest snapshot of
// repo into dst rounds times with stackport (as the database sp) and with
// stock from dir, its export (as the database stock), in alternating order
// (stock first in the first round), dropping each database after its
// restore so that every restore finds the same server. It returns the
// summed wall and CPU times and the highest peak RSS of each side.
func compareRestore(b *testing.B, bin string, stock mongoStock, repo, dir, dst string, rounds int) (sp, st measurement) {
	client := lab.MongoClient(b, dst)
	drop := func(db string) {
		if err := client.Database(db).Drop(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	add := func(sum *measurement, m measurement) {
		sum.wall += m.wall
		sum.cpu += m.cpu
		sum.rss = max(sum.rss, m.rss)
	}
	for r := range rounds {
		for i := range 2 {
			if (r+i)%2 == 0 {
				add(&st, stock.restore(b, dir, dst, "appsmith", "stock"))
				drop("stock")
			} else {
				add(&sp, measure(b, bin, "restore", "-q", "--repo", repo, "--mongo-to", dst,
					"--mongo-ns-from", "appsmith", "--mongo-ns-to", "sp"))
				drop("sp")
			}
		}
	}
	b.Logf("restore of %s: stackport %v, %s %v (%.2f×); peak RSS %s, %s", filepath.Base(dir), sp.wall.Round(time.Millisecond),
		stock.name, st.wall.Round(time.Millisecond), sp.wall.Seconds()/st.wall.Seconds(), snapshot.HumanBytes(sp.rss), snapshot.HumanBytes(st.rss))
	return sp, st
}

// mongoStock is what the mongo benchmarks compare stackport's restore
// with: the stock mongorestore when there is one ($STACKPORT_MONGORESTORE,
// mongorestore on PATH or in the lab's bin, where `make bench` builds it
// from the Go module proxy when it can), else restoreModel, a model of it
// run as a child process (the test binary itself), named so in the table.
type mongoStock struct {
	name string // for the summary table
	bin  string // the stock mongorestore; "" for the model
}

func findMongorestore(b *testing.B) mongoStock {
	for _, p := range []string{os.Getenv("STACKPORT_MONGORESTORE"), "mongorestore", filepath.Join(lab.Dir(), "bin", "mongorestore")} {
		if p == "" {
			continue
		}
		if path, err := exec.LookPath(p); err == nil {
			return mongoStock{name: "mongorestore", bin: path}
		}
	}
	b.Logf("STOCK MONGORESTORE NOT AVAILABLE (make bench builds it from github.com/mongodb/mongo-tools when the Go module proxy serves it): " +
		"the restore is compared with a model of mongorestore's defaults instead (-j 4 collections, 1 insertion worker each, " +
		"unordered bulk inserts of 1000 documents, then createIndexes), marked \"(model)\" in the table")
	return mongoStock{name: "mongorestore (model)"}
}

// metric names the comparison in b.ReportMetric units.
func (s mongoStock) metric() string {
	if s.bin == "" {
		return "mongorestore-model"
	}
	return "mongorestore"
}

// restore restores the database from of the export dir into the database
// to of the server uri.
func (s mongoStock) restore(b *testing.B, dir, uri, from, to string) measurement {
	if s.bin != "" {
		return measure(b, s.bin, "--quiet", "--uri", uri, "--dir", dir, "--nsFrom", from+".*", "--nsTo", to+".*")
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	return measure(b, "env", restoreModelEnv+"="+strings.Join([]string{dir, uri, from, to}, "\n"), exe)
}

// restoreModelEnv, set to "DIR\nURI\nFROM\nTO", makes the test binary run
// restoreModel instead of its tests.
const restoreModelEnv = "STACKPORT_BENCH_MONGORESTORE_MODEL"

// restoreModel does what `mongorestore --dir DIR --nsFrom 'FROM.*' --nsTo
// 'TO.*'` does with its default settings, with the same Go driver, for a
// comparison where the stock tool cannot be had: up to 4 collections at
// once (--numParallelCollections), each read in order by one insertion
// worker (--numInsertionWorkersPerCollection) that sends unordered bulk
// inserts of up to 1000 documents (--batchSize) and waits for each; then
// the indexes of each collection in one createIndexes command, 4
// collections at once.
func restoreModel(spec string) error {
	args := strings.Split(spec, "\n")
	if len(args) != 4 {
		return fmt.Errorf("%s: want DIR, URI, FROM and TO on four lines", restoreModelEnv)
	}
	dir, uri, from, to := args[0], args[1], args[2], args[3]
	ctx := context.Background()
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		return err
	}
	defer client.Disconnect(ctx)
	db := client.Database(to)
	entries, err := os.ReadDir(filepath.Join(dir, from))
	if err != nil {
		return err
	}
	var mu sync.Mutex
	indexes := map[string][]bson.Raw{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, e := range entries {
		esc, ok := strings.CutSuffix(e.Name(), ".bson")
		if !ok {
			continue
		}
		name, err := url.PathUnescape(esc)
		if err != nil {
			return err
		}
		g.Go(func() error {
			specs, err := modelCollection(gctx, db, name, filepath.Join(dir, from, esc))
			mu.Lock()
			indexes[name] = specs
			mu.Unlock()
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(4)
	for name, specs := range indexes {
		if len(specs) == 0 {
			continue
		}
		g.Go(func() error {
			return db.RunCommand(gctx, bson.D{{Key: "createIndexes", Value: name}, {Key: "indexes", Value: specs}}).Err()
		})
	}
	return g.Wait()
}

// modelCollection creates the collection name with the options of
// base.metadata.json, inserts the documents of base.bson and returns the
// indexes to build (without _id's).
func modelCollection(ctx context.Context, db *mongo.Database, name, base string) ([]bson.Raw, error) {
	data, err := os.ReadFile(base + ".metadata.json")
	if err != nil {
		return nil, err
	}
	var meta struct {
		Options bson.D     `bson:"options"`
		Indexes []bson.Raw `bson:"indexes"`
	}
	if err := bson.UnmarshalExtJSON(data, true, &meta); err != nil {
		return nil, fmt.Errorf("%s: %w", base, err)
	}
	if err := db.RunCommand(ctx, append(bson.D{{Key: "create", Value: name}}, meta.Options...)).Err(); err != nil {
		return nil, err
	}
	var specs []bson.Raw
	for _, spec := range meta.Indexes {
		if n, _ := spec.Lookup("name").StringValueOK(); n == "_id_" {
			continue
		}
		elems, err := spec.Elements()
		if err != nil {
			return nil, err
		}
		var d bson.D
		for _, e := range elems {
			if k := e.Key(); k != "v" && k != "ns" {
				d = append(d, bson.E{Key: k, Value: e.Value()})
			}
		}
		raw, err := bson.Marshal(d)
		if err != nil {
			return nil, err
		}
		specs = append(specs, raw)
	}

	f, err := os.Open(base + ".bson")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	coll := db.Collection(name)
	opts := options.BulkWrite().SetOrdered(false)
	var batch []mongo.WriteModel
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := coll.BulkWrite(ctx, batch, opts)
		batch, size = batch[:0], 0
		return err
	}
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		doc := make([]byte, binary.LittleEndian.Uint32(hdr[:]))
		copy(doc, hdr[:])
		if _, err := io.ReadFull(r, doc[4:]); err != nil {
			return nil, err
		}
		batch = append(batch, mongo.NewInsertOneModel().SetDocument(bson.Raw(doc)))
		size += len(doc)
		if len(batch) >= 1000 || size >= 48_000_000-100 {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	return specs, flush()
}

// BenchmarkMongoReplay times the replay of a captured oplog: a snapshot of
// BENCH_MONGO_REPLAY_DOCS documents (default 20,000) whose oplog holds
// BENCH_MONGO_OPLOG writes (default 5,000: see oplogWriter.write; the lab's
// FerretDB makes and replays a few hundred updates a second at best, so a
// few hundred thousand would take hours) that a writer made on the source
// during the dump, then `stackport restore --mongo-to`. The dump is
// mongo.Dumper's, in this process, with the close of the collection's data
// stream held until the writer is done, so that the oplog capture (which
// ends when the last collection was read) holds every write. It reports
// oplog entries replayed per second, measured from the restore's JSON log
// between its first progress line ("mongo: replaying the oplog", logged 5 s
// into the replay) and "mongo: oplog replayed".
func BenchmarkMongoReplay(b *testing.B) {
	base := envInt(b, "BENCH_MONGO_REPLAY_DOCS", 20_000)
	writes := envInt(b, "BENCH_MONGO_OPLOG", 5_000)
	bin := buildBinary(b)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		_, src := lab.Mongo(b)
		coll := lab.MongoClient(b, src).Database("appsmith").Collection("newAction")
		w := &oplogWriter{coll: coll, rnd: rand.New(rand.NewPCG(3, 4))}
		if err := w.seed(ctx, base); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		work := b.TempDir()
		repo := "file://" + work + "/repo"
		entries := holdSnapshot(b, repo, src, "appsmith/newAction.bson", func() error { return w.write(ctx, writes) })

		_, dst := lab.Mongo(b)
		var stdout, stderr bytes.Buffer
		restore := measureTo(b, &stdout, &stderr, bin, "restore", "--json", "--repo", repo, "--mongo-to", dst)
		var res restoreResult
		if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
			b.Fatalf("restore --json: %v\n%s", err, stdout.Bytes())
		}
		applied := res.Components["mongo"]["oplog_applied"]
		n, span, err := replaySpan(&stderr)
		if err != nil {
			b.Fatal(err)
		}
		if n != applied {
			b.Fatalf("the log says %d entries replayed, the stats %d", n, applied)
		}
		rate := float64(n) / span.Seconds()
		b.Logf("oplog: %d entries captured, %d applied (%d skipped); %.0f entries/s over the %v the restore logged; restore %v, peak RSS %s",
			entries, applied, res.Components["mongo"]["oplog_skipped"], rate, span.Round(time.Millisecond), restore.wall.Round(time.Millisecond), snapshot.HumanBytes(restore.rss))
		b.ReportMetric(rate, "replay-entries/s")
		b.ReportMetric(float64(applied), "oplog-entries-applied")
		b.ReportMetric(float64(restore.rss)/(1<<20), "restore-peak-RSS-MiB")
		addSummary(summaryRow{op: "restore: oplog replay", data: fmt.Sprintf("%d oplog entries on %d documents", applied, base),
			rate: perSec(float64(n), "entries", span), rss: restore.rss})
	}
}

// replaySpan reads a restore's JSON log and returns the entries replayed
// and the time between the replay's first progress line and its end, and
// the entries applied in that span.
func replaySpan(log io.Reader) (int64, time.Duration, error) {
	type line struct {
		Time    time.Time `json:"time"`
		Msg     string    `json:"msg"`
		Applied int64     `json:"applied"`
	}
	var first, last *line
	dec := json.NewDecoder(log)
	for {
		var l line
		if err := dec.Decode(&l); err == io.EOF {
			break
		} else if err != nil {
			return 0, 0, fmt.Errorf("restore log: %w", err)
		}
		switch l.Msg {
		case "mongo: replaying the oplog":
			if first == nil {
				first = &l
			}
		case "mongo: oplog replayed":
			last = &l
		}
	}
	switch {
	case last == nil:
		return 0, 0, errors.New("restore log: no \"mongo: oplog replayed\" line")
	case first == nil:
		return 0, 0, fmt.Errorf("restore log: the replay of %d entries took less than 5 s, too short to time from the log: raise BENCH_MONGO_OPLOG", last.Applied)
	}
	// The rate over the logged span: the entries applied after the first
	// progress line, over the time since.
	span := last.Time.Sub(first.Time)
	return last.Applied, time.Duration(float64(span) * float64(last.Applied) / float64(last.Applied-first.Applied)), nil
}

// holdSnapshot takes a snapshot of the mongo source src into repo with
// mongo.Dumper, calling writer once the dump started (its oplog start is
// read) and holding the close of the stream named hold until writer
// returned, and returns the number of oplog entries captured.
func holdSnapshot(b *testing.B, repo, src, hold string, writer func() error) int64 {
	ctx := context.Background()
	store, err := storage.Open(ctx, repo, storage.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	w, err := snapshot.NewWriter(ctx, store, snapshot.Options{Host: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	h := &holdingDumper{d: &spmongo.Dumper{URI: src, Log: slog.New(slog.DiscardHandler)}, hold: hold, writer: writer, done: make(chan struct{})}
	if err := w.Add("mongo", h); err != nil {
		b.Fatal(err)
	}
	<-h.done
	if h.err != nil {
		b.Fatalf("writer: %v", h.err)
	}
	m, err := w.Commit()
	if err != nil {
		b.Fatal(err)
	}
	return m.Component("mongo").Stats["oplog_entries"]
}

// holdingDumper is a mongo.Dumper that runs writer when the dump creates
// its first stream and holds the close of the stream named hold until the
// writer returned.
type holdingDumper struct {
	d      *spmongo.Dumper
	hold   string
	writer func() error
	once   sync.Once
	done   chan struct{} // closed when writer returned
	err    error         // writer's
}

func (h *holdingDumper) Dump(ctx context.Context, out snapshot.StreamWriter) (snapshot.Stats, error) {
	defer h.once.Do(func() { close(h.done) }) // no stream created
	return h.d.Dump(ctx, holdingWriter{h, out})
}

type holdingWriter struct {
	h   *holdingDumper
	out snapshot.StreamWriter
}

func (w holdingWriter) Create(name string) (io.WriteCloser, error) {
	w.h.once.Do(func() {
		go func() {
			w.h.err = w.h.writer()
			close(w.h.done)
		}()
	})
	wc, err := w.out.Create(name)
	if err != nil || name != w.h.hold {
		return wc, err
	}
	return heldStream{wc, w.h.done}, nil
}

// heldStream waits for done before it closes.
type heldStream struct {
	io.WriteCloser
	done <-chan struct{}
}

func (s heldStream) Close() error {
	<-s.done
	return s.WriteCloser.Close()
}

// oplogWriter makes writes to an Appsmith-like collection, so that the
// source's oplog records them.
type oplogWriter struct {
	coll *mongo.Collection
	rnd  *rand.Rand
	live []bson.ObjectID // the documents that exist
	n    int             // documents made
}

func (w *oplogWriter) doc() bson.D {
	w.n++
	id := bson.NewObjectID()
	w.live = append(w.live, id)
	return bson.D{{Key: "_id", Value: id}, {Key: "applicationId", Value: strconv.Itoa(w.n % 20)},
		{Key: "pageId", Value: strconv.Itoa(w.n % 200)}, {Key: "name", Value: "Api" + strconv.Itoa(w.n)},
		{Key: "actionConfiguration", Value: bson.D{{Key: "httpMethod", Value: "GET"}, {Key: "path", Value: "/v1/items"},
			{Key: "body", Value: strings.Repeat("x", w.rnd.IntN(300))}}},
		{Key: "version", Value: int64(0)}, {Key: "deleted", Value: false}}
}

// seed inserts n documents.
func (w *oplogWriter) seed(ctx context.Context, n int) error {
	for i := 0; i < n; i += 1000 {
		docs := make([]any, 0, 1000)
		for range min(1000, n-i) {
			docs = append(docs, w.doc())
		}
		if _, err := w.coll.InsertMany(ctx, docs); err != nil {
			return err
		}
	}
	return nil
}

// write makes n writes: 50 % inserts, 35 % updates of fields of an
// existing document and 15 % deletes, in random order, in ordered bulk
// writes of 1000. FerretDB writes each update and delete in a transaction
// of its own (a few hundred a second at best), and holds one of its 100
// SQLite connections per statement of an update command that matched a
// document until the command ends: an update command of 100 such
// statements (an unordered bulk write groups them) waits for a connection
// forever. The driver sends each run of one kind of write of an ordered
// bulk write as one command; these runs are short.
func (w *oplogWriter) write(ctx context.Context, n int) error {
	for done := 0; done < n; {
		models := make([]mongo.WriteModel, 0, 1000)
		for ; len(models) < 1000 && done < n; done++ {
			switch r := w.rnd.IntN(100); {
			case len(w.live) == 0 || r < 50:
				models = append(models, mongo.NewInsertOneModel().SetDocument(w.doc()))
			case r < 85:
				id := w.live[w.rnd.IntN(len(w.live))]
				models = append(models, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: id}}).
					SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "version", Value: int64(done)}, {Key: "deleted", Value: r%2 == 0}}}}))
			default:
				i := w.rnd.IntN(len(w.live))
				id := w.live[i]
				w.live[i] = w.live[len(w.live)-1]
				w.live = w.live[:len(w.live)-1]
				models = append(models, mongo.NewDeleteOneModel().SetFilter(bson.D{{Key: "_id", Value: id}}))
			}
		}
		if _, err := w.coll.BulkWrite(ctx, models); err != nil {
			return err
		}
	}
	return nil
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
