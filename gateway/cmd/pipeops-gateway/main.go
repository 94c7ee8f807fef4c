// Command pipeops-gateway is the public edge: it accepts agent tunnels and
// routes HTTP(S) traffic into clusters. Configuration comes from the
// environment; `pipeops-gateway --help` lists every setting, as does
// docs/gateway.md.
package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pipeops/tunnel/gateway/server"
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
	return cmdline.Execute(ctx, newCommand(getenv, stderr), args, stdout, stderr)
}

func newCommand(getenv func(string) string, stderr io.Writer) *cobra.Command {
	root := cmdline.NewRoot("pipeops-gateway", "Route public HTTP(S) traffic and Kubernetes API requests through agent tunnels",
		`pipeops-gateway is the public edge: agents connect to it (/ws), visitors' HTTP(S)
requests are routed by Host into clusters, and authorised callers reach each
cluster's Kubernetes API at /k8s/{cluster}/. With no command it runs the gateway;
it is configured by the environment alone.`)
	root.Example = `  DATABASE_URL=postgres://... CONTROLPLANE_URL=http://127.0.0.1:8080 pipeops-gateway
  pipeops-gateway healthcheck http://127.0.0.1:9090/readyz`
	cmdline.ShowSettings(root, gatewaySettings)
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := server.LoadConfig(getenv)
		if err != nil {
			return cmdline.ConfigError(err)
		}
		return serve(cmd.Context(), cfg, stderr)
	}
	return root
}

// serve runs the gateway until ctx ends, then drains.
func serve(ctx context.Context, cfg server.Config, stderr io.Writer) error {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	var log *slog.Logger
	if cfg.LogFormat == "json" {
		log = slog.New(slog.NewJSONHandler(stderr, opts))
	} else {
		log = slog.New(slog.NewTextHandler(stderr, opts))
	}
	log.Info("starting", "version", version.String("pipeops-gateway"))
	g, err := server.New(ctx, cfg, log)
	if err != nil {
		log.Error("start failed", "err", err)
		return cmdline.Exit(cmdline.ExitFailure, nil)
	}
	if err := g.Run(ctx); err != nil {
		log.Error("gateway stopped", "err", err)
		return cmdline.Exit(cmdline.ExitFailure, nil)
	}
	return nil
}
