package redis

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/stackport/stackport/snapshot"
)

// RDB file opcodes.
const (
	rdbOpExpireMS = 0xfc
	rdbOpSelectDB = 0xfe
	rdbOpEOF      = 0xff

	// emptyRDBVersion is the version of an RDB file without keys.
	emptyRDBVersion = 9
)

// Export writes the streams as one RDB file to w, which a stock redis-server
// loads at start-up: the header "REDIS00NN" with the payloads' RDB version,
// per database a SELECTDB opcode, per key its expiry (EXPIRETIME_MS) if it
// has one, the payload's type byte, the key and the payload's value (the
// DUMP payload without its footer), and the EOF opcode with the file's
// CRC-64. Keys that have expired are written too; a server loading the file
// drops them. The streams are verified as by Verifier; an error leaves w
// with a partial file. Stats are those of Verifier.
func Export(ctx context.Context, in snapshot.StreamReader, w io.Writer) (snapshot.Stats, error) {
	out := &errWriter{w: w}
	e := &rdbExport{w: bufio.NewWriterSize(out, 64<<10), out: out}
	stats, err := readStreams(ctx, in, e)
	if err != nil {
		return stats, err
	}
	if !e.begun {
		e.header(emptyRDBVersion)
	}
	e.write(rdbOpEOF)
	e.w.Write(binary.LittleEndian.AppendUint64(nil, e.crc)) // not part of the checksum
	if err := e.w.Flush(); err != nil {
		return stats, fmt.Errorf("redis: export: %w", err)
	}
	return stats, nil
}

// An errWriter remembers the first error of w.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

// rdbExport writes an RDB file from decoded streams. Write errors are
// remembered by out (and the bufio.Writer) and checked after each key.
type rdbExport struct {
	w        *bufio.Writer
	out      *errWriter
	crc      uint64
	version  int  // of the file
	begun    bool // header written
	selected bool // SELECTDB of the current stream written
}

// write writes p and adds it to the checksum.
func (e *rdbExport) write(p ...byte) {
	e.crc = crc64Jones(e.crc, p)
	e.w.Write(p)
}

func (e *rdbExport) header(version int) {
	e.write(fmt.Appendf(nil, "REDIS%04d", version)...)
	e.version, e.begun = version, true
}

// length writes an RDB length encoding.
func (e *rdbExport) length(n uint64) {
	switch {
	case n < 1<<6:
		e.write(byte(n))
	case n < 1<<14:
		e.write(0x40|byte(n>>8), byte(n))
	case n <= 1<<32-1:
		e.write(binary.BigEndian.AppendUint32([]byte{0x80}, uint32(n))...)
	default:
		e.write(binary.BigEndian.AppendUint64([]byte{0x81}, n)...)
	}
}

func (e *rdbExport) begin(context.Context, *frameReader) error {
	e.selected = false
	return nil
}

func (e *rdbExport) record(_ context.Context, fr *frameReader, rec record) error {
	if !e.begun {
		e.header(fr.rdb)
	}
	if fr.rdb > e.version {
		return fmt.Errorf("redis: export: %s has RDB version %d, newer than %d of the streams before it; an RDB file holds one version", fr.stream, fr.rdb, e.version)
	}
	if !e.selected {
		e.write(rdbOpSelectDB)
		e.length(uint64(fr.db))
		e.selected = true
	}
	if rec.expiry != 0 {
		e.write(binary.LittleEndian.AppendUint64([]byte{rdbOpExpireMS}, uint64(rec.expiry))...)
	}
	e.write(rec.payload[0])
	e.length(uint64(len(rec.key)))
	e.write([]byte(rec.key)...)
	e.write(rec.payload[1 : len(rec.payload)-footerSize]...)
	if e.out.err != nil {
		return fmt.Errorf("redis: export: %w", e.out.err)
	}
	return nil
}

func (e *rdbExport) end(context.Context, *frameReader) error { return nil }
