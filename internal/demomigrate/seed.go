package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/stackport/stackport/internal/lab"
)

// seeded is what seedStack put into the sources.
type seeded struct {
	password, salt string
	files          int            // regular files of the stack that move
	docs           map[string]int // appsmith.<collection>: documents
	keys, ttlKeys  int            // Redis keys, those with a TTL
	rows           map[string]int // keycloak's public.<table>: rows
	keycloakURL    string         // APPSMITH_KEYCLOAK_DB_URL
}

func (s seeded) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "volume: %d files (configuration/docker.env, git-storage, ssl), plus raw database files and logs the profile leaves out\n", s.files)
	total := 0
	var colls []string
	for _, c := range mongoCollections {
		total += s.docs[c]
		colls = append(colls, fmt.Sprintf("%s %d", c, s.docs[c]))
	}
	fmt.Fprintf(&b, "FerretDB: %d documents in appsmith (%s), a unique index on user.email\n", total, strings.Join(colls, ", "))
	fmt.Fprintf(&b, "Redis: %d keys, %d of them with a TTL (Spring sessions)\n", s.keys, s.ttlKeys)
	var tables []string
	for _, t := range pgTables {
		tables = append(tables, fmt.Sprintf("%s %d", t, s.rows[t]))
	}
	fmt.Fprintf(&b, "PostgreSQL: Keycloak's database keycloak, rows: %s\n", strings.Join(tables, ", "))
	return b.String()
}

var (
	mongoCollections = []string{"user", "application", "newPage", "newAction"}
	pgTables         = []string{"realm", "user_entity", "admin_event_entity"}
)

