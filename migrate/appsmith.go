package migrate

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
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

// appDBPostgres reports whether Appsmith itself runs on PostgreSQL
// (APPSMITH_DB_URL is a postgresql:// URL).
func (a *Appsmith) appDBPostgres() bool { return isPostgresURL(a.dbURL()) }

func isPostgresURL(u string) bool {
	return strings.HasPrefix(u, "postgresql://") || strings.HasPrefix(u, "postgres://")
}

// The embedded PostgreSQL of an Appsmith container, as Appsmith's own
// backup reaches it: database appsmith on the Unix socket in
// /var/run/postgresql, as postgres with APPSMITH_TEMPORAL_PASSWORD. It
// holds Keycloak's data (schema public) and Temporal's (schema temporal).
const (
	appsmithEmbeddedPostgres = "host=/var/run/postgresql port=5432 user=postgres dbname=appsmith"
	appsmithPostgresDir      = "data/postgres"
)

// PostgresURL returns the stack's PostgreSQL, or "" when it has none:
// APPSMITH_DB_URL when Appsmith runs on PostgreSQL; else Keycloak's
// database, APPSMITH_KEYCLOAK_DB_URL (a postgresql:// URL, or
// host[:port]/database with APPSMITH_KEYCLOAK_DB_USERNAME and
// APPSMITH_KEYCLOAK_DB_PASSWORD); else the embedded PostgreSQL that holds
// Keycloak's and Temporal's data, when the stack has its files
// (data/postgres) and APPSMITH_ENABLE_EMBEDDED_DB is not 0.
func (a *Appsmith) PostgresURL() string {
	u, _ := a.PostgresSource()
	return u
}

// PostgresSource returns PostgresURL and says which it is.
func (a *Appsmith) PostgresSource() (url, what string) {
	if a.appDBPostgres() {
		return a.dbURL(), "APPSMITH_DB_URL"
	}
	if u := a.keycloakURL(); u != "" {
		return u, "APPSMITH_KEYCLOAK_DB_URL"
	}
	if a.Env["APPSMITH_ENABLE_EMBEDDED_DB"] == "0" {
		return "", ""
	}
	if fi, err := os.Stat(filepath.Join(a.Stack, appsmithPostgresDir)); err != nil || !fi.IsDir() {
		return "", ""
	}
	dsn := appsmithEmbeddedPostgres
	if pw := a.Env["APPSMITH_TEMPORAL_PASSWORD"]; pw != "" {
		dsn += " password=" + dsnQuote(pw)
	}
	return dsn, "the embedded PostgreSQL (Keycloak and Temporal data)"
}

// keycloakURL returns APPSMITH_KEYCLOAK_DB_URL as a postgresql:// URL,
// with the user and password of APPSMITH_KEYCLOAK_DB_USERNAME and
// APPSMITH_KEYCLOAK_DB_PASSWORD when it is host[:port]/database (the form
// Keycloak's JDBC URL is built from), or "".
func (a *Appsmith) keycloakURL() string {
	v := a.Env["APPSMITH_KEYCLOAK_DB_URL"]
	switch {
	case v == "":
		return ""
	case strings.Contains(v, "://"):
		return strings.TrimPrefix(v, "jdbc:")
	}
	host, db, ok := strings.Cut(v, "/")
	if !ok || host == "" || db == "" {
		return ""
	}
	u := &url.URL{Scheme: "postgresql", Host: host, Path: "/" + db}
	if user := a.Env["APPSMITH_KEYCLOAK_DB_USERNAME"]; user != "" {
		if pw, ok := a.Env["APPSMITH_KEYCLOAK_DB_PASSWORD"]; ok && pw != "" {
			u.User = url.UserPassword(user, pw)
		} else {
			u.User = url.User(user)
		}
	}
	return u.String()
}

// dsnQuote quotes a value of a key=value connection string.
func dsnQuote(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
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
	// PostgresFrom is the PostgreSQL that was moved to PostgresURL
	// (default: the stack's, PostgresURL).
	PostgresFrom string
}

