package snapshot_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stackport/stackport/snapshot"
)

// TestLoadForHost: latest chosen by host; an empty ref is refused instead
// of meaning latest.
func TestLoadForHost(t *testing.T) {
	repo := openRepo(t)
	ctx := context.Background()
	small := streams{names: []string{"x"}, data: map[string][]byte{"x": []byte("x")}}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	seed := func(host string, d time.Duration) string {
		m, err := take(t, repo, small, snapshot.Options{Host: host, Now: func() time.Time { return at.Add(d) }})
		if err != nil {
			t.Fatal(err)
		}
		return m.ID
	}
	for _, ref := range []string{""} {
		if _, err := snapshot.Load(ctx, repo, ref); err == nil || !strings.Contains(err.Error(), "empty") {
			t.Fatalf("Load(%q) = %v; want an error: the ID is empty", ref, err)
		}
		if _, err := snapshot.LoadFor(ctx, repo, ref, snapshot.Selection{}); err == nil || !strings.Contains(err.Error(), "empty") {
			t.Fatalf("LoadFor(%q) = %v; want an error: the ID is empty", ref, err)
		}
	}
	if _, err := snapshot.LoadFor(ctx, repo, snapshot.Latest, snapshot.Selection{Host: "a"}); !errors.Is(err, snapshot.ErrNotFound) {
		t.Fatalf("latest of an empty repository: %v", err)
	}

	a1 := seed("a", 0)
	// With one host, latest is its newest whatever Local is.
	if m, err := snapshot.LoadFor(ctx, repo, snapshot.Latest, snapshot.Selection{Local: "elsewhere"}); err != nil || m.ID != a1 {
		t.Fatalf("the only host: %v, %v", m, err)
	}
	a2 := seed("a", time.Hour)
	b1 := seed("b", 2*time.Hour)
	// Two snapshots of the same second: the later creation time wins.
	b2 := seed("b", 2*time.Hour+time.Millisecond)
	for _, c := range []struct {
		sel  snapshot.Selection
		want string
	}{
		{snapshot.Selection{Host: "a"}, a2},
		{snapshot.Selection{Host: "b"}, b2},
		{snapshot.Selection{Local: "a"}, a2},
		{snapshot.Selection{Host: "b", Local: "a"}, b2},
	} {
		m, err := snapshot.LoadFor(ctx, repo, snapshot.Latest, c.sel)
		if err != nil || m.ID != c.want {
			t.Errorf("LoadFor(latest, %+v) = %v, %v; want %s", c.sel, m, err, c.want)
		}
	}
	// Load keeps its meaning: the newest of any host.
	if m, err := snapshot.Load(ctx, repo, snapshot.Latest); err != nil || m.ID != b2 {
		t.Fatalf("Load(latest) = %v, %v; want %s", m, err, b2)
	}
	// An ID is loaded whatever its host.
	if m, err := snapshot.LoadFor(ctx, repo, b1, snapshot.Selection{Host: "a"}); err != nil || m.ID != b1 {
		t.Fatalf("LoadFor(%s) = %v, %v", b1, m, err)
	}
	for _, sel := range []snapshot.Selection{{Host: "c"}, {Local: "c"}} {
		_, err := snapshot.LoadFor(ctx, repo, snapshot.Latest, sel)
		var herr *snapshot.HostNotFoundError
		if !errors.As(err, &herr) || !errors.Is(err, snapshot.ErrNotFound) || herr.Host != "c" ||
			strings.Join(herr.Hosts, ",") != "a,b" || !strings.Contains(err.Error(), `"a", "b"`) {
			t.Errorf("LoadFor(latest, %+v) = %v; want the hosts there are", sel, err)
		}
	}
	// A damaged manifest newer than the host's newest is an error, not
	// skipped: it might be the host's newest.
	if err := repo.Bucket().WriteAll(ctx, "snapshots/"+b2+"/manifest.json", []byte("{"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshot.LoadFor(ctx, repo, snapshot.Latest, snapshot.Selection{Host: "a"}); !errors.Is(err, snapshot.ErrCorrupt) {
		t.Fatalf("latest of a, past a newer damaged manifest: %v", err)
	}
}
