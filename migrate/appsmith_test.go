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
	if app.MongoURI() != "mongodb://appsmith:pw@localhost:27017/appsmith?authSource=admin" || app.RedisURL() != "redis://127.0.0.1:6379" || app.PostgresURL() != "" {
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
