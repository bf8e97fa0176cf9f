package volume

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"github.com/stackport/stackport/internal/streamtest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stackport/stackport/snapshot"
)

// fuzzSeeds is the seed corpus of FuzzVerify: raw volume.tar streams.
const fuzzSeeds = "../../testdata/volume/fuzz/FuzzVerify"

// outsidePlaceholder in a symbolic link target is replaced by a directory
// outside the restore target.
const outsidePlaceholder = "@OUTSIDE@"

// ent is an archive entry for buildTar.
type ent struct {
	typ  byte
	name string
	link string
	body string
}

// buildTar writes entries as a PAX tar archive.
func buildTar(t testing.TB, outside string, entries ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, e := range entries {
		hdr := &tar.Header{
			Typeflag: e.typ,
			Name:     e.name,
			Linkname: strings.ReplaceAll(e.link, outsidePlaceholder, outside),
			Mode:     0o644,
			ModTime:  mtime,
			Format:   tar.FormatPAX,
		}
		switch e.typ {
		case tar.TypeDir:
			hdr.Mode = 0o755
		case tar.TypeReg:
			hdr.Size = int64(len(e.body))
		case tar.TypeChar, tar.TypeBlock:
			hdr.Devmajor, hdr.Devminor = 1, 3
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("%q: %v", e.name, err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var rootEnt = ent{typ: tar.TypeDir, name: "./"}

func reg(name, body string) ent    { return ent{typ: tar.TypeReg, name: name, body: body} }
func dir(name string) ent          { return ent{typ: tar.TypeDir, name: name} }
func symlink(name, to string) ent  { return ent{typ: tar.TypeSymlink, name: name, link: to} }
func hardlink(name, to string) ent { return ent{typ: tar.TypeLink, name: name, link: to} }

// hostileCase is an archive that must not be restored.
type hostileCase struct {
	name    string
	entry   string // the rejected entry, named by the error
	entries []ent
	// restoreOnly marks archives the Verifier cannot reject: it does not
	// know the type of a hard link's target.
	restoreOnly bool
}

var hostileCases = []hostileCase{
	{name: "dotdot", entry: "../evil", entries: []ent{rootEnt, reg("../evil", "pwned")}},
	{name: "absolute", entry: "/abs", entries: []ent{rootEnt, reg("/abs", "pwned")}},
	{name: "inner dotdot", entry: "a/../../x", entries: []ent{rootEnt, dir("a/"), reg("a/../../x", "pwned")}},
	{name: "dot component", entry: "a/./b", entries: []ent{rootEnt, dir("a/"), reg("a/./b", "x")}},
	{name: "empty component", entry: "a//b", entries: []ent{rootEnt, dir("a/"), reg("a//b", "x")}},
	{name: "empty name", entry: "", entries: []ent{rootEnt, reg("", "x")}},
	{name: "write through absolute symlink", entry: "link/pwned",
		entries: []ent{rootEnt, symlink("link", outsidePlaceholder), reg("link/pwned", "pwned")}},
	{name: "directory through symlink", entry: "link/sub/",
		entries: []ent{rootEnt, symlink("link", outsidePlaceholder), dir("link/sub/")}},
	{name: "write through dotdot symlink", entry: "up/pwned",
		entries: []ent{rootEnt, symlink("up", ".."), reg("up/pwned", "pwned")}},
	{name: "hard link escape", entry: "hl", entries: []ent{rootEnt, hardlink("hl", "../../etc/passwd")}},
	{name: "hard link absolute", entry: "hl", entries: []ent{rootEnt, hardlink("hl", "/etc/passwd")}},
	{name: "hard link to later entry", entry: "a", entries: []ent{rootEnt, hardlink("a", "b"), reg("b", "x")}},
	{name: "hard link to missing entry", entry: "b", entries: []ent{rootEnt, hardlink("b", "a")}, restoreOnly: true},
	{name: "hard link to symlink", entry: "t",
		entries: []ent{rootEnt, symlink("s", outsidePlaceholder), hardlink("t", "s")}, restoreOnly: true},
	{name: "hard link to directory", entry: "t", entries: []ent{rootEnt, dir("d/"), hardlink("t", "d")}, restoreOnly: true},
	{name: "char device", entry: "null", entries: []ent{rootEnt, {typ: tar.TypeChar, name: "null"}}},
	{name: "block device", entry: "sda", entries: []ent{rootEnt, {typ: tar.TypeBlock, name: "sda"}}},
	{name: "fifo", entry: "fifo", entries: []ent{rootEnt, {typ: tar.TypeFifo, name: "fifo"}}},
	{name: "unknown type", entry: "x", entries: []ent{rootEnt, {typ: 'Z', name: "x"}}},
	{name: "duplicate file", entry: "dup", entries: []ent{rootEnt, reg("dup", "one"), reg("dup", "two")}},
	{name: "file replaces directory", entry: "d", entries: []ent{rootEnt, dir("d/"), reg("d", "x")}},
	{name: "duplicate directory", entry: "d/", entries: []ent{rootEnt, dir("d/"), reg("d/x", "x"), dir("d/")}},
	{name: "duplicate root", entry: "./", entries: []ent{rootEnt, reg("a", "x"), rootEnt}},
	{name: "out of order", entry: "a", entries: []ent{rootEnt, reg("b", "x"), reg("a", "x")}},
	{name: "missing parent", entry: "nodir/x", entries: []ent{rootEnt, reg("nodir/x", "x")}},
	{name: "staging name", entry: ".stackport-restore-1/", entries: []ent{rootEnt, dir(".stackport-restore-1/"), reg(".stackport-restore-1/x", "x")}},
	{name: "misplaced root", entry: "./", entries: []ent{reg("a", "x"), rootEnt}},
	{name: "dotdot without root entry", entry: "../evil", entries: []ent{reg("../evil", "pwned")}},
	{name: "write through symlink without root entry", entry: "link/pwned",
		entries: []ent{symlink("link", outsidePlaceholder), reg("link/pwned", "pwned")}},
	{name: "duplicate without root entry", entry: "dup", entries: []ent{reg("dup", "one"), reg("dup", "two")}},
	{name: "root not a directory", entry: ".", entries: []ent{reg(".", "x")}},
}

// checkConfined fails t unless base holds only the empty directories
// target and outside.
func checkConfined(t testing.TB, base string) {
	t.Helper()
	entries, err := os.ReadDir(base)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"outside", "target"}) {
		t.Errorf("%s holds %q, want only outside and target", base, names)
	}
	for _, d := range []string{"outside", "target"} {
		if entries, err := os.ReadDir(filepath.Join(base, d)); err != nil || len(entries) != 0 {
			t.Errorf("%s holds %v (%v), want nothing", d, entries, err)
		}
	}
}

func TestHostileArchives(t *testing.T) {
	for _, tc := range hostileCases {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			outside, target := filepath.Join(base, "outside"), filepath.Join(base, "target")
			for _, d := range []string{outside, target} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			data := buildTar(t, outside, tc.entries...)
			wantErr := func(who string, err error) {
				t.Helper()
				if !errors.Is(err, snapshot.ErrUnsafePath) {
					t.Fatalf("%s: %v, want ErrUnsafePath", who, err)
				}
				if !strings.Contains(err.Error(), `"`+tc.entry+`"`) {
					t.Errorf("%s: error %q does not name entry %q", who, err, tc.entry)
				}
			}

			_, err := (Verifier{}).Restore(context.Background(), streamtest.One(streamName, data, nil))
			if tc.restoreOnly {
				if err != nil {
					t.Errorf("Verifier: %v", err)
				}
			} else {
				wantErr("Verifier", err)
			}
			_, err = (&Restorer{Dir: target, Log: quiet}).Restore(context.Background(), streamtest.One(streamName, data, nil))
			wantErr("Restore", err)
			checkConfined(t, base)
		})
	}
}

