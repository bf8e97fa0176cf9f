package snapshot

import (
	"io"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
)

// frameEncoder compresses a stream as a series of independent zstd frames of
// frameSize bytes each, compressed concurrently and written in order. The
// result is an ordinary zstd stream (the format allows concatenated frames;
// zstd -d and every decoder read it as one), but unlike a single frame it
// keeps every core busy. At most 2 × concurrency frames are in flight, so
// memory is bounded by about 4 × concurrency × frameSize per stream.
type frameEncoder struct {
	enc   *zstd.Encoder // used only through EncodeAll, which is concurrency-safe
	buf   []byte
	queue chan chan []byte
	done  chan struct{}
	err   atomic.Pointer[error] // the first write error of the output
	n     int64
}

const frameSize = 1 << 20

// frameBufs recycles the input buffers of all streams.
var frameBufs = sync.Pool{New: func() any { return make([]byte, 0, frameSize) }}

func newFrameEncoder(w io.Writer, level, concurrency int) (*frameEncoder, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithEncoderConcurrency(concurrency))
	if err != nil {
		return nil, err
	}
	e := &frameEncoder{
		enc:   enc,
		queue: make(chan chan []byte, concurrency+1),
		done:  make(chan struct{}),
	}
	e.buf = frameBufs.Get().([]byte)[:0]
	go e.writeFrames(w)
	return e, nil
}

// writeFrames writes the compressed frames in the order they were queued.
// After an error it keeps draining the queue so that no encoder blocks.
func (e *frameEncoder) writeFrames(w io.Writer) {
	defer close(e.done)
	for res := range e.queue {
		frame := <-res
		if e.err.Load() == nil {
			if _, err := w.Write(frame); err != nil {
				e.err.Store(&err)
			}
		}
	}
}

// flush queues the buffered bytes as one frame.
func (e *frameEncoder) flush() {
	data := e.buf
	e.buf = frameBufs.Get().([]byte)[:0]
	res := make(chan []byte, 1)
	e.queue <- res // blocks while the queue is full
	go func() {
		res <- e.enc.EncodeAll(data, nil)
		frameBufs.Put(data[:0])
	}()
}

func (e *frameEncoder) Write(p []byte) (int, error) {
	if err := e.err.Load(); err != nil {
		return 0, *err
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), frameSize-len(e.buf))
		e.buf = append(e.buf, p[:k]...)
		p = p[k:]
		if len(e.buf) == frameSize {
			e.flush()
		}
	}
	e.n += int64(n)
	return n, nil
}

// Close compresses what is left (an empty stream still gets one empty
// frame, so that stock tools accept it), waits for every frame to be
// written and returns the first error. It does not close the writer.
func (e *frameEncoder) Close() error {
	if len(e.buf) > 0 || e.n == 0 {
		e.flush()
	}
	close(e.queue)
	<-e.done
	e.enc.Close()
	if err := e.err.Load(); err != nil {
		return *err
	}
	return nil
}
