package server

import (
	"sync"
	"time"
)

// logLimiter decides which of many similar events get a log line: at most
// one per key per interval, and at most max in all per interval. The second
// bound is what keeps a flood of distinct made-up names (each one a new key)
// from flooding the log; it also bounds the memory the limiter keeps, since
// only keys that got a line are remembered, each for one interval.
//
// The zero value is not usable; build it with newLogLimiter. Safe for
// concurrent use.
type logLimiter struct {
	interval time.Duration
	max      int
	now      func() time.Time

	mu     sync.Mutex
	logged map[string]time.Time // key -> when its last line was let through
	held   int                  // events held back since the last line
}

func newLogLimiter(interval time.Duration, max int, now func() time.Time) *logLimiter {
	return &logLimiter{interval: interval, max: max, now: now, logged: make(map[string]time.Time, max)}
}

// allow reports whether an event about key gets a log line now and, when it
// does, how many events were held back since the previous line (so that the
// line can say so).
func (l *logLimiter) allow(key string) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if t, seen := l.logged[key]; seen && now.Sub(t) < l.interval {
		l.held++
		return false, 0
	}
	if len(l.logged) >= l.max {
		for k, t := range l.logged {
			if now.Sub(t) >= l.interval {
				delete(l.logged, k)
			}
		}
		if len(l.logged) >= l.max {
			l.held++
			return false, 0
		}
	}
	l.logged[key] = now
	held, l.held = l.held, 0
	return true, held
}
