package storage

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Policy says which snapshots to keep, with restic's semantics: a snapshot
// is kept when any rule keeps it.
//
//   - Last keeps the newest Last snapshots.
//   - Hourly, Daily, Weekly, Monthly and Yearly keep, for each of the last N
//     hours (days, ISO weeks, months, years) that have snapshots, the newest
//     snapshot of that period.
//   - Within keeps every snapshot taken within that duration of the newest
//     snapshot.
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	Within                                       time.Duration
}

// Empty reports whether the policy keeps nothing at all, which prune refuses
// (it would delete everything but the newest snapshot).
func (p Policy) Empty() bool { return p == Policy{} }

// Item is a snapshot as retention sees it.
type Item struct {
	ID   string
	Time time.Time
}

// Decision is what the policy decided for one item, and why.
type Decision struct {
	Item
	Keep    bool
	Reasons []string
}

// Apply decides for every item; the result is sorted newest first.
func (p Policy) Apply(items []Item) []Decision {
	ds := make([]Decision, len(items))
	for i, it := range items {
		ds[i] = Decision{Item: it}
	}
	slices.SortStableFunc(ds, func(a, b Decision) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	if len(ds) == 0 {
		return ds
	}
	buckets := []struct {
		n      int
		name   string
		period func(time.Time) string
	}{
		{p.Last, "last", func(t time.Time) string { return "" }}, // every snapshot is its own period
		{p.Hourly, "hourly", func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{p.Daily, "daily", func(t time.Time) string { return t.Format("2006-01-02") }},
		{p.Weekly, "weekly", func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{p.Monthly, "monthly", func(t time.Time) string { return t.Format("2006-01") }},
		{p.Yearly, "yearly", func(t time.Time) string { return t.Format("2006") }},
	}
	for _, b := range buckets {
		left, last := b.n, "\x00"
		for i := range ds {
			if left <= 0 {
				break
			}
			per := b.period(ds[i].Time.UTC())
			if b.name != "last" && per == last {
				continue // an older snapshot of a period already kept
			}
			last = per
			ds[i].Keep = true
			ds[i].Reasons = append(ds[i].Reasons, b.name)
			left--
		}
	}
	if p.Within > 0 {
		newest := ds[0].Time
		for i := range ds {
			if newest.Sub(ds[i].Time) <= p.Within {
				ds[i].Keep = true
				ds[i].Reasons = append(ds[i].Reasons, "within "+p.Within.String())
			}
		}
	}
	return ds
}
