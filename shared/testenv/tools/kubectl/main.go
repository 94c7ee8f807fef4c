// Command kubectl builds the upstream kubectl at the version pinned in
// go.mod, for machines that have no kubectl package: the end-to-end tests
// drive the tunnel with the real client.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		cmdutil.CheckErr(err) // prints the error and exits non-zero
	}
}
