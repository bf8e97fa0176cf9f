package streamtest

import (
	"os"
	"path/filepath"
	"testing"
)

// AddSeeds adds every file in dir (a folder of raw seed inputs under
// testdata/) to the fuzz corpus. A missing or empty folder fails f: a fuzz
// target without seeds tests little.
func AddSeeds(f *testing.F, dir string) {
	f.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	if len(entries) == 0 {
		f.Fatalf("no seeds in %s", dir)
	}
}
