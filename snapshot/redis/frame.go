package redis

// The stream format (version 1) of one database, "db<N>.frames":
//
//	stream   = header keyframe* endframe
//	header   = magic version db rdb crc
//	           magic   16 bytes "stackport-redis\n"
//	           version u8, 1
//	           db      u32, the source database N
//	           rdb     u16, the RDB version of the stream's first payload;
//	                   no payload has a higher one (0 when there are no keys)
//	           crc     u32, CRC-32C of the 23 bytes before it
//	keyframe = 'K' expiry keylen paylen hcrc key payload crc
//	           expiry  i64, absolute expiry in Unix milliseconds, 0 for none
//	           keylen  u32, at most 512 MiB
//	           paylen  u32, at least 11
//	           hcrc    u32, CRC-32C of the 17 bytes from 'K' to paylen
//	           key     keylen bytes, the key name (any bytes)
//	           payload paylen bytes, the DUMP payload as the server returned
//	                   it: type byte, serialized value, RDB version (u16
//	                   little-endian) and CRC-64 of what precedes it (Redis's
//	                   Jones polynomial, little-endian), which readers check
//	           crc     u32, CRC-32C of key and payload
//	endframe = 'E' count crc
//	           count   u64, the number of key frames
//	           crc     u32, CRC-32C of the 9 bytes before it
//
// Integers are big-endian unless noted. Nothing may follow the end frame.
// Key frames are numbered from 1 in error messages; the separate header
// checksum lets a reader trust the lengths before it reads the key.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/crc64"
	"io"
	"slices"
)

const (
	magic         = "stackport-redis\n"
	formatVersion = 1
	headerSize    = len(magic) + 1 + 4 + 2 + 4
	keyHeaderSize = 1 + 8 + 4 + 4 + 4
	endFrameSize  = 1 + 8 + 4

	frameKey = 'K'
	frameEnd = 'E'

	maxKeyLen = 512 << 20
	// footerSize is the DUMP payload's footer: RDB version and CRC-64.
	footerSize = 2 + 8
	minPayload = 1 + footerSize

	// readChunk bounds how much a reader allocates ahead of the data it has
	// actually read, so a damaged length cannot make it allocate much.
	readChunk = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// jonesTable is Redis's CRC-64 (Jones polynomial, reflected, in the reversed
// form hash/crc64 expects).
var jonesTable = crc64.MakeTable(0x95ac9329ac4bc9b5)

// crc64Jones updates a Redis CRC-64 (initial value 0, no final XOR; hash/crc64
// inverts both) with p.
func crc64Jones(crc uint64, p []byte) uint64 {
	return ^crc64.Update(^crc, jonesTable, p)
}

// payloadRDB returns the RDB version in a DUMP payload's footer.
func payloadRDB[T string | []byte](p T) int {
	n := len(p)
	if n < footerSize {
		return 0
	}
	return int(p[n-footerSize]) | int(p[n-footerSize+1])<<8
}

// A frameWriter writes one database's stream. The header is written with
// the first key frame, when the payloads' RDB version is known.
type frameWriter struct {
	w      *bufio.Writer
	stream string
	db     int
	rdb    int  // the header's RDB version
	begun  bool // header written
	n      int64
	buf    []byte // scratch for copying strings into the checksum
}

func newFrameWriter(w io.Writer, db int) *frameWriter {
	return &frameWriter{w: bufio.NewWriterSize(w, 64<<10), stream: streamName(db), db: db, buf: make([]byte, 32<<10)}
}

func (fw *frameWriter) header(rdb int) error {
	var h [headerSize]byte
	copy(h[:], magic)
	h[16] = formatVersion
	binary.BigEndian.PutUint32(h[17:], uint32(fw.db))
	binary.BigEndian.PutUint16(h[21:], uint16(rdb))
	binary.BigEndian.PutUint32(h[23:], crc32.Checksum(h[:23], castagnoli))
	fw.rdb, fw.begun = rdb, true
	_, err := fw.w.Write(h[:])
	return err
}

// write appends a key frame. expiry is an absolute Unix time in
// milliseconds, 0 for none.
func (fw *frameWriter) write(key string, expiry int64, payload string) error {
	rdb := payloadRDB(payload)
	switch {
	case len(key) > maxKeyLen:
		return fmt.Errorf("redis: %s: key %.64q…: name longer than 512 MiB", fw.stream, key)
	case len(payload) < minPayload || uint64(len(payload)) > 1<<32-1:
		return fmt.Errorf("redis: %s: key %q: DUMP payload of %d bytes (want 11 bytes to 4 GiB)", fw.stream, key, len(payload))
	case rdb < 1 || rdb > 1<<16-1:
		return fmt.Errorf("redis: %s: key %q: DUMP payload has RDB version %d", fw.stream, key, rdb)
	case fw.begun && rdb > fw.rdb:
		return fmt.Errorf("redis: %s: key %q: DUMP payload has RDB version %d, newer than %d of the earlier keys", fw.stream, key, rdb, fw.rdb)
	case expiry < 0:
		return fmt.Errorf("redis: %s: key %q: negative expiry %d", fw.stream, key, expiry)
	}
	if !fw.begun {
		if err := fw.header(rdb); err != nil {
			return fw.writeErr(err)
		}
	}
	var h [keyHeaderSize]byte
	h[0] = frameKey
	binary.BigEndian.PutUint64(h[1:], uint64(expiry))
	binary.BigEndian.PutUint32(h[9:], uint32(len(key)))
	binary.BigEndian.PutUint32(h[13:], uint32(len(payload)))
	binary.BigEndian.PutUint32(h[17:], crc32.Checksum(h[:17], castagnoli))
	if _, err := fw.w.Write(h[:]); err != nil {
		return fw.writeErr(err)
	}
	crc, err := fw.writeString(0, key)
	if err == nil {
		crc, err = fw.writeString(crc, payload)
	}
	if err == nil {
		_, err = fw.w.Write(binary.BigEndian.AppendUint32(nil, crc))
	}
	if err != nil {
		return fw.writeErr(err)
	}
	fw.n++
	return nil
}

// writeString writes s and returns the CRC-32C crc updated with it.
func (fw *frameWriter) writeString(crc uint32, s string) (uint32, error) {
	for len(s) > 0 {
		n := copy(fw.buf, s)
		crc = crc32.Update(crc, castagnoli, fw.buf[:n])
		if _, err := fw.w.Write(fw.buf[:n]); err != nil {
			return crc, err
		}
		s = s[n:]
	}
	return crc, nil
}

// finish writes the end frame (and the header of a stream without keys) and
// flushes the stream.
func (fw *frameWriter) finish() error {
	if !fw.begun {
		if err := fw.header(0); err != nil {
			return fw.writeErr(err)
		}
	}
	var e [endFrameSize]byte
	e[0] = frameEnd
	binary.BigEndian.PutUint64(e[1:], uint64(fw.n))
	binary.BigEndian.PutUint32(e[9:], crc32.Checksum(e[:9], castagnoli))
	if _, err := fw.w.Write(e[:]); err != nil {
		return fw.writeErr(err)
	}
	return fw.writeErr(fw.w.Flush())
}

func (fw *frameWriter) writeErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("redis: write %s: %w", fw.stream, err)
}

