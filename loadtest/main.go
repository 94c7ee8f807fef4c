// Command loadtest runs the load test suite: it starts the whole platform on
// loopback (PostgreSQL, control plane, gateway, a cluster with its agent and
// upstream) and measures each scenario through the tunnel next to a direct
// baseline taken in the same run. See loadtest/README.md.
//
//	go run ./loadtest                      # full profile, about 5 minutes
//	go run ./loadtest -profile ci          # the CI profile, under 3 minutes
//	go run ./loadtest -scenarios bulk-single,small-closed -bin bin/
//
// The suite also runs this binary as its helper processes: with -worker it
// is the load generator, with -relay LISTEN,TARGET one of the two plain
// relays of the relay reference path.
//
// The table goes to stdout, progress to stderr, the JSON report to -out and
// the latency chart next to it (report.svg). Exit status: 0 when every
// floor held with no error or leak, 1 when not, 2 when the run could not be
// carried out.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pipeops/tunnel/loadtest/internal/load"
	"github.com/pipeops/tunnel/loadtest/internal/relay"
	"github.com/pipeops/tunnel/loadtest/internal/report"
	"github.com/pipeops/tunnel/loadtest/internal/suite"
	"github.com/pipeops/tunnel/shared/testenv"
)

// openFiles is the RLIMIT_NOFILE the run asks for: the streams scenario
// holds one end of every stream's socket in each process (the upstream
// here, the visitors in the load generator, which inherits the limit).
const openFiles = 1 << 16

// workerArg makes the binary a load generator process: the suite starts
// one with it and sends it jobs on stdin.
const workerArg = "-worker"

// relayArg, followed by LISTEN,TARGET (loopback addresses), makes the
// binary a plain TCP relay process: the suite starts two of them for the
// relay path, and stops them by closing their stdin.
const relayArg = "-relay"

func main() {
	if len(os.Args) == 2 && os.Args[1] == workerArg {
		os.Exit(runWorker())
	}
	if len(os.Args) == 3 && os.Args[1] == relayArg {
		os.Exit(runRelay(os.Args[2]))
	}
	os.Exit(run())
}

func runWorker() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := load.Serve(ctx, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest worker:", err)
		return 1
	}
	return 0
}

func runRelay(spec string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("relay", spec)
	stdin, err := relay.Stdin()
	if err == nil {
		err = relay.RunProcess(ctx, spec, stdin, os.Stdout, log)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest relay:", err)
		return 1
	}
	return 0
}

func run() int {
	profile := flag.String("profile", "full", "full or ci")
	out := flag.String("out", "", "JSON report; the chart is written next to it as .svg (default loadtest/out/report.json in the repository)")
	scenarios := flag.String("scenarios", "", "comma-separated scenarios to run (default all): "+strings.Join(suite.Names, ","))
	bin := flag.String("bin", "", "directory with pipeops-{controlplane,gateway,agent} already built (default: build them)")
	work := flag.String("work", "", "directory for the stack's logs (default: a temporary one, removed after a passing run)")
	pprofDir := flag.String("pprof", "", "directory for CPU and heap profiles of the gateway and the agent (an extra tunnel run per traffic scenario)")
	flag.Parse()

	p, err := suite.ProfileByName(*profile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if *out == "" {
		*out = filepath.Join(root, "loadtest", "out", "report.json")
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	opts := suite.Options{Profile: p, ModuleRoot: root, BinDir: *bin, WorkDir: *work, Worker: []string{exe, workerArg}, Relay: []string{exe, relayArg}, PprofDir: *pprofDir}
	if *scenarios != "" {
		opts.Scenarios = strings.Split(*scenarios, ",")
	}
	if opts.BinDir != "" {
		if opts.BinDir, err = filepath.Abs(opts.BinDir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	removeWork := false
	if opts.WorkDir == "" {
		if opts.WorkDir, err = os.MkdirTemp("", "loadtest-"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		removeWork = true
	}
	opts.WorkDir, _ = filepath.Abs(opts.WorkDir)
	if err := opts.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	limit, err := raiseOpenFiles(openFiles)
	switch need := uint64(p.Streams) + 4096; {
	case err != nil:
		fmt.Fprintf(os.Stderr, "loadtest: open-file limit: %v\n", err)
	case limit < need:
		fmt.Fprintf(os.Stderr, "loadtest: open-file limit %d is below the %d the streams scenario needs\n", limit, need)
	}

	start := time.Now()
	opts.Progress = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, runErr := suite.Run(ctx, opts)
	if rep == nil {
		fmt.Fprintln(os.Stderr, runErr)
		return 2
	}
	code := 0
	if !rep.Passed {
		code = 1
	}
	if runErr != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", runErr)
		code = 2
	}
	fmt.Println()
	if err := report.WriteTable(os.Stdout, rep); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	svg, err := rep.WriteFile(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "write the report:", err)
		return 2
	}
	fmt.Printf("report: %s\nchart:  %s\n", *out, svg)
	if code == 0 && removeWork {
		os.RemoveAll(opts.WorkDir)
	} else {
		fmt.Printf("logs:   %s\n", filepath.Join(opts.WorkDir, "stack", "logs"))
	}
	return code
}

// raiseOpenFiles raises RLIMIT_NOFILE to at least n (the hard limit too,
// which needs privileges); without them, the soft limit goes to the hard
// one. Processes started afterwards inherit the limit. It returns the
// limit in force.
func raiseOpenFiles(n uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= n {
		return lim.Cur, nil
	}
	want := syscall.Rlimit{Cur: n, Max: max(lim.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return n, nil
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}
