// Command pipeops-agent is the in-cluster agent: dials out to the gateway and serves the streams it opens.
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
	fmt.Println(version.String("pipeops-agent"))
	if !*showVersion {
		fmt.Fprintln(os.Stderr, "pipeops-agent: not implemented yet; only --version is supported")
		os.Exit(2)
	}
}
