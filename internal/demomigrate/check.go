package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/stackport/stackport/internal/lab"
)

// checkEnvFile prints the env file with its secrets masked and checks its
// mode and the values the new container needs.
func checkEnvFile(path string, seed seeded, srv servers, pgTo string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("--env-out: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		fmt.Println(maskEnvLine(line))
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			env[k] = v
		}
	}
	fmt.Printf("(file mode %04o)\n", fi.Mode().Perm())
	var bad []string
	if fi.Mode().Perm() != 0o600 {
		bad = append(bad, fmt.Sprintf("mode %v, not 0600", fi.Mode().Perm()))
	}
	for k, want := range map[string]string{
		"APPSMITH_DB_URL":              lab.MongoURI(srv.mongoDst, "appsmith"),
		"APPSMITH_REDIS_URL":           srv.redisDst,
		"APPSMITH_ENABLE_EMBEDDED_DB":  "0",
		"APPSMITH_ENCRYPTION_PASSWORD": seed.password,
		"APPSMITH_ENCRYPTION_SALT":     seed.salt,
	} {
		if env[k] != want {
			bad = append(bad, fmt.Sprintf("%s is %q", k, maskEnvLine(k+"="+env[k])))
		}
	}
	if kc := env["APPSMITH_KEYCLOAK_DB_URL"]; !strings.Contains(kc, "keycloak:kc-demo-pass@") || !strings.Contains(kc, strings.Split(pgTo, "@")[1]) {
		bad = append(bad, "APPSMITH_KEYCLOAK_DB_URL does not name the PostgreSQL target: "+maskURL(kc))
	}
	if bad != nil {
		slices.Sort(bad)
		return fmt.Errorf("the env file %s: %s", path, strings.Join(bad, "; "))
	}
	fmt.Println("\nthe new targets, APPSMITH_ENABLE_EMBEDDED_DB=0, the encryption password and salt carried over unchanged")
	return nil
}

// checkTargets compares the targets with what was seeded, with the
// clients' own reads rather than stackport's.
func checkTargets(ctx context.Context, st *lab.Standalone, seed seeded, srv servers, pgTo, stack, volumeTo string) error {
	// The volume: every file of the stack but the excluded ones, same
	// content and mode.
	n := 0
	err := filepath.WalkDir(stack, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(stack, p)
		for _, ex := range []string{"data/mongodb", "data/redis", "data/postgres", "logs", "data/backup"} {
			if rel == ex {
				if _, err := os.Lstat(filepath.Join(volumeTo, rel)); err == nil {
					return fmt.Errorf("%s was moved; the profile leaves it out", rel)
				}
				return filepath.SkipDir
			}
		}
		if !d.Type().IsRegular() {
			return nil
		}
		want, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		got, err := os.ReadFile(filepath.Join(volumeTo, rel))
		if err != nil {
			return err
		}
		wi, _ := d.Info()
		gi, err := os.Stat(filepath.Join(volumeTo, rel))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) || gi.Mode() != wi.Mode() {
			return fmt.Errorf("%s differs", rel)
		}
		n++
		return nil
	})
	if err == nil && n != seed.files {
		err = fmt.Errorf("%d files, %d expected", n, seed.files)
	}
	if err != nil {
		return fmt.Errorf("volume target %s: %w", volumeTo, err)
	}
	fmt.Printf("volume:   %d files in %s, same content and modes; no raw database files, logs or backups\n", n, volumeTo)

	// MongoDB: documents per collection, the unique index.
	db := lab.MongoClient(st, srv.mongoDst).Database("appsmith")
	var counts []string
	for _, c := range mongoCollections {
		got, err := db.Collection(c).CountDocuments(ctx, bson.D{})
		if err != nil {
			return fmt.Errorf("mongo target: appsmith.%s: %w", c, err)
		}
		if int(got) != seed.docs[c] {
			return fmt.Errorf("mongo target: appsmith.%s holds %d documents, %d expected", c, got, seed.docs[c])
		}
		counts = append(counts, fmt.Sprintf("%s %d", c, got))
	}
	specs, err := db.Collection("user").Indexes().ListSpecifications(ctx)
	if err != nil {
		return fmt.Errorf("mongo target: indexes of appsmith.user: %w", err)
	}
	if !slices.ContainsFunc(specs, func(s mongo.IndexSpecification) bool {
		_, err := s.KeysDocument.LookupErr("email")
		return s.Unique != nil && *s.Unique && err == nil
	}) {
		return fmt.Errorf("mongo target: appsmith.user lacks the unique index on email")
	}
	fmt.Printf("mongo:    documents %s; user.email unique index\n", strings.Join(counts, ", "))

	// Redis: every key, the TTLs kept.
	keys, ttl, err := redisKeys(ctx, srv.redisDst)
	if err != nil {
		return fmt.Errorf("redis target: %w", err)
	}
	if keys != seed.keys || ttl != seed.ttlKeys {
		return fmt.Errorf("redis target: %d keys, %d with a TTL; %d and %d expected", keys, ttl, seed.keys, seed.ttlKeys)
	}
	fmt.Printf("redis:    %d keys, %d with their TTL, on a Redis that blocks CONFIG, CLIENT, COMMAND …\n", keys, ttl)

	// PostgreSQL: rows per table, read as the target's own role.
	conn, err := pgx.Connect(ctx, pgTo)
	if err != nil {
		return fmt.Errorf("postgres target: %w", err)
	}
	defer conn.Close(context.Background())
	var super bool
	if err := conn.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil || super {
		return fmt.Errorf("postgres target: the role should not be a superuser (%v, %v)", super, err)
	}
	var rows []string
	for _, t := range pgTables {
		var got int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{"public", t}.Sanitize()).Scan(&got); err != nil {
			return fmt.Errorf("postgres target: %s: %w", t, err)
		}
		if got != seed.rows[t] {
			return fmt.Errorf("postgres target: %s holds %d rows, %d expected", t, got, seed.rows[t])
		}
		rows = append(rows, fmt.Sprintf("%s %d", t, got))
	}
	var next int64
	if err := conn.QueryRow(ctx, `SELECT nextval('admin_event_entity_id_seq')`).Scan(&next); err != nil || next <= int64(seed.rows["admin_event_entity"]) {
		return fmt.Errorf("postgres target: sequence admin_event_entity_id_seq gives %d (%v)", next, err)
	}
	fmt.Printf("postgres: rows %s, read as role keycloak (not a superuser); sequences carried over\n", strings.Join(rows, ", "))
	return nil
}

// redisKeys counts the keys of database 0 and those with a TTL.
func redisKeys(ctx context.Context, uri string) (keys, withTTL int, err error) {
	opt, err := goredis.ParseURL(uri)
	if err != nil {
		return 0, 0, err
	}
	opt.DisableIdentity = true // CLIENT is blocked, as on Memorystore
	c := goredis.NewClient(opt)
	defer c.Close()
	iter := c.Scan(ctx, 0, "*", 500).Iterator()
	var names []string
	for iter.Next(ctx) {
		names = append(names, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return 0, 0, err
	}
	p := c.Pipeline()
	ttls := make([]*goredis.DurationCmd, len(names))
	for i, k := range names {
		ttls[i] = p.PTTL(ctx, k)
	}
	if len(names) > 0 {
		if _, err := p.Exec(ctx); err != nil {
			return 0, 0, err
		}
	}
	for _, t := range ttls {
		if t.Val() > 0 {
			withTTL++
		}
	}
	return len(names), withTTL, nil
}
