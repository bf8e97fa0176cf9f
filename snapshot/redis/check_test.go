package redis

import (
	"hash/maphash"
	"strings"
	"testing"
)

// typed returns a payload of RDB type typ with the serialized value body.
func typed(typ byte, body string) []byte {
	return []byte(withRDBVersion(string(typ)+body+"0123456789", 10))
}

func TestCheckerCompare(t *testing.T) {
	k := &checkSink{seed: maphash.MakeSeed()}
	for _, tc := range []struct {
		name      string
		want, got []byte
		same      bool
		why       string
	}{
		{"equal", []byte(fakePayload(10, "v")), []byte(fakePayload(11, "v")), true, ""},
		{"value", []byte(fakePayload(10, "v")), []byte(fakePayload(10, "w")), false, "the value differs"},
		{"type", typed(0, "\x01v"), typed(11, "\x01v"), false, "type set in the target, string in the snapshot"},
		{"encoding", typed(2, "\x01\x01v"), typed(20, "\x01v"), true, "RDB encoding 20 in the target, 2 in the snapshot"},
		{"unordered set", typed(rdbTypeSet, "\x02\x01a\x02bb"), typed(rdbTypeSet, "\x02\x02bb\x01a"), true, ""},
		{"set element", typed(rdbTypeSet, "\x02\x01a\x02bb"), typed(rdbTypeSet, "\x02\x01a\x02bc"), false, "the value differs"},
		{"hash pairs", typed(rdbTypeHash, "\x02\x01a\x011\x01b\x012"), typed(rdbTypeHash, "\x02\x01b\x012\x01a\x011"), true, ""},
		{"hash swapped values", typed(rdbTypeHash, "\x02\x01a\x011\x01b\x012"), typed(rdbTypeHash, "\x02\x01b\x011\x01a\x012"), false, "the value differs"},
		{"undecodable", typed(rdbTypeSet, "\x02\x01a"), typed(rdbTypeSet, "\x02\x01b"), false, "truncated payload"},
	} {
		same, why := k.compare(tc.want, tc.got)
		if same != tc.same || !strings.Contains(why, tc.why) || (tc.why == "") != (why == "") {
			t.Errorf("%s: compare = %v, %q; want %v, %q", tc.name, same, why, tc.same, tc.why)
		}
	}
}

func TestTTLDiff(t *testing.T) {
	const now = 1_800_000_000_000
	for _, tc := range []struct {
		expiry, ttl int64
		want        string
	}{
		{0, -1, ""},
		{now + 5000, 5000, ""},
		{now + 5000, 5900, ""},
		{now + 5000, 6100, "expires at"},
		{0, 100, "never in the snapshot"},
		{now + 5000, -1, "never expires in the target"},
	} {
		if got := ttlDiff(tc.expiry, tc.ttl, now); !strings.Contains(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("ttlDiff(%d, %d) = %q, want %q", tc.expiry, tc.ttl, got, tc.want)
		}
	}
}
