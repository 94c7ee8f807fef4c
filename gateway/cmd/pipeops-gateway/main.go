// Command pipeops-gateway is the public edge: accepts agent tunnels and routes HTTP(S) traffic into clusters.
//
// Only --version works so far; the component is built up in later changes.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/pipeops/tunnel/shared/version"
)

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	fmt.Println(version.String("pipeops-gateway"))
	if !*showVersion {
		fmt.Fprintln(os.Stderr, "pipeops-gateway: not implemented yet; only --version is supported")
		os.Exit(2)
	}
}
