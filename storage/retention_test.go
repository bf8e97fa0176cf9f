package storage_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackport/stackport/storage"
)

// TestPolicyGolden applies policies to a fixed history and compares the
// decisions with testdata/retention/*.golden (UPDATE_GOLDEN=1 rewrites them).
func TestPolicyGolden(t *testing.T) {
	start := time.Date(2026, 1, 1, 3, 0, 0, 0, time.UTC)
	var items []storage.Item
	// Every 6 hours for 70 days, plus a burst of three in one hour.
	for i := range 70 * 4 {
		ts := start.Add(time.Duration(i) * 6 * time.Hour)
		items = append(items, storage.Item{ID: ts.Format("20060102T150405Z") + "-000000", Time: ts})
	}
	for i := range 3 {
		ts := start.Add(70*24*time.Hour + time.Duration(i)*10*time.Minute)
		items = append(items, storage.Item{ID: ts.Format("20060102T150405Z") + "-000001", Time: ts})
	}
	for name, p := range map[string]storage.Policy{
		"last3":               {Last: 3},
		"hourly5":             {Hourly: 5},
		"daily7-weekly4":      {Daily: 7, Weekly: 4},
		"monthly12":           {Monthly: 12},
		"within48h":           {Within: 48 * time.Hour},
		"last1-daily3-within": {Last: 1, Daily: 3, Within: 12 * time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			var sb strings.Builder
			for _, d := range p.Apply(items) {
				if d.Keep {
					sb.WriteString("keep   " + d.ID + " " + strings.Join(d.Reasons, ",") + "\n")
				}
			}
			path := filepath.Join("..", "testdata", "retention", name+".golden")
			if os.Getenv("UPDATE_GOLDEN") != "" {
				os.MkdirAll(filepath.Dir(path), 0o755)
				os.WriteFile(path, []byte(sb.String()), 0o644)
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if sb.String() != string(want) {
				t.Fatalf("decisions differ from %s:\n%s", path, sb.String())
			}
		})
	}
	if !(storage.Policy{}).Empty() || (storage.Policy{Last: 1}).Empty() {
		t.Fatal("Empty")
	}
}