// TestGoodArchiveAccepted checks that the hostile cases fail for the reason
// tested: close variants of them are accepted.
func TestGoodArchiveAccepted(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	data := buildTar(t, outside,
		rootEnt,
		dir("a/"),
		reg("a/x", "x"),
		symlink("abs", outsidePlaceholder),
		reg("b", "content"),
		hardlink("c", "b"),
		dir("d/"),
		hardlink("d/e", "./a/x"),
		symlink("up", ".."),
	)
	if _, err := (Verifier{}).Restore(context.Background(), streamtest.One(streamName, data, nil)); err != nil {
		t.Fatalf("Verifier: %v", err)
	}
	target := filepath.Join(base, "target")
	stats, err := (&Restorer{Dir: target, Log: quiet}).Restore(context.Background(), streamtest.One(streamName, data, nil))
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	want := snapshot.Stats{"files": 2, "dirs": 3, "symlinks": 2, "hardlinks": 2, "bytes": 8}
	for k, v := range want {
		if stats[k] != v {
			t.Errorf("stats %v, want %v", stats, want)
			break
		}
	}
	if target, err := os.Readlink(filepath.Join(target, "abs")); err != nil || target != outside {
		t.Errorf("abs -> %q, %v", target, err)
	}
	a, _ := os.Stat(filepath.Join(target, "a/x"))
	e, _ := os.Stat(filepath.Join(target, "d/e"))
	if a == nil || e == nil || !os.SameFile(a, e) {
		t.Error("d/e is not a hard link to a/x")
	}
}

