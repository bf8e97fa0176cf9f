package redis

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/stackport/stackport/internal/streamtest"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackport/stackport/snapshot"
)

// fuzzSeeds is the seed corpus of FuzzFrames: raw db0.frames streams.
const fuzzSeeds = "../../testdata/redis/fuzz/FuzzFrames"

// fakePayload returns a DUMP-shaped payload (string type, value, RDB
// version, CRC-64) for tests that do not send it to a server.
func fakePayload(rdb int, value string) string {
	p := []byte{0, byte(len(value))}
	p = append(p, value...)
	p = binary.LittleEndian.AppendUint16(p, uint16(rdb))
	return string(binary.LittleEndian.AppendUint64(p, crc64Jones(0, p)))
}

// withRDBVersion returns payload with another RDB version and a matching
// CRC-64.
func withRDBVersion(payload string, rdb int) string {
	p := []byte(payload[:len(payload)-footerSize])
	p = binary.LittleEndian.AppendUint16(p, uint16(rdb))
	return string(binary.LittleEndian.AppendUint64(p, crc64Jones(0, p)))
}

// rec is a key frame to encode.
type rec struct {
	key     string
	expiry  int64
	payload string
}

// encode writes a stream of database db.
func encode(t testing.TB, db int, recs ...rec) []byte {
	t.Helper()
	var buf bytes.Buffer
	fw := newFrameWriter(&buf, db)
	for _, r := range recs {
		if err := fw.write(r.key, r.expiry, r.payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.finish(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// decodeAll decodes a stream into records.
func decodeAll(data []byte, name string) (*frameReader, []record, error) {
	fr, err := newFrameReader(bytes.NewReader(data), name)
	if err != nil {
		return nil, nil, err
	}
	var recs []record
	for {
		r, err := fr.next()
		if errors.Is(err, io.EOF) {
			return fr, recs, nil
		}
		if err != nil {
			return fr, recs, err
		}
		recs = append(recs, r)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	in := []rec{
		{"a", 0, fakePayload(10, "one")},
		{"", 1_800_000_000_000, fakePayload(9, "")},
		{"bin\x00\xff\r\n", 5, fakePayload(10, strings.Repeat("x", 100_000))},
	}
	data := encode(t, 3, in...)
	fr, out, err := decodeAll(data, "db3.frames")
	if err != nil {
		t.Fatal(err)
	}
	if fr.db != 3 || fr.rdb != 10 || fr.n != 3 || len(out) != 3 {
		t.Fatalf("db %d rdb %d n %d records %d", fr.db, fr.rdb, fr.n, len(out))
	}
	for i, r := range out {
		if r.frame != int64(i+1) || r.key != in[i].key || r.expiry != in[i].expiry || string(r.payload) != in[i].payload {
			t.Errorf("record %d: %+.40v, want %+.40v", i, r, in[i])
		}
	}

	// a stream without keys
	fr, out, err = decodeAll(encode(t, 0), "db0.frames")
	if err != nil || fr.rdb != 0 || len(out) != 0 {
		t.Fatalf("empty stream: rdb %d, %d records, %v", fr.rdb, len(out), err)
	}
}

func TestFrameWriterRefuses(t *testing.T) {
	fw := newFrameWriter(io.Discard, 0)
	for _, tc := range []struct {
		name string
		r    rec
		want string
	}{
		{"short payload", rec{"k", 0, "short"}, "DUMP payload of 5 bytes"},
		{"negative expiry", rec{"k", -5, fakePayload(10, "v")}, "negative expiry"},
		{"version 0", rec{"k", 0, fakePayload(0, "v")}, "RDB version 0"},
	} {
		if err := fw.write(tc.r.key, tc.r.expiry, tc.r.payload); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	must(t, fw.write("k", 0, fakePayload(9, "v")))
	if err := fw.write("k2", 0, fakePayload(10, "v")); err == nil || !strings.Contains(err.Error(), "newer than 9") {
		t.Errorf("newer payload after older: %v", err)
	}
}

// header returns a stream header with any field values.
func header(version byte, db uint32, rdb uint16) []byte {
	h := []byte(magic)
	h = append(h, version)
	h = binary.BigEndian.AppendUint32(h, db)
	h = binary.BigEndian.AppendUint16(h, rdb)
	return binary.BigEndian.AppendUint32(h, crc32.Checksum(h, castagnoli))
}

// endFrame returns an end frame counting n keys.
func endFrame(n uint64) []byte {
	e := binary.BigEndian.AppendUint64([]byte{frameEnd}, n)
	return binary.BigEndian.AppendUint32(e, crc32.Checksum(e, castagnoli))
}

func TestCorruptStreams(t *testing.T) {
	valid := encode(t, 0, rec{"a", 0, fakePayload(10, "one")}, rec{"b", 7, fakePayload(10, "two")})
	withByte := func(off int, xor byte) []byte {
		b := bytes.Clone(valid)
		if off < 0 {
			off += len(b)
		}
		b[off] ^= xor
		return b
	}
	frame2 := headerSize + keyHeaderSize + 1 + len(fakePayload(10, "one")) + 4
	for _, tc := range []struct {
		name   string
		stream string
		data   []byte
		want   string
		notErr bool // the error must not be ErrCorrupt
	}{
		{"payload byte of frame 2", "db0.frames", withByte(-(endFrameSize + 4 + 1), 1), `frame 2 (key "b"): checksum mismatch`, false},
		{"key byte of frame 2", "db0.frames", withByte(frame2+keyHeaderSize, 1), `frame 2 (key "c"): checksum mismatch`, false},
		{"expiry of frame 2", "db0.frames", withByte(frame2+3, 0x40), "frame 2: frame header checksum mismatch", false},
		{"frame type", "db0.frames", withByte(frame2, 0xff), "frame 2: unknown frame type", false},
		{"truncated end frame", "db0.frames", valid[:len(valid)-3], "frame 3: truncated stream", false},
		{"no end frame", "db0.frames", valid[:len(valid)-endFrameSize], "frame 3: truncated stream", false},
		{"truncated payload", "db0.frames", valid[:frame2+keyHeaderSize+3], `frame 2 (key "b"): truncated stream`, false},
		{"trailing data", "db0.frames", append(bytes.Clone(valid), 0), "data after the end frame", false},
		{"magic", "db0.frames", withByte(0, 1), "not a stackport redis stream", false},
		{"header checksum", "db0.frames", withByte(20, 1), "header: checksum mismatch", false},
		{"empty", "db0.frames", nil, "header: truncated stream", false},
		{"wrong database", "db1.frames", valid, "header names database 0", false},
		{"payload CRC-64", "db0.frames", encode(t, 0, rec{"k", 0, fakePayload(10, "v")[:5] + "\x00\x00\x00\x00\x00\x00\x00\x00"}), `frame 1 (key "k"): DUMP payload checksum (CRC-64) mismatch`, false},
		{"stream name", "keys.frames", valid, `unexpected stream "keys.frames"`, false},
		{"stream name leading zero", "db00.frames", valid, `unexpected stream "db00.frames"`, false},
		{"end count", "db0.frames", append(header(1, 0, 10), endFrame(1)...), "end frame counts 1 keys, the stream has 0", false},
		{"payload newer than header", "db0.frames", append(header(1, 0, 9), encode(t, 0, rec{"k", 0, fakePayload(10, "v")})[headerSize:]...),
			`frame 1 (key "k"): payload has RDB version 10, the stream header 9`, false},
		{"format version", "db0.frames", append(header(2, 0, 0), endFrame(0)...), "stream format version 2 is not supported", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Verifier{}.Restore(context.Background(), streamtest.One(tc.stream, tc.data, nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if errors.Is(err, snapshot.ErrCorrupt) == tc.notErr {
				t.Errorf("errors.Is(%v, ErrCorrupt) = %v", err, !tc.notErr)
			}
			if !strings.HasPrefix(err.Error(), "redis: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestStreamOrder(t *testing.T) {
	s0, s1 := encode(t, 0), encode(t, 1)
	for _, tc := range []struct {
		name    string
		streams []streamtest.Stream
		want    string
	}{
		{"repeated", []streamtest.Stream{{Name: "db0.frames", Data: s0}, {Name: "db0.frames", Data: s0}}, "out of order or repeated"},
		{"out of order", []streamtest.Stream{{Name: "db1.frames", Data: s1}, {Name: "db0.frames", Data: s0}}, "out of order or repeated"},
		{"pipeline checksum", []streamtest.Stream{{Name: "db0.frames", Data: s0, EndErr: fmt.Errorf("sha256 mismatch: %w", snapshot.ErrCorrupt)}}, "sha256 mismatch"},
	} {
		_, err := Verifier{}.Restore(context.Background(), &streamtest.Reader{Streams: tc.streams})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, snapshot.ErrCorrupt) {
			t.Errorf("%s: %v, want %q and ErrCorrupt", tc.name, err, tc.want)
		}
	}
	stats, err := Verifier{}.Restore(context.Background(), &streamtest.Reader{})
	if err != nil || stats["keys"] != 0 {
		t.Errorf("no streams: %v %v", stats, err)
	}
}

func TestParseDBMap(t *testing.T) {
	m, err := ParseDBMap("0:0, 1:0,15:3")
	if err != nil || len(m) != 3 || m[0] != 0 || m[1] != 0 || m[15] != 3 {
		t.Errorf("ParseDBMap: %v %v", m, err)
	}
	for _, bad := range []string{"", "0", "a:1", "0:1,0:2", "-1:0", "0:70000"} {
		if _, err := ParseDBMap(bad); err == nil {
			t.Errorf("ParseDBMap(%q) accepted", bad)
		}
	}
}

func TestServerRDBVersion(t *testing.T) {
	for info, want := range map[string]int{
		"redis_version:7.0.15\r\n":                        10,
		"# Server\r\nredis_version:7.2.4\r\nredis_mode:x": 11,
		"redis_version:7.4.1\r\n":                         12,
		"redis_version:8.0.0\r\n":                         12,
		"redis_version:6.2.14\r\n":                        9,
		"redis_version:5.0.7\r\n":                         9,
		"redis_version:4.0.9\r\n":                         8,
		"redis_version:3.2.1\r\n":                         7,
		"redis_version:2.8.0\r\n":                         6,
		"redis_version:2.4.0\r\n":                         0,
		"redis_version:7.2.4\r\nvalkey_version:8.0.1\r\n": 11,
		"nothing": 0,
	} {
		if got := serverRDBVersion(info); got != want {
			t.Errorf("serverRDBVersion(%q) = %d, want %d", info, got, want)
		}
	}
}

// TestWriteSeeds rewrites the fuzz seed corpus (REDIS_WRITE_SEEDS=1).
func TestWriteSeeds(t *testing.T) {
	if os.Getenv("REDIS_WRITE_SEEDS") != "1" {
		t.Skip("set REDIS_WRITE_SEEDS=1 to rewrite the fuzz seeds")
	}
	must(t, os.MkdirAll(fuzzSeeds, 0o755))
	valid := encode(t, 0, rec{"a", 0, fakePayload(10, "one")}, rec{"bin\x00\xff", 1_800_000_000_000, fakePayload(10, "two")},
		rec{"", 0, fakePayload(9, strings.Repeat("z", 300))})
	seeds := map[string][]byte{
		"valid.frames":     valid,
		"empty.frames":     encode(t, 0),
		"truncated.frames": valid[:len(valid)-20],
		"corrupt.frames":   append(bytes.Clone(valid[:60]), append([]byte{valid[60] ^ 1}, valid[61:]...)...),
	}
	for name, data := range seeds {
		must(t, os.WriteFile(filepath.Join(fuzzSeeds, name), data, 0o644))
	}
}

// FuzzFrames decodes arbitrary bytes as a db0.frames stream: it must not
// panic, must fail with ErrCorrupt (or the format version error), and a
// stream it accepts must re-encode to the same bytes.
func FuzzFrames(f *testing.F) {
	streamtest.AddSeeds(f, fuzzSeeds)
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, recs, err := decodeAll(data, "db0.frames")
		if err != nil {
			if !errors.Is(err, snapshot.ErrCorrupt) && !strings.Contains(err.Error(), "format version") {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			return
		}
		var buf bytes.Buffer
		fw := newFrameWriter(&buf, fr.db)
		if len(recs) == 0 || payloadRDB(recs[0].payload) != fr.rdb {
			must(t, fw.header(fr.rdb)) // no keys, or a header newer than the first payload
		}
		for _, r := range recs {
			must(t, fw.write(r.key, r.expiry, string(r.payload)))
		}
		must(t, fw.finish())
		if !bytes.Equal(buf.Bytes(), data) {
			t.Fatalf("re-encoded stream differs:\n got %x\nwant %x", buf.Bytes(), data)
		}
		if _, err := (Verifier{}).Restore(context.Background(), streamtest.One("db0.frames", data, nil)); err != nil {
			t.Fatalf("Verifier refuses what the decoder accepts: %v", err)
		}
	})
}
