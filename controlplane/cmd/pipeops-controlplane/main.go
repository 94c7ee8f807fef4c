// Command pipeops-controlplane is the control plane: route store, cluster registry and token service.
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
	fmt.Println(version.String("pipeops-controlplane"))
	if !*showVersion {
		fmt.Fprintln(os.Stderr, "pipeops-controlplane: not implemented yet; only --version is supported")
		os.Exit(2)
	}
}
