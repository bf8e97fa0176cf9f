// Command demomigrate is the migrate part of `make demo` (internal/demo.sh).
// It shows `stackport migrate` on this machine: it starts lab servers on
// 127.0.0.1 (internal/lab: a FerretDB, a Redis and a PostgreSQL as the
// embedded databases of an Appsmith container, and as targets a second
// FerretDB, a Memorystore-like Redis whose blocked commands are renamed away
// and which wants an AUTH string, and a PostgreSQL database owned by a role
// that is not a superuser, as on Cloud SQL), seeds a small Appsmith stack
// (a stack folder with configuration/docker.env and git-storage, documents,
// Redis keys with TTLs, Keycloak tables), runs `stackport migrate --plan`
// and `stackport migrate --profile appsmith` with every target, a file://
// repository and --env-out, and prints the report and the new container's
// environment with its secrets masked. It then checks the targets itself
// (files, documents, keys and TTLs, rows) and exits 1 when anything failed
// or a component is not verified, 130 when interrupted. Every server it
// started is stopped at the end, also on failure and on Ctrl-C.
//
// The servers come from the lab (make lab builds FerretDB into
// ${XDG_CACHE_HOME:-$HOME/.cache}/stackport-lab; Redis and PostgreSQL 15
// are Debian's).
//
// Usage:
//
//	go run ./internal/demomigrate path/to/stackport
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/stackport/stackport/internal/lab"
)