// seedStack fills the sources and writes the stack folder whose
// docker.env names them.
func seedStack(ctx context.Context, st *lab.Standalone, srv servers, stack string) (seeded, error) {
	s := seeded{password: randomHex(16), salt: randomHex(8)}
	var err error
	if s.docs, err = seedMongo(ctx, st, srv.mongoSrc); err != nil {
		return s, fmt.Errorf("FerretDB: %w", err)
	}
	if s.keys, s.ttlKeys, err = seedRedis(ctx, srv.redisSrc); err != nil {
		return s, fmt.Errorf("Redis: %w", err)
	}
	if s.keycloakURL, s.rows, err = seedPostgres(ctx, srv.pgSrc); err != nil {
		return s, fmt.Errorf("PostgreSQL: %w", err)
	}
	env := strings.Join([]string{
		"# Appsmith's configuration (the demo's: the embedded databases are lab servers)",
		"APPSMITH_INSTANCE_NAME=stackport demo",
		"APPSMITH_DB_URL=" + lab.MongoURI(srv.mongoSrc, "appsmith"),
		"APPSMITH_REDIS_URL=" + srv.redisSrc,
		"APPSMITH_KEYCLOAK_DB_URL=" + s.keycloakURL,
		"APPSMITH_ENCRYPTION_PASSWORD=" + s.password,
		"APPSMITH_ENCRYPTION_SALT=" + s.salt,
		"APPSMITH_MAIL_ENABLED=false",
		"",
	}, "\n")
	s.files, err = writeStack(stack, env)
	return s, err
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// writeStack writes an Appsmith stack folder and returns how many of its
// regular files the profile moves.
func writeStack(stack, env string) (int, error) {
	files := map[string]string{
		"configuration/docker.env": env,
		"ssl/fullchain.pem":        "-----BEGIN CERTIFICATE-----\n(demo)\n-----END CERTIFICATE-----\n",
		"ssl/privkey.pem":          "-----BEGIN PRIVATE KEY-----\n(demo)\n-----END PRIVATE KEY-----\n",
	}
	for app := 1; app <= 3; app++ {
		repo := fmt.Sprintf("git-storage/6650a1f0c2d4/app-%d/repo", app)
		files[repo+"/.git/HEAD"] = "ref: refs/heads/main\n"
		files[repo+"/.git/config"] = "[core]\n\trepositoryformatversion = 0\n[remote \"origin\"]\n\turl = git@example.com:acme/app.git\n"
		files[repo+"/application.json"] = fmt.Sprintf(`{"name": "App %d", "appVersion": 2}`+"\n", app)
		files[repo+"/theme.json"] = `{"name": "Default"}` + "\n"
		files[repo+"/README.md"] = fmt.Sprintf("# App %d\n\nConnected to git by Appsmith.\n", app)
		for page := 1; page <= 3; page++ {
			dir := fmt.Sprintf("%s/pages/Page%d", repo, page)
			files[dir+fmt.Sprintf("/Page%d.json", page)] = fmt.Sprintf(`{"unpublishedPage": {"name": "Page%d", "layouts": [{"dsl": {"widgetName": "MainContainer", "children": []}}]}}`+"\n", page)
			for q := 1; q <= 2; q++ {
				files[fmt.Sprintf("%s/queries/Query%d/metadata.json", dir, q)] = fmt.Sprintf(`{"name": "Query%d", "pluginId": "postgres-plugin"}`+"\n", q)
				files[fmt.Sprintf("%s/queries/Query%d/Query%d.txt", dir, q, q)] = fmt.Sprintf("SELECT * FROM users WHERE id = {{Table1.selectedRow.id}} LIMIT %d;\n", q*10)
			}
		}
	}
	moved := len(files)
	// What the profile leaves out: the embedded databases' raw files
	// (dumped logically instead), logs and local backups.
	for name, data := range map[string]string{
		"data/mongodb/WiredTiger":       "raw database file",
		"data/redis/dump.rdb":           "raw redis file",
		"logs/backend/backend.log":      "a log line\n",
		"data/backup/appsmith-data.tgz": "an old backup",
	} {
		files[name] = data
	}
	for name, data := range files {
		p := filepath.Join(stack, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return 0, err
		}
		mode := os.FileMode(0o644)
		if name == "configuration/docker.env" || strings.HasSuffix(name, "privkey.pem") {
			mode = 0o600
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			return 0, err
		}
	}
	return moved, nil
}

// seedMongo fills Appsmith-like collections of the appsmith database.
func seedMongo(ctx context.Context, st *lab.Standalone, uri string) (map[string]int, error) {
	db := lab.MongoClient(st, uri).Database("appsmith")
	now := time.Now().UTC().Truncate(time.Millisecond)
	counts := map[string]int{"user": 25, "application": 10, "newPage": 150, "newAction": 300}
	appIDs := make([]bson.ObjectID, counts["application"])
	pageIDs := make([]bson.ObjectID, counts["newPage"])
	for i := range appIDs {
		appIDs[i] = bson.NewObjectID()
	}
	for i := range pageIDs {
		pageIDs[i] = bson.NewObjectID()
	}
	docs := map[string][]any{}
	for i := range counts["user"] {
		docs["user"] = append(docs["user"], bson.D{{Key: "_id", Value: bson.NewObjectID()},
			{Key: "email", Value: fmt.Sprintf("user%d@example.com", i)}, {Key: "name", Value: fmt.Sprintf("User %d", i)},
			{Key: "isEnabled", Value: i%7 != 0}, {Key: "createdAt", Value: now.Add(-time.Duration(i) * time.Hour)}})
	}
	for i, id := range appIDs {
		docs["application"] = append(docs["application"], bson.D{{Key: "_id", Value: id},
			{Key: "name", Value: fmt.Sprintf("App %d", i)}, {Key: "workspaceId", Value: "6650a1f0c2d4"},
			{Key: "appIsExample", Value: false}, {Key: "gitApplicationMetadata", Value: bson.D{{Key: "branchName", Value: "main"}}}})
	}
	for i, id := range pageIDs {
		docs["newPage"] = append(docs["newPage"], bson.D{{Key: "_id", Value: id},
			{Key: "applicationId", Value: appIDs[i%len(appIDs)].Hex()},
			{Key: "unpublishedPage", Value: bson.D{{Key: "name", Value: fmt.Sprintf("Page%d", i)},
				{Key: "layouts", Value: bson.A{bson.D{{Key: "dsl", Value: bson.D{{Key: "widgetName", Value: "MainContainer"}, {Key: "version", Value: int32(89)}}}}}}}}})
	}
	for i := range counts["newAction"] {
		docs["newAction"] = append(docs["newAction"], bson.D{{Key: "_id", Value: bson.NewObjectID()},
			{Key: "pageId", Value: pageIDs[i%len(pageIDs)].Hex()},
			{Key: "unpublishedAction", Value: bson.D{{Key: "name", Value: fmt.Sprintf("Query%d", i)},
				{Key: "executeOnLoad", Value: i%2 == 0},
				{Key: "actionConfiguration", Value: bson.D{{Key: "body", Value: "SELECT * FROM users LIMIT 10;"},
					{Key: "timeoutInMillisecond", Value: int32(10000)}}}}}})
	}
	for _, c := range mongoCollections {
		if _, err := db.Collection(c).InsertMany(ctx, docs[c]); err != nil {
			return nil, fmt.Errorf("appsmith.%s: %w", c, err)
		}
	}
	if _, err := db.Collection("user").Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "email", Value: 1}},
		Options: options.Index().SetUnique(true)}); err != nil {
		return nil, fmt.Errorf("index on user.email: %w", err)
	}
	return counts, nil
}

