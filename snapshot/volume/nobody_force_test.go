package volume

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stackport/stackport/internal/streamtest"
)

// TestAsNobodyForceHelper restores VOLUME_TAR into VOLUME_DIR, with
// --force when VOLUME_FORCE=1; it runs only as a subprocess of
// TestForceOverReadOnlyAsNobody.
func TestAsNobodyForceHelper(t *testing.T) {
	if os.Getenv("VOLUME_FORCE_HELPER") == "" {
		t.Skip("runs only as a subprocess of other tests")
	}
	var res helperResult
	data, err := os.ReadFile(os.Getenv("VOLUME_TAR"))
	if err == nil {
		r := &Restorer{Dir: os.Getenv("VOLUME_DIR"), Force: os.Getenv("VOLUME_FORCE") == "1", Log: quiet}
		res.Stats, err = r.Restore(context.Background(), streamtest.One(streamName, data, nil))
	}
	if err != nil {
		res.Err = err.Error()
	}
	out, _ := json.Marshal(res)
	if err := os.WriteFile(os.Getenv("VOLUME_OUT"), out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestForceOverReadOnlyAsNobody: as a user other than root (the Helm
// chart's uid 10001; here nobody), --force replaces a tree with read-only
// directories, the target's own included, as restored by stackport
// itself, and a failed --force restore puts such a tree back unchanged.
func TestForceOverReadOnlyAsNobody(t *testing.T) {
	shared, bin := sharedDir(t)
	src := buildFixture(t)
	// A read-only directory holding a read-only directory, and a read-only
	// root.
	deep := filepath.Join(src, "ro-outer", "ro-inner")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(deep, "f"), []byte("deep"), 0o444); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{deep, filepath.Dir(deep), src} {
		if err := os.Chmod(d, 0o555); err != nil {
			t.Fatal(err)
		}
	}
	store, _ := dump(t, &Dumper{Dir: src})
	data, _ := store.Bytes(streamName)
	archive := filepath.Join(shared, "volume.tar")
	if err := os.WriteFile(archive, data, 0o644); err != nil {
		t.Fatal(err)
	}
	parent := filepath.Join(shared, "restore")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(parent, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(parent, "dst")
	want := compareOpts{owner: &Owner{UID: nobody, GID: nobody}}
	if res := runAsNobody(t, shared, bin, "TestAsNobodyForceHelper", "VOLUME_FORCE_HELPER=1", "VOLUME_DIR="+dst, "VOLUME_TAR="+archive); res.Err != "" {
		t.Fatalf("first restore as nobody: %s", res.Err)
	}
	compareTrees(t, src, dst, want)
	for i := range 2 {
		if res := runAsNobody(t, shared, bin, "TestAsNobodyForceHelper", "VOLUME_FORCE_HELPER=1", "VOLUME_DIR="+dst, "VOLUME_TAR="+archive, "VOLUME_FORCE=1"); res.Err != "" {
			t.Fatalf("restore --force %d as nobody over the read-only tree: %s", i+1, res.Err)
		}
		compareTrees(t, src, dst, want)
	}

	// A damaged archive: the read-only tree stays as it was.
	before := listing(t, dst)
	bad := filepath.Join(shared, "bad.tar")
	if err := os.WriteFile(bad, data[:len(data)-sparseSize/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if res := runAsNobody(t, shared, bin, "TestAsNobodyForceHelper", "VOLUME_FORCE_HELPER=1", "VOLUME_DIR="+dst, "VOLUME_TAR="+bad, "VOLUME_FORCE=1"); res.Err == "" {
		t.Fatal("restore of a truncated archive succeeded")
	}
	if after := listing(t, dst); after != before {
		t.Errorf("target after a failed restore:\n%s\nwant:\n%s", after, before)
	}
}
