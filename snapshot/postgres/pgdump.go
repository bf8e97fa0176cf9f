package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// pgDump is a pg_dump binary that can dump the server.
type pgDump struct {
	path    string
	version string // e.g. "15.20"
}

// pgDumpVersion matches the version in `pg_dump --version` output:
// "pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)".
var pgDumpVersion = regexp.MustCompile(`\(PostgreSQL\) ([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?`)

// majorNum returns the major version number of a PostgreSQL version
// (server_version_num style: 150000 for 15.x, 90600 for 9.6.x).
func majorNum(num int) int {
	if num >= 100000 {
		return num / 10000 * 10000
	}
	return num / 100 * 100
}

// majorName returns the name of a major version: "15", "9.6".
func majorName(num int) string {
	if num >= 100000 {
		return strconv.Itoa(num / 10000)
	}
	return fmt.Sprintf("%d.%d", num/10000, num/100%100)
}

// FindPgDump returns the path and version of the pg_dump a Dumper with
// PgDump set to path would run against a server of version serverNum
// (server_version_num, named serverVersion): the error, when it finds none
// or only one older than the server, names both versions.
func FindPgDump(ctx context.Context, path string, serverNum int, serverVersion string) (found, version string, err error) {
	d, err := findPgDump(ctx, path, serverNum, serverVersion)
	if err != nil {
		return "", "", err
	}
	return d.path, d.version, nil
}

// OlderMajor reports whether server_version_num a is of an older major
// version than b (15.8 is not older than 15.2; 14.12 is older than 15.0).
func OlderMajor(a, b int) bool { return majorNum(a) < majorNum(b) }

// findPgDump returns the pg_dump to use for a server of version serverNum
// (server_version_num): path when set, else the first of pg_dump in PATH
// and /usr/lib/postgresql/<major>/bin/pg_dump that is not older than the
// server.
func findPgDump(ctx context.Context, path string, serverNum int, serverVersion string) (*pgDump, error) {
	candidates := []string{path}
	if path == "" {
		candidates = nil
		if p, err := exec.LookPath("pg_dump"); err == nil {
			candidates = append(candidates, p)
		}
		p := "/usr/lib/postgresql/" + majorName(serverNum) + "/bin/pg_dump"
		if _, err := os.Stat(p); err == nil {
			candidates = append(candidates, p)
		}
		if len(candidates) == 0 {
			return nil, fmt.Errorf("postgres: pg_dump not found in PATH or at %s: install the PostgreSQL %s client (or newer) or give its path (the server is %s)",
				p, majorName(serverNum), serverVersion)
		}
	}
	var tooOld *pgDump
	for _, p := range candidates {
		d, num, err := pgDumpAt(ctx, p)
		if err != nil {
			return nil, err
		}
		if majorNum(num) >= majorNum(serverNum) {
			return d, nil
		}
		if tooOld == nil {
			tooOld = d
		}
	}
	return nil, fmt.Errorf("postgres: pg_dump %s (%s) is older than the server (PostgreSQL %s): install pg_dump %s or newer and give its path",
		tooOld.version, tooOld.path, serverVersion, majorName(serverNum))
}

// pgDumpAt runs `path --version` and returns its version.
func pgDumpAt(ctx context.Context, path string) (*pgDump, int, error) {
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return nil, 0, fmt.Errorf("postgres: pg_dump %s: not found: %w", path, err)
		}
		return nil, 0, fmt.Errorf("postgres: pg_dump %s --version: %w", path, err)
	}
	m := pgDumpVersion.FindStringSubmatch(string(out))
	if m == nil {
		return nil, 0, fmt.Errorf("postgres: %s is not pg_dump: --version printed %q", path, strings.TrimSpace(string(out)))
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	patch, _ := strconv.Atoi(m[3])
	num := major*10000 + minor
	if major < 10 {
		num = major*10000 + minor*100 + patch
	}
	return &pgDump{path: path, version: strings.TrimPrefix(m[0], "(PostgreSQL) ")}, num, nil
}

// run runs pg_dump with args on the database of connString, writing its
// output to w. The password, if any, is passed in the environment rather
// than on the command line.
func (d *pgDump) run(ctx context.Context, connString string, w io.Writer, args ...string) error {
	conn, password, err := splitPassword(connString)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, d.path, append(args, "--dbname="+conn)...)
	cmd.Env = os.Environ()
	if password != "" {
		cmd.Env = append(cmd.Env, "PGPASSWORD="+password)
	}
	cmd.Stdout = w
	var stderr tailBuffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "invalid snapshot identifier") {
			// pg_dump's own words for the usual cause: the snapshot it
			// shares went with stackport's source connection.
			msg += " (the source connection holding the snapshot's exported transaction was lost: the source restarted or the network dropped it; run the snapshot again)"
		}
		if msg != "" {
			return fmt.Errorf("postgres: pg_dump %s: %w: %s", strings.Join(args[:1], " "), err, msg)
		}
		return fmt.Errorf("postgres: pg_dump %s: %w", strings.Join(args[:1], " "), err)
	}
	return nil
}

// splitPassword removes the password from a postgres:// URL or a key=value
// connection string and returns it separately.
func splitPassword(connString string) (conn, password string, err error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", "", errors.New("postgres: connection string is not a valid URL")
		}
		if p, ok := u.User.Password(); ok {
			password = p
			u.User = url.User(u.User.Username())
		}
		q := u.Query()
		if q.Has("password") {
			password = q.Get("password")
			q.Del("password")
			u.RawQuery = q.Encode()
		}
		return u.String(), password, nil
	}
	var kept []string
	rest := connString
	for {
		rest = strings.TrimLeft(rest, " \t\n\r")
		if rest == "" {
			break
		}
		key, val, next, err := nextKeyValue(rest)
		if err != nil {
			return "", "", err
		}
		if key == "password" {
			password = val
		} else {
			kept = append(kept, rest[:len(rest)-len(next)])
		}
		rest = next
	}
	return strings.Join(kept, " "), password, nil
}

// nextKeyValue parses the first key = value pair of a key=value connection
// string; value may be single-quoted with backslash escapes.
func nextKeyValue(s string) (key, val, rest string, err error) {
	bad := errors.New("postgres: connection string: malformed key=value pair")
	eq := strings.IndexByte(s, '=')
	if eq <= 0 {
		return "", "", "", bad
	}
	key = strings.TrimSpace(s[:eq])
	s = strings.TrimLeft(s[eq+1:], " \t\n\r")
	if !strings.HasPrefix(s, "'") {
		end := strings.IndexAny(s, " \t\n\r")
		if end < 0 {
			end = len(s)
		}
		return key, s[:end], s[end:], nil
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			}
		case '\'':
			return key, b.String(), s[i+1:], nil
		default:
			b.WriteByte(s[i])
		}
	}
	return "", "", "", bad
}

// tailBuffer keeps the last 4 KiB written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	const max = 4 << 10
	t.b = append(t.b, p...)
	if len(t.b) > max {
		t.b = append(t.b[:0], t.b[len(t.b)-max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(bytes.ToValidUTF8(t.b, nil)) }