// A record is one decoded key frame.
type record struct {
	frame   int64 // number of the frame in its stream, from 1
	key     string
	expiry  int64 // Unix ms, 0 for none
	payload []byte
}

// A frameReader decodes one database's stream.
type frameReader struct {
	r      *bufio.Reader
	stream string
	db     int
	rdb    int
	n      int64 // key frames read
	done   bool  // end frame read and verified
}

// newFrameReader reads and checks the stream's header.
func newFrameReader(r io.Reader, stream string) (*frameReader, error) {
	fr := &frameReader{r: bufio.NewReaderSize(r, 64<<10), stream: stream}
	var h [headerSize]byte
	if err := fr.readFull(h[:], place{}); err != nil {
		return nil, err
	}
	switch {
	case string(h[:len(magic)]) != magic:
		return nil, corrupt(stream, "header: not a stackport redis stream")
	case binary.BigEndian.Uint32(h[23:]) != crc32.Checksum(h[:23], castagnoli):
		return nil, corrupt(stream, "header: checksum mismatch")
	case h[16] != formatVersion:
		return nil, fmt.Errorf("redis: %s: stream format version %d is not supported (this stackport reads version %d; upgrade stackport)", stream, h[16], formatVersion)
	}
	db := binary.BigEndian.Uint32(h[17:])
	if db > maxDB {
		return nil, corrupt(stream, "header: database %d out of range", db)
	}
	fr.db = int(db)
	fr.rdb = int(binary.BigEndian.Uint16(h[21:]))
	return fr, nil
}

// A place names where in a stream a read failed, for error messages; it
// is formatted only when an error is.
type place struct {
	frame    int64 // 0 for the header
	key      []byte
	keyKnown bool
}

func (p place) String() string {
	switch {
	case p.frame == 0:
		return "header"
	case p.keyKnown:
		return fmt.Sprintf("frame %d (key %q)", p.frame, p.key)
	}
	return fmt.Sprintf("frame %d", p.frame)
}

