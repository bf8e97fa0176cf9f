package migrate_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stackport/stackport/migrate"
)

func writeStack(t *testing.T, env string) string {
	t.Helper()
	stack := t.TempDir()
	if err := os.MkdirAll(filepath.Join(stack, "configuration"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stack, migrate.AppsmithEnvFile), []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	return stack
}

func TestAppsmithEnv(t *testing.T) {
	stack := writeStack(t, `# Appsmith configuration
APPSMITH_DB_URL=mongodb://appsmith:pw@localhost:27017/appsmith?authSource=admin
export APPSMITH_REDIS_URL="redis://127.0.0.1:6379"
APPSMITH_ENCRYPTION_PASSWORD='s3cret pass'
APPSMITH_ENCRYPTION_SALT=old-salt
APPSMITH_KEYCLOAK_DB_URL=postgresql://keycloak@localhost/keycloak
`)
	app, err := migrate.LoadAppsmith(stack, []string{"APPSMITH_ENCRYPTION_SALT=salt-from-env", "PATH=/bin"})
	if err != nil {
		t.Fatal(err)
	}
	if app.MongoURI() != "mongodb://appsmith:pw@localhost:27017/appsmith?authSource=admin" || app.RedisURL() != "redis://127.0.0.1:6379" || app.PostgresURL() != "postgresql://keycloak@localhost/keycloak" {
		t.Errorf("sources: %q %q %q", app.MongoURI(), app.RedisURL(), app.PostgresURL())
	}
	if len(app.MissingSecrets()) != 0 {
		t.Errorf("missing: %v", app.MissingSecrets())
	}
	for _, tc := range []struct {
		targets migrate.AppsmithTargets
		want    []string
	}{
		{migrate.AppsmithTargets{MongoURI: "mongodb+srv://u:p@cluster0.example.net/?retryWrites=true", RedisURL: "rediss://:a@10.0.0.3:6378"}, []string{
			"APPSMITH_DB_URL=mongodb+srv://u:p@cluster0.example.net/appsmith?retryWrites=true",
			"APPSMITH_REDIS_URL=rediss://:a@10.0.0.3:6378",
			"APPSMITH_ENABLE_EMBEDDED_DB=0",
			"APPSMITH_ENCRYPTION_PASSWORD=s3cret pass",
			"APPSMITH_ENCRYPTION_SALT=salt-from-env",
		}},
		{migrate.AppsmithTargets{MongoURI: "mongodb://h1:27017,h2:27017", MongoNSFrom: "appsmith", MongoNSTo: "appsmith_prod", PostgresURL: "postgresql://kc@db/keycloak"}, []string{
			"APPSMITH_DB_URL=mongodb://h1:27017,h2:27017/appsmith_prod",
			"APPSMITH_KEYCLOAK_DB_URL=postgresql://kc@db/keycloak",
			"APPSMITH_ENABLE_EMBEDDED_DB=0",
			"APPSMITH_ENCRYPTION_PASSWORD=s3cret pass",
			"APPSMITH_ENCRYPTION_SALT=salt-from-env",
		}},
		{migrate.AppsmithTargets{MongoURI: "mongodb://h/chosen?tls=true"}, []string{
			"APPSMITH_DB_URL=mongodb://h/chosen?tls=true",
			"APPSMITH_ENABLE_EMBEDDED_DB=0",
			"APPSMITH_ENCRYPTION_PASSWORD=s3cret pass",
			"APPSMITH_ENCRYPTION_SALT=salt-from-env",
		}},
	} {
		got, err := app.TargetEnv(tc.targets)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%+v:\n got %q, %v\nwant %q", tc.targets, got, err, tc.want)
		}
	}

	out := filepath.Join(t.TempDir(), "appsmith.env")
	if err := migrate.WriteEnvFile(out, "line one\nline two", []string{"A=1"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	fi, _ := os.Stat(out)
	if string(b) != "# line one\n# line two\nA=1\n" || fi.Mode().Perm() != 0o600 {
		t.Errorf("env file %v: %q", fi.Mode(), b)
	}
}

func TestAppsmithBadStacks(t *testing.T) {
	if _, err := migrate.LoadAppsmith(t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "configuration/docker.env") {
		t.Errorf("stack without docker.env: %v", err)
	}
	app, err := migrate.LoadAppsmith(writeStack(t, "APPSMITH_DB_URL=postgresql://a@localhost/appsmith\nAPPSMITH_ENCRYPTION_SALT=x\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if app.MongoURI() != "" || app.PostgresURL() == "" || !slices.Equal(app.MissingSecrets(), []string{"APPSMITH_ENCRYPTION_PASSWORD"}) {
		t.Errorf("postgres stack: %q %q %v", app.MongoURI(), app.PostgresURL(), app.MissingSecrets())
	}
	got, _ := app.TargetEnv(migrate.AppsmithTargets{PostgresURL: "postgresql://u@cloudsql/appsmith"})
	if got[0] != "APPSMITH_DB_URL=postgresql://u@cloudsql/appsmith" {
		t.Errorf("postgres target env: %q", got)
	}
}

// TestAppsmithPostgres: the stack's PostgreSQL is Appsmith's own, else
// Keycloak's (a URL, or host/database with the user and password apart),
// else the embedded one (when the stack has its files); the env file
// names the target in the form the stack used, and carries the Temporal
// variables.
func TestAppsmithPostgres(t *testing.T) {
	const secrets = "APPSMITH_ENCRYPTION_PASSWORD=pw\nAPPSMITH_ENCRYPTION_SALT=salt\n"
	tail := []string{"APPSMITH_ENABLE_EMBEDDED_DB=0", "APPSMITH_ENCRYPTION_PASSWORD=pw", "APPSMITH_ENCRYPTION_SALT=salt"}
	for _, tc := range []struct {
		name, env   string
		embedded    bool // the stack has data/postgres
		source      string
		targets     migrate.AppsmithTargets
		wantEnv     []string
		wantMissing bool
	}{{
		name:    "keycloak host/database",
		env:     "APPSMITH_DB_URL=mongodb://localhost/appsmith\nAPPSMITH_KEYCLOAK_DB_URL=db.internal:5433/keycloak\nAPPSMITH_KEYCLOAK_DB_USERNAME=kc\nAPPSMITH_KEYCLOAK_DB_PASSWORD=p@ss\nAPPSMITH_KEYCLOAK_DB_DRIVER=postgresql\n",
		source:  "postgresql://kc:p%40ss@db.internal:5433/keycloak",
		targets: migrate.AppsmithTargets{PostgresURL: "postgres://app:s3@10.0.0.5/keycloak?sslmode=require"},
		wantEnv: []string{"APPSMITH_KEYCLOAK_DB_URL=10.0.0.5:5432/keycloak?sslmode=require", "APPSMITH_KEYCLOAK_DB_USERNAME=app", "APPSMITH_KEYCLOAK_DB_PASSWORD=s3"},
	}, {
		name:     "embedded, with Temporal",
		env:      "APPSMITH_DB_URL=mongodb://localhost/appsmith\nAPPSMITH_TEMPORAL_PASSWORD=it's\n",
		embedded: true,
		source:   `host=/var/run/postgresql port=5432 user=postgres dbname=appsmith password='it\'s'`,
		targets:  migrate.AppsmithTargets{PostgresURL: "postgres://app@10.0.0.5/appsmith"},
		wantEnv:  []string{"APPSMITH_KEYCLOAK_DB_URL=postgresql://app@10.0.0.5/appsmith", "APPSMITH_TEMPORAL_PASSWORD=it's"},
	}, {
		name:     "embedded turned off",
		env:      "APPSMITH_DB_URL=mongodb://localhost/appsmith\nAPPSMITH_ENABLE_EMBEDDED_DB=0\n",
		embedded: true,
		source:   "",
	}, {
		name:   "no embedded files",
		env:    "APPSMITH_DB_URL=mongodb://localhost/appsmith\n",
		source: "",
	}, {
		name:    "Appsmith on PostgreSQL, a Temporal URL to the same database",
		env:     "APPSMITH_DB_URL=postgresql://appsmith:pw@localhost/appsmith\nAPPSMITH_TEMPORAL_DB_URL=postgres://appsmith:pw@localhost/appsmith\nAPPSMITH_TEMPORAL_HOST=localhost:7233\n",
		source:  "postgresql://appsmith:pw@localhost/appsmith",
		targets: migrate.AppsmithTargets{PostgresURL: "postgres://app@cloudsql/appsmith", RedisURL: "redis://r:6379"},
		wantEnv: []string{"APPSMITH_DB_URL=postgresql://app@cloudsql/appsmith", "APPSMITH_REDIS_URL=redis://r:6379", "APPSMITH_KEYCLOAK_DB_URL=postgresql://app@cloudsql/appsmith",
			"APPSMITH_TEMPORAL_DB_URL=postgresql://app@cloudsql/appsmith", "APPSMITH_TEMPORAL_HOST=localhost:7233"},
	}, {
		name:    "Keycloak elsewhere: not moved, not rewritten",
		env:     "APPSMITH_DB_URL=postgresql://appsmith@localhost/appsmith\nAPPSMITH_KEYCLOAK_DB_URL=postgresql://kc@other/keycloak\n",
		source:  "postgresql://appsmith@localhost/appsmith",
		targets: migrate.AppsmithTargets{PostgresURL: "postgresql://app@cloudsql/appsmith"},
		wantEnv: []string{"APPSMITH_DB_URL=postgresql://app@cloudsql/appsmith"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			stack := writeStack(t, tc.env+secrets)
			if tc.embedded {
				os.MkdirAll(filepath.Join(stack, "data", "postgres", "main"), 0o700)
			}
			app, err := migrate.LoadAppsmith(stack, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := app.PostgresURL(); got != tc.source {
				t.Errorf("PostgresURL = %q, want %q", got, tc.source)
			}
			if tc.targets == (migrate.AppsmithTargets{}) {
				return
			}
			got, err := app.TargetEnv(tc.targets)
			if want := append(slices.Clone(tc.wantEnv), tail...); err != nil || !slices.Equal(got, want) {
				t.Errorf("env:\n got %q, %v\nwant %q", got, err, want)
			}
		})
	}
}
