// Command pipeops-agent runs in a Kubernetes cluster and dials out to the
// gateway: it registers with the control plane, keeps the tunnel, syncs
// PipeOps-managed Ingresses and serves the streams the gateway opens.
// Configuration comes from the environment (PIPEOPS_API_URL, PIPEOPS_TOKEN,
// ...) and flags; `pipeops-agent --help` lists every setting, as does
// docs/agent.md.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"k8s.io/klog/v2"

	"github.com/pipeops/tunnel/agent/app"
	"github.com/pipeops/tunnel/agent/config"
	"github.com/pipeops/tunnel/shared/cmdline"
	"github.com/pipeops/tunnel/shared/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // the first signal drains; a second one kills at once
	}()
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line args (without the program name) and returns
// the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return cmdline.Execute(ctx, newCommand(getenv, stdout, stderr), args, stdout, stderr)
}

func newCommand(getenv func(string) string, stdout, stderr io.Writer) *cobra.Command {
	root := cmdline.NewRoot("pipeops-agent", "Connect this Kubernetes cluster to a PipeOps gateway",
		`pipeops-agent runs in a Kubernetes cluster and only dials out: it registers with the
control plane, keeps a TLS WebSocket tunnel to the gateway, syncs PipeOps-managed
Ingresses and serves the streams the gateway opens. With no command it runs the agent.`)
	root.Example = `  PIPEOPS_API_URL=https://cp.example.com PIPEOPS_TOKEN=... pipeops-agent
  pipeops-agent --check   # check the agent's Kubernetes permissions and exit`
	check := root.Flags().Bool("check", false, "check the agent's Kubernetes permissions, print one ok/FAIL line per check and exit (1 if any failed); PIPEOPS_API_URL and PIPEOPS_TOKEN are not needed")
	config.Settings.AddFlags(root.Flags())
	cmdline.ShowSettings(root, config.Settings)
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		// The flags go to config.Load as it has always read them, so the
		// binary and Load's other callers parse them one way.
		loadArgs := config.Settings.Args(cmd.Flags())
		if *check {
			loadArgs = append(loadArgs, "--check")
		}
		cfg, err := config.Load(loadArgs, getenv)
		if err != nil {
			return cmdline.ConfigError(err)
		}
		return runAgent(cmd.Context(), cfg, stdout, stderr)
	}
	return root
}

// runAgent runs the agent (or its check) until ctx ends.
func runAgent(ctx context.Context, cfg config.Config, stdout, stderr io.Writer) error {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var log *slog.Logger
	if cfg.LogFormat == "json" {
		log = slog.New(slog.NewJSONHandler(stderr, opts))
	} else {
		log = slog.New(slog.NewTextHandler(stderr, opts))
	}
	// client-go (the route sync election among others) logs through klog:
	// into the agent's log, in its format.
	klog.SetSlogLogger(log.With("component", "client-go"))
	rc, err := app.RestConfig(cfg)
	if err != nil {
		log.Error("kubernetes configuration", "err", err)
		return cmdline.Exit(cmdline.ExitFailure, nil)
	}
	if cfg.Check {
		if err := app.Check(ctx, cfg, rc, stdout); err != nil {
			return cmdline.Exit(cmdline.ExitFailure, fmt.Errorf("check: %w", err))
		}
		return nil
	}
	log.Info("starting", "version", version.String("pipeops-agent"), "api", cfg.APIURL)
	a, err := app.New(ctx, cfg, rc, log)
	if err == nil {
		err = a.Run(ctx)
	}
	if err != nil && ctx.Err() == nil {
		log.Error("agent stopped", "err", err)
		return cmdline.Exit(cmdline.ExitFailure, nil)
	}
	return nil
}