func main() {
	if len(os.Args) != 2 || strings.HasPrefix(os.Args[1], "-") {
		fmt.Fprintln(os.Stderr, "usage: demomigrate path/to/stackport")
		os.Exit(2)
	}
	sp, err := filepath.Abs(os.Args[1])
	if err == nil {
		_, err = os.Stat(sp)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "demomigrate: stackport binary: %v\n", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		if context.Cause(ctx) != context.Canceled {
			fmt.Fprintln(os.Stderr, "\ndemomigrate: interrupted: stopping the lab servers (interrupt again to quit at once)")
		}
		stop() // a second interrupt ends the program the default way
	}()

	st := lab.NewStandalone("demo-migrate", os.Stdout)
	var demoErr error
	labErr := st.Run(func() { demoErr = run(ctx, st, sp) })
	interrupted := ctx.Err() != nil

	step("stop every lab server")
	st.Close()
	fmt.Println("stopped; their data and the demo's folders are removed")

	switch err := errors.Join(labErr, demoErr); {
	case interrupted:
		fmt.Fprintln(os.Stderr, "demomigrate: interrupted")
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "\n\033[1mmigrate demo FAILED\033[0m: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("\n\033[1mmigrate demo passed\033[0m\n")
}

// step prints a heading, as demo.sh does.
func step(format string, args ...any) {
	fmt.Printf("\n\033[1m== %s\033[0m\n", fmt.Sprintf(format, args...))
}

// servers are the demo's lab servers.
type servers struct {
	mongoSrc, redisSrc, pgSrc string
	mongoDst, redisDst, pgDst string
}

// redisAuth is the target Redis's AUTH string, as Memorystore hands out.
const redisAuth = "demo-auth-string-7f3a"

// startLab starts the sources and the targets, stopping early when ctx is
// cancelled.
func startLab(ctx context.Context, st *lab.Standalone) (servers, error) {
	var s servers
	memorystore := lab.Memorystore("requirepass " + redisAuth)
	for _, start := range []func(){
		func() { _, s.mongoSrc = lab.Mongo(st) },
		func() { _, s.redisSrc = lab.Redis(st) },
		func() { _, s.pgSrc = lab.Postgres(st) },
		func() { _, s.mongoDst = lab.Mongo(st) },
		func() { _, s.redisDst = lab.Redis(st, memorystore...) },
		func() { _, s.pgDst = lab.Postgres(st) },
	} {
		if err := ctx.Err(); err != nil {
			return s, err
		}
		start()
	}
	s.redisDst = strings.Replace(s.redisDst, "redis://", "redis://:"+redisAuth+"@", 1)
	return s, ctx.Err()
}

// run is the demo; lab failures end it through st.
func run(ctx context.Context, st *lab.Standalone, sp string) error {
	t0 := time.Now()
	work := st.TempDir()
	stack := filepath.Join(work, "appsmith-stacks")
	filestore := filepath.Join(work, "filestore") // the Filestore share, mounted
	volumeTo := filepath.Join(filestore, "appsmith-stacks")
	repo := "file://" + filepath.Join(work, "repo")
	envOut := filepath.Join(work, "appsmith.env")
	if err := os.Mkdir(filestore, 0o755); err != nil {
		return err
	}

	step("start the lab: the embedded FerretDB, Redis and PostgreSQL; their targets (FerretDB, a Memorystore-like Redis, a Cloud SQL-like PostgreSQL)")
	srv, err := startLab(ctx, st)
	if err != nil {
		return err
	}
	fmt.Printf("lab servers ready in %v\n", time.Since(t0).Round(time.Millisecond))

	step("seed a small Appsmith stack in %s", stack)
	seed, err := seedStack(ctx, st, srv, stack)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	fmt.Print(seed.summary())
	pgTo, err := prepareCloudSQL(ctx, srv.pgDst)
	if err != nil {
		return fmt.Errorf("PostgreSQL target: %w", err)
	}
	fmt.Printf("PostgreSQL target: database keycloak owned by role keycloak (not a superuser)\n")

	targets := []string{
		"--volume-to", volumeTo,
		"--mongo-to", srv.mongoDst,
		"--redis-to", srv.redisDst,
		"--postgres-to", pgTo,
		"--repo", repo,
	}
	plan := append([]string{"migrate", "--plan", "--profile", "appsmith", "--stack", stack}, targets...)
	step("stackport migrate --plan: inspect the sources and targets, write nothing")
	if _, err := stackport(ctx, sp, plan...); err != nil {
		return fmt.Errorf("migrate --plan: %w", err)
	}

	mig := append([]string{"migrate", "--profile", "appsmith", "--stack", stack}, targets...)
	mig = append(mig, "--env-out", envOut)
	step("stackport migrate: move every component concurrently, verify, write the new environment")
	stderr, err := stackport(ctx, sp, mig...)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := checkReport(stderr); err != nil {
		return err
	}

	step("the stateless container's environment, %s (secrets masked)", envOut)
	if err := checkEnvFile(envOut, seed, srv, pgTo); err != nil {
		return err
	}

	step("check the targets independently of stackport")
	if err := checkTargets(ctx, st, seed, srv, pgTo, stack, volumeTo); err != nil {
		return err
	}

	step("stackport list: the migration's snapshot in %s", repo)
	if _, err := stackport(ctx, sp, "list", "--repo", repo); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	fmt.Printf("\nthe whole scenario took %v\n", time.Since(t0).Round(time.Millisecond))
	return nil
}

// stackport runs the stackport binary with args, stdout and stderr on the
// terminal, and returns what it wrote to stderr. The command line is
// printed with passwords masked. An interrupt reaches it as SIGINT.
func stackport(ctx context.Context, sp string, args ...string) (string, error) {
	shown := make([]string, len(args))
	for i, a := range args {
		shown[i] = maskURL(a)
	}
	fmt.Printf("$ stackport %s\n", strings.Join(shown, " "))
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, sp, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	cmd.Stdout = os.Stdout
	cmd.Stderr = io.MultiWriter(os.Stderr, &stderr)
	// The stack's docker.env, not this process's environment, names the
	// sources; the repository is the --repo flag.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "APPSMITH_") && !strings.HasPrefix(kv, "STACKPORT_REPO=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	err := cmd.Run()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return stderr.String(), err
}

// components are the parts of the stack the migration moves.
var components = []string{"volume", "mongo", "redis", "postgres"}

// checkReport finds the report table in migrate's stderr and requires
// every component in it, verified.
func checkReport(stderr string) error {
	results := map[string]string{}
	in := false
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 5 && f[0] == "COMPONENT" && f[4] == "RESULT":
			in = true
		case in && len(f) >= 5 && slices.Contains(components, f[0]):
			results[f[0]] = f[len(f)-1]
		default:
			in = false
		}
	}
	var bad []string
	for _, c := range components {
		if r := results[c]; r != "verified" {
			if r == "" {
				r = "not in the report"
			}
			bad = append(bad, c+": "+r)
		}
	}
	if bad != nil {
		return fmt.Errorf("migrate's report: not verified: %s", strings.Join(bad, ", "))
	}
	fmt.Printf("\nreport: %s verified\n", strings.Join(components, ", "))
	return nil
}

// maskURL returns s with the password of a URL in it masked.
func maskURL(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); !ok {
		return s
	}
	return u.Redacted()
}

// maskEnvLine masks the value of a secret variable and the passwords of
// URLs in an env file line.
func maskEnvLine(line string) string {
	k, v, ok := strings.Cut(line, "=")
	if !ok || strings.HasPrefix(strings.TrimSpace(line), "#") {
		return line
	}
	for _, secret := range []string{"PASSWORD", "SALT", "SECRET", "TOKEN"} {
		if strings.Contains(k, secret) && v != "" {
			return fmt.Sprintf("%s=%s (%d characters, masked)", k, strings.Repeat("*", 8), len(v))
		}
	}
	return k + "=" + maskURL(v)
}
