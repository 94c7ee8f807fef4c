// Command pipeops-controlplane is the control plane: route store, cluster
// registry and token service. See `pipeops-controlplane help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pipeops/tunnel/controlplane/cli"
	"github.com/pipeops/tunnel/shared/healthcheck"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == healthcheck.Command {
		os.Exit(healthcheck.Run(os.Args[2:], os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // the first signal drains; a second one kills at once
	}()
	os.Exit(cli.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}
