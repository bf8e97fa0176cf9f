package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestObjectKey(t *testing.T) {
	e150 := strings.Repeat("é", 150)
	for _, c := range []struct {
		kind, name string
		n          int
		want       string
	}{
		// Plain short names keep their keys, as in older snapshots.
		{"volume", "volume.tar", 0, "volume/volume.tar.zst"},
		{"postgres", "data/appsmith.app.copy", 3, "postgres/data/appsmith.app.copy.zst"},
		{"mongo", "appsmith/newAction.bson", 9, "mongo/appsmith/newAction.bson.zst"},
		{"mongo", "oplog.bson", 40, "mongo/oplog.bson.zst"},
		{"files", "12", 1, "files/12.zst"},
		// Everything else gets a derived key.
		{"mongo", "appsmith/" + e150 + ".bson", 7, "mongo/7-appsmith-" + sum8("appsmith/"+e150+".bson") + ".bson.zst"},
		{"mongo", "é.bson", 2, "mongo/2-" + sum8("é.bson") + ".bson.zst"},
		{"files", "a dir/with spaces/100% done.bin", 0, "files/0-a_dir_with_spaces_100_done-" + sum8("a dir/with spaces/100% done.bin") + ".bin.zst"},
		{"files", "0-x", 5, "files/5-0-x-" + sum8("0-x") + ".zst"},
		{"files", "x y." + strings.Repeat("e", 20), 1, "files/1-x_y.eeeeeeeeeeeeeeeeeeee-" + sum8("x y."+strings.Repeat("e", 20)) + ".zst"},
		{"files", strings.Repeat("y", 240) + ".bin", 6, "files/6-" + strings.Repeat("y", 40) + "-" + sum8(strings.Repeat("y", 240)+".bin") + ".bin.zst"},
		{"postgres", "data/caf%C3%A9.app.copy", 4, "postgres/4-data_caf_C3_A9.app-" + sum8("data/caf%C3%A9.app.copy") + ".copy.zst"},
	} {
		if got := objectKey(c.kind, c.n, c.name, Zstd); got != c.want {
			t.Errorf("objectKey(%q, %d, %q) = %q, want %q", c.kind, c.n, c.name, got, c.want)
		}
	}
}

func sum8(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:4])
}

var derivedElem = regexp.MustCompile(`^[0-9]+-`)

// FuzzObjectKey checks that every valid stream name gets a valid, short,
// plain key, unique within its component.
func FuzzObjectKey(f *testing.F) {
	f.Add("appsmith/"+strings.Repeat("é", 150)+".bson", 3)
	f.Add("volume.tar", 0)
	f.Add("0-x", 12)
	f.Add("a/b c/%41.copy", 1)
	f.Fuzz(func(t *testing.T, name string, n int) {
		if !validKey(name) || n < 0 {
			return
		}
		for _, c := range []Compression{Zstd, Gzip, None} {
			key := objectKey("mongo", n, name, c)
			if !validKey(key) || !plain(strings.ReplaceAll(key, "/", "")) || !strings.HasPrefix(key, "mongo/") {
				t.Fatalf("objectKey(%q) = %q: not a plain key", name, key)
			}
			rest := strings.TrimPrefix(key, "mongo/")
			if derivedElem.MatchString(rest) {
				// Derived: one element, beginning with the index.
				if strings.Contains(rest, "/") || !strings.HasPrefix(rest, strconv.Itoa(n)+"-") || len(rest) > 90 {
					t.Fatalf("objectKey(%q, %d) = %q", name, n, key)
				}
			} else {
				if key != "mongo/"+name+c.Ext() || len(name) > maxReadableName {
					t.Fatalf("objectKey(%q) = %q: readable key of another name", name, key)
				}
				for _, e := range strings.Split(rest, "/") {
					if len(e) > maxReadableElem {
						t.Fatalf("objectKey(%q) = %q: element too long", name, key)
					}
				}
			}
			if !strings.HasSuffix(key, c.Ext()) {
				t.Fatalf("objectKey(%q) = %q: extension", name, key)
			}
		}
	})
}
