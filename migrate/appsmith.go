package migrate

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AppsmithExcludes are the paths of an Appsmith stack folder that are not
// moved with the volume: the raw database files (dumped logically), the
// logs and the local backups.
var AppsmithExcludes = []string{"data/mongodb", "data/redis", "data/postgres", "logs", "data/backup"}

// AppsmithEnvFile is the stack's environment file, relative to the stack.
const AppsmithEnvFile = "configuration/docker.env"

// appsmithSecrets are the values a migrated instance needs unchanged to
// decrypt its data.
var appsmithSecrets = []string{"APPSMITH_ENCRYPTION_PASSWORD", "APPSMITH_ENCRYPTION_SALT"}

// Appsmith is an Appsmith stack: its folder (/appsmith-stacks) and its
// environment.
type Appsmith struct {
	Stack string
	// Env is the stack's docker.env overlaid with the APPSMITH_* variables
	// of the process environment, which win, as in Appsmith.
	Env map[string]string
}

// LoadAppsmith reads stack's configuration/docker.env and overlays the
// APPSMITH_* variables of environ (os.Environ()).
func LoadAppsmith(stack string, environ []string) (*Appsmith, error) {
	path := filepath.Join(stack, AppsmithEnvFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("appsmith: %w (is %s an Appsmith stack folder?)", err, stack)
	}
	defer f.Close()
	a := &Appsmith{Stack: stack, Env: map[string]string{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		a.Env[strings.TrimSpace(k)] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("appsmith: %s: %w", path, err)
	}
	for _, kv := range environ {
		if k, v, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "APPSMITH_") {
			a.Env[k] = v
		}
	}
	return a, nil
}

// dbURL returns the embedded database URL: APPSMITH_DB_URL, or the older
// APPSMITH_MONGODB_URI.
func (a *Appsmith) dbURL() string {
	if u := a.Env["APPSMITH_DB_URL"]; u != "" {
		return u
	}
	return a.Env["APPSMITH_MONGODB_URI"]
}

// MongoURI returns the stack's MongoDB URI, or "" when it runs on
// PostgreSQL.
func (a *Appsmith) MongoURI() string {
	if u := a.dbURL(); strings.HasPrefix(u, "mongodb://") || strings.HasPrefix(u, "mongodb+srv://") {
		return u
	}
	return ""
}

// PostgresURL returns the stack's PostgreSQL URL when Appsmith runs on
// PostgreSQL, or "".
func (a *Appsmith) PostgresURL() string {
	if u := a.dbURL(); strings.HasPrefix(u, "postgresql://") || strings.HasPrefix(u, "postgres://") {
		return u
	}
	return ""
}

// RedisURL returns APPSMITH_REDIS_URL.
func (a *Appsmith) RedisURL() string { return a.Env["APPSMITH_REDIS_URL"] }

// MissingSecrets returns the encryption variables the stack does not set:
// without them a migrated instance cannot decrypt its data.
func (a *Appsmith) MissingSecrets() []string {
	var missing []string
	for _, k := range appsmithSecrets {
		if a.Env[k] == "" {
			missing = append(missing, k)
		}
	}
	return missing
}

// AppsmithTargets are where a stack's databases were moved.
type AppsmithTargets struct {
	MongoURI    string // --mongo-to
	MongoNSFrom string // the database rename of the move, if any
	MongoNSTo   string
	RedisURL    string // --redis-to
	PostgresURL string // --postgres-to
}

// TargetEnv returns the environment of the stateless container after the
// move, as KEY=VALUE lines: the database URLs of the targets, the embedded
// databases off, the encryption password and salt unchanged. A MongoDB
// target URI without a database gets the stack's database (renamed as the
// move renamed it).
func (a *Appsmith) TargetEnv(t AppsmithTargets) ([]string, error) {
	var lines []string
	set := func(k, v string) { lines = append(lines, k+"="+v) }
	switch {
	case t.MongoURI != "":
		db := mongoDatabase(a.MongoURI())
		if from := strings.TrimSuffix(t.MongoNSFrom, ".*"); from != "" && db == from {
			db = strings.TrimSuffix(t.MongoNSTo, ".*")
		}
		set("APPSMITH_DB_URL", withMongoDatabase(t.MongoURI, db))
	case t.PostgresURL != "" && a.PostgresURL() != "":
		set("APPSMITH_DB_URL", t.PostgresURL)
	}
	if t.RedisURL != "" {
		set("APPSMITH_REDIS_URL", t.RedisURL)
	}
	if t.PostgresURL != "" && a.Env["APPSMITH_KEYCLOAK_DB_URL"] != "" {
		set("APPSMITH_KEYCLOAK_DB_URL", t.PostgresURL)
	}
	set("APPSMITH_ENABLE_EMBEDDED_DB", "0")
	for _, k := range appsmithSecrets {
		if v := a.Env[k]; v != "" {
			set(k, v)
		}
	}
	for _, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			k, _, _ := strings.Cut(l, "=")
			return nil, fmt.Errorf("appsmith: %s holds a line break, which an env file cannot carry", k)
		}
	}
	return lines, nil
}

// mongoDatabase returns the database in the path of a MongoDB URI, or "".
func mongoDatabase(uri string) string {
	_, rest, _ := strings.Cut(uri, "://")
	_, path, ok := strings.Cut(rest, "/")
	if !ok {
		return ""
	}
	db, _, _ := strings.Cut(path, "?")
	return db
}

// withMongoDatabase returns uri with db as its database when it names
// none.
func withMongoDatabase(uri, db string) string {
	if db == "" || mongoDatabase(uri) != "" {
		return uri
	}
	scheme, rest, _ := strings.Cut(uri, "://")
	hosts, path, _ := strings.Cut(rest, "/")
	query := ""
	if i := strings.IndexByte(hosts, '?'); i >= 0 {
		hosts, query = hosts[:i], hosts[i:]
	} else if i := strings.IndexByte(path, '?'); i >= 0 {
		query = path[i:]
	}
	return scheme + "://" + hosts + "/" + db + query
}

// WriteEnvFile writes lines to path, readable by its owner only (it holds
// secrets), under a header. The file appears complete or not at all.
func WriteEnvFile(path, header string, lines []string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("env file: %w", err)
	}
	defer os.Remove(tmp.Name())
	var b strings.Builder
	for _, l := range strings.Split(header, "\n") {
		b.WriteString("# " + l + "\n")
	}
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	_, err = tmp.WriteString(b.String())
	err = errors.Join(err, tmp.Chmod(0o600), tmp.Sync(), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("env file: %w", err)
	}
	return nil
}
