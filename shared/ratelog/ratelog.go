// Package ratelog rate-limits log lines of repeated events, so that a peer
// that can trigger an event at will (a frame for a stream that does not
// exist, a bad token) cannot make the process write a line per event.
//
// For each key (an event kind, optionally with the peer it came from) the
// first occurrence in an interval is logged in full; the repeats are only
// counted, and one summary line with the count is logged once the interval
// is over. The Limiter has no goroutine of its own: summaries come out
// lazily, with the next event of any key after the interval, or at Flush.
// Memory is bounded: at most MaxKeys keys are tracked, and events of further
// keys are counted together.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Defaults for a zero Config.
const (
	DefaultInterval = 10 * time.Second
	DefaultMaxKeys  = 1024
)

// OverflowMessage is the message of the summary line for events that were
// counted together because MaxKeys keys were already tracked.
const OverflowMessage = "ratelog: repeats of events beyond the tracked kinds"

// Config configures a Limiter. The zero value is usable.
type Config struct {
	// Interval is how long after a key's first logged occurrence its
	// repeats are only counted (default 10 s).
	Interval time.Duration
	// MaxKeys bounds the keys tracked at once (default 1024); an event of
	// another key while that many are tracked is counted under one shared
	// overflow entry.
	MaxKeys int
	// Now is the clock (default time.Now); for tests.
	Now func() time.Time
}

// Limiter logs the first occurrence of each key per interval and counts the
// rest. Safe for concurrent use; lines are written outside its lock, so a
// slow handler holds up only the goroutine that logs.
type Limiter struct {
	log      *slog.Logger
	interval time.Duration
	maxKeys  int
	now      func() time.Time

	mu        sync.Mutex
	keys      map[string]*entry
	overflow  entry // events of keys not tracked because keys was full
	nextSweep time.Time
}

// entry is one key's current interval.
type entry struct {
	start time.Time // when the interval's logged occurrence came
	last  time.Time // when the latest repeat came
	count int64     // occurrences since start, not logged
	// The latest occurrence, which the summary line repeats.
	level slog.Level
	msg   string
	args  []any
}

// New returns a Limiter that writes to log (nil discards).
func New(log *slog.Logger, cfg Config) *Limiter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Limiter{log: log, interval: cfg.Interval, maxKeys: cfg.MaxKeys, now: cfg.Now}
	if l.interval <= 0 {
		l.interval = DefaultInterval
	}
	if l.maxKeys <= 0 {
		l.maxKeys = DefaultMaxKeys
	}
	if l.now == nil {
		l.now = time.Now
	}
	return l
}

// line is a log line decided under the lock and written after it.
type line struct {
	level slog.Level
	msg   string
	args  []any
}

// Log logs msg with args at level unless key was already logged in the
// current interval, in which case the event is only counted. It reports
// whether the line was written. Events at a level the logger does not
// enable cost nothing and are not counted. The Limiter keeps args until
// the key's summary is written, so the caller must not change them.
func (l *Limiter) Log(ctx context.Context, level slog.Level, key, msg string, args ...any) bool {
	if !l.log.Enabled(ctx, level) {
		return false
	}
	now := l.now()
	var summaries []line
	l.mu.Lock()
	if !now.Before(l.nextSweep) {
		summaries = l.sweepLocked(now, summaries)
		l.nextSweep = now.Add(l.interval)
	}
	e, ok := l.keys[key]
	if !ok && len(l.keys) >= l.maxKeys {
		e, ok = &l.overflow, !l.overflow.start.IsZero()
	}
	switch {
	case ok && now.Sub(e.start) < l.interval:
		e.count++
		e.last = now
		e.level = level
		if e == &l.overflow {
			// Kinds differ; say what the latest was without keeping its
			// arguments.
			e.msg, e.args = OverflowMessage, []any{"last", msg}
		} else {
			e.msg, e.args = msg, args
		}
		l.mu.Unlock()
		l.write(summaries)
		return false
	case ok:
		// A new interval for a key whose previous one the sweep has not
		// reached yet: close the old one first.
		summaries = e.summary(summaries)
		e.start, e.count, e.args = now, 0, nil
	case e == &l.overflow:
		e.start, e.count = now, 0
	default:
		if l.keys == nil {
			l.keys = make(map[string]*entry)
		}
		l.keys[key] = &entry{start: now}
	}
	l.mu.Unlock()
	l.write(summaries)
	l.log.Log(ctx, level, msg, args...)
	return true
}

// Flush writes the summary line of every key whose repeats have not been
// reported yet, and forgets every key: the next occurrence of any is logged
// in full. Call it when the events' source goes away (a session ends, the
// process stops) so that the last counts are not lost.
func (l *Limiter) Flush() {
	var summaries []line
	l.mu.Lock()
	for k, e := range l.keys {
		summaries = e.summary(summaries)
		delete(l.keys, k)
	}
	summaries = l.overflow.summary(summaries)
	l.overflow = entry{}
	l.mu.Unlock()
	l.write(summaries)
}

// sweepLocked ends the keys whose interval is over, collecting their
// summaries, so that keys that went quiet neither hold memory nor keep
// their counts to themselves. It runs at most once per interval.
func (l *Limiter) sweepLocked(now time.Time, out []line) []line {
	for k, e := range l.keys {
		if now.Sub(e.start) >= l.interval {
			out = e.summary(out)
			delete(l.keys, k)
		}
	}
	if !l.overflow.start.IsZero() && now.Sub(l.overflow.start) >= l.interval {
		out = l.overflow.summary(out)
		l.overflow = entry{}
	}
	return out
}

// summary appends e's summary line to out if it counted any repeats: the
// latest occurrence, how many repeats there were, and over what span.
func (e *entry) summary(out []line) []line {
	if e.count == 0 {
		return out
	}
	args := make([]any, 0, len(e.args)+4)
	args = append(args, e.args...)
	args = append(args, "repeated", e.count, "over", e.last.Sub(e.start).Round(time.Millisecond))
	return append(out, line{level: e.level, msg: e.msg, args: args})
}

func (l *Limiter) write(lines []line) {
	for _, ln := range lines {
		l.log.Log(context.Background(), ln.level, ln.msg, ln.args...)
	}
}
