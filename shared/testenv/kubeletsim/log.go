package kubeletsim

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
)

// maxLogSize bounds what one container's Log keeps; a test writing more is
// told so by Write's error.
const maxLogSize = 64 << 20

// ErrLogClosed is returned by Write after the Log was closed.
var ErrLogClosed = errors.New("kubeletsim: log closed")

// Log is what a container has written to its output, as the kubelet serves
// it on /containerLogs (kubectl logs). A test writes to it; followers
// (kubectl logs -f) get every write as it happens, until Close, which is
// what a container that exits looks like to them. Safe for concurrent use.
type Log struct {
	mu      sync.Mutex
	data    []byte
	closed  bool
	changed chan struct{} // closed and replaced on every write and on Close
}

func newLog() *Log { return &Log{changed: make(chan struct{})} }

// Write appends p to the log. It implements io.Writer.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, ErrLogClosed
	}
	if len(l.data)+len(p) > maxLogSize {
		return 0, fmt.Errorf("kubeletsim: log over %d bytes", maxLogSize)
	}
	l.data = append(l.data, p...)
	l.notifyLocked()
	return len(p), nil
}

// WriteLine appends line and a newline.
func (l *Log) WriteLine(line string) error {
	_, err := l.Write([]byte(line + "\n"))
	return err
}

// Close ends the log: followers receive what is left and then end of
// stream, and later Writes fail. Closing twice is harmless.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		l.notifyLocked()
	}
	return nil
}

// String returns everything written so far.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.data)
}

func (l *Log) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// since returns the bytes written after offset, whether the log is closed,
// and a channel closed on the next change.
func (l *Log) since(offset int) ([]byte, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.data[offset:len(l.data):len(l.data)], l.closed, l.changed
}

// logQuery is what /containerLogs honours of the kubelet's query
// parameters; the others (timestamps, sinceSeconds, sinceTime) are
// ignored.
type logQuery struct {
	follow     bool
	tailLines  int   // < 0: all
	limitBytes int64 // < 0: no limit
}

func parseLogQuery(r *http.Request) (logQuery, error) {
	q := r.URL.Query()
	lq := logQuery{follow: q.Get("follow") == "true", tailLines: -1, limitBytes: -1}
	if q.Get("previous") == "true" {
		return lq, errors.New("previous terminated container not found (kubeletsim containers never restart)")
	}
	if s := q.Get("tailLines"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return lq, fmt.Errorf("tailLines=%q: want a count", s)
		}
		lq.tailLines = n
	}
	if s := q.Get("limitBytes"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return lq, fmt.Errorf("limitBytes=%q: want a positive count", s)
		}
		lq.limitBytes = n
	}
	return lq, nil
}

// tailStart is the offset of the last n lines of data.
func tailStart(data []byte, n int) int {
	if n < 0 {
		return 0
	}
	end := len(data)
	if end > 0 && data[end-1] == '\n' {
		end-- // the final newline ends the last line, it does not start one
	}
	for ; n > 0; n-- {
		i := bytes.LastIndexByte(data[:end], '\n')
		if i < 0 {
			return 0
		}
		end = i
	}
	if n == 0 && end < len(data) && data[end] == '\n' {
		return end + 1
	}
	return end
}

// serveLog writes l to w as the kubelet does for kubectl logs, following it
// when asked until the log closes or the request ends.
func serveLog(w http.ResponseWriter, r *http.Request, l *Log) {
	q, err := parseLogQuery(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	data, closed, changed := l.since(0)
	offset := len(data)
	data = data[tailStart(data, q.tailLines):]
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	left := q.limitBytes
	for {
		if left >= 0 && int64(len(data)) > left {
			data = data[:left]
		}
		if len(data) > 0 {
			if _, err := w.Write(data); err != nil {
				return
			}
			left -= int64(len(data))
		}
		if err := rc.Flush(); err != nil {
			return
		}
		if !q.follow || closed || left == 0 {
			return
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
		data, closed, changed = l.since(offset)
		offset += len(data)
	}
}
