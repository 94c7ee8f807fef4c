package ratelog

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pipeops/tunnel/shared/testenv"
)

// syncBuffer is a buffer a logger may write to from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := strings.Split(strings.TrimSpace(s.b.String()), "\n")
	if len(out) == 1 && out[0] == "" {
		return nil
	}
	return out
}

func newTest(cfg Config) (*Limiter, *testenv.Clock, *syncBuffer) {
	clock := testenv.NewClock()
	buf := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	cfg.Now = clock.Now
	return New(log, cfg), clock, buf
}

// step is one action of a scripted test: log an event of key, advance the
// clock, or flush.
type step struct {
	key     string // log an event of this key, with msg "event <key>" and n=<i>
	advance time.Duration
	flush   bool
}

func TestLimiter(t *testing.T) {
	ev := func(key string) step { return step{key: key} }
	repeat := func(key string, n int) []step {
		out := make([]step, n)
		for i := range out {
			out[i] = ev(key)
		}
		return out
	}
	cat := func(parts ...[]step) []step {
		var out []step
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	cases := []struct {
		name   string
		cfg    Config
		steps  []step
		want   []string // each line must contain this text, in order
		logged int      // how many Log calls reported true
	}{
		{
			name:   "one event",
			steps:  []step{ev("a")},
			want:   []string{`msg="event a" n=0`},
			logged: 1,
		},
		{
			name:   "repeats counted, summary at flush",
			steps:  cat(repeat("a", 1000), []step{{flush: true}}),
			want:   []string{`msg="event a" n=0`, `msg="event a" n=999 repeated=999 over=0s`},
			logged: 1,
		},
		{
			name: "summary lazily with the next event after the interval",
			steps: cat(repeat("a", 3), []step{{advance: 4 * time.Second}}, repeat("a", 2),
				[]step{{advance: 7 * time.Second}, ev("b")}),
			want: []string{
				`msg="event a" n=0`,
				`msg="event a" n=5 repeated=4 over=4s`,
				`msg="event b" n=7`,
			},
			logged: 2,
		},
		{
			name:   "new interval of the same key: summary then the event in full",
			steps:  cat(repeat("a", 5), []step{{advance: 10 * time.Second}}, repeat("a", 1)),
			want:   []string{`msg="event a" n=0`, `msg="event a" n=4 repeated=4`, `msg="event a" n=6`},
			logged: 2,
		},
		{
			name:   "quiet key: no summary",
			steps:  []step{ev("a"), {advance: time.Minute}, ev("a"), {flush: true}},
			want:   []string{`msg="event a" n=0`, `msg="event a" n=2`},
			logged: 2,
		},
		{
			name:   "keys are independent",
			steps:  cat(repeat("a", 3), repeat("b", 2), []step{{flush: true}}),
			want:   []string{`msg="event a" n=0`, `msg="event b" n=3`, "repeated=", "repeated="},
			logged: 2,
		},
		{
			name:   "flush forgets keys",
			steps:  []step{ev("a"), ev("a"), {flush: true}, ev("a")},
			want:   []string{`msg="event a" n=0`, `n=1 repeated=1`, `msg="event a" n=3`},
			logged: 2,
		},
		{
			name:  "keys beyond MaxKeys are counted together",
			cfg:   Config{MaxKeys: 2},
			steps: []step{ev("a"), ev("b"), ev("c"), ev("d"), ev("e"), {flush: true}},
			want: []string{`msg="event a"`, `msg="event b"`, `msg="event c"`,
				`msg="` + OverflowMessage + `" last="event e" repeated=2`},
			logged: 3,
		},
		{
			name:   "custom interval",
			cfg:    Config{Interval: time.Second},
			steps:  []step{ev("a"), ev("a"), {advance: time.Second}, ev("a")},
			want:   []string{`msg="event a" n=0`, `n=1 repeated=1`, `msg="event a" n=3`},
			logged: 2,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, clock, buf := newTest(c.cfg)
			logged := 0
			for i, s := range c.steps {
				switch {
				case s.key != "":
					if l.Log(context.Background(), slog.LevelInfo, s.key, "event "+s.key, "n", i) {
						logged++
					}
				case s.flush:
					l.Flush()
				default:
					clock.Add(s.advance)
				}
			}
			got := buf.lines()
			if len(got) != len(c.want) {
				t.Fatalf("%d lines, want %d:\n%s", len(got), len(c.want), strings.Join(got, "\n"))
			}
			for i, w := range c.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("line %d = %q, want it to contain %q", i, got[i], w)
				}
			}
			if logged != c.logged {
				t.Errorf("Log reported %d lines written, want %d", logged, c.logged)
			}
		})
	}
}

// A level the logger does not enable is neither written nor counted.
func TestLimiterDisabledLevel(t *testing.T) {
	l, _, buf := newTest(Config{})
	for range 10 {
		if l.Log(context.Background(), slog.LevelDebug, "a", "debug") {
			t.Fatal("debug line reported written")
		}
	}
	l.Flush()
	if got := buf.lines(); len(got) != 0 {
		t.Fatalf("lines for a disabled level: %q", got)
	}
}

// Keys that went quiet are dropped by the sweep, so memory follows the
// keys active in the last interval, not every key ever seen.
func TestLimiterForgetsQuietKeys(t *testing.T) {
	l, clock, _ := newTest(Config{MaxKeys: 100})
	for round := range 5 {
		for i := range 100 {
			l.Log(context.Background(), slog.LevelInfo, fmt.Sprintf("r%d-k%d", round, i), "x")
		}
		clock.Add(DefaultInterval)
		l.mu.Lock()
		n, overflowed := len(l.keys), !l.overflow.start.IsZero()
		l.mu.Unlock()
		if n > 100 || overflowed {
			t.Fatalf("round %d: %d keys tracked, overflow %v", round, n, overflowed)
		}
	}
}

// A flood from many goroutines: one line per key plus one summary each,
// and the summary counts every event.
func TestLimiterConcurrent(t *testing.T) {
	l, _, buf := newTest(Config{})
	const goroutines, perG, keys = 8, 5000, 4
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perG {
				k := fmt.Sprint((g + i) % keys)
				l.Log(context.Background(), slog.LevelWarn, k, "event", "key", k)
			}
		}()
	}
	wg.Wait()
	l.Flush()
	got := buf.lines()
	if len(got) != 2*keys {
		t.Fatalf("%d lines, want %d:\n%s", len(got), 2*keys, strings.Join(got, "\n"))
	}
	var total int64
	for _, line := range got {
		if _, after, ok := strings.Cut(line, "repeated="); ok {
			var n int64
			fmt.Sscan(strings.Fields(after)[0], &n)
			total += n
		}
	}
	if want := int64(goroutines*perG - keys); total != want {
		t.Fatalf("summaries count %d repeats, want %d", total, want)
	}
}

func TestZeroConfigAndNilLogger(t *testing.T) {
	l := New(nil, Config{})
	if l.Log(context.Background(), slog.LevelError, "a", "x") {
		t.Fatal("a discarding logger reported a line written")
	}
	l.Flush()
}

func BenchmarkLogRepeat(b *testing.B) {
	l := New(slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)), Config{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		l.Log(ctx, slog.LevelInfo, "frame for missing stream", "frame for missing stream")
	}
}
