// Command pipeops-controlplane is the control plane: route store, cluster
// registry and token service. `pipeops-controlplane --help` lists its
// commands and every setting, as does docs/controlplane.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pipeops/tunnel/controlplane/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // the first signal drains; a second one kills at once
	}()
	code := cli.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
