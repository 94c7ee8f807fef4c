// Package healthcheck is the `healthcheck URL` subcommand of every binary:
// container images have no shell or curl, so a container healthcheck runs
// the binary itself against its own health endpoint.
package healthcheck

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Command is the subcommand's name: `pipeops-gateway healthcheck URL`.
const Command = "healthcheck"

// Timeout bounds the whole check.
const Timeout = 3 * time.Second

// Run checks that GET url answers 2xx within Timeout and returns the exit
// code: 0 if so, 1 if not (saying why on stderr), 2 for bad usage. It reads
// no configuration: the container's environment is the server's, whose
// database and peers the check must not touch.
func Run(args []string, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: healthcheck URL   (exit 0 when GET URL answers 2xx)")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: %v\n", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(stderr, "healthcheck: %s: %s %s\n", args[0], resp.Status, body)
		return 1
	}
	return 0
}