// readFull fills p; running out of data is corruption, named after what.
func (fr *frameReader) readFull(p []byte, what fmt.Stringer) error {
	_, err := io.ReadFull(fr.r, p)
	return fr.readErr(err, what)
}

// readErr returns the error to report for err, returned by a read of what.
func (fr *frameReader) readErr(err error, what fmt.Stringer) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return corrupt(fr.stream, "%s: truncated stream", what)
	}
	if err != nil {
		return fmt.Errorf("redis: read %s: %s: %w", fr.stream, what, err)
	}
	return nil
}

// readN reads n bytes, allocating at most readChunk ahead of the data read.
func (fr *frameReader) readN(n int, what fmt.Stringer) ([]byte, error) {
	buf := make([]byte, 0, min(n, readChunk))
	for len(buf) < n {
		k := min(n-len(buf), readChunk)
		buf = slices.Grow(buf, k)
		if err := fr.readFull(buf[len(buf):len(buf)+k], what); err != nil {
			return nil, err
		}
		buf = buf[:len(buf)+k]
	}
	return buf, nil
}

// next returns the next key frame, or io.EOF after a valid end frame that
// the end of the stream follows.
func (fr *frameReader) next() (record, error) {
	if fr.done {
		return record{}, io.EOF
	}
	num := fr.n + 1
	what := &place{frame: num}
	kind, err := fr.r.ReadByte()
	if err != nil {
		return record{}, fr.readErr(err, what)
	}
	if kind != frameKey && kind != frameEnd {
		return record{}, corrupt(fr.stream, "%s: unknown frame type %#x", what, kind)
	}
	if kind == frameEnd {
		return record{}, fr.end(what)
	}
	var h [keyHeaderSize]byte
	h[0] = kind
	if err := fr.readFull(h[1:], what); err != nil {
		return record{}, err
	}
	if binary.BigEndian.Uint32(h[17:]) != crc32.Checksum(h[:17], castagnoli) {
		return record{}, corrupt(fr.stream, "%s: frame header checksum mismatch", what)
	}
	expiry := int64(binary.BigEndian.Uint64(h[1:]))
	keyLen := binary.BigEndian.Uint32(h[9:])
	payLen := binary.BigEndian.Uint32(h[13:])
	switch {
	case expiry < 0:
		return record{}, corrupt(fr.stream, "%s: negative expiry %d", what, expiry)
	case keyLen > maxKeyLen:
		return record{}, corrupt(fr.stream, "%s: key length %d over 512 MiB", what, keyLen)
	case payLen < minPayload:
		return record{}, corrupt(fr.stream, "%s: payload of %d bytes is too short", what, payLen)
	}
	key, err := fr.readN(int(keyLen), what)
	if err != nil {
		return record{}, err
	}
	what.key, what.keyKnown = key, true
	payload, err := fr.readN(int(payLen), what)
	if err != nil {
		return record{}, err
	}
	var c [4]byte
	if err := fr.readFull(c[:], what); err != nil {
		return record{}, err
	}
	crc := crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, payload)
	if binary.BigEndian.Uint32(c[:]) != crc {
		return record{}, corrupt(fr.stream, "%s: checksum mismatch", what)
	}
	if v := payloadRDB(payload); v < 1 || v > fr.rdb {
		return record{}, corrupt(fr.stream, "%s: payload has RDB version %d, the stream header %d", what, v, fr.rdb)
	}
	if binary.LittleEndian.Uint64(payload[payLen-8:]) != crc64Jones(0, payload[:payLen-8]) {
		return record{}, corrupt(fr.stream, "%s: DUMP payload checksum (CRC-64) mismatch", what)
	}
	fr.n = num
	return record{frame: num, key: string(key), expiry: expiry, payload: payload}, nil
}

// end checks the end frame (its type byte already read) and that the stream
// ends after it.
func (fr *frameReader) end(what fmt.Stringer) error {
	var e [endFrameSize]byte
	e[0] = frameEnd
	if err := fr.readFull(e[1:], what); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(e[9:]) != crc32.Checksum(e[:9], castagnoli) {
		return corrupt(fr.stream, "%s: end frame checksum mismatch", what)
	}
	if n := binary.BigEndian.Uint64(e[1:]); n != uint64(fr.n) {
		return corrupt(fr.stream, "end frame counts %d keys, the stream has %d", n, fr.n)
	}
	switch _, err := fr.r.ReadByte(); {
	case err == nil:
		return corrupt(fr.stream, "data after the end frame")
	case !errors.Is(err, io.EOF):
		return fmt.Errorf("redis: read %s: %w", fr.stream, err)
	}
	fr.done = true
	return io.EOF
}
