package storage

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestShorten: a long driver error keeps its cause (at the end) and stays
// valid UTF-8.
func TestShorten(t *testing.T) {
	long := "open /repo/snapshots/x/mongo/" + strings.Repeat("é", 200) + ": file name too long"
	got := shorten(long, 150)
	if !strings.HasSuffix(got, ": file name too long") || !utf8.ValidString(got) || len(got) > 310 || !strings.Contains(got, "…") {
		t.Errorf("shorten = %q", got)
	}
	if s := "short: no space left on device"; shorten(s, 150) != s {
		t.Errorf("a short message changed: %q", shorten(s, 150))
	}
}
