// Command pipeops-gateway is the public edge: it accepts agent tunnels and
// routes HTTP(S) traffic into clusters. Configuration comes from the
// environment (see docs/gateway.md); `pipeops-gateway --version` prints the
// version.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/pipeops/tunnel/gateway/server"
	"github.com/pipeops/tunnel/shared/healthcheck"
	"github.com/pipeops/tunnel/shared/version"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == healthcheck.Command {
		os.Exit(healthcheck.Run(os.Args[2:], os.Stderr))
	}
	if len(os.Args) > 1 && (os.Args[1] == "--version" || os.Args[1] == "version" || os.Args[1] == "-version") {
		fmt.Println(version.String("pipeops-gateway"))
		return
	}
	cfg, err := server.LoadConfig(os.Getenv)
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // the first signal drains; a second one kills at once
	}()
	log.Info("starting", "version", version.String("pipeops-gateway"))
	g, err := server.New(ctx, cfg, log)
	if err != nil {
		log.Error("start failed", "err", err)
		os.Exit(1)
	}
	if err := g.Run(ctx); err != nil {
		log.Error("gateway stopped", "err", err)
		os.Exit(1)
	}
}
