// Package procstat reads a process's resident memory and CPU time from
// /proc (Linux only), the way an operator's tools would see them.
package procstat

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports (the kernel's ABI, not
// CONFIG_HZ).
const clockTicks = 100

// RSS returns the process's resident set size (VmRSS) in bytes.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseRSS(string(b))
}

func parseRSS(status string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS %q: %w", rest, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no VmRSS line")
}

// CPU returns the process's CPU time so far, user plus system.
func CPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseCPU(string(b))
}

func parseCPU(stat string) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields after its closing parenthesis. utime and stime are
	// fields 14 and 15, so the 12th and 13th after it.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("stat has %d fields after the name", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat field %q: %w", s, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// SettledRSS waits settle, then takes n samples of RSS every interval and
// returns their median: resident memory moves as the garbage collector and
// the scavenger run, so one sample is noise.
func SettledRSS(ctx context.Context, pid int, settle time.Duration, n int, interval time.Duration) (int64, error) {
	if err := sleep(ctx, settle); err != nil {
		return 0, err
	}
	samples := make([]int64, 0, n)
	for i := 0; i < n; i++ {
		if i > 0 {
			if err := sleep(ctx, interval); err != nil {
				return 0, err
			}
		}
		v, err := RSS(pid)
		if err != nil {
			return 0, err
		}
		samples = append(samples, v)
	}
	return Median(samples), nil
}

// Median returns the median of v (the lower middle for an even count), or
// 0 for none. v is sorted in place.
func Median(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[(len(v)-1)/2]
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// SystemBusy returns the CPU time all CPUs of the machine have spent not
// idle (user, nice, system, irq, softirq, steal), from /proc/stat.
func SystemBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseSystemBusy(string(b))
}

func parseSystemBusy(stat string) (time.Duration, error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("malformed /proc/stat line %q", line)
	}
	var ticks int64
	for i, s := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat field %q: %w", s, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// SyscallCost measures the time of one trivial system call (getppid),
// the floor under every read and write: a few tens of nanoseconds on bare
// metal, ten times more or worse in some virtual machines, where the
// platform's syscall-heavy paths slow down accordingly.
func SyscallCost(n int) time.Duration {
	start := time.Now()
	for range n {
		syscall.Getppid()
	}
	return time.Since(start) / time.Duration(max(n, 1))
}