// seedRedis writes Spring session keys with TTLs and a few without.
func seedRedis(ctx context.Context, uri string) (keys, withTTL int, err error) {
	opt, err := goredis.ParseURL(uri)
	if err != nil {
		return 0, 0, err
	}
	c := goredis.NewClient(opt)
	defer c.Close()
	p := c.Pipeline()
	for i := range 100 {
		id := fmt.Sprintf("%08x-demo-session-%04d", i*7919, i)
		p.HSet(ctx, "spring:session:sessions:"+id, "creationTime", time.Now().UnixMilli(), "maxInactiveInterval", 2592000,
			"sessionAttr:SPRING_SECURITY_CONTEXT", fmt.Sprintf("user%d@example.com", i%25))
		p.Expire(ctx, "spring:session:sessions:"+id, time.Duration(30+i)*time.Minute)
		p.Set(ctx, "spring:session:sessions:expires:"+id, "", time.Duration(20+i)*time.Minute)
	}
	p.SAdd(ctx, "appsmith:features", "git", "audit-logs", "branding")
	p.RPush(ctx, "appsmith:queue:emails", "welcome:user1", "welcome:user2")
	p.Set(ctx, "appsmith:instance-id", "demo", 0)
	if _, err := p.Exec(ctx); err != nil {
		return 0, 0, err
	}
	return 203, 200, nil
}

// seedPostgres creates Keycloak's database with a few tables and returns
// its URL (as APPSMITH_KEYCLOAK_DB_URL) and the rows per table.
func seedPostgres(ctx context.Context, uri string) (string, map[string]int, error) {
	if err := pgExec(ctx, uri, `CREATE DATABASE keycloak`); err != nil {
		return "", nil, err
	}
	kc := strings.Replace(strings.Replace(uri, "postgres://", "postgresql://", 1), "/postgres?", "/keycloak?", 1)
	err := pgExec(ctx, kc,
		`CREATE TABLE realm (id varchar(36) PRIMARY KEY, name varchar(255) UNIQUE NOT NULL, enabled boolean NOT NULL DEFAULT true)`,
		`INSERT INTO realm VALUES ('master', 'master', true), ('appsmith', 'appsmith', true)`,
		`CREATE TABLE user_entity (id varchar(36) PRIMARY KEY, username varchar(255) NOT NULL, email varchar(255),
			realm_id varchar(36) NOT NULL REFERENCES realm, created_timestamp bigint, UNIQUE (realm_id, username))`,
		`INSERT INTO user_entity SELECT gen_random_uuid()::text, 'user' || g, 'user' || g || '@example.com',
			CASE WHEN g = 1 THEN 'master' ELSE 'appsmith' END, 1700000000000 + g * 1000 FROM generate_series(1, 250) g`,
		`CREATE INDEX user_entity_email ON user_entity (email)`,
		`CREATE TABLE admin_event_entity (id bigserial PRIMARY KEY, realm_id varchar(36) REFERENCES realm,
			operation_type varchar(32), representation jsonb, admin_event_time timestamptz DEFAULT now())`,
		`INSERT INTO admin_event_entity (realm_id, operation_type, representation)
			SELECT 'appsmith', 'CREATE', jsonb_build_object('user', 'user' || g) FROM generate_series(1, 120) g`)
	if err != nil {
		return "", nil, err
	}
	return kc, map[string]int{"realm": 2, "user_entity": 250, "admin_event_entity": 120}, nil
}

// prepareCloudSQL creates, as on Cloud SQL, a role that is not a
// superuser and its database, and returns the target URL with that role.
func prepareCloudSQL(ctx context.Context, uri string) (string, error) {
	if err := pgExec(ctx, uri, `CREATE ROLE keycloak LOGIN PASSWORD 'kc-demo-pass' NOSUPERUSER NOCREATEROLE`,
		`CREATE DATABASE keycloak OWNER keycloak`); err != nil {
		return "", err
	}
	return strings.Replace(strings.Replace(uri, "postgres@", "keycloak:kc-demo-pass@", 1), "/postgres?", "/keycloak?", 1), nil
}

// pgExec runs statements on one connection.
func pgExec(ctx context.Context, uri string, sql ...string) error {
	conn, err := pgx.Connect(ctx, uri)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for _, s := range sql {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%.60s…: %w", strings.Join(strings.Fields(s), " "), err)
		}
	}
	return nil
}
