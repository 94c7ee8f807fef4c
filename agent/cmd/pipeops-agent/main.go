// Command pipeops-agent runs in a Kubernetes cluster and dials out to the
// gateway: it registers with the control plane, keeps the tunnel, syncs
// PipeOps-managed Ingresses and serves the streams the gateway opens.
// Configuration comes from the environment (PIPEOPS_API_URL, PIPEOPS_TOKEN,
// ...) and flags; see `pipeops-agent --help` and docs/agent.md.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/pipeops/tunnel/agent/app"
	"github.com/pipeops/tunnel/agent/config"
	"github.com/pipeops/tunnel/shared/healthcheck"
	"github.com/pipeops/tunnel/shared/version"
)

func main() {
	// Before the configuration: the check must not start a second agent.
	if len(os.Args) > 1 && os.Args[1] == healthcheck.Command {
		os.Exit(healthcheck.Run(os.Args[2:], os.Stderr))
	}
	cfg, err := config.Load(os.Args[1:], os.Getenv)
	if cfg.ShowVersionOnly {
		fmt.Println(version.String("pipeops-agent"))
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var log *slog.Logger
	if cfg.LogFormat == "json" {
		log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	} else {
		log = slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	rc, err := app.RestConfig(cfg)
	if err != nil {
		log.Error("kubernetes configuration", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if cfg.Check {
		err := app.Check(ctx, cfg, rc, os.Stdout)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	go func() {
		<-ctx.Done()
		stop() // the first signal drains; a second one kills at once
	}()
	log.Info("starting", "version", version.String("pipeops-agent"), "api", cfg.APIURL)
	a, err := app.New(ctx, cfg, rc, log)
	if err == nil {
		err = a.Run(ctx)
	}
	if err != nil && ctx.Err() == nil {
		log.Error("agent stopped", "err", err)
		os.Exit(1)
	}
}