// TestWriteFuzzSeeds rewrites the seed corpus of FuzzVerify when
// VOLUME_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("VOLUME_WRITE_SEEDS") != "1" {
		t.Skip("set VOLUME_WRITE_SEEDS=1 to rewrite the fuzz seeds")
	}
	if err := os.MkdirAll(fuzzSeeds, 0o755); err != nil {
		t.Fatal(err)
	}
	seeds := map[string][]byte{
		"valid.tar": buildTar(t, "/tmp/outside",
			rootEnt, dir("a/"), reg("a/x", "hello"), symlink("abs", "/etc"), reg("b", "content"),
			hardlink("c", "b"), dir("d/"), reg("d/zeros", strings.Repeat("\x00", 9000))),
	}
	for _, tc := range hostileCases {
		seeds["hostile-"+strings.ReplaceAll(tc.name, " ", "-")+".tar"] = buildTar(t, "/tmp/outside", tc.entries...)
	}
	for name, data := range seeds {
		if err := os.WriteFile(filepath.Join(fuzzSeeds, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func FuzzVerify(f *testing.F) {
	streamtest.AddSeeds(f, fuzzSeeds)
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		_, verr := (Verifier{}).Restore(ctx, streamtest.One(streamName, data, nil))

		base := t.TempDir()
		outside, target := filepath.Join(base, "outside"), filepath.Join(base, "target")
		for _, d := range []string{outside, target} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		_, rerr := (&Restorer{Dir: target, Log: quiet}).Restore(ctx, streamtest.One(streamName, data, nil))
		if verr != nil && rerr == nil {
			t.Errorf("Verifier rejects (%v) what Restore accepts", verr)
		}
		if rerr != nil {
			checkConfined(t, base)
			return
		}
		// Restored: nothing outside the target.
		if entries, err := os.ReadDir(outside); err != nil || len(entries) != 0 {
			t.Errorf("outside holds %v (%v)", entries, err)
		}
		if entries, _ := os.ReadDir(base); len(entries) != 2 {
			t.Errorf("%s holds %v", base, entries)
		}
		// Let t.TempDir's cleanup remove read-only restored directories.
		filepath.WalkDir(target, func(p string, de os.DirEntry, err error) error {
			if err == nil && de.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
}
