package tunnel

import (
	"errors"
	"io"
	"sync"
)

// Buffers of CopyAdaptive: a small one per direction while a stream is idle
// or chatty, a large pooled one once a read fills the small one (bulk
// transfer). Idle streams are the many, so they must be cheap; bulk ones are
// the few.
const (
	smallCopyBuf = 2 << 10
	largeCopyBuf = 256 << 10
)

var largeCopyBufs = sync.Pool{New: func() any { b := make([]byte, largeCopyBuf); return &b }}

// CopyAdaptive copies src to dst until EOF (returned as a nil error) and
// returns the bytes copied. It starts with a 2 KiB buffer and moves to a
// pooled 256 KiB one once a read fills the small one, so the many idle
// streams a tunnel carries cost little and the few bulk ones copy in large
// pieces. The agent joins streams to targets with it, and the gateway
// joins upgraded visitor connections (WebSocket) to their streams.
func CopyAdaptive(dst io.Writer, src io.Reader) (int64, error) {
	buf := make([]byte, smallCopyBuf)
	var large *[]byte
	defer func() {
		if large != nil {
			largeCopyBufs.Put(large)
		}
	}()
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
			if n == len(buf) && large == nil {
				large = largeCopyBufs.Get().(*[]byte)
				buf = *large
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return total, nil
			}
			return total, rerr
		}
	}
}
