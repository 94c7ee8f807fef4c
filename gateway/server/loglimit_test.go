package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
)

func TestLogLimiter(t *testing.T) {
	type event struct {
		after    time.Duration // clock moves this much before the event
		key      string
		wantOK   bool
		wantHeld int
	}
	for _, tc := range []struct {
		name   string
		events []event
	}{
		{"one line per key per interval", []event{
			{0, "a", true, 0},
			{time.Second, "a", false, 0},
			{58 * time.Second, "a", false, 0},
			{time.Second, "a", true, 2}, // a minute after the first: the two held back are reported
		}},
		{"keys are independent", []event{
			{0, "a", true, 0},
			{0, "b", true, 0},
			{0, "a", false, 0},
			{0, "c", true, 1},
		}},
		{"at most max lines per interval in all", []event{
			{0, "a", true, 0},
			{0, "b", true, 0},
			{0, "c", true, 0},
			{0, "d", false, 0}, // a flood of new names is held back too
			{0, "e", false, 0},
			{30 * time.Second, "f", false, 0},
			{30 * time.Second, "g", true, 3}, // a, b and c have aged out
			{0, "h", true, 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := testenv.NewClock()
			l := newLogLimiter(time.Minute, 3, clock.Now)
			for i, e := range tc.events {
				clock.Add(e.after)
				ok, held := l.allow(e.key)
				if ok != e.wantOK || held != e.wantHeld {
					t.Fatalf("event %d (%s): allow = %v, %d; want %v, %d", i, e.key, ok, held, e.wantOK, e.wantHeld)
				}
			}
		})
	}
}

// TestLogLimiterBounded: a flood of distinct names keeps the limiter's
// memory at its line budget.
func TestLogLimiterBounded(t *testing.T) {
	clock := testenv.NewClock()
	l := newLogLimiter(time.Minute, 20, clock.Now)
	lines := 0
	for i := range 100_000 {
		if ok, _ := l.allow(fmt.Sprintf("name-%d.example.com", i)); ok {
			lines++
		}
		if i%1000 == 0 {
			clock.Add(time.Second)
		}
	}
	// 100 s of flood: the first minute's 20 lines, then 20 more once they aged out.
	if lines != 40 || len(l.logged) > 20 {
		t.Fatalf("%d lines, %d names kept; want 40 and at most 20", lines, len(l.logged))
	}
}
