package procstat

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	rss, err := parseRSS("Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads: 4\n")
	if err != nil || rss != 12345*1024 {
		t.Fatalf("rss %d, %v", rss, err)
	}
	if _, err := parseRSS("Name: kernel thread\n"); err == nil {
		t.Fatal("no VmRSS line should be an error")
	}
	// A command name with spaces and parentheses must not shift the fields.
	stat := "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0"
	cpu, err := parseCPU(stat)
	if err != nil || cpu != 3*time.Second {
		t.Fatalf("cpu %v, %v; want 3s (300 ticks)", cpu, err)
	}
	if _, err := parseCPU("42 (x) S 1"); err == nil {
		t.Fatal("a short stat should be an error")
	}
	// user nice system idle iowait irq softirq steal: busy = all but idle
	// and iowait.
	busy, err := parseSystemBusy("cpu  100 20 30 5000 70 5 5 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
	if err != nil || busy != 2*time.Second {
		t.Fatalf("busy %v, %v; want 2s (200 ticks)", busy, err)
	}
	if _, err := parseSystemBusy("intr 1 2 3\n"); err == nil {
		t.Fatal("a stat without the cpu line should be an error")
	}
}

func TestSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	pid := os.Getpid()
	rss, err := SettledRSS(context.Background(), pid, 0, 3, time.Millisecond)
	if err != nil || rss < 1<<20 {
		t.Fatalf("own RSS %d, %v", rss, err)
	}
	if _, err := CPU(pid); err != nil {
		t.Fatal(err)
	}
	if _, err := SystemBusy(); err != nil {
		t.Fatal(err)
	}
}

func TestSyscallCost(t *testing.T) {
	if d := SyscallCost(1000); d <= 0 || d > time.Millisecond {
		t.Fatalf("syscall cost %v", d)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []int64
		want int64
	}{{nil, 0}, {[]int64{5}, 5}, {[]int64{9, 1, 5}, 5}, {[]int64{4, 1, 3, 2}, 2}} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
