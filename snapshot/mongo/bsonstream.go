package mongo

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// maxDepth bounds the nesting of documents and arrays that validate accepts
// (MongoDB allows 100 levels).
const maxDepth = 200

// A docReader reads a .bson stream: BSON documents, each starting with its
// little-endian int32 length, concatenated.
type docReader struct {
	r    *bufio.Reader
	what string // "collection db.coll" or "oplog", for errors
	off  int64  // byte offset of the next document
	docs int64
}

func newDocReader(r io.Reader, what string) *docReader {
	return &docReader{r: bufio.NewReaderSize(r, bufSize), what: what}
}

// next returns the next document, checked with validate, or io.EOF at the
// end of the stream. The document is stored in buf when it is large enough,
// in a new slice otherwise. Undecodable data is reported with its byte
// offset as an error wrapping snapshot.ErrCorrupt; errors of the stream
// itself are passed on.
func (d *docReader) next(buf []byte) (bson.Raw, error) {
	var hdr [4]byte
	n, err := io.ReadFull(d.r, hdr[:])
	switch {
	case err == io.EOF:
		return nil, io.EOF
	case errors.Is(err, io.ErrUnexpectedEOF):
		return nil, d.corrupt("truncated document length (%d of 4 bytes)", n)
	case err != nil:
		return nil, d.readError(err)
	}
	size := int32(binary.LittleEndian.Uint32(hdr[:]))
	if size < 5 || size > maxDocSize {
		return nil, d.corrupt("invalid document length %d", size)
	}
	if cap(buf) < int(size) {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	copy(buf, hdr[:])
	if n, err := io.ReadFull(d.r, buf[4:]); errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF {
		return nil, d.corrupt("truncated document (%d of %d bytes)", 4+n, size)
	} else if err != nil {
		return nil, d.readError(err)
	}
	if err := validate(buf, 0); err != nil {
		return nil, d.corrupt("invalid document: %v", err)
	}
	d.off += int64(size)
	d.docs++
	return bson.Raw(buf), nil
}

func (d *docReader) corrupt(format string, args ...any) error {
	return corrupt("%s: byte offset %d: %s", d.what, d.off, fmt.Sprintf(format, args...))
}

func (d *docReader) readError(err error) error {
	return fmt.Errorf("mongo: %s: read at byte offset %d: %w", d.what, d.off, err)
}

// validate checks that doc is one well-formed BSON document, recursing into
// embedded documents, arrays and the scopes of JavaScript code.
func validate(doc []byte, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("nested more than %d levels", maxDepth)
	}
	d := bsoncore.Document(doc)
	if err := d.Validate(); err != nil {
		return err
	}
	if len(doc) != int(int32(binary.LittleEndian.Uint32(doc))) {
		return errors.New("length does not match content")
	}
	rem := doc[4 : len(doc)-1]
	for len(rem) > 0 {
		elem, r, ok := bsoncore.ReadElement(rem)
		if !ok {
			return errors.New("malformed element")
		}
		rem = r
		v := elem.Value()
		var sub []byte
		switch v.Type {
		case bsoncore.TypeEmbeddedDocument, bsoncore.TypeArray:
			sub = v.Data
		case bsoncore.TypeCodeWithScope:
			_, scope, ok := v.CodeWithScopeOK()
			if !ok {
				return fmt.Errorf("field %q: malformed code with scope", elem.Key())
			}
			sub = scope
		default:
			continue
		}
		if err := validate(sub, depth+1); err != nil {
			return fmt.Errorf("field %q: %w", elem.Key(), err)
		}
	}
	return nil
}

// A docSource yields raw documents: a server cursor, or a slice in tests.
type docSource interface {
	Next(ctx context.Context) bool
	Doc() bson.Raw
	Err() error
}

// cursor is a mongo.Cursor as a docSource.
type cursor struct{ *mongo.Cursor }

func (c cursor) Doc() bson.Raw { return c.Current }

// copyDocs writes the documents of src to w, as they are, and returns how
// many documents and bytes it wrote. keep, if set, chooses the documents to
// write.
func copyDocs(ctx context.Context, src docSource, w io.Writer, keep func(bson.Raw) (bool, error)) (docs, bytes int64, err error) {
	for {
		if err := ctx.Err(); err != nil {
			return docs, bytes, err
		}
		if !src.Next(ctx) {
			return docs, bytes, src.Err()
		}
		doc := src.Doc()
		if keep != nil {
			ok, err := keep(doc)
			if err != nil {
				return docs, bytes, err
			}
			if !ok {
				continue
			}
		}
		n, err := w.Write(doc)
		bytes += int64(n)
		if err != nil {
			return docs, bytes, err
		}
		docs++
	}
}

// rewrite returns a copy of the document doc in which fn decides the fate
// of each element: keep false drops it; a replacement with a non-zero Type
// replaces its value; otherwise the element is copied as it is. doc must be
// valid.
func rewrite(doc bson.Raw, fn func(key string, v bson.RawValue) (repl bson.RawValue, keep bool)) bson.Raw {
	idx, dst := bsoncore.AppendDocumentStart(make([]byte, 0, len(doc)))
	rem := doc[4 : len(doc)-1]
	for len(rem) > 0 {
		elem, r, ok := bsoncore.ReadElement(rem)
		if !ok {
			break
		}
		rem = r
		key, v := elem.Key(), elem.Value()
		repl, keep := fn(key, bson.RawValue{Type: bson.Type(v.Type), Value: v.Data})
		switch {
		case !keep:
		case repl.Type != 0:
			dst = bsoncore.AppendHeader(dst, bsoncore.Type(repl.Type), key)
			dst = append(dst, repl.Value...)
		default:
			dst = append(dst, elem...)
		}
	}
	dst, _ = bsoncore.AppendDocumentEnd(dst, idx)
	return dst
}