// TargetEnv returns the environment of the stateless container after the
// move, as KEY=VALUE lines: the database URLs of the targets, the embedded
// databases off, the encryption password and salt unchanged. A MongoDB
// target URI without a database gets the stack's database (renamed as the
// move renamed it). A PostgreSQL target becomes APPSMITH_DB_URL when
// Appsmith runs on PostgreSQL, and Keycloak's database
// (APPSMITH_KEYCLOAK_DB_URL, in the form the stack used: a URL, or
// host:port/database with APPSMITH_KEYCLOAK_DB_USERNAME and _PASSWORD)
// when the stack's Keycloak data were in the PostgreSQL moved. The
// stack's APPSMITH_TEMPORAL_* variables are carried over, those that name
// the PostgreSQL moved naming the target instead. PostgreSQL URLs are
// written postgresql://, the scheme Appsmith recognises.
func (a *Appsmith) TargetEnv(t AppsmithTargets) ([]string, error) {
	var lines []string
	set := func(k, v string) { lines = append(lines, k+"="+v) }
	pgTarget := appsmithPostgresURL(t.PostgresURL)
	pgFrom := t.PostgresFrom
	if pgFrom == "" {
		pgFrom = a.PostgresURL()
	}
	switch {
	case t.MongoURI != "":
		db := mongoDatabase(a.MongoURI())
		if from := strings.TrimSuffix(t.MongoNSFrom, ".*"); from != "" && db == from {
			db = strings.TrimSuffix(t.MongoNSTo, ".*")
		}
		set("APPSMITH_DB_URL", withMongoDatabase(t.MongoURI, db))
	case t.PostgresURL != "" && a.appDBPostgres() && pgFrom == a.dbURL():
		set("APPSMITH_DB_URL", pgTarget)
	}
	if t.RedisURL != "" {
		set("APPSMITH_REDIS_URL", t.RedisURL)
	}
	if t.PostgresURL != "" {
		kc := a.Env["APPSMITH_KEYCLOAK_DB_URL"]
		switch {
		case kc != "" && a.keycloakURL() != pgFrom:
			// Keycloak's database is elsewhere: not moved.
		case kc != "" && !strings.Contains(kc, "://"):
			// host[:port]/database, the user and password apart.
			u, err := url.Parse(pgTarget)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("appsmith: APPSMITH_KEYCLOAK_DB_URL is host/database, and the PostgreSQL target is not a URL to take them from")
			}
			host := u.Host
			if u.Port() == "" {
				host += ":5432"
			}
			kcURL := host + u.Path
			if u.RawQuery != "" {
				kcURL += "?" + u.RawQuery // JDBC takes sslmode and the like there too
			}
			set("APPSMITH_KEYCLOAK_DB_URL", kcURL)
			if u.User != nil {
				set("APPSMITH_KEYCLOAK_DB_USERNAME", u.User.Username())
				if pw, ok := u.User.Password(); ok {
					set("APPSMITH_KEYCLOAK_DB_PASSWORD", pw)
				}
			}
		default:
			// A URL, or Keycloak's data were in the embedded PostgreSQL
			// or Appsmith's own, moved to the target.
			set("APPSMITH_KEYCLOAK_DB_URL", pgTarget)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(a.Env)) {
		if !strings.HasPrefix(k, "APPSMITH_TEMPORAL_") {
			continue
		}
		v := a.Env[k]
		if t.PostgresURL != "" && v != "" && (v == pgFrom || isPostgresURL(v) && appsmithPostgresURL(v) == appsmithPostgresURL(pgFrom)) {
			v = pgTarget
		}
		set(k, v)
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

// appsmithPostgresURL writes a postgres:// URL as postgresql://, the
// scheme Appsmith recognises.
func appsmithPostgresURL(u string) string {
	if rest, ok := strings.CutPrefix(u, "postgres://"); ok {
		return "postgresql://" + rest
	}
	return u
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
