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

// TestPolicyYear checks a year of 200 snapshots against sets computed by
// hand from the calendar.
func TestPolicyYear(t *testing.T) {
	// One snapshot at 02:00 every day from 2026-01-01, and a second one at
	// 14:00 on the 1st and 15th of every month, until there are 200.
	var items []storage.Item
	for d := 0; len(items) < 200; d++ {
		day := time.Date(2026, 1, 1, 2, 0, 0, 0, time.UTC).AddDate(0, 0, d)
		items = append(items, storage.Item{ID: day.Format("20060102T150405Z") + "-aaaaaa", Time: day})
		if (day.Day() == 1 || day.Day() == 15) && len(items) < 200 {
			pm := day.Add(12 * time.Hour)
			items = append(items, storage.Item{ID: pm.Format("20060102T150405Z") + "-bbbbbb", Time: pm})
		}
	}
	// 200 snapshots: Jan 1 … Jul 6 (187 days) plus 13 afternoons (Jan 1,
	// Jan 15, … Jul 1); the last is Jul 6 02:00.
	if last := items[len(items)-1].ID; last != "20260706T020000Z-aaaaaa" {
		t.Fatalf("history ends at %s", last)
	}
	kept := func(p storage.Policy) []string {
		var ids []string
		for _, d := range p.Apply(items) {
			if d.Keep {
				ids = append(ids, d.ID[:15])
			}
		}
		return ids
	}
	for name, c := range map[string]struct {
		p    storage.Policy
		want []string
	}{
		// The newest of each month: Jul 6; the 30th/31st of earlier months.
		"monthly 4": {storage.Policy{Monthly: 4}, []string{"20260706T020000", "20260630T020000", "20260531T020000", "20260430T020000"}},
		// Days with two snapshots keep the afternoon one.
		"daily 6": {storage.Policy{Daily: 6}, []string{"20260706T020000", "20260705T020000", "20260704T020000", "20260703T020000", "20260702T020000", "20260701T140000"}},
		// ISO weeks end on Sunday: Jul 5, Jun 28, Jun 21.
		"weekly 3 + last 2": {storage.Policy{Weekly: 3, Last: 2}, []string{"20260706T020000", "20260705T020000", "20260628T020000"}},
		"yearly 5":          {storage.Policy{Yearly: 5}, []string{"20260706T020000"}},
		"within 36h":        {storage.Policy{Within: 36 * time.Hour}, []string{"20260706T020000", "20260705T020000"}},
	} {
		if got := kept(c.p); strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%s: kept %v, want %v", name, got, c.want)
		}
	}
}
